// SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, both sides, as
// resumable state machines: the server side verifies a client against a
// stored secret and recovers its ClientKey; the client side logs into
// PostgreSQL with a password or with a recovered ClientKey. Channel binding
// (SCRAM-SHA-256-PLUS) is not offered: pgrelay ends TLS, so a client's
// binding could never match the server's.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "protocol/auth.hpp"

namespace pgrelay::protocol::scram {

// What the caller does next.
struct Step {
    enum class Kind {
        Send,     // send `message` (server: AuthenticationSASLContinue/Final data; client: the SASLResponse)
        Done,     // the exchange succeeded (server: send `message` as AuthenticationSASLFinal, then AuthenticationOk)
        Fail,     // stop: send an ErrorResponse with `sqlstate` and `error` (server) or report it (client)
    } kind = Kind::Fail;
    std::string message;
    std::string sqlstate;  // "28P01" wrong proof, "08P01" malformed message
    std::string error;
};

// Flow: ScramServer s(secret, server_nonce); client_first(SASLInitialResponse
// data) -> Send server-first; client_final(SASLResponse data) -> Done with
// server-final (then client_key() holds the client's ClientKey) or Fail.
// Any call out of order fails. `server_nonce` must be fresh random printable
// text (make_nonce()); tests pass RFC 7677's.
class ScramServer {
public:
    ScramServer(auth::ScramSecret secret, std::string server_nonce);
    Step client_first(std::string_view message);
    Step client_final(std::string_view message);
    // The ClientKey the client proved it has (valid after Done): with the
    // stored secret it logs into PostgreSQL as the same user.
    const crypto::Digest& client_key() const noexcept { return client_key_; }

private:
    Step fail(std::string sqlstate, std::string error);
    enum class State { First, Final, Done, Failed } state_ = State::First;
    auth::ScramSecret secret_;
    std::string server_nonce_;
    std::string gs2_header_, client_first_bare_, server_first_, nonce_;
    crypto::Digest client_key_{};
};

// What the client side logs in with: a password, or the keys of one secret
// (ClientKey recovered by ScramServer, ServerKey and salt/iterations from the
// stored secret). Keys only work against a server holding that same secret.
struct ClientCredentials {
    std::string password;  // used when `secret` is unset
    std::optional<auth::ScramSecret> secret;
    crypto::Digest client_key{};
};

// Flow: ScramClient c(credentials, client_nonce); send client_first() in
// SASLInitialResponse ("SCRAM-SHA-256"); server_first(AuthenticationSASLContinue
// data) -> Send the SASLResponse; server_final(AuthenticationSASLFinal data)
// -> Done once the server proved it holds the secret, else Fail.
class ScramClient {
public:
    // `sasl_name` goes in the n= attribute; PostgreSQL ignores it (libpq sends none).
    ScramClient(ClientCredentials credentials, std::string client_nonce, std::string sasl_name = "");
    std::string client_first();
    Step server_first(std::string_view message);
    Step server_final(std::string_view message);
    // Iteration counts above this are refused (a hostile server could make
    // the password derivation take arbitrarily long).
    static constexpr uint32_t kMaxIterations = 10'000'000;

private:
    Step fail(std::string error);
    enum class State { First, ServerFirst, ServerFinal, Done, Failed } state_ = State::First;
    ClientCredentials creds_;
    std::string client_nonce_, sasl_name_, client_first_bare_;
    crypto::Digest server_signature_{};
};

// A fresh nonce: 18 random bytes in base64, as PostgreSQL makes them. Empty
// if the random generator failed.
std::string make_nonce();

// For a user pgrelay does not know: a secret that no proof can satisfy, with
// a salt derived from the user name and `mock_key` (kept for the process's
// life), so the exchange looks the same on every try and a client cannot tell
// an unknown user from a wrong password (PostgreSQL's scram_mock_salt).
auth::ScramSecret mock_secret(std::string_view user, std::string_view mock_key);

}  // namespace pgrelay::protocol::scram
