// Encoders for the few messages pgrelay writes itself: ErrorResponse, the
// one-byte answers to SSLRequest/GSSENCRequest, CancelRequest (to a backend) and
// BackendKeyData. They append to a caller-owned byte string.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "protocol/messages.hpp"

namespace pgrelay::protocol {

enum class Severity { Error, Fatal };

// ErrorResponse with S and V (severity), C (SQLSTATE), M (message) and, when not
// empty, H (hint). Field codes: protocol-error-fields.html.
void encode_error_response(std::string& out, Severity severity, std::string_view sqlstate,
                           std::string_view message, std::string_view hint = {});

void encode_cancel_request(std::string& out, CancelKey key);
void encode_backend_key_data(std::string& out, CancelKey key);
inline char ssl_answer(bool accept) noexcept { return accept ? 'S' : 'N'; }

}  // namespace pgrelay::protocol
