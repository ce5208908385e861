// ZooKeeper topology source: watches Patroni's znodes with the ZooKeeper C
// client and publishes a new Topology on every change. ZooKeeper callbacks
// (its own threads) only copy data and post to the control io_context; all
// state lives on the control thread.
#pragma once

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "topology/patroni_follower.hpp"
#include "topology/source.hpp"

namespace pgrelay::topology {

struct ZkSourceOptions {
    std::string hosts;  // "h1:2181,h2:2181[/chroot]"
    std::string base;   // "/<namespace>/<scope>", e.g. "/service/pgrelay"
    std::chrono::milliseconds session_timeout{10000};
    SourceStats* stats = nullptr;  // optional
    FollowerOptions follower;      // routing options, probes, reroute callback (source names are set here)
    RegistrationOptions registration;  // an ephemeral znode for this instance, and the list of all
};

// Flow: construct on the control thread, start(); it connects (retrying with
// backoff while ZooKeeper is unreachable), reads every znode with a watch,
// publishes the first snapshot once the whole layout is read, then
// re-reads whatever a watch reports. Connection loss keeps the last topology;
// session expiry opens a new session and re-reads everything. stop() closes.
class ZkSource final : public Source {
public:
    ZkSource(boost::asio::io_context& ctx, SnapshotHub& hub, ZkSourceOptions opts);
    ~ZkSource() override;
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
