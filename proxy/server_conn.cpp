// The server side of pooling (server_conn.hpp).
#include "proxy/server_conn.hpp"

#include <sys/socket.h>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cerrno>

#include "protocol/frames.hpp"
#include "protocol/scram.hpp"

namespace pgrelay {

namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;
using net::use_tuple;

namespace {
constexpr uint32_t kMaxLoginMessage = 1u << 20;  // nothing in a login is near this
constexpr uint32_t kMaxStartupWatched = 8192;     // an ErrorResponse or authentication request, held whole


// Reads whole messages from `conn` into `buf`; calls on(type, body) for each
// until it returns false. Returns an error text, or "" once on() stopped.
template <class Read, class On>
asio::awaitable<std::string> read_messages(Read&& read, std::string& buf, asio::steady_timer& deadline, On&& on) {
    uint8_t chunk[4096];
    for (;;) {
        while (buf.size() >= 5) {
            const uint32_t len = protocol::read_u32(reinterpret_cast<const uint8_t*>(buf.data() + 1));
            if (len < 4 || len > kMaxLoginMessage) co_return "invalid message from the server (length " + std::to_string(len) + ")";
            if (buf.size() < size_t(len) + 1) break;
            const char type = buf[0];
            std::string body = buf.substr(5, len - 4);
            buf.erase(0, size_t(len) + 1);
            if (!on(type, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(body.data()), body.size())))
                co_return "";
        }
        auto r = co_await (read(asio::buffer(chunk)) || deadline.async_wait(use_tuple));
        if (r.index() == 1) co_return "timed out";
        auto [ec, n] = std::get<0>(r);
        if (ec) co_return "connection lost: " + ec.message();
        buf.append(reinterpret_cast<const char*>(chunk), n);
    }
}
}  // namespace

std::string encode_startup_message(const std::vector<std::pair<std::string, std::string>>& params) {
    std::string out;
    protocol::append_u32(out, 0);
    protocol::append_u32(out, protocol::kProtocolV3);
    for (const auto& [k, v] : params) {
        out.append(k);
        out.push_back('\0');
        out.append(v);
        out.push_back('\0');
    }
    out.push_back('\0');
    protocol::write_u32(reinterpret_cast<uint8_t*>(out.data()), static_cast<uint32_t>(out.size()));
    return out;
}

asio::awaitable<std::optional<LoginError>> ServerConn::connect(const Config& cfg, const TlsContexts& tls, const Target& t) {
    target_ = t;
    boost::system::error_code ec;
    if (!co_await net::connect_with_timeout(sock_, t, cfg.connect_timeout, ec))
        co_return login_error("08006", ec.message(), true);
    net::tune_socket(sock_, cfg);
    if (tls.backend) {
        bool config_failure = false;
        std::string why = co_await net::start_backend_tls(sock_, tls_, *tls.backend, cfg, t, config_failure);
        if (!why.empty()) {
            auto e = login_error("08006", std::move(why), true);
            e.config_failure = config_failure;
            co_return e;
        }
    }
    co_return std::nullopt;
}

asio::awaitable<std::optional<LoginError>> ServerConn::forward_startup(const std::string& startup_bytes,
                                                                       std::chrono::milliseconds timeout,
                                                                       std::string& prefix) {
    auto [wec, wn] = co_await write(asio::buffer(startup_bytes));
    if (wec) co_return login_error("08006", "connection lost during startup: " + wec.message(), true);
    protocol::FrameScanner scanner(UINT32_MAX, kMaxStartupWatched);
    scanner.watch(static_cast<char>(protocol::BackendType::ErrorResponse));
    scanner.watch(static_cast<char>(protocol::BackendType::Authentication));
    scanner.watch(static_cast<char>(protocol::BackendType::NegotiateProtocolVersion));
    asio::steady_timer deadline(sock_.get_executor(), timeout);
    // PostgreSQL's answer to a startup is about 500 bytes; this array is
    // part of the coroutine's frame, allocated for every new session.
    uint8_t chunk[1024];
    size_t pos = 0;
    for (;;) {
        auto r = co_await (read(asio::buffer(chunk)) || deadline.async_wait(use_tuple));
        if (r.index() == 1) co_return login_error("08006", "no answer to the startup message within connect_timeout", true);
        auto [rec, n] = std::get<0>(r);
        if (rec) co_return login_error("08006", "connection lost during startup: " + rec.message(), true);
        prefix.append(reinterpret_cast<const char*>(chunk), n);
        for (;;) {
            protocol::Frame f;
            std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(prefix.data()), prefix.size());
            const auto st = scanner.next(bytes, pos, f);
            if (st == protocol::FrameScanner::Status::NeedMore) break;
            if (st == protocol::FrameScanner::Status::Error || !f.complete) co_return std::nullopt;  // the relay reports it
            const auto body = bytes.subspan(f.offset + 5, f.length - 4);
            if (f.type == 'E') {
                auto e = protocol::decode_error_fields(body);
                if (e && e->sqlstate == "57P03")
                    co_return login_error("57P03", "the server answered 57P03: " + std::string(e->message), false);
                co_return std::nullopt;
            }
            if (f.type == 'R') {
                if (auto stripped = protocol::sasl_without_mechanism(body, "SCRAM-SHA-256-PLUS"))
                    prefix.replace(f.offset, f.wire_size(), *stripped);
                co_return std::nullopt;
            }
            // NegotiateProtocolVersion may precede it; anything else is the client's business.
            if (f.type != 'v') co_return std::nullopt;
        }
    }
}

asio::awaitable<std::optional<LoginError>> ServerConn::open(const Config& cfg, const TlsContexts& tls, const Target& t,
                                                            const std::string& user, const std::string& database,
                                                            protocol::BackendLogin::Credentials creds) {
    if (auto e = co_await connect(cfg, tls, t)) {
        e->message = "could not connect to " + t.member + " (" + t.address() + "): " + e->message;
        co_return e;
    }
    std::vector<std::pair<std::string, std::string>> params;
    params.emplace_back(std::string("user"), user);
    params.emplace_back(std::string("database"), database);
    const std::string startup = encode_startup_message(params);
    auto [wec, wn] = co_await write(asio::buffer(startup));
    if (wec) co_return login_error("08006", t.member + ": connection lost during startup: " + wec.message(), true);

    protocol::BackendLogin login(user, std::move(creds), protocol::scram::make_nonce());
    asio::steady_timer deadline(sock_.get_executor(), cfg.connect_timeout);
    std::string buf;
    std::optional<LoginError> failure;
    std::string to_send;
    bool done = false;
    for (;;) {
        to_send.clear();
        auto reader = [this](asio::mutable_buffer b) { return read(b); };
        std::string err = co_await read_messages(reader, buf, deadline, [&](char type, std::span<const uint8_t> body) {
                auto step = login.on_message(type, body);
                switch (step.kind) {
                    case protocol::LoginStep::Kind::Send: to_send = std::move(step.bytes); return false;
                    case protocol::LoginStep::Kind::Done: done = true; return false;
                    case protocol::LoginStep::Kind::Fail:
                        failure = login_error(step.sqlstate.empty() ? std::string("08006") : step.sqlstate, step.error, false);
                        return false;
                }
                return true;
            });
        if (failure) co_return failure;
        if (!err.empty()) co_return login_error("08006", t.member + " (" + t.address() + ") during login: " + err, true);
        if (done) break;
        if (!to_send.empty()) {
            auto [sec, sn] = co_await write(asio::buffer(to_send));
            if (sec) co_return login_error("08006", t.member + ": connection lost during login: " + sec.message(), true);
        }
    }
    if (!buf.empty()) co_return login_error("08P01", t.member + " sent more than its login before pgrelay asked", false);
    for (const auto& [k, v] : login.parameters()) reported[k] = v;
    if (auto k = login.backend_key()) key_ = *k;
    created = idle_since = Clock::now();
    logged_in_ = true;
    co_return std::nullopt;
}

asio::awaitable<std::string> ServerConn::request(const std::string& bytes, std::chrono::milliseconds timeout,
                                                 std::function<void(char, std::span<const uint8_t>)> on) {
    auto [wec, wn] = co_await write(asio::buffer(bytes));
    if (wec) {
        broken = true;
        co_return "connection lost: " + wec.message();
    }
    asio::steady_timer deadline(sock_.get_executor(), timeout);
    std::string buf;
    std::optional<protocol::TxStatus> status;
    std::string err = co_await read_messages([this](asio::mutable_buffer b) { return read(b); }, buf, deadline,
                                             [&](char type, std::span<const uint8_t> body) {
                                                 if (type == 'S') {
                                                     if (auto p = protocol::decode_parameter_status(body))
                                                         reported[std::string(p->name)] = std::string(p->value);
                                                 }
                                                 if (type == 'Z') {
                                                     status = protocol::decode_ready_for_query(body);
                                                     return false;
                                                 }
                                                 on(type, body);
                                                 return true;
                                             });
    if (!err.empty() || !buf.empty() || status != protocol::TxStatus::Idle) {
        broken = true;
        co_return err.empty() ? std::string("out of step after the request") : err;
    }
    co_return "";
}

asio::awaitable<std::string> ServerConn::run_simple(const std::string& sql, std::chrono::milliseconds timeout) {
    std::string q;
    protocol::pool::encode_query(q, sql);
    std::string error;
    std::string err = co_await request(q, timeout, [&](char type, std::span<const uint8_t> body) {
        if (type != 'E') return;
        auto e = protocol::decode_error_fields(body);
        error = e ? std::string(e->sqlstate) + ": " + std::string(e->message) : "error";
    });
    co_return err.empty() ? error : err;
}

bool ServerConn::looks_alive() const noexcept {
    if (!sock_.is_open() || broken) return false;
    char probe;
    const ssize_t n = ::recv(const_cast<net::tcp::socket&>(sock_).native_handle(), &probe, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

void ServerConn::close() noexcept {
    boost::system::error_code ec;
    // A Terminate first, so PostgreSQL does not log an unexpected EOF
    // (plaintext only: over TLS it would have to go through OpenSSL). Not
    // before the login completed: PostgreSQL would log it as a bad password
    // message.
    if (sock_.is_open() && !tls_ && logged_in_) {
        static const char terminate[5] = {'X', 0, 0, 0, 4};
        (void)::send(sock_.native_handle(), terminate, sizeof terminate, MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    sock_.shutdown(net::tcp::socket::shutdown_both, ec);
    sock_.close(ec);
}

}  // namespace pgrelay
