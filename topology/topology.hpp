// The Topology value: an immutable snapshot of the cluster (who is primary, which
// members exist, their role, state, lag and tags) that sources publish and the
// router reads. Routing decisions are pure functions of a snapshot (routing.hpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgrelay::topology {

// Patroni's member roles; `master` and `primary` both map to Primary.
enum class Role { Primary, Replica, StandbyLeader, Other };
// Patroni's member states, reduced to what routing needs. A static topology's
// health check sets Running or Stopped.
enum class State { Running, Starting, Stopped, Other };

std::string_view to_string(Role r) noexcept;
std::string_view to_string(State s) noexcept;

struct Member {
    std::string name;
    std::string host;
    uint16_t port = 0;
    Role role = Role::Other;
    State state = State::Other;
    std::optional<uint64_t> lag_bytes;  // unknown -> treated as lagging by lag-aware routing
    std::vector<std::string> tags;      // set tags (e.g. "noloadbalance")
    uint32_t weight = 1;                // 0 = never chosen for reads
    bool excluded = false;              // operator's static exclude list
    bool unreachable = false;           // pgrelay's probe cannot reach it (no new ro connections)

    bool has_tag(std::string_view t) const noexcept;
    std::string address() const;  // "host:port"
};

struct Topology {
    uint64_t version = 0;                 // increases with every published snapshot
    std::string source;                   // "static", "zookeeper", "etcd", "patroni_api"
    std::vector<Member> members;
    std::optional<size_t> primary;        // index into members: the member allowed to take writes
    std::string leader;                   // who holds the write authority (Patroni's leader key, or the
                                          // static primary), even before it can take writes
    std::string primary_reason;           // why there is no primary, when there is none
    // `leader` comes from the members' Patroni REST APIs (GET /primary),
    // not from the DCS: the DCS is unreachable or its view is behind.
    bool leader_from_rest = false;
    // A planned switchover away from `leader` is under way: Patroni wrote its
    // failover key (before it stops the old primary), naming `switchover_to`
    // ("" when any member may take over), first seen at `switchover_since`.
    bool switchover_pending = false;
    std::string switchover_to;
    std::chrono::steady_clock::time_point switchover_since{};

    const Member* primary_member() const noexcept {
        return primary ? &members[*primary] : nullptr;
    }
    const Member* find(std::string_view name) const noexcept;
    // Patroni elects the primary: when it cannot take connections, a new one
    // is coming, so rw connections wait for it. A static list has no such
    // authority.
    bool elects_primary() const noexcept { return source != "static"; }
};

using TopologyPtr = std::shared_ptr<const Topology>;

}  // namespace pgrelay::topology
