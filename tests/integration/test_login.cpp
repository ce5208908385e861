// The authentication state machines (protocol/login.hpp) against the real
// thing: BackendLogin logs into PostgreSQL 15 with a password, a stored md5
// hash, and a SCRAM ClientKey that FrontendAuth recovered from a real libpq
// client (the pass-through pgrelay's pools will rely on: PostgreSQL's secret,
// the client's proof, and no password held anywhere). Blocking sockets on
// loopback; the "server" here is a test thread speaking FrontendAuth.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <atomic>
#include <thread>

#include "fixtures.hpp"
#include "protocol/encode.hpp"
#include "protocol/login.hpp"

using namespace pgrelay::test;
using namespace pgrelay::protocol;
using namespace std::chrono_literals;

namespace {

bool read_exact(int fd, char* out, size_t n) {
    while (n > 0) {
        const ssize_t r = ::recv(fd, out, n, 0);
        if (r <= 0) return false;
        out += r;
        n -= size_t(r);
    }
    return true;
}

bool send_all(int fd, const std::string& b) {
    size_t off = 0;
    while (off < b.size()) {
        const ssize_t n = ::send(fd, b.data() + off, b.size() - off, MSG_NOSIGNAL);
        if (n <= 0) return false;
        off += size_t(n);
    }
    return true;
}

// One regular-phase message: type, body.
std::optional<std::pair<char, std::string>> read_message(int fd) {
    char head[5];
    if (!read_exact(fd, head, 5)) return std::nullopt;
    const uint32_t len = read_u32(reinterpret_cast<uint8_t*>(head + 1));
    if (len < 4 || len > (1u << 20)) return std::nullopt;
    std::string body(len - 4, '\0');
    if (!read_exact(fd, body.data(), body.size())) return std::nullopt;
    return std::make_pair(head[0], std::move(body));
}

std::span<const uint8_t> span_of(const std::string& s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

int connect_to(uint16_t port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    timeval tv{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

struct Login {
    LoginStep last;
    std::string current_user;  // from SELECT current_user after the login
};

// BackendLogin over a real socket to a PostgreSQL node, then one query.
Login login_to(uint16_t port, const std::string& user, BackendLogin::Credentials creds) {
    Login out;
    const int fd = connect_to(port);
    REQUIRE(fd >= 0);
    REQUIRE(send_all(fd, startup_message({{"user", user}, {"database", "postgres"}})));
    BackendLogin l(user, std::move(creds), scram::make_nonce());
    for (int i = 0; i < 100; ++i) {
        auto m = read_message(fd);
        if (!m) {
            out.last = LoginStep{LoginStep::Kind::Fail, {}, "", "connection closed"};
            break;
        }
        out.last = l.on_message(m->first, span_of(m->second));
        if (out.last.kind == LoginStep::Kind::Send && !out.last.bytes.empty()) REQUIRE(send_all(fd, out.last.bytes));
        if (out.last.kind != LoginStep::Kind::Send) break;
    }
    if (out.last.kind == LoginStep::Kind::Done) {
        CHECK(l.backend_key());
        bool saw_version = false;
        for (const auto& [k, v] : l.parameters()) saw_version = saw_version || k == "server_version";
        CHECK(saw_version);
        REQUIRE(send_all(fd, query_message("SELECT current_user")));
        for (int i = 0; i < 10; ++i) {
            auto m = read_message(fd);
            if (!m || m->first == 'Z') break;
            if (m->first == 'D') {  // DataRow: int16 count, int32 length, value
                const uint32_t n = read_u32(reinterpret_cast<const uint8_t*>(m->second.data() + 2));
                out.current_user = m->second.substr(6, n);
            }
        }
    }
    ::close(fd);
    return out;
}

std::string rolpassword(const std::string& role) {
    PgConn c = pg_connect(PgCluster::shared().direct(PgCluster::shared().primary()));
    REQUIRE(c.ok());
    return query_value(c.conn, "SELECT rolpassword FROM pg_authid WHERE rolname = '" + role + "'");
}

// What the AuthServer learnt; read only after it is destroyed (its thread joined).
struct Learnt {
    std::optional<crypto::Digest> key;
    std::string user, error;
};

// A one-connection server speaking FrontendAuth to whoever connects (libpq),
// then AuthenticationOk, BackendKeyData and ReadyForQuery, then waits for the
// client to leave.
class AuthServer {
public:
    AuthServer(std::optional<auth::Secret> secret, Learnt& out) : out_(out) {
        listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
        const int one = 1;
        ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        socklen_t len = sizeof a;
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
        port_ = ntohs(a.sin_port);
        REQUIRE(::listen(listen_fd_, 4) == 0);
        thread_ = std::thread([this, secret] { serve(secret); });
    }
    ~AuthServer() {
        ::shutdown(listen_fd_, SHUT_RDWR);
        if (thread_.joinable()) thread_.join();
        ::close(listen_fd_);
    }
    uint16_t port() const { return port_; }

private:
    void serve(std::optional<auth::Secret> secret) {
        const int fd = ::accept(listen_fd_, nullptr, nullptr);
        if (fd < 0) return;
        timeval tv{10, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char lenb[4];
        if (!read_exact(fd, lenb, 4)) return (void)::close(fd);
        const uint32_t len = read_u32(reinterpret_cast<uint8_t*>(lenb));
        std::string startup(len - 4, '\0');
        if (len < 8 || len > 10000 || !read_exact(fd, startup.data(), startup.size())) return (void)::close(fd);
        // protocol version, then key\0value\0 pairs.
        for (size_t at = 4; at < startup.size();) {
            const std::string k = startup.c_str() + at;
            at += k.size() + 1;
            if (k.empty() || at >= startup.size()) break;
            const std::string v = startup.c_str() + at;
            at += v.size() + 1;
            if (k == "user") out_.user = v;
        }
        FrontendAuth::Options o;
        o.mock_key = "integration mock key";
        o.server_nonce = scram::make_nonce();
        o.md5_salt = {9, 8, 7, 6};
        FrontendAuth a(out_.user, out_.user == "ghost" ? std::nullopt : secret, o);
        LoginStep s = a.start();
        while (s.kind == LoginStep::Kind::Send) {
            if (!send_all(fd, s.bytes)) break;
            auto m = read_message(fd);
            if (!m) break;
            s = a.on_message(m->first, span_of(m->second));
        }
        if (s.kind == LoginStep::Kind::Done) {
            out_.key = a.client_key();
            encode_backend_key_data(s.bytes, CancelKey{4242, std::string("\0\0\x04\xd2", 4)});
            s.bytes += std::string("Z\0\0\0\5I", 6);
        } else {
            out_.error = s.error;
        }
        send_all(fd, s.bytes);
        char buf[256];
        while (::recv(fd, buf, sizeof buf, 0) > 0) {
        }  // until the client leaves
        ::close(fd);
    }

    Learnt& out_;
    int listen_fd_ = -1;
    uint16_t port_ = 0;
    std::thread thread_;
};

}  // namespace

TEST_CASE("BackendLogin logs into PostgreSQL 15 with a password (SCRAM) and a stored md5 hash", "[login]") {
    auto& cluster = PgCluster::shared();
    const uint16_t port = cluster.primary().port;
    auto scram = login_to(port, "scramuser", {std::string("scrampass"), {}, {}, {}});
    INFO(scram.last.sqlstate << " " << scram.last.error);
    CHECK(scram.last.kind == LoginStep::Kind::Done);
    CHECK(scram.current_user == "scramuser");
    const std::string md5 = rolpassword("md5user");
    REQUIRE(md5.rfind("md5", 0) == 0);
    auto hashed = login_to(port, "md5user", {{}, md5, {}, {}});
    INFO(hashed.last.error);
    CHECK(hashed.last.kind == LoginStep::Kind::Done);
    CHECK(hashed.current_user == "md5user");
    // PostgreSQL's own refusal comes back with its SQLSTATE.
    auto wrong = login_to(port, "scramuser", {std::string("wrong"), {}, {}, {}});
    CHECK(wrong.last.kind == LoginStep::Kind::Fail);
    CHECK(wrong.last.sqlstate == "28P01");
}

TEST_CASE("a libpq client's SCRAM proof gives pgrelay the ClientKey that logs into PostgreSQL (pass-through)",
          "[login]") {
    auto& cluster = PgCluster::shared();
    const std::string stored = rolpassword("scramuser");
    auto secret = auth::parse_secret(stored);
    REQUIRE(secret);
    REQUIRE(secret->kind == auth::Secret::Kind::Scram);
    Learnt learnt;
    {
        AuthServer server(secret, learnt);
        PgConn app = pg_connect("host=127.0.0.1 port=" + std::to_string(server.port()) +
                                " user=scramuser password=scrampass dbname=postgres sslmode=disable gssencmode=disable "
                                "connect_timeout=10");
        INFO(app.error);
        REQUIRE(app.ok());  // libpq accepted pgrelay's SCRAM server signature
    }
    const auto key = learnt.key;
    REQUIRE(key);
    // No password from here on: PostgreSQL's secret and the client's key.
    for (const auto& node : cluster.nodes()) {
        auto l = login_to(node.port, "scramuser", {{}, {}, secret->scram, key});
        INFO(node.name << ": " << l.last.error);
        CHECK(l.last.kind == LoginStep::Kind::Done);
        CHECK(l.current_user == "scramuser");
    }
}

TEST_CASE("libpq sees 28P01 with the same message for a wrong password and an unknown user", "[login]") {
    auto secret = auth::parse_secret(rolpassword("scramuser"));
    std::string wrong_error, ghost_error;
    Learnt l1, l2;
    {
        AuthServer server(secret, l1);
        PgConn app = pg_connect("host=127.0.0.1 port=" + std::to_string(server.port()) +
                                " user=scramuser password=nope dbname=postgres sslmode=disable gssencmode=disable");
        CHECK_FALSE(app.ok());
        CHECK(app.sqlstate == "28P01");
        wrong_error = app.error;
    }
    {
        AuthServer server(secret, l2);
        PgConn app = pg_connect("host=127.0.0.1 port=" + std::to_string(server.port()) +
                                " user=ghost password=nope dbname=postgres sslmode=disable gssencmode=disable");
        CHECK_FALSE(app.ok());
        CHECK(app.sqlstate == "28P01");
        ghost_error = app.error;
    }
    CHECK_THAT(wrong_error, Catch::Contains("password authentication failed for user \"scramuser\""));
    CHECK_THAT(ghost_error, Catch::Contains("password authentication failed for user \"ghost\""));
    CHECK_FALSE(l1.key);
    CHECK_FALSE(l2.key);
}

TEST_CASE("after ALTER ROLE ... PASSWORD, the old ClientKey is refused before any proof is sent", "[login]") {
    auto& cluster = PgCluster::shared();
    PgConn admin = pg_connect(cluster.direct(cluster.primary()));
    REQUIRE(admin.ok());
    exec(admin.conn, "DROP ROLE IF EXISTS login_rotation; SET password_encryption = 'scram-sha-256'; "
                     "CREATE ROLE login_rotation LOGIN PASSWORD 'first'");
    auto secret = auth::parse_secret(rolpassword("login_rotation"));
    REQUIRE(secret);
    Learnt learnt;
    {
        AuthServer server(secret, learnt);
        PgConn app = pg_connect("host=127.0.0.1 port=" + std::to_string(server.port()) +
                                " user=login_rotation password=first dbname=postgres sslmode=disable gssencmode=disable");
        REQUIRE(app.ok());
    }
    const auto key = learnt.key;
    REQUIRE(key);
    CHECK(login_to(cluster.primary().port, "login_rotation", {{}, {}, secret->scram, key}).last.kind ==
          LoginStep::Kind::Done);
    exec(admin.conn, "ALTER ROLE login_rotation PASSWORD 'second'");
    auto stale = login_to(cluster.primary().port, "login_rotation", {{}, {}, secret->scram, key});
    CHECK(stale.last.kind == LoginStep::Kind::Fail);
    CHECK_THAT(stale.last.error, Catch::Contains("was the password changed?"));
    exec(admin.conn, "DROP ROLE login_rotation");
}
