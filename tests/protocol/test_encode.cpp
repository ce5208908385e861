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

std::string be32(uint32_t v);
// A protocol 3.0 key: the secret is 4 bytes, big-endian.
CancelKey key4(int32_t pid, uint32_t secret) { return CancelKey{pid, be32(secret)}; }
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
    const std::string long_secret(32, '\xa5'), longest(256, '\x01');
    for (const CancelKey& key : {key4(12345, 67890), key4(-1, 0x80000000), key4(0, 0), CancelKey{77, long_secret},
                                 CancelKey{78, longest}}) {
        CAPTURE(key.pid, key.secret.size());
        std::string out = "xyz";  // appends
        encode_cancel_request(out, key);
        const uint32_t len = uint32_t(12 + key.secret.size());
        REQUIRE(out.size() == 3 + len);
        const std::string wire = out.substr(3);
        CHECK(wire == be32(len) + be32(80877102) + be32(uint32_t(key.pid)) + key.secret);
        const StartupParse p = parse_startup(bytes(wire));
        REQUIRE(p.status == ParseStatus::Ok);
        CHECK(p.packet.kind == StartupKind::CancelRequest);
        CHECK(p.packet.length == len);
        CHECK(p.packet.cancel_key == key);
    }
    // pgrelay's peer-to-peer form: the same layout, its own code, marked.
    {
        std::string out;
        encode_cancel_request(out, CancelKey{5, long_secret}, true);
        CHECK(out.substr(4, 4) == be32(kPeerCancelRequestCode));
        const StartupParse p = parse_startup(bytes(out));
        REQUIRE(p.status == ParseStatus::Ok);
        CHECK(p.packet.kind == StartupKind::CancelRequest);
        CHECK(p.packet.from_peer);
        CHECK(p.packet.cancel_key == CancelKey{5, long_secret});
        std::string plain;
        encode_cancel_request(plain, CancelKey{5, long_secret});
        CHECK_FALSE(parse_startup(bytes(plain)).packet.from_peer);
    }
    // Shorter than 3.0's secret, or longer than 3.2's longest: refused.
    for (const size_t n : {size_t(0), size_t(3), size_t(257)}) {
        CAPTURE(n);
        std::string out;
        encode_cancel_request(out, CancelKey{1, std::string(n, 'x')});
        const StartupParse p = parse_startup(bytes(out));
        CHECK(p.status == ParseStatus::Error);
        CHECK(std::string(p.sqlstate) == "08P01");
    }
}

TEST_CASE("encode_backend_key_data scans back as a watched frame", "[protocol][encode]") {
    for (const CancelKey& key : {key4(4242, 0x01020304), key4(-7, uint32_t(-8)), CancelKey{9, std::string(32, 'k')}}) {
        CAPTURE(key.pid, key.secret.size());
        std::string out;
        encode_backend_key_data(out, key);
        CHECK(out == "K"s + be32(uint32_t(8 + key.secret.size())) + be32(uint32_t(key.pid)) + key.secret);
        const std::string body = scan_one(out, 'K');
        CHECK(decode_backend_key_data(bytes(body)) == key);
    }
}

TEST_CASE("encoded messages scan back in sequence", "[protocol][encode]") {
    std::string out;
    encode_backend_key_data(out, key4(1, 2));
    encode_error_response(out, Severity::Fatal, "57P01", "terminating connection due to administrator command");
    encode_backend_key_data(out, key4(3, 4));

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

TEST_CASE("negotiate_for: 3.0 and 3.2 as asked, NegotiateProtocolVersion beyond 3.2 or for _pq_ options", "[encode]") {
    using namespace pgrelay::protocol;
    StartupPacket p;
    p.protocol_version = 3u << 16;
    p.parameters = {{"user", "u"}, {"database", "d"}};
    CHECK(negotiate_for(p).message.empty());
    CHECK(negotiate_for(p).version == kProtocolV3);
    p.protocol_version = (3u << 16) | 2;  // libpq 18, max_protocol_version=3.2: spoken as asked
    CHECK(negotiate_for(p).message.empty());
    CHECK(negotiate_for(p).version == kProtocolV3_2);
    // A server of 3.0 only (pgrelay's own logins) says so, with the whole version number.
    CHECK(negotiate_for(p, kProtocolV3).message == std::string("v\0\0\0\x0c\0\x03\0\0\0\0\0\0", 13));
    CHECK(negotiate_for(p, kProtocolV3).version == kProtocolV3);
    p.protocol_version = (3u << 16) | 9999;  // libpq 19's grease
    p.parameters.emplace_back("_pq_.test_protocol_negotiation", "");
    const Negotiated v = negotiate_for(p);
    CHECK(v.version == kProtocolV3_2);
    CHECK(v.message == std::string("v\0\0\0\x2b\0\x03\0\x02\0\0\0\x01", 13) + "_pq_.test_protocol_negotiation" +
                           std::string(1, '\0'));
    p.protocol_version = 3u << 16;  // an option alone asks for negotiation too, at the version asked
    CHECK(negotiate_for(p).message ==
          std::string("v\0\0\0\x2b\0\x03\0\0\0\0\0\x01", 13) + "_pq_.test_protocol_negotiation" + std::string(1, '\0'));
}
