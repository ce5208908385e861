// Message encoders (see encode.hpp).
#include "protocol/encode.hpp"

#include "protocol/startup.hpp"

namespace pgrelay::protocol {

namespace {

void put_field(std::string& out, char code, std::string_view value) {
    out.push_back(code);
    // A NUL inside a value would end the field early on the client side.
    for (char c : value) out.push_back(c == '\0' ? ' ' : c);
    out.push_back('\0');
}

}  // namespace

void encode_error_response(std::string& out, Severity severity, std::string_view sqlstate,
                           std::string_view message, std::string_view hint) {
    const size_t start = begin_message(out, static_cast<char>(BackendType::ErrorResponse));
    const std::string_view sev = severity == Severity::Fatal ? "FATAL" : "ERROR";
    put_field(out, 'S', sev);
    put_field(out, 'V', sev);
    put_field(out, 'C', sqlstate);
    put_field(out, 'M', message);
    if (!hint.empty()) put_field(out, 'H', hint);
    out.push_back('\0');
    end_message(out, start);
}

void encode_cancel_request(std::string& out, const CancelKey& key, bool from_peer) {
    append_u32(out, static_cast<uint32_t>(12 + key.secret.size()));
    append_u32(out, from_peer ? kPeerCancelRequestCode : kCancelRequestCode);
    append_u32(out, static_cast<uint32_t>(key.pid));
    out.append(key.secret);
}

void encode_backend_key_data(std::string& out, const CancelKey& key) {
    out.push_back(static_cast<char>(BackendType::BackendKeyData));
    append_u32(out, static_cast<uint32_t>(8 + key.secret.size()));
    append_u32(out, static_cast<uint32_t>(key.pid));
    out.append(key.secret);
}

void encode_negotiate_protocol_version(std::string& out, uint32_t newest_minor,
                                       const std::vector<std::string_view>& unrecognized) {
    const size_t start = begin_message(out, static_cast<char>(BackendType::NegotiateProtocolVersion));
    append_u32(out, (3u << 16) | newest_minor);
    append_u32(out, static_cast<uint32_t>(unrecognized.size()));
    for (std::string_view name : unrecognized) {
        out.append(name);
        out.push_back('\0');
    }
    end_message(out, start);
}

Negotiated negotiate_for(const StartupPacket& packet, uint32_t newest) {
    std::vector<std::string_view> options;
    for (const auto& [name, value] : packet.parameters)
        if (name.rfind("_pq_.", 0) == 0) options.push_back(name);
    Negotiated n;
    n.version = std::min(packet.protocol_version, newest);
    if (packet.protocol_version > newest || !options.empty())
        encode_negotiate_protocol_version(n.message, n.version & 0xffff, options);
    return n;
}

}  // namespace pgrelay::protocol
