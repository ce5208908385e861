// Regular-phase framing: FrameScanner over whole, split and streamed buffers with
// the caller's carry-over protocol, watched frames, length errors; and the
// decoders of BackendKeyData, ReadyForQuery, ErrorResponse and ParameterStatus.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "protocol/frames.hpp"
#include "protocol/messages.hpp"

using namespace pgrelay::protocol;

namespace {

using Bytes = std::vector<uint8_t>;
using Status = FrameScanner::Status;

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

Bytes frame(char type, const Bytes& body) {
    Bytes b{uint8_t(type)};
    put_u32(b, uint32_t(body.size() + 4));
    b.insert(b.end(), body.begin(), body.end());
    return b;
}

// Type byte and an explicit length word, no body.
Bytes header(char type, uint32_t length) {
    Bytes b{uint8_t(type)};
    put_u32(b, length);
    return b;
}

// A protocol 3.0 key: the secret is 4 bytes, big-endian.
CancelKey key4(int32_t pid, uint32_t secret) {
    const char b[4] = {char(secret >> 24), char(secret >> 16), char(secret >> 8), char(secret)};
    return CancelKey{pid, std::string(b, 4)};
}
Bytes backend_key_data(uint32_t pid, uint32_t secret) {
    Bytes body;
    put_u32(body, pid);
    put_u32(body, secret);
    return frame('K', body);
}

Bytes ready_for_query(char status) { return frame('Z', Bytes{uint8_t(status)}); }

Bytes parameter_status(const std::string& name, const std::string& value) {
    Bytes body;
    put_cstring(body, name);
    put_cstring(body, value);
    return frame('S', body);
}

// ErrorResponse/NoticeResponse body: (code, value) fields, then a lone NUL.
Bytes error_fields(std::initializer_list<std::pair<char, std::string>> fields, bool terminate = true) {
    Bytes body;
    for (const auto& [code, value] : fields) {
        body.push_back(uint8_t(code));
        put_cstring(body, value);
    }
    if (terminate) body.push_back(0);
    return body;
}

Bytes auth_ok() { return frame('R', Bytes{0, 0, 0, 0}); }

Bytes command_complete(const std::string& tag) {
    Bytes body;
    put_cstring(body, tag);
    return frame('C', body);
}

Bytes concat(std::initializer_list<Bytes> parts) {
    Bytes out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
}

// What the relay saw of one frame.
struct Seen {
    char type;
    uint32_t length;
    bool complete;
    Bytes body;  // copied when complete
};

// A relay loop following frames.hpp's carry-over protocol: append the chunk to
// the carried bytes, scan, forward [0, pos), keep [pos, end) for the next round.
struct Relay {
    FrameScanner scanner;
    Bytes carry;
    Bytes forwarded;
    std::vector<Seen> seen;
    bool error = false;

    explicit Relay(uint32_t max_frame, uint32_t max_watched = 8192) : scanner(max_frame, max_watched) {}

    void feed(std::span<const uint8_t> chunk) {
        carry.insert(carry.end(), chunk.begin(), chunk.end());
        size_t pos = 0;
        // Every Frame moves pos by at least 5, so this bounds a correct scanner.
        const size_t bound = carry.size() / 5 + 2;
        for (size_t i = 0;; ++i) {
            REQUIRE(i <= bound);
            Frame f;
            const size_t before = pos;
            const Status st = scanner.next(carry, pos, f);
            REQUIRE(pos <= carry.size());
            if (st == Status::Error) {
                // The offending header is left at pos, not consumed.
                error = true;
                REQUIRE(carry.size() - pos >= 5);
                REQUIRE(scanner.bad_type() == char(carry[pos]));
                break;
            }
            if (st == Status::NeedMore) break;
            REQUIRE(f.offset >= before);
            REQUIRE(pos > f.offset);
            Seen s{f.type, f.length, f.complete, {}};
            if (f.complete) {
                REQUIRE(pos - f.offset == f.wire_size());
                const auto body = f.body(carry);
                s.body.assign(body.begin(), body.end());
            }
            seen.push_back(std::move(s));
        }
        forwarded.insert(forwarded.end(), carry.begin(), carry.begin() + long(pos));
        carry.erase(carry.begin(), carry.begin() + long(pos));
    }
    void feed(const Bytes& b) { feed(std::span<const uint8_t>(b)); }
};

std::vector<std::pair<char, uint32_t>> headers(const std::vector<Seen>& seen) {
    std::vector<std::pair<char, uint32_t>> out;
    for (const auto& s : seen) out.emplace_back(s.type, s.length);
    return out;
}

// A typical backend reply to a startup, with a few frame sizes.
const Bytes& backend_stream() {
    static const Bytes s = concat({
        auth_ok(),
        parameter_status("server_version", "15.4"),
        parameter_status("client_encoding", "UTF8"),
        backend_key_data(1234, 0xcafebabe),
        ready_for_query('I'),
        frame('T', Bytes(30, 'r')),
        frame('D', Bytes(70, 'd')),
        frame('D', Bytes{}),
        command_complete("SELECT 2"),
        frame('E', error_fields({{'S', "ERROR"}, {'V', "ERROR"}, {'C', "42P01"}, {'M', "no such table"}})),
        ready_for_query('E'),
    });
    return s;
}

const std::vector<std::pair<char, uint32_t>> kBackendHeaders = {
    {'R', 8}, {'S', 4 + 15 + 5}, {'S', 4 + 16 + 5}, {'K', 12}, {'Z', 5}, {'T', 34},
    {'D', 74}, {'D', 4}, {'C', 13}, {'E', 4 + 7 + 7 + 7 + 15 + 1}, {'Z', 5},
};

}  // namespace

// ---------------------------------------------------------------------------
// FrameScanner

TEST_CASE("FrameScanner reports every frame of a buffer", "[protocol][frames]") {
    const Bytes& buf = backend_stream();
    FrameScanner sc(1 << 20);
    size_t pos = 0;
    size_t expect_offset = 0;
    for (const auto& [type, length] : kBackendHeaders) {
        CAPTURE(type, length);
        Frame f;
        REQUIRE(sc.next(buf, pos, f) == Status::Frame);
        CHECK(f.type == type);
        CHECK(f.length == length);
        CHECK(f.offset == expect_offset);
        CHECK(f.complete);
        CHECK(pos == f.offset + f.wire_size());
        CHECK(sc.at_boundary());
        expect_offset += f.wire_size();
    }
    CHECK(pos == buf.size());
    Frame f;
    CHECK(sc.next(buf, pos, f) == Status::NeedMore);
    CHECK(pos == buf.size());
}

TEST_CASE("FrameScanner leaves an incomplete header at pos", "[protocol][frames]") {
    const Bytes buf = concat({ready_for_query('I'), Bytes{'Z', 0, 0, 0}});
    FrameScanner sc(1 << 20);
    size_t pos = 0;
    Frame f;
    REQUIRE(sc.next(buf, pos, f) == Status::Frame);
    CHECK(pos == 6);
    CHECK(sc.next(buf, pos, f) == Status::NeedMore);
    CHECK(pos == 6);  // the 4 header bytes are kept for the next read
    CHECK(sc.at_boundary());
}

TEST_CASE("FrameScanner accepts an empty body and a length of exactly the maximum", "[protocol][frames]") {
    FrameScanner sc(100);
    Bytes buf = concat({frame('1', Bytes{}), frame('D', Bytes(96, 'x'))});
    size_t pos = 0;
    Frame f;
    REQUIRE(sc.next(buf, pos, f) == Status::Frame);
    CHECK(f.type == '1');
    CHECK(f.length == 4);
    CHECK(f.complete);
    CHECK(f.body(buf).empty());
    REQUIRE(sc.next(buf, pos, f) == Status::Frame);
    CHECK(f.length == 100);
    CHECK(f.complete);
    CHECK(pos == buf.size());
}

TEST_CASE("FrameScanner rejects length words below 4 or above the maximum", "[protocol][frames]") {
    for (uint32_t bad : {0u, 1u, 3u}) {
        CAPTURE(bad);
        FrameScanner sc(1000);
        const Bytes buf = concat({ready_for_query('I'), header('Q', bad), Bytes(8, 'x')});
        size_t pos = 0;
        Frame f;
        REQUIRE(sc.next(buf, pos, f) == Status::Frame);
        REQUIRE(sc.next(buf, pos, f) == Status::Error);
        CHECK(pos == 6);  // the bad header is not consumed
        CHECK(sc.bad_length() == bad);
        CHECK(sc.bad_type() == 'Q');
    }
    for (uint32_t bad : {1001u, 0x10000u, 0xffffffffu}) {
        CAPTURE(bad);
        FrameScanner sc(1000);
        const Bytes buf = header('d', bad);  // the header alone is enough to judge
        size_t pos = 0;
        Frame f;
        REQUIRE(sc.next(buf, pos, f) == Status::Error);
        CHECK(pos == 0);
        CHECK(sc.bad_length() == bad);
        CHECK(sc.bad_type() == 'd');
    }
    SECTION("a watched type is checked too") {
        FrameScanner sc(1000);
        sc.watch('K');
        const Bytes buf = header('K', 2);
        size_t pos = 0;
        Frame f;
        REQUIRE(sc.next(buf, pos, f) == Status::Error);
        CHECK(sc.bad_length() == 2);
        CHECK(sc.bad_type() == 'K');
    }
}

TEST_CASE("FrameScanner: a bad header right after a streamed body", "[protocol][frames]") {
    // The rest of the streamed body is forwardable; the bad header is not.
    const Bytes first = frame('D', Bytes(20, 'a'));
    const Bytes input = concat({first, header('X', 2)});
    FrameScanner sc(1000);
    size_t pos = 0;
    Frame f;
    REQUIRE(sc.next(std::span<const uint8_t>(input).first(10), pos, f) == Status::Frame);
    CHECK_FALSE(f.complete);
    CHECK(pos == 10);
    // Next read: the remaining 15 body bytes and the bad header.
    const auto rest = std::span<const uint8_t>(input).subspan(10);
    pos = 0;
    REQUIRE(sc.next(rest, pos, f) == Status::Error);
    CHECK(pos == first.size() - 10);
    CHECK(sc.bad_type() == 'X');
    CHECK(sc.bad_length() == 2);
    CHECK(sc.at_boundary());
}

TEST_CASE("FrameScanner: split at every byte across two buffers", "[protocol][frames]") {
    const Bytes& input = backend_stream();
    const bool watch = GENERATE(false, true);
    CAPTURE(watch);
    for (size_t k = 0; k <= input.size(); ++k) {
        CAPTURE(k);
        Relay r(1 << 20);
        if (watch) {
            r.scanner.watch('K');
            r.scanner.watch('Z');
            r.scanner.watch('E');
        }
        r.feed(std::span<const uint8_t>(input).first(k));
        r.feed(std::span<const uint8_t>(input).subspan(k));
        REQUIRE_FALSE(r.error);
        REQUIRE(headers(r.seen) == kBackendHeaders);
        REQUIRE(r.forwarded == input);
        REQUIRE(r.carry.empty());
        REQUIRE(r.scanner.at_boundary());
        for (const auto& s : r.seen) {
            if (s.type == 'K' || s.type == 'Z' || s.type == 'E') {
                if (watch) REQUIRE(s.complete);
            }
        }
        if (watch) {
            // Watched frames' bodies decode even when the split fell inside them.
            REQUIRE(decode_backend_key_data(r.seen[3].body) == key4(1234, 0xcafebabe));
            REQUIRE(decode_ready_for_query(r.seen[4].body) == TxStatus::Idle);
            const auto err = decode_error_fields(r.seen[9].body);
            REQUIRE(err.has_value());
            REQUIRE(err->sqlstate == "42P01");
            REQUIRE(decode_ready_for_query(r.seen[10].body) == TxStatus::Failed);
        }
    }
}

TEST_CASE("FrameScanner: byte-at-a-time relay reports watched frames only whole", "[protocol][frames]") {
    const Bytes& input = backend_stream();
    Relay r(1 << 20);
    r.scanner.watch('K');
    r.scanner.watch('Z');
    r.scanner.watch('E');
    size_t max_carry = 0;
    for (uint8_t b : input) {
        r.feed(Bytes{b});
        max_carry = std::max(max_carry, r.carry.size());
    }
    REQUIRE_FALSE(r.error);
    CHECK(headers(r.seen) == kBackendHeaders);
    CHECK(r.forwarded == input);
    CHECK(r.carry.empty());
    // Only watched frames are held back whole; the largest is the ErrorResponse.
    CHECK(max_carry == kBackendHeaders[9].second);
    for (const auto& s : r.seen) {
        CAPTURE(s.type);
        const bool watched = s.type == 'K' || s.type == 'Z' || s.type == 'E';
        if (watched) {
            CHECK(s.complete);
        } else if (s.length > 4) {
            // Reported as soon as its header arrived, before its body.
            CHECK_FALSE(s.complete);
        }
    }
    CHECK(decode_backend_key_data(r.seen[3].body) == key4(1234, 0xcafebabe));
}

TEST_CASE("FrameScanner holds back an incomplete watched frame", "[protocol][frames]") {
    const Bytes bkd = backend_key_data(7, 8);
    FrameScanner sc(1 << 20);
    sc.watch('K');
    for (size_t k = 0; k < bkd.size(); ++k) {
        CAPTURE(k);
        size_t pos = 0;
        Frame f;
        REQUIRE(sc.next(std::span<const uint8_t>(bkd).first(k), pos, f) == Status::NeedMore);
        REQUIRE(pos == 0);
        REQUIRE(sc.at_boundary());
    }
    size_t pos = 0;
    Frame f;
    REQUIRE(sc.next(bkd, pos, f) == Status::Frame);
    CHECK(f.complete);
    CHECK(pos == bkd.size());
}

TEST_CASE("FrameScanner streams a large unwatched frame across many buffers", "[protocol][frames]") {
    const size_t body_size = 100000;
    Bytes body(body_size);
    for (size_t i = 0; i < body_size; ++i) body[i] = uint8_t(i * 7 + 3);
    const Bytes input = concat({frame('d', body), ready_for_query('T')});

    FrameScanner sc(1 << 20);
    sc.watch('Z');
    const size_t chunk = 4096;
    Bytes carry;
    Bytes forwarded;
    std::vector<Frame> frames;
    std::vector<Bytes> watched_bodies;
    size_t rounds = 0;
    for (size_t off = 0; off < input.size(); off += chunk) {
        ++rounds;
        const size_t n = std::min(chunk, input.size() - off);
        carry.insert(carry.end(), input.begin() + long(off), input.begin() + long(off + n));
        size_t pos = 0;
        for (int guard = 0;; ++guard) {
            REQUIRE(guard < 4);
            Frame f;
            const Status st = sc.next(carry, pos, f);
            REQUIRE(st != Status::Error);
            if (st == Status::NeedMore) break;
            frames.push_back(f);
            if (f.complete) {
                const auto b = f.body(carry);
                watched_bodies.emplace_back(b.begin(), b.end());
            }
        }
        const bool last = off + n == input.size();
        // Mid-frame, every byte handed over is forwardable at once.
        if (!last) {
            CHECK(pos == carry.size());
            CHECK_FALSE(sc.at_boundary());
        } else {
            CHECK(sc.at_boundary());
        }
        forwarded.insert(forwarded.end(), carry.begin(), carry.begin() + long(pos));
        carry.erase(carry.begin(), carry.begin() + long(pos));
    }
    CHECK(rounds > 20);
    REQUIRE(frames.size() == 2);
    CHECK(frames[0].type == 'd');
    CHECK(frames[0].length == body_size + 4);
    CHECK_FALSE(frames[0].complete);
    CHECK(frames[1].type == 'Z');
    CHECK(frames[1].complete);
    REQUIRE(watched_bodies.size() == 1);
    CHECK(decode_ready_for_query(watched_bodies[0]) == TxStatus::InTransaction);
    CHECK(forwarded == input);
    CHECK(carry.empty());
}

TEST_CASE("FrameScanner streams a frame whose header and body end exactly at a buffer edge", "[protocol][frames]") {
    // Body ends exactly where the first buffer ends; the next frame's header
    // straddles the second and third buffers.
    const Bytes input = concat({frame('D', Bytes(20, 'a')), ready_for_query('I')});
    Relay r(1 << 20);
    r.feed(std::span<const uint8_t>(input).first(10));
    CHECK_FALSE(r.scanner.at_boundary());
    r.feed(std::span<const uint8_t>(input).subspan(10, 15));  // ends at 25 == frame end
    CHECK(r.scanner.at_boundary());
    CHECK(r.carry.empty());
    r.feed(std::span<const uint8_t>(input).subspan(25, 2));
    CHECK(r.carry.size() == 2);
    r.feed(std::span<const uint8_t>(input).subspan(27));
    REQUIRE(r.seen.size() == 2);
    CHECK(r.seen[1].type == 'Z');
    CHECK(r.forwarded == input);
}

TEST_CASE("FrameScanner streams a watched frame bigger than max_watched_length", "[protocol][frames]") {
    const Bytes big = frame('E', error_fields({{'S', "ERROR"}, {'C', "XX000"}, {'M', std::string(200, 'm')}}));
    const Bytes input = concat({big, ready_for_query('I')});
    Relay r(1 << 20, /*max_watched=*/64);
    r.scanner.watch('E');
    r.scanner.watch('Z');
    size_t max_carry = 0;
    for (size_t off = 0; off < input.size(); off += 32) {
        r.feed(std::span<const uint8_t>(input).subspan(off, std::min<size_t>(32, input.size() - off)));
        max_carry = std::max(max_carry, r.carry.size());
        if (off + 32 < big.size()) CHECK_FALSE(r.scanner.at_boundary());
    }
    REQUIRE_FALSE(r.error);
    REQUIRE(r.seen.size() == 2);
    CHECK(r.seen[0].type == 'E');
    CHECK(r.seen[0].length == big.size() - 1);
    CHECK_FALSE(r.seen[0].complete);  // streamed, not held back
    CHECK(r.seen[1].type == 'Z');
    CHECK(r.seen[1].complete);
    CHECK(max_carry < 64);  // never buffered the big frame
    CHECK(r.forwarded == input);

    SECTION("a watched frame of exactly max_watched_length is held back whole") {
        Bytes body(60, 'x');
        const Bytes exact = frame('E', body);  // length word 64
        Relay e(1 << 20, 64);
        e.scanner.watch('E');
        e.feed(std::span<const uint8_t>(exact).first(40));
        CHECK(e.seen.empty());
        CHECK(e.carry.size() == 40);
        e.feed(std::span<const uint8_t>(exact).subspan(40));
        REQUIRE(e.seen.size() == 1);
        CHECK(e.seen[0].complete);
        CHECK(e.seen[0].body == body);
    }
}

// ---------------------------------------------------------------------------
// Decoders

TEST_CASE("decode_backend_key_data", "[protocol][frames][decode]") {
    Bytes body;
    put_u32(body, 4321);
    put_u32(body, 0x89abcdef);
    CHECK(decode_backend_key_data(body) == key4(4321, 0x89abcdef));
    CHECK_FALSE(decode_backend_key_data(std::span<const uint8_t>(body).first(7)).has_value());
    // Protocol 3.2: a longer secret is the secret.
    body.push_back(0);
    REQUIRE(decode_backend_key_data(body).has_value());
    CHECK(decode_backend_key_data(body)->secret == std::string("\x89\xab\xcd\xef\0", 5));
    CHECK_FALSE(decode_backend_key_data({}).has_value());
}

TEST_CASE("decode_ready_for_query", "[protocol][frames][decode]") {
    CHECK(decode_ready_for_query(Bytes{'I'}) == TxStatus::Idle);
    CHECK(decode_ready_for_query(Bytes{'T'}) == TxStatus::InTransaction);
    CHECK(decode_ready_for_query(Bytes{'E'}) == TxStatus::Failed);
    CHECK_FALSE(decode_ready_for_query(Bytes{'X'}).has_value());
    CHECK_FALSE(decode_ready_for_query(Bytes{'i'}).has_value());
    CHECK_FALSE(decode_ready_for_query(Bytes{0}).has_value());
    CHECK_FALSE(decode_ready_for_query(Bytes{}).has_value());
    CHECK_FALSE(decode_ready_for_query(Bytes{'I', 'I'}).has_value());
}

TEST_CASE("decode_error_fields", "[protocol][frames][decode]") {
    SECTION("all fields, V preferred over S") {
        const Bytes body = error_fields({{'S', "FEHLER"},
                                         {'V', "ERROR"},
                                         {'C', "23505"},
                                         {'M', "duplicate key value"},
                                         {'D', "Key (id)=(1) already exists."},
                                         {'n', "t_pkey"}});
        const auto f = decode_error_fields(body);
        REQUIRE(f.has_value());
        CHECK(f->severity == "ERROR");
        CHECK(f->sqlstate == "23505");
        CHECK(f->message == "duplicate key value");
    }
    SECTION("V preferred over S whatever the order") {
        // The decoded fields view the body: keep it alive.
        const Bytes body = error_fields({{'V', "FATAL"}, {'S', "SCHWERWIEGEND"}, {'C', "57P01"}});
        const auto f = decode_error_fields(body);
        REQUIRE(f.has_value());
        CHECK(f->severity == "FATAL");
        CHECK(f->sqlstate == "57P01");
        CHECK(f->message.empty());
    }
    SECTION("S used when there is no V (servers before 9.6)") {
        const Bytes body = error_fields({{'S', "WARNING"}, {'C', "01000"}, {'M', "careful"}});
        const auto f = decode_error_fields(body);
        REQUIRE(f.has_value());
        CHECK(f->severity == "WARNING");
        CHECK(f->message == "careful");
    }
    SECTION("just the terminator") {
        const Bytes body{0};
        const auto f = decode_error_fields(body);
        REQUIRE(f.has_value());
        CHECK(f->severity.empty());
        CHECK(f->sqlstate.empty());
        CHECK(f->message.empty());
    }
    SECTION("missing final terminator") {
        CHECK_FALSE(decode_error_fields(error_fields({{'S', "ERROR"}, {'C', "XX000"}}, false)).has_value());
    }
    SECTION("unterminated field value") {
        Bytes body = error_fields({{'S', "ERROR"}}, false);
        body.push_back('M');
        body.push_back('x');
        CHECK_FALSE(decode_error_fields(body).has_value());
    }
    SECTION("field code with nothing after it") {
        Bytes body = error_fields({{'S', "ERROR"}}, false);
        body.push_back('M');
        CHECK_FALSE(decode_error_fields(body).has_value());
    }
    SECTION("bytes after the terminator") {
        Bytes body = error_fields({{'S', "ERROR"}});
        body.push_back('M');
        CHECK_FALSE(decode_error_fields(body).has_value());
    }
    SECTION("empty body") { CHECK_FALSE(decode_error_fields(Bytes{}).has_value()); }
}

TEST_CASE("decode_parameter_status", "[protocol][frames][decode]") {
    Bytes body;
    put_cstring(body, "TimeZone");
    put_cstring(body, "Europe/Berlin");
    auto p = decode_parameter_status(body);
    REQUIRE(p.has_value());
    CHECK(p->name == "TimeZone");
    CHECK(p->value == "Europe/Berlin");

    Bytes empty_value;
    put_cstring(empty_value, "application_name");
    put_cstring(empty_value, "");
    p = decode_parameter_status(empty_value);
    REQUIRE(p.has_value());
    CHECK(p->name == "application_name");
    CHECK(p->value.empty());

    Bytes missing_value;
    put_cstring(missing_value, "is_superuser");
    CHECK_FALSE(decode_parameter_status(missing_value).has_value());

    Bytes unterminated_value = missing_value;
    unterminated_value.push_back('o');
    unterminated_value.push_back('n');
    CHECK_FALSE(decode_parameter_status(unterminated_value).has_value());

    Bytes trailing = body;
    trailing.push_back('x');
    CHECK_FALSE(decode_parameter_status(trailing).has_value());

    Bytes no_nul = {'a', 'b', 'c'};
    CHECK_FALSE(decode_parameter_status(no_nul).has_value());
    const Bytes nothing{};
    CHECK_FALSE(decode_parameter_status(nothing).has_value());
}

TEST_CASE("rewrite_backend_key_data rewrites the key in place", "[protocol][frames][decode]") {
    Bytes buf = concat({parameter_status("a", "b"), backend_key_data(1111, 2222), ready_for_query('I')});
    const Bytes original = buf;
    FrameScanner sc(1 << 20);
    sc.watch('K');
    size_t pos = 0;
    Frame f;
    REQUIRE(sc.next(buf, pos, f) == Status::Frame);
    REQUIRE(sc.next(buf, pos, f) == Status::Frame);
    REQUIRE(f.type == 'K');
    REQUIRE(f.complete);
    const auto body = f.body(buf);
    REQUIRE(decode_backend_key_data(body) == key4(1111, 2222));

    const CancelKey mine = key4(-5, 0x80000000);
    CHECK(rewrite_backend_key_data(body, mine));
    CHECK(decode_backend_key_data(body) == mine);
    // Only the 8 key bytes changed.
    REQUIRE(buf.size() == original.size());
    for (size_t i = 0; i < buf.size(); ++i) {
        const bool in_key = i >= f.offset + 5 && i < f.offset + 13;
        if (!in_key) REQUIRE(buf[i] == original[i]);
    }
    // Round trip back to the backend's key restores the original bytes.
    rewrite_backend_key_data(body, key4(1111, 2222));
    CHECK(buf == original);

    // A body of the wrong size is left alone.
    Bytes short_body = {1, 2, 3, 4, 5, 6, 7};
    CHECK_FALSE(rewrite_backend_key_data(short_body, mine));
    CHECK(short_body == Bytes{1, 2, 3, 4, 5, 6, 7});
    // A 3.2 key of the same length replaces a long one; a 4-byte one does not fit.
    Bytes long_body(4 + 32, 7);
    REQUIRE(decode_backend_key_data(long_body).has_value());
    CHECK(decode_backend_key_data(long_body)->secret.size() == 32);
    CHECK_FALSE(rewrite_backend_key_data(long_body, mine));
    const CancelKey long_mine{99, std::string(32, 'z')};
    CHECK(rewrite_backend_key_data(long_body, long_mine));
    CHECK(decode_backend_key_data(long_body) == long_mine);
    // Secrets beyond 3.2's 256 bytes, or under 4, are not BackendKeyData.
    CHECK_FALSE(decode_backend_key_data(Bytes(4 + 257, 1)).has_value());
    CHECK(decode_backend_key_data(Bytes(4 + 256, 1)).has_value());
    CHECK_FALSE(decode_backend_key_data(Bytes(4 + 3, 1)).has_value());
}

TEST_CASE("to_string names message types", "[protocol][frames]") {
    CHECK(to_string(BackendType::BackendKeyData) == "BackendKeyData");
    CHECK(to_string(BackendType::ReadyForQuery) == "ReadyForQuery");
    CHECK(to_string(BackendType::ErrorResponse) == "ErrorResponse");
    CHECK(to_string(FrontendType::Query) == "Query");
    CHECK(to_string(FrontendType::Terminate) == "Terminate");
    CHECK(to_string(static_cast<BackendType>('?')) == "unknown");
    CHECK(to_string(static_cast<FrontendType>('?')) == "unknown");
}

TEST_CASE("sasl_without_mechanism drops SCRAM-SHA-256-PLUS from AuthenticationSASL", "[protocol][frames]") {
    auto body_of = [](uint32_t code, const std::string& list) {
        Bytes b(4);
        write_u32(b.data(), code);
        b.insert(b.end(), list.begin(), list.end());
        return b;
    };
    using namespace std::string_literals;
    const Bytes both = body_of(10, "SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"s);
    auto out = sasl_without_mechanism(both, "SCRAM-SHA-256-PLUS");
    REQUIRE(out);
    // 'R', length 4 + 4 + "SCRAM-SHA-256\0" + "\0" = 23, code 10.
    CHECK(*out == "R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0"s);

    // The order does not matter; other mechanisms stay.
    out = sasl_without_mechanism(body_of(10, "X\0SCRAM-SHA-256-PLUS\0Y\0\0"s), "SCRAM-SHA-256-PLUS");
    REQUIRE(out);
    CHECK(out->substr(9) == "X\0Y\0\0"s);

    // Nothing to drop, or not AuthenticationSASL, or malformed: left alone.
    CHECK_FALSE(sasl_without_mechanism(body_of(10, "SCRAM-SHA-256\0\0"s), "SCRAM-SHA-256-PLUS"));
    CHECK_FALSE(sasl_without_mechanism(body_of(5, "SCRAM-SHA-256-PLUS\0\0"s), "SCRAM-SHA-256-PLUS"));
    CHECK_FALSE(sasl_without_mechanism(body_of(10, "SCRAM-SHA-256-PLUS\0"s), "SCRAM-SHA-256-PLUS"));  // no terminator
    CHECK_FALSE(sasl_without_mechanism(body_of(10, "SCRAM-SHA-256-PLUS"s), "SCRAM-SHA-256-PLUS"));
    CHECK_FALSE(sasl_without_mechanism(body_of(10, "SCRAM-SHA-256-PLUS\0\0junk\0"s), "SCRAM-SHA-256-PLUS"));
    CHECK_FALSE(sasl_without_mechanism(Bytes{0, 0, 0}, "SCRAM-SHA-256-PLUS"));
    // Every truncation of a valid body is handled without reading past it.
    for (size_t n = 0; n < both.size(); ++n)
        CHECK_FALSE(sasl_without_mechanism(std::span<const uint8_t>(both.data(), n), "SCRAM-SHA-256-PLUS"));
}
