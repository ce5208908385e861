// EtcdSource (etcd_source.hpp): one coroutine on the control io_context runs
// the connect -> range -> watch cycle; while a watch is open, a second one
// checks etcd every check_interval. Either ending closes the other's
// connection, so neither can hang the cycle.
#include "topology/etcd_source.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "proxy/log.hpp"
#include "topology/etcd_gateway.hpp"
#include "topology/http_client.hpp"

namespace pgrelay::topology {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

namespace {
// What an HTTP error answer says: the gateway's JSON message, or else the
// start of the body (etcd answers some refusals in plain text).
std::string reason(int status, std::string_view body) {
    std::string out = "HTTP " + std::to_string(status);
    if (auto e = etcd::parse_error(body)) return out + ": " + e->message;
    std::string_view b = body.substr(0, 200);
    while (!b.empty() && (b.back() == '\n' || b.back() == '\r' || b.back() == ' ')) b.remove_suffix(1);
    if (!b.empty()) out += ": " + log::printable(b);
    return out;
}

// Why a watch cycle ended.
struct Outcome {
    enum Kind { Resync, Fail } kind = Fail;
    std::string why;
};
}  // namespace

struct EtcdSource::Impl : std::enable_shared_from_this<Impl> {
    asio::io_context& ctx;
    EtcdSourceOptions opts;
    std::string prefix;  // opts.base + "/": every key below it, and nothing of a longer scope's
    std::shared_ptr<asio::ssl::context> tls;
    std::shared_ptr<PatroniFollower> follower;
    bool stopped = false;
    bool ever_synced = false;
    bool ever_watched = false;

    std::string api;    // "/v3" (or /v3beta, /v3alpha), from GET /version
    std::string token;  // etcd auth token, when authenticated
    etcd::WatchLedger ledger;

    // What stop() must be able to interrupt.
    std::shared_ptr<http::Client> unary, watch;
    std::shared_ptr<asio::steady_timer> sleeper;

    // Registration: this instance's key under a lease, on a connection of its own.
    std::shared_ptr<http::Client> reg_client, revoker;
    std::shared_ptr<asio::steady_timer> reg_sleeper;
    std::string reg_token;
    int64_t lease = 0;
    bool deregistered = false;
    std::string last_reg_failure;

    // Failure logging: the same failure again within 5 s goes to debug.
    std::string last_failure;
    Clock::time_point last_failure_at{};
    Clock::time_point unreachable_since{};

    Impl(asio::io_context& c, SnapshotHub& hub, EtcdSourceOptions o) : ctx(c), opts(std::move(o)) {
        prefix = opts.base + "/";
        bool any_tls = false;
        for (const auto& e : opts.endpoints) any_tls = any_tls || e.tls;
        if (any_tls) tls = http::make_client_tls({opts.ca, opts.cert, opts.key});
        opts.follower.source = "etcd";
        opts.follower.leader_event = "leader key event";
        std::string where;
        for (const auto& e : opts.endpoints) where += (where.empty() ? "" : ",") + e.to_string();
        opts.follower.where = where + opts.base;
        follower = PatroniFollower::create(ctx, hub, opts.follower);
    }

    std::string target(std::string_view rpc) const { return api + std::string(rpc); }

    void set_connected(bool on) {
        if (opts.stats) opts.stats->connected.store(on ? 1 : 0, std::memory_order_relaxed);
        follower->set_store_reachable(on);
    }

    // ---- requests ----

    struct Call {
        std::string error;  // empty on success
        std::string body;
    };

    asio::awaitable<std::string> authenticate(http::Client& c) { co_return co_await authenticate(c, token); }
    asio::awaitable<std::string> authenticate(http::Client& c, std::string& token) {
        token.clear();
        auto r = co_await c.request("POST", target("/auth/authenticate"),
                                    etcd::authenticate_request(opts.username, opts.password), "",
                                    opts.request_timeout);
        if (!r.error.empty()) co_return "authenticate: " + r.error;
        std::string err;
        if (r.status != 200) co_return "authenticate as " + opts.username + ": " + reason(r.status, r.body);
        auto t = etcd::parse_authenticate_response(r.body, err);
        if (!t) co_return "authenticate: " + err;
        token = std::move(*t);
        log::debug("etcd: authenticated to {} as {}", c.url().to_string(), opts.username);
        co_return "";
    }

    // A unary RPC; an expired token (gRPC 16) is renewed once.
    asio::awaitable<Call> call(http::Client& c, std::string_view rpc, const std::string& body) {
        co_return co_await call(c, rpc, body, token);
    }
    asio::awaitable<Call> call(http::Client& c, std::string_view rpc, const std::string& body, std::string& token) {
        for (int attempt = 0;; ++attempt) {
            auto r = co_await c.request("POST", target(rpc), body, token, opts.request_timeout);
            if (!r.error.empty()) co_return Call{std::string(rpc) + ": " + r.error, {}};
            if (r.status == 200) co_return Call{"", std::move(r.body)};
            auto e = etcd::parse_error(r.body);
            if (e && e->grpc_code == etcd::kGrpcUnauthenticated && !opts.username.empty() && attempt == 0) {
                log::info("etcd: {} answered '{}'; authenticating again", c.url().to_string(), e->message);
                std::string err = co_await authenticate(c, token);
                if (!err.empty()) co_return Call{err, {}};
                continue;
            }
            co_return Call{std::string(rpc) + ": " + reason(r.status, r.body), {}};
        }
    }

    // ---- applying what etcd says ----

    std::optional<std::string> relative(const std::string& key) const {
        if (key.size() <= prefix.size() || key.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
        return key.substr(prefix.size());
    }

    void apply(const std::string& rel, const std::string* value, Clock::time_point at) {
        if (rel == "leader" && value) {
            std::string v = *value;
            while (!v.empty() && (v.back() == '\n' || v.back() == ' ')) v.pop_back();
            // A first read is not a reroute; a resync after an outage is.
            if (follower->loaded() && (!follower->leader() || *follower->leader() != v))
                follower->note_leader_event(at);
        }
        follower->apply_key(rel, value);
    }

    // A whole range: the new state, replacing everything (keys absent now
    // are deleted, members after the grace period).
    void resync(const etcd::RangeResponse& r, Clock::time_point at) {
        std::map<std::string, const std::string*> now;
        for (const auto& kv : r.kvs)
            if (auto rel = relative(kv.key)) now[*rel] = &kv.value;
        if (!now.count("leader")) apply("leader", nullptr, at);
        for (const auto& name : follower->member_names())
            if (!now.count("members/" + name)) follower->member_gone(name);
        for (const char* k : {"status", "optime/leader", "sync", "failover"})
            if (!now.count(k)) apply(k, nullptr, at);
        for (const auto& [rel, value] : now) apply(rel, value, at);
        ledger.reset(r.kvs);
        follower->set_loaded();
        follower->publish();
        follower->note_store_answered();
    }

    // ---- registration ----

    // Grants a lease, puts this instance's key under it, then keeps the
    // lease alive (every TTL/3) and reads the registry (every
    // list_interval) until something fails; then the next endpoint.
    asio::awaitable<void> register_loop() {
        const RegistrationOptions& ro = opts.registration;
        size_t idx = 0;
        while (!stopped && !deregistered) {
            const http::Url& ep = opts.endpoints[idx];
            reg_client = std::make_shared<http::Client>(ctx.get_executor(), ep, tls);
            const std::string why = co_await register_on(reg_client);
            if (stopped || deregistered) break;
            const std::string msg = ep.to_string() + ": " + why;
            if (msg != last_reg_failure)
                log::warn("etcd: registration of {} on {}; trying again on the next endpoint", ro.self.id, msg);
            last_reg_failure = msg;
            idx = (idx + 1) % opts.endpoints.size();
            reg_sleeper = std::make_shared<asio::steady_timer>(ctx, std::chrono::seconds(1));
            co_await reg_sleeper->async_wait(use_tuple);
        }
    }

    // GET /version: which gateway prefix (/v3, /v3beta) this etcd serves;
    // sets `api`. The failure, or empty.
    asio::awaitable<std::string> fetch_api(http::Client& c) {
        auto r = co_await c.request("GET", "/version", "", "", opts.request_timeout);
        if (!r.error.empty()) co_return "GET /version: " + r.error;
        if (r.status != 200) co_return "GET /version: " + reason(r.status, r.body);
        std::string err;
        auto p = etcd::api_prefix(r.body, err);
        if (!p) co_return err;
        api = *p;
        co_return std::string();
    }

    asio::awaitable<std::string> register_on(std::shared_ptr<http::Client> c) {
        const RegistrationOptions& ro = opts.registration;
        if (api.empty())
            if (std::string err = co_await fetch_api(*c); !err.empty()) co_return err;
        if (!opts.username.empty() && reg_token.empty()) {
            std::string err = co_await authenticate(*c, reg_token);
            if (!err.empty()) co_return err;
        }
        const int64_t ttl_s = std::max<int64_t>(2, std::chrono::duration_cast<std::chrono::seconds>(ro.ttl).count());
        Call g = co_await call(*c, "/lease/grant", etcd::lease_grant_request(ttl_s), reg_token);
        if (!g.error.empty()) co_return g.error;
        std::string err;
        auto id = etcd::parse_lease_grant(g.body, err);
        if (!id) co_return err;
        lease = *id;
        // Deregistered while the grant was in flight: revoke() may have seen
        // no lease yet, so this lease goes now, before any key is put under it.
        if (stopped || deregistered) {
            co_await call(*c, "/lease/revoke", etcd::lease_request(lease), reg_token);
            lease = 0;
            co_return "stopped";
        }
        const std::string key = ro.path + "/" + ro.self.id;
        Call p = co_await call(*c, "/kv/put", etcd::put_request(key, instance_json(ro.self), lease), reg_token);
        if (!p.error.empty()) co_return p.error;
        if (stopped || deregistered) co_return "stopped";
        log::info("etcd: registered this instance at {} (lease {:x}, TTL {} s)", key, lease, ttl_s);
        last_reg_failure.clear();
        // The keepalive runs on its own schedule (TTL/3), before the list
        // when both are due, so a slow range cannot let the lease lapse.
        const auto keepalive_every = std::chrono::milliseconds(ttl_s * 1000 / 3);
        auto keepalive_due = Clock::now() + keepalive_every;
        auto list_due = Clock::now();
        for (;;) {
            if (Clock::now() >= keepalive_due) {
                Call k = co_await call(*c, "/lease/keepalive", etcd::lease_request(lease), reg_token);
                if (stopped || deregistered) co_return "stopped";
                if (!k.error.empty()) co_return k.error;
                auto left = etcd::parse_keepalive_ttl(k.body, err);
                if (!left) co_return err;
                // Gone (expired while etcd was out of reach): register anew.
                if (*left <= 0) co_return "the lease expired";
                keepalive_due = Clock::now() + keepalive_every;
            }
            if (Clock::now() >= list_due) {
                Call l = co_await call(*c, "/kv/range", etcd::range_request(ro.path + "/", false), reg_token);
                if (stopped || deregistered) co_return "stopped";
                if (!l.error.empty()) co_return l.error;
                auto r = etcd::parse_range_response(l.body, err);
                if (!r) co_return "range: " + err;
                std::vector<InstanceInfo> found;
                for (const auto& kv : r->kvs) {
                    // An entry is named by its id: anything else is not one of ours.
                    auto i = parse_instance_json(kv.value);
                    if (i && kv.key == ro.path + "/" + i->id) found.push_back(std::move(*i));
                    else log::debug("etcd: {} is not a pgrelay instance entry; ignored", log::printable(kv.key));
                }
                if (ro.peers) ro.peers->update(std::move(found), "etcd");
                list_due = Clock::now() + ro.list_interval;
            }
            reg_sleeper = std::make_shared<asio::steady_timer>(ctx, std::min(keepalive_due, list_due));
            co_await reg_sleeper->async_wait(use_tuple);
            if (stopped || deregistered) co_return "stopped";
        }
    }

    // Revokes the lease (which deletes the key) within request_timeout.
    // `self` keeps the source alive until the answer.
    asio::awaitable<void> revoke([[maybe_unused]] std::shared_ptr<Impl> self, std::function<void()> done) {
        const int64_t id = lease;
        lease = 0;
        if (id != 0) {
            auto c = std::make_shared<http::Client>(ctx.get_executor(), reg_client ? reg_client->url() : opts.endpoints[0], tls);
            revoker = c;
            Call r = co_await call(*c, "/lease/revoke", etcd::lease_request(id), reg_token);
            if (r.error.empty()) log::info("etcd: deregistered {} (lease {:x} revoked)", opts.registration.self.id, id);
            else log::warn("etcd: deregistering {}: {} (the key goes when its lease expires)", opts.registration.self.id, r.error);
        }
        done();
    }

    // ---- the cycle ----

    asio::awaitable<void> run() {
        size_t idx = 0, failed_in_a_row = 0;
        auto backoff = std::chrono::milliseconds(250);
        unreachable_since = Clock::now();
        while (!stopped) {
            const http::Url& ep = opts.endpoints[idx];
            bool synced = false;
            const std::string why = co_await follow(ep, synced);
            set_connected(false);
            if (stopped) break;
            if (opts.stats) opts.stats->endpoint_failures.fetch_add(1, std::memory_order_relaxed);
            if (synced) {
                failed_in_a_row = 0;
                backoff = std::chrono::milliseconds(250);
                unreachable_since = Clock::now();
            }
            const size_t next = (idx + 1) % opts.endpoints.size();
            note_failure(ep, why, opts.endpoints[next]);
            idx = next;
            // A full round of endpoints failed: wait before the next round.
            if (++failed_in_a_row >= opts.endpoints.size()) {
                failed_in_a_row = 0;
                sleeper = std::make_shared<asio::steady_timer>(ctx, backoff);
                co_await sleeper->async_wait(use_tuple);
                backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
            }
        }
    }

    void note_failure(const http::Url& ep, const std::string& why, const http::Url& next) {
        const auto now = Clock::now();
        const std::string msg = ep.to_string() + ": " + why;
        const bool repeat = msg == last_failure && now - last_failure_at < std::chrono::seconds(5);
        if (!repeat) {
            last_failure = msg;
            last_failure_at = now;
        }
        const auto secs = std::chrono::duration_cast<std::chrono::seconds>(now - unreachable_since).count();
        const std::string state =
            follower->loaded() ? "routing on the last known topology"
                               : "new rw connections are held until a primary is known";
        if (repeat)
            log::debug("etcd: {}; trying {} ({})", msg, next.to_string(), state);
        else
            log::warn("etcd: {}; trying {} ({}{})", msg, next.to_string(), state,
                      secs > 0 ? ", " + std::to_string(secs) + " s without a watch" : std::string());
    }

    // One endpoint, for as long as it works. `synced` is set once a range
    // succeeded on it.
    asio::awaitable<std::string> follow(const http::Url& ep, bool& synced) {
        unary = std::make_shared<http::Client>(ctx.get_executor(), ep, tls);
        auto u = unary;
        if (std::string err = co_await fetch_api(*u); !err.empty()) co_return err;
        if (!opts.username.empty()) {
            std::string err = co_await authenticate(*u);
            if (!err.empty()) co_return err;
        }
        for (bool first = true; !stopped; first = false) {
            Call c = co_await call(*u, "/kv/range", etcd::range_request(prefix, false));
            if (!c.error.empty()) co_return c.error;
            std::string err;
            auto r = etcd::parse_range_response(c.body, err);
            if (!r) co_return "range: " + err;
            if (stopped) co_return "stopped";
            const bool was_loaded = follower->loaded();
            resync(*r, Clock::now());
            if (!synced) {
                synced = true;
                log::info("etcd: {} read {} key{} of {} at revision {}{}", ep.to_string(), r->kvs.size(),
                          r->kvs.size() == 1 ? "" : "s", opts.base, r->revision,
                          was_loaded ? ", re-reading the cluster state" : "");
            }
            if (opts.stats && (ever_synced || !first)) opts.stats->resyncs.fetch_add(1, std::memory_order_relaxed);
            ever_synced = true;
            Outcome o = co_await watch_cycle(ep, r->revision);
            if (o.kind == Outcome::Fail) co_return o.why;
            log::info("etcd: {}; re-reading the cluster state", o.why);
        }
        co_return "stopped";
    }

    // Watches from revision + 1 until the watch must be rebuilt (Resync) or
    // the endpoint failed (Fail).
    asio::awaitable<Outcome> watch_cycle(const http::Url& ep, int64_t revision) {
        watch = std::make_shared<http::Client>(ctx.get_executor(), ep, tls);
        auto w = watch;
        auto u = unary;
        // The whole body at once: the gateway answers nothing to a watch whose
        // chunked request body is still open.
        auto r = co_await w->open_stream("POST", target("/watch"), etcd::watch_request(prefix, revision + 1), token,
                                         opts.request_timeout);
        if (!r.error.empty()) co_return Outcome{Outcome::Fail, "watch: " + r.error};
        if (r.status != 200) {
            auto e = etcd::parse_error(r.body);
            if (e && e->grpc_code == etcd::kGrpcUnauthenticated) token.clear();
            co_return Outcome{Outcome::Fail, "watch: " + reason(r.status, r.body)};
        }

        // Both halves end through `state`; whichever ends first closes the
        // other's connection and timer.
        struct State {
            bool watch_done = false, check_done = false;
            std::optional<Outcome> outcome;
            asio::steady_timer wake;
            asio::steady_timer check_timer;
            explicit State(asio::any_io_executor ex) : wake(ex, Clock::time_point::max()), check_timer(ex) {}
        };
        auto st = std::make_shared<State>(ctx.get_executor());
        auto self = shared_from_this();
        auto finish = [st, w, u](Outcome o) {
            if (!st->outcome) st->outcome = std::move(o);
            w->close();
            u->close();
            st->check_timer.cancel();
        };
        asio::co_spawn(ctx, watch_loop(w, std::move(r.body), finish),
                       [st, self](std::exception_ptr) {
                           st->watch_done = true;
                           st->wake.cancel();
                       });
        asio::co_spawn(ctx, check_loop(u, st, finish), [st, self](std::exception_ptr) {
            st->check_done = true;
            st->wake.cancel();
        });
        while (!st->watch_done || !st->check_done) {
            st->wake.expires_at(Clock::time_point::max());
            co_await st->wake.async_wait(use_tuple);
        }
        watch.reset();
        co_return st->outcome.value_or(Outcome{Outcome::Fail, "watch ended"});
    }

    template <class Finish>
    asio::awaitable<void> watch_loop(std::shared_ptr<http::Client> w, std::string initial, Finish finish) {
        http::JsonObjectSplitter splitter;
        splitter.feed(initial);
        for (;;) {
            const auto at = Clock::now();
            while (auto obj = splitter.next()) {
                std::string err;
                auto m = etcd::parse_watch_message(*obj, err);
                if (!m) {
                    finish(Outcome{Outcome::Fail, "watch: unreadable message: " + err});
                    co_return;
                }
                if (std::optional<Outcome> o = on_message(*m, at)) {
                    finish(std::move(*o));
                    co_return;
                }
            }
            if (!splitter.error().empty()) {
                finish(Outcome{Outcome::Fail, "watch: " + splitter.error()});
                co_return;
            }
            auto r = co_await w->read_stream();
            if (stopped) {
                finish(Outcome{Outcome::Fail, "stopped"});
                co_return;
            }
            if (!r.error.empty()) {
                finish(Outcome{Outcome::Fail, "watch: " + r.error});
                co_return;
            }
            splitter.feed(r.body);
        }
    }

    // nullopt: keep watching.
    std::optional<Outcome> on_message(const etcd::WatchMessage& m, Clock::time_point at) {
        using Kind = etcd::WatchMessage::Kind;
        switch (m.kind) {
            case Kind::Created:
                set_connected(true);
                if (ever_watched && opts.stats) opts.stats->reconnects.fetch_add(1, std::memory_order_relaxed);
                ever_watched = true;
                log::debug("etcd: watching {} from revision {}", prefix, m.revision + 1);
                return std::nullopt;
            case Kind::Progress:
                return std::nullopt;
            case Kind::Canceled:
                if (m.compact_revision > 0)
                    return Outcome{Outcome::Resync,
                                   "watch canceled: history compacted up to revision " + std::to_string(m.compact_revision)};
                return Outcome{Outcome::Resync,
                               "watch canceled" + (m.cancel_reason.empty() ? std::string() : ": " + m.cancel_reason)};
            case Kind::Error:
                if (m.error.grpc_code == etcd::kGrpcUnauthenticated) token.clear();
                return Outcome{Outcome::Fail, "watch: etcd error " + std::to_string(m.error.grpc_code) + ": " +
                                                  m.error.message};
            case Kind::Events:
                for (const auto& e : m.events) {
                    auto rel = relative(e.kv.key);
                    if (!rel) continue;
                    if (e.type == etcd::Event::Type::Delete) {
                        ledger.erase(e.kv.key, e.kv.mod_revision);
                        apply(*rel, nullptr, at);
                    } else {
                        ledger.put(e.kv.key, e.kv.mod_revision);
                        apply(*rel, &e.kv.value, at);
                    }
                }
                // One message is one revision's changes (a crash's leader and
                // member keys vanish together): publish once for all of them.
                follower->publish();
                follower->note_store_answered();
                return std::nullopt;
        }
        return std::nullopt;
    }

    template <class StatePtr, class Finish>
    asio::awaitable<void> check_loop(std::shared_ptr<http::Client> u, StatePtr st, Finish finish) {
        for (;;) {
            st->check_timer.expires_after(opts.check_interval);
            auto [ec] = co_await st->check_timer.async_wait(use_tuple);
            if (ec || st->outcome || stopped) co_return;
            Call c = co_await call(*u, "/kv/range", etcd::range_request(prefix, true));
            if (st->outcome || stopped) co_return;
            if (!c.error.empty()) {
                finish(Outcome{Outcome::Fail, "check: " + c.error});
                co_return;
            }
            std::string err;
            auto r = etcd::parse_range_response(c.body, err);
            if (!r) {
                finish(Outcome{Outcome::Fail, "check: " + err});
                co_return;
            }
            switch (ledger.check(r->kvs, r->revision)) {
                case etcd::WatchLedger::Verdict::InStep: follower->note_store_answered(); break;
                case etcd::WatchLedger::Verdict::Behind:
                    log::debug("etcd: check at revision {}: {}", r->revision, ledger.difference());
                    break;
                case etcd::WatchLedger::Verdict::Stale:
                    finish(Outcome{Outcome::Resync, "the watch is stale (" + ledger.difference() + ")"});
                    co_return;
            }
        }
    }
};

EtcdSource::EtcdSource(asio::io_context& ctx, SnapshotHub& hub, EtcdSourceOptions opts)
    : impl_(std::make_shared<Impl>(ctx, hub, std::move(opts))) {}

EtcdSource::~EtcdSource() { stop(); }

void EtcdSource::start() {
    impl_->follower->start();
    spawn_source_loop(impl_->ctx, impl_->run(), impl_, "etcd: the watcher");
    if (impl_->opts.registration.enabled)
        spawn_source_loop(impl_->ctx, impl_->register_loop(), impl_, "etcd: the registration");
}

void EtcdSource::deregister(std::function<void()> done) {
    Impl& s = *impl_;
    if (s.deregistered || !s.opts.registration.enabled) return done();
    s.deregistered = true;
    if (s.reg_client) s.reg_client->close();
    if (s.reg_sleeper) s.reg_sleeper->cancel();
    asio::co_spawn(s.ctx, s.revoke(impl_, std::move(done)), asio::detached);
}

void EtcdSource::set_member_options(const std::map<std::string, uint32_t>& weights,
                                    const std::vector<std::string>& exclude, bool allow_standby_leader) {
    impl_->follower->set_member_options(weights, exclude, allow_standby_leader);
}

void EtcdSource::stop() {
    if (!impl_ || impl_->stopped) return;
    impl_->stopped = true;
    if (impl_->unary) impl_->unary->close();
    if (impl_->watch) impl_->watch->close();
    if (impl_->sleeper) impl_->sleeper->cancel();
    if (impl_->reg_client) impl_->reg_client->close();
    if (impl_->revoker) impl_->revoker->close();
    if (impl_->reg_sleeper) impl_->reg_sleeper->cancel();
    impl_->follower->stop();
}

}  // namespace pgrelay::topology
