// FrontendAuth and BackendLogin (protocol/login.hpp) talking to each other in
// memory: pgrelay's server half authenticating pgrelay's client half, for
// every secret kind; the ClientKey recovered by one logging in with the other
// (pass-through); wrong passwords and unknown users alike (28P01, one message);
// a hostile or broken server refused; malformed client messages refused.
#include <catch2/catch.hpp>

#include <random>

#include "protocol/encode.hpp"
#include "protocol/frames.hpp"
#include "protocol/login.hpp"

using namespace pgrelay::protocol;
using K = LoginStep::Kind;

namespace {

// PostgreSQL 15's secrets for scramuser/scrampass and md5user/md5pass.
constexpr const char* kPgScram =
    "SCRAM-SHA-256$4096:vuDJEnM0Obo+hh/FO1/fOw==$3DlBySc+s/2KNH8X3yoh92ql+jqyBg4S9YC4wzI+Q1U=:"
    "mlXrwpSGXno0AZW8UnEHc7+u1VKgJixbuj89yD/bTtY=";
constexpr const char* kPgMd5 = "md57541d4e65fae11bd07f18dc6fe2b02bc";

std::vector<std::pair<char, std::string>> split(const std::string& bytes) {
    std::vector<std::pair<char, std::string>> out;
    size_t at = 0;
    while (at + 5 <= bytes.size()) {
        const uint32_t len = read_u32(reinterpret_cast<const uint8_t*>(bytes.data() + at + 1));
        REQUIRE(len >= 4);
        REQUIRE(at + 1 + len <= bytes.size());
        out.emplace_back(bytes[at], bytes.substr(at + 5, len - 4));
        at += 1 + len;
    }
    REQUIRE(at == bytes.size());
    return out;
}

std::span<const uint8_t> span_of(const std::string& s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

FrontendAuth::Options opts() {
    FrontendAuth::Options o;
    o.mock_key = "test mock key";
    o.server_nonce = scram::make_nonce();
    o.md5_salt = {0x12, 0x34, 0x56, 0x78};
    return o;
}

// A ReadyForQuery 'I', as PostgreSQL sends after AuthenticationOk.
void message_ready(std::string& out) {
    out += 'Z';
    uint8_t len[4];
    write_u32(len, 5);
    out.append(reinterpret_cast<const char*>(len), 4);
    out += 'I';
}

struct Result {
    LoginStep server, client;
    std::optional<crypto::Digest> client_key;
    std::string server_error_sqlstate;
};

// Pumps messages between the two until one side is done or failed. The
// server side answers AuthenticationOk; a ReadyForQuery is added after it,
// as PostgreSQL would, so BackendLogin can finish.
Result pump(FrontendAuth& server, BackendLogin& client) {
    Result r;
    LoginStep s = server.start();
    for (int round = 0; round < 10; ++round) {
        std::string to_client = s.bytes;
        if (s.kind == K::Done) {
            std::string extra;
            message_ready(extra);
            to_client += extra;
        }
        LoginStep c{K::Send, {}, {}, {}};
        for (const auto& [type, body] : split(to_client)) {
            c = client.on_message(type, span_of(body));
            if (c.kind != K::Send) break;
        }
        r.server = s;
        r.client = c;
        if (s.kind != K::Send || c.kind != K::Send) {
            if (s.kind == K::Fail) {
                auto msgs = split(s.bytes);
                REQUIRE(msgs.size() == 1);
                REQUIRE(msgs[0].first == 'E');
                r.server_error_sqlstate = s.sqlstate;
            }
            r.client_key = server.client_key();
            return r;
        }
        REQUIRE(!c.bytes.empty());
        auto msgs = split(c.bytes);
        REQUIRE(msgs.size() == 1);
        s = server.on_message(msgs[0].first, span_of(msgs[0].second));
    }
    FAIL("no end after 10 rounds");
    return r;
}

}  // namespace

TEST_CASE("login: SCRAM against PostgreSQL's secret, with the password", "[auth][login]") {
    FrontendAuth server("scramuser", auth::parse_secret(kPgScram), opts());
    BackendLogin client("scramuser", {std::string("scrampass"), {}, {}, {}}, scram::make_nonce());
    auto r = pump(server, client);
    INFO(r.server.error << " / " << r.client.error);
    CHECK(r.server.kind == K::Done);
    CHECK(r.client.kind == K::Done);
    CHECK(server.used_scram());
    REQUIRE(r.client_key);
    CHECK(client.status() == TxStatus::Idle);
    // The server's last bytes: SASLFinal then Ok.
    auto msgs = split(r.server.bytes);
    REQUIRE(msgs.size() == 2);
    CHECK(read_u32(reinterpret_cast<const uint8_t*>(msgs[0].second.data())) == 12);
    CHECK(read_u32(reinterpret_cast<const uint8_t*>(msgs[1].second.data())) == 0);
}

TEST_CASE("login: the recovered ClientKey logs in again with no password", "[auth][login]") {
    FrontendAuth first("scramuser", auth::parse_secret(kPgScram), opts());
    BackendLogin app("scramuser", {std::string("scrampass"), {}, {}, {}}, scram::make_nonce());
    auto r = pump(first, app);
    REQUIRE(r.client_key);
    // pgrelay, with no client present, against a server holding that secret.
    FrontendAuth server("scramuser", auth::parse_secret(kPgScram), opts());
    BackendLogin relay("scramuser", {{}, {}, auth::parse_scram_secret(kPgScram), r.client_key}, scram::make_nonce());
    auto again = pump(server, relay);
    INFO(again.server.error << " / " << again.client.error);
    CHECK(again.server.kind == K::Done);
    CHECK(again.client.kind == K::Done);
}

TEST_CASE("login: md5, from the stored hash or the password", "[auth][login]") {
    FrontendAuth server("md5user", auth::parse_secret(kPgMd5), opts());
    BackendLogin client("md5user", {{}, std::string(kPgMd5), {}, {}}, scram::make_nonce());
    auto r = pump(server, client);
    CHECK(r.server.kind == K::Done);
    CHECK(r.client.kind == K::Done);
    CHECK_FALSE(server.used_scram());
    CHECK_FALSE(r.client_key);
    FrontendAuth server2("md5user", auth::parse_secret(kPgMd5), opts());
    BackendLogin client2("md5user", {std::string("md5pass"), {}, {}, {}}, scram::make_nonce());
    CHECK(pump(server2, client2).client.kind == K::Done);
}

TEST_CASE("login: a plain auth_file password is served over SCRAM", "[auth][login]") {
    FrontendAuth server("plain", auth::parse_secret("s3cret"), opts());
    BackendLogin client("plain", {std::string("s3cret"), {}, {}, {}}, scram::make_nonce());
    auto r = pump(server, client);
    CHECK(r.server.kind == K::Done);
    CHECK(server.used_scram());
}

TEST_CASE("login: a wrong password and an unknown user get the same 28P01", "[auth][login]") {
    FrontendAuth wrong_scram("scramuser", auth::parse_secret(kPgScram), opts());
    BackendLogin c1("scramuser", {std::string("nope"), {}, {}, {}}, scram::make_nonce());
    auto a = pump(wrong_scram, c1);
    FrontendAuth unknown("ghost", std::nullopt, opts());
    BackendLogin c2("ghost", {std::string("nope"), {}, {}, {}}, scram::make_nonce());
    auto b = pump(unknown, c2);
    FrontendAuth wrong_md5("md5user", auth::parse_secret(kPgMd5), opts());
    BackendLogin c3("md5user", {std::string("nope"), {}, {}, {}}, scram::make_nonce());
    auto c = pump(wrong_md5, c3);
    for (const auto* r : {&a, &b, &c}) {
        CHECK(r->server.kind == K::Fail);
        CHECK(r->server.sqlstate == "28P01");
        CHECK_FALSE(r->client_key);
    }
    CHECK(a.server.error == "password authentication failed for user \"scramuser\"");
    CHECK(b.server.error == "password authentication failed for user \"ghost\"");
    CHECK(c.server.error == "password authentication failed for user \"md5user\"");
    // The unknown user's exchange starts like a real one: SASL, then a
    // server-first with a salt and 4096 iterations.
    FrontendAuth probe("ghost", std::nullopt, opts());
    auto start = split(probe.start().bytes);
    REQUIRE(start.size() == 1);
    CHECK(read_u32(reinterpret_cast<const uint8_t*>(start[0].second.data())) == 10);
}

TEST_CASE("login: credentials that do not fit the server's method fail clearly", "[auth][login]") {
    // SCRAM keys against a server that asks for md5.
    FrontendAuth md5_server("md5user", auth::parse_secret(kPgMd5), opts());
    crypto::Digest key{};
    BackendLogin keys_only("md5user", {{}, {}, auth::parse_scram_secret(kPgScram), key}, scram::make_nonce());
    auto r = pump(md5_server, keys_only);
    CHECK(r.client.kind == K::Fail);
    CHECK_THAT(r.client.error, Catch::Contains("only SCRAM keys"));
    // An md5 hash against a SCRAM server.
    FrontendAuth scram_server("scramuser", auth::parse_secret(kPgScram), opts());
    BackendLogin hash_only("scramuser", {{}, std::string(kPgMd5), {}, {}}, scram::make_nonce());
    auto s = pump(scram_server, hash_only);
    CHECK(s.client.kind == K::Fail);
    CHECK_THAT(s.client.error, Catch::Contains("only an md5 hash"));
}

TEST_CASE("login: BackendLogin refuses a hostile or broken server", "[auth][login][garbage]") {
    auto auth_msg = [](uint32_t code, std::string payload = {}) {
        std::string out;
        encode_authentication(out, static_cast<AuthCode>(code), payload);
        return split(out)[0].second;
    };
    SECTION("AuthenticationOk in the middle of SCRAM") {
        BackendLogin l("u", {std::string("pw"), {}, {}, {}}, "nonce");
        std::string mechs = std::string("SCRAM-SHA-256") + '\0' + '\0';
        CHECK(l.on_message('R', span_of(auth_msg(10, mechs))).kind == K::Send);
        auto step = l.on_message('R', span_of(auth_msg(0)));
        CHECK(step.kind == K::Fail);
        CHECK_THAT(step.error, Catch::Contains("early"));
    }
    SECTION("a second method after SCRAM never gets the password") {
        FrontendAuth server("scramuser", auth::parse_secret(kPgScram), opts());
        BackendLogin l("scramuser", {std::string("scrampass"), {}, {}, {}}, scram::make_nonce());
        LoginStep s = server.start();
        LoginStep c;
        while (s.kind == K::Send) {
            c = l.on_message('R', span_of(split(s.bytes)[0].second));
            REQUIRE(c.kind == K::Send);
            auto m = split(c.bytes)[0];
            s = server.on_message(m.first, span_of(m.second));
        }
        REQUIRE(s.kind == K::Done);
        auto fin = split(s.bytes);
        CHECK(l.on_message('R', span_of(fin[0].second)).kind == K::Send);  // SASLFinal verified
        auto cleartext = l.on_message('R', span_of(auth_msg(3)));
        CHECK(cleartext.kind == K::Fail);
        CHECK(cleartext.bytes.empty());
    }
    SECTION("no SCRAM-SHA-256 offered, unknown methods, short messages") {
        for (const std::string& m : {auth_msg(10, std::string("SCRAM-SHA-256-PLUS") + '\0' + '\0'), auth_msg(7),
                                     auth_msg(9), std::string("\0\0", 2), auth_msg(5, "abc")}) {
            BackendLogin l("u", {std::string("pw"), {}, {}, {}}, "nonce");
            CHECK(l.on_message('R', span_of(m)).kind == K::Fail);
        }
        BackendLogin l("u", {std::string("pw"), {}, {}, {}}, "nonce");
        std::string rfq = "I";
        CHECK(l.on_message('Z', span_of(rfq)).kind == K::Fail);  // ReadyForQuery before Ok
    }
    SECTION("the server's ErrorResponse is reported with its SQLSTATE") {
        std::string err;
        encode_error_response(err, Severity::Fatal, "28P01", "password authentication failed for user \"u\"");
        BackendLogin l("u", {std::string("pw"), {}, {}, {}}, "nonce");
        auto step = l.on_message('E', span_of(split(err)[0].second));
        CHECK(step.kind == K::Fail);
        CHECK(step.sqlstate == "28P01");
    }
}

TEST_CASE("login: FrontendAuth refuses malformed client messages", "[auth][login][garbage]") {
    auto started = [](const char* secret) {
        auto a = std::make_unique<FrontendAuth>("scramuser", auth::parse_secret(secret), opts());
        a->start();
        return a;
    };
    const std::vector<std::pair<char, std::string>> bad = {
        {'Q', "SELECT 1"},
        {'p', ""},
        {'p', std::string("SCRAM-SHA-256")},                                        // no NUL, no length
        {'p', std::string("SCRAM-SHA-256\0", 14)},                                  // no length
        {'p', std::string("SCRAM-SHA-256-PLUS\0\0\0\0\1x", 24)},                    // PLUS not offered
        {'p', std::string("SCRAM-SHA-256\0\0\0\0\5abc", 21)},                       // length beyond the data
        {'p', std::string("SCRAM-SHA-256\0\xff\xff\xff\xff", 18)},                 // -1: no data
        {'p', std::string("SCRAM-SHA-256\0\0\0\0\5n,,xx", 23)},                     // bad client-first
    };
    for (const auto& [type, body] : bad) {
        INFO(type << " " << body.size());
        auto a = started(kPgScram);
        auto step = a->on_message(type, span_of(body));
        CHECK(step.kind == K::Fail);
        CHECK((step.sqlstate == "08P01" || step.sqlstate == "0A000"));
        CHECK(split(step.bytes).at(0).first == 'E');
    }
    auto m = started(kPgMd5);
    CHECK(m->on_message('p', span_of(std::string("md5abc"))).sqlstate == "08P01");  // no NUL
    std::mt19937 rng(99);
    for (int i = 0; i < 2000; ++i) {
        auto a = started((i % 2) ? kPgScram : kPgMd5);
        std::string junk(rng() % 64, '\0');
        for (auto& ch : junk) ch = char(rng());
        auto step = a->on_message('p', span_of(junk));
        CHECK(step.kind != K::Done);
    }
}
