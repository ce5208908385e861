// The seam between topology sources and the proxy. A source (a static list
// with health checks; Patroni followed through ZooKeeper, etcd or its REST
// API) publishes whole Topology snapshots into a SnapshotHub; proxy threads
// read the newest one without taking a lock.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>
#include <mutex>

#include "topology/peers.hpp"
#include "topology/topology.hpp"

namespace pgrelay::topology {

// Flow: a source calls publish() from its own thread whenever the cluster
// changes. Each proxy thread owns a Reader and calls current() per new
// connection: one relaxed atomic load when nothing changed, a short mutex-guarded
// copy of the pointer only after a publish.
class SnapshotHub {
public:
    SnapshotHub();
    // Stamps t->version and makes it current. Listeners run on the caller's thread.
    void publish(std::shared_ptr<Topology> t);
    TopologyPtr latest() const;
    uint64_t version() const noexcept { return version_.load(std::memory_order_acquire); }

    // Called after every publish with (old, new); e.g. to end sessions on a
    // member that left. Must not block.
    using Listener = std::function<void(const TopologyPtr& before, const TopologyPtr& after)>;
    void on_change(Listener l);

    class Reader {
    public:
        explicit Reader(const SnapshotHub& hub) : hub_(&hub) {}
        const TopologyPtr& current() {
            const uint64_t v = hub_->version();
            if (v != seen_) {
                snapshot_ = hub_->latest();
                seen_ = snapshot_ ? snapshot_->version : 0;
            }
            return snapshot_;
        }

    private:
        const SnapshotHub* hub_;
        uint64_t seen_ = UINT64_MAX;
        TopologyPtr snapshot_;
    };

private:
    mutable std::mutex mu_;
    TopologyPtr current_;
    std::atomic<uint64_t> version_{0};
    std::vector<Listener> listeners_;
};

// What a DCS source reports about itself, for metrics. Written on the control
// thread, read by the admin thread.
struct SourceStats {
    std::atomic<int> connected{0};               // 1 while the store answers (ZooKeeper session, etcd watch)
    std::atomic<uint64_t> reconnects{0};         // connections after the first
    std::atomic<uint64_t> session_expiries{0};   // ZooKeeper sessions that expired
    std::atomic<uint64_t> resyncs{0};            // full re-reads after the first (reconnect, compaction, stale watch)
    std::atomic<uint64_t> endpoint_failures{0};  // etcd / Patroni REST endpoints given up on, moving to the next
    std::atomic<int> rest_authority{0};          // 1 while rw follows the members' REST APIs, not the DCS
    std::atomic<uint64_t> rest_takeovers{0};     // times the REST fallback named a leader the DCS did not
};

// A topology source. start() begins publishing (the first snapshot may come
// later, e.g. after connecting to ZooKeeper); stop() ends it. Both are called
// from the control thread.
class Source {
public:
    virtual ~Source() = default;
    virtual void start() = 0;
    virtual void stop() = 0;
    // Config reload: per-member weights and exclusions (and, for Patroni,
    // allow_standby_leader). Republishes when the snapshot changes.
    virtual void set_member_options(const std::map<std::string, uint32_t>& weights,
                                    const std::vector<std::string>& exclude, bool allow_standby_leader) = 0;
    // Draining: remove this instance's entry from the store now (the
    // others drop it at once, not after a session timeout), and do not
    // register again; `done` runs on the control thread once the store
    // answered or gave up (at once for a source without registration).
    virtual void deregister(std::function<void()> done) { done(); }
};

// This instance's entry in the store a source follows: a ZooKeeper
// ephemeral znode or an etcd key under a lease, at <path>/<id>, holding
// instance_json(self). The source also lists <path> and hands the entries
// to `peers`.
struct RegistrationOptions {
    bool enabled = false;
    std::string path;  // "/pgrelay/<scope>/instances": never inside Patroni's keys
    InstanceInfo self;
    std::chrono::milliseconds ttl{10000};              // etcd: the lease's TTL
    std::chrono::milliseconds list_interval{1000};     // etcd: how often the list is read
    PeerDirectory* peers = nullptr;
};

}  // namespace pgrelay::topology
