// The server side: one connection to PostgreSQL (connect, backend TLS), then
// one of two logins:
// - pooled: pgrelay logs in itself with the pool's credentials, up to the
//   first ReadyForQuery (open), and keeps the state a pool must know to lend
//   the server to any client: the parameters it runs with, the statements
//   prepared on it, its age;
// - passthrough: the server is bound to one client for its lifetime, and the
//   client's own StartupMessage and authentication are forwarded
//   (forward_startup), so the backend authenticates the client.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <functional>
#include <span>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "protocol/login.hpp"
#include "protocol/pooling.hpp"
#include "proxy/config.hpp"
#include "proxy/net.hpp"
#include "proxy/router.hpp"
#include "proxy/tls.hpp"

namespace pgrelay {

struct LoginError {
    std::string sqlstate;  // what the client is told: the server's own SQLSTATE, or 08006 when unreachable
    std::string message;
    bool unreachable = false;  // TCP/TLS failure, not an answer from PostgreSQL
    bool config_failure = false;  // backend TLS configuration or certificates: waiting will not help
};
// (A function, not braces: GCC 12 miscompiles `co_return LoginError{"..."}`.)
inline LoginError login_error(std::string sqlstate, std::string message, bool unreachable = false) {
    LoginError e;
    e.sqlstate = std::move(sqlstate);
    e.message = std::move(message);
    e.unreachable = unreachable;
    return e;
}

class ServerConn {
public:
    using Clock = std::chrono::steady_clock;
    explicit ServerConn(boost::asio::any_io_executor ex) : sock_(ex) {}
    ServerConn(const ServerConn&) = delete;
    ServerConn& operator=(const ServerConn&) = delete;

    // Connects to `t` (TCP, then backend_tls); nullopt on success.
    boost::asio::awaitable<std::optional<LoginError>> connect(const Config& cfg, const TlsContexts& tls, const Target& t);
    // Connects to `t` and logs in as `user` on `database`; nullopt on success.
    boost::asio::awaitable<std::optional<LoginError>> open(const Config& cfg, const TlsContexts& tls, const Target& t,
                                                           const std::string& user, const std::string& database,
                                                           protocol::BackendLogin::Credentials creds);

    // Passthrough, after connect: sends the client's StartupMessage and reads
    // the server's first messages up to its first authentication request,
    // which goes into `prefix` (with SCRAM-SHA-256-PLUS taken out of the
    // offer: channel binding cannot work across a proxy) for the relay to
    // forward. nullopt when the relay may go on -- an ErrorResponse other
    // than 57P03 too: the client reads it. Else why this server cannot take
    // the connection now: an I/O error or timeout (unreachable), or
    // PostgreSQL's own 57P03 (starting up, shutting down, in recovery),
    // which the caller may wait out or route around before the client has
    // seen a byte.
    boost::asio::awaitable<std::optional<LoginError>> forward_startup(const std::string& startup_bytes,
                                                                      std::chrono::milliseconds timeout,
                                                                      std::string& prefix);

    boost::asio::awaitable<net::IoResult> read(boost::asio::mutable_buffer b) {
        if (tls_) return tls_->async_read_some(b, net::use_tuple);
        return sock_.async_read_some(b, net::use_tuple);
    }
    boost::asio::awaitable<net::IoResult> write(boost::asio::const_buffer b) {
        if (tls_) return boost::asio::async_write(*tls_, b, net::use_tuple);
        return boost::asio::async_write(sock_, b, net::use_tuple);
    }
    // Runs `sql` (simple protocol) and reads up to its ReadyForQuery within
    // `timeout`; "" when it ran without error, else the error message.
    // Used idle, between clients (server_reset_query).
    boost::asio::awaitable<std::string> run_simple(const std::string& sql, std::chrono::milliseconds timeout);
    // Writes `bytes` (ending in a Sync or a Query) and reads up to the
    // ReadyForQuery, handing every message to `on`; "" when the exchange
    // completed (ErrorResponses included: `on` sees them), else what broke.
    boost::asio::awaitable<std::string> request(const std::string& bytes, std::chrono::milliseconds timeout,
                                                std::function<void(char, std::span<const uint8_t>)> on);

    // An idle connection has nothing to say: readable means the server sent
    // an error (pg_terminate_backend, shutdown) or closed it. Never blocks.
    bool looks_alive() const noexcept;
    void close() noexcept;
    net::tcp::socket& socket() noexcept { return sock_; }
    net::TlsStream* tls() noexcept { return tls_.get(); }

    const Target& target() const noexcept { return target_; }
    protocol::CancelKey backend_key() const noexcept { return key_; }
    // The server's GUC values as it last reported them (ParameterStatus), and
    // the values pgrelay set or saw set on it for parameters it does not
    // report (name -> SQL text of the value).
    std::map<std::string, std::string> reported;
    std::map<std::string, std::string> unreported;
    protocol::pool::ServerStatements statements;
    Clock::time_point created{Clock::now()};
    Clock::time_point idle_since{Clock::now()};
    uint64_t id = 0;  // for logs and SHOW SERVERS
    uint64_t generation = 0;  // PoolManager::generation() when opened
    bool broken = false;  // out of step or failed: close, never reuse

private:
    net::tcp::socket sock_;
    std::unique_ptr<net::TlsStream> tls_;  // after sock_: holds a reference to it
    Target target_;
    protocol::CancelKey key_{};
    bool logged_in_ = false;  // open() completed: pgrelay speaks for this session
};

// StartupMessage (protocol 3.0) with these parameters.
std::string encode_startup_message(const std::vector<std::pair<std::string, std::string>>& params);

}  // namespace pgrelay
