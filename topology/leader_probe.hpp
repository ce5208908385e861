// LeaderProbe: asks the leader's PostgreSQL itself whether it takes writes
// (`SELECT pg_is_in_recovery()` over libpq). Patroni marks a new leader's
// member znode `master` about a second after the node is writable; the probe
// closes that gap, and notices when the leader's PostgreSQL refuses connections.
// Runs on its own thread: libpq calls block, and nothing here may block the
// proxy or control threads.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "topology/patroni.hpp"

namespace pgrelay::topology {

struct ProbeOptions {
    std::string user = "postgres";
    std::string password;
    std::string dbname = "postgres";
    std::chrono::milliseconds interval{1000};     // steady-state check of the current leader
    std::chrono::milliseconds fast_interval{5};   // retry period right after a leader change
    std::chrono::milliseconds fast_window{30000}; // how long fast retries last at most
    std::chrono::milliseconds connect_timeout{2000};
    std::string sslmode = "prefer";  // pgrelay's backend_tls, so the probe needs what sessions need
    std::string sslrootcert;         // backend_tls_ca
};

// The thread, stop flag and wake-up both probes run on. A derived class starts
// it at the end of its constructor and stops it first thing in its destructor
// (run() uses the derived members). set-calls bump `generation_` under `mu_`
// and notify `cv_`; run() re-reads its targets when the generation moved.
class ProbeThread {
public:
    void stop();

protected:
    explicit ProbeThread(ProbeOptions opts) : opts_(std::move(opts)) {}
    ~ProbeThread() = default;
    void start() { thread_ = std::thread([this] { run(); }); }
    virtual void run() = 0;
    // Sleeps up to `d`; wakes early on stop() or a new generation.
    void pause(std::unique_lock<std::mutex>& lock, std::chrono::milliseconds d, uint64_t seen_generation) {
        cv_.wait_for(lock, d, [&] { return stop_ || seen_generation != generation_; });
    }

    ProbeOptions opts_;
    std::mutex mu_;
    std::condition_variable cv_;
    bool stop_ = false;
    uint64_t generation_ = 0;

private:
    std::thread thread_;
};

// Flow: set_target() whenever the leader key names a member (or clear_target()
// when there is none); `report` is called from the probe thread with every
// verdict that differs from the previous one for that target, and once per
// target change. stop() (or the destructor) joins the thread.
class LeaderProbe final : public ProbeThread {
public:
    // `wal_position`: the leader's current WAL position in bytes (when writable).
    using Report = std::function<void(const std::string& member, patroni::ProbeStatus status,
                                      std::optional<uint64_t> wal_position, const std::string& detail)>;
    LeaderProbe(ProbeOptions opts, Report report);
    ~LeaderProbe();
    void set_target(const std::string& member, const std::string& host, uint16_t port);
    void clear_target();

private:
    void run() override;

    Report report_;
    std::string member_, host_;
    uint16_t port_ = 0;
};

// ReplayProbe: how far each replica has *replayed* (pg_last_wal_replay_lsn()).
// Patroni's xlog_location for a replica is the WAL it has received, so a
// replica whose replay is stuck (a long query conflicting with recovery,
// pg_wal_replay_pause()) looks current in ZooKeeper while serving stale
// reads. Lag-aware routing takes the lower of the two positions.
//
// Flow: set_targets() with the current replicas; every `interval` each one is
// queried over a persistent connection and `report` gets (member, position or
// nullopt when unknown). Own thread; stop() joins it.
class ReplayProbe final : public ProbeThread {
public:
    struct Target {
        std::string member, host;
        uint16_t port = 0;
        friend bool operator==(const Target&, const Target&) = default;
    };
    // `reachable` is false when the replica's PostgreSQL could not be reached
    // at all (no connection, no answer within the probe's TCP bounds); a
    // server that answered with an error (starting up, a bad login) is reachable.
    using Report = std::function<void(const std::string& member, std::optional<uint64_t> replayed, bool reachable)>;
    ReplayProbe(ProbeOptions opts, Report report);
    ~ReplayProbe();
    void set_targets(std::vector<Target> targets);

private:
    void run() override;

    Report report_;
    std::vector<Target> targets_;
};

// libpq connection string for a probe of host:port (values quoted for libpq).
std::string probe_conninfo(const ProbeOptions& opts, const std::string& host, uint16_t port);

}  // namespace pgrelay::topology
