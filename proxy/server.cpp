// Server (server.hpp): threads, listeners and the topology source wiring.
#include "proxy/server.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <thread>
#include <vector>

#include "proxy/cancel_registry.hpp"
#include "proxy/log.hpp"
#include "proxy/router.hpp"
#include "proxy/session.hpp"
#include "topology/static_source.hpp"
#include "topology/zk_source.hpp"

namespace pgrelay {

namespace asio = boost::asio;
using asio::ip::tcp;

namespace {

tcp::acceptor open_acceptor(asio::io_context& ctx, const ListenConfig& l) {
    const tcp::endpoint ep(asio::ip::make_address(l.host), l.port);
    tcp::acceptor a(ctx);
    a.open(ep.protocol());
    a.set_option(asio::socket_base::reuse_address(true));
    const int one = 1;
    if (::setsockopt(a.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0)
        throw std::system_error(errno, std::generic_category(), "SO_REUSEPORT");
    a.bind(ep);
    a.listen(asio::socket_base::max_listen_connections);
    return a;
}

struct Worker {
    asio::io_context ctx{1};
    WorkerShared shared;
    std::vector<std::pair<tcp::acceptor, PortRole>> acceptors;
    std::thread thread;

    Worker(std::shared_ptr<const Config> cfg, const topology::SnapshotHub& hub, Router& router, CancelRegistry& cancels,
           std::atomic<int>& held)
        : shared{std::move(cfg), topology::SnapshotHub::Reader(hub), &router, &cancels, &held, {}, nullptr} {
        shared.topology_changed = std::make_unique<asio::steady_timer>(ctx, asio::steady_timer::time_point::max());
    }

    asio::awaitable<void> accept_loop(tcp::acceptor& acceptor, PortRole role) {
        asio::steady_timer backoff(ctx);
        for (;;) {
            auto [ec, sock] = co_await acceptor.async_accept(asio::as_tuple(asio::use_awaitable));
            if (ec == asio::error::operation_aborted) co_return;
            if (ec) {
                // EMFILE/ENFILE/ENOBUFS: pause instead of spinning; the pending
                // connection stays in the backlog until descriptors free up.
                log::error("[{}] accept failed: {}", to_string(role), ec.message());
                backoff.expires_after(std::chrono::milliseconds(100));
                co_await backoff.async_wait(asio::as_tuple(asio::use_awaitable));
                continue;
            }
            asio::co_spawn(ctx, run_session(std::move(sock), role, shared), asio::detached);
        }
    }
};

}  // namespace

struct Server::Impl {
    std::shared_ptr<const Config> config;
    topology::SnapshotHub hub;
    Router router;
    CancelRegistry cancels;
    std::atomic<int> held{0};
    asio::io_context control{1};
    std::unique_ptr<topology::Source> source;
    std::vector<std::unique_ptr<Worker>> workers;

    explicit Impl(Config c) : config(std::make_shared<const Config>(std::move(c))), router(config->routing) {}
};

Server::Server(Config config) : impl_(std::make_unique<Impl>(std::move(config))) {}
Server::~Server() = default;

int Server::run() {
    Impl& s = *impl_;
    const Config& cfg = *s.config;

    if (cfg.topology_source == "zookeeper") {
        topology::ZkSourceOptions zo;
        zo.hosts = cfg.zookeeper.hosts;
        zo.base = cfg.zookeeper.base();
        zo.session_timeout = cfg.zookeeper.session_timeout;
        zo.build.weights = cfg.weights;
        zo.build.exclude = cfg.exclude;
        zo.build.allow_standby_leader = cfg.allow_standby_leader;
        zo.max_replica_lag = cfg.routing.max_replica_lag;
        zo.probe.user = cfg.probe.user;
        zo.probe.password = cfg.probe.password;
        zo.probe.dbname = cfg.probe.dbname;
        zo.probe.interval = cfg.probe.interval;
        zo.probe.connect_timeout = cfg.probe.connect_timeout;
        s.source = std::make_unique<topology::ZkSource>(s.control, s.hub, std::move(zo));
        log::info("topology: following Patroni in ZooKeeper {} at {}", cfg.zookeeper.hosts, cfg.zookeeper.base());
    } else {
        topology::StaticSourceOptions so;
        so.members = cfg.static_members;
        so.interval = cfg.health_check_interval;
        so.timeout = cfg.health_check_timeout;
        s.source = std::make_unique<topology::StaticSource>(s.control, s.hub, std::move(so));
    }

    const unsigned n = cfg.effective_threads();
    for (unsigned i = 0; i < n; ++i) {
        auto w = std::make_unique<Worker>(s.config, s.hub, s.router, s.cancels, s.held);
        for (const ListenConfig* l : {&cfg.rw, &cfg.ro}) {
            if (!l->enabled) continue;
            try {
                w->acceptors.emplace_back(open_acceptor(w->ctx, *l), l->role);
            } catch (const std::exception& e) {
                throw std::runtime_error(std::string("cannot listen on ") + to_string(l->role) + " port " + l->host +
                                         ":" + std::to_string(l->port) + ": " + e.what());
            }
        }
        s.workers.push_back(std::move(w));
    }

    // Every new snapshot reaches each worker on its own thread: held
    // connections re-route, sessions on a member that lost its role end.
    s.hub.on_change([&s](const topology::TopologyPtr&, const topology::TopologyPtr& after) {
        for (auto& w : s.workers) {
            Worker* wp = w.get();
            asio::post(wp->ctx, [wp, after] { apply_topology_change(wp->shared, *after); });
        }
    });
    s.source->start();  // the static source publishes its first snapshot before any accept

    for (auto& w : s.workers)
        for (auto& [acc, role] : w->acceptors) asio::co_spawn(w->ctx, w->accept_loop(acc, role), asio::detached);
    for (const ListenConfig* l : {&cfg.rw, &cfg.ro})
        if (l->enabled) log::info("listening on {} port {}:{} ({} threads)", to_string(l->role), l->host, l->port, n);

    asio::signal_set signals(s.control, SIGINT, SIGTERM);
    signals.async_wait([&](const boost::system::error_code& ec, int sig) {
        if (ec) return;
        log::info("received signal {}, shutting down", sig);
        s.source->stop();
        for (auto& w : s.workers) w->ctx.stop();
        s.control.stop();
    });

    for (auto& w : s.workers) {
        Worker* wp = w.get();
        wp->thread = std::thread([wp] {
            auto guard = asio::make_work_guard(wp->ctx);
            wp->ctx.run();
        });
    }
    auto guard = asio::make_work_guard(s.control);
    s.control.run();
    for (auto& w : s.workers) {
        w->ctx.stop();
        if (w->thread.joinable()) w->thread.join();
    }
    log::info("pgrelay stopped");
    return 0;
}

}  // namespace pgrelay
