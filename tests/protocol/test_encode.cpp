// Encoders: exact bytes of ErrorResponse, CancelRequest and BackendKeyData, and
// round trips back through FrameScanner, decode_error_fields and parse_startup.
#include <catch2/catch.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "protocol/encode.hpp"
#include "protocol/frames.hpp"
#include "protocol/messages.hpp"
#include "protocol/startup.hpp"

using namespace pgrelay::protocol;
using namespace std::string_literals;

namespace {

std::span<const uint8_t> bytes(const std::string& s) {
    return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string be32(uint32_t v) {
    return std::string{char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
}

uint32_t length_word(const std::string& s, size_t at) {
    return read_u32(reinterpret_cast<const uint8_t*>(s.data() + at));
}

// Scans `wire` as a single frame of a watched type and returns its body.
std::string scan_one(const std::string& wire, char type) {
    FrameScanner sc(1 << 20);
    sc.watch(type);
    size_t pos = 0;
    Frame f;
    REQUIRE(sc.next(bytes(wire), pos, f) == FrameScanner::Status::Frame);
    REQUIRE(f.type == type);
    REQUIRE(f.complete);
    REQUIRE(f.offset == 0);
    REQUIRE(pos == wire.size());
    REQUIRE(f.wire_size() == wire.size());
    return wire.substr(5, f.length - 4);
}

}  // namespace

TEST_CASE("encode_error_response writes the documented layout", "[protocol][encode]") {
    std::string out;
    encode_error_response(out, Severity::Fatal, "08P01", "bad startup");
    const std::string body = "SFATAL\0VFATAL\0C08P01\0Mbad startup\0\0"s;
    const std::string expected = "E"s + be32(uint32_t(body.size() + 4)) + body;
    CHECK(out == expected);
    CHECK(length_word(out, 1) == out.size() - 1);
}

TEST_CASE("encode_error_response adds H only when a hint is given", "[protocol][encode]") {
    std::string with_hint;
    encode_error_response(with_hint, Severity::Error, "57P03", "the database system is starting up",
                          "retry in a moment");
    const std::string body =
        "SERROR\0VERROR\0C57P03\0Mthe database system is starting up\0Hretry in a moment\0\0"s;
    CHECK(with_hint == "E"s + be32(uint32_t(body.size() + 4)) + body);

    std::string without;
    encode_error_response(without, Severity::Error, "57P03", "the database system is starting up", "");
    CHECK(without.find("\0H"s) == std::string::npos);
    CHECK(without.size() == with_hint.size() - (1 + std::string_view("retry in a moment").size() + 1));
    CHECK(length_word(without, 1) == without.size() - 1);
}

TEST_CASE("encode_error_response appends after existing bytes", "[protocol][encode]") {
    std::string out = "N\x00\x00\x00\x05I"s;  // something already queued
    const std::string before = out;
    encode_error_response(out, Severity::Fatal, "28000", "no user");
    REQUIRE(out.size() > before.size());
    CHECK(out.compare(0, before.size(), before) == 0);
    CHECK(out[before.size()] == 'E');
    // The length word counts only the new message.
    CHECK(length_word(out, before.size() + 1) == out.size() - before.size() - 1);

    std::string fresh;
    encode_error_response(fresh, Severity::Fatal, "28000", "no user");
    CHECK(out.substr(before.size()) == fresh);
}

TEST_CASE("encode_error_response decodes back", "[protocol][encode]") {
    struct Case {
        Severity sev;
        const char* sev_text;
        std::string sqlstate, message, hint;
    };
    const Case cases[] = {
        {Severity::Fatal, "FATAL", "08P01", "invalid length of startup packet", ""},
        {Severity::Error, "ERROR", "53300", "too many clients", "raise max_client_conn"},
        {Severity::Fatal, "FATAL", "28000", "", ""},
        {Severity::Error, "ERROR", "XX000", std::string(5000, 'z'), std::string(300, 'h')},
    };
    for (const auto& c : cases) {
        CAPTURE(c.sqlstate, c.hint.size());
        std::string out;
        encode_error_response(out, c.sev, c.sqlstate, c.message, c.hint);
        const std::string body = scan_one(out, 'E');
        const auto f = decode_error_fields(bytes(body));
        REQUIRE(f.has_value());
        CHECK(f->severity == c.sev_text);
        CHECK(f->sqlstate == c.sqlstate);
        CHECK(f->message == c.message);
    }
}

TEST_CASE("encode_error_response keeps the frame intact when a value holds a NUL", "[protocol][encode]") {
    // An embedded NUL would end the field early on the client and desynchronise
    // the field list; the encoder must not let it through.
    std::string out;
    encode_error_response(out, Severity::Error, "22021", "bad\0byte"s, "a\0b"s);
    CHECK(length_word(out, 1) == out.size() - 1);
    const std::string body = scan_one(out, 'E');
    const auto f = decode_error_fields(bytes(body));
    REQUIRE(f.has_value());
    CHECK(f->sqlstate == "22021");
    CHECK(f->message.size() == 8);
    CHECK(f->message.find('\0') == std::string_view::npos);
    CHECK(f->message.substr(0, 3) == "bad");
    CHECK(f->message.substr(4) == "byte");
}

TEST_CASE("encode_cancel_request parses back as a CancelRequest", "[protocol][encode]") {
    for (const CancelKey key : {CancelKey{12345, 67890}, CancelKey{-1, int32_t(0x80000000)}, CancelKey{0, 0}}) {
        CAPTURE(key.pid, key.secret);
        std::string out = "xyz";  // appends
        encode_cancel_request(out, key);
        REQUIRE(out.size() == 3 + 16);
        const std::string wire = out.substr(3);
        CHECK(wire == be32(16) + be32(80877102) + be32(uint32_t(key.pid)) + be32(uint32_t(key.secret)));
        const StartupParse p = parse_startup(bytes(wire));
        REQUIRE(p.status == ParseStatus::Ok);
        CHECK(p.packet.kind == StartupKind::CancelRequest);
        CHECK(p.packet.length == 16);
        CHECK(p.packet.cancel_key == key);
    }
}

TEST_CASE("encode_backend_key_data scans back as a watched frame", "[protocol][encode]") {
    for (const CancelKey key : {CancelKey{4242, 0x01020304}, CancelKey{-7, -8}}) {
        CAPTURE(key.pid, key.secret);
        std::string out;
        encode_backend_key_data(out, key);
        CHECK(out == "K"s + be32(12) + be32(uint32_t(key.pid)) + be32(uint32_t(key.secret)));
        const std::string body = scan_one(out, 'K');
        CHECK(decode_backend_key_data(bytes(body)) == key);
    }
}

TEST_CASE("encoded messages scan back in sequence", "[protocol][encode]") {
    std::string out;
    encode_backend_key_data(out, CancelKey{1, 2});
    encode_error_response(out, Severity::Fatal, "57P01", "terminating connection due to administrator command");
    encode_backend_key_data(out, CancelKey{3, 4});

    FrameScanner sc(1 << 20);
    sc.watch('K');
    sc.watch('E');
    size_t pos = 0;
    Frame f;
    std::string types;
    while (sc.next(bytes(out), pos, f) == FrameScanner::Status::Frame) {
        REQUIRE(f.complete);
        types.push_back(f.type);
    }
    CHECK(types == "KEK");
    CHECK(pos == out.size());
}

TEST_CASE("ssl_answer", "[protocol][encode]") {
    CHECK(ssl_answer(true) == 'S');
    CHECK(ssl_answer(false) == 'N');
}

TEST_CASE("negotiate_for: NegotiateProtocolVersion for a newer minor or _pq_ options, else nothing", "[encode]") {
    using namespace pgrelay::protocol;
    StartupPacket p;
    p.protocol_version = 3u << 16;
    p.parameters = {{"user", "u"}, {"database", "d"}};
    CHECK(negotiate_for(p).empty());
    p.protocol_version = (3u << 16) | 2;  // libpq 18, max_protocol_version=3.2
    CHECK(negotiate_for(p) == std::string("v\0\0\0\x0c\0\x03\0\0\0\0\0\0", 13));
    p.protocol_version = (3u << 16) | 9999;  // libpq 19's grease
    p.parameters.emplace_back("_pq_.test_protocol_negotiation", "");
    const std::string v = negotiate_for(p);
    CHECK(v == std::string("v\0\0\0\x2b\0\x03\0\0\0\0\0\x01", 13) + "_pq_.test_protocol_negotiation" + std::string(1, '\0'));
    p.protocol_version = 3u << 16;  // an option alone asks for negotiation too
    CHECK(negotiate_for(p) == v);
}
