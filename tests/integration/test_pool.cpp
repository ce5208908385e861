// Integration tests of the pooled ports (pool_mode = "transaction" and
// "session"): pgrelay authenticates clients itself (auth_file, auth_query as
// auth_user) and lends them server connections from a pool per (member,
// database, user). A real PostgreSQL 15 cluster, real pgrelays, real clients
// (libpq, pgbench, psycopg2, pgJDBC, node-postgres, raw SCRAM by hand).
// Assertions are on what clients and PostgreSQL see: rows, backend pids,
// SQLSTATEs, pg_stat_activity. The pgrelays are shared between cases (one
// per pool configuration, started on first use) to keep the suite short.
#include <arpa/inet.h>
#include <signal.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <regex>
#include <set>
#include <thread>

#include "checks.hpp"
#include "fixtures.hpp"

using namespace pgrelay::test;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr int kMainPoolSize = 20;
constexpr const char* kFailedLogins = "pgrelay_pool_logins_total{port=\"rw\",outcome=\"failed\"}";

// Users made for these cases (SCRAM passwords), each with pools of its own so
// pg_stat_activity counts per user are clean.
const std::vector<std::pair<std::string, std::string>> kPoolUsers = {
    {"pool_bench", "benchpass"}, {"pool_drivers", "driverspass"}, {"pool_iso", "isopass"},
    {"pool_wait", "waitpass"},   {"pool_life", "lifepass"},       {"pool_kill", "killpass"},
    {"pool_sess", "sesspass"},   {"pool_lost", "lostpass"},   {"pool_admin", "adminpass"},
};
std::string password_of(const std::string& user) {
    for (const auto& [u, p] : kPoolUsers)
        if (u == user) return p;
    throw std::runtime_error("no pool test user " + user);
}

void raise_nofile(rlim_t want) {
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want) return;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY ? want : std::min(want, rl.rlim_max);
    setrlimit(RLIMIT_NOFILE, &rl);
}

std::string sql_literal(const std::string& s) {
    std::string out = "'";
    for (char c : s) {
        if (c == '\'') out += '\'';
        out += c;
    }
    return out + "'";
}

// ------------------------------------------------------------ bounded libpq

// The outcome of one query sent with PQsend*: the first error if any result
// was one, else the first result.
struct Outcome {
    bool finished = false;  // every result arrived within the timeout
    ExecStatusType status = PGRES_EMPTY_QUERY;
    std::string sqlstate, severity, message;
    std::vector<std::string> row;  // first row of that result
    bool ok() const { return finished && (status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK); }
    std::string describe() const {
        if (!finished) return "no answer within the timeout";
        return std::string(PQresStatus(status)) + " " + sqlstate + " " + message;
    }
};

Outcome await_results(PGconn* c, milliseconds timeout) {
    Outcome o;
    bool have = false;
    const auto deadline = Clock::now() + timeout;
    for (;;) {
        while (PQisBusy(c)) {
            const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
            if (left <= 0) return o;
            pollfd p{PQsocket(c), POLLIN, 0};
            ::poll(&p, 1, static_cast<int>(std::min<long>(left, 100)));
            if (!PQconsumeInput(c)) break;
        }
        PGresult* r = PQgetResult(c);
        if (!r) {
            o.finished = true;
            return o;
        }
        const ExecStatusType st = PQresultStatus(r);
        const bool is_error = st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE;
        if (!have || (is_error && o.sqlstate.empty() && o.status != PGRES_FATAL_ERROR)) {
            have = true;
            o.status = st;
            const char* code = PQresultErrorField(r, PG_DIAG_SQLSTATE);
            const char* sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
            o.sqlstate = code ? code : "";
            o.severity = sev ? sev : "";
            o.message = PQresultErrorMessage(r);
            o.row.clear();
            if (st == PGRES_TUPLES_OK && PQntuples(r) > 0)
                for (int i = 0; i < PQnfields(r); ++i) o.row.emplace_back(PQgetvalue(r, 0, i));
        }
        PQclear(r);
    }
}

Outcome sent_or_error(PGconn* c, int sent, milliseconds timeout) {
    if (sent) return await_results(c, timeout);
    Outcome o;
    o.finished = true;
    o.status = PGRES_FATAL_ERROR;
    o.message = PQerrorMessage(c);
    return o;
}

Outcome run(PGconn* c, const std::string& sql, milliseconds timeout = 30s) {
    return sent_or_error(c, PQsendQuery(c, sql.c_str()), timeout);
}

// The first value of a query's first row; throws with the SQLSTATE on an error
// or when there is no answer within the timeout.
std::string value(PGconn* c, const std::string& sql, milliseconds timeout = 30s) {
    const Outcome o = run(c, sql, timeout);
    if (!o.ok()) throw std::runtime_error(sql + ": " + o.describe());
    return o.row.empty() ? "" : o.row[0];
}

Outcome prepare(PGconn* c, const std::string& name, const std::string& sql) {
    return sent_or_error(c, PQsendPrepare(c, name.c_str(), sql.c_str(), 0, nullptr), 30s);
}
Outcome describe_prepared(PGconn* c, const std::string& name) {
    return sent_or_error(c, PQsendDescribePrepared(c, name.c_str()), 30s);
}
Outcome exec_prepared(PGconn* c, const std::string& name, const std::string& arg) {
    const char* values[1] = {arg.c_str()};
    return sent_or_error(c, PQsendQueryPrepared(c, name.c_str(), 1, values, nullptr, nullptr, 0), 30s);
}
Outcome exec_params(PGconn* c, const std::string& sql, const std::string& arg, milliseconds timeout = 30s) {
    const char* values[1] = {arg.c_str()};
    return sent_or_error(c, PQsendQueryParams(c, sql.c_str(), 1, nullptr, values, nullptr, nullptr, 0), timeout);
}

// --------------------------------------------------------------- the cluster

PgConn direct_primary() {
    auto& c = PgCluster::shared();
    return pg_connect(c.direct(c.primary()));
}

// SQL straight on the primary as postgres; throws on failure.
std::string admin_value(const std::string& sql) {
    PgConn c = direct_primary();
    if (!c.ok()) throw std::runtime_error("cannot reach the primary: " + c.error);
    return value(c.conn, sql);
}

void ensure_role(const std::string& name, const std::string& password) {
    admin_value("SET password_encryption = 'scram-sha-256'; DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '" +
                name + "') THEN CREATE ROLE " + name + " LOGIN; END IF; END$$; ALTER ROLE " + name +
                " LOGIN PASSWORD " + sql_literal(password));
}

int backends_of(PGconn* watch, const std::string& user) {
    return std::stoi(value(watch, "SELECT count(*) FROM pg_stat_activity WHERE usename = '" + user +
                                      "' AND backend_type = 'client backend'"));
}

// ----------------------------------------------------------- shared pgrelays

// One pgrelay per pool configuration, each started the first time a case
// needs it and stopped at exit (before the cluster: constructed after it).
class PoolRelays {
public:
    PoolRelays() : cluster_(PgCluster::shared()), dir_("pgrelay-pool-test") {
        raise_nofile(8192);  // 1000 clients: pgrelay inherits the limit at fork
        for (const auto& [u, p] : kPoolUsers) ensure_role(u, p);
        admin_value("GRANT CREATE ON SCHEMA public TO pool_drivers");
        // auth_user's own secret (plain text), for the relays that run auth_query.
        query_users_ = dir_.path() + "/auth_query_users.txt";
        std::ofstream(query_users_) << "\"postgres\" \"postgres\"\n";
        // Secrets exactly as pg_authid stores them: a SCRAM verifier (no
        // password anywhere: pgrelay logs in with the client's recovered
        // ClientKey) and an md5 hash.
        file_users_ = dir_.path() + "/auth_file_users.txt";
        std::ofstream(file_users_) << "\"scramuser\" \"" << admin_value("SELECT rolpassword FROM pg_authid WHERE rolname = 'scramuser'")
                                   << "\"\n\"md5user\" \"" << admin_value("SELECT rolpassword FROM pg_authid WHERE rolname = 'md5user'")
                                   << "\"\n";
    }
    const std::string& file_users() const { return file_users_; }

    // Transaction mode, pool_size 20, secrets through auth_query.
    Pgrelay& main() {
        return start(main_, pool_toml("transaction", 20, "query_wait_timeout = \"30s\"\nadmin_users = [\"pool_admin\"]\n"));
    }
    // Transaction mode, secrets from auth_file only (no auth_user).
    Pgrelay& file() {
        return start(file_, "[pool]\npool_mode = \"transaction\"\npool_size = 5\nauth_file = \"" + file_users_ + "\"\n");
    }
    Pgrelay& one() { return start(one_, pool_toml("transaction", 1, "query_wait_timeout = \"2s\"\n")); }
    Pgrelay& two() { return start(two_, pool_toml("transaction", 2, "query_wait_timeout = \"60s\"\n")); }
    Pgrelay& life() { return start(life_, pool_toml("transaction", 4, "server_lifetime = \"2s\"\n")); }
    Pgrelay& session() { return start(sess_, pool_toml("session", 2, "query_wait_timeout = \"10s\"\n")); }
    PgCluster& cluster() { return cluster_; }

private:
    std::string pool_toml(const std::string& mode, int size, const std::string& extra) const {
        return "[pool]\npool_mode = \"" + mode + "\"\npool_size = " + std::to_string(size) + "\nauth_user = \"postgres\"\n" +
               "auth_file = \"" + query_users_ + "\"\n" + extra;
    }
    Pgrelay& start(std::unique_ptr<Pgrelay>& slot, const std::string& toml) {
        if (!slot) slot = std::make_unique<Pgrelay>(cluster_, PgrelayOptions{.extra_sections = toml});
        return *slot;
    }
    PgCluster& cluster_;
    TempDir dir_;
    std::string query_users_, file_users_;
    std::unique_ptr<Pgrelay> main_, file_, one_, two_, life_, sess_;
};

PoolRelays& relays() {
    static PoolRelays r;
    return r;
}

PgConn login(const Pgrelay& relay, const std::string& user, const std::string& password) {
    return pg_connect(relay.conninfo(relay.rw_port(), user, password));
}
PgConn login(const Pgrelay& relay, const std::string& user) { return login(relay, user, password_of(user)); }

// A shell command in the background while pg_stat_activity on the primary is
// sampled for `user`'s backends.
struct Watched {
    int rc = -1;
    std::string out;
    int samples = 0, most = 0;
};
Watched run_watching(const std::string& cmd, const std::string& user) {
    PgConn watch = direct_primary();
    if (!watch.ok()) throw std::runtime_error("cannot reach the primary: " + watch.error);
    auto job = std::async(std::launch::async, [cmd] {
        std::string out;
        const int rc = run_command(cmd, &out);
        return std::make_pair(rc, out);
    });
    Watched w;
    while (job.wait_for(150ms) != std::future_status::ready) {
        w.most = std::max(w.most, backends_of(watch.conn, user));
        ++w.samples;
    }
    std::tie(w.rc, w.out) = job.get();
    return w;
}

// ------------------------------------------------------------- raw protocol

std::string be32(uint32_t v) {
    std::string s;
    for (int i = 3; i >= 0; --i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    return s;
}
uint32_t get32(const std::string& s, size_t at) {
    return (uint32_t(uint8_t(s[at])) << 24) | (uint32_t(uint8_t(s[at + 1])) << 16) | (uint32_t(uint8_t(s[at + 2])) << 8) |
           uint32_t(uint8_t(s[at + 3]));
}
std::string message(char type, const std::string& body) {
    return std::string(1, type) + be32(static_cast<uint32_t>(body.size() + 4)) + body;
}
// SASLInitialResponse: mechanism, int32 length of the data (as given), data.
std::string sasl_initial(const std::string& mechanism, const std::string& data, std::optional<uint32_t> claimed = {}) {
    return message('p', mechanism + std::string(1, '\0') + be32(claimed.value_or(static_cast<uint32_t>(data.size()))) + data);
}

// A blocking-free client socket with EOF detection and bounded reads.
class Wire {
public:
    explicit Wire(uint16_t port) {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(port);
        if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
            ::close(fd_);
            fd_ = -1;
        }
    }
    ~Wire() {
        if (fd_ >= 0) ::close(fd_);
    }
    Wire(const Wire&) = delete;
    Wire& operator=(const Wire&) = delete;
    bool connected() const { return fd_ >= 0; }
    bool send(const std::string& b) {
        size_t off = 0;
        while (off < b.size()) {
            const ssize_t n = ::send(fd_, b.data() + off, b.size() - off, MSG_NOSIGNAL);
            if (n <= 0) return false;
            off += size_t(n);
        }
        return true;
    }
    // The next whole backend message (type, body); nullopt on EOF or timeout.
    std::optional<std::pair<char, std::string>> next(milliseconds timeout) {
        const auto deadline = Clock::now() + timeout;
        for (;;) {
            if (buf_.size() >= 5) {
                const uint32_t len = get32(buf_, 1);
                if (len >= 4 && buf_.size() >= size_t(len) + 1) {
                    auto m = std::make_pair(buf_[0], buf_.substr(5, len - 4));
                    buf_.erase(0, size_t(len) + 1);
                    return m;
                }
            }
            if (!fill(deadline)) return std::nullopt;
        }
    }
    // Messages up to and including the first ErrorResponse, decoded.
    std::optional<ErrorInfo> next_error(milliseconds timeout) {
        const auto deadline = Clock::now() + timeout;
        while (auto m = next(std::chrono::duration_cast<milliseconds>(deadline - Clock::now())))
            if (m->first == 'E') return first_error(message('E', m->second));
        return std::nullopt;
    }
    // True when the peer closes (EOF or reset) within the timeout.
    bool closed_within(milliseconds timeout) {
        const auto deadline = Clock::now() + timeout;
        while (!eof_)
            if (!fill(deadline)) break;
        return eof_;
    }

private:
    bool fill(Clock::time_point deadline) {
        if (fd_ < 0 || eof_) return false;
        const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
        if (left <= 0) return false;
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(left)) <= 0) return false;
        char chunk[4096];
        const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
        if (n <= 0) {
            eof_ = true;
            return false;
        }
        buf_.append(chunk, size_t(n));
        return true;
    }
    int fd_ = -1;
    std::string buf_;
    bool eof_ = false;
};

// SCRAM-SHA-256 (RFC 5802, RFC 7677) computed here with OpenSSL, to send
// correct and broken client messages by hand.
std::string b64(const std::string& in) {
    std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
    const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                  reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
    out.resize(size_t(n));
    return out;
}
std::string hmac256(const std::string& key, const std::string& data) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()),
         data.size(), md, &len);
    return std::string(reinterpret_cast<char*>(md), len);
}
std::string sha256(const std::string& data) {
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), md);
    return std::string(reinterpret_cast<char*>(md), sizeof md);
}
std::string unb64(const std::string& in) {
    std::string out(in.size(), '\0');
    const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                  reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
    if (n < 0) return "";
    size_t len = size_t(n);
    for (size_t i = in.size(); i > 0 && in[i - 1] == '=' && len > 0; --i) --len;  // padding decodes to zeros
    out.resize(len);
    return out;
}

struct Scram {
    std::unique_ptr<Wire> wire;
    std::string client_first_bare, server_first, nonce, salt;  // nonce: the combined one of server-first
    int iterations = 0;
    std::string error;  // set when the exchange did not get to server-first

    std::string final_without_proof(const std::string& nonce_used) const { return "c=biws,r=" + nonce_used; }
    std::string proof(const std::string& password, const std::string& final_wo) const {
        const std::string auth = client_first_bare + "," + server_first + "," + final_wo;
        const std::string client_key = hmac256(salted(password), "Client Key");
        const std::string signature = hmac256(sha256(client_key), auth);
        std::string p = client_key;
        for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<char>(p[i] ^ signature[i]);
        return p;
    }
    std::string server_signature(const std::string& password, const std::string& final_wo) const {
        const std::string auth = client_first_bare + "," + server_first + "," + final_wo;
        return hmac256(hmac256(salted(password), "Server Key"), auth);
    }
    std::string client_final(const std::string& password) const {
        const std::string wo = final_without_proof(nonce);
        return wo + ",p=" + b64(proof(password, wo));
    }

private:
    std::string salted(const std::string& password) const {
        unsigned char out[32];
        PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()),
                          reinterpret_cast<const unsigned char*>(salt.data()), static_cast<int>(salt.size()), iterations,
                          EVP_sha256(), sizeof out, out);
        return std::string(reinterpret_cast<char*>(out), sizeof out);
    }
};

// Startup, AuthenticationSASL, client-first, up to AuthenticationSASLContinue.
Scram scram_start(uint16_t port, const std::string& user, const std::string& client_nonce) {
    Scram s;
    s.wire = std::make_unique<Wire>(port);
    if (!s.wire->connected()) {
        s.error = "cannot connect";
        return s;
    }
    s.wire->send(startup_message({{"user", user}, {"database", "postgres"}}));
    auto m = s.wire->next(10s);
    if (!m || m->first != 'R' || m->second.size() < 4 || get32(m->second, 0) != 10 ||
        m->second.find(std::string("SCRAM-SHA-256") + '\0') == std::string::npos) {
        s.error = "expected AuthenticationSASL offering SCRAM-SHA-256";
        return s;
    }
    s.client_first_bare = "n=,r=" + client_nonce;
    s.wire->send(sasl_initial("SCRAM-SHA-256", "n,," + s.client_first_bare));
    m = s.wire->next(10s);
    if (!m || m->first != 'R' || m->second.size() < 4 || get32(m->second, 0) != 11) {
        s.error = "expected AuthenticationSASLContinue";
        return s;
    }
    s.server_first = m->second.substr(4);
    size_t at = 0;
    while (at <= s.server_first.size()) {
        const size_t comma = std::min(s.server_first.find(',', at), s.server_first.size());
        const std::string attr = s.server_first.substr(at, comma - at);
        if (attr.rfind("r=", 0) == 0) s.nonce = attr.substr(2);
        else if (attr.rfind("s=", 0) == 0) s.salt = unb64(attr.substr(2));
        else if (attr.rfind("i=", 0) == 0) s.iterations = std::atoi(attr.c_str() + 2);
        at = comma + 1;
    }
    if (s.nonce.rfind(client_nonce, 0) != 0 || s.nonce.size() <= client_nonce.size() || s.salt.empty() || s.iterations <= 0)
        s.error = "malformed server-first-message: " + s.server_first;
    return s;
}

// ------------------------------------------------------------ client state

std::string param(PGconn* c, const char* name) {
    const char* v = PQparameterStatus(c, name);
    return v ? v : "(not reported)";
}

void set_up_client_a(PGconn* a) {
    REQUIRE(run(a, "SET search_path TO s_a, public").ok());
    REQUIRE(run(a, "SET TimeZone TO 'Asia/Tokyo'").ok());
    REQUIRE(run(a, "SET application_name TO 'client_a'").ok());
    const Outcome p = prepare(a, "s1", "SELECT $1::int * 2");
    INFO(p.describe());
    REQUIRE(p.ok());
}

// Everything A set, wherever its statements run now.
void check_client_a(PGconn* a) {
    CHECK(value(a, "SHOW search_path") == "s_a, public");
    CHECK(value(a, "SHOW TimeZone") == "Asia/Tokyo");
    CHECK(value(a, "SHOW application_name") == "client_a");
    CHECK(param(a, "application_name") == "client_a");
    CHECK(param(a, "TimeZone") == "Asia/Tokyo");
    const Outcome e = exec_prepared(a, "s1", "21");
    INFO(e.describe());
    CHECK(e.ok());
    CHECK(e.row == std::vector<std::string>{"42"});
}

// None of A's state, on whichever server this client runs. Inside a
// transaction the failing Describe is wrapped in a savepoint.
void check_defaults(PGconn* b, const std::string& default_tz) {
    CHECK(value(b, "SHOW search_path") == "\"$user\", public");
    CHECK(value(b, "SHOW TimeZone") == default_tz);
    CHECK(value(b, "SHOW application_name") == "");
    CHECK(param(b, "application_name") == "");
    CHECK(param(b, "TimeZone") == default_tz);
    const bool in_tx = PQtransactionStatus(b) == PQTRANS_INTRANS;
    if (in_tx) REQUIRE(run(b, "SAVEPOINT before_describe").ok());
    const Outcome d = describe_prepared(b, "s1");
    CHECK(d.finished);
    CHECK(d.status == PGRES_FATAL_ERROR);
    CHECK(d.sqlstate == "26000");  // invalid_sql_statement_name: A's s1 is not B's
    if (in_tx) REQUIRE(run(b, "ROLLBACK TO SAVEPOINT before_describe").ok());
}

}  // namespace

TEST_CASE("transaction pool: 1000 clients and pgbench -c 200 (simple, extended, prepared) over pool_size 20", "[pool]") {
    raise_nofile(8192);
    auto& cluster = relays().cluster();
    Pgrelay& relay = relays().main();
    const std::string user = "pool_bench";

    // 1000 clients logged in at once, in 4 threads.
    constexpr int kClients = 1000;
    std::vector<PgConn> conns(kClients);
    std::mutex mu;
    std::vector<std::string> login_errors;
    {
        std::vector<std::thread> threads;
        for (int t = 0; t < 4; ++t)
            threads.emplace_back([&, t] {
                for (int i = t; i < kClients; i += 4) {
                    conns[size_t(i)] = login(relay, user);
                    if (!conns[size_t(i)].ok()) {
                        std::lock_guard<std::mutex> g(mu);
                        login_errors.push_back(conns[size_t(i)].error);
                    }
                }
            });
        for (auto& t : threads) t.join();
    }
    INFO("first login error: " << (login_errors.empty() ? "" : login_errors.front()));
    REQUIRE(login_errors.empty());

    // Every one sends a query before any answer is read: 1000 waiting for 20 servers.
    for (int i = 0; i < kClients; ++i)
        REQUIRE(PQsendQuery(conns[size_t(i)].conn, ("SELECT pg_backend_pid(), " + std::to_string(i)).c_str()) == 1);
    std::set<std::string> pids;
    int answered = 0;
    std::string first_failure;
    const auto deadline = Clock::now() + 90s;
    for (int i = 0; i < kClients; ++i) {
        const auto left = std::max(milliseconds(1), std::chrono::duration_cast<milliseconds>(deadline - Clock::now()));
        const Outcome o = await_results(conns[size_t(i)].conn, left);
        if (o.ok() && o.row.size() == 2 && o.row[1] == std::to_string(i)) {
            ++answered;
            pids.insert(o.row[0]);
        } else if (first_failure.empty()) {
            first_failure = "client " + std::to_string(i) + ": " + o.describe();
        }
    }
    INFO(first_failure);
    CHECK(answered == kClients);
    CHECK(pids.size() >= 1);
    CHECK(pids.size() <= size_t(kMainPoolSize));  // 1000 clients, at most pool_size servers
    WARN(kClients << " clients answered by " << pids.size() << " server connections");
    conns.clear();

    // pgbench: tables made directly on the primary, runs through pgrelay.
    std::string out;
    const std::string init = "PGPASSWORD=postgres timeout 120 pgbench -i -q -s 1 -h 127.0.0.1 -p " +
                             std::to_string(cluster.primary().port) + " -U postgres postgres";
    const int init_rc = run_command(init, &out);
    INFO(out);
    REQUIRE(init_rc == 0);
    admin_value("GRANT SELECT, INSERT, UPDATE, DELETE ON pgbench_accounts, pgbench_branches, pgbench_tellers, "
                "pgbench_history TO pool_bench");
    const std::regex failed_re(R"(number of failed transactions: (\d+))");
    const std::regex processed_re(R"(number of transactions actually processed: (\d+))");
    for (const char* mode : {"simple", "extended", "prepared"}) {
        INFO("pgbench -M " << mode);
        const Watched w = run_watching("PGPASSWORD=" + password_of(user) + " timeout 120 pgbench -n -c 200 -j 2 -T 5 -M " +
                                           mode + " -h 127.0.0.1 -p " + std::to_string(relay.rw_port()) + " -U " + user +
                                           " postgres",
                                       user);
        INFO(w.out);
        CHECK(w.rc == 0);
        std::smatch failed, processed;
        REQUIRE(std::regex_search(w.out, failed, failed_re));
        REQUIRE(std::regex_search(w.out, processed, processed_re));
        CHECK(std::stol(failed[1]) == 0);
        CHECK(std::stol(processed[1]) > 0);
        // PostgreSQL never saw more than pool_size backends of this user.
        CHECK(w.samples >= 5);
        CHECK(w.most >= 1);
        CHECK(w.most <= kMainPoolSize);
        WARN("pgbench -c 200 -M " << mode << ": " << processed[1] << " transactions, at most " << w.most
                                  << " backends in " << w.samples << " samples");
    }
    CHECK(relay.running());
}

TEST_CASE("psycopg2, pgJDBC and node-postgres, 20 concurrent clients each, over pool_size 2", "[pool]") {
    Pgrelay& relay = relays().two();
    const std::string user = "pool_drivers";
    const std::string clients = source_dir() + "/tests/clients/";
    const std::string args =
        " 127.0.0.1 " + std::to_string(relay.rw_port()) + " " + user + " " + password_of(user) + " postgres --clients 20 --timeout 150";
    std::vector<std::pair<std::string, std::string>> programs = {
        {"psycopg2", "/usr/bin/python3 " + clients + "psycopg2_clients.py" + args},
        {"pgJDBC", "java -cp /usr/share/java/postgresql.jar " + clients + "JdbcClients.java" + args},
    };
    // node-postgres is installed next to the build tree; skip it (only it) when npm cannot get it.
    const std::string node_dir =
        (std::filesystem::path(PGRELAY_BINARY_PATH).parent_path().parent_path() / "tests" / "pool_node_clients").string();
    std::string setup;
    const int setup_rc = run_command(clients + "setup_node.sh " + node_dir, &setup);
    if (setup_rc == 77) {
        WARN("node-postgres client skipped: setup_node.sh cannot install pg:\n" << setup);
    } else {
        INFO(setup);
        REQUIRE(setup_rc == 0);
        programs.emplace_back("node-postgres", "env NODE_PATH=" + node_dir + "/node_modules node " + clients + "node_clients.js" + args);
    }
    for (const auto& [name, cmd] : programs) {
        INFO(name << ": " << cmd);
        const auto t0 = Clock::now();
        const Watched w = run_watching("timeout 200 " + cmd, user);
        INFO(w.out);
        CHECK(w.rc == 0);
        CHECK(w.most <= 2);  // 20 clients, never more than pool_size servers
        WARN(name << ": exit " << w.rc << " in " << std::chrono::duration<double>(Clock::now() - t0).count()
                  << " s, at most " << w.most << " backends");
    }
    CHECK(relay.running());
}

TEST_CASE("transaction pool isolation: SETs and prepared statements stay with their client across servers", "[pool]") {
    const std::string default_tz = admin_value("SHOW TimeZone");
    REQUIRE(default_tz != "Asia/Tokyo");
    const std::string user = "pool_iso";

    SECTION("pool_size 1: B runs on A's server and sees none of A's state") {
        Pgrelay& relay = relays().one();
        PgConn a = login(relay, user), b = login(relay, user);
        REQUIRE(a.ok());
        REQUIRE(b.ok());
        set_up_client_a(a.conn);
        const std::string server = value(a.conn, "SELECT pg_backend_pid()");
        CHECK(value(b.conn, "SELECT pg_backend_pid()") == server);  // the pool's only server
        check_defaults(b.conn, default_tz);
        CHECK(value(b.conn, "SELECT 1") == "1");  // B is fine after its failed Describe
        CHECK(value(b.conn, "SELECT pg_backend_pid()") == server);
        check_client_a(a.conn);
        CHECK(value(a.conn, "SELECT pg_backend_pid()") == server);
    }

    SECTION("pool_size 1: SETs through the extended protocol: one per Sync travels, two retire the server") {
        Pgrelay& relay = relays().one();
        PgConn a = login(relay, user), b = login(relay, user);
        REQUIRE(a.ok());
        REQUIRE(b.ok());
        const std::string default_path = value(b.conn, "SHOW search_path");
        // One SET, extended protocol (Parse/Bind/Execute/Sync): carried like a simple one.
        REQUIRE(sent_or_error(a.conn, PQsendQueryParams(a.conn, "SET work_mem = '3MB'", 0, nullptr, nullptr, nullptr, nullptr, 0),
                              10s).ok());
        const std::string server = value(a.conn, "SELECT pg_backend_pid()");
        CHECK(value(b.conn, "SELECT pg_backend_pid()") == server);
        CHECK(value(b.conn, "SHOW work_mem") != "3MB");
        CHECK(value(a.conn, "SHOW work_mem") == "3MB");
        // Two SETs before one Sync (a pipeline): the server keeps both, so it
        // is closed rather than lent to B; A keeps the first on its next server.
        REQUIRE(PQenterPipelineMode(a.conn) == 1);
        REQUIRE(PQsendQueryParams(a.conn, "SET search_path = pool_iso_x", 0, nullptr, nullptr, nullptr, nullptr, 0) == 1);
        REQUIRE(PQsendQueryParams(a.conn, "SET statement_timeout = '77s'", 0, nullptr, nullptr, nullptr, nullptr, 0) == 1);
        REQUIRE(PQpipelineSync(a.conn) == 1);
        for (int results = 0; results < 3;) {  // two commands, then the sync
            PGresult* r = PQgetResult(a.conn);
            if (!r) continue;  // between the pipeline's results
            const ExecStatusType st = PQresultStatus(r);
            INFO(PQresultErrorMessage(r));
            CHECK((st == PGRES_COMMAND_OK || st == PGRES_PIPELINE_SYNC));
            PQclear(r);
            ++results;
        }
        REQUIRE(PQexitPipelineMode(a.conn) == 1);
        const std::string next = value(b.conn, "SELECT pg_backend_pid()");
        CHECK(next != server);
        CHECK(value(b.conn, "SHOW search_path") == default_path);
        CHECK(value(b.conn, "SHOW statement_timeout") != "77s");
        CHECK(value(a.conn, "SHOW search_path") == "pool_iso_x");
        CHECK(value(a.conn, "SHOW work_mem") == "3MB");
    }
    SECTION("pool_size 1: SET ROLE travels with A and never reaches B; SET SESSION AUTHORIZATION is refused") {
        Pgrelay& relay = relays().one();
        PgConn a = login(relay, user), b = login(relay, user);
        REQUIRE(a.ok());
        REQUIRE(b.ok());
        admin_value("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pool_iso_role') THEN "
                    "CREATE ROLE pool_iso_role; END IF; END $$");
        admin_value("GRANT pool_iso_role TO " + user);
        REQUIRE(run(a.conn, "SET ROLE pool_iso_role").ok());
        CHECK(value(a.conn, "SELECT current_user") == "pool_iso_role");
        CHECK(value(b.conn, "SELECT current_user") == user);  // same server, B's own role
        CHECK(value(a.conn, "SELECT current_user") == "pool_iso_role");
        REQUIRE(run(a.conn, "RESET ROLE").ok());
        CHECK(value(a.conn, "SELECT current_user") == user);
        const Outcome refused = run(b.conn, "SET SESSION AUTHORIZATION " + user);
        CHECK_FALSE(refused.ok());
        CHECK(refused.sqlstate == "0A000");
        CHECK(value(b.conn, "SELECT session_user") == user);
    }

    SECTION("pool_size 2: A moves between servers while B holds one, and keeps everything") {
        Pgrelay& relay = relays().two();
        PgConn a = login(relay, user), b = login(relay, user), h = login(relay, user);
        REQUIRE(a.ok());
        REQUIRE(b.ok());
        REQUIRE(h.ok());
        // H holds one server (x), so A's state lands on the other (y).
        REQUIRE(run(h.conn, "BEGIN").ok());
        const std::string x = value(h.conn, "SELECT pg_backend_pid()");
        set_up_client_a(a.conn);
        const std::string y = value(a.conn, "SELECT pg_backend_pid()");
        REQUIRE(y != x);
        // B on y, A's server: none of A's state.
        CHECK(value(b.conn, "SELECT pg_backend_pid()") == y);
        check_defaults(b.conn, default_tz);
        // B holds y in a transaction; H lets x go: A must run on x now.
        REQUIRE(run(b.conn, "BEGIN").ok());
        CHECK(value(b.conn, "SELECT pg_backend_pid()") == y);
        REQUIRE(run(h.conn, "COMMIT").ok());
        CHECK(value(a.conn, "SELECT pg_backend_pid()") == x);
        check_client_a(a.conn);
        CHECK(value(a.conn, "SELECT pg_backend_pid()") == x);
        check_defaults(b.conn, default_tz);  // inside B's transaction on y
        CHECK(value(b.conn, "SELECT pg_backend_pid()") == y);
        REQUIRE(run(b.conn, "COMMIT").ok());
        // Both servers have had A's state now: H sees none of it on the one it
        // holds, A all of it on the other.
        REQUIRE(run(h.conn, "BEGIN").ok());
        const std::string held = value(h.conn, "SELECT pg_backend_pid()");
        check_defaults(h.conn, default_tz);
        CHECK(value(h.conn, "SELECT pg_backend_pid()") == held);
        check_client_a(a.conn);
        CHECK(value(a.conn, "SELECT pg_backend_pid()") != held);
        REQUIRE(run(h.conn, "COMMIT").ok());
        check_client_a(a.conn);
    }
}

TEST_CASE("pool auth: SCRAM and md5 via auth_query and auth_file, uniform 28P01, ALTER ROLE applies at once", "[pool]") {
    Pgrelay& by_query = relays().main();
    Pgrelay& by_file = relays().file();
    const double failed_query_before = std::max(0.0, by_query.metric(kFailedLogins));
    const double failed_file_before = std::max(0.0, by_file.metric(kFailedLogins));
    ensure_role("pool_alter", "alter-old");

    // The error text with the user name taken out.
    auto shape = [](std::string error, const std::string& user) {
        const std::string quoted = "\"" + user + "\"";
        for (size_t at; (at = error.find(quoted)) != std::string::npos;) error.replace(at, quoted.size(), "\"U\"");
        return error;
    };
    for (auto [relay, source] : {std::pair{&by_query, "auth_query"}, std::pair{&by_file, "auth_file"}}) {
        const std::string unknown_user = "pool_nosuchuser";
        PgConn unknown = login(*relay, unknown_user, "whatever");
        CHECK_FALSE(unknown.ok());
        CHECK(unknown.sqlstate == "28P01");
        CHECK_THAT(unknown.error, Catch::Contains("password authentication failed for user \"" + unknown_user + "\""));
        // An unknown user is asked for SCRAM like a real one: nothing tells it apart.
        {
            Scram s = scram_start(relay->rw_port(), unknown_user, "unknownusernonce0123456789");
            CHECK(s.error.empty());
        }
        for (auto [user, password, method] : {std::tuple{"scramuser", "scrampass", "SCRAM-SHA-256"},
                                              std::tuple{"md5user", "md5pass", "md5"}}) {
            INFO(source << ": " << user);
            PgConn ok = login(*relay, user, password);
            INFO(ok.error);
            REQUIRE(ok.ok());
            // pgrelay logged into PostgreSQL as this user (for scramuser via
            // auth_file: with the ClientKey from the client's proof, as the
            // file holds no password).
            CHECK(value(ok.conn, "SELECT current_user") == user);
            CHECK_THAT(relay->log(), Catch::Contains(std::string("user=") + user + " db=postgres logged in (" + method +
                                                     ", transaction mode, secret from " + source + ")"));
            PgConn bad = login(*relay, user, "wrong-password");
            CHECK_FALSE(bad.ok());
            CHECK(bad.sqlstate == "28P01");
            CHECK_THAT(bad.error, Catch::Contains(std::string("password authentication failed for user \"") + user + "\""));
            CHECK(shape(bad.error, user) == shape(unknown.error, unknown_user));
        }
    }
    // The auth_file relay has no auth_user: a user PostgreSQL knows but the file does not is refused.
    {
        PgConn not_in_file = login(by_file, "pool_alter", "alter-old");
        CHECK_FALSE(not_in_file.ok());
        CHECK(not_in_file.sqlstate == "28P01");
    }

    // ALTER ROLE ... PASSWORD: auth_query sees it at the next login.
    PgConn before = login(by_query, "pool_alter", "alter-old");
    REQUIRE(before.ok());
    REQUIRE(run(before.conn, "BEGIN").ok());  // holds the server logged in with the old key
    CHECK(value(before.conn, "SELECT current_user") == "pool_alter");
    admin_value("SET password_encryption = 'scram-sha-256'; ALTER ROLE pool_alter PASSWORD 'alter-new'");
    PgConn after = login(by_query, "pool_alter", "alter-new");
    INFO(after.error);
    REQUIRE(after.ok());
    // A server opened now, with the new password's key.
    CHECK(value(after.conn, "SELECT current_user") == "pool_alter");
    CHECK(value(after.conn, "SELECT pg_backend_pid()") != value(before.conn, "SELECT pg_backend_pid()"));
    PgConn old = login(by_query, "pool_alter", "alter-old");
    CHECK_FALSE(old.ok());
    CHECK(old.sqlstate == "28P01");
    CHECK(run(before.conn, "COMMIT").ok());
    CHECK(value(before.conn, "SELECT 1") == "1");

    // Failed logins counted: per relay, 1 unknown user + 2 wrong passwords; auth_query: + the old password;
    // auth_file: + the user not in the file.
    CHECK(by_query.metric(kFailedLogins) >= failed_query_before + 4);
    CHECK(by_file.metric(kFailedLogins) >= failed_file_before + 4);
}

TEST_CASE("query_wait_timeout: with the pool exhausted a query gets ERROR 53300, the connection stays usable", "[pool]") {
    Pgrelay& relay = relays().one();  // pool_size 1, query_wait_timeout 2s
    const std::string user = "pool_wait";
    PgConn a = login(relay, user), b = login(relay, user);
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    CHECK(value(b.conn, "SELECT 1") == "1");
    REQUIRE(run(a.conn, "BEGIN").ok());
    CHECK(value(a.conn, "SELECT 1") == "1");  // A holds the pool's only server

    for (const char* protocol : {"simple", "extended"}) {
        INFO(protocol << " query protocol");
        const auto t0 = Clock::now();
        const Outcome o = std::string(protocol) == "simple" ? run(b.conn, "SELECT 42", 20s)
                                                            : exec_params(b.conn, "SELECT $1::int", "42", 20s);
        const double waited = std::chrono::duration<double>(Clock::now() - t0).count();
        INFO(o.describe());
        REQUIRE(o.finished);
        CHECK(o.status == PGRES_FATAL_ERROR);
        CHECK(o.sqlstate == "53300");
        CHECK(o.severity == "ERROR");  // not FATAL: the session goes on
        CHECK(waited < 10.0);
        CHECK(PQstatus(b.conn) == CONNECTION_OK);
        CHECK(PQtransactionStatus(b.conn) == PQTRANS_IDLE);
        WARN(protocol << ": 53300 after " << waited << " s (query_wait_timeout 2s)");
    }
    REQUIRE(run(a.conn, "COMMIT").ok());
    CHECK(value(b.conn, "SELECT 42") == "42");
    const Outcome e = exec_params(b.conn, "SELECT $1::int", "43");
    CHECK(e.ok());
    CHECK(e.row == std::vector<std::string>{"43"});
    CHECK(value(a.conn, "SELECT 1") == "1");
}

TEST_CASE("waiting clients are served first in, first out", "[pool]") {
    Pgrelay& relay = relays().one();  // pool_size 1, query_wait_timeout 2s
    const std::string user = "pool_wait";
    PgConn a = login(relay, user);
    REQUIRE(a.ok());
    std::vector<PgConn> waiters;
    for (int i = 0; i < 4; ++i) {
        waiters.push_back(login(relay, user));
        REQUIRE(waiters.back().ok());
    }
    REQUIRE(run(a.conn, "BEGIN").ok());
    CHECK(value(a.conn, "SELECT 1") == "1");  // A holds the pool's only server
    // Queued one after the other while A holds it...
    for (size_t i = 0; i < waiters.size(); ++i) {
        REQUIRE(PQsendQuery(waiters[i].conn, ("SELECT " + std::to_string(i) + ", clock_timestamp()").c_str()) == 1);
        std::this_thread::sleep_for(100ms);  // ordering only, nothing is timed
    }
    REQUIRE(run(a.conn, "COMMIT").ok());
    // ... and run in that order once it is free.
    std::vector<std::string> ran_at;
    for (size_t i = 0; i < waiters.size(); ++i) {
        const Outcome o = await_results(waiters[i].conn, 20s);
        INFO(o.describe());
        REQUIRE(o.ok());
        REQUIRE(o.row.size() == 2);
        CHECK(o.row[0] == std::to_string(i));
        ran_at.push_back(o.row[1]);
    }
    for (size_t i = 1; i < ran_at.size(); ++i) {
        INFO(ran_at[i - 1] << " then " << ran_at[i]);
        CHECK(ran_at[i - 1] < ran_at[i]);  // same format and time zone: text order is time order
    }
}

TEST_CASE("server_lifetime 2s: a client's backend changes between transactions, with no error", "[pool]") {
    Pgrelay& relay = relays().life();
    const std::string user = "pool_life";
    PgConn c = login(relay, user);
    REQUIRE(c.ok());
    REQUIRE(run(c.conn, "SET search_path TO s_life, public").ok());
    const std::string first = value(c.conn, "SELECT pg_backend_pid()");
    const auto t0 = Clock::now();
    std::string now_pid = first;
    int transactions = 0;
    std::string error;
    // Transactions every 100 ms for at least 3.5 s, until the backend changed (at most 15 s).
    while (Clock::now() - t0 < 15s && (Clock::now() - t0 < 3500ms || now_pid == first)) {
        try {
            value(c.conn, "BEGIN");
            const std::string pid = value(c.conn, "SELECT pg_backend_pid()");
            CHECK(value(c.conn, "SELECT pg_backend_pid()") == pid);  // fixed within a transaction
            value(c.conn, "COMMIT");
            now_pid = pid;
            ++transactions;
        } catch (const std::exception& e) {
            error = e.what();
            break;
        }
        std::this_thread::sleep_for(100ms);
    }
    INFO(error);
    CHECK(error.empty());
    CHECK(now_pid != first);
    CHECK(value(c.conn, "SHOW search_path") == "s_life, public");  // the client's SET followed it
    WARN(transactions << " transactions; backend " << first << " replaced by " << now_pid);
    // The old backend was closed, not just left idle.
    PgConn watch = direct_primary();
    REQUIRE(watch.ok());
    CHECK(eventually([&] { return value(watch.conn, "SELECT count(*) FROM pg_stat_activity WHERE pid = " + first) == "0"; }, 10s));
}

TEST_CASE("an idle pooled server killed with pg_terminate_backend is replaced without a client error", "[pool]") {
    Pgrelay& relay = relays().main();
    const std::string user = "pool_kill";
    std::vector<PgConn> clients;
    for (int i = 0; i < 3; ++i) {
        clients.push_back(login(relay, user));
        REQUIRE(clients.back().ok());
    }
    // Three transactions at once: three servers in the pool, then all idle.
    std::set<std::string> before;
    for (auto& c : clients) {
        REQUIRE(run(c.conn, "BEGIN").ok());
        before.insert(value(c.conn, "SELECT pg_backend_pid()"));
    }
    for (auto& c : clients) REQUIRE(run(c.conn, "COMMIT").ok());
    REQUIRE(before.size() == 3);

    PgConn watch = direct_primary();
    REQUIRE(watch.ok());
    const std::string idle_sql = "FROM pg_stat_activity WHERE usename = '" + user +
                                 "' AND backend_type = 'client backend' AND state = 'idle'";
    REQUIRE(eventually([&] { return value(watch.conn, "SELECT count(*) " + idle_sql) == "3"; }, 5s));
    CHECK(value(watch.conn, "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) AS t " + idle_sql + ") k WHERE t") ==
          "3");
    REQUIRE(eventually([&] { return backends_of(watch.conn, user) == 0; }, 10s));

    // Next queries: new servers, no error.
    std::set<std::string> after;
    for (int round = 0; round < 3; ++round) {
        for (auto& c : clients) {
            INFO("round " << round);
            std::string pid;
            CHECK_NOTHROW(pid = value(c.conn, "SELECT pg_backend_pid()"));
            after.insert(pid);
            const Outcome e = exec_params(c.conn, "SELECT $1::int + 1", "41");
            INFO(e.describe());
            CHECK(e.ok());
            CHECK(e.row == std::vector<std::string>{"42"});
        }
    }
    for (const auto& pid : after) CHECK(before.count(pid) == 0);
    CHECK(relay.running());
}

TEST_CASE("cancel in transaction mode: PQcancel from another thread ends pg_sleep with 57014", "[pool]") {
    Pgrelay& relay = relays().main();
    PgConn c = login(relay, "scramuser", "scrampass");
    REQUIRE(c.ok());
    PgConn watch = direct_primary();
    REQUIRE(watch.ok());
    const std::string sql = "SELECT pg_sleep(30) /* pool cancel */";
    REQUIRE(PQsendQuery(c.conn, sql.c_str()) == 1);
    const std::string active = "SELECT count(*) FROM pg_stat_activity WHERE query = '" + sql + "' AND state = 'active'";
    REQUIRE(eventually([&] { return value(watch.conn, active) == "1"; }, 10s));

    PGcancel* key = PQgetCancel(c.conn);
    REQUIRE(key);
    std::atomic<bool> sent{false};
    std::string cancel_error(256, '\0');
    std::thread canceller([&] {
        std::this_thread::sleep_for(500ms);
        sent = PQcancel(key, cancel_error.data(), static_cast<int>(cancel_error.size())) == 1;
    });
    const auto t0 = Clock::now();
    const Outcome o = await_results(c.conn, 15s);
    const double took = std::chrono::duration<double>(Clock::now() - t0).count();
    canceller.join();
    PQfreeCancel(key);
    INFO(o.describe() << " / cancel: " << cancel_error.c_str());
    CHECK(sent);
    REQUIRE(o.finished);
    CHECK(o.sqlstate == "57014");
    CHECK(took < 5.0);
    CHECK(eventually([&] { return value(watch.conn, active) == "0"; }, 5s));
    CHECK(value(c.conn, "SELECT 1") == "1");
    CHECK(PQtransactionStatus(c.conn) == PQTRANS_IDLE);
}

TEST_CASE("hostile SASL on a pooled port: each gets 28P01 or 08P01 and a close; pgrelay keeps serving", "[pool]") {
    Pgrelay& relay = relays().main();
    const uint16_t port = relay.rw_port();
    const std::string user = "scramuser", password = "scrampass";

    // A real exchange first: its client-final is replayed below.
    const std::string nonce1 = "pooltestreplaynonce0123456789";
    std::string recorded_final, recorded_proof;
    {
        Scram s = scram_start(port, user, nonce1);
        REQUIRE(s.error.empty());
        recorded_final = s.client_final(password);
        recorded_proof = recorded_final.substr(recorded_final.find(",p=") + 3);
        REQUIRE(s.wire->send(message('p', recorded_final)));
        auto m = s.wire->next(10s);
        REQUIRE(m);
        REQUIRE(m->first == 'R');
        REQUIRE(get32(m->second, 0) == 12);  // AuthenticationSASLFinal, with the server's signature
        CHECK(m->second.substr(4) == "v=" + b64(s.server_signature(password, s.final_without_proof(s.nonce))));
        bool ready = false;
        while (auto n = s.wire->next(10s)) {
            if (n->first == 'Z') {
                ready = true;
                break;
            }
        }
        REQUIRE(ready);
        s.wire->send(message('X', ""));
    }

    struct Attack {
        std::string name;
        std::function<std::unique_ptr<Wire>()> run;
    };
    auto sasl_offered = [&](std::unique_ptr<Wire>& w) {
        w = std::make_unique<Wire>(port);
        REQUIRE(w->connected());
        REQUIRE(w->send(startup_message({{"user", user}, {"database", "postgres"}})));
        auto m = w->next(10s);
        REQUIRE(m);
        REQUIRE(m->first == 'R');
        REQUIRE(get32(m->second, 0) == 10);
    };
    auto continued = [&](const std::string& nonce) {
        Scram s = scram_start(port, user, nonce);
        INFO(s.error);
        REQUIRE(s.error.empty());
        return s;
    };
    std::vector<Attack> attacks = {
        {"wrong mechanism",
         [&] {
             std::unique_ptr<Wire> w;
             sasl_offered(w);
             w->send(sasl_initial("SCRAM-SHA-1", "n,,n=,r=wrongmechanismnonce"));
             return w;
         }},
        {"length field longer than the data",
         [&] {
             std::unique_ptr<Wire> w;
             sasl_offered(w);
             w->send(sasl_initial("SCRAM-SHA-256", "n,,n=,r=badlengthnonce", 1000));
             return w;
         }},
        {"length field -1 with data",
         [&] {
             std::unique_ptr<Wire> w;
             sasl_offered(w);
             w->send(sasl_initial("SCRAM-SHA-256", "n,,n=,r=badlengthnonce", 0xffffffffu));
             return w;
         }},
        {"bad base64 proof in client-final",
         [&] {
             Scram s = continued("badbase64nonce0123456789");
             s.wire->send(message('p', s.final_without_proof(s.nonce) + ",p=!!not*base64??"));
             return std::move(s.wire);
         }},
        {"wrong nonce in client-final (proof computed over it)",
         [&] {
             Scram s = continued("wrongnoncenonce0123456789");
             const std::string wo = s.final_without_proof(s.nonce + "X");
             s.wire->send(message('p', wo + ",p=" + b64(s.proof(password, wo))));
             return std::move(s.wire);
         }},
        {"replayed client-final, verbatim",
         [&] {
             Scram s = continued(nonce1);  // the same client nonce: the server's part differs
             REQUIRE(recorded_final.find(s.nonce) == std::string::npos);
             s.wire->send(message('p', recorded_final));
             return std::move(s.wire);
         }},
        {"replayed proof with this exchange's nonce",
         [&] {
             Scram s = continued(nonce1);
             s.wire->send(message('p', s.final_without_proof(s.nonce) + ",p=" + recorded_proof));
             return std::move(s.wire);
         }},
    };
    for (auto& attack : attacks) {
        INFO(attack.name);
        std::unique_ptr<Wire> w = attack.run();
        auto err = w->next_error(10s);
        REQUIRE(err);
        CHECK((err->sqlstate == "28P01" || err->sqlstate == "08P01"));
        CHECK(w->closed_within(5s));
        WARN(attack.name << ": " << err->severity << " " << err->sqlstate << " " << err->message);
        REQUIRE(relay.running());
        PgConn ok = login(relay, user, password);
        CHECK(ok.ok());
        if (ok.ok()) CHECK(value(ok.conn, "SELECT 1") == "1");
    }
}

TEST_CASE("session pool: a client keeps its backend; DISCARD ALL cleans it for the next client", "[pool]") {
    Pgrelay& relay = relays().session();  // pool_size 2
    const std::string user = "pool_sess";
    const std::string default_work_mem = admin_value("SHOW work_mem");
    REQUIRE(default_work_mem != "77MB");
    PgConn c1 = login(relay, user), c2 = login(relay, user);
    REQUIRE(c1.ok());
    REQUIRE(c2.ok());
    const std::string pid1 = value(c1.conn, "SELECT pg_backend_pid()");
    const std::string pid2 = value(c2.conn, "SELECT pg_backend_pid()");
    CHECK(pid1 != pid2);
    for (int i = 0; i < 5; ++i) {
        for (auto [c, pid] : {std::pair{c1.conn, pid1}, std::pair{c2.conn, pid2}}) {
            REQUIRE(run(c, "BEGIN").ok());
            CHECK(value(c, "SELECT pg_backend_pid()") == pid);
            REQUIRE(run(c, "COMMIT").ok());
            CHECK(value(c, "SELECT pg_backend_pid()") == pid);
        }
    }
    REQUIRE(run(c1.conn, "SET work_mem = '77MB'").ok());
    REQUIRE(run(c1.conn, "CREATE TEMP TABLE pool_sess_tmp(x int)").ok());
    REQUIRE(prepare(c1.conn, "sess_stmt", "SELECT 1").ok());
    CHECK(value(c1.conn, "SHOW work_mem") == "77MB");
    c1 = PgConn{};  // disconnects: its server goes back after server_reset_query

    // c2 holds the other server, so c3 gets c1's.
    PgConn c3 = login(relay, user);
    REQUIRE(c3.ok());
    REQUIRE(value(c3.conn, "SELECT pg_backend_pid()") == pid1);
    CHECK(value(c3.conn, "SHOW work_mem") == default_work_mem);
    CHECK(value(c3.conn, "SELECT to_regclass('pool_sess_tmp') IS NULL") == "t");
    const Outcome d = describe_prepared(c3.conn, "sess_stmt");
    CHECK(d.status == PGRES_FATAL_ERROR);
    CHECK(d.sqlstate == "26000");
    CHECK(value(c3.conn, "SELECT pg_backend_pid()") == pid1);
    CHECK(value(c2.conn, "SELECT pg_backend_pid()") == pid2);
    PgConn watch = direct_primary();
    REQUIRE(watch.ok());
    CHECK(backends_of(watch.conn, user) <= 2);
}

// ------------------------------------------------- a server lost under a client

namespace {
// The pid of `user`'s backend in `state` running something like `like`, once
// there is exactly one.
std::string backend_pid(PGconn* watch, const std::string& user, const std::string& state, const std::string& like = "%") {
    std::string pid;
    const std::string sql = "SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE usename = '" + user +
                            "' AND state = '" + state + "' AND query LIKE '" + like + "'";
    eventually([&] {
        pid = value(watch, sql);
        return !pid.empty() && pid.find(',') == std::string::npos;
    }, 10s);
    return pid;
}
void kill_backend(PGconn* watch, const std::string& user, const std::string& pid) {
    REQUIRE(!pid.empty());
    CHECK(value(watch, "SELECT pg_terminate_backend(" + pid + ")") == "t");
    REQUIRE(eventually([&] { return value(watch, "SELECT count(*) FROM pg_stat_activity WHERE pid = " + pid) == "0"; }, 10s));
    (void)user;
}
}  // namespace

TEST_CASE("a pooled server lost under its client: 08007 or 40001, and the same connection goes on", "[pool]") {
    const std::string user = "pool_lost";
    relays();  // makes the users
    admin_value("CREATE TABLE IF NOT EXISTS pool_lost_t(x int)");
    admin_value("GRANT ALL ON pool_lost_t TO pool_lost");
    // COMMIT that takes a while: a deferred constraint trigger sleeps in it.
    admin_value("CREATE OR REPLACE FUNCTION pool_lost_slow() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep(30); RETURN NULL; END $$");
    admin_value("DROP TRIGGER IF EXISTS pool_lost_slow_commit ON pool_lost_t");
    admin_value("CREATE CONSTRAINT TRIGGER pool_lost_slow_commit AFTER INSERT ON pool_lost_t DEFERRABLE INITIALLY DEFERRED "
                "FOR EACH ROW WHEN (NEW.x = 99) EXECUTE FUNCTION pool_lost_slow()");
    admin_value("TRUNCATE pool_lost_t");
    PgConn watch = direct_primary();
    REQUIRE(watch.ok());
    auto still_usable = [&](PGconn* c) {
        CHECK(PQstatus(c) == CONNECTION_OK);
        CHECK(PQtransactionStatus(c) == PQTRANS_IDLE);
        std::string one;
        CHECK_NOTHROW(one = value(c, "SELECT 1"));
        CHECK(one == "1");
    };
    auto expect_error = [](const Outcome& o, const std::string& sqlstate) {
        INFO(o.describe());
        CHECK(o.finished);
        CHECK(o.status == PGRES_FATAL_ERROR);
        CHECK(o.sqlstate == sqlstate);
        CHECK(o.severity == "ERROR");  // not FATAL: the connection stays
    };

    SECTION("transaction mode") {
        PgConn c = login(relays().main(), user);
        REQUIRE(c.ok());
        {
            INFO("an autocommit statement in flight: it may have committed, 08007");
            REQUIRE(PQsendQuery(c.conn, "SELECT pg_sleep(30)"));
            kill_backend(watch.conn, user, backend_pid(watch.conn, user, "active", "SELECT pg_sleep%"));
            expect_error(await_results(c.conn, 10s), "08007");
            still_usable(c.conn);
        }
        {
            INFO("a statement in flight inside a transaction block: rolled back, 40001");
            REQUIRE(run(c.conn, "BEGIN").ok());
            REQUIRE(run(c.conn, "INSERT INTO pool_lost_t VALUES (1)").ok());
            REQUIRE(PQsendQuery(c.conn, "SELECT pg_sleep(30)"));
            kill_backend(watch.conn, user, backend_pid(watch.conn, user, "active", "SELECT pg_sleep%"));
            expect_error(await_results(c.conn, 10s), "40001");
            still_usable(c.conn);
        }
        {
            INFO("a COMMIT in flight: it may have committed, 08007");
            REQUIRE(run(c.conn, "BEGIN").ok());
            REQUIRE(run(c.conn, "INSERT INTO pool_lost_t VALUES (99)").ok());
            REQUIRE(PQsendQuery(c.conn, "COMMIT"));
            kill_backend(watch.conn, user, backend_pid(watch.conn, user, "active", "COMMIT%"));
            expect_error(await_results(c.conn, 10s), "08007");
            still_usable(c.conn);
        }
        {
            INFO("idle inside a block when the server goes: the next statement gets 40001");
            REQUIRE(run(c.conn, "BEGIN").ok());
            REQUIRE(run(c.conn, "INSERT INTO pool_lost_t VALUES (2)").ok());
            kill_backend(watch.conn, user, backend_pid(watch.conn, user, "idle in transaction"));
            expect_error(run(c.conn, "INSERT INTO pool_lost_t VALUES (3)"), "40001");
            still_usable(c.conn);
        }
        {
            INFO("idle inside a block when the server goes: a ROLLBACK just succeeds");
            REQUIRE(run(c.conn, "BEGIN").ok());
            REQUIRE(run(c.conn, "INSERT INTO pool_lost_t VALUES (4)").ok());
            kill_backend(watch.conn, user, backend_pid(watch.conn, user, "idle in transaction"));
            const Outcome r = run(c.conn, "ROLLBACK");
            INFO(r.describe());
            CHECK(r.ok());
            still_usable(c.conn);
        }
        {
            INFO("idle inside a block when the server goes: an extended-protocol ROLLBACK (as pgJDBC sends it) succeeds");
            REQUIRE(run(c.conn, "BEGIN").ok());
            REQUIRE(run(c.conn, "INSERT INTO pool_lost_t VALUES (5)").ok());
            kill_backend(watch.conn, user, backend_pid(watch.conn, user, "idle in transaction"));
            const Outcome r = sent_or_error(c.conn, PQsendQueryParams(c.conn, "ROLLBACK", 0, nullptr, nullptr, nullptr, nullptr, 0), 10s);
            INFO(r.describe());
            CHECK(r.ok());
            still_usable(c.conn);
        }
        {
            INFO("an extended-protocol statement in flight: 08007");
            REQUIRE(PQsendQueryParams(c.conn, "SELECT pg_sleep($1::int)", 1, nullptr,
                                      std::vector<const char*>{"30"}.data(), nullptr, nullptr, 0));
            kill_backend(watch.conn, user, backend_pid(watch.conn, user, "active", "SELECT pg_sleep($1%"));
            expect_error(await_results(c.conn, 10s), "08007");
            still_usable(c.conn);
        }
        // Nothing any of these transactions wrote was committed.
        CHECK(admin_value("SELECT count(*) FROM pool_lost_t") == "0");
    }

    SECTION("session mode: settings and prepared statements move to the next server") {
        PgConn c = login(relays().session(), user);
        REQUIRE(c.ok());
        REQUIRE(run(c.conn, "SET TimeZone = 'Asia/Tokyo'").ok());
        REQUIRE(prepare(c.conn, "lost_stmt", "SELECT $1::int * 2").ok());
        const std::string pid = value(c.conn, "SELECT pg_backend_pid()");
        kill_backend(watch.conn, user, pid);
        const Outcome e = exec_prepared(c.conn, "lost_stmt", "21");
        INFO(e.describe());
        CHECK(e.ok());
        CHECK(e.row == std::vector<std::string>{"42"});
        CHECK(param(c.conn, "TimeZone") == "Asia/Tokyo");
        CHECK(value(c.conn, "SHOW TimeZone") == "Asia/Tokyo");
        CHECK(value(c.conn, "SELECT pg_backend_pid()") != pid);
    }

    SECTION("session mode: a client that ran LISTEN cannot move, and ends as in passthrough") {
        PgConn c = login(relays().session(), user);
        REQUIRE(c.ok());
        REQUIRE(run(c.conn, "LISTEN pool_lost_channel").ok());
        kill_backend(watch.conn, user, value(c.conn, "SELECT pg_backend_pid()"));
        const Outcome o = run(c.conn, "SELECT 1", 10s);
        INFO(o.describe());
        CHECK(!o.ok());
        CHECK(PQstatus(c.conn) == CONNECTION_BAD);
    }
}

// ------------------------------------------------------------- admin console

namespace {
PgConn admin_login(const Pgrelay& relay, const std::string& user) {
    return pg_connect(relay.conninfo(relay.rw_port(), user, password_of(user)) + " dbname=pgrelay");
}
// Every row of a SHOW, as "col=value" joined by spaces, one string per row.
std::vector<std::string> show(PGconn* c, const std::string& cmd) {
    std::vector<std::string> rows;
    PGresult* r = PQexec(c, cmd.c_str());
    if (PQresultStatus(r) == PGRES_TUPLES_OK) {
        for (int i = 0; i < PQntuples(r); ++i) {
            std::string row;
            for (int j = 0; j < PQnfields(r); ++j) row += std::string(PQfname(r, j)) + "=" + PQgetvalue(r, i, j) + " ";
            rows.push_back(row);
        }
    } else {
        rows.push_back(std::string("error ") + PQresultErrorMessage(r));
    }
    PQclear(r);
    return rows;
}
std::string command(PGconn* c, const std::string& cmd) {
    PGresult* r = PQexec(c, cmd.c_str());
    std::string out = PQresultStatus(r) == PGRES_COMMAND_OK ? std::string(PQcmdStatus(r)) : "error " + std::string(PQresultErrorMessage(r));
    PQclear(r);
    return out;
}
bool any_contains(const std::vector<std::string>& rows, const std::string& a, const std::string& b = {}) {
    return std::any_of(rows.begin(), rows.end(), [&](const std::string& r) {
        return r.find(a) != std::string::npos && r.find(b) != std::string::npos;
    });
}
}  // namespace

TEST_CASE("admin console: SHOW commands, PAUSE and RESUME under pgbench with no failed transaction, RECONNECT", "[pool]") {
    Pgrelay& relay = relays().main();
    auto& cluster = relays().cluster();
    const std::string user = "pool_bench";
    {
        PgConn refused = admin_login(relay, user);
        CHECK(!refused.ok());
        CHECK(refused.sqlstate == "28000");
    }
    PgConn admin = admin_login(relay, "pool_admin");
    REQUIRE(admin.ok());
    PgConn c = login(relay, user);
    REQUIRE(c.ok());
    const std::string pid = value(c.conn, "SELECT pg_backend_pid()");

    CHECK(any_contains(show(admin.conn, "SHOW POOLS"), "user=" + user, "pool_size=20"));
    CHECK(any_contains(show(admin.conn, "show clients;"), "user=" + user, "state=idle"));
    CHECK(any_contains(show(admin.conn, "SHOW SERVERS"), "user=" + user, "backend_pid=" + pid));
    CHECK(any_contains(show(admin.conn, "SHOW STATS"), "user=" + user));
    CHECK(any_contains(show(admin.conn, "SHOW CONFIG"), "key=pool.rw.pool_mode", "value=transaction"));
    CHECK(any_contains(show(admin.conn, "SHOW HELP"), "command=RECONNECT"));
    CHECK(command(admin.conn, "SHOW NONSENSE").find("unknown command") != std::string::npos);

    // RECONNECT: the idle server closes; the next transaction runs on a new one.
    CHECK(command(admin.conn, "RECONNECT") == "RECONNECT");
    CHECK(value(c.conn, "SELECT pg_backend_pid()") != pid);

    // PAUSE while pgbench runs: it answers once no transaction is running, and
    // then PostgreSQL has no server connection of the pool's users; pgbench's
    // transactions wait, and RESUME lets them go on. None fails.
    std::string out;
    REQUIRE(run_command("PGPASSWORD=postgres timeout 120 pgbench -i -q -s 1 -h 127.0.0.1 -p " +
                            std::to_string(cluster.primary().port) + " -U postgres postgres",
                        &out) == 0);
    admin_value("GRANT SELECT, INSERT, UPDATE, DELETE ON pgbench_accounts, pgbench_branches, pgbench_tellers, "
                "pgbench_history TO pool_bench");
    c = PgConn{};
    auto bench = std::async(std::launch::async, [&] {
        std::string o;
        const int rc = run_command("PGPASSWORD=" + password_of(user) + " timeout 120 pgbench -n -c 8 -j 2 -T 10 -M extended -h 127.0.0.1 -p " +
                                       std::to_string(relay.rw_port()) + " -U " + user + " postgres",
                                   &o);
        return std::make_pair(rc, o);
    });
    std::this_thread::sleep_for(3s);
    PgConn watch = direct_primary();
    REQUIRE(watch.ok());
    CHECK(backends_of(watch.conn, user) > 0);
    CHECK(command(admin.conn, "PAUSE") == "PAUSE");
    CHECK(eventually([&] { return backends_of(watch.conn, user) == 0; }, 5s));
    std::this_thread::sleep_for(2s);
    CHECK(backends_of(watch.conn, user) == 0);  // still paused: nothing reopened
    CHECK(any_contains(show(admin.conn, "SHOW CLIENTS"), "user=" + user, "state=waiting"));
    CHECK(command(admin.conn, "RESUME") == "RESUME");
    const auto [rc, bench_out] = bench.get();
    INFO(bench_out);
    CHECK(rc == 0);
    std::smatch failed, processed;
    REQUIRE(std::regex_search(bench_out, failed, std::regex(R"(number of failed transactions: (\d+))")));
    REQUIRE(std::regex_search(bench_out, processed, std::regex(R"(number of transactions actually processed: (\d+))")));
    CHECK(std::stol(failed[1]) == 0);
    CHECK(std::stol(processed[1]) > 0);
    CHECK(relay.running());
}

// ------------------------------------------------------ protocol negotiation

TEST_CASE("a grease startup (3.9999 with a _pq_ option) gets NegotiateProtocolVersion: 3.2 pooled, 3.0 from PostgreSQL 15",
          "[pool]") {
    auto check = [](uint16_t port, const std::string& user, uint32_t newest) {
        Wire w(port);
        REQUIRE(w.connected());
        // What PostgreSQL 19's libpq sends by default.
        w.send(startup_message({{"user", user}, {"database", "postgres"}, {"_pq_.test_protocol_negotiation", ""}},
                               (3u << 16) | 9999));
        auto m = w.next(10s);
        REQUIRE(m);
        CHECK(m->first == 'v');
        REQUIRE(m->second.size() >= 8);
        CHECK(get32(m->second, 0) == newest);  // major << 16 | minor, as PostgreSQL sends it
        CHECK(get32(m->second, 4) == 1);  // one option not recognized:
        CHECK(m->second.substr(8) == std::string("_pq_.test_protocol_negotiation") + '\0');
        m = w.next(10s);
        REQUIRE(m);
        CHECK(m->first == 'R');  // then authentication, as from PostgreSQL
    };
    SECTION("pooled: pgrelay answers") { check(relays().main().rw_port(), "pool_iso", (3u << 16) | 2); }
    SECTION("passthrough: PostgreSQL answers, through pgrelay") {
        Pgrelay plain(relays().cluster());
        check(plain.rw_port(), "scramuser", 3u << 16);
    }
}

// A query started on `who` (logged in by hand) ends with 57014 when
// `cancel` arrives on another connection to host:port, which gets no answer.
TEST_CASE("protocol 3.2 pooled: no negotiation, a 32-byte key of pgrelay's that cancels; 3.0 gets 4 bytes", "[pool]") {
    Pgrelay& relay = relays().main();
    const uint16_t port = relay.rw_port();
    RawLogin v32 = raw_login("127.0.0.1", port, "pool_iso", "isopass", (3u << 16) | 2);
    INFO(v32.error);
    REQUIRE(v32.error.empty());
    CHECK(v32.negotiated == 0);  // 3.2 is spoken as asked: no NegotiateProtocolVersion
    CHECK(v32.secret.size() == 32);
    RawLogin v30 = raw_login("127.0.0.1", port, "pool_iso", "isopass");
    REQUIRE(v30.error.empty());
    CHECK(v30.secret.size() == 4);
    // 3.3 and beyond: negotiated down to 3.2, with the long key.
    RawLogin v33 = raw_login("127.0.0.1", port, "pool_iso", "isopass", (3u << 16) | 3);
    REQUIRE(v33.error.empty());
    CHECK(v33.negotiated == ((3u << 16) | 2));
    CHECK(v33.secret.size() == 32);

    const double before = relay.metric("pgrelay_cancel_requests_total{outcome=\"forwarded\"}");
    // A long key cut to 4 bytes, or with its last byte changed, cancels nothing.
    for (const std::string& wrong : {v32.secret.substr(0, 4), v32.secret.substr(0, 31) + char(v32.secret[31] ^ 1)}) {
        RawClient c(port);
        REQUIRE(c.send(cancel_request(v32.pid, wrong)));
        CHECK(c.read_all(5s).empty());
    }
    CHECK(relay.metric("pgrelay_cancel_requests_total{outcome=\"forwarded\"}") == before);
    expect_cancelled(v32, "127.0.0.1", port, cancel_request(v32.pid, v32.secret));
    expect_cancelled(v30, "127.0.0.1", port, cancel_request(v30.pid, v30.secret));
    CHECK(relay.metric("pgrelay_cancel_requests_total{outcome=\"forwarded\"}") == before + 2);
}

TEST_CASE("passthrough to a protocol 3.2 backend (bench's fake): long keys replaced, the cancel reaches it with its own",
          "[pool]") {
    TempDir d("pgrelay-fake32");
    const uint16_t fake_port = free_port();
    const std::string keys = d.path() + "/keys.log";
    const std::string cmd = "python3 " + source_dir() + "/bench/harness/fakepg.py serve --port " +
                            std::to_string(fake_port) + " --key-log " + keys + " > " + d.path() + "/fake.log 2>&1 & echo $!";
    std::string pid_out;
    REQUIRE(run_command(cmd, &pid_out) == 0);
    const int fake_pid = std::stoi(pid_out);
    struct Reap {
        int pid;
        ~Reap() { ::kill(pid, SIGTERM); }
    } reap{fake_pid};
    REQUIRE(eventually([&] { return slurp(d.path() + "/fake.log").find("listening") != std::string::npos; }, 10s));

    // A passthrough relay whose only member is the fake, as the primary.
    Pgrelay fake_relay(relays().cluster(),
                       PgrelayOptions{.static_members = "[[topology.members]]\nname = \"fake\"\nhost = \"127.0.0.1\"\nport = " +
                                                        std::to_string(fake_port) + "\nrole = \"primary\"\n"});
    constexpr uint32_t kProtocol32 = (3u << 16) | 2;
    auto key_lines = [&](const std::string& what) {
        std::vector<std::pair<int32_t, std::string>> out;
        std::istringstream in(slurp(keys));
        for (std::string w, hex; in >> w;) {
            int32_t pid = 0;
            in >> pid >> hex;
            if (w == what) out.emplace_back(pid, hex);
        }
        return out;
    };
    auto hex = [](const std::string& b) {
        static const char* digits = "0123456789abcdef";
        std::string h;
        for (unsigned char c : b) h += std::string{digits[c >> 4], digits[c & 15]};
        return h;
    };
    // libpq 18 with max_protocol_version=3.2, libpq 15 (3.0), and libpq 19's grease (3.9999, negotiated to 3.2).
    const std::vector<uint32_t> versions = {kProtocol32, 3u << 16, (3u << 16) | 9999};
    for (size_t i = 0; i < versions.size(); ++i) {
        const uint32_t version = versions[i];
        INFO("protocol minor " << (version & 0xffff));
        RawLogin l = raw_login("127.0.0.1", fake_relay.rw_port(), "bench", "", version);
        INFO(l.error);
        REQUIRE(l.error.empty());
        CHECK(l.negotiated == (version > kProtocol32 ? kProtocol32 : 0u));  // the backend's, passed on
        const auto handed = key_lines("key");
        REQUIRE(handed.size() == i + 1);
        const auto [backend_pid, backend_hex] = handed.back();
        CHECK(l.secret.size() == (version >= kProtocol32 ? 32u : 4u));
        // Never the backend's own pid or secret.
        CHECK(l.pid != backend_pid);
        CHECK(hex(l.secret) != backend_hex);
        RawClient c(fake_relay.rw_port());
        REQUIRE(c.send(cancel_request(l.pid, l.secret)));
        c.read_all(5s);
        REQUIRE(eventually([&] { return key_lines("cancel").size() == i + 1; }, 5s));
        CHECK(key_lines("cancel").back() == handed.back());  // the backend got its own key back
    }
    // libpq 15 itself (3.0): connects, and PQcancel reaches the fake with its key.
    PgConn c = pg_connect("host=127.0.0.1 port=" + std::to_string(fake_relay.rw_port()) +
                          " user=bench dbname=postgres sslmode=disable gssencmode=disable connect_timeout=10");
    INFO(c.error);
    REQUIRE(c.ok());
    CHECK(PQprotocolVersion(c.conn) == 3);
    PGcancel* cancel = PQgetCancel(c.conn);
    REQUIRE(cancel);
    char errbuf[256];
    CHECK(PQcancel(cancel, errbuf, sizeof errbuf) == 1);
    PQfreeCancel(cancel);
    REQUIRE(eventually([&] { return key_lines("cancel").size() == versions.size() + 1; }, 5s));
    CHECK(key_lines("cancel").back() == key_lines("key").back());
}

TEST_CASE("a pooled ro client whose replica leaves the read set moves to another one, keeping its session", "[pool]") {
    auto& cluster = relays().cluster();
    const auto replicas = cluster.replicas();
    REQUIRE(replicas.size() >= 2);
    Pgrelay relay(cluster, PgrelayOptions{.ro_fallback_to_primary = false,
                                          .extra_sections = "[pool.ro]\npool_mode = \"session\"\npool_size = 4\nauth_file = \"" +
                                                            relays().file_users() + "\"\n"});
    PgConn c = pg_connect(relay.conninfo(relay.ro_port(), "scramuser", "scrampass"));
    REQUIRE(c.ok());
    REQUIRE(run(c.conn, "SET TimeZone = 'Asia/Tokyo'").ok());
    REQUIRE(prepare(c.conn, "ro_stmt", "SELECT $1::int * 3").ok());
    const std::string first = value(c.conn, "SELECT inet_server_port()");
    std::string first_name;
    for (const auto& n : replicas)
        if (std::to_string(n.port) == first) first_name = n.name;
    REQUIRE(!first_name.empty());
    // The replica is excluded in config: it leaves the read set, and the
    // client's server there is cut while the client stays.
    relay.reload("exclude = [\"" + first_name + "\"]");
    REQUIRE(eventually([&] { return relay.log().find("the client stays") != std::string::npos; }, 10s));
    const Outcome o = run(c.conn, "SELECT inet_server_port(), current_setting('TimeZone'), pg_is_in_recovery()");
    INFO(o.describe());
    REQUIRE(o.ok());
    CHECK(o.row[0] != first);
    CHECK(o.row[1] == "Asia/Tokyo");
    CHECK(o.row[2] == "t");  // another replica, not the primary
    const Outcome e = exec_prepared(c.conn, "ro_stmt", "14");
    INFO(e.describe());
    CHECK(e.ok());
    CHECK(e.row == std::vector<std::string>{"42"});
    CHECK(PQstatus(c.conn) == CONNECTION_OK);
}
