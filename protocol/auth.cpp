// Secrets, auth_file and md5 (auth.hpp).
#include "protocol/auth.hpp"

#include <charconv>

#include "protocol/base64.hpp"

namespace pgrelay::protocol::auth {

namespace {

bool decode_key(std::string_view b64, crypto::Digest& out) {
    auto d = base64_decode(b64);
    if (!d || d->size() != out.size()) return false;
    std::copy(d->begin(), d->end(), out.begin());
    return true;
}

bool is_md5_hash(std::string_view s) {
    if (s.size() != 35 || s.substr(0, 3) != "md5") return false;
    for (char c : s.substr(3))
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    return true;
}

}  // namespace

std::optional<ScramSecret> parse_scram_secret(std::string_view text) {
    constexpr std::string_view kPrefix = "SCRAM-SHA-256$";
    if (text.substr(0, kPrefix.size()) != kPrefix) return std::nullopt;
    text.remove_prefix(kPrefix.size());
    const size_t colon1 = text.find(':');
    const size_t dollar = text.find('$');
    if (colon1 == std::string_view::npos || dollar == std::string_view::npos || colon1 > dollar) return std::nullopt;
    ScramSecret s;
    const std::string_view iter = text.substr(0, colon1);
    auto [p, ec] = std::from_chars(iter.data(), iter.data() + iter.size(), s.iterations);
    if (ec != std::errc() || p != iter.data() + iter.size() || s.iterations == 0) return std::nullopt;
    auto salt = base64_decode(text.substr(colon1 + 1, dollar - colon1 - 1));
    if (!salt || salt->empty()) return std::nullopt;
    s.salt = std::move(*salt);
    const std::string_view keys = text.substr(dollar + 1);
    const size_t colon2 = keys.find(':');
    if (colon2 == std::string_view::npos || !decode_key(keys.substr(0, colon2), s.stored_key) ||
        !decode_key(keys.substr(colon2 + 1), s.server_key))
        return std::nullopt;
    return s;
}

std::string to_string(const ScramSecret& s) {
    return "SCRAM-SHA-256$" + std::to_string(s.iterations) + ":" + base64_encode(s.salt) + "$" +
           base64_encode(crypto::as_view(s.stored_key)) + ":" + base64_encode(crypto::as_view(s.server_key));
}

ScramSecret scram_secret_from_password(std::string_view password, std::string_view salt, uint32_t iterations) {
    // RFC 5802 section 3: SaltedPassword = Hi(password, salt, i);
    // ClientKey = HMAC(SaltedPassword, "Client Key"); StoredKey = H(ClientKey);
    // ServerKey = HMAC(SaltedPassword, "Server Key").
    ScramSecret s;
    s.iterations = iterations;
    s.salt = std::string(salt);
    const crypto::Digest salted = crypto::pbkdf2_sha256(password, salt, iterations);
    const crypto::Digest client_key = crypto::hmac_sha256(crypto::as_view(salted), "Client Key");
    s.stored_key = crypto::sha256(crypto::as_view(client_key));
    s.server_key = crypto::hmac_sha256(crypto::as_view(salted), "Server Key");
    return s;
}

std::optional<Secret> parse_secret(std::string_view text) {
    if (text.empty()) return std::nullopt;
    Secret s;
    if (text.substr(0, 14) == "SCRAM-SHA-256$") {
        auto scram = parse_scram_secret(text);
        if (!scram) return std::nullopt;
        s.kind = Secret::Kind::Scram;
        s.scram = std::move(*scram);
    } else if (is_md5_hash(text)) {
        s.kind = Secret::Kind::Md5;
        s.md5 = std::string(text);
    } else {
        s.kind = Secret::Kind::Plain;
        s.plain = std::string(text);
    }
    return s;
}

namespace {

// A double-quoted field starting at `pos` ("" inside is one quote).
std::optional<std::string> quoted(std::string_view line, size_t& pos) {
    while (pos < line.size() && (line[pos] == ' ' || line[pos] == '\t')) ++pos;
    if (pos >= line.size() || line[pos] != '"') return std::nullopt;
    std::string out;
    for (++pos; pos < line.size(); ++pos) {
        if (line[pos] == '"') {
            if (pos + 1 < line.size() && line[pos + 1] == '"') {
                out += '"';
                ++pos;
                continue;
            }
            ++pos;
            return out;
        }
        out += line[pos];
    }
    return std::nullopt;  // unterminated
}

}  // namespace

std::vector<UserlistEntry> parse_userlist(std::string_view text, std::vector<UserlistError>& errors) {
    std::vector<UserlistEntry> out;
    int lineno = 0;
    while (!text.empty()) {
        ++lineno;
        const size_t eol = text.find('\n');
        std::string_view line = text.substr(0, eol);
        text = eol == std::string_view::npos ? std::string_view() : text.substr(eol + 1);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        size_t first = line.find_first_not_of(" \t");
        if (first == std::string_view::npos || line[first] == ';' || line[first] == '#') continue;
        size_t pos = 0;
        auto user = quoted(line, pos);
        auto secret = user ? quoted(line, pos) : std::nullopt;
        if (!user || !secret) {
            errors.push_back({lineno, "expected \"user\" \"secret\""});
            continue;
        }
        // PgBouncer allows more fields after the secret; pgrelay needs none.
        if (user->empty()) {
            errors.push_back({lineno, "empty user name"});
            continue;
        }
        auto s = parse_secret(*secret);
        if (!s) {
            errors.push_back({lineno, "user \"" + *user + "\": empty or malformed secret"});
            continue;
        }
        out.push_back({std::move(*user), std::move(*s)});
    }
    return out;
}

std::string md5_stored(std::string_view password, std::string_view user) {
    return "md5" + crypto::md5_hex(std::string(password) + std::string(user));
}

std::string md5_response(std::string_view stored, const uint8_t salt[4]) {
    // PostgreSQL's pg_md5_encrypt(hash without "md5", salt): md5 of the hex
    // digits followed by the 4 salt bytes.
    std::string in(stored.substr(3));
    in.append(reinterpret_cast<const char*>(salt), 4);
    return "md5" + crypto::md5_hex(in);
}

bool md5_verify(std::string_view stored, const uint8_t salt[4], std::string_view response) {
    if (!is_md5_hash(stored)) return false;
    const std::string want = md5_response(stored, salt);
    // Same length first (35), then constant-time over the bytes.
    return response.size() == want.size() && crypto::equal(response.data(), want.data(), want.size());
}

}  // namespace pgrelay::protocol::auth
