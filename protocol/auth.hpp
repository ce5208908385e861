// Password secrets as PostgreSQL stores them (pg_authid.rolpassword) and as
// PgBouncer's auth_file lists them, and the md5 exchange. The SCRAM exchanges
// are in scram.hpp. Sans-I/O: strings in, strings or verdicts out.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/crypto.hpp"

namespace pgrelay::protocol::auth {

// "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>" (base64 parts),
// PostgreSQL's format (src/backend/libpq/auth-scram.c, scram_build_secret).
struct ScramSecret {
    uint32_t iterations = 0;
    std::string salt;  // decoded
    crypto::Digest stored_key{}, server_key{};
};
std::optional<ScramSecret> parse_scram_secret(std::string_view text);
std::string to_string(const ScramSecret& s);
// The secret PostgreSQL would store for `password` with this salt and count.
// The password is used as its bytes: PostgreSQL applies SASLprep first, which
// leaves ASCII passwords unchanged (non-ASCII ones may differ).
ScramSecret scram_secret_from_password(std::string_view password, std::string_view salt, uint32_t iterations);

// A user's secret: SCRAM, md5 ("md5" + md5(password + user) in hex), or the
// password itself (auth_file only; never what PostgreSQL stores).
struct Secret {
    enum class Kind { Scram, Md5, Plain } kind = Kind::Plain;
    ScramSecret scram;
    std::string md5;    // "md5" + 32 hex digits
    std::string plain;  // the password
};
// rolpassword or an auth_file secret: a SCRAM secret, an md5 hash, or else a
// plain password. nullopt for an empty one (a role without a password) or a
// malformed "SCRAM-SHA-256$..." (never taken for a plain password).
std::optional<Secret> parse_secret(std::string_view text);

// PgBouncer's auth_file: one `"user" "secret"` per line, a doubled quote for
// a quote inside; blank lines and lines starting with ';' or '#' are skipped.
struct UserlistEntry {
    std::string user;
    Secret secret;
};
struct UserlistError {
    int line = 0;
    std::string message;
};
// Parses every line; malformed lines are reported (by number) and skipped.
std::vector<UserlistEntry> parse_userlist(std::string_view text, std::vector<UserlistError>& errors);

// md5 (PostgreSQL's AUTH_REQ_MD5): the client answers
// "md5" + md5(md5(password + user) + salt); `stored` is "md5" + md5(password + user).
std::string md5_response(std::string_view stored, const uint8_t salt[4]);
std::string md5_stored(std::string_view password, std::string_view user);
// Whether `response` (the PasswordMessage's string) answers `salt` for
// `stored`, compared in constant time.
bool md5_verify(std::string_view stored, const uint8_t salt[4], std::string_view response);

}  // namespace pgrelay::protocol::auth
