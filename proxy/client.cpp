// The client side (client.hpp).
#include "proxy/client.hpp"

#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "proxy/log.hpp"

namespace pgrelay {

namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;
using net::tcp;
using net::use_tuple;

ClientConn::ClientConn(tcp::socket sock, PortRole role, std::shared_ptr<const Config> cfg,
                       std::shared_ptr<const TlsContexts> tls, CancelRegistry& cancels,
                       const std::atomic<bool>* draining)
    : sock_(std::move(sock)), role_(role), cfg_(std::move(cfg)),
      tls_ctx_(tls ? std::move(tls) : std::make_shared<const TlsContexts>()), cancels_(cancels), draining_(draining),
      peer_(net::endpoint_string(sock_)), stats_(&metrics::Registry::instance().port(role)) {
    stats_->client_open.fetch_add(1, std::memory_order_relaxed);
    stats_->client_total.fetch_add(1, std::memory_order_relaxed);
    net::tune_socket(sock_, *cfg_);
}

ClientConn::~ClientConn() { stats_->client_open.fetch_sub(1, std::memory_order_relaxed); }

asio::awaitable<bool> ClientConn::write_bounded(const std::string& bytes) {
    asio::steady_timer t(sock_.get_executor(), std::chrono::seconds(2));
    auto r = co_await (write(asio::buffer(bytes)) || t.async_wait(use_tuple));
    co_return r.index() == 0 && !std::get<0>(std::get<0>(r));
}

asio::awaitable<void> ClientConn::send_error(const char* sqlstate, const std::string& message, const std::string& hint,
                                             protocol::Severity severity) {
    metrics::Registry::instance().count_error("pgrelay", sqlstate);
    std::string out;
    protocol::encode_error_response(out, severity, sqlstate, message, hint);
    co_await write_bounded(out);
}

asio::awaitable<bool> ClientConn::startup_read_ok(bool timed_out, boost::system::error_code ec,
                                                  bool nothing_yet) {
    if (timed_out) {
        log::warn("[{}] client={} startup not completed within {} ms, closing", role_name(), peer_,
                  cfg_->startup_timeout.count());
        co_await send_error("08P01", std::string("pgrelay ") + role_name() + ": startup packet not received in time");
        co_return false;
    }
    if (!ec) co_return true;
    if (nothing_yet && ec == asio::error::eof)
        log::debug("[{}] client={} closed before sending a startup packet", role_name(), peer_);
    else
        log::info("[{}] client={} connection ended during startup: {}", role_name(), peer_, ec.message());
    co_return false;
}

asio::awaitable<bool> ClientConn::startup(std::string& startup_bytes, protocol::StartupPacket& packet,
                                          std::string& pipelined) {
    const bool tls_offered = tls_ctx_->server && cfg_->tls.client != Config::ClientTls::Disable;
    protocol::StartupOp op({.tls_available = tls_offered});
    asio::steady_timer deadline(sock_.get_executor(), cfg_->startup_timeout);
    std::string buf;
    uint8_t chunk[1024];
    if (tls_offered) {
        // Direct TLS? Peeked, so that the handshake reads the record itself.
        uint8_t first = 0;
        auto r = co_await (sock_.async_receive(asio::buffer(&first, 1), tcp::socket::message_peek, use_tuple) ||
                           deadline.async_wait(use_tuple));
        if (!co_await startup_read_ok(r.index() == 1, r.index() == 0 ? std::get<0>(std::get<0>(r)) : boost::system::error_code(), true))
            co_return false;
        if (protocol::is_direct_tls(first)) {
            if (!co_await tls_handshake(deadline, true)) co_return false;
            op.note_direct_tls();
        }
    }
    for (;;) {
        auto action = op.next({reinterpret_cast<const uint8_t*>(buf.data()), buf.size()});
        using K = protocol::StartupOp::Kind;
        switch (action.kind) {
            case K::ReadMore: {
                auto r = co_await (read(asio::buffer(chunk)) || deadline.async_wait(use_tuple));
                const auto [ec, n] = r.index() == 0 ? std::get<0>(r) : net::IoResult{};
                if (!co_await startup_read_ok(r.index() == 1, ec, buf.empty())) co_return false;
                buf.append(reinterpret_cast<const char*>(chunk), n);
                continue;
            }
            case K::Reply: {
                const char reply = action.reply;
                auto [ec, n] = co_await write(asio::buffer(&reply, 1));
                if (ec) co_return false;
                buf.erase(0, action.consumed);
                continue;
            }
            case K::StartTls: {
                const char reply = action.reply;
                auto [ec, n] = co_await write(asio::buffer(&reply, 1));
                if (ec) co_return false;
                buf.erase(0, action.consumed);  // nothing is left: StartupOp refuses bytes after the SSLRequest
                if (!co_await tls_handshake(deadline, false)) co_return false;
                continue;
            }
            case K::Close:
                log::warn("[{}] client={} protocol violation during startup: {} (SQLSTATE {})", role_name(), peer_,
                          action.message, action.sqlstate);
                co_await send_error(action.sqlstate, std::string("pgrelay ") + role_name() + ": " + action.message);
                co_return false;
            case K::Cancel:
                co_await forward_cancel(action.packet->cancel_key, action.packet->from_peer);
                co_return false;
            case K::Forward: {
                if (!tls_stream_) stats_->plaintext.fetch_add(1, std::memory_order_relaxed);
                const std::string user = log::printable(action.packet->parameter("user"));
                // Refused before any backend hears of it, with PostgreSQL's
                // SQLSTATE for a pg_hba rejection.
                if (cfg_->tls.client == Config::ClientTls::Require && !tls_stream_) {
                    log::warn("[{}] client={} user={} refused: plaintext connection, client_tls = \"require\"",
                              role_name(), peer_, user);
                    co_await send_error("28000", std::string("pgrelay ") + role_name() +
                                                     ": TLS is required (client_tls = \"require\"); connect with sslmode=require or stricter",
                                        "Set sslmode=require (libpq, psycopg), ssl=true (JDBC) or ssl: true (node-postgres).");
                    co_return false;
                }
                // Draining: as PostgreSQL in a smart shutdown (libpq 14+ then
                // tries the next host of its list). The port stays open so
                // that cancels for the sessions still running get through.
                if (draining_ && draining_->load(std::memory_order_relaxed)) {
                    log::info("[{}] client={} user={} refused: pgrelay is shutting down", role_name(), peer_, user);
                    co_await send_error("57P03", std::string("pgrelay ") + role_name() + ": the proxy is shutting down",
                                        "Connect through another pgrelay instance.");
                    co_return false;
                }
                if (!cfg_->tls.client_ca.empty() && !cert_ok_) {
                    log::warn("[{}] client={} user={} refused: no client certificate", role_name(), peer_, user);
                    co_await send_error("28000", std::string("pgrelay ") + role_name() +
                                                     ": connection requires a valid client certificate",
                                        "Connect with sslcert and sslkey signed by the CA in pgrelay's [tls] client_ca.");
                    co_return false;
                }
                // Checked once the startup packet is read, so the client
                // (whatever its SSL/GSS negotiation) gets a proper
                // ErrorResponse, as from PostgreSQL.
                if (const uint32_t max = cfg_->max_client_connections;
                    max > 0 && stats_->client_open.load(std::memory_order_relaxed) > static_cast<int64_t>(max)) {
                    log::warn("[{}] client={} refused: max_client_connections ({}) reached", role_name(), peer_, max);
                    co_await send_error("53300", std::string("pgrelay ") + role_name() +
                                                     ": too many connections (max_client_connections = " + std::to_string(max) + ")",
                                        "Retry later, or raise max_client_connections.");
                    co_return false;
                }
                packet = *action.packet;
                startup_bytes.assign(buf, 0, action.consumed);
                // A client may pipeline messages behind the startup packet: they
                // start the relay so its framing sees them.
                pipelined.assign(buf, action.consumed);
                co_return true;
            }
        }
    }
}

asio::awaitable<bool> ClientConn::tls_handshake(asio::steady_timer& deadline, bool direct) {
    const char* how = direct ? "direct TLS" : "TLS";
    tls_stream_ = std::make_unique<net::TlsStream>(sock_, *tls_ctx_->server);
    auto r = co_await (tls_stream_->async_handshake(asio::ssl::stream_base::server, use_tuple) ||
                       deadline.async_wait(use_tuple));
    if (r.index() == 1) {
        log::warn("[{}] client={} {} handshake not completed within startup_timeout ({} ms), closing", role_name(), peer_,
                  how, cfg_->startup_timeout.count());
        stats_->tls_failed.fetch_add(1, std::memory_order_relaxed);
        co_return false;
    }
    if (auto [hec] = std::get<0>(r); hec) {
        // No TLS session, so no ErrorResponse: OpenSSL already sent its alert
        // (no_application_protocol for an ALPN list without "postgresql").
        log::warn("[{}] client={} {} handshake failed: {}", role_name(), peer_, how, net::tls_failure(*tls_stream_, hec));
        stats_->tls_failed.fetch_add(1, std::memory_order_relaxed);
        co_return false;
    }
    SSL* ssl = tls_stream_->native_handle();
    const unsigned char* alpn = nullptr;
    unsigned alpn_len = 0;
    SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
    if (direct && std::string_view(reinterpret_cast<const char*>(alpn), alpn ? alpn_len : 0) != protocol::kAlpnPostgresql) {
        // PostgreSQL 17 refuses it too: without ALPN, a direct TLS
        // connection could be another protocol's client (cross-protocol attacks).
        log::warn("[{}] client={} refused: direct TLS handshake without ALPN \"postgresql\"", role_name(), peer_);
        stats_->tls_failed.fetch_add(1, std::memory_order_relaxed);
        co_await send_error("08P01", std::string("pgrelay ") + role_name() +
                                         ": direct TLS connection without ALPN protocol negotiation (\"postgresql\")");
        co_return false;
    }
    stats_->tls_ok.fetch_add(1, std::memory_order_relaxed);
    if (direct) stats_->tls_direct.fetch_add(1, std::memory_order_relaxed);
    cert_ok_ = SSL_get0_peer_certificate(ssl) && SSL_get_verify_result(ssl) == X509_V_OK;
    log::debug("[{}] client={} {} established: {}{}", role_name(), peer_, how, net::tls_description(*tls_stream_),
               cert_ok_ ? " (client certificate verified)" : "");
    co_return true;
}

asio::awaitable<void> ClientConn::forward_cancel(const protocol::CancelKey& key, bool from_peer) {
    // Another instance's key (a name with several instances behind it sent
    // the cancel here): on to that instance, once, marked as from a peer. A
    // request from a peer is only ever looked up here, whatever its tag, so
    // it never crosses more than one instance (not even when a peer address
    // points back here, at a VIP, or at the wrong instance).
    if (const uint16_t tag = CancelRegistry::tag_of(key); !from_peer && tag != cancels_.tag()) {
        std::vector<topology::InstanceInfo> to;
        if (cancels_.peers()) to = cancels_.peers()->peers_for_tag(tag);
        if (to.empty()) {
            metrics::Registry::instance().cancel_unknown_key.fetch_add(1, std::memory_order_relaxed);
            log::info("[{}] client={} cancel request with unknown key ignored (no live instance has its tag {})",
                      role_name(), peer_, tag);
            co_return;
        }
        for (const auto& p : to) co_await send_cancel_to_peer(key, p);
        co_return;
    }
    auto target = cancels_.find(key);
    if (!target) {
        // PostgreSQL ignores unknown keys silently too: nothing to tell an
        // attacker. A pooled client holding no server has no target either.
        metrics::Registry::instance().cancel_unknown_key.fetch_add(1, std::memory_order_relaxed);
        log::info("[{}] client={} cancel request with unknown key ignored", role_name(), peer_);
        co_return;
    }
    const Target t{target->member, target->host, target->port};
    std::string out;
    protocol::encode_cancel_request(out, target->backend_key);
    // The backend closes the connection once it has read the request.
    if (const std::string err = co_await deliver_cancel(t, out, cfg_->connect_timeout); !err.empty()) {
        metrics::Registry::instance().cancel_failed.fetch_add(1, std::memory_order_relaxed);
        log::warn("[{}] client={} cancel: backend {} ({}): {}", role_name(), peer_, t.member, t.address(), err);
        co_return;
    }
    metrics::Registry::instance().cancel_forwarded.fetch_add(1, std::memory_order_relaxed);
    log::info("[{}] client={} cancel forwarded to {} ({})", role_name(), peer_, t.member, t.address());
}

asio::awaitable<void> ClientConn::send_cancel_to_peer(const protocol::CancelKey& key, const topology::InstanceInfo& p) {
    auto& reg = metrics::Registry::instance();
    const auto hp = topology::parse_host_port(p.peer_address);  // checked when the entry was read
    std::string err = "bad address";
    if (hp) {
        std::string out;
        protocol::encode_cancel_request(out, key, true);
        // The peer closes once its backend has read the request: twice the
        // time, as it connects to that backend in between.
        // A named Target: GCC 12 destroys a braced temporary in a co_await
        // expression twice.
        const Target to{p.id, hp->host, hp->port};
        err = co_await deliver_cancel(to, out, cfg_->connect_timeout * 2);
    }
    if (!err.empty()) {
        reg.cancel_peer_unreachable.fetch_add(1, std::memory_order_relaxed);
        log::warn("[{}] client={} cancel: instance {} ({}): {}", role_name(), peer_, log::printable(p.id),
                  p.peer_address, err);
        co_return;
    }
    reg.cancel_to_peer.fetch_add(1, std::memory_order_relaxed);
    log::info("[{}] client={} cancel sent on to instance {} ({})", role_name(), peer_, log::printable(p.id),
              p.peer_address);
}

asio::awaitable<std::string> ClientConn::deliver_cancel(Target t, std::string request,
                                                        std::chrono::milliseconds wait_close) {
    tcp::socket sock(sock_.get_executor());
    boost::system::error_code ec;
    if (!co_await net::connect_with_timeout(sock, t, cfg_->connect_timeout, ec))
        co_return "cannot connect: " + ec.message();
    if (auto [wec, wn] = co_await asio::async_write(sock, asio::buffer(request), use_tuple); wec)
        co_return "sending failed: " + wec.message();
    // Waiting for the far side to close keeps the cancel ordered before the
    // client's next query.
    asio::steady_timer t2(sock.get_executor(), wait_close);
    uint8_t dummy[16];
    co_await (sock.async_read_some(asio::buffer(dummy), use_tuple) || t2.async_wait(use_tuple));
    co_return std::string();
}

asio::awaitable<void> ClientConn::linger_close() {
    boost::system::error_code ec;
    sock_.shutdown(tcp::socket::shutdown_send, ec);
    if (ec) co_return;
    asio::steady_timer deadline(sock_.get_executor(), std::chrono::seconds(1));
    uint8_t sink[2048];
    for (;;) {
        auto r = co_await (sock_.async_read_some(asio::buffer(sink), use_tuple) || deadline.async_wait(use_tuple));
        if (r.index() != 0 || std::get<0>(std::get<0>(r))) co_return;  // deadline, EOF or error
    }
}

void ClientConn::close() noexcept {
    boost::system::error_code ec;
    sock_.shutdown(tcp::socket::shutdown_both, ec);
    sock_.close(ec);
}

}  // namespace pgrelay
