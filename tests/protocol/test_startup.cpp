// Startup phase: parse_startup on every packet kind, its 08P01/28000 errors and
// prefixes (NeedMore, never a partial consume), and StartupOp scripts (SSL/GSSENC
// negotiation, CVE-2021-23214, cancel) fed whole, byte by byte and split in two.
#include <catch2/catch.hpp>

#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "protocol/messages.hpp"
#include "protocol/startup.hpp"

using namespace pgrelay::protocol;

namespace {

using Bytes = std::vector<uint8_t>;
using Params = std::vector<std::pair<std::string, std::string>>;

void put_u32(Bytes& b, uint32_t v) {
    b.push_back(uint8_t(v >> 24));
    b.push_back(uint8_t(v >> 16));
    b.push_back(uint8_t(v >> 8));
    b.push_back(uint8_t(v));
}

void put_cstring(Bytes& b, const std::string& s) {
    b.insert(b.end(), s.begin(), s.end());
    b.push_back(0);
}

// Length word + code + payload, the length computed from the payload.
Bytes packet(uint32_t code, const Bytes& payload = {}) {
    Bytes b;
    put_u32(b, uint32_t(8 + payload.size()));
    put_u32(b, code);
    b.insert(b.end(), payload.begin(), payload.end());
    return b;
}

// Length word given explicitly (for malformed packets), then code and payload.
Bytes raw_packet(uint32_t length, uint32_t code, const Bytes& payload = {}) {
    Bytes b;
    put_u32(b, length);
    put_u32(b, code);
    b.insert(b.end(), payload.begin(), payload.end());
    return b;
}

Bytes startup_message(const Params& params, uint32_t version = kProtocolV3) {
    Bytes payload;
    for (const auto& [k, v] : params) {
        put_cstring(payload, k);
        put_cstring(payload, v);
    }
    payload.push_back(0);
    return packet(version, payload);
}

Bytes ssl_request() { return packet(kSSLRequestCode); }
Bytes gssenc_request() { return packet(kGSSENCRequestCode); }

Bytes cancel_request(uint32_t pid, uint32_t secret) {
    Bytes payload;
    put_u32(payload, pid);
    put_u32(payload, secret);
    return packet(kCancelRequestCode, payload);
}

Bytes concat(std::initializer_list<Bytes> parts) {
    Bytes out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
}

Bytes from_string(const std::string& s) { return Bytes(s.begin(), s.end()); }

std::span<const uint8_t> prefix(const Bytes& b, size_t n) { return std::span<const uint8_t>(b.data(), n); }

void require_protocol_violation(const StartupParse& p) {
    REQUIRE(p.status == ParseStatus::Error);
    CHECK(std::string(p.sqlstate) == "08P01");
    CHECK_FALSE(p.message.empty());
}

// One StartupOp action, reduced to what a test compares.
struct Step {
    StartupOp::Kind kind;
    size_t consumed;
    char reply;
    std::string sqlstate;
    bool operator==(const Step&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Step& s) {
    static const char* names[] = {"ReadMore", "Reply", "StartTls", "Forward", "Cancel", "Close"};
    os << names[int(s.kind)] << "(consumed=" << s.consumed;
    if (s.reply) os << ", reply=" << s.reply;
    if (!s.sqlstate.empty()) os << ", sqlstate=" << s.sqlstate;
    return os << ")";
}

bool terminal(StartupOp::Kind k) {
    return k == StartupOp::Kind::Forward || k == StartupOp::Kind::Cancel || k == StartupOp::Kind::Close ||
           k == StartupOp::Kind::StartTls;
}

// Drives a StartupOp as a connection handler would: append each chunk to the
// buffer, call next() until it asks for more, dropping `consumed` bytes after
// each action. Records every action but ReadMore; stops at a terminal action.
// `last_packet` receives a copy of the packet of the last action that had one.
std::vector<Step> drive(StartupOp& op, const std::vector<Bytes>& chunks, StartupPacket* last_packet = nullptr,
                        Bytes* leftover = nullptr) {
    std::vector<Step> steps;
    Bytes buf;
    for (const auto& chunk : chunks) {
        buf.insert(buf.end(), chunk.begin(), chunk.end());
        for (int guard = 0;; ++guard) {
            REQUIRE(guard < 16);
            StartupOp::Action a = op.next(buf);
            REQUIRE(a.consumed <= buf.size());
            if (a.kind == StartupOp::Kind::ReadMore) {
                REQUIRE(a.consumed == 0);
                break;
            }
            steps.push_back({a.kind, a.consumed, a.reply, a.sqlstate});
            if (a.kind == StartupOp::Kind::Close) CHECK_FALSE(a.message.empty());
            if (a.packet && last_packet) *last_packet = *a.packet;
            buf.erase(buf.begin(), buf.begin() + long(a.consumed));
            if (terminal(a.kind)) {
                if (leftover) *leftover = buf;
                return steps;
            }
        }
    }
    if (leftover) *leftover = buf;
    return steps;
}

std::vector<Bytes> one_chunk(const Bytes& b) { return {b}; }

std::vector<Bytes> byte_chunks(const Bytes& b) {
    std::vector<Bytes> out;
    for (uint8_t c : b) out.push_back(Bytes{c});
    return out;
}

std::vector<Bytes> split_at(const Bytes& b, size_t k) {
    return {Bytes(b.begin(), b.begin() + long(k)), Bytes(b.begin() + long(k), b.end())};
}

using K = StartupOp::Kind;

}  // namespace

// ---------------------------------------------------------------------------
// parse_startup: valid packets

TEST_CASE("parse_startup reads a StartupMessage and its parameters", "[protocol][startup]") {
    const Bytes msg = startup_message(
        {{"user", "alice"}, {"database", "shop"}, {"application_name", "psql"}, {"options", "-c x=1"}});
    const StartupParse p = parse_startup(msg);
    REQUIRE(p.status == ParseStatus::Ok);
    CHECK(p.packet.kind == StartupKind::StartupMessage);
    CHECK(p.packet.length == msg.size());
    CHECK(p.packet.protocol_version == kProtocolV3);
    CHECK(p.packet.protocol_version == 196608u);
    REQUIRE(p.packet.parameters.size() == 4);
    CHECK(p.packet.parameters[0] == std::pair<std::string, std::string>{"user", "alice"});
    CHECK(p.packet.parameters[1] == std::pair<std::string, std::string>{"database", "shop"});
    CHECK(p.packet.parameters[2] == std::pair<std::string, std::string>{"application_name", "psql"});
    CHECK(p.packet.parameters[3] == std::pair<std::string, std::string>{"options", "-c x=1"});
    CHECK(p.packet.parameter("user") == "alice");
    CHECK(p.packet.parameter("database") == "shop");
    CHECK(p.packet.parameter("options") == "-c x=1");
    CHECK(p.packet.parameter("replication").empty());
    CHECK(p.packet.parameter("USER").empty());  // names are case-sensitive
}

TEST_CASE("parse_startup keeps empty parameter values and accepts a user-only packet", "[protocol][startup]") {
    const Bytes msg = startup_message({{"user", "bob"}, {"database", ""}});
    const StartupParse p = parse_startup(msg);
    REQUIRE(p.status == ParseStatus::Ok);
    REQUIRE(p.packet.parameters.size() == 2);
    CHECK(p.packet.parameters[1].first == "database");
    CHECK(p.packet.parameters[1].second.empty());

    const StartupParse only_user = parse_startup(startup_message({{"user", "u"}}));
    REQUIRE(only_user.status == ParseStatus::Ok);
    CHECK(only_user.packet.parameters.size() == 1);
    CHECK(only_user.packet.parameter("user") == "u");
}

TEST_CASE("parse_startup accepts any 3.x minor version", "[protocol][startup]") {
    const uint32_t v3_1 = (3u << 16) | 1u;
    const StartupParse p = parse_startup(startup_message({{"user", "a"}}, v3_1));
    REQUIRE(p.status == ParseStatus::Ok);
    CHECK(p.packet.protocol_version == v3_1);

    const uint32_t v3_max = (3u << 16) | 0xffffu;
    const StartupParse q = parse_startup(startup_message({{"user", "a"}}, v3_max));
    REQUIRE(q.status == ParseStatus::Ok);
    CHECK(q.packet.protocol_version == v3_max);
}

TEST_CASE("parse_startup consumes exactly one packet when more bytes follow", "[protocol][startup]") {
    const Bytes first = startup_message({{"user", "alice"}});
    const Bytes stream = concat({first, from_string("Qgarbage that is not part of the packet")});
    const StartupParse p = parse_startup(stream);
    REQUIRE(p.status == ParseStatus::Ok);
    CHECK(p.packet.length == first.size());
    CHECK(p.packet.parameters.size() == 1);

    const StartupParse s = parse_startup(concat({ssl_request(), first}));
    REQUIRE(s.status == ParseStatus::Ok);
    CHECK(s.packet.kind == StartupKind::SSLRequest);
    CHECK(s.packet.length == 8);
}

TEST_CASE("parse_startup recognises SSLRequest and GSSENCRequest", "[protocol][startup]") {
    const Bytes ssl = ssl_request();
    REQUIRE(ssl == Bytes{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f});  // 80877103 as in pqcomm.h
    const StartupParse s = parse_startup(ssl);
    REQUIRE(s.status == ParseStatus::Ok);
    CHECK(s.packet.kind == StartupKind::SSLRequest);
    CHECK(s.packet.length == 8);
    CHECK(s.packet.parameters.empty());

    const Bytes gss = gssenc_request();
    REQUIRE(gss == Bytes{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30});  // 80877104
    const StartupParse g = parse_startup(gss);
    REQUIRE(g.status == ParseStatus::Ok);
    CHECK(g.packet.kind == StartupKind::GSSENCRequest);
    CHECK(g.packet.length == 8);
}

TEST_CASE("parse_startup reads the key of a CancelRequest", "[protocol][startup]") {
    const Bytes c = cancel_request(4242, 0x12345678);
    REQUIRE(c.size() == 16);
    const StartupParse p = parse_startup(c);
    REQUIRE(p.status == ParseStatus::Ok);
    CHECK(p.packet.kind == StartupKind::CancelRequest);
    CHECK(p.packet.length == 16);
    CHECK(p.packet.cancel_key == CancelKey{4242, std::string("\x12\x34\x56\x78", 4)});

    // The secret is raw bytes, high bits and all.
    const StartupParse n = parse_startup(cancel_request(1, 0xfffffffeu));
    REQUIRE(n.status == ParseStatus::Ok);
    CHECK(n.packet.cancel_key == CancelKey{1, std::string("\xff\xff\xff\xfe", 4)});
}

TEST_CASE("parse_startup accepts a packet of exactly the maximum length", "[protocol][startup]") {
    // 8 header bytes + "user\0" + "a\0" + "x\0" + value + "\0" + final "\0" == 10000.
    const size_t fixed = 8 + 5 + 2 + 2 + 1 + 1;
    const Bytes msg = startup_message({{"user", "a"}, {"x", std::string(10000 - fixed, 'v')}});
    REQUIRE(msg.size() == 10000);
    const StartupParse p = parse_startup(msg);
    REQUIRE(p.status == ParseStatus::Ok);
    CHECK(p.packet.length == 10000);
    CHECK(p.packet.parameter("x").size() == 10000 - fixed);
}

// ---------------------------------------------------------------------------
// parse_startup: errors

TEST_CASE("parse_startup requires a user name (28000)", "[protocol][startup]") {
    SECTION("no user parameter") {
        const StartupParse p = parse_startup(startup_message({{"database", "shop"}}));
        REQUIRE(p.status == ParseStatus::Error);
        CHECK(std::string(p.sqlstate) == "28000");
        CHECK_FALSE(p.message.empty());
    }
    SECTION("no parameters at all") {
        const StartupParse p = parse_startup(startup_message({}));
        REQUIRE(p.status == ParseStatus::Error);
        CHECK(std::string(p.sqlstate) == "28000");
        CHECK_FALSE(p.message.empty());
    }
    SECTION("empty user") {
        const StartupParse p = parse_startup(startup_message({{"user", ""}, {"database", "shop"}}));
        REQUIRE(p.status == ParseStatus::Error);
        CHECK(std::string(p.sqlstate) == "28000");
        CHECK_FALSE(p.message.empty());
    }
}

TEST_CASE("parse_startup rejects a length word below 8 as soon as it is read", "[protocol][startup]") {
    for (uint32_t len : {0u, 1u, 4u, 7u}) {
        CAPTURE(len);
        Bytes b;
        put_u32(b, len);
        // The length word alone is enough to know the packet is malformed.
        require_protocol_violation(parse_startup(b));
        // And so is a whole (short) packet with a valid-looking code.
        require_protocol_violation(parse_startup(raw_packet(len, kProtocolV3)));
    }
}

TEST_CASE("parse_startup rejects a length word above 10000", "[protocol][startup]") {
    for (uint32_t len : {10001u, 65536u, 0x7fffffffu, 0xffffffffu}) {
        CAPTURE(len);
        Bytes b;
        put_u32(b, len);
        require_protocol_violation(parse_startup(b));
        require_protocol_violation(parse_startup(raw_packet(len, kProtocolV3, Bytes(100, 'a'))));
    }
}

TEST_CASE("parse_startup rejects unsupported protocol versions", "[protocol][startup]") {
    Bytes params;
    put_cstring(params, "user");
    put_cstring(params, "alice");
    params.push_back(0);

    SECTION("protocol 2.0") { require_protocol_violation(parse_startup(packet(2u << 16, params))); }
    SECTION("protocol 4.0") { require_protocol_violation(parse_startup(packet(4u << 16, params))); }
    SECTION("1234.1234 junk code") {
        require_protocol_violation(parse_startup(packet((1234u << 16) | 1234u, params)));
    }
    SECTION("1234.1234 junk code, 8-byte packet") {
        require_protocol_violation(parse_startup(packet((1234u << 16) | 1234u)));
    }
    SECTION("NegotiateGSS-like neighbour code 1234.5681") {
        require_protocol_violation(parse_startup(packet((1234u << 16) | 5681u)));
    }
    SECTION("code 0") { require_protocol_violation(parse_startup(packet(0, params))); }
}

TEST_CASE("parse_startup rejects requests of the wrong length", "[protocol][startup]") {
    SECTION("SSLRequest with length 12") {
        require_protocol_violation(parse_startup(raw_packet(12, kSSLRequestCode, Bytes(4, 0))));
    }
    SECTION("GSSENCRequest with length 12") {
        require_protocol_violation(parse_startup(raw_packet(12, kGSSENCRequestCode, Bytes(4, 0))));
    }
    SECTION("CancelRequest with length 12") {
        require_protocol_violation(parse_startup(raw_packet(12, kCancelRequestCode, Bytes(4, 1))));
    }
    SECTION("CancelRequest with length 8") {
        require_protocol_violation(parse_startup(raw_packet(8, kCancelRequestCode)));
    }
    SECTION("CancelRequest with a secret of 3 bytes") {
        require_protocol_violation(parse_startup(raw_packet(15, kCancelRequestCode, Bytes(7, 1))));
    }
    SECTION("CancelRequest with a secret of 257 bytes (3.2 allows 256)") {
        require_protocol_violation(parse_startup(raw_packet(12 + 257, kCancelRequestCode, Bytes(4 + 257, 1))));
    }
}

TEST_CASE("parse_startup rejects malformed parameter lists", "[protocol][startup]") {
    SECTION("missing final terminator") {
        Bytes payload;
        put_cstring(payload, "user");
        put_cstring(payload, "alice");
        require_protocol_violation(parse_startup(packet(kProtocolV3, payload)));
    }
    SECTION("no parameter bytes at all (length 8)") {
        require_protocol_violation(parse_startup(packet(kProtocolV3)));
    }
    SECTION("unterminated parameter name") {
        Bytes payload;
        put_cstring(payload, "user");
        put_cstring(payload, "alice");
        const std::string name = "datab";
        payload.insert(payload.end(), name.begin(), name.end());
        require_protocol_violation(parse_startup(packet(kProtocolV3, payload)));
    }
    SECTION("unterminated parameter value") {
        Bytes payload;
        put_cstring(payload, "user");
        const std::string value = "alice";
        payload.insert(payload.end(), value.begin(), value.end());
        require_protocol_violation(parse_startup(packet(kProtocolV3, payload)));
    }
    SECTION("name without a value before the end") {
        Bytes payload;
        put_cstring(payload, "user");
        require_protocol_violation(parse_startup(packet(kProtocolV3, payload)));
    }
    SECTION("terminator is not the last byte") {
        Bytes payload;
        put_cstring(payload, "user");
        put_cstring(payload, "alice");
        payload.push_back(0);
        put_cstring(payload, "database");
        put_cstring(payload, "shop");
        payload.push_back(0);
        require_protocol_violation(parse_startup(packet(kProtocolV3, payload)));
    }
    SECTION("length word cuts the parameters short") {
        // The bytes are all present, but the length word ends the packet inside a value.
        Bytes good = startup_message({{"user", "alice"}});
        good[3] = uint8_t(good[3] - 3);
        require_protocol_violation(parse_startup(good));
    }
}

// ---------------------------------------------------------------------------
// parse_startup: prefixes

TEST_CASE("parse_startup asks for more on every strict prefix of a valid packet", "[protocol][startup]") {
    const std::vector<std::pair<const char*, Bytes>> packets = {
        {"StartupMessage", startup_message({{"user", "alice"}, {"database", "shop"}, {"client_encoding", "UTF8"}})},
        {"SSLRequest", ssl_request()},
        {"GSSENCRequest", gssenc_request()},
        {"CancelRequest", cancel_request(77, 0xdeadbeef)},
    };
    for (const auto& [name, bytes] : packets) {
        CAPTURE(name);
        for (size_t k = 0; k < bytes.size(); ++k) {
            CAPTURE(k);
            const StartupParse p = parse_startup(prefix(bytes, k));
            REQUIRE(p.status == ParseStatus::NeedMore);
            REQUIRE(p.packet.length == 0);  // nothing consumed
            REQUIRE(p.packet.parameters.empty());
        }
        const StartupParse whole = parse_startup(bytes);
        REQUIRE(whole.status == ParseStatus::Ok);
        CHECK(whole.packet.length == bytes.size());
    }
}

TEST_CASE("parse_startup waits for a whole packet before judging its body", "[protocol][startup]") {
    // A packet whose body is malformed is NeedMore until all of it is there.
    Bytes payload;
    put_cstring(payload, "user");
    put_cstring(payload, "alice");  // no final terminator
    const Bytes bad = packet(kProtocolV3, payload);
    for (size_t k = 0; k < bad.size(); ++k) {
        CAPTURE(k);
        REQUIRE(parse_startup(prefix(bad, k)).status == ParseStatus::NeedMore);
    }
    require_protocol_violation(parse_startup(bad));
}

// ---------------------------------------------------------------------------
// StartupOp

TEST_CASE("StartupOp asks for more on an empty or partial buffer", "[protocol][startup][op]") {
    StartupOp op({});
    const Bytes msg = startup_message({{"user", "alice"}});
    for (size_t k = 0; k < msg.size(); ++k) {
        CAPTURE(k);
        const StartupOp::Action a = op.next(prefix(msg, k));
        REQUIRE(a.kind == K::ReadMore);
        REQUIRE(a.consumed == 0);
    }
    const StartupOp::Action a = op.next(msg);
    REQUIRE(a.kind == K::Forward);
    CHECK(a.consumed == msg.size());
}

TEST_CASE("StartupOp: SSLRequest refused, then StartupMessage forwarded", "[protocol][startup][op]") {
    const Bytes msg = startup_message({{"user", "alice"}, {"database", "shop"}});
    StartupOp op({.tls_available = false});

    const Bytes stream = concat({ssl_request(), msg});
    const StartupOp::Action a1 = op.next(stream);
    REQUIRE(a1.kind == K::Reply);
    CHECK(a1.reply == 'N');
    CHECK(a1.consumed == 8);
    CHECK(op.ssl_requested());
    CHECK_FALSE(op.gssenc_requested());

    const StartupOp::Action a2 = op.next(std::span<const uint8_t>(stream).subspan(a1.consumed));
    REQUIRE(a2.kind == K::Forward);
    CHECK(a2.consumed == msg.size());
    REQUIRE(a2.packet != nullptr);
    CHECK(a2.packet->kind == StartupKind::StartupMessage);
    CHECK(a2.packet->parameter("user") == "alice");
    CHECK(a2.packet->parameter("database") == "shop");
}

TEST_CASE("StartupOp: GSSENCRequest, SSLRequest, StartupMessage (pgjdbc's order)", "[protocol][startup][op]") {
    const Bytes msg = startup_message({{"user", "jdbc"}});
    StartupOp op({});
    StartupPacket last;
    const auto steps = drive(op, one_chunk(concat({gssenc_request(), ssl_request(), msg})), &last);
    const std::vector<Step> expected = {
        {K::Reply, 8, 'N', ""},
        {K::Reply, 8, 'N', ""},
        {K::Forward, msg.size(), 0, ""},
    };
    CHECK(steps == expected);
    CHECK(op.gssenc_requested());
    CHECK(op.ssl_requested());
    CHECK(last.parameter("user") == "jdbc");
}

TEST_CASE("StartupOp closes on a repeated negotiation request", "[protocol][startup][op]") {
    SECTION("second SSLRequest") {
        StartupOp op({});
        const auto steps = drive(op, one_chunk(concat({ssl_request(), ssl_request(), startup_message({{"user", "a"}})})));
        REQUIRE(steps.size() == 2);
        CHECK(steps[0] == Step{K::Reply, 8, 'N', ""});
        CHECK(steps[1].kind == K::Close);
        CHECK(steps[1].sqlstate == "08P01");
    }
    SECTION("second GSSENCRequest") {
        StartupOp op({});
        const auto steps =
            drive(op, one_chunk(concat({gssenc_request(), ssl_request(), gssenc_request(), startup_message({{"user", "a"}})})));
        REQUIRE(steps.size() == 3);
        CHECK(steps[0] == Step{K::Reply, 8, 'N', ""});
        CHECK(steps[1] == Step{K::Reply, 8, 'N', ""});
        CHECK(steps[2].kind == K::Close);
        CHECK(steps[2].sqlstate == "08P01");
    }
    SECTION("second SSLRequest after a TLS handshake") {
        StartupOp op({.tls_available = true});
        const StartupOp::Action a1 = op.next(ssl_request());
        REQUIRE(a1.kind == K::StartTls);
        const StartupOp::Action a2 = op.next(ssl_request());
        REQUIRE(a2.kind == K::Close);
        CHECK(std::string(a2.sqlstate) == "08P01");
        CHECK_FALSE(a2.message.empty());
    }
    SECTION("GSSENCRequest after a TLS handshake (postmaster.c refuses it too)") {
        StartupOp op({.tls_available = true});
        const StartupOp::Action a1 = op.next(ssl_request());
        REQUIRE(a1.kind == K::StartTls);
        const StartupOp::Action a2 = op.next(gssenc_request());
        REQUIRE(a2.kind == K::Close);
        CHECK(std::string(a2.sqlstate) == "08P01");
        CHECK(a2.consumed == 0);
        CHECK_FALSE(op.gssenc_requested());
    }
}

TEST_CASE("StartupOp with TLS: StartTls, then the StartupMessage", "[protocol][startup][op]") {
    StartupOp op({.tls_available = true});
    const StartupOp::Action a1 = op.next(ssl_request());
    REQUIRE(a1.kind == K::StartTls);
    CHECK(a1.reply == 'S');
    CHECK(a1.consumed == 8);
    CHECK(op.ssl_requested());

    // After the handshake the decrypted stream carries the StartupMessage.
    const Bytes msg = startup_message({{"user", "tls_user"}});
    const StartupOp::Action a2 = op.next(msg);
    REQUIRE(a2.kind == K::Forward);
    CHECK(a2.consumed == msg.size());
    REQUIRE(a2.packet != nullptr);
    CHECK(a2.packet->parameter("user") == "tls_user");
}

TEST_CASE("StartupOp refuses plaintext sent after an SSLRequest it accepts (CVE-2021-23214)",
          "[protocol][startup][op]") {
    SECTION("one extra byte") {
        StartupOp op({.tls_available = true});
        Bytes b = ssl_request();
        b.push_back(0x16);  // looks like a TLS record, but arrived before 'S' was sent
        const StartupOp::Action a = op.next(b);
        REQUIRE(a.kind == K::Close);
        CHECK(std::string(a.sqlstate) == "08P01");
        CHECK_FALSE(a.message.empty());
    }
    SECTION("a whole StartupMessage") {
        StartupOp op({.tls_available = true});
        const StartupOp::Action a = op.next(concat({ssl_request(), startup_message({{"user", "mallory"}})}));
        REQUIRE(a.kind == K::Close);
        CHECK(std::string(a.sqlstate) == "08P01");
    }
    SECTION("after a refused GSSENCRequest, the same rule") {
        StartupOp op({.tls_available = true});
        const Bytes stream = concat({gssenc_request(), ssl_request(), startup_message({{"user", "x"}})});
        const StartupOp::Action a1 = op.next(stream);
        REQUIRE(a1.kind == K::Reply);
        CHECK(a1.reply == 'N');
        const StartupOp::Action a2 = op.next(std::span<const uint8_t>(stream).subspan(a1.consumed));
        REQUIRE(a2.kind == K::Close);
        CHECK(std::string(a2.sqlstate) == "08P01");
    }
    SECTION("without TLS, bytes after SSLRequest are fine (plaintext follows 'N')") {
        StartupOp op({.tls_available = false});
        const Bytes msg = startup_message({{"user", "x"}});
        const auto steps = drive(op, one_chunk(concat({ssl_request(), msg})));
        const std::vector<Step> expected = {{K::Reply, 8, 'N', ""}, {K::Forward, msg.size(), 0, ""}};
        CHECK(steps == expected);
    }
}

TEST_CASE("StartupOp with TLS: the split point decides between StartTls and Close", "[protocol][startup][op]") {
    const Bytes msg = startup_message({{"user", "alice"}});
    const Bytes stream = concat({ssl_request(), msg});
    for (size_t k = 1; k < stream.size(); ++k) {
        CAPTURE(k);
        StartupOp op({.tls_available = true});
        const auto steps = drive(op, split_at(stream, k));
        REQUIRE(steps.size() == 1);
        if (k == 8) {
            // The client waited for the answer: a proper negotiation.
            CHECK(steps[0] == Step{K::StartTls, 8, 'S', ""});
        } else {
            // k < 8: the SSLRequest completes in the second read together with
            // plaintext; k > 8: plaintext in the same read. Both are refused.
            CHECK(steps[0].kind == K::Close);
            CHECK(steps[0].sqlstate == "08P01");
        }
    }
}

TEST_CASE("StartupOp passes a CancelRequest's key on", "[protocol][startup][op]") {
    StartupOp op({});
    const StartupOp::Action a = op.next(cancel_request(31337, 0x0badf00d));
    REQUIRE(a.kind == K::Cancel);
    CHECK(a.consumed == 16);
    REQUIRE(a.packet != nullptr);
    CHECK(a.packet->kind == StartupKind::CancelRequest);
    CHECK(a.packet->cancel_key == CancelKey{31337, std::string("\x0b\xad\xf0\x0d", 4)});

    // A CancelRequest may also follow a refused SSLRequest (libpq's sslmode=prefer).
    StartupOp op2({});
    StartupPacket last;
    const auto steps = drive(op2, one_chunk(concat({ssl_request(), cancel_request(5, 6)})), &last);
    const std::vector<Step> expected = {{K::Reply, 8, 'N', ""}, {K::Cancel, 16, 0, ""}};
    CHECK(steps == expected);
    CHECK(last.cancel_key == CancelKey{5, std::string("\0\0\0\x06", 4)});
}

TEST_CASE("StartupOp turns parse errors into Close with their SQLSTATE", "[protocol][startup][op]") {
    SECTION("bad length") {
        StartupOp op({});
        Bytes b;
        put_u32(b, 3);
        const StartupOp::Action a = op.next(b);
        REQUIRE(a.kind == K::Close);
        CHECK(a.consumed == 0);
        CHECK(std::string(a.sqlstate) == "08P01");
        CHECK_FALSE(a.message.empty());
    }
    SECTION("missing user") {
        StartupOp op({});
        const StartupOp::Action a = op.next(startup_message({{"database", "x"}}));
        REQUIRE(a.kind == K::Close);
        CHECK(std::string(a.sqlstate) == "28000");
        CHECK_FALSE(a.message.empty());
    }
    SECTION("protocol 2 after a refused SSLRequest") {
        StartupOp op({});
        const auto steps = drive(op, one_chunk(concat({ssl_request(), packet(2u << 16, Bytes{'u', 0, 'x', 0, 0})})));
        REQUIRE(steps.size() == 2);
        CHECK(steps[0] == Step{K::Reply, 8, 'N', ""});
        CHECK(steps[1].kind == K::Close);
        CHECK(steps[1].sqlstate == "08P01");
    }
}

TEST_CASE("StartupOp gives the same actions however the stream is split", "[protocol][startup][op]") {
    const Bytes msg = startup_message({{"user", "alice"}, {"database", "shop"}, {"application_name", "split"}});
    struct Script {
        const char* name;
        Bytes stream;
        std::vector<Step> expected;
    };
    const std::vector<Script> scripts = {
        {"ssl, startup", concat({ssl_request(), msg}), {{K::Reply, 8, 'N', ""}, {K::Forward, msg.size(), 0, ""}}},
        {"gssenc, ssl, startup",
         concat({gssenc_request(), ssl_request(), msg}),
         {{K::Reply, 8, 'N', ""}, {K::Reply, 8, 'N', ""}, {K::Forward, msg.size(), 0, ""}}},
        {"startup only", msg, {{K::Forward, msg.size(), 0, ""}}},
        {"ssl, cancel", concat({ssl_request(), cancel_request(9, 10)}), {{K::Reply, 8, 'N', ""}, {K::Cancel, 16, 0, ""}}},
        {"ssl, ssl", concat({ssl_request(), ssl_request()}), {{K::Reply, 8, 'N', ""}, {K::Close, 0, 0, "08P01"}}},
    };
    for (const auto& s : scripts) {
        CAPTURE(s.name);
        {
            StartupOp op({});
            CHECK(drive(op, one_chunk(s.stream)) == s.expected);
        }
        {
            StartupOp op({});
            StartupPacket last;
            CHECK(drive(op, byte_chunks(s.stream), &last) == s.expected);
            if (s.expected.back().kind == K::Forward) CHECK(last.parameters.size() == 3);
        }
        for (size_t k = 0; k <= s.stream.size(); ++k) {
            CAPTURE(k);
            StartupOp op({});
            REQUIRE(drive(op, split_at(s.stream, k)) == s.expected);
        }
    }
}

TEST_CASE("StartupOp leaves bytes after the StartupMessage in the buffer", "[protocol][startup][op]") {
    // Pipelining clients may send a query right behind the StartupMessage; those
    // bytes belong to the regular phase and must not be consumed.
    const Bytes msg = startup_message({{"user", "alice"}});
    const Bytes query = {'Q', 0, 0, 0, 13, 's', 'e', 'l', 'e', 'c', 't', ' ', '1', 0};
    StartupOp op({});
    Bytes leftover;
    const auto steps = drive(op, byte_chunks(concat({msg, query})), nullptr, &leftover);
    REQUIRE(steps.size() == 1);
    CHECK(steps[0] == Step{K::Forward, msg.size(), 0, ""});
    // Byte-at-a-time: Forward happens as soon as the message is complete.
    CHECK(leftover.empty());

    StartupOp op2({});
    const auto steps2 = drive(op2, one_chunk(concat({msg, query})), nullptr, &leftover);
    REQUIRE(steps2.size() == 1);
    CHECK(leftover == query);
}

TEST_CASE("to_string names every startup kind", "[protocol][startup]") {
    CHECK(to_string(StartupKind::StartupMessage) == "StartupMessage");
    CHECK(to_string(StartupKind::SSLRequest) == "SSLRequest");
    CHECK(to_string(StartupKind::GSSENCRequest) == "GSSENCRequest");
    CHECK(to_string(StartupKind::CancelRequest) == "CancelRequest");
}

TEST_CASE("a repeated parameter reads as its last value, as in postmaster.c", "[protocol][startup]") {
    // pgrelay must route and log the same user the backend logs in as.
    const StartupParse p = parse_startup(startup_message({{"user", "alice"}, {"user", "bob"}}));
    REQUIRE(p.status == ParseStatus::Ok);
    CHECK(p.packet.parameter("user") == "bob");
    // An empty last user is a missing user, whatever came before it.
    const StartupParse q = parse_startup(startup_message({{"user", "alice"}, {"user", ""}}));
    REQUIRE(q.status == ParseStatus::Error);
    CHECK(std::string(q.sqlstate) == "28000");
    const StartupParse r = parse_startup(startup_message({{"user", ""}, {"user", "bob"}}));
    REQUIRE(r.status == ParseStatus::Ok);
    CHECK(r.packet.parameter("user") == "bob");
}
