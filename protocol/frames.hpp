// Regular-phase framing: every message after the startup packet is a type byte
// plus an int32 length that counts itself. FrameScanner walks a relay buffer and
// reports frame headers without copying, so the proxy can forward bytes as they
// come while still seeing every message boundary. Frames the proxy must inspect
// or rewrite ("watched" types, e.g. BackendKeyData) are only reported whole.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "protocol/messages.hpp"

namespace pgrelay::protocol {

struct Frame {
    char type = 0;
    uint32_t length = 0;    // as on the wire: body + 4
    size_t offset = 0;      // of the type byte in the scanned buffer
    bool complete = false;  // whole frame inside the buffer (always, for watched types within max_watched_length)

    size_t wire_size() const noexcept { return size_t(length) + 1; }
    // The body (after the length word); only meaningful when complete.
    std::span<uint8_t> body(std::span<uint8_t> buffer) const noexcept {
        return buffer.subspan(offset + 5, length - 4);
    }
};

// Flow: scanner.next(buf, pos, frame) repeatedly; it advances `pos` past every
// byte that belongs to a frame whose header it has seen.
//   Frame    -> a frame header at frame.offset; watched frames are complete.
//   NeedMore -> bytes from `pos` on are an incomplete header or an incomplete
//               watched frame: keep them, read more, scan again from there.
//   Error    -> length word < 4 or above the maximum: a protocol violation.
// Bytes [0, pos) may be forwarded at any time. The scanner remembers how much of
// a streamed (unwatched) frame's body is still to come across calls.
class FrameScanner {
public:
    enum class Status { NeedMore, Frame, Error };

    // `max_frame_length`: largest length word accepted. `max_watched_length`:
    // largest watched frame held back whole; bigger ones are streamed
    // (complete == false), so the relay buffer must hold at least that + 1.
    explicit FrameScanner(uint32_t max_frame_length, uint32_t max_watched_length = 8192) noexcept
        : max_frame_(max_frame_length), max_watched_(max_watched_length) {}

    void watch(char type) noexcept {
        const auto t = static_cast<uint8_t>(type);
        watched_[t >> 6] |= uint64_t{1} << (t & 63);
    }
    bool watched(char type) const noexcept {
        const auto t = static_cast<uint8_t>(type);
        return (watched_[t >> 6] >> (t & 63)) & 1;
    }

    Status next(std::span<const uint8_t> buf, size_t& pos, Frame& out) noexcept;

    // True when no frame body is pending: the next byte starts a new frame.
    bool at_boundary() const noexcept { return remaining_ == 0; }
    uint32_t bad_length() const noexcept { return bad_length_; }
    char bad_type() const noexcept { return bad_type_; }

private:
    uint32_t max_frame_;
    uint32_t max_watched_;
    uint64_t remaining_ = 0;  // body bytes of the current streamed frame not yet seen
    uint32_t bad_length_ = 0;
    char bad_type_ = 0;
    std::array<uint64_t, 4> watched_{};  // a bit per type byte: scanners live in every session
};

// Decoders for the backend messages pgrelay tracks. Each takes a frame body.
// BackendKeyData: a pid and a secret of 4 (protocol 3.0) to 256 bytes (3.2).
std::optional<CancelKey> decode_backend_key_data(std::span<const uint8_t> body);
std::optional<TxStatus> decode_ready_for_query(std::span<const uint8_t> body) noexcept;

struct ErrorFields {
    std::string_view severity;  // 'V' (non-localized) when present, else 'S'
    std::string_view sqlstate;  // 'C'
    std::string_view message;   // 'M'
};
// ErrorResponse and NoticeResponse share this layout. Returns nullopt when the
// field list is not NUL-terminated as the docs require.
std::optional<ErrorFields> decode_error_fields(std::span<const uint8_t> body) noexcept;

struct ParameterStatus {
    std::string_view name;
    std::string_view value;
};
std::optional<ParameterStatus> decode_parameter_status(std::span<const uint8_t> body) noexcept;

// In-place rewrite of a BackendKeyData body (pgrelay hands out its own keys);
// false, and nothing written, unless `key` has the body's secret length.
bool rewrite_backend_key_data(std::span<uint8_t> body, const CancelKey& key) noexcept;

// AuthenticationSASL (R, code 10) lists mechanisms as NUL-terminated names
// closed by an empty one. Returns the whole message (type byte included)
// without `mechanism`, or nullopt when `body` is not AuthenticationSASL or
// does not list it. A proxy that ends TLS must drop SCRAM-SHA-256-PLUS: the
// client's TLS channel is not the server's, so channel binding cannot verify.
std::optional<std::string> sasl_without_mechanism(std::span<const uint8_t> body, std::string_view mechanism);

}  // namespace pgrelay::protocol
