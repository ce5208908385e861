// The authentication phase, both ways, as sans-I/O state machines over whole
// messages (type byte + body, as FrameScanner reports them):
//  - FrontendAuth: pgrelay authenticates a client against the secret it
//    holds (SCRAM-SHA-256 or md5), as PostgreSQL's auth.c would;
//  - BackendLogin: pgrelay logs into PostgreSQL as a user, with a password,
//    an md5 hash, or a SCRAM ClientKey recovered by FrontendAuth, up to the
//    first ReadyForQuery.
// Message layouts: protocol-message-formats.html (AuthenticationSASL = 'R'
// with code 10, SASLInitialResponse = 'p' with mechanism, length, data ...).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "protocol/auth.hpp"
#include "protocol/messages.hpp"
#include "protocol/scram.hpp"

namespace pgrelay::protocol {

// Authentication request codes ('R' messages).
enum class AuthCode : uint32_t {
    Ok = 0,
    CleartextPassword = 3,
    MD5Password = 5,
    SASL = 10,
    SASLContinue = 11,
    SASLFinal = 12,
};

struct LoginStep {
    enum class Kind {
        Send,  // write `bytes`, then feed the peer's next message
        Done,  // authenticated (FrontendAuth: write `bytes` first; BackendLogin: the session is ready)
        Fail,  // FrontendAuth: write `bytes` (an ErrorResponse) and close; BackendLogin: see `sqlstate`/`error`
    } kind = Kind::Fail;
    std::string bytes;
    std::string sqlstate, error;
};

// Flow: FrontendAuth a(user, secret or nullopt when unknown, nonce/salt source);
// write a.start().bytes (the authentication request); then a.on_message(type,
// body) for each client message until Done or Fail. On Done the bytes hold
// AuthenticationSASLFinal (SCRAM) and AuthenticationOk; on Fail an
// ErrorResponse. An unknown user is exchanged with a mock secret and fails like
// a wrong password (28P01, the same message), so the answer never tells
// whether the user exists.
class FrontendAuth {
public:
    struct Options {
        std::string mock_key;        // per process, random: the mock salt for unknown users
        std::string server_nonce;    // fresh, from scram::make_nonce()
        std::array<uint8_t, 4> md5_salt{};  // fresh random bytes
    };
    FrontendAuth(std::string user, std::optional<auth::Secret> secret, Options opts);
    LoginStep start();
    LoginStep on_message(char type, std::span<const uint8_t> body);
    // After Done: what BackendLogin needs to log in as this client with no
    // password (the SCRAM secret and the client's ClientKey), if SCRAM was used.
    std::optional<crypto::Digest> client_key() const;
    bool used_scram() const noexcept { return method_ == Method::Scram; }

private:
    LoginStep fail(std::string_view sqlstate, std::string_view message);
    enum class Method { Scram, Md5 } method_ = Method::Scram;
    enum class State { Start, Sasl, SaslContinue, Md5, Done, Failed } state_ = State::Start;
    std::string user_;
    std::optional<auth::Secret> secret_;
    Options opts_;
    std::optional<scram::ScramServer> scram_;
};

// Flow: BackendLogin l(user, credentials, client nonce); after writing the
// StartupMessage, feed every backend message with on_message(type, body);
// write each Send's bytes; Done at the first ReadyForQuery, with the server's
// parameters and BackendKeyData collected; Fail on an ErrorResponse or on an
// authentication request the credentials cannot answer.
class BackendLogin {
public:
    struct Credentials {
        std::optional<std::string> password;       // plain text: any method
        std::optional<std::string> md5;            // "md5..." hash: md5 only
        std::optional<auth::ScramSecret> scram;    // with client_key: SCRAM only
        std::optional<crypto::Digest> client_key;
    };
    BackendLogin(std::string user, Credentials creds, std::string client_nonce);
    LoginStep on_message(char type, std::span<const uint8_t> body);

    const std::vector<std::pair<std::string, std::string>>& parameters() const noexcept { return params_; }
    std::optional<CancelKey> backend_key() const noexcept { return key_; }
    std::optional<TxStatus> status() const noexcept { return status_; }

private:
    LoginStep fail(std::string sqlstate, std::string error);
    LoginStep on_authentication(std::span<const uint8_t> body);
    enum class State { Auth, Sasl, SaslFinal, SaslDone, AfterAuth, Done, Failed } state_ = State::Auth;
    std::string user_;
    Credentials creds_;
    std::string client_nonce_;
    std::optional<scram::ScramClient> scram_;
    std::vector<std::pair<std::string, std::string>> params_;
    std::optional<CancelKey> key_;
    std::optional<TxStatus> status_;
};

// The messages these exchanges write.
void encode_authentication(std::string& out, AuthCode code, std::string_view payload = {});
void encode_password_message(std::string& out, std::string_view password);  // PasswordMessage: string + NUL
void encode_sasl_initial_response(std::string& out, std::string_view mechanism, std::string_view data);
void encode_sasl_response(std::string& out, std::string_view data);

}  // namespace pgrelay::protocol
