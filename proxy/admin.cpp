// AdminServer (admin.hpp): a small HTTP/1.1 server with Beast and coroutines.
#include "proxy/admin.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include <algorithm>
#include <chrono>
#include <ctime>

#include "proxy/log.hpp"
#include "proxy/metrics.hpp"
#include "proxy/status_page.hpp"
#include "topology/routing.hpp"

namespace pgrelay {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;

// The pools as the pool worker last published them (at most 250 ms old).
std::string pools_json() {
    boost::json::array pools;
    for (const metrics::PoolRow& r : metrics::Registry::instance().pools()) {
        boost::json::object j;
        j["port"] = to_string(r.port);
        j["mode"] = r.mode;
        j["member"] = r.member;
        j["database"] = r.database;
        j["user"] = r.user;
        j["pool_size"] = r.pool_size;
        j["clients"] = r.clients;
        j["clients_active"] = r.clients_active;
        j["clients_waiting"] = r.clients_waiting;
        j["servers_active"] = r.servers_active;
        j["servers_idle"] = r.servers_idle;
        j["servers_opening"] = r.servers_opening;
        j["servers_opened_total"] = r.servers_opened;
        j["servers_closed_total"] = r.servers_closed;
        j["acquired_total"] = r.acquired;
        j["wait_timeouts_total"] = r.wait_timeouts;
        j["wait_seconds_total"] = r.wait_seconds;
        pools.push_back(std::move(j));
    }
    boost::json::object o;
    o["pools"] = std::move(pools);
    return boost::json::serialize(o);
}

// ---------------------------------------------------------------- TopologyHistory

void TopologyHistory::note_reroute(double seconds) {
    std::lock_guard lock(mu_);
    pending_reroute_ = seconds;
}

namespace {
std::string primary_name(const topology::Topology* t) {
    return t && t->primary ? t->members[*t->primary].name : std::string();
}
std::string or_none(const std::string& s) { return s.empty() ? "none" : s; }
}  // namespace

bool TopologyHistory::record(const topology::Topology* before, const topology::Topology& after, int64_t at_unix_ms) {
    TopologyChange c;
    c.at_unix_ms = at_unix_ms;
    c.version = after.version;
    c.primary_before = primary_name(before);
    c.primary = primary_name(&after);
    c.leader_before = before ? before->leader : std::string();
    c.leader = after.leader;
    if (!after.primary) c.primary_reason = after.primary_reason;
    if (!before) {
        c.what.push_back("first topology from " + after.source + ": rw " + or_none(c.primary) + ", " +
                         std::to_string(after.members.size()) + " members");
    } else {
        if (c.primary != c.primary_before)
            c.what.push_back("rw: " + or_none(c.primary_before) + " -> " + or_none(c.primary) +
                             (c.primary.empty() ? " (" + after.primary_reason + ")" : std::string()));
        if (c.leader != c.leader_before)
            c.what.push_back("leader: " + or_none(c.leader_before) + " -> " + or_none(c.leader));
        if (after.switchover_pending && !before->switchover_pending)
            c.what.push_back("switchover announced to " + (after.switchover_to.empty() ? "any member" : after.switchover_to));
        else if (!after.switchover_pending && before->switchover_pending)
            c.what.push_back("switchover key gone");
        for (const auto& m : after.members) {
            const topology::Member* old = before->find(m.name);
            if (!old) {
                c.what.push_back(m.name + " joined as " + std::string(topology::to_string(m.role)));
                continue;
            }
            if (old->role != m.role)
                c.what.push_back(m.name + ": role " + std::string(topology::to_string(old->role)) + " -> " +
                                 std::string(topology::to_string(m.role)));
            if (old->state != m.state)
                c.what.push_back(m.name + ": state " + std::string(topology::to_string(old->state)) + " -> " +
                                 std::string(topology::to_string(m.state)));
            if (old->unreachable != m.unreachable)
                c.what.push_back(m.name + (m.unreachable ? ": probe cannot reach it" : ": probe reaches it again"));
            if (old->excluded != m.excluded) c.what.push_back(m.name + (m.excluded ? ": excluded" : ": no longer excluded"));
            if (old->weight != m.weight)
                c.what.push_back(m.name + ": weight " + std::to_string(old->weight) + " -> " + std::to_string(m.weight));
        }
        for (const auto& m : before->members)
            if (!after.find(m.name)) c.what.push_back(m.name + " left");
    }
    std::lock_guard lock(mu_);
    if (c.what.empty()) return false;
    if (c.primary != c.primary_before && !c.primary.empty() && pending_reroute_) c.reroute_seconds = pending_reroute_;
    if (c.reroute_seconds || c.primary != c.primary_before) pending_reroute_.reset();
    ring_.push_back(std::move(c));
    while (ring_.size() > kCapacity) ring_.pop_front();
    ++total_;
    return true;
}

std::vector<TopologyChange> TopologyHistory::recent() const {
    std::lock_guard lock(mu_);
    return {ring_.begin(), ring_.end()};
}

uint64_t TopologyHistory::total() const {
    std::lock_guard lock(mu_);
    return total_;
}

namespace {
int64_t unix_ms_now() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// 2026-12-02T15:04:05.123Z
std::string iso_utc(int64_t unix_ms) {
    const std::time_t secs = static_cast<std::time_t>(unix_ms / 1000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char buf[96];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                  tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(unix_ms % 1000));
    return buf;
}

boost::json::object change_object(const TopologyChange& c) {
    auto name_or_null = [](const std::string& s) { return s.empty() ? boost::json::value(nullptr) : boost::json::value(s); };
    boost::json::object j;
    j["at"] = iso_utc(c.at_unix_ms);
    j["at_unix_ms"] = c.at_unix_ms;
    j["version"] = c.version;
    j["primary_before"] = name_or_null(c.primary_before);
    j["primary"] = name_or_null(c.primary);
    j["leader_before"] = name_or_null(c.leader_before);
    j["leader"] = name_or_null(c.leader);
    if (!c.primary_reason.empty()) j["primary_reason"] = c.primary_reason;
    boost::json::array what;
    for (const auto& w : c.what) what.emplace_back(w);
    j["what"] = std::move(what);
    j["reroute_seconds"] = c.reroute_seconds ? boost::json::value(*c.reroute_seconds) : boost::json::value(nullptr);
    return j;
}

boost::json::object instance_object(const topology::InstanceInfo& i) {
    boost::json::object j;
    j["id"] = i.id;
    j["peer_address"] = i.peer_address;
    j["version"] = i.version;
    j["started"] = i.started;
    j["cancel_tag"] = topology::instance_tag(i.id);
    return j;
}
}  // namespace

std::string topology_json(const topology::Topology* t, const topology::RoutingOptions& routing,
                          const topology::PeerDirectory* peers, const TopologyHistory* history) {
    boost::json::object o;
    auto& reg = metrics::Registry::instance();
    o["generated_at_unix_ms"] = unix_ms_now();
    {
        // Client connections per port right now (pooled or not).
        boost::json::object conns;
        for (PortRole r : {PortRole::ReadWrite, PortRole::ReadOnly}) {
            auto& p = reg.port(r);
            boost::json::object j;
            j["clients"] = p.client_open.load(std::memory_order_relaxed);
            j["held"] = p.held_now.load(std::memory_order_relaxed);
            j["clients_total"] = p.client_total.load(std::memory_order_relaxed);
            conns[to_string(r)] = std::move(j);
        }
        o["connections"] = std::move(conns);
    }
    if (history) {
        // Newest first.
        boost::json::array list;
        const auto recent = history->recent();
        for (auto it = recent.rbegin(); it != recent.rend(); ++it) list.emplace_back(change_object(*it));
        o["changes"] = std::move(list);
        o["changes_total"] = history->total();
    }
    if (peers) {
        o["instance"] = instance_object(peers->self());
        boost::json::array list;
        for (const auto& p : peers->peers()) list.emplace_back(instance_object(p));
        o["peers"] = std::move(list);
    }
    if (!t) {
        o["known"] = false;
        return boost::json::serialize(o);
    }
    o["known"] = true;
    o["version"] = t->version;
    o["source"] = t->source;
    o["leader"] = t->leader.empty() ? boost::json::value(nullptr) : boost::json::value(t->leader);
    o["primary"] = t->primary ? boost::json::value(t->members[*t->primary].name) : boost::json::value(nullptr);
    if (!t->primary) o["primary_reason"] = t->primary_reason;
    if (t->elects_primary()) o["leader_from"] = t->leader_from_rest ? "patroni_rest" : "dcs";
    // A planned switchover announced by Patroni's failover key.
    if (t->switchover_pending)
        o["switchover_to"] = t->switchover_to.empty() ? boost::json::value("any") : boost::json::value(t->switchover_to);
    boost::json::array members;
    for (size_t i = 0; i < t->members.size(); ++i) {
        const auto& m = t->members[i];
        boost::json::object j;
        j["name"] = m.name;
        j["address"] = m.address();
        j["role"] = std::string(topology::to_string(m.role));
        j["state"] = std::string(topology::to_string(m.state));
        j["lag_bytes"] = m.lag_bytes ? boost::json::value(*m.lag_bytes) : boost::json::value(nullptr);
        boost::json::array tags;
        for (const auto& tag : m.tags) tags.emplace_back(tag);
        j["tags"] = std::move(tags);
        j["weight"] = m.weight;
        j["excluded"] = m.excluded;
        if (m.unreachable) j["unreachable"] = true;
        j["is_primary"] = t->primary == i;
        j["is_leader"] = !t->leader.empty() && m.name == t->leader;
        // rw goes to the primary alone; why any other member does not take it.
        j["rw_eligible"] = t->primary == i;
        if (t->primary != i)
            j["rw_excluded_because"] = m.name == t->leader ? (t->primary_reason.empty() ? std::string("not writable yet")
                                                                                         : t->primary_reason)
                                       : t->leader.empty() ? std::string("no member holds the leader key")
                                                           : "not the leader (" + t->leader + " is)";
        {
            boost::json::object b;
            b["rw"] = reg.backend_open(PortRole::ReadWrite, m.name);
            b["ro"] = reg.backend_open(PortRole::ReadOnly, m.name);
            j["backends"] = std::move(b);
        }
        const std::string why = t->primary == i ? "it is the primary" : topology::ro_ineligibility(m, routing);
        j["ro_eligible"] = why.empty();
        if (!why.empty()) j["ro_excluded_because"] = why;
        members.emplace_back(std::move(j));
    }
    o["members"] = std::move(members);
    return boost::json::serialize(o);
}

constexpr const char* kHtml = "text/html; charset=utf-8";

struct AdminServer::Impl : std::enable_shared_from_this<Impl> {
    asio::io_context& ctx;
    tcp::acceptor acceptor;
    const topology::SnapshotHub& hub;
    std::function<topology::RoutingOptions()> routing;
    const topology::PeerDirectory* peers = nullptr;
    const TopologyHistory* history = nullptr;
    bool draining = false;

    Impl(asio::io_context& c, const std::string& host, uint16_t port, const topology::SnapshotHub& h,
         std::function<topology::RoutingOptions()> r)
        : ctx(c), acceptor(c), hub(h), routing(std::move(r)) {
        const tcp::endpoint ep(asio::ip::make_address(host), port);
        acceptor.open(ep.protocol());
        acceptor.set_option(asio::socket_base::reuse_address(true));
        acceptor.bind(ep);
        acceptor.listen();
    }

    Reply handle(const std::string& target) const {
        const std::string path = target.substr(0, target.find('?'));
        const auto snap = hub.latest();
        const auto opts = routing();
        if (path == "/metrics")
            return {200, "text/plain; version=0.0.4; charset=utf-8",
                    metrics::Registry::instance().render(snap.get(), opts)};
        if (draining && (path == "/health" || path == "/health/ro"))
            return {503, "text/plain", "unavailable: this pgrelay instance is shutting down\n"};
        if (path == "/health") {
            if (snap && snap->primary)
                return {200, "text/plain", "ok: rw routes to " + snap->members[*snap->primary].name + "\n"};
            return {503, "text/plain",
                    "unavailable: " + (snap ? snap->primary_reason : std::string("no topology yet")) + "\n"};
        }
        if (path == "/health/ro") {
            if (snap) {
                const auto c = topology::ro_candidates(*snap, opts, 0);
                if (!c.empty()) return {200, "text/plain", "ok: ro routes to " + snap->members[c.front()].name + "\n"};
            }
            return {503, "text/plain", snap ? "unavailable: no eligible replica\n" : "unavailable: no topology yet\n"};
        }
        if (path == "/topology")
            return {200, "application/json", topology_json(snap.get(), opts, peers, history) + "\n"};
        if (path == "/pools") return {200, "application/json", pools_json() + "\n"};
        if (path == "/" || path == "/status") return {200, kHtml, std::string(status_page_html())};
        return {404, "text/plain", "not found; try /, /metrics, /health, /health/ro, /topology, /pools\n"};
    }

    asio::awaitable<void> serve(tcp::socket sock) {
        beast::tcp_stream stream(std::move(sock));
        beast::flat_buffer buf;
        for (;;) {
            http::request<http::string_body> req;
            stream.expires_after(std::chrono::seconds(10));
            auto [ec, n] = co_await http::async_read(stream, buf, req, asio::as_tuple(asio::use_awaitable));
            if (ec) break;
            Reply r = handle(std::string(req.target()));
            if (req.method() != http::verb::get && req.method() != http::verb::head)
                r = {405, "text/plain", "only GET and HEAD\n"};
            http::response<http::string_body> res{static_cast<http::status>(r.status), req.version()};
            res.set(http::field::server, "pgrelay");
            res.set(http::field::content_type, r.content_type);
            if (r.content_type == kHtml) {
                // The page is one document: inline script and style, data from
                // this origin only, no frames, no other resources.
                res.set("Content-Security-Policy", status_page_csp());
                res.set("X-Content-Type-Options", "nosniff");
                res.set("Referrer-Policy", "no-referrer");
                res.set(http::field::cache_control, "no-store");
            }
            res.keep_alive(req.keep_alive());
            if (req.method() != http::verb::head) res.body() = std::move(r.body);
            res.prepare_payload();
            auto [wec, wn] = co_await http::async_write(stream, res, asio::as_tuple(asio::use_awaitable));
            if (wec || !res.keep_alive()) break;
        }
        beast::error_code ignored;
        stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    }

    asio::awaitable<void> accept_loop() {
        auto self = shared_from_this();
        for (;;) {
            auto [ec, sock] = co_await acceptor.async_accept(asio::as_tuple(asio::use_awaitable));
            if (ec == asio::error::operation_aborted) co_return;
            if (ec) {
                log::warn("admin: accept failed: {}", ec.message());
                continue;
            }
            asio::co_spawn(ctx, serve(std::move(sock)), asio::detached);
        }
    }
};

AdminServer::AdminServer(asio::io_context& ctx, const std::string& host, uint16_t port, const topology::SnapshotHub& hub,
                         std::function<topology::RoutingOptions()> routing)
    : impl_(std::make_shared<Impl>(ctx, host, port, hub, std::move(routing))) {}

AdminServer::~AdminServer() { stop(); }

void AdminServer::start() { asio::co_spawn(impl_->ctx, impl_->accept_loop(), asio::detached); }

void AdminServer::stop() {
    boost::system::error_code ec;
    if (impl_) impl_->acceptor.close(ec);
}

void AdminServer::set_peers(const topology::PeerDirectory* peers) { impl_->peers = peers; }
void AdminServer::set_history(const TopologyHistory* history) { impl_->history = history; }
void AdminServer::set_draining() { impl_->draining = true; }

AdminServer::Reply AdminServer::handle(const std::string& target) const { return impl_->handle(target); }

}  // namespace pgrelay
