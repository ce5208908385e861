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
        } else if (!t) {
            d.sqlstate = "57P03";
            d.message = "pgrelay rw: no primary available (cluster state not known yet)";
        } else {
            d.sqlstate = "57P03";
            d.message = "pgrelay rw: no primary available";
            if (t && !t->primary_reason.empty()) d.message += " (" + t->primary_reason + ")";
        }
        return d;
    }
    const topology::RoutingOptions opts = options();
    if (t) {
        const uint64_t rr = ro_rr_.fetch_add(1, std::memory_order_relaxed);
        std::vector<uint32_t> conns;
        if (opts.ro_balance == topology::Balance::LeastConn) {
            std::lock_guard lock(mu_);
            for (const auto& m : t->members) {
                auto it = open_.find(m.name);
                conns.push_back(it == open_.end() ? 0 : it->second);
            }
        }
        const auto idx = topology::ro_candidates(*t, opts, rr, conns.empty() ? nullptr : &conns);
        for (size_t i : idx) d.candidates.push_back(to_target(t->members[i]));
        d.primary_last = !idx.empty() && t->primary && idx.back() == *t->primary;
    }
    if (d.candidates.empty() && !t) {
        d.sqlstate = "57P03";
        d.message = "pgrelay ro: no replica available (cluster state not known yet)";
    } else if (d.candidates.empty()) {
        d.sqlstate = "57P03";
        d.message = opts.ro_fallback_to_primary ? "pgrelay ro: no replica and no primary available"
                                                 : "pgrelay ro: no replica available (ro_fallback_to_primary is off)";
    }
    return d;
}

void Router::set_options(const topology::RoutingOptions& opts) {
    std::lock_guard lock(mu_);
    opts_ = opts;
}

topology::RoutingOptions Router::options() const {
    std::lock_guard lock(mu_);
    return opts_;
}

void Router::opened(const std::string& member) {
    std::lock_guard lock(mu_);
    ++open_[member];
}

void Router::closed(const std::string& member) {
    std::lock_guard lock(mu_);
    auto it = open_.find(member);
    if (it != open_.end() && it->second > 0 && --it->second == 0) open_.erase(it);
}

uint32_t Router::open_count(const std::string& member) const {
    std::lock_guard lock(mu_);
    auto it = open_.find(member);
    return it == open_.end() ? 0 : it->second;
}

}  // namespace pgrelay
