// Routing as pure functions of a Topology snapshot: which member a new rw or ro
// connection goes to. No I/O, no clocks, no globals: unit-tested on snapshots.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "topology/topology.hpp"

namespace pgrelay::topology {

enum class Balance { RoundRobin, LeastConn };

struct RoutingOptions {
    bool ro_fallback_to_primary = true;
    Balance ro_balance = Balance::RoundRobin;
    uint64_t max_replica_lag = 16ull << 20;  // bytes; only enforced where lag is known to the source
    bool lag_aware = false;                  // sources that know lag (ZooKeeper) turn this on
};

// Why a member cannot take new ro connections, or empty when it can.
std::string ro_ineligibility(const Member& m, const RoutingOptions& opts);

// Indices of members eligible for new ro connections, in snapshot order.
std::vector<size_t> eligible_replicas(const Topology& t, const RoutingOptions& opts);

// The ordered list of members a new ro connection should try: eligible replicas
// starting at the round-robin position `rr` (weights repeat a member in the
// cycle), then, when allowed, the primary. Empty means "no replica available".
// A member appears at most once. `conns` (optional, by member index) drives
// least_conn instead of `rr`.
std::vector<size_t> ro_candidates(const Topology& t, const RoutingOptions& opts, uint64_t rr,
                                  const std::vector<uint32_t>* conns = nullptr);

}  // namespace pgrelay::topology
