// Transaction pooling helpers (see pooling.hpp).
#include "protocol/pooling.hpp"

#include <algorithm>
#include <cstring>

namespace pgrelay::protocol::pool {

namespace {

bool is_extended(char t) noexcept { return t == 'P' || t == 'B' || t == 'C' || t == 'D' || t == 'E'; }

}  // namespace

// ---------------------------------------------------------------------------
// ResponseTracker

void ResponseTracker::sent(char type, Origin origin, char describe_kind) {
    switch (type) {
        case 'P': case 'B': case 'C': case 'D': case 'E': case 'Q': case 'F':
            // After an extended-protocol error the server reads and discards
            // every message, simple Query included, until a Sync.
            if (skipping_) return;
            entries_.push_back({type, origin, describe_kind, false, copy_ends_});
            return;
        case 'S':
            // The server ignores Sync during COPY FROM STDIN (libpq sends one
            // right after an extended COPY's Execute, and another after CopyDone).
            if (copy_in_) return;
            skipping_ = false;
            entries_.push_back({type, origin, 0, false, copy_ends_});
            return;
        case 'c': case 'f':
            ++copy_ends_;
            copy_in_ = false;
            return;
        default:
            // CopyData, Flush, Terminate (and anything unknown): no answer.
            return;
    }
}

// The server skips the rest of the failed batch: the entries up to its Sync
// get no answer. Without a Sync sent yet, later messages are skipped too.
void ResponseTracker::drop_until_sync() {
    while (!entries_.empty() && entries_.front().type != 'S') entries_.pop_front();
    if (entries_.empty()) skipping_ = true;
}

ResponseTracker::Result ResponseTracker::received(char t, std::optional<TxStatus> rfq_status) {
    Result r;
    // NoticeResponse, NotificationResponse, ParameterStatus: asynchronous,
    // they belong to no request, but while pgrelay's own request runs they
    // are about it (a SET's ParameterStatus), so they go with it.
    if (t == 'N' || t == 'A' || t == 'S') {
        if (!entries_.empty() && entries_.front().origin == Origin::Inserted) r.verdict = Verdict::Drop;
        return r;
    }
    if (entries_.empty()) {
        // A FATAL ErrorResponse (shutdown, pg_terminate_backend) may come at any time.
        r.unexpected = t != 'E';
        return r;
    }
    Entry& h = entries_.front();
    const bool inserted = h.origin == Origin::Inserted;
    r.verdict = inserted ? Verdict::Drop : Verdict::Forward;

    if (t == 'E') {
        r.inserted_error = inserted;
        copy_in_ = false;  // an error ends COPY FROM STDIN
        if (!is_extended(h.type)) return r;  // Query, FunctionCall, Sync: ReadyForQuery ends them
        if (inserted) {
            // The client's messages up to the Sync will be skipped, so it must
            // see why; unless the whole rest of the batch is pgrelay's own.
            bool own_batch = false;
            for (size_t i = 1; i < entries_.size(); ++i) {
                if (entries_[i].origin != Origin::Inserted) break;
                if (entries_[i].type == 'S') {
                    own_batch = true;
                    break;
                }
            }
            r.verdict = own_batch ? Verdict::Drop : Verdict::Forward;
        }
        entries_.pop_front();
        r.entry_done = true;
        drop_until_sync();
        return r;
    }

    bool ok = false;
    bool done = false;
    switch (h.type) {
        case 'P': ok = done = t == '1'; break;
        case 'B': ok = done = t == '2'; break;
        case 'C':
            ok = done = t == '3';
            if (ok && h.origin == Origin::NopParse) r.verdict = Verdict::RewriteAsParseComplete;
            break;
        case 'D':
            if (h.describe_kind == 'S' && !h.got_parameters) {
                ok = t == 't';
                h.got_parameters = ok;
            } else {
                ok = done = t == 'T' || t == 'n';
            }
            break;
        case 'E':
            ok = std::strchr("DdcGHW", t) != nullptr;
            if (!ok) ok = done = t == 'C' || t == 'I' || t == 's';
            break;
        case 'S': ok = done = t == 'Z'; break;
        case 'Q': case 'F':
            // Anything, any number of result sets, until ReadyForQuery.
            ok = t != '\0';
            done = t == 'Z';
            break;
        default: break;
    }
    if (!ok) {
        r.unexpected = true;
        return r;
    }
    if (t == 'G' && (h.type == 'E' || h.type == 'Q')) {
        // COPY FROM STDIN: until the client's CopyDone/CopyFail the server
        // ignores Sync. Those already sent in that window get no answer.
        const uint64_t k = h.copy_ends;
        for (auto it = entries_.begin() + 1; it != entries_.end();) {
            if (it->copy_ends != k) break;  // sent after the copy ended
            if (it->type == 'S')
                it = entries_.erase(it);
            else
                ++it;
        }
        if (copy_ends_ == k) copy_in_ = true;
        return r;  // `h` may be invalid now: entries_ changed
    }
    if (done) {
        if (t == 'Z') {
            r.ready = rfq_status;
            if (rfq_status) last_status_ = rfq_status;
        }
        entries_.pop_front();
        r.entry_done = true;
    }
    return r;
}

size_t ResponseTracker::client_requests() const noexcept {
    size_t n = 0;
    for (const Entry& e : entries_)
        if (e.origin == Origin::Client && (e.type == 'Q' || e.type == 'S' || e.type == 'F')) ++n;
    return n;
}

void ResponseTracker::reset() noexcept {
    entries_.clear();
    last_status_.reset();
    skipping_ = false;
    copy_in_ = false;
    copy_ends_ = 0;
}

// ---------------------------------------------------------------------------
// Codecs

namespace {

// A bounds-checked reader over a frame body.
class Reader {
public:
    explicit Reader(std::span<const uint8_t> b) noexcept : b_(b) {}
    std::optional<std::string_view> cstring() noexcept {
        if (pos_ >= b_.size()) return std::nullopt;  // also: memchr must not get an empty span's null pointer
        const void* nul = std::memchr(b_.data() + pos_, 0, b_.size() - pos_);
        if (!nul) return std::nullopt;
        const auto* start = reinterpret_cast<const char*>(b_.data() + pos_);
        const size_t n = static_cast<const uint8_t*>(nul) - (b_.data() + pos_);
        pos_ += n + 1;
        return std::string_view(start, n);
    }
    // int16 counts and int32 lengths are signed on the wire.
    std::optional<int16_t> i16() noexcept {
        if (left() < 2) return std::nullopt;
        const auto v = static_cast<int16_t>((b_[pos_] << 8) | b_[pos_ + 1]);
        pos_ += 2;
        return v;
    }
    std::optional<int32_t> i32() noexcept {
        if (left() < 4) return std::nullopt;
        const auto v = static_cast<int32_t>(read_u32(b_.data() + pos_));
        pos_ += 4;
        return v;
    }
    bool skip(size_t n) noexcept {
        if (left() < n) return false;
        pos_ += n;
        return true;
    }
    std::optional<char> byte() noexcept {
        if (left() < 1) return std::nullopt;
        return static_cast<char>(b_[pos_++]);
    }
    size_t left() const noexcept { return b_.size() - pos_; }
    size_t pos() const noexcept { return pos_; }
    std::span<const uint8_t> rest() const noexcept { return b_.subspan(pos_); }

private:
    std::span<const uint8_t> b_;
    size_t pos_ = 0;
};


void put_cstring(std::string& out, std::string_view s) {
    out.append(s);
    out.push_back('\0');
}


std::string_view chars(std::span<const uint8_t> b) noexcept {
    return {reinterpret_cast<const char*>(b.data()), b.size()};
}

}  // namespace

std::optional<ParseMsg> decode_parse(std::span<const uint8_t> body) noexcept {
    Reader r(body);
    const auto name = r.cstring();
    if (!name) return std::nullopt;
    const auto query = r.cstring();
    if (!query) return std::nullopt;
    const size_t types_at = r.pos();
    const auto count = r.i16();
    if (!count || *count < 0 || !r.skip(size_t(*count) * 4) || r.left() != 0) return std::nullopt;
    return ParseMsg{*name, *query, body.subspan(types_at)};
}

void encode_parse(std::string& out, std::string_view name, std::string_view query,
                  std::span<const uint8_t> param_types_raw) {
    append_message(out, 'P', [&](std::string& o) {
        put_cstring(o, name);
        put_cstring(o, query);
        // No types at all means a count of zero.
        if (param_types_raw.empty())
            o.append(2, '\0');
        else
            o.append(chars(param_types_raw));
    });
}

std::optional<BindMsg> decode_bind(std::span<const uint8_t> body) noexcept {
    Reader r(body);
    const auto portal = r.cstring();
    if (!portal) return std::nullopt;
    const auto statement = r.cstring();
    if (!statement) return std::nullopt;
    const auto rest = r.rest();
    // Parameter formats, parameters (int32 length, -1 for NULL, then bytes),
    // result formats: walked only to check that they fill the body exactly.
    const auto formats = r.i16();
    if (!formats || *formats < 0 || !r.skip(size_t(*formats) * 2)) return std::nullopt;
    const auto params = r.i16();
    if (!params || *params < 0) return std::nullopt;
    for (int i = 0; i < *params; ++i) {
        const auto len = r.i32();
        if (!len || *len < -1) return std::nullopt;
        if (*len > 0 && !r.skip(size_t(*len))) return std::nullopt;
    }
    const auto results = r.i16();
    if (!results || *results < 0 || !r.skip(size_t(*results) * 2) || r.left() != 0) return std::nullopt;
    return BindMsg{*portal, *statement, rest};
}

void encode_bind(std::string& out, std::string_view portal, std::string_view statement,
                 std::span<const uint8_t> rest) {
    append_message(out, 'B', [&](std::string& o) {
        put_cstring(o, portal);
        put_cstring(o, statement);
        o.append(chars(rest));
    });
}

std::optional<TargetMsg> decode_target(std::span<const uint8_t> body) noexcept {
    Reader r(body);
    const auto kind = r.byte();
    if (!kind || (*kind != 'S' && *kind != 'P')) return std::nullopt;
    const auto name = r.cstring();
    if (!name || r.left() != 0) return std::nullopt;
    return TargetMsg{*kind, *name};
}

void encode_describe(std::string& out, char kind, std::string_view name) {
    append_message(out, 'D', [&](std::string& o) {
        o.push_back(kind);
        put_cstring(o, name);
    });
}

void encode_close(std::string& out, char kind, std::string_view name) {
    append_message(out, 'C', [&](std::string& o) {
        o.push_back(kind);
        put_cstring(o, name);
    });
}

void encode_query(std::string& out, std::string_view sql) {
    append_message(out, 'Q', [&](std::string& o) { put_cstring(o, sql); });
}

void encode_sync(std::string& out) {
    append_message(out, 'S', [](std::string&) {});
}

void encode_parameter_status(std::string& out, std::string_view name, std::string_view value) {
    append_message(out, 'S', [&](std::string& o) {
        put_cstring(o, name);
        put_cstring(o, value);
    });
}

void encode_ready_for_query(std::string& out, TxStatus status) {
    append_message(out, 'Z', [&](std::string& o) { o.push_back(static_cast<char>(status)); });
}

std::optional<std::string_view> decode_command_complete(std::span<const uint8_t> body) noexcept {
    Reader r(body);
    const auto tag = r.cstring();
    if (!tag || r.left() != 0) return std::nullopt;
    return tag;
}

// ---------------------------------------------------------------------------
// Prepared statements

namespace {

size_t statement_hash(std::string_view query, std::string_view types) noexcept {
    const size_t h = std::hash<std::string_view>{}(query);
    return h ^ (std::hash<std::string_view>{}(types) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2));
}

std::string hex(uint64_t v) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string s;
    do {
        s.push_back(digits[v & 15]);
        v >>= 4;
    } while (v);
    std::reverse(s.begin(), s.end());
    return s;
}

}  // namespace

std::shared_ptr<const Statement> StatementCache::intern(std::string_view query, std::span<const uint8_t> param_types) {
    const std::string_view types = chars(param_types);
    const size_t h = statement_hash(query, types);
    auto [it, end] = map_.equal_range(h);
    while (it != end) {
        if (auto s = it->second.lock()) {
            if (s->query == query && s->param_types == types) return s;
            ++it;
        } else {
            it = map_.erase(it);  // tidy the bucket on the way
        }
    }
    // Amortised: a full sweep only once the map has doubled since the last one.
    if (map_.size() >= purge_at_) {
        purge();
        purge_at_ = std::max<size_t>(64, map_.size() * 2);
    }
    const uint64_t id = next_id_++;
    auto s = std::make_shared<const Statement>(Statement{id, "pgrelay_" + hex(id), std::string(query), std::string(types)});
    map_.emplace(h, s);
    return s;
}

size_t StatementCache::size() const noexcept {
    return size_t(std::count_if(map_.begin(), map_.end(), [](const auto& e) { return !e.second.expired(); }));
}

void StatementCache::purge() {
    for (auto it = map_.begin(); it != map_.end();) {
        if (it->second.expired())
            it = map_.erase(it);
        else
            ++it;
    }
}

bool ClientStatements::add(std::string_view name, std::shared_ptr<const Statement> stmt) {
    if (name.empty() || !stmt) return false;
    if (auto it = map_.find(name); it != map_.end())
        it->second = std::move(stmt);
    else
        map_.emplace(std::string(name), std::move(stmt));
    return true;
}

std::shared_ptr<const Statement> ClientStatements::find(std::string_view name) const {
    const auto it = map_.find(name);
    return it == map_.end() ? nullptr : it->second;
}

bool ClientStatements::erase(std::string_view name) {
    const auto it = map_.find(name);
    if (it == map_.end()) return false;
    map_.erase(it);
    return true;
}

std::optional<std::string> ServerStatements::add(const Statement& stmt) {
    if (map_.count(stmt.id)) {
        touch(stmt.id);
        return std::nullopt;
    }
    lru_.push_front(stmt.id);
    map_.emplace(stmt.id, Slot{lru_.begin(), stmt.server_name});
    if (map_.size() <= cap_) return std::nullopt;
    const uint64_t victim = lru_.back();
    auto it = map_.find(victim);
    std::string name = std::move(it->second.server_name);
    map_.erase(it);
    lru_.pop_back();
    return name;
}

void ServerStatements::touch(uint64_t id) noexcept {
    const auto it = map_.find(id);
    if (it != map_.end()) lru_.splice(lru_.begin(), lru_, it->second.pos);
}

void ServerStatements::erase(uint64_t id) noexcept {
    const auto it = map_.find(id);
    if (it == map_.end()) return;
    lru_.erase(it->second.pos);
    map_.erase(it);
}

void ServerStatements::clear() noexcept {
    lru_.clear();
    map_.clear();
}

// ---------------------------------------------------------------------------
// Session parameters

namespace {

// The server's scanner (scan.l): whitespace is [ \t\n\r\f\v]; identifiers
// start with a letter, '_' or a high-bit byte, go on with digits and '$' too.
bool is_space(char c) noexcept {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
bool ident_start(char c) noexcept {
    const auto u = static_cast<unsigned char>(c);
    return (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || u == '_' || u >= 0x80;
}
bool ident_char(char c) noexcept {
    return ident_start(c) || (c >= '0' && c <= '9') || c == '$';
}
bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }
char lower(char c) noexcept { return (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c; }

// One token of a SET statement. Anything the scanner is not sure of (an
// operator, a comment, U&'' or B'' strings, an unterminated literal, a
// backslash whose meaning depends on standard_conforming_strings) is Bad.
struct Token {
    enum class Kind { End, Word, QuotedIdent, String, Number, Comma, Equals, Dot, Semicolon, Bad } kind = Kind::End;
    std::string_view text;  // raw, as in the statement
    std::string ident;      // Word: lower-cased; QuotedIdent: unquoted
};

class Lexer {
public:
    explicit Lexer(std::string_view s) noexcept : s_(s) {}

    Token next() {
        while (pos_ < s_.size() && is_space(s_[pos_])) ++pos_;
        Token t;
        const size_t start = pos_;
        if (pos_ == s_.size()) return t;
        const char c = s_[pos_];
        const char c1 = pos_ + 1 < s_.size() ? s_[pos_ + 1] : '\0';
        if ((c == '-' && c1 == '-') || (c == '/' && c1 == '*')) return bad();
        if (c == ',' || c == '=' || c == ';' || (c == '.' && !is_digit(c1))) {
            ++pos_;
            t.kind = c == ',' ? Token::Kind::Comma : c == '=' ? Token::Kind::Equals
                   : c == ';' ? Token::Kind::Semicolon : Token::Kind::Dot;
        } else if ((c == 'e' || c == 'E') && c1 == '\'') {
            ++pos_;
            if (!escape_string()) return bad();
            t.kind = Token::Kind::String;
        } else if (ident_start(c)) {
            while (pos_ < s_.size() && ident_char(s_[pos_])) t.ident.push_back(lower(s_[pos_++]));
            // N'', B'', X'', U&'': not plain strings (other words may be followed by one: TO'x').
            if (pos_ < s_.size()) {
                const char n = s_[pos_];
                if (n == '\'' && (t.ident == "n" || t.ident == "b" || t.ident == "x")) return bad();
                if (n == '&' && t.ident == "u") return bad();
            }
            t.kind = Token::Kind::Word;
        } else if (c == '"') {
            ++pos_;
            for (;;) {
                if (pos_ == s_.size()) return bad();
                if (s_[pos_] == '"') {
                    if (pos_ + 1 < s_.size() && s_[pos_ + 1] == '"') {
                        t.ident.push_back('"');
                        pos_ += 2;
                        continue;
                    }
                    ++pos_;
                    break;
                }
                t.ident.push_back(s_[pos_++]);
            }
            if (t.ident.empty()) return bad();  // a zero-length identifier is an error
            t.kind = Token::Kind::QuotedIdent;
        } else if (c == '\'') {
            if (!plain_string()) return bad();
            t.kind = Token::Kind::String;
        } else if (c == '$') {
            if (!dollar_string()) return bad();
            t.kind = Token::Kind::String;
        } else if (is_digit(c) || c == '.' || ((c == '-' || c == '+') && (is_digit(c1) || c1 == '.'))) {
            if (!number()) return bad();
            t.kind = Token::Kind::Number;
        } else {
            return bad();
        }
        t.text = s_.substr(start, pos_ - start);
        return t;
    }

    size_t pos() const noexcept { return pos_; }

private:
    Token bad() {
        Token t;
        t.kind = Token::Kind::Bad;
        return t;
    }
    // '...' with '' for a quote. A backslash reads differently with
    // standard_conforming_strings off: not sure, so refused.
    bool plain_string() {
        ++pos_;
        for (;;) {
            if (pos_ == s_.size() || s_[pos_] == '\\') return false;
            if (s_[pos_++] != '\'') continue;
            if (pos_ < s_.size() && s_[pos_] == '\'') {
                ++pos_;
                continue;
            }
            return !string_continues();
        }
    }
    // E'...': backslash escapes, and '' for a quote.
    bool escape_string() {
        ++pos_;
        for (;;) {
            if (pos_ == s_.size()) return false;
            const char c = s_[pos_++];
            if (c == '\\') {
                if (pos_ == s_.size()) return false;
                ++pos_;
            } else if (c == '\'') {
                if (pos_ < s_.size() && s_[pos_] == '\'') {
                    ++pos_;
                    continue;
                }
                return !string_continues();
            }
        }
    }
    // Two literals separated by whitespace holding a newline are one string
    // in SQL ('a'\n'b' is 'ab'): not worth the trouble, refused.
    bool string_continues() const {
        size_t p = pos_;
        while (p < s_.size() && is_space(s_[p])) ++p;
        return p > pos_ && p < s_.size() && s_[p] == '\'';
    }
    // $tag$...$tag$, the tag empty or an identifier without '$'.
    bool dollar_string() {
        size_t p = pos_ + 1;
        if (p < s_.size() && ident_start(s_[p])) {
            ++p;
            while (p < s_.size() && ident_char(s_[p]) && s_[p] != '$') ++p;
        }
        if (p >= s_.size() || s_[p] != '$') return false;
        const std::string_view tag = s_.substr(pos_, p + 1 - pos_);
        const size_t close = s_.find(tag, p + 1);
        if (close == std::string_view::npos) return false;
        pos_ = close + tag.size();
        return true;
    }
    // [+-] digits [. digits] [e [+-] digits]; anything glued to it (10ms) is refused.
    bool number() {
        if (s_[pos_] == '-' || s_[pos_] == '+') ++pos_;
        size_t digits = 0;
        while (pos_ < s_.size() && is_digit(s_[pos_])) ++pos_, ++digits;
        if (pos_ < s_.size() && s_[pos_] == '.') {
            ++pos_;
            while (pos_ < s_.size() && is_digit(s_[pos_])) ++pos_, ++digits;
        }
        if (digits == 0) return false;
        if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
            ++pos_;
            if (pos_ < s_.size() && (s_[pos_] == '-' || s_[pos_] == '+')) ++pos_;
            if (pos_ == s_.size() || !is_digit(s_[pos_])) return false;
            while (pos_ < s_.size() && is_digit(s_[pos_])) ++pos_;
        }
        return pos_ == s_.size() || !(ident_char(s_[pos_]) || s_[pos_] == '.' || s_[pos_] == '\'' || s_[pos_] == '"');
    }

    std::string_view s_;
    size_t pos_ = 0;
};

using K = Token::Kind;

bool is_word(const Token& t, std::string_view w) { return t.kind == K::Word && t.ident == w; }

// After the statement: at most a ';', then nothing but whitespace.
bool at_end(Lexer& lx, Token t) {
    if (t.kind == K::Semicolon) t = lx.next();
    return t.kind == K::End;
}

// var_name: ColId ('.' ColId)*. Quoted parts keep their case. `t` is its
// first token; on return, the token after the name.
std::optional<std::string> var_name(Lexer& lx, Token& t) {
    std::string name;
    for (;;) {
        if (t.kind != K::Word && t.kind != K::QuotedIdent) return std::nullopt;
        name += t.ident;
        t = lx.next();
        if (t.kind != K::Dot) return name;
        name.push_back('.');
        t = lx.next();
    }
}

// Parameters that are not session state a SET can carry from one server to
// another: the role and authorization (privilege state), and the
// transaction_* ones (they apply to the current transaction only).
bool refused_name(std::string_view name) {
    std::string n(name);
    for (char& c : n) c = lower(c);
    return n == "role" || n == "session_authorization" || n.starts_with("transaction_");
}

// value (',' value)*, each a literal, identifier or number; `t` is the first
// token. Returns the raw text from the first to the last token.
std::optional<std::string_view> var_list(std::string_view sql, Lexer& lx, Token& t, bool single) {
    const char* begin = nullptr;
    const char* end = nullptr;
    for (;;) {
        if (t.kind != K::Word && t.kind != K::QuotedIdent && t.kind != K::String && t.kind != K::Number)
            return std::nullopt;
        if (!begin) begin = t.text.data();
        end = t.text.data() + t.text.size();
        t = lx.next();
        if (t.kind != K::Comma || single) break;
        t = lx.next();
    }
    return sql.substr(size_t(begin - sql.data()), size_t(end - begin));
}

}  // namespace

std::optional<SetCommand> parse_set(std::string_view sql) {
    // A Query's text is a C string: a NUL cannot be part of it.
    if (sql.find('\0') != std::string_view::npos) return std::nullopt;
    Lexer lx(sql);
    Token t = lx.next();
    SetCommand cmd;
    if (is_word(t, "reset")) {
        t = lx.next();
        if (is_word(t, "all")) {
            cmd.reset_all = true;
            cmd.reset = true;
            t = lx.next();
        } else if (is_word(t, "time")) {
            if (!is_word(t = lx.next(), "zone")) return std::nullopt;
            cmd.name = "timezone";
            cmd.reset = true;
            t = lx.next();
        } else {
            // RESET SESSION AUTHORIZATION, RESET TRANSACTION ISOLATION LEVEL:
            // a name followed by more words, refused by at_end.
            auto name = var_name(lx, t);
            if (!name || refused_name(*name)) return std::nullopt;
            cmd.name = std::move(*name);
            cmd.reset = true;
        }
        if (!at_end(lx, t)) return std::nullopt;
        return cmd;
    }
    if (!is_word(t, "set")) return std::nullopt;
    t = lx.next();
    if (is_word(t, "session")) {
        t = lx.next();
        // SET SESSION AUTHORIZATION / CHARACTERISTICS AS TRANSACTION.
        if (is_word(t, "authorization") || is_word(t, "characteristics")) return std::nullopt;
    } else if (is_word(t, "local") || is_word(t, "transaction") || is_word(t, "role")) {
        return std::nullopt;
    }
    if (is_word(t, "time")) {
        // SET TIME ZONE value | LOCAL | DEFAULT; no TO, one value, and no
        // INTERVAL form (a generic SET timezone would not take it).
        if (!is_word(t = lx.next(), "zone")) return std::nullopt;
        cmd.name = "timezone";
        t = lx.next();
        if (is_word(t, "local") || is_word(t, "default")) {
            cmd.reset = true;
            t = lx.next();
        } else {
            if (t.kind == K::Word && t.ident == "interval") return std::nullopt;
            const auto v = var_list(sql, lx, t, true);
            if (!v) return std::nullopt;
            cmd.value = std::string(*v);
        }
        if (!at_end(lx, t)) return std::nullopt;
        return cmd;
    }
    auto name = var_name(lx, t);
    if (!name || refused_name(*name)) return std::nullopt;
    cmd.name = std::move(*name);
    if (!is_word(t, "to") && t.kind != K::Equals) return std::nullopt;  // FROM CURRENT, SET SCHEMA/NAMES ...
    t = lx.next();
    if (is_word(t, "default")) {
        cmd.reset = true;
        t = lx.next();
    } else {
        const auto v = var_list(sql, lx, t, false);
        if (!v) return std::nullopt;
        cmd.value = std::string(*v);
    }
    if (!at_end(lx, t)) return std::nullopt;
    return cmd;
}

std::string quote_literal(std::string_view v) {
    std::string out = "E'";
    for (char c : v) {
        if (c == '\0') continue;
        if (c == '\'' || c == '\\') out.push_back(c);
        out.push_back(c);
    }
    out.push_back('\'');
    return out;
}

namespace {

// PostgreSQL's reserved keywords, and those that may name a function or type
// only (SQL Key Words appendix): neither can be a part of a parameter name
// without quotes.
bool reserved_word(std::string_view w) {
    static constexpr std::string_view words[] = {
        "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric", "authorization",
        "binary", "both", "case", "cast", "check", "collate", "collation", "column", "concurrently",
        "constraint", "create", "cross", "current_catalog", "current_date", "current_role",
        "current_schema", "current_time", "current_timestamp", "current_user", "default", "deferrable",
        "desc", "distinct", "do", "else", "end", "except", "false", "fetch", "for", "foreign", "freeze",
        "from", "full", "grant", "group", "having", "ilike", "in", "initially", "inner", "intersect",
        "into", "is", "isnull", "join", "lateral", "leading", "left", "like", "limit", "localtime",
        "localtimestamp", "natural", "not", "notnull", "null", "offset", "on", "only", "or", "order",
        "outer", "overlaps", "placing", "primary", "references", "returning", "right", "select",
        "session_user", "similar", "some", "symmetric", "system_user", "table", "tablesample", "then",
        "to", "trailing", "true", "union", "unique", "user", "using", "variadic", "verbose", "when",
        "where", "window", "with",
    };
    std::string l(w);
    for (char& c : l) c = lower(c);
    return std::find(std::begin(words), std::end(words), l) != std::end(words);
}

// Words that open a special form of SET or RESET (SET TIME ZONE, SET SESSION
// ...): a name starting with one is quoted, so it reads as a parameter.
bool set_keyword(std::string_view w) {
    static constexpr std::string_view words[] = {
        "catalog", "constraints", "local", "names", "role", "schema", "session", "time", "transaction", "xml",
    };
    std::string l(w);
    for (char& c : l) c = lower(c);
    return std::find(std::begin(words), std::end(words), l) != std::end(words);
}

// GUC names are case-insensitive, so a plain one goes unquoted (DateStyle
// included): [A-Za-z_][A-Za-z0-9_]* parts joined by dots, no part a reserved
// word. Anything else is one quoted identifier: the server looks up
// "app.user" and app."user" alike.
std::string guc_name(std::string_view name) {
    bool plain = !name.empty();
    for (size_t start = 0; plain && start <= name.size();) {
        size_t dot = name.find('.', start);
        if (dot == std::string_view::npos) dot = name.size();
        const std::string_view part = name.substr(start, dot - start);
        plain = !part.empty() && !is_digit(part[0]) && !reserved_word(part) && (start > 0 || !set_keyword(part)) &&
                std::all_of(part.begin(), part.end(), [](char c) {
                    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '_';
                });
        start = dot + 1;
    }
    if (plain) return std::string(name);
    std::string out = "\"";
    for (char c : name) {
        if (c == '\0') continue;
        if (c == '"') out.push_back('"');
        out.push_back(c);
    }
    out.push_back('"');
    return out;
}

}  // namespace

std::string set_statement(std::string_view name, std::string_view value, bool value_is_sql) {
    return "SET " + guc_name(name) + " TO " + (value_is_sql ? std::string(value) : quote_literal(value));
}

std::string reset_statement(std::string_view name) { return "RESET " + guc_name(name); }

namespace {

// C isspace() in the C locale: what the server splits "options" on.
bool c_space(char c) noexcept { return is_space(c); }

// The server's own switches (postgres.c's getopt string) that take an
// argument: it is skipped with them.
bool takes_argument(char c) noexcept { return c != '\0' && std::strchr("BcCDdfhkNprStvW-", c) != nullptr; }

void add_setting(std::vector<std::pair<std::string, std::string>>& out, std::string_view arg) {
    const size_t eq = arg.find('=');
    if (eq == std::string_view::npos || eq == 0) return;  // the server refuses "-c name" alone
    std::string name(arg.substr(0, eq));
    for (char& c : name) c = c == '-' ? '_' : lower(c);
    out.emplace_back(std::move(name), std::string(arg.substr(eq + 1)));
}

}  // namespace

std::vector<std::pair<std::string, std::string>> parse_startup_options(std::string_view options) {
    // Split on unescaped whitespace; a backslash takes the next byte as it is.
    std::vector<std::string> args;
    for (size_t i = 0; i < options.size();) {
        while (i < options.size() && c_space(options[i])) ++i;
        if (i == options.size()) break;
        std::string arg;
        bool escaped = false;
        for (; i < options.size(); ++i) {
            const char c = options[i];
            if (!escaped && c_space(c)) break;
            if (!escaped && c == '\\') {
                escaped = true;
            } else {
                escaped = false;
                arg.push_back(c);
            }
        }
        args.push_back(std::move(arg));
    }
    // getopt: "-xyz" is switches x, y, z; a switch with an argument takes the
    // rest of its word, or the next word.
    std::vector<std::pair<std::string, std::string>> out;
    for (size_t a = 0; a < args.size(); ++a) {
        const std::string& arg = args[a];
        if (arg == "--") break;                         // getopt: the end of the switches
        if (arg.size() < 2 || arg[0] != '-') continue;  // the server would refuse it
        for (size_t j = 1; j < arg.size(); ++j) {
            const char sw = arg[j];
            if (!takes_argument(sw)) continue;
            std::string_view value;
            if (j + 1 < arg.size()) {
                value = std::string_view(arg).substr(j + 1);
            } else if (a + 1 < args.size()) {
                value = args[++a];
            } else {
                break;
            }
            if (sw == 'c' || sw == '-') add_setting(out, value);
            break;
        }
    }
    return out;
}

}  // namespace pgrelay::protocol::pool
