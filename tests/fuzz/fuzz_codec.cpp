// libFuzzer target for the sans-I/O protocol codec (protocol/), driven the way
// proxy/session.cpp drives it: the startup phase through StartupOp, then the
// regular phase through FrameScanner and a relay buffer, in both directions,
// with every decoder run on every whole frame. Beyond "does not crash", each run
// checks invariants against small reference models and aborts when one fails.
// The transaction pooling helpers (protocol/pooling.hpp) get the same input:
// their decoders on every frame body, parse_set and parse_startup_options on
// the stream's text, ResponseTracker on the stream read as a message sequence.
//
// Input layout (tests/fuzz/gen_corpus.py writes seeds in it):
//   [0] flags: bit 0 = client->backend scanner uses a large max_frame,
//              bit 1 = the fuzzer-configured scanner uses a large max_frame,
//              bit 2 = the encoder round trip on raw input bytes uses FATAL
//   [1] small max_frame = 4 + [1]
//   [2] fuzzer-configured scanner: max_watched = 12 + [2]
//   [3] its relay buffer size = max_watched + 1 + [3]
//   [4] its watched types: bit i watches "KZESRDCN"[i]
//   [5] k = [5] % 17, then k chunk sizes: byte b = b + 1 bytes, 255 = all the rest
//       (k = 0: the whole stream arrives at once); used cyclically
//   [6 + k ...] the byte stream, read as a client's stream (startup phase, then
//       frames) and as a backend's stream (frames).
#include <sanitizer/asan_interface.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/encode.hpp"
#include "protocol/frames.hpp"
#include "protocol/messages.hpp"
#include "protocol/pooling.hpp"
#include "protocol/startup.hpp"

using namespace pgrelay::protocol;

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            std::fprintf(stderr, "fuzz_codec: invariant failed at %s:%d: %s\n", __FILE__, \
                         __LINE__, #cond);                                               \
            std::abort();                                                                \
        }                                                                                \
    } while (0)

namespace {

using Bytes = std::span<const uint8_t>;

std::string_view chars(Bytes b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

// An exact-size heap copy, so that ASan flags any read past the end.
struct Exact {
    explicit Exact(Bytes b) : size(b.size()), data(new uint8_t[b.size()]) {
        if (size) std::memcpy(data.get(), b.data(), size);
    }
    std::span<uint8_t> span() { return {data.get(), size}; }
    size_t size;
    std::unique_ptr<uint8_t[]> data;
};

// Poisons [len, cap) of a relay buffer until lifted or destroyed: ASan then
// flags a read past the bytes that have arrived, as with an exact-size copy.
class PoisonTail {
public:
    PoisonTail(uint8_t* buf, size_t len, size_t cap) : buf_(buf), cap_(cap) {
        ASAN_POISON_MEMORY_REGION(buf + len, cap - len);
    }
    ~PoisonTail() { lift(); }
    PoisonTail(const PoisonTail&) = delete;
    PoisonTail& operator=(const PoisonTail&) = delete;
    void lift() { ASAN_UNPOISON_MEMORY_REGION(buf_, cap_); }

private:
    uint8_t* buf_;
    size_t cap_;
};

// Chunk lengths chosen by the input, used cyclically.
class Chunker {
public:
    explicit Chunker(Bytes sizes = {}) : sizes_(sizes) {}
    size_t next(size_t left) {
        if (sizes_.empty()) return left;
        const uint8_t s = sizes_[i_++ % sizes_.size()];
        return s == 255 ? left : std::min<size_t>(left, size_t(s) + 1);
    }

private:
    Bytes sizes_;
    size_t i_ = 0;
};

std::string without_nuls(std::string_view s) {
    std::string r(s);
    std::replace(r.begin(), r.end(), '\0', ' ');
    return r;
}

bool inside(std::string_view v, Bytes body) {
    const auto* b = reinterpret_cast<const char*>(body.data());
    return v.empty() || (v.data() >= b && v.data() + v.size() <= b + body.size());
}

// ---- Decoders --------------------------------------------------------------

struct Field {
    char code;
    std::string_view value;
};

// The ErrorResponse/NoticeResponse field list, read independently of
// decode_error_fields: code, C string, ..., then a lone NUL as the last byte.
std::optional<std::vector<Field>> reference_fields(std::string_view s) {
    std::vector<Field> fields;
    for (size_t pos = 0; pos < s.size();) {
        const char code = s[pos++];
        if (code == '\0') {
            if (pos != s.size()) return std::nullopt;
            return fields;
        }
        const size_t nul = s.find('\0', pos);
        if (nul == std::string_view::npos) return std::nullopt;
        fields.push_back({code, s.substr(pos, nul - pos)});
        pos = nul + 1;
    }
    return std::nullopt;
}

std::string_view last_field(const std::vector<Field>& fields, char code) {
    std::string_view v;
    for (const auto& f : fields)
        if (f.code == code) v = f.value;
    return v;
}

bool has_field(const std::vector<Field>& fields, char code) {
    return std::any_of(fields.begin(), fields.end(), [&](const Field& f) { return f.code == code; });
}

// The key pgrelay would hand out instead of the backend's (any bijection will do).
// Same secret length, as pgrelay's passthrough keys.
CancelKey other_key(CancelKey k) {
    for (char& c : k.secret) c = static_cast<char>(c ^ 0x5a);
    return {static_cast<int32_t>(~static_cast<uint32_t>(k.pid)), std::move(k.secret)};
}

// What a peer receives from encode_error_response must decode to what was encoded
// (NULs inside values become spaces), through FrameScanner and decode_error_fields.
void check_error_roundtrip(Severity severity, std::string_view sqlstate, std::string_view message,
                           std::string_view hint) {
    std::string out = "xyz";  // encoders append: the frame must not depend on what precedes it
    encode_error_response(out, severity, sqlstate, message, hint);
    Exact frame(Bytes(reinterpret_cast<const uint8_t*>(out.data()) + 3, out.size() - 3));
    FrameScanner sc(UINT32_MAX);
    sc.watch('E');
    size_t pos = 0;
    Frame f;
    CHECK(sc.next(frame.span(), pos, f) == FrameScanner::Status::Frame);
    CHECK(f.type == 'E' && f.complete && f.offset == 0 && pos == frame.size && f.wire_size() == frame.size);
    CHECK(sc.at_boundary());
    const auto body = f.body(frame.span());
    const auto e = decode_error_fields(body);
    CHECK(e.has_value());
    CHECK(e->severity == (severity == Severity::Fatal ? "FATAL" : "ERROR"));
    CHECK(e->sqlstate == without_nuls(sqlstate));
    CHECK(e->message == without_nuls(message));
    const auto fields = reference_fields(chars(body));
    CHECK(fields.has_value());
    CHECK(last_field(*fields, 'S') == e->severity);
    CHECK(has_field(*fields, 'H') == !hint.empty());
    CHECK(last_field(*fields, 'H') == without_nuls(hint));
}

// Every decoder on every whole frame body, whatever its type.
void check_decoders(Bytes frame_body) {
    Exact copy(frame_body);
    const std::span<uint8_t> body = copy.span();
    const size_t n = body.size();

    // BackendKeyData: an int32 and a secret of 4 (3.0) to 256 (3.2) bytes;
    // re-encoding gives the frame back.
    const auto key = decode_backend_key_data(body);
    CHECK(key.has_value() == (n >= 4 + kMinCancelSecret && n <= 4 + kMaxCancelSecret));
    if (key) {
        CHECK(static_cast<uint32_t>(key->pid) == read_u32(body.data()));
        CHECK(key->secret == chars(body.subspan(4)));
        std::string enc;
        encode_backend_key_data(enc, *key);
        CHECK(enc.size() == 5 + n && enc[0] == 'K' && read_u32(reinterpret_cast<const uint8_t*>(enc.data()) + 1) == 4 + n);
        CHECK(std::memcmp(enc.data() + 5, body.data(), n) == 0);
    }
    {
        // Only a key of the body's own length is written in.
        Exact rewritten(frame_body);
        const CancelKey k = key ? other_key(*key) : CancelKey{0x1234, std::string(4, '\xff')};
        const bool written = rewrite_backend_key_data(rewritten.span(), k);
        CHECK(written == (n == 4 + k.secret.size()));
        if (written)
            CHECK(decode_backend_key_data(rewritten.span()) == k);
        else
            CHECK(n == 0 || std::memcmp(rewritten.data.get(), body.data(), n) == 0);
    }

    // ReadyForQuery: one status byte out of I, T, E.
    const auto tx = decode_ready_for_query(body);
    CHECK(tx.has_value() == (n == 1 && (body[0] == 'I' || body[0] == 'T' || body[0] == 'E')));
    if (tx) CHECK(static_cast<char>(*tx) == static_cast<char>(body[0]));

    // ErrorResponse/NoticeResponse fields, against the reference reading.
    const auto e = decode_error_fields(body);
    const auto fields = reference_fields(chars(body));
    CHECK(e.has_value() == fields.has_value());
    if (e) {
        std::string_view severity = last_field(*fields, 'V');
        if (severity.empty()) severity = last_field(*fields, 'S');
        CHECK(e->severity == severity);
        CHECK(e->sqlstate == last_field(*fields, 'C'));
        CHECK(e->message == last_field(*fields, 'M'));
        CHECK(inside(e->severity, body) && inside(e->sqlstate, body) && inside(e->message, body));
        check_error_roundtrip(Severity::Error, e->sqlstate, e->message, {});
    }

    // AuthenticationSASL without SCRAM-SHA-256-PLUS: only for code 10 with a
    // well-formed list naming it; the result is the list without it.
    const auto sasl = sasl_without_mechanism(body, "SCRAM-SHA-256-PLUS");
    std::vector<std::string> names;
    bool sasl_valid = n >= 5 && read_u32(body.data()) == 10 && body[n - 1] == 0;
    if (sasl_valid) {
        size_t pos = 4;
        for (;;) {
            const size_t end = chars(body).find('\0', pos);
            if (end == std::string::npos) {
                sasl_valid = false;
                break;
            }
            if (end == pos) {
                sasl_valid = end + 1 == n;  // the empty name closes the list, nothing after
                break;
            }
            names.emplace_back(chars(body).substr(pos, end - pos));
            pos = end + 1;
        }
    }
    const bool has_plus = std::find(names.begin(), names.end(), "SCRAM-SHA-256-PLUS") != names.end();
    CHECK(sasl.has_value() == (sasl_valid && has_plus));
    if (sasl) {
        std::string want;
        for (const auto& name : names)
            if (name != "SCRAM-SHA-256-PLUS") want += name + '\0';
        want.push_back('\0');
        CHECK(sasl->size() == 9 + want.size() && (*sasl)[0] == 'R');
        CHECK(read_u32(reinterpret_cast<const uint8_t*>(sasl->data()) + 1) == sasl->size() - 1);
        CHECK(read_u32(reinterpret_cast<const uint8_t*>(sasl->data()) + 5) == 10);
        CHECK(sasl->substr(9) == want);
    }

    // ParameterStatus: name NUL value NUL, nothing after.
    const auto ps = decode_parameter_status(body);
    const bool ps_valid = n >= 2 && body[n - 1] == 0 && std::count(body.begin(), body.end(), 0) == 2;
    CHECK(ps.has_value() == ps_valid);
    if (ps) {
        CHECK(inside(ps->name, body) && inside(ps->value, body));
        std::string enc(ps->name);
        enc.push_back('\0');
        enc.append(ps->value);
        enc.push_back('\0');
        CHECK(enc == chars(body));
    }
}

// The pooling decoders: whatever they accept re-encodes to the very body, and
// their views point into it.
void check_pool_decoders(Bytes body) {
    auto whole = [&](char type, const std::string& enc) {
        CHECK(enc.size() == body.size() + 5 && enc[0] == type);
        CHECK(read_u32(reinterpret_cast<const uint8_t*>(enc.data()) + 1) == body.size() + 4);
        CHECK(std::string_view(enc).substr(5) == chars(body));
    };
    if (const auto p = pool::decode_parse(body)) {
        CHECK(inside(p->name, body) && inside(p->query, body));
        CHECK(p->param_types.size() >= 2 && p->param_types.size() % 4 == 2);
        CHECK(p->name.find('\0') == std::string_view::npos && p->query.find('\0') == std::string_view::npos);
        std::string enc;
        pool::encode_parse(enc, p->name, p->query, p->param_types);
        whole('P', enc);
    }
    if (const auto b = pool::decode_bind(body)) {
        CHECK(inside(b->portal, body) && inside(b->statement, body));
        CHECK(b->rest.size() >= 6);
        std::string enc;
        pool::encode_bind(enc, b->portal, b->statement, b->rest);
        whole('B', enc);
    }
    if (const auto t = pool::decode_target(body)) {
        CHECK(t->kind == 'S' || t->kind == 'P');
        CHECK(inside(t->name, body));
        std::string d, c;
        pool::encode_describe(d, t->kind, t->name);
        pool::encode_close(c, t->kind, t->name);
        whole('D', d);
        whole('C', c);
    }
    const auto tag = pool::decode_command_complete(body);
    const size_t first_nul = chars(body).find('\0');
    CHECK(tag.has_value() == (first_nul != std::string_view::npos && first_nul + 1 == body.size()));
    if (tag) CHECK(inside(*tag, body) && tag->size() + 1 == body.size());
}

// ---- Transaction pooling: SET recognition, startup options, ResponseTracker

bool iequal(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
        auto l = [](char c) { return (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c; };
        if (l(a[i]) != l(b[i])) return false;
    }
    return true;
}

// What parse_set accepts is consistent, and the statements pgrelay would
// write from it read back to the same parameter and value.
void check_set(std::string_view sql) {
    const auto cmd = pool::parse_set(sql);
    if (!cmd) return;
    CHECK(cmd->reset || !cmd->reset_all);
    CHECK(cmd->reset_all == cmd->name.empty());
    CHECK(cmd->reset == cmd->value.empty());
    if (!cmd->value.empty()) {
        // Raw text of the statement, trimmed.
        CHECK(sql.find(cmd->value) != std::string_view::npos);
        CHECK(cmd->value.front() != ' ' && cmd->value.back() != ' ' && cmd->value.back() != ';');
    }
    if (cmd->reset_all) return;
    const auto again = pool::parse_set(cmd->reset ? pool::reset_statement(cmd->name)
                                                  : pool::set_statement(cmd->name, cmd->value, true));
    CHECK(again.has_value());
    CHECK(iequal(again->name, cmd->name) && again->value == cmd->value && again->reset == cmd->reset);
    // The value as a literal (what a ParameterStatus would give) reads back quoted.
    const auto lit = pool::parse_set(pool::set_statement(cmd->name, cmd->value, false));
    CHECK(lit.has_value());
    CHECK(iequal(lit->name, cmd->name) && lit->value == pool::quote_literal(cmd->value) && !lit->reset);
}

// Settings come out normalised, and escaping them back gives the same settings.
void check_startup_options(std::string_view options) {
    const auto settings = pool::parse_startup_options(options);
    std::string back;
    for (const auto& [name, value] : settings) {
        CHECK(!name.empty());
        for (char c : name) CHECK(c != '-' && !(c >= 'A' && c <= 'Z') && c != '=');
        back += "-c ";
        for (char c : name + "=" + value) {
            if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v' || c == '\\') back.push_back('\\');
            back.push_back(c);
        }
        back.push_back(' ');
    }
    CHECK(pool::parse_startup_options(back) == settings);
}

// The stream read as a message sequence, two bytes each: the first picks sent
// or received (and the origin), the second is the type. The tracker's counts
// stay consistent with what it reports.
void check_tracker(Bytes s) {
    using RT = pool::ResponseTracker;
    RT t;
    size_t entries = 0;  // what the tracker should hold, from its own answers
    for (size_t i = 0; i + 1 < s.size(); i += 2) {
        const uint8_t op = s[i];
        const char type = static_cast<char>(s[i + 1]);
        if (op < 0x80) {
            const auto origin = static_cast<RT::Origin>(op % 3);
            const size_t before = t.outstanding();
            t.sent(type, origin, (op & 4) ? 'S' : 'P');
            CHECK(t.outstanding() == before || t.outstanding() == before + 1);
            if (t.outstanding() == before + 1) {
                CHECK(std::strchr("PBCDESQF", type) != nullptr && type != '\0');
                ++entries;
            }
        } else if (op == 0xff) {
            t.reset();
            CHECK(t.idle() && !t.last_status());
            entries = 0;
        } else {
            const size_t before = t.outstanding();
            const auto status = (op & 1) ? std::optional<TxStatus>(TxStatus::InTransaction) : std::nullopt;
            const auto r = t.received(type, status);
            CHECK(t.outstanding() <= before);
            if (r.entry_done) CHECK(t.outstanding() < before);
            if (!r.entry_done && type != 'E' && type != 'G') CHECK(t.outstanding() == before);
            if (r.unexpected) CHECK(t.outstanding() == before && !r.entry_done);
            if (r.verdict == RT::Verdict::RewriteAsParseComplete) CHECK(type == '3' && r.entry_done);
            if (r.ready) CHECK(type == 'Z' && r.entry_done && r.ready == status && t.last_status() == status);
            if (r.inserted_error) CHECK(type == 'E');
            if (type == 'N' || type == 'A' || type == 'S') CHECK(!r.entry_done && !r.unexpected);
            entries = t.outstanding();
        }
        CHECK(t.outstanding() == entries);
        CHECK(t.idle() == (t.outstanding() == 0));
    }
}

// ---- Regular phase: FrameScanner in a relay loop ---------------------------

struct ScanConfig {
    uint32_t max_frame;
    uint32_t max_watched;
    size_t capacity;           // relay buffer; > max_watched, or watched frames could never fit
    std::string watched;       // types held back until whole
    bool rewrite_keys;         // rewrite BackendKeyData as the backend->client relay does (needs 'K' watched)
    bool is_watched(char t) const { return watched.find(t) != std::string::npos; }
};

// The framing read straight off the whole stream.
struct Reference {
    struct Item {
        char type;
        uint32_t length;
        size_t offset;
    };
    enum class Stop { End, PartialHeader, WatchedIncomplete, Error };
    std::vector<Item> frames;  // the frames the scanner must report, in order
    Stop stop = Stop::End;
    size_t stop_offset = 0;    // bytes the relay may forward: [0, stop_offset)
    bool ends_at_boundary = true;
};

Reference reference_walk(Bytes s, const ScanConfig& c) {
    Reference r;
    size_t o = 0;
    for (;;) {
        const size_t left = s.size() - o;
        if (left == 0) break;
        if (left < 5) {
            r.stop = Reference::Stop::PartialHeader;
            break;
        }
        const char type = static_cast<char>(s[o]);
        const uint32_t len = read_u32(&s[o + 1]);
        if (len < 4 || len > c.max_frame) {
            r.stop = Reference::Stop::Error;
            break;
        }
        const uint64_t wire = uint64_t(len) + 1;
        if (c.is_watched(type) && len <= c.max_watched && left < wire) {
            r.stop = Reference::Stop::WatchedIncomplete;
            break;
        }
        r.frames.push_back({type, len, o});
        if (left < wire) {  // streamed: the rest of the body never comes
            r.stop_offset = s.size();
            r.ends_at_boundary = false;
            return r;
        }
        o += wire;
    }
    r.stop_offset = o;
    return r;
}

// Feeds `stream` through a FrameScanner the way Session's relay loops do: read
// into a fixed buffer, scan, forward [0, pos), keep the rest at the front. The
// frames reported must be the reference's, whatever the chunking, and the relay
// must never stall with a full buffer.
void relay(Bytes stream, const ScanConfig& c, Chunker chunker) {
    const Reference ref = reference_walk(stream, c);
    std::string expected(chars(stream));
    if (c.rewrite_keys) {
        for (const auto& f : ref.frames) {
            // Only a frame the scanner holds whole is rewritten (the relay
            // refuses a streamed BackendKeyData, session.cpp).
            if (f.type != 'K' || f.length < 4 + 4 + kMinCancelSecret || f.length > 4 + 4 + kMaxCancelSecret ||
                f.length > c.max_watched)
                continue;
            auto* body = reinterpret_cast<uint8_t*>(expected.data() + f.offset + 5);
            const std::span<uint8_t> whole{body, f.length - 4};
            rewrite_backend_key_data(whole, other_key(*decode_backend_key_data(whole)));
        }
    }

    FrameScanner sc(c.max_frame, c.max_watched);
    for (char t : c.watched) sc.watch(t);
    std::unique_ptr<uint8_t[]> buf(new uint8_t[c.capacity]);
    size_t len = 0;         // bytes in buf
    size_t base = 0;        // stream offset of buf[0] == bytes forwarded so far
    size_t fed = 0;         // stream bytes read into buf
    size_t chunk_left = 0;  // of the current read
    size_t ref_i = 0;
    bool error = false;
    std::string out;
    for (size_t round = 0;; ++round) {
        CHECK(round <= stream.size() + 1);
        if (chunk_left == 0 && fed < stream.size()) chunk_left = chunker.next(stream.size() - fed);
        const size_t take = std::min(chunk_left, c.capacity - len);
        if (take) std::memcpy(buf.get() + len, stream.data() + fed, take);
        len += take;
        fed += take;
        chunk_left -= take;
        PoisonTail poisoned(buf.get(), len, c.capacity);
        const std::span<uint8_t> view(buf.get(), len);

        size_t pos = 0;
        for (;;) {
            const bool was_boundary = sc.at_boundary();
            const size_t before = pos;
            Frame f;
            const auto st = sc.next(view, pos, f);
            CHECK(pos >= before && pos <= len);
            if (st == FrameScanner::Status::NeedMore) {
                if (!sc.at_boundary()) {
                    CHECK(pos == len);  // a streamed body swallows everything there is
                } else if (len - pos >= 5) {
                    // A whole header is there: only a watched frame still incomplete waits.
                    const char t = static_cast<char>(view[pos]);
                    const uint32_t l = read_u32(&view[pos + 1]);
                    CHECK(c.is_watched(t) && l >= 4 && l <= c.max_frame && l <= c.max_watched);
                    CHECK(len - pos < size_t(l) + 1);
                }
                break;
            }
            if (st == FrameScanner::Status::Error) {
                CHECK(ref.stop == Reference::Stop::Error && ref_i == ref.frames.size());
                CHECK(base + pos == ref.stop_offset && len - pos >= 5);
                CHECK(sc.bad_type() == static_cast<char>(view[pos]));
                CHECK(sc.bad_length() == read_u32(&view[pos + 1]));
                CHECK(sc.bad_length() < 4 || sc.bad_length() > c.max_frame);
                error = true;
                break;
            }
            CHECK(ref_i < ref.frames.size());
            const auto& r = ref.frames[ref_i++];
            CHECK(f.type == r.type && f.length == r.length && base + f.offset == r.offset);
            CHECK(f.length >= 4 && f.length <= c.max_frame);
            CHECK(f.offset >= before && (!was_boundary || f.offset == before));
            CHECK(pos == f.offset + std::min(f.wire_size(), len - f.offset));
            CHECK(f.complete == (len - f.offset >= f.wire_size()));
            CHECK(sc.at_boundary() == f.complete);
            if (c.is_watched(f.type) && f.length <= c.max_watched) CHECK(f.complete);
            if (!f.complete) continue;
            const auto body = f.body(view);
            CHECK(body.size() == f.length - 4);
            CHECK(chars(body) == chars(stream.subspan(r.offset + 5, f.length - 4)));
            check_decoders(body);
            check_pool_decoders(body);
            // Held whole (watched, within max_watched): a streamed frame
            // can be complete in the buffer by chance, but is not rewritten.
            if (c.rewrite_keys && f.type == 'K' && f.length <= c.max_watched) {
                if (const auto key = decode_backend_key_data(body)) {
                    rewrite_backend_key_data(body, other_key(*key));
                    CHECK(decode_backend_key_data(body) == other_key(*key));
                }
            }
        }
        poisoned.lift();
        out.append(reinterpret_cast<const char*>(buf.get()), pos);
        std::memmove(buf.get(), buf.get() + pos, len - pos);
        len -= pos;
        base += pos;
        if (error) break;
        CHECK(len < c.capacity);  // else the relay would wait forever for room to read into
        if (fed == stream.size() && chunk_left == 0) break;
    }
    CHECK(error == (ref.stop == Reference::Stop::Error));
    CHECK(ref_i == ref.frames.size());
    CHECK(base == ref.stop_offset);
    CHECK(out == std::string_view(expected).substr(0, base));
    if (!error) CHECK(sc.at_boundary() == ref.ends_at_boundary);
}

// ---- Startup phase ----------------------------------------------------------

struct Event {
    StartupOp::Kind kind;
    size_t offset;  // in the stream, of the packet the action is about
    size_t consumed;
    char reply;
    std::string sqlstate;
    std::string message;
    bool operator==(const Event&) const = default;
};

std::string encode_startup(const StartupPacket& p) {
    std::string s(8, '\0');
    write_u32(reinterpret_cast<uint8_t*>(s.data() + 4), p.protocol_version);
    for (const auto& [name, value] : p.parameters) {
        s += name;
        s.push_back('\0');
        s += value;
        s.push_back('\0');
    }
    s.push_back('\0');
    write_u32(reinterpret_cast<uint8_t*>(s.data()), static_cast<uint32_t>(s.size()));
    return s;
}

// Drives a StartupOp as Session::startup does, the stream arriving in chunks.
// Returns the actions (ReadMore aside); on Forward, *regular_from is where the
// regular phase starts in the stream.
std::vector<Event> run_startup(Bytes stream, bool tls, Chunker chunker, size_t* regular_from) {
    StartupOp op({.tls_available = tls});
    std::vector<Event> events;
    // The client's bytes not consumed yet, at the front of a buffer as big as
    // the whole stream.
    const size_t cap = std::max<size_t>(stream.size(), 1);
    std::unique_ptr<uint8_t[]> mem(new uint8_t[cap]);
    size_t len = 0;
    auto drop = [&](size_t n) {
        std::memmove(mem.get(), mem.get() + n, len - n);
        len -= n;
    };
    size_t base = 0, fed = 0;
    bool ssl_seen = false, gss_seen = false, tls_started = false;
    // A first byte 0x16 with TLS on offer is a direct TLS handshake
    // (client.cpp peeks at it): the rest of the stream is what the client
    // sends inside TLS.
    if (tls && !stream.empty() && is_direct_tls(stream[0])) {
        op.note_direct_tls();
        ssl_seen = tls_started = true;
        base = fed = 1;
    }
    for (size_t round = 0;; ++round) {
        CHECK(round <= 2 * stream.size() + 2);
        PoisonTail poisoned(mem.get(), len, cap);
        const Bytes buf(mem.get(), len);
        const StartupOp::Action a = op.next(buf);
        CHECK(a.consumed <= buf.size());
        if (a.kind == StartupOp::Kind::ReadMore) {
            CHECK(a.consumed == 0 && a.packet == nullptr);
            CHECK(op.ssl_requested() == ssl_seen && op.gssenc_requested() == gss_seen);
            CHECK(parse_startup(buf).status == ParseStatus::NeedMore);
            if (fed == stream.size()) return events;
            const size_t n = chunker.next(stream.size() - fed);
            poisoned.lift();
            std::memcpy(mem.get() + len, stream.data() + fed, n);
            len += n;
            fed += n;
            continue;
        }
        events.push_back({a.kind, base, a.consumed, a.reply, a.sqlstate, a.message});
        if (a.consumed > 0) {
            // A packet is only ever taken whole: one byte less is not enough.
            CHECK(parse_startup(buf.first(a.consumed - 1)).status == ParseStatus::NeedMore);
            CHECK(read_u32(buf.data()) == a.consumed);
        }
        switch (a.kind) {
            case StartupOp::Kind::ReadMore: break;
            case StartupOp::Kind::Reply:
                CHECK(a.packet && a.consumed == 8 && a.reply == 'N');
                if (a.packet->kind == StartupKind::SSLRequest) {
                    CHECK(!tls && !ssl_seen);
                    ssl_seen = true;
                } else {
                    CHECK(a.packet->kind == StartupKind::GSSENCRequest && !gss_seen && !tls_started);
                    gss_seen = true;
                }
                CHECK(op.ssl_requested() == ssl_seen && op.gssenc_requested() == gss_seen);
                poisoned.lift();
                drop(8);
                base += 8;
                continue;
            case StartupOp::Kind::StartTls:
                // Only with TLS on offer, and never with bytes behind the request.
                CHECK(tls && !ssl_seen && a.packet && a.packet->kind == StartupKind::SSLRequest);
                CHECK(a.reply == 'S' && a.consumed == 8 && buf.size() == 8 && op.ssl_requested());
                ssl_seen = tls_started = true;
                // The handshake would run here; the client goes on inside TLS.
                poisoned.lift();
                drop(8);
                base += 8;
                continue;
            case StartupOp::Kind::Forward: {
                const StartupPacket& p = *a.packet;
                CHECK(p.kind == StartupKind::StartupMessage && a.consumed == p.length);
                CHECK(p.length >= kMinStartupPacketLength && p.length <= kMaxStartupPacketLength);
                CHECK((p.protocol_version >> 16) == 3);
                CHECK(!p.parameter("user").empty());
                for (const auto& [name, value] : p.parameters) CHECK(!name.empty());
                // The parsed packet re-encodes to exactly the bytes consumed.
                CHECK(encode_startup(p) == chars(buf.first(a.consumed)));
                if (regular_from) *regular_from = base + a.consumed;
                return events;
            }
            case StartupOp::Kind::Cancel: {
                CHECK(a.packet && a.packet->kind == StartupKind::CancelRequest);
                CHECK(a.consumed >= 12 + kMinCancelSecret && a.consumed <= 12 + kMaxCancelSecret);
                std::string enc;
                encode_cancel_request(enc, a.packet->cancel_key, a.packet->from_peer);
                CHECK(enc == chars(buf.first(a.consumed)));
                return events;
            }
            case StartupOp::Kind::Close: {
                CHECK(std::strlen(a.sqlstate) == 5 && !a.message.empty());
                const StartupParse p = parse_startup(buf);
                if (p.status == ParseStatus::Error) {
                    CHECK(a.consumed == 0 && std::string_view(a.sqlstate) == p.sqlstate && a.message == p.message);
                } else {
                    // A well-formed packet refused: a second SSL/GSS request, a
                    // GSS request inside TLS, or plaintext pipelined behind an
                    // SSLRequest that TLS answers.
                    CHECK(p.status == ParseStatus::Ok);
                    const auto k = p.packet.kind;
                    CHECK((k == StartupKind::SSLRequest && (ssl_seen || (tls && buf.size() > 8))) ||
                          (k == StartupKind::GSSENCRequest && (gss_seen || tls_started)));
                }
                check_error_roundtrip(Severity::Fatal, a.sqlstate, a.message, std::string_view("hint\0with NUL", 13));
                return events;
            }
        }
    }
}

void check_startup(Bytes stream, bool tls, const Chunker& chunker, size_t* regular_from) {
    const auto chunked = run_startup(stream, tls, chunker, regular_from);
    const auto whole = run_startup(stream, tls, Chunker{}, nullptr);
    // The chunking changes nothing, except that an SSLRequest followed by more
    // bytes in the same read is refused when TLS is on offer.
    for (size_t i = 0; i < std::min(chunked.size(), whole.size()); ++i) {
        if (chunked[i] == whole[i]) continue;
        CHECK(tls && chunked[i].offset == whole[i].offset);
        const auto& tls_start = chunked[i].kind == StartupOp::Kind::StartTls ? chunked[i] : whole[i];
        const auto& refusal = chunked[i].kind == StartupOp::Kind::StartTls ? whole[i] : chunked[i];
        CHECK(tls_start.kind == StartupOp::Kind::StartTls && refusal.kind == StartupOp::Kind::Close);
        CHECK(refusal.message == "received unencrypted data after SSL request");
        return;
    }
    CHECK(chunked.size() == whole.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const Bytes input(data, size);
    auto h = [&](size_t i) -> uint8_t { return i < size ? data[i] : 0; };
    const uint8_t flags = h(0);
    const uint32_t small_max_frame = 4 + h(1);
    const size_t k = h(5) % 17;
    const size_t header = std::min(size, 6 + k);
    const Bytes sizes = input.subspan(std::min(size, size_t(6)), header - std::min(size, size_t(6)));
    const Bytes stream = input.subspan(header);
    const Chunker chunker(sizes);

    // A client's stream: startup phase, then frames to the backend (unwatched,
    // limited by max_frame_size).
    size_t regular_from = SIZE_MAX;
    check_startup(stream, false, chunker, &regular_from);
    if (regular_from != SIZE_MAX) {
        const uint32_t max_frame = (flags & 1) ? 0x7fffffff : small_max_frame;
        relay(stream.subspan(regular_from), {max_frame, 8192, 16 * 1024, "", false}, chunker);
    }
    check_startup(stream, true, chunker, nullptr);

    // A backend's stream, as relay_backend_to_client reads it.
    relay(stream, {UINT32_MAX, 8192, 16 * 1024, "KZE", true}, chunker);

    // The same bytes with limits and watched types chosen by the input.
    ScanConfig c;
    c.max_frame = (flags & 2) ? UINT32_MAX - h(1) : small_max_frame;
    c.max_watched = 12 + h(2);
    c.capacity = c.max_watched + 1 + h(3);
    for (int i = 0; i < 8; ++i)
        if (h(4) & (1 << i)) c.watched.push_back("KZESRDCN"[i]);
    c.rewrite_keys = c.is_watched('K');
    relay(stream, c, chunker);

    // Encoders on arbitrary strings (NULs included).
    const std::string_view s = chars(stream);
    check_error_roundtrip((flags & 4) ? Severity::Fatal : Severity::Error, s.substr(0, 5),
                          s.substr(std::min<size_t>(5, s.size()), 100), s.substr(std::min<size_t>(105, s.size()), 50));

    // The pooling helpers on the same text: a Query's SQL (a C string, so up
    // to the first NUL, as well as the raw bytes), a startup "options" value,
    // and the bytes as a request/answer sequence.
    check_set(s.substr(0, s.find('\0')));
    check_set(s);
    check_startup_options(s);
    check_tracker(stream);
    return 0;
}
