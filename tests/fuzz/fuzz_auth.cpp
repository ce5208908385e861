// libFuzzer target for the authentication exchanges (protocol/scram.hpp,
// protocol/auth.hpp): every message a client (or a server) can send them.
// Input: byte 0 picks the exchange, the rest holds up to two messages split
// at the first NUL byte.
//   0: pgrelay as SCRAM server (RFC 7677's secret and nonce): client-first,
//      client-final. Only RFC 7677's own messages may succeed.
//   1: pgrelay as SCRAM client with RFC 7677's password: server-first,
//      server-final. Only RFC 7677's own messages may succeed.
//   2: an auth_file; 3: a stored secret, then an md5 answer to check with it.
//   4: FrontendAuth (RFC 7677's secret): the bodies of a client's
//      SASLInitialResponse and SASLResponse, as they come off the wire; the
//      first body's length is byte 1 (the bodies hold NULs).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/auth.hpp"
#include "protocol/login.hpp"
#include "protocol/base64.hpp"
#include "protocol/scram.hpp"

using namespace pgrelay::protocol;

namespace {

constexpr std::string_view kClientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view kServerFirst =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
constexpr std::string_view kClientFinal =
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
constexpr std::string_view kServerFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

[[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "fuzz_auth invariant failed: %s\n", what);
    std::abort();
}

const auth::ScramSecret& rfc_secret() {
    static const auth::ScramSecret s = auth::scram_secret_from_password("pencil", *base64_decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096);
    return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    const std::string_view all(reinterpret_cast<const char*>(data) + 1, size - 1);
    const size_t nul = all.find('\0');
    const std::string_view a = all.substr(0, nul);
    const std::string_view b = nul == std::string_view::npos ? std::string_view() : all.substr(nul + 1);
    using Kind = scram::Step::Kind;
    switch (data[0] % 5) {
        case 0: {
            scram::ScramServer s(rfc_secret(), "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
            const auto first = s.client_first(a);
            if (first.kind == Kind::Done) fail("done after client-first");
            if (first.kind != Kind::Send) break;
            const auto fin = s.client_final(b);
            if (fin.kind == Kind::Done && (a != kClientFirst || b != kClientFinal)) fail("a forged proof was accepted");
            if (fin.kind == Kind::Fail && fin.sqlstate.empty()) fail("a failure without SQLSTATE");
            break;
        }
        case 1: {
            // The iteration count is bounded below what the client accepts, so
            // each input stays fast: the derivation cost is the server's i=.
            for (size_t at = a.find("i="); at != std::string_view::npos; at = a.find("i=", at + 1)) {
                size_t digits = 0;
                while (at + 2 + digits < a.size() && a[at + 2 + digits] >= '0' && a[at + 2 + digits] <= '9') ++digits;
                if (digits > 4) return 0;
            }
            scram::ScramClient c({"pencil", std::nullopt, {}}, "rOprNGfwEbeRWgbNEkqO", "user");
            c.client_first();
            const auto resp = c.server_first(a);
            if (resp.kind != Kind::Send) break;
            const auto fin = c.server_final(b);
            if (fin.kind == Kind::Done && (a != kServerFirst || b != kServerFinal)) fail("a forged server signature was accepted");
            break;
        }
        case 2: {
            std::vector<auth::UserlistError> errors;
            const auto users = auth::parse_userlist(all, errors);
            for (const auto& u : users)
                if (u.user.empty()) fail("an entry without a user");
            break;
        }
        case 3: {
            if (auto s = auth::parse_secret(a)) {
                if (s->kind == auth::Secret::Kind::Scram) {
                    auto again = auth::parse_scram_secret(auth::to_string(s->scram));
                    if (!again || auth::to_string(*again) != auth::to_string(s->scram)) fail("a SCRAM secret does not print back");
                }
                if (s->kind == auth::Secret::Kind::Md5) {
                    const uint8_t salt[4] = {1, 2, 3, 4};
                    if (!auth::md5_verify(s->md5, salt, auth::md5_response(s->md5, salt))) fail("md5 does not verify its own answer");
                    (void)auth::md5_verify(s->md5, salt, b);
                }
            }
            break;
        }
        case 4: {
            if (size < 2) break;
            const std::string_view rest(reinterpret_cast<const char*>(data) + 2, size - 2);
            const std::string_view a = rest.substr(0, data[1]);
            const std::string_view b = rest.substr(std::min<size_t>(data[1], rest.size()));
            auth::Secret secret;
            secret.kind = auth::Secret::Kind::Scram;
            secret.scram = rfc_secret();
            FrontendAuth f("user", secret, {"mock", "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", {1, 2, 3, 4}});
            f.start();
            auto span = [](std::string_view v) {
                return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()), v.size());
            };
            auto s1 = f.on_message('p', span(a));
            if (s1.kind == LoginStep::Kind::Done) fail("done after SASLInitialResponse");
            if (s1.kind == LoginStep::Kind::Fail && (s1.bytes.empty() || s1.bytes[0] != 'E')) fail("a failure without ErrorResponse");
            if (s1.kind != LoginStep::Kind::Send) break;
            auto s2 = f.on_message('p', span(b));
            if (s2.kind == LoginStep::Kind::Done && (b != kClientFinal || a.substr(a.size() - kClientFirst.size()) != kClientFirst))
                fail("FrontendAuth accepted a forged proof");
            break;
        }
    }
    return 0;
}
