// Topology value helpers and the pure routing functions (routing.hpp).
#include "topology/topology.hpp"

#include <algorithm>
#include <numeric>

#include "topology/routing.hpp"

namespace pgrelay::topology {

std::string_view to_string(Role r) noexcept {
    switch (r) {
        case Role::Primary: return "primary";
        case Role::Replica: return "replica";
        case Role::StandbyLeader: return "standby_leader";
        case Role::Other: return "other";
    }
    return "?";
}

std::string_view to_string(State s) noexcept {
    switch (s) {
        case State::Running: return "running";
        case State::Starting: return "starting";
        case State::Stopped: return "stopped";
        case State::Other: return "other";
    }
    return "?";
}

bool Member::has_tag(std::string_view t) const noexcept {
    return std::find(tags.begin(), tags.end(), t) != tags.end();
}

std::string Member::address() const {
    // IPv6 literals need brackets to stay unambiguous next to the port.
    if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
    return host + ":" + std::to_string(port);
}

const Member* Topology::find(std::string_view name) const noexcept {
    for (const auto& m : members)
        if (m.name == name) return &m;
    return nullptr;
}

std::string ro_ineligibility(const Member& m, const RoutingOptions& opts) {
    if (m.excluded) return "excluded in config";
    if (m.unreachable) return "pgrelay's probe cannot reach it";
    if (m.role != Role::Replica) return "role is " + std::string(to_string(m.role));
    if (m.state != State::Running) return "state is " + std::string(to_string(m.state));
    if (m.has_tag("noloadbalance")) return "tagged noloadbalance";
    if (m.weight == 0) return "weight is 0";
    if (opts.lag_aware) {
        if (!m.lag_bytes) return "lag unknown";
        if (*m.lag_bytes > opts.max_replica_lag)
            return "lag " + std::to_string(*m.lag_bytes) + " bytes > max_replica_lag " +
                   std::to_string(opts.max_replica_lag);
    }
    return {};
}

std::vector<size_t> eligible_replicas(const Topology& t, const RoutingOptions& opts) {
    std::vector<size_t> out;
    // The write target is never a read replica, even while its member znode
    // still says "replica" (promotion seen by the probe first).
    for (size_t i = 0; i < t.members.size(); ++i)
        if (i != t.primary && ro_ineligibility(t.members[i], opts).empty()) out.push_back(i);
    return out;
}

std::vector<size_t> ro_candidates(const Topology& t, const RoutingOptions& opts, uint64_t rr,
                                  const std::vector<uint32_t>* conns) {
    std::vector<size_t> eligible = eligible_replicas(t, opts);
    std::vector<size_t> out;
    out.reserve(eligible.size() + 1);
    if (!eligible.empty()) {
        if (opts.ro_balance == Balance::LeastConn && conns) {
            // Fewest open connections per unit of weight first; ties keep the
            // round-robin order so equal members still alternate.
            const size_t n = eligible.size();
            std::rotate(eligible.begin(), eligible.begin() + static_cast<long>(rr % n), eligible.end());
            auto load = [&](size_t i) {
                const uint32_t c = i < conns->size() ? (*conns)[i] : 0;
                return double(c) / double(t.members[i].weight);
            };
            std::stable_sort(eligible.begin(), eligible.end(),
                             [&](size_t a, size_t b) { return load(a) < load(b); });
            out = eligible;
        } else {
            // Weighted round robin: position rr in a cycle where member i appears
            // weight(i) times, then the remaining members in cycle order.
            uint64_t total = 0;
            for (size_t i : eligible) total += t.members[i].weight;
            uint64_t slot = rr % total;
            size_t first = 0;
            for (size_t k = 0; k < eligible.size(); ++k) {
                const uint32_t w = t.members[eligible[k]].weight;
                if (slot < w) {
                    first = k;
                    break;
                }
                slot -= w;
            }
            for (size_t k = 0; k < eligible.size(); ++k) out.push_back(eligible[(first + k) % eligible.size()]);
        }
    }
    if (opts.ro_fallback_to_primary && t.primary && !t.members[*t.primary].excluded) out.push_back(*t.primary);
    return out;
}

}  // namespace pgrelay::topology
