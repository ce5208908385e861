// http::Client (http_client.hpp). Deadlines are watchdog timers that close the
// socket, which ends any operation in flight, plain or TLS alike; they hold
// the connection only weakly, so a timer firing late touches nothing freed.
#include "topology/http_client.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

namespace pgrelay::topology::http {

namespace asio = boost::asio;
namespace ssl = asio::ssl;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

std::shared_ptr<ssl::context> make_client_tls(const TlsFiles& f) {
    auto ctx = std::make_shared<ssl::context>(ssl::context::tls_client);
    SSL_CTX_set_min_proto_version(ctx->native_handle(), TLS1_2_VERSION);
    boost::system::error_code ec;
    if (f.ca.empty()) ctx->set_default_verify_paths(ec);
    else ctx->load_verify_file(f.ca, ec);
    if (ec) throw std::runtime_error("cannot load CA file '" + f.ca + "': " + ec.message());
    if (!f.cert.empty()) {
        ctx->use_certificate_chain_file(f.cert, ec);
        if (ec) throw std::runtime_error("cannot load certificate '" + f.cert + "': " + ec.message());
        ctx->use_private_key_file(f.key, ssl::context::pem, ec);
        if (ec) throw std::runtime_error("cannot load key '" + f.key + "': " + ec.message());
        if (SSL_CTX_check_private_key(ctx->native_handle()) != 1)
            throw std::runtime_error("key '" + f.key + "' does not match certificate '" + f.cert + "'");
    }
    ctx->set_verify_mode(ssl::verify_peer);
    return ctx;
}

struct Client::Conn {
    tcp::socket plain;
    std::unique_ptr<ssl::stream<tcp::socket>> tls;
    bool open = false;
    bool used = false;  // carried a response already (a keep-alive reuse may find it closed)

    explicit Conn(asio::any_io_executor ex) : plain(ex) {}
    tcp::socket& lowest() { return tls ? tls->next_layer() : plain; }
    void shut() {
        boost::system::error_code ec;
        lowest().close(ec);
        open = false;
    }
    asio::awaitable<std::tuple<boost::system::error_code, size_t>> read_some(asio::mutable_buffer b) {
        if (tls) co_return co_await tls->async_read_some(b, use_tuple);
        co_return co_await plain.async_read_some(b, use_tuple);
    }
    asio::awaitable<std::tuple<boost::system::error_code, size_t>> write(asio::const_buffer b) {
        if (tls) co_return co_await asio::async_write(*tls, b, use_tuple);
        co_return co_await asio::async_write(plain, b, use_tuple);
    }
};

namespace {

// Closes the connection when the deadline passes.
class Watchdog {
public:
    Watchdog(asio::any_io_executor ex, Clock::time_point deadline, const std::shared_ptr<Client::Conn>& conn)
        : timer_(ex, deadline), fired_(std::make_shared<bool>(false)) {
        timer_.async_wait([weak = std::weak_ptr<Client::Conn>(conn), fired = fired_](const boost::system::error_code& ec) {
            if (ec) return;
            *fired = true;
            if (auto c = weak.lock()) c->shut();
        });
    }
    ~Watchdog() { timer_.cancel(); }
    bool fired() const { return *fired_; }

private:
    asio::steady_timer timer_;
    std::shared_ptr<bool> fired_;
};

std::string tls_error(const boost::system::error_code& ec) {
    std::string what = ec.message();
    if (ec.category() == asio::error::get_ssl_category()) {
        const char* reason = ERR_reason_error_string(static_cast<unsigned long>(ec.value()));
        if (reason) what = reason;
    }
    return what;
}

bool is_ip_address(const std::string& host) {
    boost::system::error_code ec;
    asio::ip::make_address(host, ec);
    return !ec;
}

}  // namespace

Client::Client(asio::any_io_executor ex, Url url, std::shared_ptr<ssl::context> tls)
    : ex_(std::move(ex)), url_(std::move(url)), tls_(std::move(tls)) {}

Client::~Client() { close(); }

void Client::close() {
    ++closes_;
    if (conn_) conn_->shut();
    conn_.reset();
    parser_.reset();
}

asio::awaitable<std::string> Client::connect(Clock::time_point deadline) {
    Conn& c = *conn_;
    tcp::resolver resolver(ex_);
    auto [rec, results] = co_await resolver.async_resolve(url_.host, std::to_string(url_.port), use_tuple);
    if (rec) co_return "cannot resolve " + url_.host + ": " + rec.message();
    if (Clock::now() >= deadline) co_return "timed out resolving " + url_.host;
    auto [cec, ep] = co_await asio::async_connect(c.plain, results, use_tuple);
    if (cec) co_return "connect: " + cec.message();
    boost::system::error_code ignored;
    c.plain.set_option(tcp::no_delay(true), ignored);
    c.plain.set_option(asio::socket_base::keep_alive(true), ignored);
    // A peer that vanished (host down, cable cut) is noticed in ~11 s, not
    // the kernel's two hours: a silent watch would otherwise look healthy.
    const int idle = 5, intvl = 2, cnt = 3;
    ::setsockopt(c.plain.native_handle(), IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    ::setsockopt(c.plain.native_handle(), IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    ::setsockopt(c.plain.native_handle(), IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    if (url_.tls) {
        c.tls = std::make_unique<ssl::stream<tcp::socket>>(std::move(c.plain), *tls_);
        SSL* s = c.tls->native_handle();
        // The name the certificate must carry; an IP address is matched
        // against its IP SANs (and never sent as SNI, RFC 6066 section 3).
        if (is_ip_address(url_.host)) {
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s), url_.host.c_str());
        } else {
            SSL_set_tlsext_host_name(s, url_.host.c_str());
            SSL_set1_host(s, url_.host.c_str());
        }
        auto [hec] = co_await c.tls->async_handshake(ssl::stream_base::client, use_tuple);
        if (hec) co_return "TLS handshake: " + tls_error(hec);
    }
    c.open = true;
    co_return "";
}

asio::awaitable<Response> Client::exchange(std::string_view method, std::string_view target, std::string_view body,
                                           std::string_view auth, std::chrono::milliseconds timeout, bool stream) {
    const auto deadline = Clock::now() + timeout;
    std::string req;
    req.reserve(256 + body.size());
    req.append(method).append(" ").append(target).append(" HTTP/1.1\r\nHost: ");
    req.append(url_.host.find(':') != std::string::npos ? "[" + url_.host + "]" : url_.host);
    req.append(":").append(std::to_string(url_.port)).append("\r\nUser-Agent: pgrelay\r\nAccept: application/json\r\n");
    if (!auth.empty()) req.append("Authorization: ").append(auth).append("\r\n");
    if (!body.empty() || method == "POST")
        req.append("Content-Type: application/json\r\nContent-Length: ").append(std::to_string(body.size())).append("\r\n");
    req.append("\r\n").append(body);

    const uint64_t closes = closes_;
    for (int attempt = 0;; ++attempt) {
        if (closes_ != closes) co_return Response{"closed", 0, {}};  // close() while in flight: no retry
        parser_.reset();
        if (!conn_ || !conn_->open) {
            if (conn_) conn_->shut();
            conn_ = std::make_shared<Conn>(ex_);
        }
        auto conn = conn_;
        Watchdog dog(ex_, deadline, conn);
        const bool reused = conn->open && conn->used;
        auto timed_out = [&](const std::string& what) {
            return Response{"timed out after " + std::to_string(timeout.count()) + " ms (" + what + ")", 0, {}};
        };
        if (!conn->open) {
            std::string err = co_await connect(deadline);
            if (!err.empty()) {
                conn->shut();
                co_return dog.fired() ? timed_out(err) : Response{err, 0, {}};
            }
        }
        auto [wec, wn] = co_await conn->write(asio::buffer(req));
        auto parser = std::make_unique<ResponseParser>();
        bool got_any = false;
        std::string err;
        if (wec) {
            err = "send: " + wec.message();
        } else {
            char buf[16384];
            for (;;) {
                auto [rec, n] = co_await conn->read_some(asio::buffer(buf));
                if (n > 0) {
                    got_any = true;
                    parser->feed(std::string_view(buf, n));
                }
                if (!rec && parser->error().empty()) {
                    if (parser->done() || (stream && parser->headers_done() && parser->status() == 200)) break;
                    continue;
                }
                if (rec == asio::error::eof || rec == ssl::error::stream_truncated) parser->eof();
                if (!parser->error().empty()) err = "bad HTTP response: " + parser->error();
                else if (parser->done()) break;
                else err = "receive: " + (rec ? rec.message() : std::string("connection closed"));
                break;
            }
        }
        if (!err.empty()) {
            conn->shut();
            // A kept-alive connection the server has closed meanwhile: once
            // more on a new one (every request pgrelay sends is a read or an
            // idempotent authentication).
            if (reused && !got_any && attempt == 0 && !dog.fired()) continue;
            co_return dog.fired() ? timed_out(err) : Response{err, 0, {}};
        }
        conn->used = true;
        Response r{"", parser->status(), parser->take_body()};
        if (stream && !parser->done()) {
            parser_ = std::move(parser);
        } else if (!parser->keep_alive()) {
            conn->shut();
        }
        co_return r;
    }
}

asio::awaitable<Response> Client::request(std::string_view method, std::string_view target, std::string_view body,
                                          std::string_view auth, std::chrono::milliseconds timeout) {
    co_return co_await exchange(method, target, body, auth, timeout, false);
}

asio::awaitable<Response> Client::open_stream(std::string_view method, std::string_view target, std::string_view body,
                                              std::string_view auth, std::chrono::milliseconds timeout) {
    co_return co_await exchange(method, target, body, auth, timeout, true);
}

asio::awaitable<Response> Client::read_stream() {
    if (!conn_ || !parser_) co_return Response{"no stream is open", 0, {}};
    auto conn = conn_;
    char buf[16384];
    for (;;) {
        std::string body = parser_->take_body();
        if (!body.empty()) co_return Response{"", parser_->status(), std::move(body)};
        if (parser_->done()) co_return Response{"end of stream", parser_->status(), {}};
        auto [ec, n] = co_await conn->read_some(asio::buffer(buf));
        if (!parser_) co_return Response{"stream closed", 0, {}};
        if (n > 0) parser_->feed(std::string_view(buf, n));
        if (ec == asio::error::eof || ec == ssl::error::stream_truncated) parser_->eof();
        if (!parser_->error().empty()) {
            const std::string e = "bad HTTP stream: " + parser_->error();
            conn->shut();
            co_return Response{e, 0, {}};
        }
        if (ec && !parser_->done()) {
            conn->shut();
            co_return Response{"stream: " + ec.message(), 0, {}};
        }
    }
}

}  // namespace pgrelay::topology::http
