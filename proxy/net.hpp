// Socket and TLS plumbing shared by the client side (client.hpp), the server
// side (server_conn.hpp) and the passthrough relay (session.cpp): socket
// tuning, connects with a deadline, the backend TLS handshake (libpq's
// sslmode), and the pooled relay buffers. Relay-path errors are error_codes
// (as_tuple), never exceptions.
#pragma once

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <tuple>

#include "proxy/config.hpp"
#include "proxy/router.hpp"

namespace pgrelay::net {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using TlsStream = asio::ssl::stream<tcp::socket&>;
using IoResult = std::tuple<boost::system::error_code, size_t>;
inline constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

inline constexpr size_t kRelayBuffer = 16 * 1024;
inline constexpr size_t kIdleRead = 256;

std::string endpoint_string(const tcp::socket& s);

// TCP_NODELAY, and keepalive probes after `keepalive_idle` of silence, so a
// peer that vanished (power loss, partition) is noticed within
// idle + interval * count instead of the kernel's two hours.
void tune_socket(tcp::socket& s, const Config& cfg);

// "TLSv1.3 TLS_AES_256_GCM_SHA384", for the log.
std::string tls_description(TlsStream& s);
// Why a handshake failed: OpenSSL's reason, plus the certificate
// verification result when that is what failed.
std::string tls_failure(TlsStream& s, const boost::system::error_code& ec);

// Resolves (when `t.host` is a name) and connects within `timeout`.
asio::awaitable<bool> connect_with_timeout(tcp::socket& sock, const Target& t, std::chrono::milliseconds timeout,
                                           boost::system::error_code& ec);

// backend_tls (libpq's sslmode): SSLRequest on the fresh connection; on 'S' a
// handshake that verifies what the mode asks for, leaving `tls` set. Returns
// "" when the connection may go on (over TLS, or in plaintext where the mode
// allows it), else why not; `config_failure` says the failure is one of
// configuration or certificates (no point in waiting for it to pass).
asio::awaitable<std::string> start_backend_tls(tcp::socket& sock, std::unique_ptr<TlsStream>& tls,
                                               asio::ssl::context& ctx, const Config& cfg, const Target& t,
                                               bool& config_failure);

// A relay buffer lent by the worker thread's pool. A relay loop holds one only
// while it has bytes to move: waiting for an idle peer it hands it back, so an
// idle session costs no buffer at all (10,000 idle clients are not 320 MB).
class RelayBuffer {
public:
    RelayBuffer() = default;
    RelayBuffer(const RelayBuffer&) = delete;
    RelayBuffer& operator=(const RelayBuffer&) = delete;
    ~RelayBuffer() { release(); }
    uint8_t* data() const noexcept { return p_; }
    explicit operator bool() const noexcept { return p_ != nullptr; }
    void ensure();
    void release() noexcept;

private:
    uint8_t* p_ = nullptr;
};

// Reads as much as `sock` has into buf[len..]. A loop whose last read drained
// the socket and that has nothing pending is idle: it hands its buffer back to
// the pool and waits in a read of at most kIdleRead bytes into `idle`, a small
// array of its own, which costs what a plain read costs (asio tries the read
// first, then waits for epoll). The bytes move to a pooled buffer once they
// arrive. The same holds for TLS: a read shorter than asked for may leave
// records in OpenSSL (it reads ahead), but the next read returns them without
// waiting, so only the size of that read is affected, never its outcome.
asio::awaitable<IoResult> read_pooled(tcp::socket& sock, TlsStream* tls, RelayBuffer& buf, size_t len, bool& drained,
                                      uint8_t (&idle)[kIdleRead]);

// Bytes read before the relay began go to the front of the relay buffer, to
// be scanned before the next read. Returns how many.
size_t take_carried(std::string& carried, RelayBuffer& buf);

}  // namespace pgrelay::net
