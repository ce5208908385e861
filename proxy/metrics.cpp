// Metrics registry and Prometheus text exposition (metrics.hpp). Names follow
// Prometheus conventions: pgrelay_ prefix, _total counters, _seconds units.
#include "proxy/metrics.hpp"

#include <fmt/format.h>

#include "topology/routing.hpp"

namespace pgrelay::metrics {

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
    for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void Histogram::observe(double seconds) noexcept {
    size_t i = 0;
    while (i < bounds_.size() && seconds > bounds_[i]) ++i;
    buckets_[i].fetch_add(1, std::memory_order_relaxed);
    count_.fetch_add(1, std::memory_order_relaxed);
    sum_us_.fetch_add(static_cast<uint64_t>(seconds * 1e6), std::memory_order_relaxed);
}

void Histogram::render(std::string& out, std::string_view name, std::string_view labels) const {
    uint64_t cumulative = 0;
    const std::string sep = labels.empty() ? "" : ",";
    for (size_t i = 0; i < bounds_.size(); ++i) {
        cumulative += buckets_[i].load(std::memory_order_relaxed);
        out += fmt::format("{}_bucket{{{}{}le=\"{}\"}} {}\n", name, labels, sep, bounds_[i], cumulative);
    }
    cumulative += buckets_[bounds_.size()].load(std::memory_order_relaxed);
    out += fmt::format("{}_bucket{{{}{}le=\"+Inf\"}} {}\n", name, labels, sep, cumulative);
    const std::string braces = labels.empty() ? "" : "{" + std::string(labels) + "}";
    out += fmt::format("{}_sum{} {}\n", name, braces, static_cast<double>(sum_us_.load(std::memory_order_relaxed)) / 1e6);
    // _count equals the +Inf bucket as rendered (read once, so they agree).
    out += fmt::format("{}_count{} {}\n", name, braces, cumulative);
}

Registry& Registry::instance() {
    static Registry r;
    return r;
}

MemberStats& Registry::member(PortRole port, const std::string& member) {
    std::lock_guard lock(mu_);
    auto& slot = members_[{port, member}];
    if (!slot) slot = std::make_unique<MemberStats>();
    return *slot;
}

int64_t Registry::backend_open(PortRole port, const std::string& member) const {
    std::lock_guard lock(mu_);
    auto it = members_.find({port, member});
    return it == members_.end() ? 0 : it->second->backend_open.load(std::memory_order_relaxed);
}

void Registry::count_error(std::string_view origin, std::string_view sqlstate) {
    std::atomic<uint64_t>* c;
    {
        std::lock_guard lock(mu_);
        auto& slot = errors_[{std::string(origin), std::string(sqlstate)}];
        if (!slot) slot = std::make_unique<std::atomic<uint64_t>>(0);
        c = slot.get();
    }
    c->fetch_add(1, std::memory_order_relaxed);
}

Histogram& Registry::pool_wait(PortRole port, const std::string& member, const std::string& database,
                               const std::string& user) {
    std::lock_guard lock(mu_);
    auto& slot = pool_waits_[{port, member, database, user}];
    if (!slot) slot = std::make_unique<Histogram>(std::vector<double>{0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30});
    return *slot;
}

void Registry::set_pools(std::vector<PoolRow> rows) {
    std::lock_guard lock(pools_mu_);
    pools_ = std::move(rows);
}

std::vector<PoolRow> Registry::pools() const {
    std::lock_guard lock(pools_mu_);
    return pools_;
}

void Registry::count_login(PortRole port, std::string_view outcome) {
    std::atomic<uint64_t>* c;
    {
        std::lock_guard lock(mu_);
        auto& slot = logins_[{port, std::string(outcome)}];
        if (!slot) slot = std::make_unique<std::atomic<uint64_t>>(0);
        c = slot.get();
    }
    c->fetch_add(1, std::memory_order_relaxed);
}

namespace {

// Label values: backslash, quote and newline escaped as the format requires.
std::string esc(std::string_view v) {
    std::string o;
    for (char c : v) {
        if (c == '\\' || c == '"') o.push_back('\\');
        if (c == '\n') {
            o += "\\n";
            continue;
        }
        o.push_back(c);
    }
    return o;
}

void head(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

uint64_t get(const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); }
int64_t get(const std::atomic<int64_t>& a) { return a.load(std::memory_order_relaxed); }

}  // namespace

std::string Registry::render(const topology::Topology* t, const topology::RoutingOptions& routing) const {
    std::string out;
    out.reserve(8192);
    const std::pair<const char*, const PortStats*> ports[] = {{"rw", &rw_}, {"ro", &ro_}};

    head(out, "pgrelay_client_connections", "gauge", "Client connections open, by port.");
    for (auto [p, s] : ports) out += fmt::format("pgrelay_client_connections{{port=\"{}\"}} {}\n", p, get(s->client_open));
    head(out, "pgrelay_client_connections_total", "counter", "Client connections accepted, by port.");
    for (auto [p, s] : ports)
        out += fmt::format("pgrelay_client_connections_total{{port=\"{}\"}} {}\n", p, get(s->client_total));
    head(out, "pgrelay_held_connections", "gauge", "Connections waiting for a primary (or a first topology), by port.");
    for (auto [p, s] : ports) out += fmt::format("pgrelay_held_connections{{port=\"{}\"}} {}\n", p, get(s->held_now));
    head(out, "pgrelay_held_connections_total", "counter", "Connections that had to wait, by port.");
    for (auto [p, s] : ports)
        out += fmt::format("pgrelay_held_connections_total{{port=\"{}\"}} {}\n", p, get(s->held_total));
    head(out, "pgrelay_hold_seconds", "histogram", "How long held connections waited, by port.");
    for (auto [p, s] : ports) s->hold_seconds.render(out, "pgrelay_hold_seconds", fmt::format("port=\"{}\"", p));
    head(out, "pgrelay_query_seconds", "histogram",
         "Request latency through pgrelay, from the first client message to ReadyForQuery, by port.");
    for (auto [p, s] : ports) s->query_seconds.render(out, "pgrelay_query_seconds", fmt::format("port=\"{}\"", p));
    head(out, "pgrelay_sessions_terminated_total", "counter",
         "Sessions pgrelay ended: 57P01 (member lost its role, shutdown) or 57P05 (idle_client_timeout), by port.");
    for (auto [p, s] : ports)
        out += fmt::format("pgrelay_sessions_terminated_total{{port=\"{}\"}} {}\n", p, get(s->terminated));
    head(out, "pgrelay_client_tls_total", "counter",
         "Client connections by transport: TLS handshake ok or failed, or plaintext StartupMessage; by port.");
    for (auto [p, s] : ports) {
        out += fmt::format("pgrelay_client_tls_total{{port=\"{}\",outcome=\"ok\"}} {}\n", p, get(s->tls_ok));
        out += fmt::format("pgrelay_client_tls_total{{port=\"{}\",outcome=\"failed\"}} {}\n", p, get(s->tls_failed));
        out += fmt::format("pgrelay_client_tls_total{{port=\"{}\",outcome=\"plaintext\"}} {}\n", p, get(s->plaintext));
    }
    head(out, "pgrelay_client_tls_direct_total", "counter",
         "Of the ok TLS handshakes, those started directly (sslnegotiation=direct, ALPN postgresql), by port.");
    for (auto [p, s] : ports)
        out += fmt::format("pgrelay_client_tls_direct_total{{port=\"{}\"}} {}\n", p, get(s->tls_direct));

    {
        std::lock_guard lock(mu_);
        struct Col {
            const char* name;
            const char* type;
            const char* help;
            int64_t (*value)(const MemberStats&);
        };
        const Col cols[] = {
            {"pgrelay_backend_connections", "gauge", "Backend connections open, by port and member.",
             [](const MemberStats& m) { return get(m.backend_open); }},
            {"pgrelay_backend_connections_total", "counter", "Backend connections opened, by port and member.",
             [](const MemberStats& m) { return static_cast<int64_t>(get(m.backend_total)); }},
            {"pgrelay_client_bytes_received_total", "counter", "Bytes relayed from clients to the member.",
             [](const MemberStats& m) { return static_cast<int64_t>(get(m.bytes_from_client)); }},
            {"pgrelay_client_bytes_sent_total", "counter", "Bytes relayed from the member to clients.",
             [](const MemberStats& m) { return static_cast<int64_t>(get(m.bytes_to_client)); }},
            {"pgrelay_queries_total", "counter", "Requests completed (ReadyForQuery), by port and member.",
             [](const MemberStats& m) { return static_cast<int64_t>(get(m.queries)); }},
            {"pgrelay_transactions_total", "counter",
             "Transactions completed (ReadyForQuery back to idle), by port and member.",
             [](const MemberStats& m) { return static_cast<int64_t>(get(m.transactions)); }},
        };
        for (const Col& c : cols) {
            head(out, c.name, c.type, c.help);
            for (const auto& [key, m] : members_)
                out += fmt::format("{}{{port=\"{}\",member=\"{}\"}} {}\n", c.name, to_string(key.first), esc(key.second),
                                   c.value(*m));
        }
        head(out, "pgrelay_errors_total", "counter",
             "ErrorResponses sent to clients, by origin (pgrelay or backend) and SQLSTATE.");
        for (const auto& [key, n] : errors_)
            out += fmt::format("pgrelay_errors_total{{origin=\"{}\",sqlstate=\"{}\"}} {}\n", esc(key.first),
                               esc(key.second), get(*n));
        head(out, "pgrelay_pool_logins_total", "counter",
             "Client logins pgrelay authenticated itself (pooled ports), by outcome: ok, failed (wrong password or "
             "unknown user), malformed, abandoned, error (secret lookup failed).");
        for (const auto& [key, n] : logins_)
            out += fmt::format("pgrelay_pool_logins_total{{port=\"{}\",outcome=\"{}\"}} {}\n", to_string(key.first),
                               esc(key.second), get(*n));
    }
    {
        const std::vector<PoolRow> rows = pools();
        struct Col {
            const char* name;
            const char* type;
            const char* help;
            double (*value)(const PoolRow&);
        };
        static constexpr Col cols[] = {
            {"pgrelay_pool_clients", "gauge", "Clients logged in to the pool's user and database.",
             [](const PoolRow& r) { return double(r.clients); }},
            {"pgrelay_pool_clients_active", "gauge", "Clients holding one of the pool's server connections now.",
             [](const PoolRow& r) { return double(r.clients_active); }},
            {"pgrelay_pool_clients_waiting", "gauge", "Clients waiting for one of the pool's server connections now.",
             [](const PoolRow& r) { return double(r.clients_waiting); }},
            {"pgrelay_pool_servers_active", "gauge", "Server connections lent to a client now.",
             [](const PoolRow& r) { return double(r.servers_active); }},
            {"pgrelay_pool_servers_idle", "gauge", "Server connections idle in the pool.",
             [](const PoolRow& r) { return double(r.servers_idle); }},
            {"pgrelay_pool_servers_opening", "gauge", "Server connections being opened (connect and login).",
             [](const PoolRow& r) { return double(r.servers_opening); }},
            {"pgrelay_pool_size", "gauge", "The pool's pool_size.", [](const PoolRow& r) { return double(r.pool_size); }},
            {"pgrelay_pool_servers_opened_total", "counter", "Server connections the pool opened.",
             [](const PoolRow& r) { return double(r.servers_opened); }},
            {"pgrelay_pool_servers_closed_total", "counter",
             "Server connections the pool closed (lifetime, idle timeout, broken, died while idle).",
             [](const PoolRow& r) { return double(r.servers_closed); }},
            {"pgrelay_pool_acquired_total", "counter", "Times a client got a server connection from the pool.",
             [](const PoolRow& r) { return double(r.acquired); }},
            {"pgrelay_pool_wait_timeouts_total", "counter", "Clients that got no server within query_wait_timeout.",
             [](const PoolRow& r) { return double(r.wait_timeouts); }},
        };
        for (const Col& c : cols) {
            head(out, c.name, c.type, c.help);
            for (const PoolRow& r : rows)
                out += fmt::format("{}{{port=\"{}\",member=\"{}\",database=\"{}\",user=\"{}\"}} {}\n", c.name,
                                   to_string(r.port), esc(r.member), esc(r.database), esc(r.user), c.value(r));
        }
    }
    head(out, "pgrelay_pool_port_clients_waiting", "gauge", "Pooled clients waiting for a server connection now, per port.");
    out += fmt::format("pgrelay_pool_port_clients_waiting{{port=\"rw\"}} {}\n", rw_waiting_.load(std::memory_order_relaxed));
    out += fmt::format("pgrelay_pool_port_clients_waiting{{port=\"ro\"}} {}\n", ro_waiting_.load(std::memory_order_relaxed));
    head(out, "pgrelay_pool_wait_seconds", "histogram", "How long pooled clients waited for a server connection, per pool.");
    {
        std::lock_guard lock(mu_);
        for (const auto& [k, h] : pool_waits_)
            h->render(out, "pgrelay_pool_wait_seconds",
                      fmt::format("port=\"{}\",member=\"{}\",database=\"{}\",user=\"{}\"", to_string(std::get<0>(k)),
                                  esc(std::get<1>(k)), esc(std::get<2>(k)), esc(std::get<3>(k))));
    }

    head(out, "pgrelay_cancel_requests_total", "counter", "CancelRequests received, by outcome.");
    out += fmt::format("pgrelay_cancel_requests_total{{outcome=\"forwarded\"}} {}\n", get(cancel_forwarded));
    out += fmt::format("pgrelay_cancel_requests_total{{outcome=\"unknown_key\"}} {}\n", get(cancel_unknown_key));
    out += fmt::format("pgrelay_cancel_requests_total{{outcome=\"backend_unreachable\"}} {}\n", get(cancel_failed));
    out += fmt::format("pgrelay_cancel_requests_total{{outcome=\"to_peer\"}} {}\n", get(cancel_to_peer));
    out += fmt::format("pgrelay_cancel_requests_total{{outcome=\"peer_unreachable\"}} {}\n", get(cancel_peer_unreachable));

    if (peers) {
        const topology::InstanceInfo self = peers->self();
        const std::vector<topology::InstanceInfo> list = peers->peers();
        head(out, "pgrelay_instance_info", "gauge", "This pgrelay instance: its id, the address peers use, its version.");
        out += fmt::format("pgrelay_instance_info{{id=\"{}\",peer_address=\"{}\",version=\"{}\",cancel_tag=\"{}\"}} 1\n",
                           esc(self.id), esc(self.peer_address), esc(self.version), topology::instance_tag(self.id));
        head(out, "pgrelay_peers", "gauge", "Other pgrelay instances registered live (in the DCS, or listed in [instance] peers).");
        out += fmt::format("pgrelay_peers {}\n", list.size());
        head(out, "pgrelay_peer_info", "gauge", "One series per live peer instance.");
        for (const auto& p : list)
            out += fmt::format("pgrelay_peer_info{{id=\"{}\",peer_address=\"{}\",version=\"{}\"}} 1\n", esc(p.id),
                               esc(p.peer_address), esc(p.version));
        head(out, "pgrelay_peer_tag_conflicts", "gauge",
             "Live peers whose cancel-key tag equals this instance's (their ids collide): cancels between them are not forwarded.");
        out += fmt::format("pgrelay_peer_tag_conflicts {}\n", peers->tag_conflicts());
    }

    head(out, "pgrelay_topology_changes_total", "counter", "Topology snapshots published.");
    out += fmt::format("pgrelay_topology_changes_total {}\n", get(topology_changes));
    head(out, "pgrelay_primary_changes_total", "counter", "Times the rw target changed (including to none).");
    out += fmt::format("pgrelay_primary_changes_total {}\n", get(primary_changes));
    head(out, "pgrelay_reroute_seconds", "histogram",
         "From the store event announcing a new leader key (or the Patroni REST poll that saw it) to rw routing there.");
    reroute_seconds.render(out, "pgrelay_reroute_seconds", "");

    if (!dcs_source.empty()) {
        const std::string l = fmt::format("source=\"{}\"", dcs_source);
        head(out, "pgrelay_dcs_connected", "gauge",
             "1 while pgrelay follows the cluster's store live (ZooKeeper session, etcd watch, Patroni REST answers).");
        out += fmt::format("pgrelay_dcs_connected{{{}}} {}\n", l, source.connected.load(std::memory_order_relaxed));
        head(out, "pgrelay_dcs_reconnects_total", "counter", "Connections to the store after the first.");
        out += fmt::format("pgrelay_dcs_reconnects_total{{{}}} {}\n", l, get(source.reconnects));
        head(out, "pgrelay_dcs_resyncs_total", "counter",
             "Full re-reads of the cluster state after the first (reconnect, etcd compaction, a stale watch).");
        out += fmt::format("pgrelay_dcs_resyncs_total{{{}}} {}\n", l, get(source.resyncs));
        head(out, "pgrelay_dcs_endpoint_failures_total", "counter",
             "Store endpoints that failed (connect, timeout, error), each moving pgrelay to the next one.");
        out += fmt::format("pgrelay_dcs_endpoint_failures_total{{{}}} {}\n", l, get(source.endpoint_failures));
        if (dcs_source != "patroni_api") {
            head(out, "pgrelay_dcs_rest_fallback", "gauge",
                 "1 while rw follows the members' Patroni REST APIs (GET /primary) because the store is unreachable "
                 "or behind.");
            out += fmt::format("pgrelay_dcs_rest_fallback{{{}}} {}\n", l,
                               source.rest_authority.load(std::memory_order_relaxed));
            head(out, "pgrelay_dcs_rest_takeovers_total", "counter",
                 "Times the REST fallback named a leader the store did not (yet).");
            out += fmt::format("pgrelay_dcs_rest_takeovers_total{{{}}} {}\n", l, get(source.rest_takeovers));
        }
    }
    if (dcs_source == "zookeeper") {
        head(out, "pgrelay_zookeeper_connected", "gauge", "1 while pgrelay's ZooKeeper session is connected.");
        out += fmt::format("pgrelay_zookeeper_connected {}\n", source.connected.load(std::memory_order_relaxed));
        head(out, "pgrelay_zookeeper_reconnects_total", "counter", "ZooKeeper (re)connections after the first.");
        out += fmt::format("pgrelay_zookeeper_reconnects_total {}\n", get(source.reconnects));
        head(out, "pgrelay_zookeeper_session_expiries_total", "counter", "ZooKeeper sessions that expired.");
        out += fmt::format("pgrelay_zookeeper_session_expiries_total {}\n", get(source.session_expiries));
    }

    head(out, "pgrelay_primary_available", "gauge", "1 while rw can route to a primary.");
    out += fmt::format("pgrelay_primary_available {}\n", t && t->primary ? 1 : 0);
    // Each family's samples must be contiguous in the text format.
    struct Gauge {
        const char* name;
        const char* help;
    };
    const Gauge gauges[] = {{"pgrelay_member_is_primary", "1 for the member rw routes to."},
                            {"pgrelay_member_up", "1 while the member's state is running."},
                            {"pgrelay_member_ro_eligible", "1 while the member may take new ro connections."},
                            {"pgrelay_member_lag_bytes", "Replica lag behind the leader in bytes (absent when unknown)."}};
    for (size_t g = 0; g < std::size(gauges); ++g) {
        head(out, gauges[g].name, "gauge", gauges[g].help);
        if (!t) continue;
        for (size_t i = 0; i < t->members.size(); ++i) {
            const auto& m = t->members[i];
            const std::string l = fmt::format("member=\"{}\",role=\"{}\"", esc(m.name), to_string(m.role));
            int64_t v = 0;
            switch (g) {
                case 0: v = t->primary == i ? 1 : 0; break;
                case 1: v = m.state == topology::State::Running ? 1 : 0; break;
                case 2: v = (i != t->primary && topology::ro_ineligibility(m, routing).empty()) ? 1 : 0; break;
                case 3:
                    if (!m.lag_bytes) continue;
                    v = static_cast<int64_t>(*m.lag_bytes);
                    break;
            }
            out += fmt::format("{}{{{}}} {}\n", gauges[g].name, l, v);
        }
    }
    return out;
}

}  // namespace pgrelay::metrics
