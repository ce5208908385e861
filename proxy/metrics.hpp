// Process-wide metrics for /metrics (Prometheus text format). Counters are
// relaxed atomics bumped from worker threads -- per read chunk or per protocol
// event, never under a lock -- and read by the admin thread when scraped.
// Per-member blocks are created once per (port, member) and never freed, so
// sessions keep a plain reference to theirs.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "proxy/config.hpp"
#include "topology/peers.hpp"
#include "topology/source.hpp"
#include "topology/topology.hpp"

namespace pgrelay::metrics {

// A fixed-bucket histogram of durations in seconds.
class Histogram {
public:
    explicit Histogram(std::vector<double> upper_bounds);
    void observe(double seconds) noexcept;
    void render(std::string& out, std::string_view name, std::string_view labels) const;

private:
    std::vector<double> bounds_;
    std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // per bound (not cumulative)
    std::atomic<uint64_t> count_{0};
    std::atomic<uint64_t> sum_us_{0};
};

struct MemberStats {
    std::atomic<int64_t> backend_open{0};
    std::atomic<uint64_t> backend_total{0};
    std::atomic<uint64_t> bytes_from_client{0};
    std::atomic<uint64_t> bytes_to_client{0};
    std::atomic<uint64_t> queries{0};       // ReadyForQuery after a request
    std::atomic<uint64_t> transactions{0};  // ReadyForQuery with status Idle after a request
};

struct PortStats {
    std::atomic<int64_t> client_open{0};
    std::atomic<uint64_t> client_total{0};
    std::atomic<int64_t> held_now{0};
    std::atomic<uint64_t> held_total{0};
    Histogram hold_seconds{{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}};
    Histogram query_seconds{{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10}};
    std::atomic<uint64_t> terminated{0};  // sessions ended by pgrelay (57P01, 57P05)
    std::atomic<uint64_t> tls_ok{0};      // client TLS handshakes completed
    std::atomic<uint64_t> tls_failed{0};  // client TLS handshakes failed or timed out
    std::atomic<uint64_t> tls_direct{0};  // ... of tls_ok, direct (no SSLRequest first)
    std::atomic<uint64_t> plaintext{0};   // StartupMessages received without TLS
};

// One pool as the pool worker last published it (every 250 ms): /pools,
// SHOW POOLS and the pgrelay_pool_* series read this copy, never the pools.
struct PoolRow {
    PortRole port = PortRole::ReadWrite;
    std::string mode, member, database, user;
    int64_t clients = 0;          // logged-in clients of this pool's user and database
    int64_t clients_active = 0;   // holding one of its servers now
    int64_t clients_waiting = 0;  // waiting for one
    int64_t servers_active = 0, servers_idle = 0, servers_opening = 0;
    uint32_t pool_size = 0;
    uint64_t servers_opened = 0, servers_closed = 0, acquired = 0, wait_timeouts = 0;
    double wait_seconds = 0;  // total time clients waited
};

class Registry {
public:
    static Registry& instance();

    MemberStats& member(PortRole port, const std::string& member);
    // Backend connections open now to `member` from `port`; 0 when none ever were.
    int64_t backend_open(PortRole port, const std::string& member) const;
    PortStats& port(PortRole r) { return r == PortRole::ReadWrite ? rw_ : ro_; }
    // Connections held right now, both ports.
    int64_t held_now() const {
        return rw_.held_now.load(std::memory_order_relaxed) + ro_.held_now.load(std::memory_order_relaxed);
    }
    void count_error(std::string_view origin, std::string_view sqlstate);
    // Pooled ports: client logins by outcome ("ok", "failed", "malformed",
    // "abandoned", "error"), clients waiting for a server, and how long they waited.
    void count_login(PortRole port, std::string_view outcome);
    void set_pools(std::vector<PoolRow> rows);
    std::vector<PoolRow> pools() const;
    void pool_waiting(PortRole port, int delta) noexcept {
        (port == PortRole::ReadWrite ? rw_waiting_ : ro_waiting_).fetch_add(delta, std::memory_order_relaxed);
    }
    // One wait-time histogram per pool, created once and never freed (as
    // member blocks): the pool keeps a plain reference.
    Histogram& pool_wait(PortRole port, const std::string& member, const std::string& database, const std::string& user);

    std::atomic<uint64_t> cancel_forwarded{0};
    std::atomic<uint64_t> cancel_unknown_key{0};
    std::atomic<uint64_t> cancel_failed{0};
    std::atomic<uint64_t> cancel_to_peer{0};          // another instance's key, sent on to it
    std::atomic<uint64_t> cancel_peer_unreachable{0};  // ... but the peer could not be reached
    // This instance and its live peers (set before the admin thread starts).
    const topology::PeerDirectory* peers = nullptr;
    std::atomic<uint64_t> topology_changes{0};
    std::atomic<uint64_t> primary_changes{0};
    Histogram reroute_seconds{{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5}};
    topology::SourceStats source;
    // "zookeeper", "etcd" or "patroni_api": which DCS gauges exist. Set
    // before the admin thread starts, then only read.
    std::string dcs_source;

    // The whole exposition; `t` (may be null) supplies the topology gauges,
    // `max_replica_lag` the eligibility.
    std::string render(const topology::Topology* t, const topology::RoutingOptions& routing) const;

private:
    PortStats rw_, ro_;
    std::atomic<int64_t> rw_waiting_{0}, ro_waiting_{0};
    std::map<std::tuple<PortRole, std::string, std::string, std::string>, std::unique_ptr<Histogram>> pool_waits_;
    std::map<std::pair<PortRole, std::string>, std::unique_ptr<std::atomic<uint64_t>>> logins_;
    mutable std::mutex pools_mu_;
    std::vector<PoolRow> pools_;
    mutable std::mutex mu_;  // guards the maps' shape, never the counters
    std::map<std::pair<PortRole, std::string>, std::unique_ptr<MemberStats>> members_;
    std::map<std::pair<std::string, std::string>, std::unique_ptr<std::atomic<uint64_t>>> errors_;
};

}  // namespace pgrelay::metrics
