// FrontendAuth and BackendLogin (login.hpp). What a server answers and
// accepts here follows src/backend/libpq/auth.c and auth-sasl.c; what a client
// sends, src/interfaces/libpq/fe-auth.c.
#include "protocol/login.hpp"

#include "protocol/encode.hpp"
#include "protocol/frames.hpp"

namespace pgrelay::protocol {

namespace {

constexpr std::string_view kScram = "SCRAM-SHA-256";
constexpr uint32_t kMockIterations = 4096;



std::string_view as_chars(std::span<const uint8_t> b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

// A NUL-terminated string at the start of `b`; nullopt without a NUL.
std::optional<std::string_view> cstring(std::string_view& b) {
    const size_t nul = b.find('\0');
    if (nul == std::string_view::npos) return std::nullopt;
    std::string_view s = b.substr(0, nul);
    b.remove_prefix(nul + 1);
    return s;
}

std::string auth_failed_message(std::string_view user) {
    return "password authentication failed for user \"" + std::string(user) + "\"";
}

}  // namespace

void encode_authentication(std::string& out, AuthCode code, std::string_view payload) {
    append_message(out, 'R', [&](std::string& o) {
        append_u32(o, static_cast<uint32_t>(code));
        o.append(payload);
    });
}

void encode_password_message(std::string& out, std::string_view password) {
    append_message(out, 'p', [&](std::string& o) {
        o.append(password);
        o.push_back('\0');
    });
}

void encode_sasl_initial_response(std::string& out, std::string_view mechanism, std::string_view data) {
    append_message(out, 'p', [&](std::string& o) {
        o.append(mechanism);
        o.push_back('\0');
        append_u32(o, static_cast<uint32_t>(data.size()));
        o.append(data);
    });
}

void encode_sasl_response(std::string& out, std::string_view data) {
    append_message(out, 'p', [&](std::string& o) { o.append(data); });
}

// ---------------------------------------------------------------- FrontendAuth

FrontendAuth::FrontendAuth(std::string user, std::optional<auth::Secret> secret, Options opts)
    : user_(std::move(user)), secret_(std::move(secret)), opts_(std::move(opts)) {
    if (secret_ && secret_->kind == auth::Secret::Kind::Md5) method_ = Method::Md5;
}

LoginStep FrontendAuth::fail(std::string_view sqlstate, std::string_view message) {
    state_ = State::Failed;
    LoginStep s{LoginStep::Kind::Fail, {}, std::string(sqlstate), std::string(message)};
    encode_error_response(s.bytes, Severity::Fatal, sqlstate, message);
    return s;
}

LoginStep FrontendAuth::start() {
    if (state_ != State::Start) return fail("08P01", "authentication already started");
    LoginStep s{LoginStep::Kind::Send, {}, {}, {}};
    if (method_ == Method::Md5) {
        state_ = State::Md5;
        encode_authentication(s.bytes, AuthCode::MD5Password,
                              std::string_view(reinterpret_cast<const char*>(opts_.md5_salt.data()), 4));
        return s;
    }
    // SCRAM against the stored secret; a plain password gets a secret derived
    // with a per-process salt; an unknown user the mock secret.
    auth::ScramSecret secret;
    if (!secret_) {
        secret = scram::mock_secret(user_, opts_.mock_key);
    } else if (secret_->kind == auth::Secret::Kind::Scram) {
        secret = secret_->scram;
    } else {
        const auto salt = crypto::sha256("salt for " + user_ + opts_.mock_key);
        secret = auth::scram_secret_from_password(secret_->plain, crypto::as_view(salt).substr(0, 16), kMockIterations);
    }
    scram_.emplace(std::move(secret), opts_.server_nonce);
    state_ = State::Sasl;
    // AuthenticationSASL: the mechanisms, each NUL-terminated, then an empty one.
    // No SCRAM-SHA-256-PLUS: the client's TLS ends at pgrelay.
    std::string mechs(kScram);
    mechs.push_back('\0');
    mechs.push_back('\0');
    encode_authentication(s.bytes, AuthCode::SASL, mechs);
    return s;
}

LoginStep FrontendAuth::on_message(char type, std::span<const uint8_t> body) {
    if (state_ == State::Done || state_ == State::Failed || state_ == State::Start)
        return fail("08P01", "unexpected message during authentication");
    if (type != 'p') {
        if (type == 'X') {  // the client gave up: nothing to answer
            state_ = State::Failed;
            return LoginStep{LoginStep::Kind::Fail, {}, {}, "the client ended the connection during authentication"};
        }
        return fail("08P01", "expected a password response during authentication, got message type '" +
                                 std::string(1, (type >= 0x20 && type < 0x7f) ? type : '?') + "'");
    }
    std::string_view b = as_chars(body);
    if (state_ == State::Md5) {
        auto pw = cstring(b);
        if (!pw || !b.empty()) return fail("08P01", "malformed password message");
        if (!secret_ || !auth::md5_verify(secret_->md5, opts_.md5_salt.data(), *pw))
            return fail("28P01", auth_failed_message(user_));
        state_ = State::Done;
        LoginStep s{LoginStep::Kind::Done, {}, {}, {}};
        encode_authentication(s.bytes, AuthCode::Ok);
        return s;
    }
    scram::Step step;
    if (state_ == State::Sasl) {
        // SASLInitialResponse: mechanism, then an int32 length of the data (-1: none).
        auto mech = cstring(b);
        if (!mech || b.size() < 4) return fail("08P01", "malformed SASLInitialResponse");
        if (*mech != kScram)
            return fail("08P01", "client selected an invalid SASL authentication mechanism");
        const uint32_t len = read_u32(reinterpret_cast<const uint8_t*>(b.data()));
        b.remove_prefix(4);
        if (len == 0xffffffffu || len != b.size()) return fail("08P01", "malformed SASLInitialResponse (data length)");
        step = scram_->client_first(b);
        if (step.kind == scram::Step::Kind::Send) {
            state_ = State::SaslContinue;
            LoginStep s{LoginStep::Kind::Send, {}, {}, {}};
            encode_authentication(s.bytes, AuthCode::SASLContinue, step.message);
            return s;
        }
    } else {
        step = scram_->client_final(b);
        if (step.kind == scram::Step::Kind::Done) {
            // The mock secret can never be proven; belt and braces.
            if (!secret_) return fail("28P01", auth_failed_message(user_));
            state_ = State::Done;
            LoginStep s{LoginStep::Kind::Done, {}, {}, {}};
            encode_authentication(s.bytes, AuthCode::SASLFinal, step.message);
            encode_authentication(s.bytes, AuthCode::Ok);
            return s;
        }
    }
    if (step.sqlstate == "28P01") return fail("28P01", auth_failed_message(user_));
    return fail(step.sqlstate.empty() ? "08P01" : step.sqlstate, step.error);
}

std::optional<crypto::Digest> FrontendAuth::client_key() const {
    if (state_ != State::Done || method_ != Method::Scram || !scram_) return std::nullopt;
    return scram_->client_key();
}

// ---------------------------------------------------------------- BackendLogin

BackendLogin::BackendLogin(std::string user, Credentials creds, std::string client_nonce)
    : user_(std::move(user)), creds_(std::move(creds)), client_nonce_(std::move(client_nonce)) {}

LoginStep BackendLogin::fail(std::string sqlstate, std::string error) {
    state_ = State::Failed;
    return LoginStep{LoginStep::Kind::Fail, {}, std::move(sqlstate), std::move(error)};
}

LoginStep BackendLogin::on_message(char type, std::span<const uint8_t> body) {
    if (state_ == State::Done || state_ == State::Failed) return fail("08P01", "message after the login ended");
    switch (type) {
        case 'R':
            return on_authentication(body);
        case 'E': {
            auto f = decode_error_fields(body);
            return fail(f ? std::string(f->sqlstate) : "08P01",
                        f ? std::string(f->message) : "malformed ErrorResponse from the server");
        }
        case 'N':  // NoticeResponse
        case 'v':  // NegotiateProtocolVersion: pgrelay asks for 3.0 and nothing else
            return LoginStep{LoginStep::Kind::Send, {}, {}, {}};
        case 'S': {
            auto p = decode_parameter_status(body);
            if (!p) return fail("08P01", "malformed ParameterStatus from the server");
            params_.emplace_back(std::string(p->name), std::string(p->value));
            return LoginStep{LoginStep::Kind::Send, {}, {}, {}};
        }
        case 'K': {
            if (state_ != State::AfterAuth) return fail("08P01", "BackendKeyData before AuthenticationOk");
            key_ = decode_backend_key_data(body);
            if (!key_) return fail("08P01", "malformed BackendKeyData from the server");
            return LoginStep{LoginStep::Kind::Send, {}, {}, {}};
        }
        case 'Z': {
            if (state_ != State::AfterAuth) return fail("08P01", "ReadyForQuery before AuthenticationOk");
            status_ = decode_ready_for_query(body);
            if (!status_) return fail("08P01", "malformed ReadyForQuery from the server");
            state_ = State::Done;
            return LoginStep{LoginStep::Kind::Done, {}, {}, {}};
        }
        default:
            return fail("08P01", "unexpected message type '" + std::string(1, (type >= 0x20 && type < 0x7f) ? type : '?') +
                                     "' from the server during login");
    }
}

LoginStep BackendLogin::on_authentication(std::span<const uint8_t> body) {
    if (body.size() < 4) return fail("08P01", "malformed authentication request from the server");
    const uint32_t code = read_u32(body.data());
    std::string_view payload = as_chars(body.subspan(4));
    LoginStep out{LoginStep::Kind::Send, {}, {}, {}};
    const bool sasl_busy = state_ == State::Sasl || state_ == State::SaslFinal;
    switch (static_cast<AuthCode>(code)) {
        case AuthCode::Ok:
            // A server that skips SCRAM's final message never proved it holds
            // the secret (libpq refuses this too).
            if (sasl_busy) return fail("08P01", "the server ended SCRAM authentication early");
            if (state_ != State::Auth && state_ != State::SaslDone) return fail("08P01", "unexpected AuthenticationOk");
            state_ = State::AfterAuth;
            return out;
        case AuthCode::CleartextPassword:
            if (state_ != State::Auth) return fail("08P01", "unexpected authentication request");
            if (!creds_.password)
                return fail("28000", "the server asks for a cleartext password, and pgrelay holds no password for user \"" +
                                         user_ + "\" (only a hash or SCRAM keys)");
            encode_password_message(out.bytes, *creds_.password);
            return out;
        case AuthCode::MD5Password: {
            if (state_ != State::Auth) return fail("08P01", "unexpected authentication request");
            if (payload.size() != 4) return fail("08P01", "malformed AuthenticationMD5Password");
            const std::string stored = creds_.md5 ? *creds_.md5
                                       : creds_.password ? auth::md5_stored(*creds_.password, user_)
                                                         : std::string();
            if (stored.empty())
                return fail("28000", "the server asks for md5, and pgrelay holds only SCRAM keys for user \"" + user_ + "\"");
            encode_password_message(out.bytes, auth::md5_response(stored, reinterpret_cast<const uint8_t*>(payload.data())));
            return out;
        }
        case AuthCode::SASL: {
            if (state_ != State::Auth) return fail("08P01", "unexpected authentication request");
            bool offered = false;
            while (!payload.empty()) {
                auto m = cstring(payload);
                if (!m) return fail("08P01", "malformed AuthenticationSASL");
                if (m->empty()) break;
                offered = offered || *m == kScram;
            }
            if (!offered) return fail("28000", "the server offers no SASL mechanism pgrelay supports (SCRAM-SHA-256)");
            scram::ClientCredentials c;
            if (creds_.password) {
                c.password = *creds_.password;
            } else if (creds_.scram && creds_.client_key) {
                c.secret = creds_.scram;
                c.client_key = *creds_.client_key;
            } else {
                return fail("28000", "the server asks for SCRAM, and pgrelay holds only an md5 hash for user \"" + user_ + "\"");
            }
            scram_.emplace(std::move(c), client_nonce_);
            encode_sasl_initial_response(out.bytes, kScram, scram_->client_first());
            state_ = State::Sasl;
            return out;
        }
        case AuthCode::SASLContinue: {
            if (state_ != State::Sasl) return fail("08P01", "unexpected SASL continuation");
            auto step = scram_->server_first(payload);
            if (step.kind != scram::Step::Kind::Send) return fail("28000", step.error);
            encode_sasl_response(out.bytes, step.message);
            state_ = State::SaslFinal;
            return out;
        }
        case AuthCode::SASLFinal: {
            if (state_ != State::SaslFinal) return fail("08P01", "unexpected SASL final message");
            auto step = scram_->server_final(payload);
            if (step.kind != scram::Step::Kind::Done) return fail("28000", step.error);
            // Only AuthenticationOk may follow: never a second method (a
            // server asking for the cleartext password after SCRAM).
            state_ = State::SaslDone;
            scram_.reset();
            return out;
        }
    }
    return fail("28000", "the server asks for an authentication method pgrelay does not support (code " +
                             std::to_string(code) + ")");
}

}  // namespace pgrelay::protocol
