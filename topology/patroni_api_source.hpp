// Patroni REST API topology source, for Patroni clusters on a DCS pgrelay does
// not read itself (Consul, Kubernetes, ...): polls `GET /cluster` on the
// members' REST APIs every `interval`, moving to the next member when one
// does not answer, and feeds the PatroniFollower the other Patroni sources
// share (probes, grace period, snapshot). Rerouting costs up to one poll
// interval more than the watch-driven sources.
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

struct PatroniApiSourceOptions {
    std::vector<http::Url> urls;  // Patroni REST APIs (restapi.connect_address of the members)
    std::string ca, cert, key;    // https: CA to verify Patroni with, optional client certificate
    std::chrono::milliseconds interval{250};
    std::chrono::milliseconds request_timeout{1000};
    SourceStats* stats = nullptr;  // optional
    FollowerOptions follower;
};

// Flow: construct on the control thread (throws std::runtime_error when the
// TLS files cannot be loaded), start(); a poll every `interval` publishes what
// changed; stop() ends the loop.
class PatroniApiSource final : public Source {
public:
    PatroniApiSource(boost::asio::io_context& ctx, SnapshotHub& hub, PatroniApiSourceOptions opts);
    ~PatroniApiSource() override;
    void start() override;
    void stop() override;
    void set_member_options(const std::map<std::string, uint32_t>& weights, const std::vector<std::string>& exclude,
                            bool allow_standby_leader) override;

    struct Impl;

private:
    std::shared_ptr<Impl> impl_;
};

}  // namespace pgrelay::topology
