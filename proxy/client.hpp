// The client side of a connection: the socket pgrelay accepted, TLS towards
// the client, the startup phase (SSLRequest/GSSENCRequest answers,
// CancelRequest, the StartupMessage and the port's admission checks), and
// pgrelay's own ErrorResponses. Both the passthrough relay (session.cpp) and
// the pooled client (pooled_session.cpp) sit on it.
#pragma once

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <memory>
#include <optional>
#include <string>

#include "protocol/encode.hpp"
#include "protocol/startup.hpp"
#include "proxy/cancel_registry.hpp"
#include "proxy/router.hpp"
#include "proxy/config.hpp"
#include "proxy/metrics.hpp"
#include "proxy/net.hpp"
#include "proxy/tls.hpp"

namespace pgrelay {

class ClientConn {
public:
    // `draining` (may be null): set once pgrelay is shutting down; new
    // sessions are then refused with 57P03, CancelRequests still served.
    ClientConn(net::tcp::socket sock, PortRole role, std::shared_ptr<const Config> cfg,
               std::shared_ptr<const TlsContexts> tls, CancelRegistry& cancels,
               const std::atomic<bool>* draining = nullptr);
    ~ClientConn();
    ClientConn(const ClientConn&) = delete;
    ClientConn& operator=(const ClientConn&) = delete;

    net::tcp::socket& socket() noexcept { return sock_; }
    net::TlsStream* tls() noexcept { return tls_stream_.get(); }
    const std::string& peer() const noexcept { return peer_; }
    PortRole role() const noexcept { return role_; }
    const char* role_name() const noexcept { return to_string(role_); }
    metrics::PortStats& stats() noexcept { return *stats_; }
    const Config& config() const noexcept { return *cfg_; }
    const std::shared_ptr<const TlsContexts>& tls_contexts() const noexcept { return tls_ctx_; }

    // Reads the startup phase. True with the StartupMessage in `packet` (its
    // bytes in `startup_bytes`, anything the client pipelined behind it in
    // `pipelined`); false when the connection is done (cancel handled, error
    // sent, timeout, EOF).
    boost::asio::awaitable<bool> startup(std::string& startup_bytes, protocol::StartupPacket& packet,
                                         std::string& pipelined);

    // The initiating operations themselves: no extra coroutine frame.
    boost::asio::awaitable<net::IoResult> read(boost::asio::mutable_buffer b) {
        if (tls_stream_) return tls_stream_->async_read_some(b, net::use_tuple);
        return sock_.async_read_some(b, net::use_tuple);
    }
    boost::asio::awaitable<net::IoResult> write(boost::asio::const_buffer b) {
        if (tls_stream_) return boost::asio::async_write(*tls_stream_, b, net::use_tuple);
        return boost::asio::async_write(sock_, b, net::use_tuple);
    }
    // Writes within 2 s (a client that does not read must not pin pgrelay);
    // false on error or timeout.
    boost::asio::awaitable<bool> write_bounded(const std::string& bytes);

    // An ErrorResponse of pgrelay's own (FATAL unless told otherwise), counted
    // in pgrelay_errors_total; bounded like write_bounded.
    boost::asio::awaitable<void> send_error(const char* sqlstate, const std::string& message, const std::string& hint = {},
                                            protocol::Severity severity = protocol::Severity::Fatal);

    // The client may be writing as the session ends (a query sent just as the
    // server went away). Closing at once would answer those bytes with a
    // reset, and the client's kernel then drops what it has not read yet --
    // the ErrorResponse that says why. So: half-close, and read and discard
    // until the client closes too, for 1 s at most.
    boost::asio::awaitable<void> linger_close();
    void close() noexcept;

private:
    // The TLS handshake, after an SSLRequest answered 'S' or at once for a
    // direct one (which must have chosen ALPN "postgresql"); false when the
    // connection is done.
    boost::asio::awaitable<bool> tls_handshake(boost::asio::steady_timer& deadline, bool direct);
    // After a startup-phase read: false (the client told, when it timed
    // out, and the end logged) when it timed out or failed.
    boost::asio::awaitable<bool> startup_read_ok(bool timed_out, boost::system::error_code ec, bool nothing_yet);
    boost::asio::awaitable<void> forward_cancel(const protocol::CancelKey& key, bool from_peer);
    boost::asio::awaitable<void> send_cancel_to_peer(const protocol::CancelKey& key, const topology::InstanceInfo& peer);
    // Connects to `t`, sends a CancelRequest and waits (up to `wait_close`)
    // for the far side to close; the failure, or empty. By value: a
    // coroutine's reference parameters may outlive a caller's temporaries.
    boost::asio::awaitable<std::string> deliver_cancel(Target t, std::string request,
                                                       std::chrono::milliseconds wait_close);

    net::tcp::socket sock_;
    std::unique_ptr<net::TlsStream> tls_stream_;  // after sock_: holds a reference to it
    PortRole role_;
    std::shared_ptr<const Config> cfg_;
    std::shared_ptr<const TlsContexts> tls_ctx_;  // as of the connection's start: a reload does not touch it
    CancelRegistry& cancels_;
    const std::atomic<bool>* draining_;
    std::string peer_;
    metrics::PortStats* stats_;
    bool cert_ok_ = false;  // the client presented a certificate client_ca verified
};

}  // namespace pgrelay
