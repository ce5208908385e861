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

#include "proxy/log.hpp"
#include "proxy/metrics.hpp"
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

namespace {
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
                          const topology::PeerDirectory* peers) {
    boost::json::object o;
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
        const std::string why = t->primary == i ? "it is the primary" : topology::ro_ineligibility(m, routing);
        j["ro_eligible"] = why.empty();
        if (!why.empty()) j["ro_excluded_because"] = why;
        members.emplace_back(std::move(j));
    }
    o["members"] = std::move(members);
    return boost::json::serialize(o);
}

struct AdminServer::Impl : std::enable_shared_from_this<Impl> {
    asio::io_context& ctx;
    tcp::acceptor acceptor;
    const topology::SnapshotHub& hub;
    std::function<topology::RoutingOptions()> routing;
    const topology::PeerDirectory* peers = nullptr;
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
        if (path == "/topology") return {200, "application/json", topology_json(snap.get(), opts, peers) + "\n"};
        if (path == "/pools") return {200, "application/json", pools_json() + "\n"};
        return {404, "text/plain", "not found; try /metrics, /health, /health/ro, /topology, /pools\n"};
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
void AdminServer::set_draining() { impl_->draining = true; }

AdminServer::Reply AdminServer::handle(const std::string& target) const { return impl_->handle(target); }

}  // namespace pgrelay
