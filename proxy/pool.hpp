// Server connection pools, one per (member, database, user), owned by one
// worker thread (pooled ports run all their clients on one thread, as
// PgBouncer does, so pools need no locks). A client borrows a server with
// acquire() and gives it back with release(); waiting clients are served
// first in, first out, up to query_wait_timeout. A maintenance tick closes
// servers past server_lifetime or server_idle_timeout, drops dead idle ones,
// and keeps min_pool_size open.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_set>
#include <vector>

#include "protocol/login.hpp"
#include "protocol/pooling.hpp"
#include "proxy/config.hpp"
#include "proxy/metrics.hpp"
#include "proxy/server_conn.hpp"

namespace pgrelay {

struct PoolKey {
    PortRole role = PortRole::ReadWrite;  // the ports' pools are apart: their settings differ
    std::string member, database, user;
    friend auto operator<=>(const PoolKey&, const PoolKey&) = default;
};

class PoolManager;

class Pool {
public:
    using Clock = std::chrono::steady_clock;
    Pool(PoolManager& mgr, PoolKey key);
    ~Pool();

    const PoolKey& key() const noexcept { return key_; }
    // How long a client waited in acquire(), whatever it got (a server, a
    // timeout, a failed login).
    void observe_wait(double seconds) noexcept {
        wait_hist_->observe(seconds);
        wait_seconds_total += seconds;
    }
    PortRole role() const noexcept { return key_.role; }
    // The member lost this port's role: idle servers are closed, busy ones when they come back.
    bool retired = false;

    // Credentials pgrelay logs into servers with, derived from the last
    // successful client login (per pool, not per client: servers can be
    // opened with no client present).
    void set_credentials(protocol::BackendLogin::Credentials c) { creds_ = std::move(c); }
    bool has_credentials() const noexcept { return creds_.password || creds_.md5 || creds_.client_key; }

    struct Acquired {
        std::unique_ptr<ServerConn> server;
        std::optional<LoginError> error;  // set when no server: timeout (53300-ish) or login failure
        double waited = 0;                // seconds spent waiting
        bool paused = false;              // the pools were paused meanwhile: hold, then ask again
    };
    // A server for `target` (the member this pool is for), waiting up to
    // query_wait_timeout when pool_size are in use.
    boost::asio::awaitable<Acquired> acquire(const Target& target);
    // Back from a client. `reusable` false: it is closed (mid-transaction,
    // broken, or server_lifetime passed).
    void release(std::unique_ptr<ServerConn> s, bool reusable);
    // Closes idle servers (topology moved away from this member, shutdown).
    void close_idle();
    void tick(Clock::time_point now);  // lifetime/idle timeouts, dead idle servers, min_pool_size

    // For /pools, SHOW POOLS, /metrics.
    size_t idle_count() const noexcept { return idle_.size(); }
    size_t active_count() const noexcept { return active_; }
    size_t opening_count() const noexcept { return opening_; }
    size_t waiting_count() const noexcept { return waiters_.size(); }
    size_t total() const noexcept { return idle_.size() + active_ + opening_; }
    const std::vector<const ServerConn*>& idle_list();
    int clients = 0;  // clients logged in to this pool
    uint64_t wait_timeouts = 0, servers_opened = 0, servers_closed = 0, acquired = 0;
    double wait_seconds_total = 0;
    std::vector<std::pair<std::string, std::string>> welcome;  // a fresh server's ParameterStatus values
    Target last_target;

private:
    friend class PoolManager;
    struct Waiter {
        explicit Waiter(boost::asio::any_io_executor ex) : timer(ex) {}
        boost::asio::steady_timer timer;
        std::unique_ptr<ServerConn> server;  // handed over by release()
        bool may_open = false;               // a slot freed: try opening
    };
    boost::asio::awaitable<Acquired> open_one(const Target& target);
    bool can_open() const;
    void wake_one();
    void closed_one();

    PoolManager& mgr_;
    PoolKey key_;
    metrics::Histogram* wait_hist_;
    protocol::BackendLogin::Credentials creds_;
    std::deque<std::unique_ptr<ServerConn>> idle_;  // back = most recently used
    size_t active_ = 0, opening_ = 0;
    std::list<Waiter*> waiters_;
    std::vector<const ServerConn*> idle_view_;
    bool filling_ = false;
};

// All pools of one worker thread, plus what they share: the statement cache,
// per-(member, database) server counts for max_db_connections.
class PoolManager {
public:
    PoolManager(boost::asio::any_io_executor ex, std::shared_ptr<const Config> cfg, std::shared_ptr<const TlsContexts> tls);
    ~PoolManager();
    Pool& pool(const PoolKey& key);
    const PoolConfig& config(PortRole role) const { return cfg_->pool(role); }
    const Config& full_config() const { return *cfg_; }
    const TlsContexts& tls() const { return *tls_; }
    void reconfigure(std::shared_ptr<const Config> cfg, std::shared_ptr<const TlsContexts> tls);
    boost::asio::any_io_executor executor() const { return ex_; }
    protocol::pool::StatementCache& statements() noexcept { return statements_; }
    // Statements some server accepted (ParseComplete): a client's Parse of
    // one of these, outside a transaction, is answered without a server.
    bool validated(uint64_t id) const { return validated_.count(id) != 0; }
    void set_validated(uint64_t id) {
        if (validated_.size() > 100000) validated_.clear();  // ids are never reused: bound the set
        validated_.insert(id);
    }
    // Closes idle servers of members no longer routable for their role.
    void keep_only(PortRole role, const std::vector<std::string>& members);
    // The admin console's PAUSE / RESUME / RECONNECT (as PgBouncer's). While
    // paused, no transaction starts (clients are held, up to hold_timeout),
    // and servers are closed as they come back, so the members can be
    // restarted; PAUSE answers once no server is in use. RECONNECT closes
    // every server as soon as it is not in use; new ones open on demand.
    void pause();
    void resume() noexcept { paused_ = false; }
    bool paused() const noexcept { return paused_; }
    void reconnect();
    uint64_t generation() const noexcept { return generation_; }
    size_t servers_in_use() const noexcept;
    void start();  // the maintenance tick
    void publish() const;  // the pools' numbers, for /pools and /metrics
    void stop();
    uint64_t next_server_id() noexcept { return ++server_ids_; }
    // False once the manager is gone: a client coroutine destroyed after it
    // (the io_context's shutdown) must not touch its pools.
    std::shared_ptr<const bool> alive() const { return alive_; }
    const std::map<PoolKey, std::unique_ptr<Pool>>& pools() const noexcept { return pools_; }
    size_t db_connections(const std::string& member, const std::string& db) const;
    void db_slot_freed(const std::string& member, const std::string& db);

private:
    boost::asio::awaitable<void> maintain();
    boost::asio::any_io_executor ex_;
    std::shared_ptr<const Config> cfg_;
    std::shared_ptr<const TlsContexts> tls_;
    std::map<PoolKey, std::unique_ptr<Pool>> pools_;
    protocol::pool::StatementCache statements_;
    std::unordered_set<uint64_t> validated_;
    std::unique_ptr<boost::asio::steady_timer> tick_;
    bool stopped_ = false;
    bool paused_ = false;
    uint64_t generation_ = 0;  // RECONNECT: servers of older generations close when back
    uint64_t server_ids_ = 0;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace pgrelay
