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

// `from_peer`: pgrelay's peer-to-peer form (kPeerCancelRequestCode).
void encode_cancel_request(std::string& out, const CancelKey& key, bool from_peer = false);

// NegotiateProtocolVersion ('v'): the newest 3.x version supported, as the
// whole version number (major << 16 | minor: PostgreSQL sends 196608 for 3.0,
// and libpq reads it so, whatever the docs' "newest minor" says), and the
// protocol options (`_pq_.` startup parameters) not recognized.
void encode_negotiate_protocol_version(std::string& out, uint32_t newest_minor,
                                       const std::vector<std::string_view>& unrecognized);
// What a server whose newest protocol is `newest` (and that knows no protocol
// option) answers to `packet`'s StartupMessage, as PostgreSQL 18 does: the
// version spoken from then on, min(asked, newest), and a
// NegotiateProtocolVersion when the client asked for more than `newest`
// (PostgreSQL 19's libpq "greases" with 3.9999) or sent `_pq_.` options,
// else no message. Protocol 3.2 differs from 3.0 only in the cancel key's
// length (BackendKeyData and CancelRequest).
struct StartupPacket;
struct Negotiated {
    uint32_t version = kProtocolV3;
    std::string message;  // a NegotiateProtocolVersion to send first, or empty
};
Negotiated negotiate_for(const StartupPacket& packet, uint32_t newest = kProtocolV3_2);
void encode_backend_key_data(std::string& out, const CancelKey& key);
inline char ssl_answer(bool accept) noexcept { return accept ? 'S' : 'N'; }

}  // namespace pgrelay::protocol
