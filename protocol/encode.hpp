// Encoders for the few messages pgrelay writes itself: ErrorResponse, the
// one-byte answers to SSLRequest/GSSENCRequest, CancelRequest (to a backend) and
// BackendKeyData. They append to a caller-owned byte string.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/messages.hpp"

namespace pgrelay::protocol {

enum class Severity { Error, Fatal };

// ErrorResponse with S and V (severity), C (SQLSTATE), M (message) and, when not
// empty, H (hint). Field codes: protocol-error-fields.html.
void encode_error_response(std::string& out, Severity severity, std::string_view sqlstate,
                           std::string_view message, std::string_view hint = {});

void encode_cancel_request(std::string& out, CancelKey key);

// NegotiateProtocolVersion ('v'): the newest 3.x version supported, as the
// whole version number (major << 16 | minor: PostgreSQL sends 196608 for 3.0,
// and libpq reads it so, whatever the docs' "newest minor" says), and the
// protocol options (`_pq_.` startup parameters) not recognized.
void encode_negotiate_protocol_version(std::string& out, uint32_t newest_minor,
                                       const std::vector<std::string_view>& unrecognized);
// What a server that speaks protocol 3.0 and knows no protocol option must
// answer to `packet`'s StartupMessage: a NegotiateProtocolVersion when it asks
// for a newer minor (PostgreSQL 18 clients ask for 3.2; PostgreSQL 19's libpq
// "greases" with 3.9999) or sends `_pq_.` options; else nothing.
struct StartupPacket;
std::string negotiate_for(const StartupPacket& packet);
void encode_backend_key_data(std::string& out, CancelKey key);
inline char ssl_answer(bool accept) noexcept { return accept ? 'S' : 'N'; }

}  // namespace pgrelay::protocol
