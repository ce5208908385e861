// TLS contexts (tls.hpp).
#include "proxy/tls.hpp"
#include "topology/http_client.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <unistd.h>

#include <algorithm>
#include <boost/asio/ssl/context.hpp>
#include <cerrno>
#include <cstring>

namespace pgrelay {

namespace ssl = boost::asio::ssl;

namespace {

[[noreturn]] void fail(const Config& c, const std::string& what, const std::string& why) {
    throw ConfigError(c.path, 0, what + ": " + (why.empty() ? "failed" : why));
}

// The oldest queued OpenSSL error, e.g. "No such file or directory" or
// "key values mismatch"; clears the queue.
std::string openssl_error() {
    const unsigned long e = ERR_peek_error();
    std::string out;
    if (const char* reason = e ? ERR_reason_error_string(e) : nullptr) {
        out = reason;
    } else if (e) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof buf);
        out = buf;
    }
    ERR_clear_error();
    return out;
}

// A file OpenSSL is about to read: say plainly when it is missing or unreadable.
void require_readable(const Config& c, const std::string& what, const std::string& path) {
    if (::access(path.c_str(), R_OK) != 0) fail(c, what + " " + path, std::strerror(errno));
}


std::string subject_of(SSL_CTX* ctx) {
    X509* cert = SSL_CTX_get0_certificate(ctx);
    if (!cert) return {};
    char buf[256];
    X509_NAME_oneline(X509_get_subject_name(cert), buf, sizeof buf);
    return buf;
}

// ALPN (RFC 7301) as PostgreSQL 17 registers it: "postgresql", length-prefixed.
constexpr unsigned char kAlpnList[] = {10, 'p', 'o', 's', 't', 'g', 'r', 'e', 's', 'q', 'l'};

// A client that offers ALPN must offer "postgresql" (PostgreSQL 17 answers
// otherwise with the no_application_protocol alert); one that offers none
// gets none, and only a direct TLS client is then refused (client.cpp).
int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in, unsigned inlen, void*) {
    unsigned char* chosen = nullptr;
    unsigned char chosen_len = 0;
    const int r = SSL_select_next_proto(&chosen, &chosen_len, kAlpnList, sizeof kAlpnList, in, inlen);
    if (r != OPENSSL_NPN_NEGOTIATED) return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = chosen;
    *outlen = chosen_len;
    return SSL_TLSEXT_ERR_OK;
}

std::shared_ptr<ssl::context> make_server(const Config& c) {
    auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
    SSL_CTX* h = ctx->native_handle();
    SSL_CTX_set_min_proto_version(h, c.tls.tls13_only ? TLS1_3_VERSION : TLS1_2_VERSION);
    // As PostgreSQL: no compression (CRIME), no renegotiation, the server's
    // cipher order.
    SSL_CTX_set_options(h, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    // OpenSSL frees a connection's record buffers while they are empty: an
    // idle TLS client does not keep them.
    SSL_CTX_set_mode(h, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_set_cipher_list(h, c.tls.ciphers.c_str()) != 1)
        fail(c, "[tls] ciphers \"" + c.tls.ciphers + "\"", "no usable cipher (" + openssl_error() + ")");
    require_readable(c, "[tls] cert", c.tls.cert);
    require_readable(c, "[tls] key", c.tls.key);
    if (!c.tls.client_ca.empty()) require_readable(c, "[tls] client_ca", c.tls.client_ca);
    if (SSL_CTX_use_certificate_chain_file(h, c.tls.cert.c_str()) != 1)
        fail(c, "[tls] cert " + c.tls.cert, openssl_error());
    if (SSL_CTX_use_PrivateKey_file(h, c.tls.key.c_str(), SSL_FILETYPE_PEM) != 1)
        fail(c, "[tls] key " + c.tls.key, openssl_error());
    if (SSL_CTX_check_private_key(h) != 1)
        fail(c, "[tls] key " + c.tls.key, "does not match the certificate " + c.tls.cert + " (" + openssl_error() + ")");
    if (!c.tls.client_ca.empty()) {
        if (SSL_CTX_load_verify_locations(h, c.tls.client_ca.c_str(), nullptr) != 1)
            fail(c, "[tls] client_ca " + c.tls.client_ca, openssl_error());
        STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(c.tls.client_ca.c_str());
        if (!names) fail(c, "[tls] client_ca " + c.tls.client_ca, "no CA certificate in the file");
        SSL_CTX_set_client_CA_list(h, names);
        // A certificate the CA did not sign fails the handshake; a client
        // without one gets past it and is refused with 28000 (as PostgreSQL).
        SSL_CTX_set_verify(h, SSL_VERIFY_PEER, nullptr);
    }
    SSL_CTX_set_alpn_select_cb(h, &select_alpn, nullptr);
    return ctx;
}

std::shared_ptr<ssl::context> make_backend(const Config& c) {
    auto ctx = std::make_shared<ssl::context>(ssl::context::tls_client);
    SSL_CTX* h = ctx->native_handle();
    SSL_CTX_set_min_proto_version(h, TLS1_2_VERSION);
    SSL_CTX_set_options(h, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(h, SSL_MODE_RELEASE_BUFFERS);
    // Offered as libpq 17 does; servers before 17 ignore it.
    SSL_CTX_set_alpn_protos(h, kAlpnList, sizeof kAlpnList);
    if (!c.backend_tls_ca.empty()) require_readable(c, "[topology] backend_tls_ca", c.backend_tls_ca);
    if (!c.backend_tls_ca.empty() && SSL_CTX_load_verify_locations(h, c.backend_tls_ca.c_str(), nullptr) != 1)
        fail(c, "[topology] backend_tls_ca " + c.backend_tls_ca, openssl_error());
    return ctx;
}

}  // namespace

std::shared_ptr<const TlsContexts> make_tls_contexts(const Config& c) {
    auto out = std::make_shared<TlsContexts>();
    if (c.tls.enabled()) {
        out->server = make_server(c);
        out->server_subject = subject_of(out->server->native_handle());
    }
    if (c.backend_tls != Config::BackendTls::Disable) out->backend = make_backend(c);
    // The stores' TLS files (etcd, Patroni REST) are loaded by the sources;
    // loading them here too makes a bad file a configuration error.
    auto check_store = [&](const char* section, bool https, const std::string& ca, const std::string& cert,
                           const std::string& key) {
        if (!https && ca.empty() && cert.empty()) return;
        try {
            topology::http::make_client_tls({ca, cert, key});
        } catch (const std::exception& e) {
            fail(c, section, e.what());
        }
    };
    auto any_https = [](const std::vector<std::string>& urls) {
        return std::any_of(urls.begin(), urls.end(), [](const std::string& u) { return u.rfind("https://", 0) == 0; });
    };
    if (c.topology_source == "etcd")
        check_store("[topology.etcd]", any_https(c.etcd.endpoints), c.etcd.ca, c.etcd.cert, c.etcd.key);
    if (c.topology_source == "patroni_api")
        check_store("[topology.patroni_api]", any_https(c.patroni_api.urls), c.patroni_api.ca, c.patroni_api.cert,
                    c.patroni_api.key);
    return out;
}

}  // namespace pgrelay
