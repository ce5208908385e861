// Message encoders (see encode.hpp).
#include "protocol/encode.hpp"

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

void encode_cancel_request(std::string& out, CancelKey key) {
    append_u32(out, 16);
    append_u32(out, kCancelRequestCode);
    append_u32(out, static_cast<uint32_t>(key.pid));
    append_u32(out, static_cast<uint32_t>(key.secret));
}

void encode_backend_key_data(std::string& out, CancelKey key) {
    out.push_back(static_cast<char>(BackendType::BackendKeyData));
    append_u32(out, 12);
    append_u32(out, static_cast<uint32_t>(key.pid));
    append_u32(out, static_cast<uint32_t>(key.secret));
}

}  // namespace pgrelay::protocol
