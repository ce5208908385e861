// Router (router.hpp): the I/O-free choice of backends for a new connection.
#include "proxy/router.hpp"

namespace pgrelay {

std::string Target::address() const {
    if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
    return host + ":" + std::to_string(port);
}

namespace {
Target to_target(const topology::Member& m) { return Target{m.name, m.host, m.port}; }
}  // namespace

RouteDecision Router::route(PortRole role, const topology::Topology* t) {
    RouteDecision d;
    if (role == PortRole::ReadWrite) {
        const topology::Member* p = t ? t->primary_member() : nullptr;
        if (p) {
            d.candidates.push_back(to_target(*p));
        } else {
            d.sqlstate = "57P03";
            d.message = "pgrelay rw: no primary available";
            if (t && !t->primary_reason.empty()) d.message += " (" + t->primary_reason + ")";
        }
        return d;
    }
    if (t) {
        const uint64_t rr = ro_rr_.fetch_add(1, std::memory_order_relaxed);
        for (size_t i : topology::ro_candidates(*t, opts_, rr)) d.candidates.push_back(to_target(t->members[i]));
    }
    if (d.candidates.empty()) {
        d.sqlstate = "57P03";
        d.message = opts_.ro_fallback_to_primary ? "pgrelay ro: no replica and no primary available"
                                                 : "pgrelay ro: no replica available (ro_fallback_to_primary is off)";
    }
    return d;
}

}  // namespace pgrelay
