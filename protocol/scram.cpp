// SCRAM-SHA-256 exchanges (scram.hpp). Message grammar: RFC 5802 section 7;
// what PostgreSQL accepts and answers: src/backend/libpq/auth-scram.c and
// src/interfaces/libpq/fe-auth-scram.c.
#include "protocol/scram.hpp"

#include <charconv>
#include <vector>

#include "protocol/base64.hpp"

namespace pgrelay::protocol::scram {

namespace {

constexpr size_t kRawNonceLen = 18;  // PostgreSQL's SCRAM_RAW_NONCE_LEN
constexpr uint32_t kMockIterations = 4096;

// "a=value" attributes separated by commas.
struct Attr {
    char name = 0;
    std::string_view value;
};

std::optional<std::vector<Attr>> split_attrs(std::string_view s) {
    std::vector<Attr> out;
    while (true) {
        const size_t comma = s.find(',');
        const std::string_view part = s.substr(0, comma);
        if (part.size() < 2 || part[1] != '=' || !((part[0] >= 'a' && part[0] <= 'z') || (part[0] >= 'A' && part[0] <= 'Z')))
            return std::nullopt;
        out.push_back({part[0], part.substr(2)});
        if (comma == std::string_view::npos) return out;
        s.remove_prefix(comma + 1);
    }
}

// RFC 5802: printable = %x21-2B / %x2D-7E (no comma).
bool printable_nonce(std::string_view n) {
    if (n.empty()) return false;
    for (char c : n)
        if (c < 0x21 || c > 0x7e || c == ',') return false;
    return true;
}

crypto::Digest xor_digest(const crypto::Digest& a, const crypto::Digest& b) {
    crypto::Digest out{};
    for (size_t i = 0; i < out.size(); ++i) out[i] = a[i] ^ b[i];
    return out;
}

}  // namespace

std::string make_nonce() {
    uint8_t raw[kRawNonceLen];
    if (!crypto::random_bytes(raw, sizeof raw)) return {};
    return base64_encode(std::string_view(reinterpret_cast<const char*>(raw), sizeof raw));
}

auth::ScramSecret mock_secret(std::string_view user, std::string_view mock_key) {
    auth::ScramSecret s;
    s.iterations = kMockIterations;
    const crypto::Digest salt = crypto::sha256(std::string(user) + std::string(mock_key));
    s.salt = std::string(crypto::as_view(salt).substr(0, 16));
    // No ClientKey hashes to this (it is not a SHA-256 output anyone knows).
    s.stored_key = crypto::hmac_sha256(mock_key, "stored key for " + std::string(user));
    s.server_key = crypto::hmac_sha256(mock_key, "server key for " + std::string(user));
    return s;
}

// ---------------------------------------------------------------- server

ScramServer::ScramServer(auth::ScramSecret secret, std::string server_nonce)
    : secret_(std::move(secret)), server_nonce_(std::move(server_nonce)) {}

Step ScramServer::fail(std::string sqlstate, std::string error) {
    state_ = State::Failed;
    return Step{Step::Kind::Fail, {}, std::move(sqlstate), std::move(error)};
}

Step ScramServer::client_first(std::string_view m) {
    if (state_ != State::First) return fail("08P01", "unexpected SCRAM message");
    // gs2-header: the channel binding flag, an optional authzid, then ','.
    if (m.size() < 3) return fail("08P01", "malformed SCRAM message (too short)");
    if (m[0] == 'p') return fail("08P01", "SCRAM channel binding is not supported by pgrelay (it ends TLS)");
    if ((m[0] != 'n' && m[0] != 'y') || m[1] != ',')
        return fail("08P01", "malformed SCRAM message (bad channel binding flag)");
    if (m[2] != ',') return fail("0A000", "client uses an authorization identity, which is not supported");
    gs2_header_ = std::string(m.substr(0, 3));
    client_first_bare_ = std::string(m.substr(3));
    auto attrs = split_attrs(client_first_bare_);
    if (!attrs || attrs->size() < 2) return fail("08P01", "malformed SCRAM message (client-first-message)");
    if ((*attrs)[0].name == 'm') return fail("0A000", "SCRAM extensions (m=) are not supported");
    // The user name in the message is ignored, as PostgreSQL does: the
    // StartupMessage's user is the one authenticated.
    if ((*attrs)[0].name != 'n' || (*attrs)[1].name != 'r' || !printable_nonce((*attrs)[1].value))
        return fail("08P01", "malformed SCRAM message (expected n=...,r=<nonce>)");
    if (server_nonce_.empty() || !printable_nonce(server_nonce_))
        return fail("08006", "could not generate a SCRAM nonce");
    nonce_ = std::string((*attrs)[1].value) + server_nonce_;
    server_first_ = "r=" + nonce_ + ",s=" + base64_encode(secret_.salt) + ",i=" + std::to_string(secret_.iterations);
    state_ = State::Final;
    return Step{Step::Kind::Send, server_first_, {}, {}};
}

Step ScramServer::client_final(std::string_view m) {
    if (state_ != State::Final) return fail("08P01", "unexpected SCRAM message");
    const size_t proof_at = m.rfind(",p=");
    if (proof_at == std::string_view::npos) return fail("08P01", "malformed SCRAM message (no proof)");
    const std::string_view without_proof = m.substr(0, proof_at);
    auto attrs = split_attrs(without_proof);
    if (!attrs || attrs->size() < 2 || (*attrs)[0].name != 'c' || (*attrs)[1].name != 'r')
        return fail("08P01", "malformed SCRAM message (expected c=...,r=...,p=...)");
    // The channel binding attribute must repeat the gs2 header, with no
    // binding data (none was negotiated).
    auto cbind = base64_decode((*attrs)[0].value);
    if (!cbind || *cbind != gs2_header_) return fail("08P01", "SCRAM channel binding check failed");
    if ((*attrs)[1].value != nonce_) return fail("08P01", "SCRAM nonce mismatch");
    auto proof = base64_decode(m.substr(proof_at + 3));
    if (!proof || proof->size() != crypto::Digest{}.size()) return fail("08P01", "malformed SCRAM proof");

    const std::string auth_message = client_first_bare_ + "," + server_first_ + "," + std::string(without_proof);
    const crypto::Digest client_signature = crypto::hmac_sha256(crypto::as_view(secret_.stored_key), auth_message);
    crypto::Digest p{};
    std::copy(proof->begin(), proof->end(), p.begin());
    // ClientKey = ClientProof XOR ClientSignature; the client knew it if
    // H(ClientKey) is the StoredKey (RFC 5802 section 3).
    const crypto::Digest client_key = xor_digest(p, client_signature);
    const crypto::Digest stored = crypto::sha256(crypto::as_view(client_key));
    if (!crypto::equal(stored.data(), secret_.stored_key.data(), stored.size()))
        return fail("28P01", "password authentication failed");
    client_key_ = client_key;
    state_ = State::Done;
    const crypto::Digest server_signature = crypto::hmac_sha256(crypto::as_view(secret_.server_key), auth_message);
    return Step{Step::Kind::Done, "v=" + base64_encode(crypto::as_view(server_signature)), {}, {}};
}

// ---------------------------------------------------------------- client

ScramClient::ScramClient(ClientCredentials credentials, std::string client_nonce, std::string sasl_name)
    : creds_(std::move(credentials)), client_nonce_(std::move(client_nonce)), sasl_name_(std::move(sasl_name)) {}

Step ScramClient::fail(std::string error) {
    state_ = State::Failed;
    return Step{Step::Kind::Fail, {}, "28000", std::move(error)};
}

std::string ScramClient::client_first() {
    // As libpq: no channel binding, and by default no user name (the
    // StartupMessage has it). A saslname escapes ',' and '=' (RFC 5802 5.1).
    std::string name;
    for (char c : sasl_name_) {
        if (c == ',') name += "=2C";
        else if (c == '=') name += "=3D";
        else name += c;
    }
    client_first_bare_ = "n=" + name + ",r=" + client_nonce_;
    state_ = State::ServerFirst;
    return "n,," + client_first_bare_;
}

Step ScramClient::server_first(std::string_view m) {
    if (state_ != State::ServerFirst) return fail("unexpected SCRAM message from the server");
    auto attrs = split_attrs(m);
    if (!attrs || attrs->size() < 3 || (*attrs)[0].name != 'r' || (*attrs)[1].name != 's' || (*attrs)[2].name != 'i')
        return fail("malformed SCRAM server-first-message");
    const std::string_view nonce = (*attrs)[0].value;
    if (nonce.size() <= client_nonce_.size() || nonce.substr(0, client_nonce_.size()) != client_nonce_ ||
        !printable_nonce(nonce))
        return fail("the server's SCRAM nonce does not extend pgrelay's");
    auto salt = base64_decode((*attrs)[1].value);
    uint32_t iterations = 0;
    const std::string_view it = (*attrs)[2].value;
    auto [p, ec] = std::from_chars(it.data(), it.data() + it.size(), iterations);
    if (!salt || salt->empty() || ec != std::errc() || p != it.data() + it.size() || iterations == 0)
        return fail("malformed SCRAM server-first-message (salt or iteration count)");

    crypto::Digest client_key{}, server_key{};
    if (creds_.secret) {
        // The keys belong to one salt and count: the server must hold that secret.
        if (*salt != creds_.secret->salt || iterations != creds_.secret->iterations)
            return fail("the server's SCRAM secret for this user differs from the one pgrelay holds "
                        "(another salt or iteration count): was the password changed?");
        client_key = creds_.client_key;
        server_key = creds_.secret->server_key;
    } else {
        if (iterations > kMaxIterations) return fail("the server asks for too many SCRAM iterations");
        const crypto::Digest salted = crypto::pbkdf2_sha256(creds_.password, *salt, iterations);
        client_key = crypto::hmac_sha256(crypto::as_view(salted), "Client Key");
        server_key = crypto::hmac_sha256(crypto::as_view(salted), "Server Key");
    }
    const std::string without_proof = "c=biws,r=" + std::string(nonce);  // biws = base64("n,,")
    const std::string auth_message = client_first_bare_ + "," + std::string(m) + "," + without_proof;
    const crypto::Digest stored = crypto::sha256(crypto::as_view(client_key));
    const crypto::Digest proof = xor_digest(client_key, crypto::hmac_sha256(crypto::as_view(stored), auth_message));
    server_signature_ = crypto::hmac_sha256(crypto::as_view(server_key), auth_message);
    state_ = State::ServerFinal;
    return Step{Step::Kind::Send, without_proof + ",p=" + base64_encode(crypto::as_view(proof)), {}, {}};
}

Step ScramClient::server_final(std::string_view m) {
    if (state_ != State::ServerFinal) return fail("unexpected SCRAM message from the server");
    if (m.substr(0, 2) == "e=") return fail("the server refused the SCRAM exchange: " + std::string(m.substr(2)));
    if (m.substr(0, 2) != "v=") return fail("malformed SCRAM server-final-message");
    std::string_view v = m.substr(2);
    v = v.substr(0, v.find(','));  // extensions may follow
    auto sig = base64_decode(v);
    if (!sig || sig->size() != server_signature_.size() ||
        !crypto::equal(sig->data(), server_signature_.data(), server_signature_.size()))
        return fail("the server's SCRAM signature is wrong: it does not hold this user's secret");
    state_ = State::Done;
    return Step{Step::Kind::Done, {}, {}, {}};
}

}  // namespace pgrelay::protocol::scram
