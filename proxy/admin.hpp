// The admin HTTP listener: /metrics (Prometheus text), /health (200 while rw
// can route to a primary), /health/ro (200 while ro can route somewhere),
// /topology (the current snapshot as JSON, with the recent changes), /pools,
// and / (the status page, status_page.hpp). Runs on the control thread; the
// Beast headers stay in admin.cpp.
#pragma once

#include <boost/asio/io_context.hpp>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "proxy/config.hpp"
#include "topology/peers.hpp"
#include "topology/source.hpp"

namespace pgrelay {

// One routing-relevant change between two published snapshots (lag moving
// alone is not one): who rw routes to, the leader key, members joining,
// leaving or changing role, state or reachability, a switchover announced.
struct TopologyChange {
    int64_t at_unix_ms = 0;  // wall clock when the snapshot was published
    uint64_t version = 0;    // the snapshot's version
    std::string primary_before, primary;  // rw target before and after ("" none)
    std::string leader_before, leader;    // the leader key before and after ("" none)
    std::string primary_reason;           // why there is no primary now ("" when there is one)
    std::vector<std::string> what;        // one line per difference, e.g. "rw: pg0 -> pg1"
    // Time from the event that announced the new leader to rw routing to it
    // (the pgrelay_reroute_seconds sample), when this change is that reroute.
    std::optional<double> reroute_seconds;
};

// The last kCapacity changes, newest last. Written by the topology source's
// thread (on_reroute, then the hub's on_change listener), read by the admin
// listener; a mutex is enough: both are rare.
class TopologyHistory {
public:
    static constexpr size_t kCapacity = 20;
    // The follower measured a reroute; it belongs to the next recorded change
    // that moves rw (published right after).
    void note_reroute(double seconds);
    // Compares the snapshots and records an entry when something that matters
    // for routing differs; `before` null is the first snapshot. Returns
    // whether an entry was added.
    bool record(const topology::Topology* before, const topology::Topology& after, int64_t at_unix_ms);
    std::vector<TopologyChange> recent() const;
    uint64_t total() const;  // entries recorded since start (including those dropped from the ring)

private:
    mutable std::mutex mu_;
    std::deque<TopologyChange> ring_;
    std::optional<double> pending_reroute_;
    uint64_t total_ = 0;
};

// Flow: construct (binds, throws if the address is taken), start() begins
// accepting on `ctx`, stop() closes the listener. `routing` returns the
// routing options in force (they change on reload).
class AdminServer {
public:
    AdminServer(boost::asio::io_context& ctx, const std::string& host, uint16_t port, const topology::SnapshotHub& hub,
                std::function<topology::RoutingOptions()> routing);
    ~AdminServer();
    void start();
    void stop();
    // This instance and its peers, for /topology (null: not shown).
    void set_peers(const topology::PeerDirectory* peers);
    // The recent changes, for /topology's "changes" (null: not shown).
    void set_history(const TopologyHistory* history);
    // SIGTERM: /health and /health/ro answer 503 from now on, so outer
    // balancers move new connections elsewhere while sessions drain.
    void set_draining();

    // Exposed for tests: the body and status for a path.
    struct Reply {
        int status;
        std::string content_type;
        std::string body;
    };
    Reply handle(const std::string& target) const;

private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

// The snapshot as /topology renders it, with this instance and its live
// peers when `peers` is set, and the recent changes (newest first) when
// `history` is.
std::string topology_json(const topology::Topology* t, const topology::RoutingOptions& routing,
                          const topology::PeerDirectory* peers = nullptr, const TopologyHistory* history = nullptr);

}  // namespace pgrelay
