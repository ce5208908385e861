// Authentication exchanges (protocol/auth.hpp, protocol/scram.hpp): RFC 7677's
// SCRAM-SHA-256 test vector on both sides; secrets PostgreSQL 15 itself
// generated (SELECT rolpassword FROM pg_authid); the ClientKey recovered on
// the server side logging in again with no password (pass-through); wrong
// passwords, unknown users and every malformed message refused with the right
// SQLSTATE; auth_file parsing; md5 against PostgreSQL's hash.
#include <catch2/catch.hpp>

#include <random>
#include <string>

#include "protocol/auth.hpp"
#include "protocol/base64.hpp"
#include "protocol/scram.hpp"

using namespace pgrelay::protocol;
using Kind = scram::Step::Kind;

namespace {

// RFC 7677 section 3.
constexpr const char* kRfcClientNonce = "rOprNGfwEbeRWgbNEkqO";
constexpr const char* kRfcServerNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
constexpr const char* kRfcSalt = "W22ZaJ0SNY7soEsUEjb6gQ==";
constexpr const char* kRfcClientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
constexpr const char* kRfcServerFirst =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
constexpr const char* kRfcClientFinal =
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
constexpr const char* kRfcServerFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

// PostgreSQL 15: CREATE ROLE scramuser PASSWORD 'scrampass' (scram-sha-256),
// md5user PASSWORD 'md5pass' (md5), "odd,user=" PASSWORD 'p"w,x=y'.
constexpr const char* kPgScram =
    "SCRAM-SHA-256$4096:vuDJEnM0Obo+hh/FO1/fOw==$3DlBySc+s/2KNH8X3yoh92ql+jqyBg4S9YC4wzI+Q1U=:"
    "mlXrwpSGXno0AZW8UnEHc7+u1VKgJixbuj89yD/bTtY=";
constexpr const char* kPgMd5 = "md57541d4e65fae11bd07f18dc6fe2b02bc";
constexpr const char* kPgOddScram =
    "SCRAM-SHA-256$4096:SQpWCUYLjtwcdC7kSlOeIg==$CT+tISuO6NEzDfd8xs1PwXwwKlS/BNC5316JSI2ACHc=:"
    "8NBh2PCNovyI5xghjg9W35tOtcR6DCURbBgU32AVgzk=";

// Derived once (4096 PBKDF2 rounds); the loops below make many servers from it.
const auth::ScramSecret& rfc_secret() {
    static const auth::ScramSecret secret =
        auth::scram_secret_from_password("pencil", *base64_decode(kRfcSalt), 4096);
    return secret;
}

auth::ScramSecret pg_secret(const char* text = kPgScram) {
    auto s = auth::parse_scram_secret(text);
    REQUIRE(s);
    return *s;
}

// A whole exchange between the two state machines; returns the server's
// last step (Done or Fail) and the client's verdict on the server.
struct Exchange {
    scram::Step server, client;
    crypto::Digest client_key{};
};
Exchange run(const auth::ScramSecret& server_secret, scram::ClientCredentials creds) {
    scram::ScramServer server(server_secret, scram::make_nonce());
    scram::ScramClient client(std::move(creds), scram::make_nonce());
    Exchange e;
    auto first = server.client_first(client.client_first());
    REQUIRE(first.kind == Kind::Send);
    auto response = client.server_first(first.message);
    if (response.kind != Kind::Send) {
        e.client = response;
        return e;
    }
    e.server = server.client_final(response.message);
    if (e.server.kind == Kind::Done) {
        e.client = client.server_final(e.server.message);
        e.client_key = server.client_key();
    }
    return e;
}

}  // namespace

TEST_CASE("scram: RFC 7677's test vector, server side", "[auth][scram]") {
    const auth::ScramSecret secret = rfc_secret();
    scram::ScramServer s(secret, kRfcServerNonce);
    auto first = s.client_first(kRfcClientFirst);
    REQUIRE(first.kind == Kind::Send);
    CHECK(first.message == kRfcServerFirst);
    auto fin = s.client_final(kRfcClientFinal);
    INFO(fin.error);
    REQUIRE(fin.kind == Kind::Done);
    CHECK(fin.message == kRfcServerFinal);
    // The ClientKey it recovered is the one the password gives.
    const crypto::Digest salted = crypto::pbkdf2_sha256("pencil", *base64_decode(kRfcSalt), 4096);
    CHECK(s.client_key() == crypto::hmac_sha256(crypto::as_view(salted), "Client Key"));
    // Nothing more is accepted.
    CHECK(s.client_final(kRfcClientFinal).kind == Kind::Fail);
}

TEST_CASE("scram: RFC 7677's test vector, client side", "[auth][scram]") {
    scram::ScramClient c({"pencil", std::nullopt, {}}, kRfcClientNonce, "user");
    CHECK(c.client_first() == kRfcClientFirst);
    auto fin = c.server_first(kRfcServerFirst);
    REQUIRE(fin.kind == Kind::Send);
    CHECK(fin.message == kRfcClientFinal);
    CHECK(c.server_final(kRfcServerFinal).kind == Kind::Done);
    // A server that does not hold the secret is caught by its signature.
    scram::ScramClient d({"pencil", std::nullopt, {}}, kRfcClientNonce, "user");
    d.client_first();
    d.server_first(kRfcServerFirst);
    auto bad = d.server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G5=");
    CHECK(bad.kind == Kind::Fail);
}

TEST_CASE("scram: secrets PostgreSQL generated parse, print back, and match their passwords", "[auth][scram]") {
    const auth::ScramSecret s = pg_secret();
    CHECK(s.iterations == 4096);
    CHECK(s.salt.size() == 16);
    CHECK(auth::to_string(s) == kPgScram);
    const auth::ScramSecret again = auth::scram_secret_from_password("scrampass", s.salt, s.iterations);
    CHECK(auth::to_string(again) == kPgScram);
    CHECK(auth::to_string(auth::scram_secret_from_password("p\"w,x=y", pg_secret(kPgOddScram).salt, 4096)) ==
          kPgOddScram);
    for (const char* bad : {"", "SCRAM-SHA-256$", "SCRAM-SHA-256$4096:c2FsdA==$", "SCRAM-SHA-256$0:c2FsdA==$a:b",
                            "SCRAM-SHA-256$x:c2FsdA==$a:b", "SCRAM-SHA-256$4096:$a:b",
                            "SCRAM-SHA-256$4096:c2FsdA==$c2hvcnQ=:c2hvcnQ=", "SCRAM-SHA-1$4096:c2FsdA==$a:b"}) {
        INFO(bad);
        CHECK_FALSE(auth::parse_scram_secret(bad));
    }
}

TEST_CASE("scram: a client with the password logs in against PostgreSQL's secret", "[auth][scram]") {
    auto e = run(pg_secret(), {"scrampass", std::nullopt, {}});
    INFO(e.server.error << e.client.error);
    CHECK(e.server.kind == Kind::Done);
    CHECK(e.client.kind == Kind::Done);
    auto odd = run(pg_secret(kPgOddScram), {"p\"w,x=y", std::nullopt, {}});
    CHECK(odd.server.kind == Kind::Done);
}

TEST_CASE("scram: the recovered ClientKey logs in again with no password (pass-through)", "[auth][scram]") {
    // A client proves itself to pgrelay...
    auto first = run(pg_secret(), {"scrampass", std::nullopt, {}});
    REQUIRE(first.server.kind == Kind::Done);
    // ...and pgrelay logs into a server holding the same secret with the
    // ClientKey, verifying that server with the ServerKey.
    scram::ClientCredentials keys{"", pg_secret(), first.client_key};
    auto second = run(pg_secret(), keys);
    INFO(second.server.error << second.client.error);
    CHECK(second.server.kind == Kind::Done);
    CHECK(second.client.kind == Kind::Done);
    CHECK(second.client_key == first.client_key);
    // A server whose secret has another salt (the password was set again)
    // is refused before any proof is sent.
    auto other = run(auth::scram_secret_from_password("scrampass", "another salt 123", 4096), keys);
    CHECK(other.client.kind == Kind::Fail);
    CHECK_THAT(other.client.error, Catch::Contains("differs"));
}

TEST_CASE("scram: a wrong password and an unknown user fail alike with 28P01", "[auth][scram]") {
    auto wrong = run(pg_secret(), {"not the password", std::nullopt, {}});
    CHECK(wrong.server.kind == Kind::Fail);
    CHECK(wrong.server.sqlstate == "28P01");
    // Unknown user: the mock secret's exchange looks the same and fails the same.
    const std::string mock_key = "process-wide random key";
    const auth::ScramSecret m1 = scram::mock_secret("nobody", mock_key);
    CHECK(auth::to_string(m1) == auth::to_string(scram::mock_secret("nobody", mock_key)));  // stable per user
    CHECK(m1.salt != scram::mock_secret("somebody", mock_key).salt);
    CHECK(m1.iterations == 4096);
    auto unknown = run(m1, {"scrampass", std::nullopt, {}});
    CHECK(unknown.server.kind == Kind::Fail);
    CHECK(unknown.server.sqlstate == wrong.server.sqlstate);
    CHECK(unknown.server.error == wrong.server.error);
}

TEST_CASE("scram: malformed, out-of-order and replayed client messages are refused", "[auth][scram][garbage]") {
    auto server = [] { return scram::ScramServer(rfc_secret(), kRfcServerNonce); };
    SECTION("client-first") {
        const std::pair<const char*, const char*> bad[] = {
            {"", "08P01"},
            {"n,", "08P01"},
            {"x,,n=user,r=abc", "08P01"},
            {"p=tls-server-end-point,,n=user,r=abc", "08P01"},
            {"n,a=admin,n=user,r=abc", "0A000"},
            {"n,,m=ext,n=user,r=abc", "0A000"},
            {"n,,n=user", "08P01"},
            {"n,,r=abc,n=user", "08P01"},
            {"n,,n=user,r=", "08P01"},
            {"n,,n=user,r=a b", "08P01"},
            {"n,,n=user,,r=abc", "08P01"},
            {"n,,nuser,r=abc", "08P01"},
        };
        for (const auto& [msg, state] : bad) {
            INFO(msg);
            auto s = server();
            auto step = s.client_first(msg);
            CHECK(step.kind == Kind::Fail);
            CHECK(step.sqlstate == state);
        }
        // 'y' (the client could bind but thinks we cannot) is fine.
        auto s = server();
        CHECK(s.client_first("y,,n=,r=abc").kind == Kind::Send);
    }
    SECTION("client-final") {
        const std::string nonce = std::string(kRfcClientNonce) + kRfcServerNonce;
        const std::string proof = ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        const std::pair<std::string, const char*> bad[] = {
            {"c=biws,r=" + nonce, "08P01"},                                 // no proof
            {"c=biws,r=" + nonce + ",p=", "08P01"},                         // empty proof
            {"c=biws,r=" + nonce + ",p=!!!!", "08P01"},                     // bad base64
            {"c=biws,r=" + nonce + ",p=c2hvcnQ=", "08P01"},                 // short proof
            {"c=eSws,r=" + nonce + proof, "08P01"},                         // binding flag changed
            {"c=%%%,r=" + nonce + proof, "08P01"},                          // bad base64 binding
            {"c=biws,r=" + std::string(kRfcClientNonce) + proof, "08P01"},  // wrong nonce
            {"r=" + nonce + ",c=biws" + proof, "08P01"},                    // order
            {"c=biws,r=" + nonce + ",p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "28P01"},  // wrong proof
        };
        for (const auto& [msg, state] : bad) {
            INFO(msg);
            auto s = server();
            REQUIRE(s.client_first(kRfcClientFirst).kind == Kind::Send);
            auto step = s.client_final(msg);
            CHECK(step.kind == Kind::Fail);
            CHECK(step.sqlstate == state);
            CHECK(s.client_final(kRfcClientFinal).kind == Kind::Fail);  // failed for good
        }
        auto s = server();
        CHECK(s.client_final(kRfcClientFinal).kind == Kind::Fail);  // before client-first
    }
    SECTION("a replayed client-final: the next exchange has a new server nonce") {
        scram::ScramServer s(rfc_secret(), "aDifferentServerNonce+/1");
        REQUIRE(s.client_first(kRfcClientFirst).kind == Kind::Send);
        auto step = s.client_final(kRfcClientFinal);
        CHECK(step.kind == Kind::Fail);
        CHECK(step.sqlstate == "08P01");
    }
}

TEST_CASE("scram: the client side refuses a hostile or broken server", "[auth][scram][garbage]") {
    auto client = [] {
        scram::ScramClient c({"pencil", std::nullopt, {}}, kRfcClientNonce, "user");
        c.client_first();
        return c;
    };
    for (const char* bad : {"", "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  // nonce not extended
                            "r=otherNonce123,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
                            "r=rOprNGfwEbeRWgbNEkqOx,s=,i=4096", "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
                            "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999",
                            "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=20000000",
                            "s=W22ZaJ0SNY7soEsUEjb6gQ==,r=rOprNGfwEbeRWgbNEkqOx,i=4096"}) {
        INFO(bad);
        auto c = client();
        CHECK(c.server_first(bad).kind == Kind::Fail);
    }
    auto c = client();
    REQUIRE(c.server_first(kRfcServerFirst).kind == Kind::Send);
    auto e = c.server_final("e=invalid-proof");
    CHECK(e.kind == Kind::Fail);
    CHECK_THAT(e.error, Catch::Contains("invalid-proof"));
}

TEST_CASE("scram: random and mutated client messages never crash the server", "[auth][scram][garbage][fuzz]") {
    std::mt19937 rng(5802);
    const std::string seeds[] = {kRfcClientFirst, kRfcClientFinal};
    for (int i = 0; i < 3000; ++i) {
        std::string first = kRfcClientFirst, fin = kRfcClientFinal;
        std::string& target = (i % 2) ? first : fin;
        for (int e = 0, n = 1 + int(rng() % 4); e < n; ++e) {
            const size_t at = rng() % (target.size() + 1);
            switch (rng() % 3) {
                case 0: target.insert(at, 1, ",=nrcp\0\xff"[rng() % 8]); break;
                case 1: if (at < target.size()) target.erase(at, 1); break;
                default: if (at < target.size()) target[at] = char(rng()); break;
            }
        }
        scram::ScramServer s(rfc_secret(), kRfcServerNonce);
        auto a = s.client_first(first);
        if (a.kind != Kind::Send) continue;
        auto b = s.client_final(fin);
        // Only the untouched messages may succeed.
        if (b.kind == Kind::Done) CHECK((first == kRfcClientFirst && fin == kRfcClientFinal));
    }
    (void)seeds;
}

TEST_CASE("md5: PostgreSQL's stored hash, the salted answer, constant-time verification", "[auth][md5]") {
    CHECK(auth::md5_stored("md5pass", "md5user") == kPgMd5);
    const uint8_t salt[4] = {0x01, 0x02, 0xfe, 0xff};
    const std::string answer = auth::md5_response(kPgMd5, salt);
    CHECK(answer.size() == 35);
    CHECK(answer.rfind("md5", 0) == 0);
    CHECK(auth::md5_verify(kPgMd5, salt, answer));
    const uint8_t other[4] = {0x01, 0x02, 0xfe, 0xfe};
    CHECK_FALSE(auth::md5_verify(kPgMd5, other, answer));
    CHECK_FALSE(auth::md5_verify(kPgMd5, salt, answer.substr(0, 34)));
    CHECK_FALSE(auth::md5_verify(kPgMd5, salt, ""));
    CHECK_FALSE(auth::md5_verify("not a hash", salt, answer));
}

TEST_CASE("auth_file: PgBouncer's userlist format", "[auth][userlist]") {
    const std::string text = std::string("; comment\n# another\n\n") + "\"scramuser\" \"" + kPgScram + "\"\n" +
                             "\"md5user\" \"" + kPgMd5 + "\" extra fields are ignored\r\n" +
                             "  \"plain\"   \"pass with \"\"quotes\"\"\"\n" + "\"broken\n" + "\"nosecret\"\n" +
                             "\"\" \"x\"\n" + "\"badscram\" \"SCRAM-SHA-256$1:x$y:z\"\n" + "\"empty\" \"\"\n";
    std::vector<auth::UserlistError> errors;
    auto users = auth::parse_userlist(text, errors);
    REQUIRE(users.size() == 3);
    CHECK(users[0].user == "scramuser");
    CHECK(users[0].secret.kind == auth::Secret::Kind::Scram);
    CHECK(auth::to_string(users[0].secret.scram) == kPgScram);
    CHECK(users[1].user == "md5user");
    CHECK(users[1].secret.kind == auth::Secret::Kind::Md5);
    CHECK(users[1].secret.md5 == kPgMd5);
    CHECK(users[2].user == "plain");
    CHECK(users[2].secret.kind == auth::Secret::Kind::Plain);
    CHECK(users[2].secret.plain == "pass with \"quotes\"");
    REQUIRE(errors.size() == 5);
    CHECK(errors[0].line == 7);
    CHECK(errors[1].line == 8);
    CHECK(errors[2].line == 9);
    CHECK(errors[3].line == 10);
    CHECK(errors[4].line == 11);
    // Error messages never contain a secret.
    for (const auto& e : errors) CHECK(e.message.find("SCRAM-SHA-256$1") == std::string::npos);
}
