// TLS through pgrelay, with certificates made by the openssl CLI: clients
// (psql, libpq, a raw OpenSSL client) to pgrelay with [tls], and pgrelay to
// PostgreSQL backends running with ssl = on in every backend_tls mode. Also
// the session limits that need a real server: idle_client_timeout and TCP
// keepalive.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

#include "fixtures.hpp"

using namespace pgrelay::test;
using namespace std::chrono_literals;

namespace {

// One PKI for the whole binary: a CA, pgrelay's server certificate for
// 127.0.0.1/localhost, a client certificate, the backends' certificate, and a
// second CA (with a client certificate) that nobody trusts.
struct Pki {
    TempDir dir{"pgrelay-pki"};
    TestCa ca{dir.path(), "ca"};
    TestCa rogue{dir.path(), "rogue-ca"};
    std::string server = ca.issue("server", "pgrelay-test", "IP:127.0.0.1,DNS:localhost");
    std::string server2 = ca.issue("server2", "pgrelay-renewed", "IP:127.0.0.1,DNS:localhost");
    std::string client = ca.issue("client", "scramuser", "");
    std::string rogue_client = rogue.issue("rogue-client", "scramuser", "");
    // For the backends: an address only, so naming them "localhost" fails verify-full.
    std::string backend = ca.issue("backend", "pg-backend", "IP:127.0.0.1");

    Pki() {
        // PostgreSQL (user postgres) reads the backend key; it insists on 0600 and ownership.
        std::string out;
        if (run_command("chmod 755 " + dir.path() + " && chown postgres " + ca.key_of("backend"), &out) != 0)
            throw std::runtime_error("cannot hand the backend key to postgres: " + out);
    }
    static Pki& shared() {
        static Pki p;
        return p;
    }
    std::string key(const std::string& cert) const { return cert.substr(0, cert.size() - 4) + ".key"; }
};

std::string tls_section(const Pki& p, const std::string& extra = "") {
    return "[tls]\ncert = \"" + p.server + "\"\nkey = \"" + p.key(p.server) + "\"\n" + extra;
}

// ssl on (or off) on every node of the shared cluster, with the backend
// certificate; waits until a new connection sees it.
void set_backend_ssl(PgCluster& cluster, bool on) {
    const Pki& p = Pki::shared();
    for (const auto& n : cluster.nodes()) {
        PgConn c = pg_connect(cluster.direct(n) + " sslmode=disable");
        REQUIRE(c.ok());
        if (on) {
            exec(c.conn, "ALTER SYSTEM SET ssl_cert_file = '" + p.backend + "'");
            exec(c.conn, "ALTER SYSTEM SET ssl_key_file = '" + p.key(p.backend) + "'");
            exec(c.conn, "ALTER SYSTEM SET ssl = on");
        } else {
            exec(c.conn, "ALTER SYSTEM RESET ssl");
            exec(c.conn, "ALTER SYSTEM RESET ssl_cert_file");
            exec(c.conn, "ALTER SYSTEM RESET ssl_key_file");
        }
        exec(c.conn, "SELECT pg_reload_conf()");
        const std::string want = on ? "on" : "off";
        REQUIRE(eventually(
            [&] {
                PgConn d = pg_connect(cluster.direct(n) + " sslmode=disable");
                return d.ok() && query_value(d.conn, "SHOW ssl") == want;
            },
            10s));
    }
}

struct BackendSsl {
    PgCluster& cluster;
    explicit BackendSsl(PgCluster& c) : cluster(c) { set_backend_ssl(cluster, true); }
    ~BackendSsl() {
        try {
            set_backend_ssl(cluster, false);
        } catch (...) {
        }
    }
};

// The subject CN of the certificate the server presented on `c`.
std::string server_cn(PGconn* c) {
    auto* ssl = static_cast<SSL*>(PQsslStruct(c, "OpenSSL"));
    if (!ssl) return "(no TLS)";
    X509* cert = SSL_get1_peer_certificate(ssl);
    if (!cert) return "(no certificate)";
    char cn[256] = {};
    X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn);
    X509_free(cert);
    return cn;
}

// psql -Atc SQL; returns (exit status, output).
std::pair<int, std::string> psql(const std::string& conninfo, const std::string& sql) {
    std::string out;
    const int rc = run_command("psql '" + conninfo + "' -Atc \"" + sql + "\"", &out);
    return {rc, out};
}

// Sum of a counter family's samples whose labels contain `labels_part`.
double metric_sum(const Pgrelay& relay, const std::string& name, const std::string& labels_part = "") {
    const auto [status, body] = relay.http_get("/metrics");
    REQUIRE(status == 200);
    double sum = 0;
    std::istringstream in(body);
    for (std::string line; std::getline(in, line);) {
        if (line.rfind(name + "{", 0) != 0 || line.find(labels_part) == std::string::npos) continue;
        sum += std::stod(line.substr(line.rfind(' ') + 1));
    }
    return sum;
}

int tcp_connect(uint16_t port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}


}  // namespace

TEST_CASE("psql with sslmode=require and verify-full through both ports", "[tls]") {
    auto& cluster = PgCluster::shared();
    const Pki& pki = Pki::shared();
    Pgrelay relay(cluster, {.extra_sections = tls_section(pki)});

    for (uint16_t port : {relay.rw_port(), relay.ro_port()}) {
        INFO("port " << port);
        const std::string base = relay.conninfo(port, "scramuser", "scrampass");
        auto [rc1, out1] = psql(base + " sslmode=require",
                                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
        CHECK(rc1 == 0);
        CHECK(out1 == "f\n");  // TLS ends at pgrelay: the backend leg is plaintext (backend_tls = disable)

        auto [rc2, out2] = psql(base + " sslmode=verify-full sslrootcert=" + pki.ca.cert(), "SELECT 1");
        CHECK(rc2 == 0);
        CHECK(out2 == "1\n");

        PgConn c = pg_connect(base + " sslmode=verify-full sslrootcert=" + pki.ca.cert());
        REQUIRE(c.ok());
        CHECK(PQsslInUse(c.conn) == 1);
        CHECK(std::string(PQsslAttribute(c.conn, "protocol")) == "TLSv1.3");
        CHECK(server_cn(c.conn) == "pgrelay-test");

        // client_tls defaults to "allow": plaintext clients still work.
        PgConn plain = pg_connect(base);
        REQUIRE(plain.ok());
        CHECK(PQsslInUse(plain.conn) == 0);

        // verify-full checks the name: the certificate does not cover pgrelay.invalid.
        PgConn wrong = pg_connect(base + " host=pgrelay.invalid hostaddr=127.0.0.1 sslmode=verify-full sslrootcert=" +
                                  pki.ca.cert());
        CHECK_FALSE(wrong.ok());
        CHECK(wrong.error.find("does not match host name") != std::string::npos);
        // Against a CA that did not sign pgrelay's certificate, verify-ca fails.
        PgConn untrusted = pg_connect(base + " sslmode=verify-ca sslrootcert=" + pki.rogue.cert());
        CHECK_FALSE(untrusted.ok());
        CHECK(untrusted.error.find("certificate verify failed") != std::string::npos);
    }
    CHECK(metric_sum(relay, "pgrelay_client_tls_total", "outcome=\"ok\"") >= 6);
    CHECK(metric_sum(relay, "pgrelay_client_tls_total", "outcome=\"plaintext\"") >= 2);
}

TEST_CASE("TLS 1.2 minimum, configurable ciphers", "[tls]") {
    auto& cluster = PgCluster::shared();
    const Pki& pki = Pki::shared();
    Pgrelay relay(cluster, {.extra_sections = tls_section(pki, "ciphers = \"ECDHE-ECDSA-AES128-GCM-SHA256\"\n")});
    const std::string base = relay.conninfo(relay.rw_port(), "scramuser", "scrampass") + " sslmode=require";

    PgConn v12 = pg_connect(base + " ssl_max_protocol_version=TLSv1.2");
    REQUIRE(v12.ok());
    CHECK(std::string(PQsslAttribute(v12.conn, "protocol")) == "TLSv1.2");
    CHECK(std::string(PQsslAttribute(v12.conn, "cipher")) == "ECDHE-ECDSA-AES128-GCM-SHA256");

    // TLS 1.1 and older are refused.
    PgConn v11 = pg_connect(base + " ssl_min_protocol_version=TLSv1 ssl_max_protocol_version=TLSv1.1");
    CHECK_FALSE(v11.ok());
}

TEST_CASE("GSSENCRequest gets N, then SSLRequest and a TLS startup work (pgjdbc's sequence)", "[tls]") {
    auto& cluster = PgCluster::shared();
    const Pki& pki = Pki::shared();
    Pgrelay relay(cluster, {.extra_sections = tls_section(pki)});

    const int fd = tcp_connect(relay.rw_port());
    REQUIRE(fd >= 0);
    const std::string gss = startup_request(8, 80877104), sslreq = startup_request(8, 80877103);
    char answer = 0;
    REQUIRE(::send(fd, gss.data(), gss.size(), 0) == 8);
    REQUIRE(::recv(fd, &answer, 1, 0) == 1);
    CHECK(answer == 'N');
    REQUIRE(::send(fd, sslreq.data(), sslreq.size(), 0) == 8);
    REQUIRE(::recv(fd, &answer, 1, 0) == 1);
    CHECK(answer == 'S');

    SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
    SSL* ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    CHECK(SSL_connect(ssl) == 1);
    // The StartupMessage inside TLS reaches PostgreSQL: it asks for a password.
    const std::string startup = startup_message({{"user", "scramuser"}, {"database", "postgres"}});
    CHECK(SSL_write(ssl, startup.data(), static_cast<int>(startup.size())) == static_cast<int>(startup.size()));
    char buf[512];
    const int n = SSL_read(ssl, buf, sizeof buf);
    REQUIRE(n > 0);
    const auto frames = frames_of(std::string(buf, n));
    REQUIRE_FALSE(frames.empty());
    CHECK(frames[0].first == 'R');  // AuthenticationSASL from the backend
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    ::close(fd);
}

// openssl s_client straight into TLS (what libpq 17 does with
// sslnegotiation=direct), writing `input` inside the session and keeping
// stdin open 2 s for the answers; returns (exit status, everything printed).
std::pair<int, std::string> s_client(uint16_t port, const std::string& alpn, const std::string& input) {
    TempDir d("pgrelay-direct");
    const std::string in = d.path() + "/in.bin";
    {
        std::ofstream f(in, std::ios::binary);
        f << input;
    }
    std::string out;
    const int rc = run_command("(cat " + in + "; sleep 2) | timeout 20 openssl s_client -connect 127.0.0.1:" +
                                   std::to_string(port) + " -CAfile " + Pki::shared().ca.cert() +
                                   (alpn.empty() ? "" : " -alpn " + alpn) + " -quiet -no_ign_eof",
                               &out);
    return {rc, out};
}

TEST_CASE("direct TLS (sslnegotiation=direct) with ALPN postgresql; without it, or with another protocol, refused",
          "[tls]") {
    auto& cluster = PgCluster::shared();
    const Pki& pki = Pki::shared();
    Pgrelay relay(cluster, {.extra_sections = tls_section(pki)});
    const std::string startup = startup_message({{"user", "scramuser"}, {"database", "postgres"}});
    const double direct_before = metric_sum(relay, "pgrelay_client_tls_direct_total");

    SECTION("ALPN postgresql: the StartupMessage inside reaches PostgreSQL, which asks for SCRAM") {
        for (uint16_t port : {relay.rw_port(), relay.ro_port()}) {
            const auto [rc, out] = s_client(port, "postgresql", startup);
            INFO(out);
            CHECK(out.find("SCRAM-SHA-256") != std::string::npos);
        }
        CHECK(metric_sum(relay, "pgrelay_client_tls_direct_total") == direct_before + 2);
    }
    SECTION("no ALPN: the handshake completes, then an 08P01 ErrorResponse inside TLS") {
        const auto [rc, out] = s_client(relay.rw_port(), "", startup);
        INFO(out);
        CHECK(out.find("direct TLS connection without ALPN") != std::string::npos);
        CHECK(out.find("SCRAM-SHA-256") == std::string::npos);
        CHECK(relay.log().find("direct TLS handshake without ALPN") != std::string::npos);
    }
    SECTION("ALPN http/1.1 only: the handshake fails with no_application_protocol") {
        const auto [rc, out] = s_client(relay.rw_port(), "http/1.1", startup);
        INFO(out);
        CHECK(rc != 0);
        CHECK(out.find("no application protocol") != std::string::npos);
        CHECK(out.find("SCRAM-SHA-256") == std::string::npos);
    }
    SECTION("an SSLRequest inside a direct TLS session is a duplicate") {
        const auto [rc, out] = s_client(relay.rw_port(), "postgresql", startup_request(8, 80877103));
        INFO(out);
        CHECK(out.find("duplicate SSLRequest during startup") != std::string::npos);
    }
    SECTION("libpq 15 (SSLRequest first, no ALPN) and an SSLRequest client offering ALPN both work") {
        PgConn c = pg_connect(relay.conninfo(relay.rw_port(), "scramuser", "scrampass") + " sslmode=require");
        REQUIRE(c.ok());
        for (const char* alpn : {"postgresql", "http/1.1"}) {
            INFO(alpn);
            const int fd = tcp_connect(relay.rw_port());
            REQUIRE(fd >= 0);
            const std::string sslreq = startup_request(8, 80877103);
            char answer = 0;
            REQUIRE(::send(fd, sslreq.data(), sslreq.size(), 0) == 8);
            REQUIRE(::recv(fd, &answer, 1, 0) == 1);
            REQUIRE(answer == 'S');
            SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
            SSL* ssl = SSL_new(ctx);
            const std::string list = std::string(1, char(std::strlen(alpn))) + alpn;
            SSL_set_alpn_protos(ssl, reinterpret_cast<const unsigned char*>(list.data()), unsigned(list.size()));
            SSL_set_fd(ssl, fd);
            const bool ok = SSL_connect(ssl) == 1;
            // As PostgreSQL 17: an ALPN list must include "postgresql".
            CHECK(ok == (std::string(alpn) == "postgresql"));
            if (ok) {
                const unsigned char* sel = nullptr;
                unsigned sel_len = 0;
                SSL_get0_alpn_selected(ssl, &sel, &sel_len);
                CHECK(std::string(reinterpret_cast<const char*>(sel), sel_len) == "postgresql");
            }
            SSL_free(ssl);
            SSL_CTX_free(ctx);
            ::close(fd);
        }
    }
}

TEST_CASE("with no TLS configured, a direct TLS handshake gets what PostgreSQL before 17 sends: invalid length", "[tls]") {
    auto& cluster = PgCluster::shared();
    Pgrelay relay(cluster);
    const int fd = tcp_connect(relay.rw_port());
    REQUIRE(fd >= 0);
    // The start of a ClientHello record: 0x16 0x03 0x01, then its length.
    const std::string hello("\x16\x03\x01\x00\xf0\x01\x00\x00\xec\x03\x03", 11);
    REQUIRE(::send(fd, hello.data(), hello.size(), 0) == ssize_t(hello.size()));
    std::string got;
    char buf[512];
    for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) got.append(buf, size_t(n));
    ::close(fd);
    const auto err = first_error(got);
    REQUIRE(err);
    CHECK(err->sqlstate == "08P01");
    CHECK(err->message.find("invalid length of startup packet") != std::string::npos);
}

TEST_CASE("client_ca: a client certificate is required and checked", "[tls]") {
    auto& cluster = PgCluster::shared();
    const Pki& pki = Pki::shared();
    Pgrelay relay(cluster, {.extra_sections = tls_section(pki, "client_ca = \"" + pki.ca.cert() + "\"\n")});
    const std::string base = relay.conninfo(relay.rw_port(), "scramuser", "scrampass");

    PgConn with = pg_connect(base + " sslmode=require sslcert=" + pki.client + " sslkey=" + pki.key(pki.client));
    INFO(with.error);
    REQUIRE(with.ok());
    CHECK(query_value(with.conn, "SELECT 42") == "42");

    PgConn without = pg_connect(base + " sslmode=require");
    CHECK_FALSE(without.ok());
    CHECK(without.sqlstate == "28000");
    CHECK(without.error.find("requires a valid client certificate") != std::string::npos);

    // A certificate from a CA pgrelay does not trust fails the handshake.
    PgConn rogue = pg_connect(base + " sslmode=require sslcert=" + pki.rogue_client + " sslkey=" + pki.key(pki.rogue_client));
    CHECK_FALSE(rogue.ok());
    CHECK(rogue.error.find("unknown ca") != std::string::npos);
    CHECK(metric_sum(relay, "pgrelay_client_tls_total", "outcome=\"failed\"") == 1);

    // No TLS, no certificate: refused too.
    PgConn plain = pg_connect(base);
    CHECK_FALSE(plain.ok());
    CHECK(plain.sqlstate == "28000");
    CHECK(metric_sum(relay, "pgrelay_backend_connections_total") == 1);  // only the good client got a backend
}

TEST_CASE("client_tls = require refuses plaintext clients with 28000 before any backend", "[tls]") {
    auto& cluster = PgCluster::shared();
    const Pki& pki = Pki::shared();
    Pgrelay relay(cluster, {.extra_sections = tls_section(pki, "client_tls = \"require\"\n")});

    for (uint16_t port : {relay.rw_port(), relay.ro_port()}) {
        PgConn plain = pg_connect(relay.conninfo(port, "scramuser", "scrampass"));
        CHECK_FALSE(plain.ok());
        CHECK(plain.sqlstate == "28000");
        CHECK(plain.error.find("TLS is required") != std::string::npos);
    }
    CHECK(metric_sum(relay, "pgrelay_backend_connections_total") == 0);

    // With TLS it works, and libpq's plaintext CancelRequest still cancels.
    PgConn c = pg_connect(relay.conninfo(relay.rw_port(), "scramuser", "scrampass") + " sslmode=require");
    REQUIRE(c.ok());
    REQUIRE(PQsendQuery(c.conn, "SELECT pg_sleep(30)") == 1);
    std::this_thread::sleep_for(300ms);
    PGcancel* cancel = PQgetCancel(c.conn);
    char err[256];
    CHECK(PQcancel(cancel, err, sizeof err) == 1);
    PQfreeCancel(cancel);
    std::string sqlstate;
    while (PGresult* r = PQgetResult(c.conn)) {
        if (const char* s = PQresultErrorField(r, PG_DIAG_SQLSTATE)) sqlstate = s;
        PQclear(r);
    }
    CHECK(sqlstate == "57014");
}

TEST_CASE("backend_tls in each mode against backends with ssl = on", "[tls]") {
    auto& cluster = PgCluster::shared();
    const Pki& pki = Pki::shared();
    BackendSsl ssl_on(cluster);
    const std::string ca = "backend_tls_ca = \"" + pki.ca.cert() + "\"\n";

    struct Mode {
        std::string topology;
        std::string ssl_in_use;
    };
    for (const Mode& m : {Mode{"backend_tls = \"disable\"", "f"}, Mode{"backend_tls = \"prefer\"", "t"},
                          Mode{"backend_tls = \"require\"", "t"}, Mode{"backend_tls = \"verify-ca\"\n" + ca, "t"},
                          Mode{"backend_tls = \"verify-full\"\n" + ca, "t"}}) {
        INFO(m.topology);
        Pgrelay relay(cluster, {.extra_topology = m.topology});
        for (uint16_t port : {relay.rw_port(), relay.ro_port()}) {
            PgConn c = pg_connect(relay.conninfo(port, "scramuser", "scrampass"));
            INFO(c.error);
            REQUIRE(c.ok());
            CHECK(query_value(c.conn, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == m.ssl_in_use);
        }
    }

    SECTION("verify-full fails on a host name the certificate does not cover, with a clear error") {
        Pgrelay relay(cluster, {.extra_topology = "backend_tls = \"verify-full\"\n" + ca, .member_host = "localhost"});
        PgConn c = pg_connect(relay.conninfo(relay.rw_port(), "scramuser", "scrampass"));
        CHECK_FALSE(c.ok());
        CHECK(c.sqlstate == "08006");
        CHECK(c.error.find("hostname mismatch") != std::string::npos);
        CHECK(c.error.find("verify-full") != std::string::npos);
    }
    SECTION("verify-ca fails against a CA that did not sign the backend's certificate") {
        Pgrelay relay(cluster, {.extra_topology = "backend_tls = \"verify-ca\"\nbackend_tls_ca = \"" + pki.rogue.cert() + "\"\n"});
        PgConn c = pg_connect(relay.conninfo(relay.rw_port(), "scramuser", "scrampass"));
        CHECK_FALSE(c.ok());
        CHECK(c.sqlstate == "08006");
        CHECK(c.error.find("certificate verify failed") != std::string::npos);
    }
    SECTION("verify-full with the host name in the certificate, through a client TLS session too") {
        Pgrelay relay(cluster, {.extra_topology = "backend_tls = \"verify-full\"\n" + ca,
                                .extra_sections = tls_section(pki)});
        const std::string tls_client = relay.conninfo(relay.rw_port(), "scramuser", "scrampass") +
                                       " sslmode=verify-full sslrootcert=" + pki.ca.cert();
        // TLS on both legs: the client's SCRAM channel binding cannot match
        // the backend's TLS channel, and PostgreSQL refuses a client that
        // supports binding but was not offered it (downgrade protection), so
        // SCRAM clients on TLS set channel_binding=disable (README, TLS).
        PgConn refused = pg_connect(tls_client);
        CHECK_FALSE(refused.ok());
        CHECK(refused.error.find("channel binding") != std::string::npos);
        PgConn md5 = pg_connect(relay.conninfo(relay.rw_port(), "md5user", "md5pass") +
                                " sslmode=verify-full sslrootcert=" + pki.ca.cert());
        INFO(md5.error);
        CHECK(md5.ok());

        PgConn c = pg_connect(tls_client + " channel_binding=disable");
        INFO(c.error);
        REQUIRE(c.ok());
        CHECK(PQsslInUse(c.conn) == 1);
        CHECK(query_value(c.conn, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == "t");
        // A bigger result crosses many TLS records in both legs.
        CHECK(query_value(c.conn, "SELECT sum(length(repeat(md5(g::text), 100))) FROM generate_series(1, 20000) g") ==
              "64000000");
        CHECK(query_value(c.conn, "SELECT length(string_agg(md5(g::text), '')) FROM generate_series(1, 50000) g") ==
              "1600000");
    }
}

TEST_CASE("backend_tls against a backend without TLS: prefer goes plaintext, require refuses", "[tls]") {
    auto& cluster = PgCluster::shared();
    {
        Pgrelay relay(cluster, {.extra_topology = "backend_tls = \"prefer\""});
        PgConn c = pg_connect(relay.conninfo(relay.rw_port(), "scramuser", "scrampass"));
        REQUIRE(c.ok());
        CHECK(query_value(c.conn, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == "f");
    }
    Pgrelay relay(cluster, {.extra_topology = "backend_tls = \"require\""});
    PgConn c = pg_connect(relay.conninfo(relay.rw_port(), "scramuser", "scrampass"));
    CHECK_FALSE(c.ok());
    CHECK(c.sqlstate == "08006");
    CHECK(c.error.find("does not support TLS") != std::string::npos);
}

TEST_CASE("SIGHUP reloads the certificate; an open TLS session stays up", "[tls]") {
    auto& cluster = PgCluster::shared();
    const Pki& pki = Pki::shared();
    TempDir live("pgrelay-live-cert");
    const std::string cert = live.path() + "/pgrelay.crt", key = live.path() + "/pgrelay.key";
    std::filesystem::copy_file(pki.server, cert);
    std::filesystem::copy_file(pki.key(pki.server), key);
    Pgrelay relay(cluster, {.extra_sections = "[tls]\ncert = \"" + cert + "\"\nkey = \"" + key + "\"\n"});
    const std::string tls_conninfo = relay.conninfo(relay.rw_port(), "scramuser", "scrampass") +
                                     " sslmode=verify-full sslrootcert=" + pki.ca.cert();

    PgConn before = pg_connect(tls_conninfo);
    REQUIRE(before.ok());
    CHECK(server_cn(before.conn) == "pgrelay-test");
    exec(before.conn, "BEGIN");
    exec(before.conn, "CREATE TEMP TABLE reload_probe(v int)");

    // A broken key is refused and the running certificate stays.
    std::filesystem::copy_file(pki.key(pki.client), key, std::filesystem::copy_options::overwrite_existing);
    relay.signal(SIGHUP);
    REQUIRE(eventually([&] { return relay.log().find("keeping the running configuration") != std::string::npos; }, 10s));
    {
        PgConn still = pg_connect(tls_conninfo);
        REQUIRE(still.ok());
        CHECK(server_cn(still.conn) == "pgrelay-test");
    }

    std::filesystem::copy_file(pki.server2, cert, std::filesystem::copy_options::overwrite_existing);
    std::filesystem::copy_file(pki.key(pki.server2), key, std::filesystem::copy_options::overwrite_existing);
    relay.signal(SIGHUP);
    REQUIRE(eventually([&] { return relay.log().find("pgrelay-renewed") != std::string::npos; }, 10s));

    PgConn after = pg_connect(tls_conninfo);
    REQUIRE(after.ok());
    CHECK(server_cn(after.conn) == "pgrelay-renewed");
    // The session opened before the reload is untouched, inside its transaction.
    exec(before.conn, "INSERT INTO reload_probe VALUES (1)");
    CHECK(query_value(before.conn, "SELECT count(*) FROM reload_probe") == "1");
    exec(before.conn, "COMMIT");
    CHECK(server_cn(before.conn) == "pgrelay-test");
}

TEST_CASE("idle_client_timeout ends idle sessions with 57P05, never one inside a transaction", "[tls][limits]") {
    auto& cluster = PgCluster::shared();
    Pgrelay relay(cluster, {.extra_server = "idle_client_timeout = \"1s\""});
    const std::string ci = relay.conninfo(relay.rw_port(), "scramuser", "scrampass");

    PgConn idle = pg_connect(ci);
    PgConn in_tx = pg_connect(ci);
    PgConn busy = pg_connect(ci);
    REQUIRE(idle.ok());
    REQUIRE(in_tx.ok());
    REQUIRE(busy.ok());
    exec(in_tx.conn, "BEGIN");
    CHECK(query_value(in_tx.conn, "SELECT 1") == "1");
    // A query running longer than the timeout is not idleness either.
    CHECK(query_value(busy.conn, "SELECT pg_sleep(2.5)::text") == "");

    // By now idle has been idle 2.5 s: pgrelay ended it.
    REQUIRE(eventually([&] { return relay.log().find("idle-session timeout") != std::string::npos; }, 10s));
    PGresult* r = PQexec(idle.conn, "SELECT 1");
    CHECK(PQresultStatus(r) == PGRES_FATAL_ERROR);
    PQclear(r);
    CHECK(std::string(PQerrorMessage(idle.conn)).find("idle-session timeout") != std::string::npos);

    // The transaction, idle just as long, is intact.
    CHECK(query_value(in_tx.conn, "SELECT 2") == "2");
    exec(in_tx.conn, "COMMIT");
    CHECK(metric_sum(relay, "pgrelay_sessions_terminated_total") >= 1);
}

TEST_CASE("TCP keepalive is armed on client and backend sockets", "[tls][limits]") {
    auto& cluster = PgCluster::shared();
    Pgrelay relay(cluster, {.extra_server = "tcp_keepalive_idle = \"37s\"\ntcp_keepalive_interval = \"5s\""});
    PgConn c = pg_connect(relay.conninfo(relay.rw_port(), "scramuser", "scrampass"));
    REQUIRE(c.ok());
    // ss -o shows each socket's keepalive timer: pgrelay's end towards the
    // client (source port = rw) and towards the primary (dest port = primary).
    const std::string owner = "pid=" + std::to_string(relay.pid()) + ",";
    for (const std::string& filter : {"sport = :" + std::to_string(relay.rw_port()),
                                     "dport = :" + std::to_string(cluster.primary().port)}) {
        INFO(filter);
        // ss shows one timer per socket: a retransmission timer hides the
        // keepalive one until the peer's delayed ACK arrives, so look again.
        std::string out;
        int seconds = -1;
        const bool found = eventually(
            [&] {
                if (run_command("ss -tnopH state established '( " + filter + " )'", &out) != 0) return false;
                std::istringstream lines(out);
                for (std::string line; std::getline(lines, line);) {
                    std::smatch m;
                    if (line.find(owner) != std::string::npos &&  // pgrelay's socket
                        std::regex_search(line, m, std::regex(R"(timer:\(keepalive,(\d+)sec)")))
                        seconds = std::stoi(m[1]);
                }
                return seconds >= 0;
            },
            5s);
        INFO(out);
        REQUIRE(found);
        CHECK(seconds <= 37);
    }
}
