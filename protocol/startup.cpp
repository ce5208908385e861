// Startup-phase parsing and the StartupOp state machine (see startup.hpp).
#include "protocol/startup.hpp"

#include <cstring>
#include <string>

namespace pgrelay::protocol {

std::string_view to_string(StartupKind k) noexcept {
    switch (k) {
        case StartupKind::StartupMessage: return "StartupMessage";
        case StartupKind::SSLRequest: return "SSLRequest";
        case StartupKind::GSSENCRequest: return "GSSENCRequest";
        case StartupKind::CancelRequest: return "CancelRequest";
    }
    return "?";
}

std::string_view StartupPacket::parameter(std::string_view name) const noexcept {
    // The last occurrence wins, as in postmaster.c (each one overwrites the
    // previous): pgrelay must see the same user and database as the backend.
    for (auto it = parameters.rbegin(); it != parameters.rend(); ++it)
        if (it->first == name) return it->second;
    return {};
}

namespace {

StartupParse fail(const char* sqlstate, std::string message) {
    StartupParse r;
    r.status = ParseStatus::Error;
    r.sqlstate = sqlstate;
    r.message = std::move(message);
    return r;
}

constexpr const char* kProtocolViolation = "08P01";

// Reads the NUL-terminated string starting at `pos`; false if no NUL before end.
bool read_cstring(std::span<const uint8_t> body, size_t& pos, std::string& out) {
    const void* nul = std::memchr(body.data() + pos, 0, body.size() - pos);
    if (!nul) return false;
    size_t end = static_cast<const uint8_t*>(nul) - body.data();
    out.assign(reinterpret_cast<const char*>(body.data() + pos), end - pos);
    pos = end + 1;
    return true;
}

}  // namespace

StartupParse parse_startup(std::span<const uint8_t> in) {
    if (in.size() < 4) return {};
    const uint32_t len = read_u32(in.data());
    if (len < kMinStartupPacketLength || len > kMaxStartupPacketLength)
        return fail(kProtocolViolation,
                    "invalid length of startup packet (" + std::to_string(len) +
                        " bytes; expected 8 to 10000)");
    if (in.size() < len) return {};

    StartupParse r;
    r.status = ParseStatus::Ok;
    r.packet.length = len;
    const uint32_t code = read_u32(in.data() + 4);
    switch (code) {
        case kSSLRequestCode:
        case kGSSENCRequestCode:
            if (len != 8) return fail(kProtocolViolation, "invalid length of SSLRequest/GSSENCRequest packet");
            r.packet.kind = code == kSSLRequestCode ? StartupKind::SSLRequest : StartupKind::GSSENCRequest;
            return r;
        case kCancelRequestCode:
        case kPeerCancelRequestCode:
            // Protocol 3.0 sends 16 bytes; 3.2 a secret of up to 256 bytes.
            if (len < 12 + kMinCancelSecret || len > 12 + kMaxCancelSecret)
                return fail(kProtocolViolation, "invalid length of CancelRequest packet");
            r.packet.kind = StartupKind::CancelRequest;
            r.packet.from_peer = code == kPeerCancelRequestCode;
            r.packet.cancel_key.pid = static_cast<int32_t>(read_u32(in.data() + 8));
            r.packet.cancel_key.secret.assign(reinterpret_cast<const char*>(in.data() + 12), len - 12);
            return r;
        default: break;
    }
    if ((code >> 16) != 3)
        return fail(kProtocolViolation, "unsupported frontend protocol " + std::to_string(code >> 16) + "." +
                                            std::to_string(code & 0xffff) +
                                            ": pgrelay supports protocol 3.x only");
    r.packet.kind = StartupKind::StartupMessage;
    r.packet.protocol_version = code;

    // Parameters: name NUL value NUL ... NUL. The final NUL must be the last byte.
    std::span<const uint8_t> body = in.subspan(8, len - 8);
    size_t pos = 0;
    std::string name, value;
    for (;;) {
        if (pos >= body.size())
            return fail(kProtocolViolation, "invalid startup packet layout: expected terminator as last byte");
        if (body[pos] == 0) {
            if (pos + 1 != body.size())
                return fail(kProtocolViolation, "invalid startup packet layout: expected terminator as last byte");
            break;
        }
        if (!read_cstring(body, pos, name) || !read_cstring(body, pos, value))
            return fail(kProtocolViolation, "invalid startup packet layout: unterminated parameter");
        r.packet.parameters.emplace_back(std::move(name), std::move(value));
    }
    if (r.packet.parameter("user").empty())
        return fail("28000", "no PostgreSQL user name specified in startup packet");
    return r;
}

StartupOp::Action StartupOp::next(std::span<const uint8_t> buffered) {
    Action a;
    StartupParse p = parse_startup(buffered);
    if (p.status == ParseStatus::NeedMore) return a;
    if (p.status == ParseStatus::Error) {
        a.kind = Kind::Close;
        a.sqlstate = p.sqlstate;
        a.message = std::move(p.message);
        return a;
    }
    packet_ = std::move(p.packet);
    a.consumed = packet_.length;
    a.packet = &packet_;
    switch (packet_.kind) {
        case StartupKind::SSLRequest:
            // postmaster.c allows one SSL and one GSS negotiation per connection.
            if (ssl_done_) break;
            ssl_done_ = true;
            if (!opts_.tls_available) {
                a.kind = Kind::Reply;
                a.reply = 'N';
                return a;
            }
            // Bytes after the SSLRequest would be plaintext injected before the
            // handshake (CVE-2021-23214): refuse them.
            if (buffered.size() > packet_.length) {
                a.kind = Kind::Close;
                a.sqlstate = kProtocolViolation;
                a.message = "received unencrypted data after SSL request";
                return a;
            }
            a.kind = Kind::StartTls;
            a.reply = 'S';
            tls_started_ = true;
            return a;
        case StartupKind::GSSENCRequest:
            // Inside TLS, postmaster.c refuses a GSSENCRequest like a repeated one.
            if (gss_done_ || tls_started_) break;
            gss_done_ = true;
            a.kind = Kind::Reply;
            a.reply = 'N';  // pgrelay does not do GSSAPI encryption; clients go on in plaintext or TLS
            return a;
        case StartupKind::CancelRequest: a.kind = Kind::Cancel; return a;
        case StartupKind::StartupMessage: a.kind = Kind::Forward; return a;
    }
    a.kind = Kind::Close;
    a.sqlstate = kProtocolViolation;
    a.message = tls_started_ && packet_.kind == StartupKind::GSSENCRequest
                    ? std::string("GSSENCRequest after the TLS handshake")
                    : std::string("duplicate ") + std::string(to_string(packet_.kind)) + " during startup";
    a.consumed = 0;
    return a;
}

}  // namespace pgrelay::protocol
