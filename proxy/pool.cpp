// Pools (pool.hpp).
#include "proxy/pool.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <algorithm>

#include "proxy/log.hpp"

namespace pgrelay {

namespace asio = boost::asio;
using net::use_tuple;

Pool::Pool(PoolManager& mgr, PoolKey key)
    : mgr_(mgr), key_(std::move(key)),
      wait_hist_(&metrics::Registry::instance().pool_wait(key_.role, key_.member, key_.database, key_.user)) {}

Pool::~Pool() {
    for (auto& s : idle_) s->close();
    // Waiters live in client coroutines; the manager outlives them all.
}

bool Pool::can_open() const {
    const PoolConfig& pc = mgr_.config(key_.role);
    if (total() >= pc.pool_size) return false;
    if (pc.max_db_connections > 0 && mgr_.db_connections(key_.member, key_.database) >= pc.max_db_connections) return false;
    return true;
}

void Pool::wake_one() {
    if (waiters_.empty()) return;
    Waiter* w = waiters_.front();
    waiters_.pop_front();
    w->may_open = true;
    w->timer.cancel();
}

void Pool::closed_one() {
    ++servers_closed;
    wake_one();
    mgr_.db_slot_freed(key_.member, key_.database);
}

asio::awaitable<Pool::Acquired> Pool::open_one(const Target& target) {
    ++opening_;
    auto s = std::make_unique<ServerConn>(mgr_.executor());
    auto err = co_await s->open(mgr_.full_config(), mgr_.tls(), target, key_.user, key_.database, creds_);
    --opening_;
    if (err) {
        log::warn("pool {}/{}@{}: cannot open a server connection: {} ({})", key_.user, key_.database, key_.member,
                  err->message, err->sqlstate);
        s->close();
        wake_one();  // its slot is free again
        Acquired failed;
        failed.error = std::move(err);
        co_return failed;
    }
    s->id = mgr_.next_server_id();
    s->generation = mgr_.generation();
    ++servers_opened;
    last_target = target;
    if (welcome.empty()) welcome.assign(s->reported.begin(), s->reported.end());
    log::debug("pool {}/{}@{}: server #{} opened ({} in pool)", key_.user, key_.database, key_.member, s->id, total() + 1);
    ++active_;
    Acquired ok;
    ok.server = std::move(s);
    co_return ok;
}

asio::awaitable<Pool::Acquired> Pool::acquire(const Target& target) {
    const PoolConfig& pc = mgr_.config(key_.role);
    const auto started = Clock::now();
    const auto deadline = pc.query_wait_timeout.count() > 0 ? started + pc.query_wait_timeout : Clock::time_point::max();
    auto waited = [&] { return std::chrono::duration<double>(Clock::now() - started).count(); };
    for (;;) {
        while (!idle_.empty()) {
            auto s = std::move(idle_.back());
            idle_.pop_back();
            const auto now = Clock::now();
            if (!s->looks_alive() || (pc.server_lifetime.count() > 0 && now - s->created >= pc.server_lifetime)) {
                log::info("pool {}/{}@{}: server #{} {}, replaced", key_.user, key_.database, key_.member, s->id,
                          s->looks_alive() ? "reached server_lifetime" : "closed while idle");
                s->close();
                closed_one();
                continue;
            }
            ++active_;
            ++acquired;
            Acquired ok;
            ok.server = std::move(s);
            ok.waited = waited();
            co_return ok;
        }
        if (mgr_.paused()) {
            // PAUSE came while this client waited: it opens nothing now.
            Acquired held;
            held.paused = true;
            held.waited = waited();
            co_return held;
        }
        if (can_open()) {
            auto a = co_await open_one(target);
            if (a.server) ++acquired;
            a.waited = waited();
            co_return a;
        }
        Waiter w(mgr_.executor());
        w.timer.expires_at(deadline);
        waiters_.push_back(&w);
        auto it = std::prev(waiters_.end());
        co_await w.timer.async_wait(use_tuple);
        if (w.server) {
            ++acquired;
            Acquired ok;
            ok.server = std::move(w.server);
            ok.waited = waited();
            co_return ok;
        }
        if (w.may_open) continue;  // popped by wake_one
        waiters_.erase(it);        // timed out: still queued
        ++wait_timeouts;
        Acquired timeout;
        timeout.error = login_error("53300", "pgrelay " + std::string(to_string(key_.role)) + ": no server connection for " +
                                                 key_.user + "/" + key_.database + " became free within query_wait_timeout (" +
                                                 std::to_string(pc.query_wait_timeout.count()) + " ms, pool_size " +
                                                 std::to_string(pc.pool_size) + ")");
        timeout.waited = waited();
        co_return timeout;
    }
}

void Pool::release(std::unique_ptr<ServerConn> s, bool reusable) {
    --active_;
    const PoolConfig& pc = mgr_.config(key_.role);
    const auto now = Clock::now();
    if (!reusable || s->broken || retired || mgr_.paused() || s->generation != mgr_.generation() ||
        (pc.server_lifetime.count() > 0 && now - s->created >= pc.server_lifetime)) {
        s->close();
        closed_one();
        return;
    }
    s->idle_since = now;
    if (!waiters_.empty()) {
        Waiter* w = waiters_.front();
        waiters_.pop_front();
        ++active_;
        w->server = std::move(s);
        w->timer.cancel();
        return;
    }
    idle_.push_back(std::move(s));
}

void Pool::close_idle() {
    while (!idle_.empty()) {
        idle_.back()->close();
        idle_.pop_back();
        closed_one();
    }
}

const std::vector<const ServerConn*>& Pool::idle_list() {
    idle_view_.clear();
    for (const auto& s : idle_) idle_view_.push_back(s.get());
    return idle_view_;
}

void Pool::tick(Clock::time_point now) {
    const PoolConfig& pc = mgr_.config(key_.role);
    for (size_t i = 0; i < idle_.size();) {
        ServerConn& s = *idle_[i];
        const char* why = nullptr;
        if (!s.looks_alive()) why = "closed while idle";
        else if (pc.server_lifetime.count() > 0 && now - s.created >= pc.server_lifetime) why = "reached server_lifetime";
        else if (pc.server_idle_timeout.count() > 0 && now - s.idle_since >= pc.server_idle_timeout &&
                 total() > pc.min_pool_size)
            why = "reached server_idle_timeout";
        if (!why) {
            ++i;
            continue;
        }
        log::info("pool {}/{}@{}: server #{} {}, closed", key_.user, key_.database, key_.member, s.id, why);
        s.close();
        idle_.erase(idle_.begin() + static_cast<std::ptrdiff_t>(i));
        closed_one();
    }
    if (retired || filling_ || mgr_.paused() || !has_credentials() || last_target.port == 0) return;
    if (total() >= pc.min_pool_size || !can_open()) return;
    filling_ = true;
    asio::co_spawn(
        mgr_.executor(),
        [this]() -> asio::awaitable<void> {
            const size_t want = mgr_.config(key_.role).min_pool_size;
            while (!retired && !mgr_.paused() && total() < want && can_open()) {
                auto a = co_await open_one(last_target);
                if (!a.server) break;
                release(std::move(a.server), true);
            }
            filling_ = false;
        },
        asio::detached);
}

PoolManager::PoolManager(asio::any_io_executor ex, std::shared_ptr<const Config> cfg, std::shared_ptr<const TlsContexts> tls)
    : ex_(ex), cfg_(std::move(cfg)), tls_(tls ? std::move(tls) : std::make_shared<const TlsContexts>()) {}

PoolManager::~PoolManager() { *alive_ = false; }

Pool& PoolManager::pool(const PoolKey& key) {
    auto it = pools_.find(key);
    if (it == pools_.end()) it = pools_.emplace(key, std::make_unique<Pool>(*this, key)).first;
    return *it->second;
}

void PoolManager::reconfigure(std::shared_ptr<const Config> cfg, std::shared_ptr<const TlsContexts> tls) {
    cfg_ = std::move(cfg);
    if (tls) tls_ = std::move(tls);
}

size_t PoolManager::db_connections(const std::string& member, const std::string& db) const {
    size_t n = 0;
    for (const auto& [k, p] : pools_)
        if (k.member == member && k.database == db) n += p->total();
    return n;
}

void PoolManager::db_slot_freed(const std::string& member, const std::string& db) {
    for (auto& [k, p] : pools_) {
        if (k.member != member || k.database != db || p->waiters_.empty()) continue;
        if (config(k.role).max_db_connections == 0) continue;  // its own slots wake it
        p->wake_one();
        return;
    }
}

void PoolManager::keep_only(PortRole role, const std::vector<std::string>& members) {
    for (auto& [k, p] : pools_) {
        if (k.role != role) continue;
        const bool keep = std::find(members.begin(), members.end(), k.member) != members.end();
        p->retired = !keep;
        if (!keep) p->close_idle();
    }
}

void PoolManager::pause() {
    paused_ = true;
    for (auto& [k, p] : pools_) p->close_idle();
}

void PoolManager::reconnect() {
    ++generation_;
    for (auto& [k, p] : pools_) p->close_idle();
}

size_t PoolManager::servers_in_use() const noexcept {
    size_t n = 0;
    for (const auto& [k, p] : pools_) n += p->active_count() + p->opening_count();
    return n;
}

void PoolManager::start() {
    tick_ = std::make_unique<asio::steady_timer>(ex_);
    asio::co_spawn(ex_, maintain(), asio::detached);
}

void PoolManager::stop() {
    stopped_ = true;
    if (tick_) tick_->cancel();
    for (auto& [k, p] : pools_) p->close_idle();
}

void PoolManager::publish() const {
    std::vector<metrics::PoolRow> rows;
    rows.reserve(pools_.size());
    for (const auto& [k, p] : pools_) {
        metrics::PoolRow r;
        r.port = k.role;
        r.mode = to_string(config(k.role).mode);
        r.member = k.member;
        r.database = k.database;
        r.user = k.user;
        r.clients = p->clients;
        r.clients_active = static_cast<int64_t>(p->active_count());
        r.clients_waiting = static_cast<int64_t>(p->waiting_count());
        r.servers_active = static_cast<int64_t>(p->active_count());
        r.servers_idle = static_cast<int64_t>(p->idle_count());
        r.servers_opening = static_cast<int64_t>(p->opening_count());
        r.pool_size = config(k.role).pool_size;
        r.servers_opened = p->servers_opened;
        r.servers_closed = p->servers_closed;
        r.acquired = p->acquired;
        r.wait_timeouts = p->wait_timeouts;
        r.wait_seconds = p->wait_seconds_total;
        rows.push_back(std::move(r));
    }
    metrics::Registry::instance().set_pools(std::move(rows));
}

asio::awaitable<void> PoolManager::maintain() {
    // Every 250 ms: publish for /pools and /metrics; every 1 s: the pools' upkeep.
    for (unsigned n = 0; !stopped_; ++n) {
        tick_->expires_after(std::chrono::milliseconds(250));
        co_await tick_->async_wait(use_tuple);
        if (stopped_) break;
        if (n % 4 == 3) {
            const auto now = Pool::Clock::now();
            for (auto& [k, p] : pools_) p->tick(now);
        }
        publish();
    }
}

}  // namespace pgrelay
