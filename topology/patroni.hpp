// Patroni's cluster state as stored in ZooKeeper, and the pure function that
// turns it into a Topology. Layout (Patroni 3.0, base /<namespace>/<scope>):
//   leader          ephemeral, plain text: the leader member's name
//   members/<name>  ephemeral, JSON: conn_url, role, state, xlog_location, tags...
//   status          {"optime": <leader WAL position>, "slots": {...}}
//   optime/leader   legacy clusters: the leader WAL position as a decimal string
//   sync            {"leader": ..., "sync_standby": ...}
//   failover        {"leader": ..., "member": ..., "scheduled_at": ...}: a
//                   switchover or failover asked for (patronictl, REST)
// No I/O here: parsers take znode contents, unit-tested on recorded data.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "topology/topology.hpp"

namespace pgrelay::topology::patroni {

struct MemberInfo {
    std::string name;
    std::string host;
    uint16_t port = 0;
    Role role = Role::Other;
    std::string role_text;  // as Patroni wrote it ("master", "replica", "promoted", ...)
    State state = State::Other;
    std::string state_text;  // as Patroni wrote it ("running", "creating replica", ...)
    std::optional<uint64_t> xlog_location;
    std::optional<uint64_t> timeline;
    std::vector<std::string> tags;  // tags whose value is true (or a non-false string)
    // Lag as Patroni's REST API reports it (its leader optime minus this
    // member's xlog_location), used when pgrelay cannot compute it itself.
    std::optional<uint64_t> reported_lag;
    // The member's Patroni REST API (api_url without its path:
    // "http://127.0.0.1:8008"), empty when it has none or it is unreadable.
    std::string api_url;
};

// Parses members/<name>. On garbage returns nullopt with `error` set; the
// caller logs it and treats the member as absent.
std::optional<MemberInfo> parse_member(std::string_view name, std::string_view json, std::string& error);

// "postgres://host:port/db" (also postgresql://, user@host, [v6]:port,
// default port 5432).
bool parse_conn_url(std::string_view url, std::string& host, uint16_t& port);
// A member's api_url ("http://h:8008/patroni") reduced to scheme://host:port;
// empty when it is not an http(s) URL with a host.
std::string api_base(std::string_view api_url);

// The leader's WAL position from `status` ({"optime": N}); nullopt if absent.
std::optional<uint64_t> parse_status_optime(std::string_view json);
// Legacy `optime/leader`: a decimal string.
std::optional<uint64_t> parse_legacy_optime(std::string_view text);
// `sync`'s sync_standby, if any.
std::optional<std::string> parse_sync_standby(std::string_view json);

// `failover`: who is to hand over (leader, when named) to whom (member, when
// named), and whether it is scheduled for later. Patroni also accepts the
// old plain form "leader:member". nullopt for an empty or unreadable value,
// and for one that names neither (what Patroni leaves behind, "{}").
struct FailoverKey {
    std::optional<std::string> leader, candidate;
    bool scheduled = false;  // scheduled_at set: not under way yet
};
std::optional<FailoverKey> parse_failover(std::string_view value);

// Patroni's REST `GET /cluster` (patroni/utils.py cluster_as_json): who holds
// the leader key and every member. Its "role" comes from the leader key, not
// from the member's PostgreSQL: the leader is "leader" while it may still be
// promoting, so it is kept as Role::Other here and only the probe makes it
// writable. "sync_standby" and "replica" are replicas.
struct ClusterView {
    std::optional<std::string> leader;
    std::vector<MemberInfo> members;
    bool paused = false;
};
std::optional<ClusterView> parse_cluster(std::string_view json, std::string& error);

Role parse_role(std::string_view role) noexcept;
State parse_state(std::string_view state) noexcept;

// What pgrelay's libpq probe last saw of the leader's PostgreSQL.
enum class ProbeStatus { Unknown, Writable, InRecovery, Unreachable };
std::string_view to_string(ProbeStatus s) noexcept;

struct ClusterState {
    std::optional<std::string> leader;         // content of `leader`
    std::map<std::string, MemberInfo> members;  // parsed members/<name>
    std::optional<uint64_t> optime;             // status.optime or legacy optime/leader
    std::optional<std::string> sync_standby;
    std::optional<FailoverKey> failover;
    std::chrono::steady_clock::time_point failover_seen{};  // when `failover` appeared
    // From pgrelay's own probes (fresher than Patroni's loop_wait updates):
    std::optional<uint64_t> leader_wal;          // the leader's pg_current_wal_lsn(), in bytes
    std::map<std::string, uint64_t> replayed;    // replica -> pg_last_wal_replay_lsn(), in bytes
    std::set<std::string> unreachable;           // replicas the replay probe could not reach at its last try
};

struct BuildOptions {
    std::map<std::string, uint32_t> weights;
    std::vector<std::string> exclude;
    bool allow_standby_leader = false;
};

// The routing snapshot. A replica's lag is the leader's WAL position (the
// newer of status.optime and leader_wal) minus the replica's position (the
// lower of xlog_location, which is WAL received, and `replayed`); unknown
// when either side is. `probe` is the probe's verdict on `probe_member`
// (ignored when that is not the current leader). The leader takes writes when
// the probe saw it writable, or its member znode says running + master/primary
// (standby_leader only if allowed) -- and never while the probe finds its
// PostgreSQL unreachable.
std::shared_ptr<Topology> build_topology(const ClusterState& s, const BuildOptions& o,
                                         const std::string& probe_member, ProbeStatus probe);

}  // namespace pgrelay::topology::patroni
