// Shared socket/TLS plumbing (net.hpp).
#include "proxy/net.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <algorithm>
#include <cstring>
#include <vector>

#include "protocol/messages.hpp"

namespace pgrelay::net {

using namespace asio::experimental::awaitable_operators;

std::string endpoint_string(const tcp::socket& s) {
    boost::system::error_code ec;
    const auto ep = s.remote_endpoint(ec);
    if (ec) return "?";
    if (ep.address().is_v6()) return "[" + ep.address().to_string() + "]:" + std::to_string(ep.port());
    return ep.address().to_string() + ":" + std::to_string(ep.port());
}

void tune_socket(tcp::socket& s, const Config& cfg) {
    boost::system::error_code ec;
    s.set_option(tcp::no_delay(true), ec);
    s.set_option(asio::socket_base::keep_alive(true), ec);
    const int fd = s.native_handle();
    const int idle = static_cast<int>(cfg.keepalive_idle.count());
    const int intvl = static_cast<int>(cfg.keepalive_interval.count());
    const int cnt = static_cast<int>(cfg.keepalive_count);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    // The same bound while data is in flight: keepalive only probes an idle
    // connection, so a query sent into a blackholed path would otherwise wait
    // for TCP's retransmissions to give up (about 15 minutes).
    const unsigned user_timeout_ms = static_cast<unsigned>((idle + intvl * cnt) * 1000);
    ::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof user_timeout_ms);
}

std::string tls_description(TlsStream& s) {
    SSL* ssl = s.native_handle();
    return std::string(SSL_get_version(ssl)) + " " + SSL_get_cipher_name(ssl);
}

std::string tls_failure(TlsStream& s, const boost::system::error_code& ec) {
    std::string why = ec.message();
    const long v = SSL_get_verify_result(s.native_handle());
    if (v != X509_V_OK) why += ": " + std::string(X509_verify_cert_error_string(v));
    return why;
}

asio::awaitable<bool> connect_with_timeout(tcp::socket& sock, const Target& t, std::chrono::milliseconds timeout,
                                           boost::system::error_code& ec) {
    asio::steady_timer timer(sock.get_executor(), timeout);
    boost::system::error_code aec;
    const auto addr = asio::ip::make_address(t.host, aec);
    if (aec) {
        tcp::resolver resolver(sock.get_executor());
        auto r = co_await (resolver.async_resolve(t.host, std::to_string(t.port), use_tuple) || timer.async_wait(use_tuple));
        if (r.index() == 1) {
            ec = asio::error::timed_out;
            co_return false;
        }
        auto [rec, results] = std::get<0>(r);
        if (rec) {
            ec = rec;
            co_return false;
        }
        auto c = co_await (asio::async_connect(sock, results, use_tuple) || timer.async_wait(use_tuple));
        if (c.index() == 1) {
            ec = asio::error::timed_out;
            co_return false;
        }
        ec = std::get<0>(std::get<0>(c));
        co_return !ec;
    }
    auto c = co_await (sock.async_connect(tcp::endpoint(addr, t.port), use_tuple) || timer.async_wait(use_tuple));
    if (c.index() == 1) {
        ec = asio::error::timed_out;
        co_return false;
    }
    ec = std::get<0>(std::get<0>(c));
    co_return !ec;
}

asio::awaitable<std::string> start_backend_tls(tcp::socket& sock, std::unique_ptr<TlsStream>& tls,
                                               asio::ssl::context& ctx, const Config& cfg, const Target& t,
                                               bool& config_failure) {
    using M = Config::BackendTls;
    const M mode = cfg.backend_tls;
    uint8_t request[8];
    protocol::write_u32(request, 8);
    protocol::write_u32(request + 4, protocol::kSSLRequestCode);
    asio::steady_timer deadline(sock.get_executor(), cfg.connect_timeout);
    auto [wec, wn] = co_await asio::async_write(sock, asio::buffer(request), use_tuple);
    if (wec) co_return "connection lost during the SSLRequest: " + wec.message();
    // Exactly one byte: anything after it would be plaintext a man in the
    // middle slipped in ahead of the handshake (CVE-2021-23222).
    char answer = 0;
    auto r = co_await (sock.async_read_some(asio::buffer(&answer, 1), use_tuple) || deadline.async_wait(use_tuple));
    if (r.index() == 1) co_return "no answer to the SSLRequest within connect_timeout";
    if (auto [rec, n] = std::get<0>(r); rec) co_return "connection lost during the SSLRequest: " + rec.message();
    if (answer == 'N') {
        if (mode == M::Prefer) co_return "";
        config_failure = true;
        co_return std::string("the server does not support TLS (backend_tls = \"") + to_string(mode) + "\")";
    }
    if (answer != 'S') {
        config_failure = true;
        co_return std::string("unexpected answer to the SSLRequest (byte ") + std::to_string(static_cast<uint8_t>(answer)) + ")";
    }
    tls = std::make_unique<TlsStream>(sock, ctx);
    SSL* ssl = tls->native_handle();
    boost::system::error_code aec;
    asio::ip::make_address(t.host, aec);
    const bool is_ip = !aec;
    // As libpq: SNI with host names, never with addresses.
    if (cfg.backend_tls_sni && !is_ip) SSL_set_tlsext_host_name(ssl, t.host.c_str());
    // require checks nothing, unless a CA is configured: then, as libpq with a
    // root certificate, it verifies the chain like verify-ca.
    const bool verify_chain = mode == M::VerifyCa || mode == M::VerifyFull || !cfg.backend_tls_ca.empty();
    SSL_set_verify(ssl, verify_chain ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nullptr);
    if (mode == M::VerifyFull) {
        X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
        if (is_ip) X509_VERIFY_PARAM_set1_ip_asc(param, t.host.c_str());
        else X509_VERIFY_PARAM_set1_host(param, t.host.c_str(), 0);
    }
    auto h = co_await (tls->async_handshake(asio::ssl::stream_base::client, use_tuple) || deadline.async_wait(use_tuple));
    if (h.index() == 1) co_return "TLS handshake not completed within connect_timeout";
    if (auto [hec] = std::get<0>(h); hec) {
        config_failure = true;
        co_return std::string("TLS handshake failed (backend_tls = \"") + to_string(mode) + "\"): " + tls_failure(*tls, hec);
    }
    co_return "";
}

namespace {
// Per thread: 128 KiB kept for reuse at most. The epoll relay holds a
// buffer only from a read until its bytes are sent, so few are out at once.
constexpr size_t kPoolMax = 8;
struct BufferPool {
    std::vector<uint8_t*> free;
    BufferPool() { free.reserve(kPoolMax); }
    ~BufferPool() {
        for (uint8_t* p : free) delete[] p;
    }
};
BufferPool& buffer_pool() {
    thread_local BufferPool p;
    return p;
}
}  // namespace

void RelayBuffer::ensure() {
    if (p_) return;
    auto& free = buffer_pool().free;
    if (free.empty()) {
        p_ = new uint8_t[kRelayBuffer];
    } else {
        p_ = free.back();
        free.pop_back();
    }
}

void RelayBuffer::release() noexcept {
    if (!p_) return;
    auto& free = buffer_pool().free;
    if (free.size() < kPoolMax) free.push_back(p_);
    else delete[] p_;
    p_ = nullptr;
}

asio::awaitable<IoResult> read_pooled(tcp::socket& sock, TlsStream* tls, RelayBuffer& buf, size_t len, bool& drained,
                                      uint8_t (&idle)[kIdleRead]) {
    if (len == 0 && drained) {
        buf.release();
        IoResult r;
        if (tls) r = co_await tls->async_read_some(asio::buffer(idle), use_tuple);
        else r = co_await sock.async_read_some(asio::buffer(idle), use_tuple);
        auto [ec, n] = r;
        drained = n < kIdleRead;
        if (!ec) {
            buf.ensure();
            std::memcpy(buf.data(), idle, n);
        }
        co_return IoResult{ec, n};
    }
    buf.ensure();
    const auto into = asio::buffer(buf.data() + len, kRelayBuffer - len);
    IoResult r;
    if (tls) r = co_await tls->async_read_some(into, use_tuple);
    else r = co_await sock.async_read_some(into, use_tuple);
    auto [ec, n] = r;
    drained = n < kRelayBuffer - len;
    co_return IoResult{ec, n};
}

size_t take_carried(std::string& carried, RelayBuffer& buf) {
    if (carried.empty()) return 0;
    buf.ensure();
    const size_t len = std::min(carried.size(), kRelayBuffer);
    std::memcpy(buf.data(), carried.data(), len);
    carried.clear();
    carried.shrink_to_fit();
    return len;
}

}  // namespace pgrelay::net
