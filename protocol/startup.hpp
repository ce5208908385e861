// Startup phase of the PostgreSQL protocol, which has no type byte: the client's
// first packet is a StartupMessage, SSLRequest, GSSENCRequest or CancelRequest,
// told apart by the 32-bit code after the length. Sans-I/O: bytes in, a packet
// (or "need more", or an error) out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "protocol/messages.hpp"

namespace pgrelay::protocol {

enum class StartupKind { StartupMessage, SSLRequest, GSSENCRequest, CancelRequest };
std::string_view to_string(StartupKind k) noexcept;

struct StartupPacket {
    StartupKind kind = StartupKind::StartupMessage;
    uint32_t length = 0;            // whole packet, including the length word
    uint32_t protocol_version = 0;  // StartupMessage only (major << 16 | minor)
    std::vector<std::pair<std::string, std::string>> parameters;  // StartupMessage only
    CancelKey cancel_key;                                          // CancelRequest only
    bool from_peer = false;  // CancelRequest sent on by another pgrelay instance (kPeerCancelRequestCode)

    // Value of a StartupMessage parameter, or empty when absent.
    std::string_view parameter(std::string_view name) const noexcept;
};

enum class ParseStatus { NeedMore, Ok, Error };

// Outcome of a parse: on Error, `sqlstate` and `message` are what to send the
// client in an ErrorResponse before closing.
struct StartupParse {
    ParseStatus status = ParseStatus::NeedMore;
    StartupPacket packet;
    const char* sqlstate = "";
    std::string message;
};

// Parses the packet at the start of `in`. Never consumes a partial packet: on
// NeedMore nothing is used, on Ok exactly packet.length bytes are.
// Rules follow postmaster.c's ProcessStartupPacket: 8 <= length <= 10000,
// SSL/GSSENC requests exactly 8 bytes, CancelRequest 16 (protocol 3.0) to 268
// (3.2's longest secret), protocol major 3
// (any minor: the backend answers a newer minor with NegotiateProtocolVersion),
// parameters as NUL-terminated name/value pairs closed by a lone NUL, `user`
// required (28000, as PostgreSQL).
StartupParse parse_startup(std::span<const uint8_t> in);

// The startup phase as a resumable operation.
//
// Flow: append client bytes to a buffer and call next(buffer). It returns what to
// do now; `consumed` bytes at the front of the buffer are done with and must be
// dropped before the next call. Repeat until Forward, Cancel or Close.
//   ReadMore  -> read more client bytes (keep the unconsumed ones).
//   Reply     -> write the single byte `reply` ('N' or 'S') to the client.
//   StartTls  -> write 'S', then run a TLS handshake before reading on.
//   Forward   -> a StartupMessage: route it and send `packet`'s bytes on.
//   Cancel    -> a CancelRequest with `packet.cancel_key`; answer nothing, close.
//   Close     -> send ErrorResponse(`sqlstate`, `message`) and close.
// PostgreSQL 17's direct TLS (sslnegotiation=direct): the client starts a
// TLS handshake at once instead of an SSLRequest. A connection's first byte
// tells: 0x16, a TLS handshake record, where a length word would start (a
// startup packet that long would be invalid anyway).
inline constexpr uint8_t kTlsHandshakeRecord = 0x16;
inline constexpr bool is_direct_tls(uint8_t first_byte) noexcept { return first_byte == kTlsHandshakeRecord; }
// The ALPN protocol a direct TLS client must offer (RFC 7301; PostgreSQL 17).
inline constexpr std::string_view kAlpnPostgresql = "postgresql";

class StartupOp {
public:
    struct Options {
        bool tls_available = false;  // answer SSLRequest with 'S'
    };
    enum class Kind { ReadMore, Reply, StartTls, Forward, Cancel, Close };
    struct Action {
        Kind kind = Kind::ReadMore;
        size_t consumed = 0;
        char reply = 0;
        const StartupPacket* packet = nullptr;  // valid until the next call
        const char* sqlstate = "";
        std::string message;
    };

    explicit StartupOp(Options opts) : opts_(opts) {}
    Action next(std::span<const uint8_t> buffered);

    // The connection began with a direct TLS handshake, now done: an
    // SSLRequest inside it is a duplicate, as in PostgreSQL 17.
    void note_direct_tls() noexcept { ssl_done_ = tls_started_ = true; }
    bool ssl_requested() const noexcept { return ssl_done_; }
    bool gssenc_requested() const noexcept { return gss_done_; }

private:
    Options opts_;
    bool ssl_done_ = false;
    bool gss_done_ = false;
    bool tls_started_ = false;  // an SSLRequest was answered 'S'
    StartupPacket packet_;
};

}  // namespace pgrelay::protocol
