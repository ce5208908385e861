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
#include <atomic>
#include <ctime>
#include <functional>
#include <thread>
#include <vector>

#include "proxy/admin.hpp"
#include "proxy/auth_store.hpp"
#include "proxy/pool.hpp"
#include "proxy/cancel_registry.hpp"
#include "proxy/metrics.hpp"
#include "proxy/log.hpp"
#include "proxy/relay_loop.hpp"
#include "proxy/router.hpp"
#include "proxy/session.hpp"
#include "topology/etcd_source.hpp"
#include "topology/http_client.hpp"
#include "topology/patroni_api_source.hpp"
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

// SO_REUSEPORT would let a second pgrelay (same user) bind the same port and
// silently take half the connections. A plain bind first fails if anyone
// holds the port, whatever their options.
void ensure_port_free(const ListenConfig& l) {
    asio::io_context probe_ctx;
    tcp::acceptor probe(probe_ctx);
    const tcp::endpoint ep(asio::ip::make_address(l.host), l.port);
    probe.open(ep.protocol());
    probe.set_option(asio::socket_base::reuse_address(true));
    boost::system::error_code ec;
    probe.bind(ep, ec);
    if (ec) throw std::runtime_error(ec.message() + " (another pgrelay or server holds it?)");
}

struct Worker {
    // Destruction order matters: `ctx` goes before `shared`, because
    // destroying the io_context destroys suspended session coroutines, whose
    // destructors unregister from shared.sessions.
    WorkerShared shared;
    // Before ctx, so it outlives it: sessions destroyed with ctx leave the
    // loop. Its wait on ctx ends in ~Worker (detach), before ctx goes.
    std::unique_ptr<RelayLoop> relay;
    asio::io_context ctx{1};
    std::vector<std::pair<tcp::acceptor, PortRole>> acceptors;
    std::thread thread;

    Worker(std::shared_ptr<const Config> cfg, std::shared_ptr<const TlsContexts> tls, const topology::SnapshotHub& hub,
           Router& router, CancelRegistry& cancels)
        : shared{std::move(cfg), std::move(tls), topology::SnapshotHub::Reader(hub), &router, &cancels, {}, nullptr} {
        shared.topology_changed = std::make_unique<asio::steady_timer>(ctx, asio::steady_timer::time_point::max());
        relay = std::make_unique<RelayLoop>(ctx);
        shared.relay_loop = relay.get();
    }
    // The pooled ports' pools and secrets, on the first worker only.
    std::unique_ptr<PoolManager> pools;
    std::unique_ptr<AuthStore> auth;

    ~Worker() {
        if (thread.joinable()) thread.join();
        relay->detach();
        // Before ctx goes: their timers and sockets belong to its services.
        const std::vector<SessionHandle*> sessions(shared.sessions.begin(), shared.sessions.end());
        for (SessionHandle* s : sessions) s->abandon();
        acceptors.clear();
        shared.pools = nullptr;
        shared.auth = nullptr;
        auth.reset();
        pools.reset();
        // The timer belongs to ctx's services: it must go while they exist.
        shared.topology_changed.reset();
    }

    asio::awaitable<void> accept_loop(tcp::acceptor& acceptor, PortRole role) {
        asio::steady_timer backoff(ctx);
        uint64_t failures = 0;  // in the current run of failed accepts
        for (;;) {
            auto [ec, sock] = co_await acceptor.async_accept(asio::as_tuple(asio::use_awaitable));
            if (ec == asio::error::operation_aborted) co_return;
            if (ec) {
                // EMFILE/ENFILE/ENOBUFS: pause instead of spinning; the pending
                // connection stays in the backlog until descriptors free up.
                // Logged once, then every 50th retry (5 s), not 10 times a second.
                if (failures++ % 50 == 0)
                    log::error("[{}] accept failed: {} (retrying every 100 ms; {} failure{} so far)", to_string(role),
                               ec.message(), failures, failures == 1 ? "" : "s");
                backoff.expires_after(std::chrono::milliseconds(100));
                co_await backoff.async_wait(asio::as_tuple(asio::use_awaitable));
                continue;
            }
            if (failures > 0) {
                log::info("[{}] accepting again after {} failed attempt{}", to_string(role), failures,
                          failures == 1 ? "" : "s");
                failures = 0;
            }
            if (shared.pools && shared.config->pool(role).pooled())
                asio::co_spawn(ctx, run_pooled_session(std::move(sock), role, shared), asio::detached);
            else
                asio::co_spawn(ctx, run_session(std::move(sock), role, shared), asio::detached);
        }
    }
};

}  // namespace

struct Server::Impl {
    std::shared_ptr<const Config> config;
    std::shared_ptr<const TlsContexts> tls;
    topology::SnapshotHub hub;
    Router router;
    CancelRegistry cancels;
    asio::io_context control{1};
    std::unique_ptr<topology::Source> source;
    std::unique_ptr<AdminServer> admin;
    std::vector<std::unique_ptr<Worker>> workers;
    topology::PeerDirectory peers;
    TopologyHistory changes;  // the recent routing changes, for /topology and the status page
    bool draining = false;
    std::atomic<bool> refusing{false};  // workers read it: new sessions get 57P03 while draining
    bool deregistered = false;  // the store answered the deregistration (or it timed out)
    std::chrono::steady_clock::time_point deregister_deadline;
    std::string last_primary;

    Impl(Config c, std::shared_ptr<const TlsContexts> t)
        : config(std::make_shared<const Config>(std::move(c))), tls(std::move(t)), router(config->routing),
          cancels(topology::instance_tag(config->instance.id)) {}
    ~Impl() { metrics::Registry::instance().peers = nullptr; }

    void post_to_workers(std::function<void(Worker&)> f) {
        for (auto& w : workers) {
            Worker* wp = w.get();
            asio::post(wp->ctx, [wp, f] { f(*wp); });
        }
    }

    int64_t open_sessions() const {
        auto& r = metrics::Registry::instance();
        return r.port(PortRole::ReadWrite).client_open.load() + r.port(PortRole::ReadOnly).client_open.load();
    }

    // SIGHUP: re-read the file; apply what can change at run time, keep the old
    // configuration whole if the new one is invalid.
    void reload() {
        Config next;
        std::shared_ptr<const TlsContexts> next_tls;
        try {
            next = load_config(config->path);
            // Certificates are re-read too: a renewed one reaches new sessions,
            // open sessions keep theirs.
            next_tls = make_tls_contexts(next);
        } catch (const ConfigError& e) {
            log::error("reload: {} -- keeping the running configuration", e.describe());
            return;
        }
        const Config& cur = *config;
        std::vector<std::string> restart;
        auto same_listen = [](const ListenConfig& a, const ListenConfig& b) {
            return a.enabled == b.enabled && (!a.enabled || (a.host == b.host && a.port == b.port));
        };
        if (!same_listen(cur.rw, next.rw) || !same_listen(cur.ro, next.ro)) restart.push_back("[listen]");
        if (!same_listen(cur.admin, next.admin)) restart.push_back("[admin] listen");
        if (cur.threads != next.threads) restart.push_back("threads");
        if (cur.pool_rw.mode != next.pool_rw.mode || cur.pool_ro.mode != next.pool_ro.mode) restart.push_back("pool_mode");
        if (cur.topology_source != next.topology_source || cur.zookeeper.hosts != next.zookeeper.hosts ||
            cur.zookeeper.base() != next.zookeeper.base() || cur.etcd.endpoints != next.etcd.endpoints ||
            cur.etcd.base() != next.etcd.base() || cur.etcd.username != next.etcd.username ||
            cur.etcd.password != next.etcd.password || cur.etcd.ca != next.etcd.ca || cur.etcd.cert != next.etcd.cert ||
            cur.etcd.key != next.etcd.key || cur.etcd.request_timeout != next.etcd.request_timeout ||
            cur.etcd.check_interval != next.etcd.check_interval || cur.patroni_api.urls != next.patroni_api.urls ||
            cur.patroni_api.interval != next.patroni_api.interval ||
            cur.patroni_api.request_timeout != next.patroni_api.request_timeout || cur.patroni_api.ca != next.patroni_api.ca ||
            cur.patroni_api.cert != next.patroni_api.cert || cur.patroni_api.key != next.patroni_api.key ||
            cur.static_members.size() != next.static_members.size())
            restart.push_back("[topology] source, its store settings or the member list");
        const auto& ci = cur.instance;
        const auto& ni = next.instance;
        if (ci.id != ni.id || ci.peer_address != ni.peer_address || ci.register_ != ni.register_ ||
            ci.registry_path != ni.registry_path || ci.ttl != ni.ttl)
            restart.push_back("[instance] id, peer_address or registration");
        for (const auto& what : restart) log::warn("reload: {} changed; it takes effect only after a restart", what);
        // Keep what cannot change now, take the rest.
        next.rw = cur.rw;
        next.ro = cur.ro;
        next.admin = cur.admin;
        next.threads = cur.threads;
        next.pool_rw.mode = cur.pool_rw.mode;
        next.pool_ro.mode = cur.pool_ro.mode;
        {
            std::vector<topology::InstanceInfo> static_peers = next.instance.peers;
            next.instance = cur.instance;
            next.instance.peers = static_peers;
            peers.set_static(std::move(static_peers));
        }
        log::set_level(next.log_level);
        log::set_json(next.log_json);
        router.set_options(next.routing);
        source->set_member_options(next.weights, next.exclude, next.allow_standby_leader);
        config = std::make_shared<const Config>(std::move(next));
        tls = std::move(next_tls);
        auto cfg = config;
        auto t = tls;
        post_to_workers([cfg, t](Worker& w) {
            w.shared.config = cfg;
            w.shared.tls = t;
            if (w.pools) w.pools->reconfigure(cfg, t);
            if (w.auth) w.auth->reconfigure(cfg, t);
        });
        log_tls("reload");
        log::info("reload: configuration {} applied (routing, weights, exclusions, timeouts, TLS, log level)", cfg->path);
    }

    void log_tls(const char* when) const {
        const Config& c = *config;
        if (tls->server)
            log::info("{}: TLS towards clients {} with certificate {} ({}){}", when,
                      c.tls.client == Config::ClientTls::Require ? "required" : "offered", c.tls.cert,
                      tls->server_subject, c.tls.client_ca.empty() ? "" : ", client certificates required");
        else
            log::info("{}: TLS towards clients off ([tls] has no certificate)", when);
        log::info("{}: TLS towards backends: backend_tls = {}", when, to_string(c.backend_tls));
    }

    // SIGTERM/SIGINT: leave the store's instance list and answer 503 on
    // /health (outer balancers and peers move on), stop accepting, let
    // sessions finish for shutdown_grace, then end the rest with 57P01 and
    // stop. A second signal stops at once.
    void shutdown(int sig) {
        if (draining) {
            log::warn("received signal {} again, stopping now", sig);
            stop_all();
            return;
        }
        draining = true;
        log::info("received signal {}: draining (deregistering, /health 503, new sessions get 57P03); {} session(s) get "
                  "{} ms to finish",
                  sig, open_sessions(), config->shutdown_grace.count());
        if (admin) admin->set_draining();
        // The store gets a moment to answer before pgrelay stops, even with
        // no session left to wait for.
        deregister_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
        source->deregister([this] { deregistered = true; });
        // The ports stay open: a new session gets 57P03 (as from PostgreSQL
        // shutting down; libpq moves on to its next host), and CancelRequests
        // for the sessions still running are served, here or from a peer.
        refusing.store(true, std::memory_order_relaxed);
        auto deadline = std::make_shared<asio::steady_timer>(control, config->shutdown_grace);
        drain_step(deadline);
    }

    void drain_step(std::shared_ptr<asio::steady_timer> deadline) {
        if (open_sessions() == 0 && (deregistered || std::chrono::steady_clock::now() >= deregister_deadline)) {
            log::info("all sessions finished");
            stop_all();
            return;
        }
        if (asio::steady_timer::clock_type::now() >= deadline->expiry()) {
            log::info("shutdown_grace over: ending {} session(s) with 57P01", open_sessions());
            post_to_workers([](Worker& w) {
                for (SessionHandle* h : w.shared.sessions)
                    h->terminate("57P01", "pgrelay: terminating connection because pgrelay is shutting down");
            });
            // Give the ErrorResponses a moment to go out.
            auto t = std::make_shared<asio::steady_timer>(control, std::chrono::seconds(2));
            t->async_wait([this, t](const boost::system::error_code&) { stop_all(); });
            return;
        }
        auto tick = std::make_shared<asio::steady_timer>(control, std::chrono::milliseconds(100));
        tick->async_wait([this, tick, deadline](const boost::system::error_code& ec) {
            if (!ec) drain_step(deadline);
        });
    }

    void stop_all() {
        if (admin) admin->stop();
        source->stop();
        for (auto& w : workers) w->ctx.stop();
        control.stop();
    }
};

Server::Server(Config config, std::shared_ptr<const TlsContexts> tls)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(tls))) {}
Server::~Server() = default;

int Server::run() {
    Impl& s = *impl_;
    const Config& cfg = *s.config;
    auto& reg = metrics::Registry::instance();

    // Who this instance is among those behind one name; its cancel keys
    // carry the id's tag, and other instances' keys go to them.
    s.peers.set_self(topology::InstanceInfo{cfg.instance.id, cfg.instance.peer_address, PGRELAY_VERSION,
                                            static_cast<int64_t>(std::time(nullptr))});
    s.peers.set_static(cfg.instance.peers);
    s.cancels.set_peers(&s.peers);
    reg.peers = &s.peers;
    log::info("instance {} (peers reach it at {}; cancel tag {})", cfg.instance.id, cfg.instance.peer_address,
              topology::instance_tag(cfg.instance.id));

    if (cfg.topology_source != "static") {
        // What every Patroni source shares: routing options, probes, the
        // reroute histogram.
        topology::FollowerOptions fo;
        fo.build.weights = cfg.weights;
        fo.build.exclude = cfg.exclude;
        fo.build.allow_standby_leader = cfg.allow_standby_leader;
        fo.max_replica_lag = cfg.routing.max_replica_lag;
        fo.probe.user = cfg.probe.user;
        fo.probe.password = cfg.probe.password;
        fo.probe.dbname = cfg.probe.dbname;
        fo.probe.interval = cfg.probe.interval;
        fo.probe.connect_timeout = cfg.probe.connect_timeout;
        fo.probe.sslmode = to_string(cfg.backend_tls);
        fo.probe.sslrootcert = cfg.backend_tls_ca;
        fo.on_reroute = [&reg, &s](double secs) {
            reg.reroute_seconds.observe(secs);
            s.changes.note_reroute(secs);
        };
        fo.stats = &reg.source;
        fo.addresses = cfg.member_addresses;
        for (const auto& [name, addr] : cfg.member_addresses)
            log::info("topology: member {} is reached at {} (member_addresses)", name, addr);
        if (cfg.topology_source != "patroni_api") {
            fo.rest.enabled = cfg.rest_fallback.enabled;
            fo.rest.interval = cfg.rest_fallback.interval;
            fo.rest.request_timeout = cfg.rest_fallback.request_timeout;
            const auto& rf = cfg.rest_fallback;
            // The system's CA verifies https APIs unless one is given.
            if (rf.enabled) fo.rest.tls = topology::http::make_client_tls({rf.ca, rf.cert, rf.key});
        }
        topology::RegistrationOptions ro;
        ro.enabled = cfg.instance.register_ && cfg.topology_source != "patroni_api";
        ro.path = cfg.instance.registry_path;
        ro.self = s.peers.self();
        ro.ttl = cfg.instance.ttl;
        ro.peers = &s.peers;
        reg.dcs_source = cfg.topology_source;
        auto urls = [](const std::vector<std::string>& list, bool default_tls, uint16_t default_port) {
            std::vector<topology::http::Url> out;
            for (const auto& u : list) out.push_back(*topology::http::parse_url(u, default_tls, default_port));
            return out;  // validated by the config loader
        };
        auto joined = [](const std::vector<topology::http::Url>& list) {
            std::string out;
            for (const auto& u : list) out += (out.empty() ? "" : ",") + u.to_string();
            return out;
        };
        if (cfg.topology_source == "zookeeper") {
            topology::ZkSourceOptions zo;
            zo.hosts = cfg.zookeeper.hosts;
            zo.base = cfg.zookeeper.base();
            zo.session_timeout = cfg.zookeeper.session_timeout;
            zo.stats = &reg.source;
            zo.follower = std::move(fo);
            zo.registration = ro;
            s.source = std::make_unique<topology::ZkSource>(s.control, s.hub, std::move(zo));
            log::info("topology: following Patroni in ZooKeeper {} at {}", cfg.zookeeper.hosts, cfg.zookeeper.base());
        } else if (cfg.topology_source == "etcd") {
            topology::EtcdSourceOptions eo;
            eo.endpoints = urls(cfg.etcd.endpoints, !cfg.etcd.ca.empty() || !cfg.etcd.cert.empty(), 2379);
            eo.base = cfg.etcd.base();
            eo.username = cfg.etcd.username;
            eo.password = cfg.etcd.password;
            eo.ca = cfg.etcd.ca;
            eo.cert = cfg.etcd.cert;
            eo.key = cfg.etcd.key;
            eo.request_timeout = cfg.etcd.request_timeout;
            eo.check_interval = cfg.etcd.check_interval;
            eo.stats = &reg.source;
            eo.follower = std::move(fo);
            eo.registration = ro;
            eo.registration.list_interval = cfg.etcd.check_interval;
            const std::string list = joined(eo.endpoints);
            s.source = std::make_unique<topology::EtcdSource>(s.control, s.hub, std::move(eo));
            log::info("topology: following Patroni in etcd {} at {}{}", list, cfg.etcd.base(),
                      cfg.etcd.username.empty() ? "" : " as user " + cfg.etcd.username);
        } else {
            topology::PatroniApiSourceOptions po;
            po.urls = urls(cfg.patroni_api.urls, false, 8008);
            po.ca = cfg.patroni_api.ca;
            po.cert = cfg.patroni_api.cert;
            po.key = cfg.patroni_api.key;
            po.interval = cfg.patroni_api.interval;
            po.request_timeout = cfg.patroni_api.request_timeout;
            po.stats = &reg.source;
            po.follower = std::move(fo);
            const std::string list = joined(po.urls);
            s.source = std::make_unique<topology::PatroniApiSource>(s.control, s.hub, std::move(po));
            log::info("topology: following Patroni through its REST API {} (GET /cluster every {} ms)", list,
                      cfg.patroni_api.interval.count());
        }
    } else {
        topology::StaticSourceOptions so;
        so.members = cfg.static_members;
        so.interval = cfg.health_check_interval;
        so.timeout = cfg.health_check_timeout;
        s.source = std::make_unique<topology::StaticSource>(s.control, s.hub, std::move(so));
    }

    for (const ListenConfig* l : {&cfg.rw, &cfg.ro}) {
        if (!l->enabled) continue;
        try {
            ensure_port_free(*l);
        } catch (const std::exception& e) {
            throw std::runtime_error(std::string("cannot listen on ") + to_string(l->role) + " port " + l->host + ":" +
                                     std::to_string(l->port) + ": " + e.what());
        }
    }
    s.log_tls("start");
    const unsigned n = cfg.effective_threads();
    for (unsigned i = 0; i < n; ++i) {
        auto w = std::make_unique<Worker>(s.config, s.tls, s.hub, s.router, s.cancels);
        w->shared.draining = &s.refusing;
        // Pooled ports run on the first worker: its pools serve all their
        // clients without locks (PgBouncer runs on one thread too).
        const bool pooled_here = i == 0 && (cfg.pool_rw.pooled() || cfg.pool_ro.pooled());
        if (pooled_here) {
            w->pools = std::make_unique<PoolManager>(w->ctx.get_executor(), s.config, s.tls);
            w->auth = std::make_unique<AuthStore>(w->ctx.get_executor(), s.config, s.tls);
            w->shared.pools = w->pools.get();
            w->shared.auth = w->auth.get();
            w->pools->start();
        }
        for (const ListenConfig* l : {&cfg.rw, &cfg.ro}) {
            if (!l->enabled) continue;
            if (i > 0 && cfg.pool(l->role).pooled()) continue;
            try {
                w->acceptors.emplace_back(open_acceptor(w->ctx, *l), l->role);
            } catch (const std::exception& e) {
                throw std::runtime_error(std::string("cannot listen on ") + to_string(l->role) + " port " + l->host +
                                         ":" + std::to_string(l->port) + ": " + e.what());
            }
        }
        s.workers.push_back(std::move(w));
    }
    if (cfg.admin.enabled) {
        try {
            s.admin = std::make_unique<AdminServer>(s.control, cfg.admin.host, cfg.admin.port, s.hub,
                                                    [&s] { return s.router.options(); });
            s.admin->set_peers(&s.peers);
            s.admin->set_history(&s.changes);
        } catch (const std::exception& e) {
            throw std::runtime_error("cannot listen on admin port " + cfg.admin.host + ":" +
                                     std::to_string(cfg.admin.port) + ": " + e.what());
        }
    }

    // Every new snapshot reaches each worker on its own thread: held
    // connections re-route, sessions on a member that lost its role end.
    s.hub.on_change([&s, &reg](const topology::TopologyPtr& before, const topology::TopologyPtr& after) {
        reg.topology_changes.fetch_add(1, std::memory_order_relaxed);
        s.changes.record(before.get(), *after,
                         std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count());
        const std::string primary = after->primary ? after->members[*after->primary].name : "";
        if (primary != s.last_primary) {
            reg.primary_changes.fetch_add(1, std::memory_order_relaxed);
            s.last_primary = primary;
        }
        s.post_to_workers([after](Worker& w) { apply_topology_change(w.shared, *after); });
    });
    s.source->start();  // the static source publishes its first snapshot before any accept

    for (auto& w : s.workers)
        for (auto& [acc, role] : w->acceptors) asio::co_spawn(w->ctx, w->accept_loop(acc, role), asio::detached);
    for (const ListenConfig* l : {&cfg.rw, &cfg.ro})
        if (l->enabled) log::info("listening on {} port {}:{} ({} threads)", to_string(l->role), l->host, l->port, n);
    if (s.admin) {
        s.admin->start();
        log::info("admin HTTP on {}:{} (/ status page, /metrics, /health, /health/ro, /topology, /pools)", cfg.admin.host, cfg.admin.port);
    }

    asio::signal_set stop_signals(s.control, SIGINT, SIGTERM);
    std::function<void(const boost::system::error_code&, int)> on_stop = [&](const boost::system::error_code& ec,
                                                                             int sig) {
        if (ec) return;
        s.shutdown(sig);
        stop_signals.async_wait(on_stop);
    };
    stop_signals.async_wait(on_stop);
    asio::signal_set hup(s.control, SIGHUP);
    std::function<void(const boost::system::error_code&, int)> on_hup = [&](const boost::system::error_code& ec, int) {
        if (ec) return;
        log::info("received SIGHUP: reloading {}", s.config->path);
        s.reload();
        hup.async_wait(on_hup);
    };
    hup.async_wait(on_hup);

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
