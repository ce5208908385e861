// etcd v3 topology source: reads Patroni's keys (the `etcd3:` DCS) through
// etcd's JSON gateway over HTTP/1.1 or HTTPS, as Patroni itself does: a range
// of /<namespace>/<scope>/, then a watch from the next revision. What it read
// goes to the PatroniFollower shared with the other Patroni sources.
#pragma once

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "topology/http.hpp"
#include "topology/patroni_follower.hpp"
#include "topology/source.hpp"

namespace pgrelay::topology {

struct EtcdSourceOptions {
    std::vector<http::Url> endpoints;  // tried in order; the next one when one fails
    std::string base;                  // "/<namespace>/<scope>", e.g. "/service/pgrelay"
    std::string username, password;    // etcd authentication, when username is set
    std::string ca, cert, key;         // https: the CA to verify etcd with, and a client certificate
    std::chrono::milliseconds request_timeout{2000};
    // How often a linearizable read checks that etcd answers and that the
    // watch has seen every change it reports.
    std::chrono::milliseconds check_interval{1000};
    SourceStats* stats = nullptr;  // optional
    FollowerOptions follower;
    RegistrationOptions registration;  // a key under a lease for this instance, and the list of all
};

// Flow: construct on the control thread (throws std::runtime_error when the
// TLS files cannot be loaded), start(). It loops forever until stop():
//   connect to an endpoint -> GET /version (the API prefix) -> authenticate
//   (when a username is set) -> range the prefix (the whole state, at
//   revision R) -> watch from R + 1, while a check reads the prefix's keys
//   every check_interval.
// A compacted or canceled watch, or a check showing the watch behind, starts
// again at the range on the same endpoint; a failure (connect, timeout, an
// error, the stream ending) moves to the next endpoint. The last topology
// stays published throughout.
class EtcdSource final : public Source {
public:
    EtcdSource(boost::asio::io_context& ctx, SnapshotHub& hub, EtcdSourceOptions opts);
    ~EtcdSource() override;
    void start() override;
    void stop() override;
    void set_member_options(const std::map<std::string, uint32_t>& weights, const std::vector<std::string>& exclude,
                            bool allow_standby_leader) override;
    void deregister(std::function<void()> done) override;

    struct Impl;

private:
    std::shared_ptr<Impl> impl_;
};

}  // namespace pgrelay::topology
