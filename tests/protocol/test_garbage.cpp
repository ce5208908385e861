// Robustness: fixed-seed random and mutated input through parse_startup, StartupOp
// and FrameScanner. Nothing may crash, loop forever, or claim to consume more
// bytes than it was given; results must agree with simple models of the rules.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "protocol/frames.hpp"
#include "protocol/messages.hpp"
#include "protocol/startup.hpp"

using namespace pgrelay::protocol;

namespace {

using Bytes = std::vector<uint8_t>;
using Rng = std::mt19937;

constexpr int kRounds = 6000;

size_t uniform(Rng& rng, size_t lo, size_t hi) { return std::uniform_int_distribution<size_t>(lo, hi)(rng); }
bool coin(Rng& rng, int percent) { return uniform(rng, 0, 99) < size_t(percent); }

void put_u32(Bytes& b, uint32_t v) {
    b.push_back(uint8_t(v >> 24));
    b.push_back(uint8_t(v >> 16));
    b.push_back(uint8_t(v >> 8));
    b.push_back(uint8_t(v));
}

// Random bytes; half the time biased towards NULs and letters so that
// parameter lists and C strings have a chance to be (almost) well formed.
Bytes random_bytes(Rng& rng, size_t n) {
    Bytes b(n);
    const bool biased = coin(rng, 50);
    for (auto& c : b) {
        if (!biased) {
            c = uint8_t(uniform(rng, 0, 255));
        } else {
            const size_t r = uniform(rng, 0, 9);
            c = r < 3 ? 0 : r < 9 ? uint8_t('a' + uniform(rng, 0, 25)) : uint8_t(uniform(rng, 0, 255));
        }
    }
    return b;
}

Bytes startup_message(Rng& rng) {
    Bytes b(4, 0);
    put_u32(b, kProtocolV3 | uint32_t(uniform(rng, 0, 2)));
    const size_t n = uniform(rng, 0, 4);
    const bool with_user = coin(rng, 90);
    if (with_user) {
        for (char c : std::string("user")) b.push_back(uint8_t(c));
        b.push_back(0);
        for (size_t i = 0, m = uniform(rng, 1, 12); i < m; ++i) b.push_back(uint8_t('a' + uniform(rng, 0, 25)));
        b.push_back(0);
    }
    for (size_t p = 0; p < n; ++p) {
        for (size_t i = 0, m = uniform(rng, 1, 10); i < m; ++i) b.push_back(uint8_t('a' + uniform(rng, 0, 25)));
        b.push_back(0);
        for (size_t i = 0, m = uniform(rng, 0, 20); i < m; ++i) b.push_back(uint8_t(' ' + uniform(rng, 0, 94)));
        b.push_back(0);
    }
    b.push_back(0);
    write_u32(b.data(), uint32_t(b.size()));
    return b;
}

Bytes request(uint32_t code) {
    Bytes b;
    put_u32(b, 8);
    put_u32(b, code);
    return b;
}

// Protocol 3.0's 4-byte secret, or 3.2's longer one (1 to 253 bytes past 3.0's,
// just inside and beyond the 256-byte limit).
Bytes cancel_request(Rng& rng) {
    Bytes b;
    const size_t secret = uniform(rng, 0, 1) ? 4 : size_t(uniform(rng, 5, 260));
    put_u32(b, uint32_t(12 + secret));
    put_u32(b, kCancelRequestCode);
    put_u32(b, uint32_t(rng()));
    for (size_t i = 0; i < secret; ++i) b.push_back(uint8_t(rng()));
    return b;
}

// A valid-looking length word and a code drawn from the interesting ones, then
// random bytes; the buffer may be shorter or longer than the length says.
Bytes plausible_startup(Rng& rng) {
    static const uint32_t codes[] = {kProtocolV3, kProtocolV3 | 1u, kSSLRequestCode, kGSSENCRequestCode,
                                     kCancelRequestCode, kPeerCancelRequestCode, 2u << 16, (1234u << 16) | 1234u, 0};
    const uint32_t code = coin(rng, 85) ? codes[uniform(rng, 0, std::size(codes) - 1)] : uint32_t(rng());
    uint32_t len;
    switch (uniform(rng, 0, 9)) {
        case 0: len = uint32_t(uniform(rng, 0, 7)); break;
        case 1: len = uint32_t(uniform(rng, 10001, 20000)); break;
        case 2: len = uint32_t(rng()); break;
        case 3: len = code == kCancelRequestCode ? 16 : 8; break;
        default: len = uint32_t(uniform(rng, 8, 300)); break;
    }
    Bytes b;
    put_u32(b, len);
    put_u32(b, code);
    const size_t target = std::min<size_t>(len, 400);
    const size_t total = coin(rng, 70) ? target : uniform(rng, 0, target + 20);
    if (total > b.size()) {
        const Bytes rest = random_bytes(rng, total - b.size());
        b.insert(b.end(), rest.begin(), rest.end());
        if (coin(rng, 50) && b.size() >= 9 && b.size() == target) b.back() = 0;  // often a terminator
    } else {
        b.resize(total);
    }
    return b;
}

void mutate(Rng& rng, Bytes& b) {
    if (b.empty()) return;
    for (size_t i = 0, n = uniform(rng, 1, 4); i < n; ++i) {
        const size_t at = uniform(rng, 0, b.size() - 1);
        b[at] ^= uint8_t(uniform(rng, 1, 255));
    }
    if (coin(rng, 20)) b.resize(uniform(rng, 0, b.size()));
}

// A startup-phase byte stream: a few packets, some of them broken.
Bytes startup_stream(Rng& rng) {
    Bytes out;
    for (size_t i = 0, n = uniform(rng, 1, 4); i < n; ++i) {
        Bytes p;
        switch (uniform(rng, 0, 5)) {
            case 0: p = request(kSSLRequestCode); break;
            case 1: p = request(kGSSENCRequestCode); break;
            case 2: p = cancel_request(rng); break;
            case 3: p = plausible_startup(rng); break;
            default: p = startup_message(rng); break;
        }
        if (coin(rng, 15)) mutate(rng, p);
        out.insert(out.end(), p.begin(), p.end());
    }
    return out;
}

// What the rules of startup.hpp say about a buffer, checked against a result.
void check_startup_parse(std::span<const uint8_t> in, const StartupParse& p) {
    if (in.size() < 4) {
        REQUIRE(p.status == ParseStatus::NeedMore);
        return;
    }
    const uint32_t len = read_u32(in.data());
    const bool length_ok = len >= kMinStartupPacketLength && len <= kMaxStartupPacketLength;
    if (!length_ok) {
        REQUIRE(p.status == ParseStatus::Error);
    } else if (in.size() < len) {
        REQUIRE(p.status == ParseStatus::NeedMore);
    } else {
        REQUIRE(p.status != ParseStatus::NeedMore);
    }
    switch (p.status) {
        case ParseStatus::NeedMore:
            REQUIRE(p.packet.length == 0);
            break;
        case ParseStatus::Error:
            REQUIRE((std::string(p.sqlstate) == "08P01" || std::string(p.sqlstate) == "28000"));
            REQUIRE_FALSE(p.message.empty());
            break;
        case ParseStatus::Ok: {
            REQUIRE(p.packet.length == len);
            REQUIRE(p.packet.length <= in.size());
            const uint32_t code = read_u32(in.data() + 4);
            switch (p.packet.kind) {
                case StartupKind::SSLRequest:
                    REQUIRE(code == kSSLRequestCode);
                    REQUIRE(len == 8);
                    break;
                case StartupKind::GSSENCRequest:
                    REQUIRE(code == kGSSENCRequestCode);
                    REQUIRE(len == 8);
                    break;
                case StartupKind::CancelRequest:
                    REQUIRE((code == kCancelRequestCode || code == kPeerCancelRequestCode));
                    REQUIRE(p.packet.from_peer == (code == kPeerCancelRequestCode));
                    REQUIRE(len >= 16);
                    REQUIRE(len <= 12 + kMaxCancelSecret);
                    REQUIRE(p.packet.cancel_key.pid == int32_t(read_u32(in.data() + 8)));
                    REQUIRE(p.packet.cancel_key.secret ==
                            std::string(reinterpret_cast<const char*>(in.data() + 12), len - 12));
                    break;
                case StartupKind::StartupMessage: {
                    REQUIRE((code >> 16) == 3);
                    REQUIRE(p.packet.protocol_version == code);
                    REQUIRE_FALSE(p.packet.parameter("user").empty());
                    // Re-encoding the parameters gives back the packet's body.
                    size_t body = 8 + 1;
                    for (const auto& [k, v] : p.packet.parameters) body += k.size() + 1 + v.size() + 1;
                    REQUIRE(body == len);
                    REQUIRE(in[len - 1] == 0);
                    break;
                }
            }
            // Only the packet's own bytes matter: the exact packet parses the same.
            const StartupParse exact = parse_startup(in.first(len));
            REQUIRE(exact.status == ParseStatus::Ok);
            REQUIRE(exact.packet.kind == p.packet.kind);
            REQUIRE(exact.packet.parameters == p.packet.parameters);
            break;
        }
    }
}

struct Step {
    StartupOp::Kind kind;
    size_t consumed;
    char reply;
    std::string sqlstate;
    bool operator==(const Step&) const = default;
};

// Runs a StartupOp over `buf` delivered in the given chunk sizes, like a
// connection handler. Returns the actions taken (ReadMore excluded).
std::vector<Step> run_op(bool tls, std::span<const uint8_t> input, const std::vector<size_t>& chunk_sizes) {
    StartupOp op({.tls_available = tls});
    std::vector<Step> steps;
    Bytes buf;
    size_t fed = 0;
    size_t dropped = 0;
    size_t calls = 0;
    for (size_t ci = 0; ci < chunk_sizes.size() && fed < input.size(); ++ci) {
        const size_t n = std::min(chunk_sizes[ci], input.size() - fed);
        buf.insert(buf.end(), input.begin() + long(fed), input.begin() + long(fed + n));
        fed += n;
        for (;;) {
            // Each non-ReadMore step consumes >= 8 bytes or ends the operation.
            REQUIRE(++calls <= input.size() + chunk_sizes.size() + 4);
            const StartupOp::Action a = op.next(buf);
            REQUIRE(a.consumed <= buf.size());
            if (a.kind == StartupOp::Kind::ReadMore) {
                REQUIRE(a.consumed == 0);
                break;
            }
            steps.push_back({a.kind, a.consumed, a.reply, a.sqlstate});
            if (a.kind == StartupOp::Kind::Close) {
                REQUIRE_FALSE(std::string(a.sqlstate).empty());
                REQUIRE_FALSE(a.message.empty());
            }
            if (a.kind == StartupOp::Kind::Reply) {
                REQUIRE(a.consumed == 8);
                REQUIRE(a.reply == 'N');
            }
            if (a.kind == StartupOp::Kind::Cancel) {
                REQUIRE(a.consumed >= 12 + kMinCancelSecret);
                REQUIRE(a.consumed <= 12 + kMaxCancelSecret);
            }
            if (a.kind == StartupOp::Kind::Forward || a.kind == StartupOp::Kind::Cancel) {
                REQUIRE(a.packet != nullptr);
                REQUIRE(a.packet->length == a.consumed);
            }
            buf.erase(buf.begin(), buf.begin() + long(a.consumed));
            dropped += a.consumed;
            REQUIRE(dropped <= fed);
            if (a.kind != StartupOp::Kind::Reply) return steps;
            // At most one SSL and one GSSENC answer per connection.
            REQUIRE(steps.size() <= 2);
        }
    }
    return steps;
}

std::vector<size_t> random_chunks(Rng& rng, size_t total) {
    std::vector<size_t> sizes;
    size_t sum = 0;
    while (sum < total) {
        const size_t n = coin(rng, 30) ? 1 : uniform(rng, 1, 40);
        sizes.push_back(n);
        sum += n;
    }
    if (sizes.empty()) sizes.push_back(0);
    return sizes;
}

// Reference walk of a single buffer by the framing rules, for an unwatched
// scanner: (offset, type, length) of each header seen, and whether it ended in Error.
struct Walk {
    std::vector<std::tuple<size_t, char, uint32_t>> frames;
    bool error = false;
    size_t end = 0;
};
Walk reference_walk(std::span<const uint8_t> buf, uint32_t max_frame) {
    Walk w;
    size_t pos = 0;
    while (buf.size() - pos >= 5) {
        const uint32_t len = read_u32(buf.data() + pos + 1);
        if (len < 4 || len > max_frame) {
            w.error = true;
            break;
        }
        w.frames.emplace_back(pos, char(buf[pos]), len);
        pos += std::min<size_t>(size_t(len) + 1, buf.size() - pos);
    }
    w.end = pos;
    return w;
}

struct ScannerSetup {
    uint32_t max_frame;
    uint32_t max_watched;
    std::string watched;
};

ScannerSetup random_setup(Rng& rng) {
    static const uint32_t maxes[] = {4, 5, 16, 64, 300, 1u << 20, 0xffffffffu};
    ScannerSetup s{maxes[uniform(rng, 0, std::size(maxes) - 1)], uint32_t(uniform(rng, 4, 128)), {}};
    for (size_t i = 0, n = uniform(rng, 0, 3); i < n; ++i) s.watched.push_back(char(uniform(rng, 0, 255)));
    if (coin(rng, 50)) s.watched += "KZE";
    return s;
}

FrameScanner make_scanner(const ScannerSetup& s) {
    FrameScanner sc(s.max_frame, s.max_watched);
    for (char c : s.watched) sc.watch(c);
    return sc;
}

// Feeds `input` in chunks with the carry-over protocol. Checks the scanner's
// promises on every call and that forwarded + carried bytes are the input.
struct RelayResult {
    std::vector<std::pair<char, uint32_t>> headers;
    Bytes forwarded;
    bool error = false;
};
RelayResult relay(const ScannerSetup& setup, std::span<const uint8_t> input, const std::vector<size_t>& chunks) {
    FrameScanner sc = make_scanner(setup);
    RelayResult r;
    Bytes carry;
    size_t fed = 0;
    for (size_t ci = 0; ci < chunks.size() && fed < input.size() && !r.error; ++ci) {
        const size_t n = std::min(chunks[ci], input.size() - fed);
        carry.insert(carry.end(), input.begin() + long(fed), input.begin() + long(fed + n));
        fed += n;
        size_t pos = 0;
        size_t iterations = 0;
        for (;;) {
            REQUIRE(++iterations <= carry.size() + 2);
            Frame f;
            const size_t before = pos;
            const FrameScanner::Status st = sc.next(carry, pos, f);
            REQUIRE(pos >= before);
            REQUIRE(pos <= carry.size());
            if (st == FrameScanner::Status::NeedMore) break;
            if (st == FrameScanner::Status::Error) {
                // pos may have moved over the rest of a streamed body; it now
                // points at the offending header, which is not consumed.
                REQUIRE(carry.size() - pos >= 5);
                REQUIRE(sc.bad_type() == char(carry[pos]));
                REQUIRE(sc.bad_length() == read_u32(carry.data() + pos + 1));
                REQUIRE(sc.at_boundary());
                REQUIRE((sc.bad_length() < 4 || sc.bad_length() > setup.max_frame));
                r.error = true;
                break;
            }
            REQUIRE(f.length >= 4);
            REQUIRE(f.length <= setup.max_frame);
            REQUIRE(f.offset >= before);
            REQUIRE(f.offset + 5 <= pos);
            REQUIRE(pos - f.offset <= f.wire_size());
            REQUIRE(f.complete == (pos - f.offset == f.wire_size()));
            if (f.complete) REQUIRE(f.body(carry).size() == f.length - 4);
            if (setup.watched.find(f.type) != std::string::npos && f.length <= setup.max_watched)
                REQUIRE(f.complete);
            REQUIRE(sc.at_boundary() == f.complete);
            r.headers.emplace_back(f.type, f.length);
        }
        r.forwarded.insert(r.forwarded.end(), carry.begin(), carry.begin() + long(pos));
        carry.erase(carry.begin(), carry.begin() + long(pos));
        REQUIRE(r.forwarded.size() + carry.size() == fed);
    }
    REQUIRE(std::equal(r.forwarded.begin(), r.forwarded.end(), input.begin()));
    return r;
}

// A stream of well-formed frames with random types and plausible lengths; their
// headers are returned in `headers`.
Bytes frame_stream(Rng& rng, uint32_t max_len, std::vector<std::pair<char, uint32_t>>& headers) {
    Bytes out;
    for (size_t i = 0, n = uniform(rng, 1, 8); i < n; ++i) {
        const char type = coin(rng, 50) ? "KZEDSTCR"[uniform(rng, 0, 7)] : char(uniform(rng, 0, 255));
        const uint32_t len = uint32_t(uniform(rng, 4, std::min<uint32_t>(max_len, 80)));
        out.push_back(uint8_t(type));
        put_u32(out, len);
        const Bytes body = random_bytes(rng, len - 4);
        out.insert(out.end(), body.begin(), body.end());
        headers.emplace_back(type, len);
    }
    return out;
}

}  // namespace

TEST_CASE("garbage: parse_startup on random buffers", "[protocol][garbage]") {
    Rng rng(20240611);
    for (int i = 0; i < kRounds; ++i) {
        const Bytes b = random_bytes(rng, uniform(rng, 0, 300));
        CAPTURE(i, b.size());
        check_startup_parse(b, parse_startup(b));
    }
}

TEST_CASE("garbage: parse_startup on plausible headers with random contents", "[protocol][garbage]") {
    Rng rng(7);
    int ok = 0, errors = 0, need_more = 0;
    for (int i = 0; i < kRounds; ++i) {
        const Bytes b = plausible_startup(rng);
        CAPTURE(i, b.size());
        const StartupParse p = parse_startup(b);
        check_startup_parse(b, p);
        ok += p.status == ParseStatus::Ok;
        errors += p.status == ParseStatus::Error;
        need_more += p.status == ParseStatus::NeedMore;
    }
    // The generator must reach every outcome, or the test proves little.
    CHECK(ok > 100);
    CHECK(errors > 100);
    CHECK(need_more > 100);
}

TEST_CASE("garbage: parse_startup on mutated valid packets", "[protocol][garbage]") {
    Rng rng(99);
    for (int i = 0; i < kRounds; ++i) {
        Bytes b;
        switch (uniform(rng, 0, 3)) {
            case 0: b = request(kSSLRequestCode); break;
            case 1: b = cancel_request(rng); break;
            default: b = startup_message(rng); break;
        }
        const Bytes original = b;
        check_startup_parse(original, parse_startup(original));
        REQUIRE(parse_startup(original).status != ParseStatus::NeedMore);
        mutate(rng, b);
        CAPTURE(i, b.size());
        check_startup_parse(b, parse_startup(b));
    }
}

TEST_CASE("garbage: StartupOp on random and mutated streams terminates", "[protocol][garbage]") {
    Rng rng(31337);
    int forwarded = 0, closed = 0, cancelled = 0;
    // kRounds each of: random bytes, a plausible header, a stream of (mutated) packets.
    for (int i = 0; i < 3 * kRounds; ++i) {
        Bytes b;
        switch (i % 3) {
            case 0: b = random_bytes(rng, uniform(rng, 0, 300)); break;
            case 1: b = plausible_startup(rng); break;
            default: b = startup_stream(rng); break;
        }
        const bool tls = coin(rng, 30);
        CAPTURE(i, b.size(), tls);
        const auto whole = run_op(tls, b, {b.size()});
        if (!whole.empty()) {
            forwarded += whole.back().kind == StartupOp::Kind::Forward;
            closed += whole.back().kind == StartupOp::Kind::Close;
            cancelled += whole.back().kind == StartupOp::Kind::Cancel;
        }
        if (!tls) {
            // Without TLS the outcome does not depend on how the bytes arrive.
            const auto chunked = run_op(tls, b, random_chunks(rng, b.size()));
            REQUIRE(chunked == whole);
        }
    }
    CHECK(forwarded > 100);
    CHECK(closed > 100);
    CHECK(cancelled > 100);
}

TEST_CASE("garbage: FrameScanner on random buffers terminates and agrees with the framing rules",
          "[protocol][garbage]") {
    Rng rng(4242);
    for (int i = 0; i < kRounds; ++i) {
        const ScannerSetup setup = random_setup(rng);
        const Bytes b = random_bytes(rng, uniform(rng, 0, 300));
        CAPTURE(i, b.size(), setup.max_frame, setup.max_watched);
        // One buffer, nothing watched: compare with the reference walk.
        FrameScanner sc(setup.max_frame, setup.max_watched);
        size_t pos = 0;
        size_t iterations = 0;
        std::vector<std::tuple<size_t, char, uint32_t>> seen;
        FrameScanner::Status st;
        Frame f;
        while ((st = sc.next(b, pos, f)) == FrameScanner::Status::Frame) {
            REQUIRE(++iterations <= b.size() + 2);
            REQUIRE(pos <= b.size());
            seen.emplace_back(f.offset, f.type, f.length);
        }
        REQUIRE(pos <= b.size());
        const Walk w = reference_walk(b, setup.max_frame);
        REQUIRE(seen == w.frames);
        REQUIRE((st == FrameScanner::Status::Error) == w.error);
        REQUIRE(pos == w.end);
        // The same bytes in random chunks with the carry-over protocol.
        relay(setup, b, random_chunks(rng, b.size()));
    }
}

TEST_CASE("garbage: FrameScanner on plausible frame streams, whole and chunked", "[protocol][garbage]") {
    Rng rng(8086);
    int with_watched = 0;
    for (int i = 0; i < kRounds; ++i) {
        ScannerSetup setup = random_setup(rng);
        setup.max_frame = std::max<uint32_t>(setup.max_frame, 4);
        std::vector<std::pair<char, uint32_t>> headers;
        const Bytes b = frame_stream(rng, std::min<uint32_t>(setup.max_frame, 1000), headers);
        CAPTURE(i, b.size(), setup.max_frame, setup.max_watched);
        const RelayResult whole = relay(setup, b, {b.size()});
        REQUIRE_FALSE(whole.error);
        REQUIRE(whole.headers == headers);
        REQUIRE(whole.forwarded == b);
        const RelayResult chunked = relay(setup, b, random_chunks(rng, b.size()));
        REQUIRE_FALSE(chunked.error);
        REQUIRE(chunked.headers == headers);
        REQUIRE(chunked.forwarded == b);
        with_watched += setup.watched.find('K') != std::string::npos;
    }
    CHECK(with_watched > 1000);
}

TEST_CASE("garbage: FrameScanner on mutated frame streams", "[protocol][garbage]") {
    Rng rng(1999);
    int errors = 0;
    for (int i = 0; i < kRounds; ++i) {
        const ScannerSetup setup = random_setup(rng);
        std::vector<std::pair<char, uint32_t>> headers;
        Bytes b = frame_stream(rng, 300, headers);
        mutate(rng, b);
        CAPTURE(i, b.size(), setup.max_frame, setup.max_watched);
        const RelayResult whole = relay(setup, b, {b.size()});
        const RelayResult chunked = relay(setup, b, random_chunks(rng, b.size()));
        // However the bytes arrive, the scanner sees the same headers, up to the
        // same error; an error stops forwarding at the same byte.
        REQUIRE(chunked.headers == whole.headers);
        REQUIRE(chunked.error == whole.error);
        if (whole.error) REQUIRE(chunked.forwarded == whole.forwarded);
        errors += whole.error;
    }
    CHECK(errors > 500);
}
