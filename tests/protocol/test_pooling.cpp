// Transaction pooling helpers: ResponseTracker against the answer sequences a
// PostgreSQL server sends (extended batches, pipelines, errors and the
// skip-till-Sync that follows, COPY both ways, pgrelay's own inserted
// messages); the Parse/Bind/Describe/Close codecs; prepared statement naming;
// SET/RESET recognition, quoting and the startup "options" parameter.
#include <catch2/catch.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "protocol/frames.hpp"
#include "protocol/messages.hpp"
#include "protocol/pooling.hpp"

using namespace pgrelay::protocol;
using namespace pgrelay::protocol::pool;
using namespace std::string_literals;

namespace {

using Bytes = std::vector<uint8_t>;
using Origin = ResponseTracker::Origin;
using Verdict = ResponseTracker::Verdict;

std::span<const uint8_t> bytes(std::string_view s) {
    return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// The body of the one whole message in `msg` (type byte and length checked).
std::span<const uint8_t> body_of(const std::string& msg, char type) {
    REQUIRE(msg.size() >= 5);
    REQUIRE(msg[0] == type);
    REQUIRE(read_u32(reinterpret_cast<const uint8_t*>(msg.data()) + 1) == msg.size() - 1);
    return bytes(msg).subspan(5);
}

void send(ResponseTracker& t, std::string_view types, Origin origin = Origin::Client) {
    for (char c : types) t.sent(c, origin, c == 'D' ? 'P' : 0);
}

// Feeds backend message types; one letter per message says what happened to
// it: f = forwarded, d = dropped, r = rewritten as ParseComplete, ? = unexpected.
// Upper case when the message ended its request.
std::string feed(ResponseTracker& t, std::string_view types, TxStatus z = TxStatus::Idle) {
    std::string out;
    for (char c : types) {
        const auto r = t.received(c, c == 'Z' ? std::optional<TxStatus>(z) : std::nullopt);
        char v = r.verdict == Verdict::Forward ? 'f' : r.verdict == Verdict::Drop ? 'd' : 'r';
        if (r.unexpected) v = '?';
        if (r.entry_done) v = char(v - 'a' + 'A');
        out.push_back(v);
    }
    return out;
}

}  // namespace

// ---------------------------------------------------------------------------
// ResponseTracker

TEST_CASE("ResponseTracker: a libpq extended query batch", "[protocol][pooling]") {
    // PQexecParams: Parse, Bind, Describe portal, Execute, Sync.
    ResponseTracker t;
    CHECK(t.idle());
    send(t, "PBDES");
    CHECK(t.outstanding() == 5);
    CHECK_FALSE(t.idle());
    CHECK(feed(t, "12T") == "FFF");
    CHECK(t.outstanding() == 2);
    CHECK(feed(t, "DDD") == "fff");  // rows do not end the Execute
    CHECK(feed(t, "C") == "F");
    CHECK(t.outstanding() == 1);
    const auto z = t.received('Z', TxStatus::InTransaction);
    CHECK(z.verdict == Verdict::Forward);
    CHECK(z.entry_done);
    CHECK(z.ready == TxStatus::InTransaction);
    CHECK(t.idle());
    CHECK(t.last_status() == TxStatus::InTransaction);
}

TEST_CASE("ResponseTracker: Describe of a statement, Flush, portal suspension", "[protocol][pooling]") {
    ResponseTracker t;
    t.sent('P', Origin::Client);
    t.sent('D', Origin::Client, 'S');
    t.sent('H', Origin::Client);  // Flush: no answer of its own
    CHECK(t.outstanding() == 2);
    CHECK(feed(t, "1tn") == "FfF");  // ParameterDescription, then NoData ends it
    CHECK(t.idle());
    // Execute with a row limit: PortalSuspended; an empty query: EmptyQueryResponse.
    send(t, "BEEE");
    CHECK(feed(t, "2DsDCI") == "FfFfFF");
    CHECK(t.idle());
    // Terminate and CopyData outside COPY expect nothing.
    send(t, "Xd");
    CHECK(t.idle());
}

TEST_CASE("ResponseTracker: a pipeline of three batches", "[protocol][pooling]") {
    ResponseTracker t;
    send(t, "PBES");
    send(t, "BES");
    t.sent('P', Origin::Client);
    t.sent('D', Origin::Client, 'S');
    send(t, "BES");
    CHECK(t.outstanding() == 4 + 3 + 5);
    CHECK(feed(t, "12DC", TxStatus::InTransaction) == "FFfF");
    CHECK(t.received('Z', TxStatus::InTransaction).ready == TxStatus::InTransaction);
    CHECK(t.outstanding() == 8);
    CHECK(feed(t, "2CZ", TxStatus::InTransaction) == "FFF");
    CHECK(t.outstanding() == 5);
    CHECK(feed(t, "1tT2DDC") == "FfFFffF");
    const auto z = t.received('Z', TxStatus::Idle);
    CHECK(z.ready == TxStatus::Idle);
    CHECK(t.idle());
    CHECK(t.last_status() == TxStatus::Idle);
}

TEST_CASE("ResponseTracker: an error in a batch skips the rest up to Sync", "[protocol][pooling]") {
    ResponseTracker t;
    send(t, "PBDES");
    CHECK(feed(t, "1") == "F");
    // The Bind fails: the server skips Describe and Execute.
    const auto e = t.received('E');
    CHECK(e.verdict == Verdict::Forward);
    CHECK(e.entry_done);
    CHECK_FALSE(e.inserted_error);
    CHECK(t.outstanding() == 1);  // just the Sync
    CHECK(feed(t, "Z", TxStatus::Failed) == "F");
    CHECK(t.idle());
    CHECK(t.last_status() == TxStatus::Failed);

    SECTION("later batches of a pipeline are not touched") {
        send(t, "PBES");
        send(t, "PBES");
        CHECK(feed(t, "E") == "F");  // the first Parse fails
        CHECK(t.outstanding() == 5);
        CHECK(feed(t, "Z12CZ") == "FFFFF");
        CHECK(t.idle());
    }
}

TEST_CASE("ResponseTracker: messages sent after an error and before Sync get no answer", "[protocol][pooling]") {
    ResponseTracker t;
    send(t, "PBE");  // no Sync yet: a driver that pipelines as it goes
    CHECK(feed(t, "1E") == "FF");
    CHECK(t.idle());
    // The server is discarding until Sync, a simple Query included.
    send(t, "BEDQ");
    t.sent('C', Origin::Client, 'S');
    CHECK(t.idle());
    send(t, "S");
    CHECK(t.outstanding() == 1);
    CHECK(feed(t, "Z") == "F");
    CHECK(t.idle());
    // After the Sync, messages are answered again.
    send(t, "PS");
    CHECK(feed(t, "1Z") == "FF");
    CHECK(t.idle());
}

TEST_CASE("ResponseTracker: an error in a simple Query or at Sync ends nothing", "[protocol][pooling]") {
    ResponseTracker t;
    send(t, "Q");
    CHECK(feed(t, "TDCE") == "ffff");  // SELECT 1; SELECT 1/0
    CHECK(t.outstanding() == 1);
    CHECK(feed(t, "Z") == "F");
    CHECK(t.idle());
    // A deferred constraint failing at the implicit COMMIT of Sync: E then Z,
    // and no skipping (there is nothing left to skip).
    send(t, "PBES");
    send(t, "Q");
    CHECK(feed(t, "12CE") == "FFFf");
    CHECK(t.outstanding() == 2);
    CHECK(feed(t, "ZCZ") == "FfF");
    CHECK(t.idle());
    // FunctionCall: FunctionCallResponse then ReadyForQuery.
    send(t, "F");
    CHECK(feed(t, "VZ") == "fF");
    CHECK(t.idle());
}

TEST_CASE("ResponseTracker: an inserted Parse before the client's Bind", "[protocol][pooling]") {
    // The client prepared S1 on another server: pgrelay prepares it here first.
    ResponseTracker t;
    t.sent('P', Origin::Inserted);
    send(t, "BDES");
    const auto one = t.received('1');
    CHECK(one.verdict == Verdict::Drop);
    CHECK(one.entry_done);
    CHECK(feed(t, "2TDCZ") == "FFfFF");
    CHECK(t.idle());
}

TEST_CASE("ResponseTracker: an inserted Parse that fails", "[protocol][pooling]") {
    ResponseTracker t;
    t.sent('P', Origin::Inserted);
    send(t, "BES");
    // The server will skip the client's Bind and Execute: the client must see why.
    const auto e = t.received('E');
    CHECK(e.verdict == Verdict::Forward);
    CHECK(e.inserted_error);
    CHECK(e.entry_done);
    CHECK(t.outstanding() == 1);
    CHECK(feed(t, "Z") == "F");
    CHECK(t.idle());

    SECTION("a batch of pgrelay's own: the client sees nothing") {
        t.sent('P', Origin::Inserted);
        t.sent('S', Origin::Inserted);
        const auto e2 = t.received('E');
        CHECK(e2.verdict == Verdict::Drop);
        CHECK(e2.inserted_error);
        CHECK(feed(t, "Z") == "D");
        CHECK(t.idle());
    }
}

TEST_CASE("ResponseTracker: an inserted SET is dropped whole", "[protocol][pooling]") {
    ResponseTracker t;
    t.sent('Q', Origin::Inserted);  // SET DateStyle TO ...
    send(t, "Q");                   // the client's own query right behind it
    // CommandComplete, a notice, ParameterStatus for the reported GUC, ReadyForQuery.
    CHECK(feed(t, "CNSZ") == "dddD");
    CHECK(t.outstanding() == 1);
    CHECK(feed(t, "TDCSZ") == "ffffF");  // the client's ParameterStatus is its own
    CHECK(t.idle());

    SECTION("one that fails") {
        t.sent('Q', Origin::Inserted);
        const auto e = t.received('E');
        CHECK(e.verdict == Verdict::Drop);
        CHECK(e.inserted_error);
        CHECK_FALSE(e.entry_done);
        const auto z = t.received('Z', TxStatus::Idle);
        CHECK(z.verdict == Verdict::Drop);
        CHECK(z.entry_done);
        CHECK(t.idle());
    }
}

TEST_CASE("ResponseTracker: NopParse answers ParseComplete", "[protocol][pooling]") {
    // The client parses a statement this server already has: pgrelay sends
    // Close of an unused name instead, and its CloseComplete becomes ParseComplete.
    ResponseTracker t;
    t.sent('C', Origin::NopParse, 'S');
    send(t, "BES");
    const auto r = t.received('3');
    CHECK(r.verdict == Verdict::RewriteAsParseComplete);
    CHECK(r.entry_done);
    CHECK(feed(t, "2CZ") == "FFF");
    CHECK(t.idle());
    // The client's own Close is answered as it is.
    t.sent('C', Origin::Client, 'S');
    CHECK(feed(t, "3") == "F");
    CHECK(t.idle());
}

TEST_CASE("ResponseTracker: COPY TO STDOUT through a simple Query", "[protocol][pooling]") {
    ResponseTracker t;
    send(t, "Q");
    CHECK(feed(t, "HddcC") == "fffff");
    CHECK(t.outstanding() == 1);
    CHECK(feed(t, "Z") == "F");
    CHECK(t.idle());
}

TEST_CASE("ResponseTracker: COPY FROM STDIN", "[protocol][pooling]") {
    ResponseTracker t;
    SECTION("through a simple Query") {
        send(t, "Q");
        CHECK(feed(t, "G") == "f");
        send(t, "dddc");  // the client's data: no answers expected
        CHECK(t.outstanding() == 1);
        CHECK(feed(t, "CZ") == "fF");
        CHECK(t.idle());
    }
    SECTION("aborted with CopyFail") {
        send(t, "Q");
        CHECK(feed(t, "G") == "f");
        send(t, "df");
        CHECK(feed(t, "EZ") == "fF");
        CHECK(t.idle());
    }
    SECTION("extended, as libpq does it: the Sync sent during COPY is ignored") {
        send(t, "PBDES");
        CHECK(feed(t, "12nG") == "FFFf");
        CHECK(t.outstanding() == 1);  // the Execute; the server ignores that Sync
        send(t, "dd");
        t.sent('S', Origin::Client);  // a Sync inside COPY: ignored too
        CHECK(t.outstanding() == 1);
        send(t, "cS");  // CopyDone and libpq's second Sync
        CHECK(t.outstanding() == 2);
        CHECK(feed(t, "CZ") == "FF");
        CHECK(t.idle());
    }
    SECTION("extended, with an error in the data") {
        send(t, "PBES");
        CHECK(feed(t, "12G") == "FFf");
        send(t, "d");
        CHECK(feed(t, "E") == "F");
        CHECK(t.idle());
        send(t, "dc");  // still in flight: dropped by the server
        send(t, "S");
        CHECK(t.outstanding() == 1);
        CHECK(feed(t, "Z", TxStatus::Idle) == "F");
        CHECK(t.idle());
    }
}

TEST_CASE("ResponseTracker: asynchronous messages and messages with nothing outstanding", "[protocol][pooling]") {
    ResponseTracker t;
    // NoticeResponse, NotificationResponse, ParameterStatus while idle go to the client.
    for (char c : "NAS"s) {
        const auto r = t.received(c);
        CHECK(r.verdict == Verdict::Forward);
        CHECK_FALSE(r.unexpected);
        CHECK_FALSE(r.entry_done);
    }
    // ... and while a client request runs, without ending it.
    send(t, "Q");
    CHECK(feed(t, "NATSDCZ") == "ffffffF");
    CHECK(t.idle());
    // FATAL from pg_terminate_backend: forwarded, not a desync.
    const auto fatal = t.received('E');
    CHECK(fatal.verdict == Verdict::Forward);
    CHECK_FALSE(fatal.unexpected);
    CHECK_FALSE(fatal.inserted_error);
    // A ReadyForQuery nobody asked for is.
    const auto z = t.received('Z', TxStatus::Idle);
    CHECK(z.unexpected);
    CHECK_FALSE(z.ready);
}

TEST_CASE("ResponseTracker: an answer that fits no request is flagged", "[protocol][pooling]") {
    ResponseTracker t;
    send(t, "PS");
    CHECK(feed(t, "2") == "?");  // BindComplete for a Parse
    CHECK(t.outstanding() == 2);  // left as it was
    t.sent('D', Origin::Client, 'S');
    CHECK(feed(t, "1Z") == "FF");
    CHECK(feed(t, "T") == "?");  // a statement's Describe answers ParameterDescription first
    CHECK(feed(t, "tT") == "fF");
    CHECK(t.idle());
}

TEST_CASE("ResponseTracker: reset forgets everything", "[protocol][pooling]") {
    ResponseTracker t;
    send(t, "PBE");
    CHECK(feed(t, "E") == "F");  // skipping until Sync
    CHECK(t.idle());
    send(t, "Q");
    CHECK(t.idle());
    t.reset();
    CHECK_FALSE(t.last_status());
    send(t, "Q");  // answered again
    CHECK(t.outstanding() == 1);
    CHECK(feed(t, "Z") == "F");
    CHECK(t.last_status() == TxStatus::Idle);
    t.reset();
    CHECK_FALSE(t.last_status());
}

// ---------------------------------------------------------------------------
// Codecs

TEST_CASE("Parse: encode and decode", "[protocol][pooling][codec]") {
    const std::string types = "\0\x02\0\0\0\x17\0\0\0\x19"s;  // int4, text
    std::string out = "xyz";  // encoders append
    encode_parse(out, "s1", "SELECT $1, $2", bytes(types));
    CHECK(out.substr(0, 3) == "xyz");
    const std::string msg = out.substr(3);
    CHECK(msg == "P\0\0\0\x1fs1\0SELECT $1, $2\0\0\x02\0\0\0\x17\0\0\0\x19"s);
    const auto body = body_of(msg, 'P');
    const auto p = decode_parse(body);
    REQUIRE(p);
    CHECK(p->name == "s1");
    CHECK(p->query == "SELECT $1, $2");
    CHECK(std::string(p->param_types.begin(), p->param_types.end()) == types);

    // Every truncation fails, as does a trailing byte.
    for (size_t n = 0; n < body.size(); ++n) CHECK_FALSE(decode_parse(body.first(n)));
    std::string longer(body.begin(), body.end());
    CHECK_FALSE(decode_parse(bytes(longer + "x")));
    // Counts that do not match the bytes, or are negative.
    CHECK_FALSE(decode_parse(bytes("\0q\0\0\x01"s)));
    CHECK_FALSE(decode_parse(bytes("\0q\0\xff\xff"s)));
    CHECK_FALSE(decode_parse(bytes("\0q\0\0\0\0\0\0\0"s)));
    CHECK_FALSE(decode_parse(bytes("no nul at all"s)));

    // The unnamed statement, no types; an empty raw type list encodes a zero count.
    std::string unnamed;
    encode_parse(unnamed, "", "SELECT 1", {});
    const auto u = decode_parse(body_of(unnamed, 'P'));
    REQUIRE(u);
    CHECK(u->name.empty());
    CHECK(u->query == "SELECT 1");
    CHECK(std::string(u->param_types.begin(), u->param_types.end()) == "\0\0"s);
}

TEST_CASE("Bind: encode and decode", "[protocol][pooling][codec]") {
    // One format code (binary), two parameters (4 bytes, NULL), one result format.
    const std::string rest = "\0\x01\0\x01\0\x02\0\0\0\x04\0\0\0\x2a\xff\xff\xff\xff\0\x01\0\0"s;
    std::string msg;
    encode_bind(msg, "", "pgrelay_1f", bytes(rest));
    const auto body = body_of(msg, 'B');
    const auto b = decode_bind(body);
    REQUIRE(b);
    CHECK(b->portal.empty());
    CHECK(b->statement == "pgrelay_1f");
    CHECK(std::string(b->rest.begin(), b->rest.end()) == rest);
    // The rename round trip a pooler does: same rest, another statement name.
    std::string renamed;
    encode_bind(renamed, b->portal, "s1", b->rest);
    CHECK(renamed == "B\0\0\0\x1e\0s1\0"s + rest);

    for (size_t n = 0; n < body.size(); ++n) CHECK_FALSE(decode_bind(body.first(n)));
    std::string longer(body.begin(), body.end());
    CHECK_FALSE(decode_bind(bytes(longer + "\0"s)));
    // The shortest Bind: no formats, no parameters, no result formats.
    CHECK(decode_bind(bytes("p\0s\0\0\0\0\0\0\0"s)));
    // A parameter length below -1, a negative count, a length past the end.
    CHECK_FALSE(decode_bind(bytes("\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0"s)));
    CHECK_FALSE(decode_bind(bytes("\0\0\xff\xff\0\0\0\0"s)));
    CHECK_FALSE(decode_bind(bytes("\0\0\0\0\0\x01\0\0\0\x10\0\0"s)));
    CHECK_FALSE(decode_bind(bytes("\0\0\x7f\xff\xff\xff\xff\xff\0\0"s)));  // 2 GB parameter, 4 bytes there
}

TEST_CASE("Describe and Close: encode and decode", "[protocol][pooling][codec]") {
    std::string d, c;
    encode_describe(d, 'S', "s1");
    encode_close(c, 'P', "");
    CHECK(d == "D\0\0\0\x08Ss1\0"s);
    CHECK(c == "C\0\0\0\x06P\0"s);
    const auto td = decode_target(body_of(d, 'D'));
    REQUIRE(td);
    CHECK(td->kind == 'S');
    CHECK(td->name == "s1");
    const auto tc = decode_target(body_of(c, 'C'));
    REQUIRE(tc);
    CHECK(tc->kind == 'P');
    CHECK(tc->name.empty());

    CHECK_FALSE(decode_target(bytes("Xs1\0"s)));   // neither statement nor portal
    CHECK_FALSE(decode_target(bytes("Ss1"s)));     // no NUL
    CHECK_FALSE(decode_target(bytes("Ss1\0\0"s)));  // trailing
    CHECK_FALSE(decode_target(bytes("S"s)));
    CHECK_FALSE(decode_target({}));
}

TEST_CASE("Query, Sync, ParameterStatus, ReadyForQuery, CommandComplete", "[protocol][pooling][codec]") {
    std::string q;
    encode_query(q, "SET x TO 1");
    CHECK(q == "Q\0\0\0\x0fSET x TO 1\0"s);
    std::string s;
    encode_sync(s);
    CHECK(s == "S\0\0\0\x04"s);

    std::string ps;
    encode_parameter_status(ps, "DateStyle", "ISO, MDY");
    const auto p = decode_parameter_status(body_of(ps, 'S'));
    REQUIRE(p);
    CHECK(p->name == "DateStyle");
    CHECK(p->value == "ISO, MDY");

    for (TxStatus st : {TxStatus::Idle, TxStatus::InTransaction, TxStatus::Failed}) {
        std::string z;
        encode_ready_for_query(z, st);
        CHECK(z.size() == 6);
        CHECK(decode_ready_for_query(body_of(z, 'Z')) == st);
    }

    CHECK(decode_command_complete(bytes("SET\0"s)) == "SET");
    CHECK(decode_command_complete(bytes("SELECT 3\0"s)) == "SELECT 3");
    CHECK(decode_command_complete(bytes("\0"s)) == "");
    CHECK_FALSE(decode_command_complete(bytes("SET"s)));
    CHECK_FALSE(decode_command_complete(bytes("SET\0x"s)));
    CHECK_FALSE(decode_command_complete({}));
}

// ---------------------------------------------------------------------------
// Prepared statements

TEST_CASE("StatementCache shares one Statement per text and types", "[protocol][pooling][statements]") {
    StatementCache cache;
    const std::string int4 = "\0\x01\0\0\0\x17"s, text = "\0\x01\0\0\0\x19"s;
    auto a = cache.intern("SELECT $1", bytes(int4));
    auto b = cache.intern("SELECT $1", bytes(int4));
    auto c = cache.intern("SELECT $1", bytes(text));
    auto d = cache.intern("SELECT $1 ", bytes(int4));
    CHECK(a == b);
    CHECK(a->id != c->id);
    CHECK(a->id != d->id);
    CHECK(c->id != d->id);
    CHECK(a->query == "SELECT $1");
    CHECK(a->param_types == int4);
    CHECK(a->server_name.starts_with("pgrelay_"));
    CHECK(a->server_name != c->server_name);
    CHECK(cache.size() == 3);

    // Freed when no one holds it; the next intern is a new statement (ids are
    // never reused, so no server mistakes it for the old one).
    const uint64_t old_id = c->id;
    c.reset();
    CHECK(cache.size() == 2);
    auto c2 = cache.intern("SELECT $1", bytes(text));
    CHECK(c2->id != old_id);
    CHECK(c2->id != a->id);
    a.reset();
    CHECK(cache.size() == 3);  // b still holds it
    b.reset();
    d.reset();
    c2.reset();
    CHECK(cache.size() == 0);
    cache.purge();
    CHECK(cache.stored() == 0);
}

TEST_CASE("StatementCache does not grow with statements no one holds", "[protocol][pooling][statements]") {
    StatementCache cache;
    std::vector<std::shared_ptr<const Statement>> kept;
    for (int i = 0; i < 5000; ++i) {
        auto s = cache.intern("SELECT " + std::to_string(i), {});
        if (i % 100 == 0) kept.push_back(std::move(s));
    }
    CHECK(cache.size() == kept.size());
    CHECK(cache.stored() < 200);  // purged as it went
    for (const auto& s : kept) CHECK(cache.intern(s->query, {}) == s);
}

TEST_CASE("ClientStatements maps client names", "[protocol][pooling][statements]") {
    StatementCache cache;
    ClientStatements cs;
    auto s1 = cache.intern("SELECT 1", {});
    auto s2 = cache.intern("SELECT 2", {});
    CHECK(cs.add("a", s1));
    CHECK(cs.add("b", s1));
    CHECK(cs.size() == 2);
    CHECK(cs.find("a") == s1);
    CHECK(cs.find("b") == s1);
    CHECK_FALSE(cs.find("c"));
    CHECK(cs.add("a", s2));  // a Parse over an existing name replaces it
    CHECK(cs.find("a") == s2);
    CHECK(cs.size() == 2);
    CHECK_FALSE(cs.add("", s1));  // the unnamed statement is passed through
    CHECK_FALSE(cs.find(""));
    CHECK(cs.size() == 2);
    CHECK(cs.erase("b"));
    CHECK_FALSE(cs.erase("b"));
    CHECK_FALSE(cs.find("b"));
    // The client's references keep the statement alive in the cache.
    s1.reset();
    s2.reset();
    CHECK(cache.size() == 1);
    cs.clear();
    CHECK(cs.size() == 0);
    CHECK(cache.size() == 0);
}

TEST_CASE("ServerStatements evicts the least recently used", "[protocol][pooling][statements]") {
    StatementCache cache;
    std::vector<std::shared_ptr<const Statement>> s;
    for (int i = 0; i < 5; ++i) s.push_back(cache.intern("SELECT " + std::to_string(i), {}));
    ServerStatements ss(3);
    CHECK_FALSE(ss.add(*s[0]));
    CHECK_FALSE(ss.add(*s[1]));
    CHECK_FALSE(ss.add(*s[2]));
    CHECK(ss.size() == 3);
    CHECK(ss.has(s[0]->id));
    ss.touch(s[0]->id);                        // 0 used: 1 is now the oldest
    CHECK(ss.add(*s[3]) == s[1]->server_name);  // Close it on the server
    CHECK_FALSE(ss.has(s[1]->id));
    CHECK(ss.size() == 3);
    CHECK_FALSE(ss.add(*s[0]));  // already there: touched, nothing evicted
    CHECK(ss.add(*s[4]) == s[2]->server_name);
    CHECK(ss.add(*s[1]) == s[3]->server_name);
    CHECK(ss.has(s[0]->id));
    CHECK(ss.has(s[4]->id));
    CHECK(ss.has(s[1]->id));
    ss.erase(s[0]->id);  // e.g. the client's Close
    CHECK_FALSE(ss.has(s[0]->id));
    CHECK(ss.size() == 2);
    ss.erase(s[0]->id);  // twice is harmless
    ss.touch(12345);     // unknown id: harmless
    CHECK(ss.size() == 2);
    ss.clear();
    CHECK(ss.size() == 0);
    CHECK_FALSE(ss.has(s[4]->id));

    ServerStatements one(0);  // a cap of 0 still keeps the statement just prepared
    CHECK_FALSE(one.add(*s[0]));
    CHECK(one.add(*s[1]) == s[0]->server_name);
    CHECK(one.has(s[1]->id));
}

// ---------------------------------------------------------------------------
// Session parameters

namespace {

struct SetCase {
    std::string sql;
    std::optional<SetCommand> want;
};

SetCommand set(std::string name, std::string value) { return {std::move(name), std::move(value), false, false}; }
SetCommand reset(std::string name) { return {std::move(name), "", true, false}; }

}  // namespace

TEST_CASE("parse_set recognises plain session SETs", "[protocol][pooling][set]") {
    const std::vector<SetCase> cases = {
        {"SET search_path TO myschema", set("search_path", "myschema")},
        {"set search_path = myschema, public", set("search_path", "myschema, public")},
        {"  SET SESSION statement_timeout = '5s' ;  \n", set("statement_timeout", "'5s'")},
        {"SET DateStyle TO 'ISO, MDY';", set("datestyle", "'ISO, MDY'")},
        {"SET \"DateStyle\" TO ISO", set("DateStyle", "ISO")},
        {"SET application_name = 'a;b''c'", set("application_name", "'a;b''c'")},
        {"SET application_name = E'it\\'s; fine'", set("application_name", "E'it\\'s; fine'")},
        {"SET application_name = $$semi;colon$$", set("application_name", "$$semi;colon$$")},
        {"SET application_name = $x$a$$b$x$", set("application_name", "$x$a$$b$x$")},
        {"SET search_path TO \"$user\", public", set("search_path", "\"$user\", public")},
        {"SET myapp.user_id = 42", set("myapp.user_id", "42")},
        {"SET myapp.\"User\" = -1.5e3", set("myapp.User", "-1.5e3")},
        {"SET extra_float_digits TO +3", set("extra_float_digits", "+3")},
        {"SET enable_seqscan TO off", set("enable_seqscan", "off")},
        {"SET x TO'y'", set("x", "'y'")},
        {"SET\tTIME ZONE 'Europe/Berlin'", set("timezone", "'Europe/Berlin'")},
        {"SET SESSION TIME ZONE UTC", set("timezone", "UTC")},
        {"set time zone -8", set("timezone", "-8")},
        {"SET TIME ZONE LOCAL", reset("timezone")},
        {"SET TIME ZONE DEFAULT", reset("timezone")},
        {"SET work_mem TO DEFAULT", reset("work_mem")},
        {"SET work_mem = default;", reset("work_mem")},
        {"RESET work_mem", reset("work_mem")},
        {"reset Time Zone;", reset("timezone")},
        {"RESET ALL", SetCommand{"", "", true, true}},
        {"SET \"time\" TO 1", set("time", "1")},
        {"RESET \"all\"", reset("all")},
    };
    for (const auto& c : cases) {
        CAPTURE(c.sql);
        const auto got = parse_set(c.sql);
        REQUIRE(got);
        CHECK(got->name == c.want->name);
        CHECK(got->value == c.want->value);
        CHECK(got->reset == c.want->reset);
        CHECK(got->reset_all == c.want->reset_all);
    }
}

TEST_CASE("parse_set refuses anything else", "[protocol][pooling][set]") {
    const std::vector<std::string> refused = {
        "",
        "SELECT 1",
        "SET",
        "SET x",
        "SET x TO",
        "SET x 1",
        "SET LOCAL work_mem = '1MB'",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "SET ROLE admin",
        "SET SESSION ROLE admin",
        "SET role = admin",
        "SET SESSION AUTHORIZATION bob",
        "SET session_authorization = bob",
        "SET transaction_isolation = serializable",
        "RESET ROLE",
        "RESET SESSION AUTHORIZATION",
        "RESET TRANSACTION ISOLATION LEVEL",
        "SET LOCAL TIME ZONE 'UTC'",
        "SET TIME ZONE INTERVAL '+00:00' HOUR TO MINUTE",
        "SET TIME ZONE 'a', 'b'",
        "SET search_path = public; DROP TABLE t",
        "SET search_path = public;;",
        "SET search_path = public; SET work_mem = '1MB'",
        "SET a = 1; -- comment",
        "SET a = 1 -- comment",
        "SET a = /* c */ 1",
        "/* c */ SET a = 1",
        "SET a = 'unterminated",
        "SET a = \"unterminated",
        "SET a = $$unterminated",
        "SET a = $1",
        "SET a = 'x\\'; DROP TABLE t; --'",  // the backslash depends on standard_conforming_strings
        "SET a = 'a\\b'",
        "SET a = E'unterminated\\'",
        "SET a = U&'\\0041'",
        "SET a = B'101'",
        "SET a = 10ms",
        "SET a = 0x1f",
        "SET a = 1 2",
        "SET a = 'x' 'y'",
        "SET a = 'x'\n'y'",
        "SET a = (1)",
        "SET a = - 1",
        "SET a = 1,",
        "SET a = DEFAULT, 1",
        "SET a FROM CURRENT",
        "SET SCHEMA 'x'",
        "SET NAMES 'UTF8'",
        "SET a.b. = 1",
        "SET \"\" = 1",
        "RESET",
        "RESET a b",
        "RESET ALL; RESET x",
        "SETx = 1",
        "SET a = 'b\0'"s,  // a Query's text ends at its NUL
    };
    for (const auto& sql : refused) {
        CAPTURE(sql);
        CHECK_FALSE(parse_set(sql));
    }
}

TEST_CASE("quote_literal, set_statement, reset_statement", "[protocol][pooling][set]") {
    CHECK(quote_literal("ISO, MDY") == "E'ISO, MDY'");
    CHECK(quote_literal("it's") == "E'it''s'");
    CHECK(quote_literal("a\\b") == "E'a\\\\b'");
    CHECK(quote_literal("") == "E''");
    CHECK(quote_literal("a\0b"s) == "E'ab'");

    CHECK(set_statement("DateStyle", "ISO, MDY", false) == "SET DateStyle TO E'ISO, MDY'");
    CHECK(set_statement("search_path", "\"$user\", public", true) == "SET search_path TO \"$user\", public");
    CHECK(set_statement("myapp.user_id", "7", false) == "SET myapp.user_id TO E'7'");
    // Names that are not plain identifiers, or contain a reserved word, are quoted.
    CHECK(set_statement("app.user", "x", false) == "SET \"app.user\" TO E'x'");
    CHECK(set_statement("my-name", "x", false) == "SET \"my-name\" TO E'x'");
    CHECK(set_statement("a\"b", "x", false) == "SET \"a\"\"b\" TO E'x'");
    CHECK(set_statement("all", "x", false) == "SET \"all\" TO E'x'");
    CHECK(set_statement("1abc", "x", false) == "SET \"1abc\" TO E'x'");
    CHECK(set_statement("a..b", "x", false) == "SET \"a..b\" TO E'x'");
    // A name that would open a special form (SET TIME ZONE, SET SESSION ...).
    CHECK(set_statement("time", "x", false) == "SET \"time\" TO E'x'");
    CHECK(set_statement("session.x", "x", false) == "SET \"session.x\" TO E'x'");
    CHECK(set_statement("x.session", "x", false) == "SET x.session TO E'x'");
    CHECK(reset_statement("work_mem") == "RESET work_mem");
    CHECK(reset_statement("a b") == "RESET \"a b\"");

    // What pgrelay writes, parse_set reads back to the same parameter and value.
    struct Param {
        std::string name, value, parsed_name;
    };
    const std::vector<Param> params = {
        {"DateStyle", "ISO, MDY", "datestyle"},
        {"application_name", "it's a \\ test; really", "application_name"},
        {"app.user", "x", "app.user"},  // quoted whole: read back as one name
        {"search_path", "", "search_path"},
        {"TimeZone", "Europe/Berlin", "timezone"},
    };
    for (const auto& [name, value, parsed_name] : params) {
        CAPTURE(name, value);
        const auto back = parse_set(set_statement(name, value, false));
        REQUIRE(back);
        CHECK(back->name == parsed_name);
        CHECK(back->value == quote_literal(value));
        CHECK_FALSE(back->reset);
        const auto raw = parse_set(set_statement(back->name, back->value, true));
        REQUIRE(raw);
        CHECK(raw->value == back->value);
        const auto r = parse_set(reset_statement(name));
        REQUIRE(r);
        CHECK(r->reset);
        CHECK(r->name == back->name);
    }
}

TEST_CASE("parse_startup_options", "[protocol][pooling][set]") {
    using Settings = std::vector<std::pair<std::string, std::string>>;
    CHECK(parse_startup_options("") == Settings{});
    CHECK(parse_startup_options("-c search_path=app -cwork_mem=64MB --Enable-SeqScan=off") ==
          Settings{{"search_path", "app"}, {"work_mem", "64MB"}, {"enable_seqscan", "off"}});
    // Backslash escapes: a space inside a value, a backslash itself.
    CHECK(parse_startup_options("-c application_name=my\\ app\\\\x") == Settings{{"application_name", "my app\\x"}});
    // Tabs and newlines separate too; only the first '=' splits.
    CHECK(parse_startup_options("\t-c\nDateStyle=ISO,\\ MDY  -c x.y=a=b ") ==
          Settings{{"datestyle", "ISO, MDY"}, {"x.y", "a=b"}});
    // Other switches are skipped with their arguments; -e takes none.
    CHECK(parse_startup_options("-B 128 -e -S 1024 -c geqo=off -d5 -F") == Settings{{"geqo", "off"}});
    // Clustered: -e, then -c with the rest of the word.
    CHECK(parse_startup_options("-ecgeqo=on") == Settings{{"geqo", "on"}});
    // A value that looks like a switch is still the argument of -c.
    CHECK(parse_startup_options("-c -x=1") == Settings{{"_x", "1"}});
    CHECK(parse_startup_options("-c name=") == Settings{{"name", ""}});
    // Malformed: no '=', no name, no argument, not a switch, after "--".
    CHECK(parse_startup_options("-c novalue -c =x stray -c") == Settings{});
    CHECK(parse_startup_options("-c a=1 -- -c b=2") == Settings{{"a", "1"}});
    CHECK(parse_startup_options("-c a=1\\") == Settings{{"a", "1"}});
}
