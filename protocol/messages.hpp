// PostgreSQL frontend/backend protocol v3 constants, spelled as in the protocol docs
// (https://www.postgresql.org/docs/15/protocol-message-formats.html), plus the
// small value types the codec hands out. Pure data: no I/O, no allocation.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace pgrelay::protocol {

// Request codes sent in place of a protocol version in the startup phase
// (src/include/libpq/pqcomm.h).
inline constexpr uint32_t kProtocolV3 = 3u << 16;          // 196608
inline constexpr uint32_t kCancelRequestCode = 80877102;   // 1234 << 16 | 5678
// pgrelay's own: a CancelRequest one pgrelay instance sends on to the peer
// whose key it is. Laid out as a CancelRequest; the peer looks the key up
// itself and never sends it further, so no forwarding loop can form.
inline constexpr uint32_t kPeerCancelRequestCode = 80882345;  // 1234 << 16 | 10921
inline constexpr uint32_t kSSLRequestCode = 80877103;      // 1234 << 16 | 5679
inline constexpr uint32_t kGSSENCRequestCode = 80877104;   // 1234 << 16 | 5680

// postmaster.c: MAX_STARTUP_PACKET_LENGTH; anything shorter than a length plus a
// code is malformed.
inline constexpr uint32_t kMaxStartupPacketLength = 10000;
inline constexpr uint32_t kMinStartupPacketLength = 8;

// Backend message types (server -> client).
enum class BackendType : char {
    Authentication = 'R',
    BackendKeyData = 'K',
    BindComplete = '2',
    CloseComplete = '3',
    CommandComplete = 'C',
    CopyData = 'd',
    CopyDone = 'c',
    CopyInResponse = 'G',
    CopyOutResponse = 'H',
    CopyBothResponse = 'W',
    DataRow = 'D',
    EmptyQueryResponse = 'I',
    ErrorResponse = 'E',
    FunctionCallResponse = 'V',
    NegotiateProtocolVersion = 'v',
    NoData = 'n',
    NoticeResponse = 'N',
    NotificationResponse = 'A',
    ParameterDescription = 't',
    ParameterStatus = 'S',
    ParseComplete = '1',
    PortalSuspended = 's',
    ReadyForQuery = 'Z',
    RowDescription = 'T',
};

// Frontend message types (client -> server) after the startup packet.
// 'p' is shared by PasswordMessage, SASLInitialResponse, SASLResponse and
// GSSResponse; which one is meant depends on the preceding Authentication request.
enum class FrontendType : char {
    Bind = 'B',
    Close = 'C',
    CopyData = 'd',
    CopyDone = 'c',
    CopyFail = 'f',
    Describe = 'D',
    Execute = 'E',
    Flush = 'H',
    FunctionCall = 'F',
    Parse = 'P',
    PasswordMessage = 'p',
    Query = 'Q',
    Sync = 'S',
    Terminate = 'X',
};

std::string_view to_string(BackendType t) noexcept;
std::string_view to_string(FrontendType t) noexcept;

// ReadyForQuery's transaction status byte.
enum class TxStatus : char { Idle = 'I', InTransaction = 'T', Failed = 'E' };

// The (process id, secret key) pair of BackendKeyData and CancelRequest.
// Protocol 3.0 has a 4-byte secret; 3.2 (PostgreSQL 18) one of 4 to 256
// bytes, the server choosing (PostgreSQL sends 32).
inline constexpr size_t kMinCancelSecret = 4;
inline constexpr size_t kMaxCancelSecret = 256;  // pqcomm.h: MAX_CANCEL_KEY_LENGTH
inline constexpr uint32_t kProtocolV3_2 = (3u << 16) | 2;
struct CancelKey {
    int32_t pid = 0;
    std::string secret;  // the raw bytes, kMinCancelSecret..kMaxCancelSecret of them
    friend bool operator==(const CancelKey&, const CancelKey&) = default;
};

// Big-endian helpers: the wire format is network byte order throughout.
inline uint32_t read_u32(const uint8_t* p) noexcept {
    return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}
inline void write_u32(uint8_t* p, uint32_t v) noexcept {
    p[0] = uint8_t(v >> 24);
    p[1] = uint8_t(v >> 16);
    p[2] = uint8_t(v >> 8);
    p[3] = uint8_t(v);
}

// Appends a big-endian int16/int32 to a message being built.
inline void append_u16(std::string& out, uint16_t v) {
    out.push_back(static_cast<char>(v >> 8));
    out.push_back(static_cast<char>(v & 0xff));
}
inline void append_u32(std::string& out, uint32_t v) {
    uint8_t b[4];
    write_u32(b, v);
    out.append(reinterpret_cast<const char*>(b), 4);
}

// Appends a message: its type, its length (patched once `body(out)` has
// appended the body), the body.
inline size_t begin_message(std::string& out, char type) {
    const size_t start = out.size();
    out.push_back(type);
    append_u32(out, 0);
    return start;
}
inline void end_message(std::string& out, size_t start) noexcept {
    write_u32(reinterpret_cast<uint8_t*>(out.data() + start + 1), static_cast<uint32_t>(out.size() - start - 1));
}
template <class Body>
void append_message(std::string& out, char type, Body&& body) {
    const size_t start = begin_message(out, type);
    body(out);
    end_message(out, start);
}

}  // namespace pgrelay::protocol
