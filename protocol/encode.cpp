// Message encoders (see encode.hpp).
#include "protocol/encode.hpp"

namespace pgrelay::protocol {

namespace {

void put_u32(std::string& out, uint32_t v) {
    uint8_t b[4];
    write_u32(b, v);
    out.append(reinterpret_cast<const char*>(b), 4);
}

void put_field(std::string& out, char code, std::string_view value) {
    out.push_back(code);
    // A NUL inside a value would end the field early on the client side.
    for (char c : value) out.push_back(c == '\0' ? ' ' : c);
    out.push_back('\0');
}

}  // namespace

void encode_error_response(std::string& out, Severity severity, std::string_view sqlstate,
                           std::string_view message, std::string_view hint) {
    const size_t start = out.size();
    out.push_back(static_cast<char>(BackendType::ErrorResponse));
    put_u32(out, 0);  // patched below
    const std::string_view sev = severity == Severity::Fatal ? "FATAL" : "ERROR";
    put_field(out, 'S', sev);
    put_field(out, 'V', sev);
    put_field(out, 'C', sqlstate);
    put_field(out, 'M', message);
    if (!hint.empty()) put_field(out, 'H', hint);
    out.push_back('\0');
    write_u32(reinterpret_cast<uint8_t*>(out.data() + start + 1), static_cast<uint32_t>(out.size() - start - 1));
}

void encode_cancel_request(std::string& out, CancelKey key) {
    put_u32(out, 16);
    put_u32(out, kCancelRequestCode);
    put_u32(out, static_cast<uint32_t>(key.pid));
    put_u32(out, static_cast<uint32_t>(key.secret));
}

void encode_backend_key_data(std::string& out, CancelKey key) {
    out.push_back(static_cast<char>(BackendType::BackendKeyData));
    put_u32(out, 12);
    put_u32(out, static_cast<uint32_t>(key.pid));
    put_u32(out, static_cast<uint32_t>(key.secret));
}

}  // namespace pgrelay::protocol
