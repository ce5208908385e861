// Integration tests of the core proxy: a real PostgreSQL 15 primary with two
// streaming replicas, a real pgrelay with a static topology, real clients (libpq,
// psql, pgbench). Assertions are on what a user sees: rows, ports, SQLSTATEs.
#include <catch2/catch.hpp>

#include <arpa/inet.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <future>
#include <set>
#include <thread>

#include "fixtures.hpp"

using namespace pgrelay::test;
using namespace std::chrono_literals;

namespace {

std::string port_via(const std::string& conninfo) {
    PgConn c = pg_connect(conninfo);
    if (!c.ok()) return "error " + c.sqlstate + ": " + c.error;
    return query_value(c.conn, "SELECT inet_server_port()");
}


}  // namespace

TEST_CASE("rw reaches the primary and ro alternates over the replicas", "[integration]") {
    auto& cluster = PgCluster::shared();
    Pgrelay relay(cluster);

    PgConn rw = pg_connect(relay.conninfo(relay.rw_port(), "scramuser", "scrampass"));
    REQUIRE(rw.ok());
    CHECK(query_value(rw.conn, "SELECT inet_server_port()") == std::to_string(cluster.primary().port));
    CHECK(query_value(rw.conn, "SELECT pg_is_in_recovery()") == "f");
    exec(rw.conn, "DROP TABLE IF EXISTS core_writes; CREATE TABLE core_writes(id int primary key, v text)");
    exec(rw.conn, "INSERT INTO core_writes SELECT g, 'row ' || g FROM generate_series(1, 100) g");

    // The write is on the primary, seen directly, bypassing pgrelay.
    PgConn direct = pg_connect(cluster.direct(cluster.primary()));
    REQUIRE(direct.ok());
    CHECK(query_value(direct.conn, "SELECT count(*) FROM core_writes") == "100");

    std::set<std::string> replica_ports;
    for (const auto& r : cluster.replicas()) replica_ports.insert(std::to_string(r.port));
    std::vector<std::string> seen;
    for (int i = 0; i < 8; ++i) seen.push_back(port_via(relay.conninfo(relay.ro_port(), "scramuser", "scrampass")));
    for (size_t i = 0; i < seen.size(); ++i) {
        INFO("connection " << i << " landed on " << seen[i]);
        CHECK(replica_ports.count(seen[i]) == 1);
        if (i > 0) CHECK(seen[i] != seen[i - 1]);  // strict alternation between the two replicas
    }

    // Reads through ro run on a replica, which refuses writes.
    PgConn ro = pg_connect(relay.conninfo(relay.ro_port(), "scramuser", "scrampass"));
    REQUIRE(ro.ok());
    CHECK(query_value(ro.conn, "SELECT pg_is_in_recovery()") == "t");
    CHECK_THROWS_WITH(exec(ro.conn, "INSERT INTO core_writes VALUES (1000, 'x')"), Catch::Contains("25006"));
}

TEST_CASE("md5 and scram-sha-256 logins pass through both ports; wrong passwords get 28P01", "[integration]") {
    auto& cluster = PgCluster::shared();
    Pgrelay relay(cluster);
    for (uint16_t port : {relay.rw_port(), relay.ro_port()}) {
        for (auto [user, pass] : {std::pair{"md5user", "md5pass"}, std::pair{"scramuser", "scrampass"}}) {
            INFO("port " << port << " user " << user);
            PgConn ok = pg_connect(relay.conninfo(port, user, pass));
            REQUIRE(ok.ok());
            CHECK(query_value(ok.conn, "SELECT current_user") == user);
            PgConn bad = pg_connect(relay.conninfo(port, user, "wrong-password"));
            CHECK_FALSE(bad.ok());
            CHECK(bad.sqlstate == "28P01");
            CHECK_THAT(bad.error, Catch::Contains("password authentication failed"));
        }
    }
    // The same through psql, a real client binary.
    std::string out;
    const int rc = run_command("PGPASSWORD=md5pass psql -X -At -h 127.0.0.1 -p " + std::to_string(relay.rw_port()) +
                                   " -U md5user -d postgres -c 'SELECT 40 + 2'",
                               &out);
    CHECK(rc == 0);
    CHECK_THAT(out, Catch::Contains("42"));
    // Clients never see backend pids: BackendKeyData is pgrelay's own.
    PgConn c = pg_connect(relay.conninfo(relay.rw_port(), "md5user", "md5pass"));
    REQUIRE(c.ok());
    CHECK(std::to_string(PQbackendPID(c.conn)) != query_value(c.conn, "SELECT pg_backend_pid()"));
}

TEST_CASE("PQcancel ends pg_sleep through rw and ro with 32 concurrent sessions", "[integration]") {
    auto& cluster = PgCluster::shared();
    Pgrelay relay(cluster);
    for (uint16_t port : {relay.rw_port(), relay.ro_port()}) {
        INFO("port " << port);
        constexpr int kSessions = 32;
        std::vector<PgConn> conns;
        for (int i = 0; i < kSessions; ++i) {
            conns.push_back(pg_connect(relay.conninfo(port, "scramuser", "scrampass")));
            REQUIRE(conns.back().ok());
        }
        for (auto& c : conns) REQUIRE(PQsendQuery(c.conn, "SELECT pg_sleep(30)") == 1);
        // Every backend must actually be sleeping before we cancel. ro spreads
        // the sessions over both replicas, so count on every node directly.
        std::vector<PgConn> watchers;
        for (const auto& n : cluster.nodes()) {
            watchers.push_back(pg_connect(cluster.direct(n)));
            REQUIRE(watchers.back().ok());
        }
        REQUIRE(eventually(
            [&] {
                int sleeping = 0;
                for (auto& w : watchers)
                    sleeping += std::stoi(query_value(w.conn,
                                                      "SELECT count(*) FROM pg_stat_activity WHERE query = "
                                                      "'SELECT pg_sleep(30)' AND state = 'active'"));
                return sleeping >= kSessions;
            },
            10s));

        std::vector<std::future<std::pair<std::string, double>>> results;
        for (auto& c : conns) {
            results.push_back(std::async(std::launch::async, [conn = c.conn] {
                const auto t0 = std::chrono::steady_clock::now();
                PGcancel* cancel = PQgetCancel(conn);
                char err[256] = {0};
                const int sent = PQcancel(cancel, err, sizeof err);
                PQfreeCancel(cancel);
                if (!sent) return std::pair{std::string("cancel failed: ") + err, 0.0};
                PGresult* res = PQgetResult(conn);
                const char* code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
                std::string sqlstate = code ? code : "none";
                PQclear(res);
                while ((res = PQgetResult(conn))) PQclear(res);
                const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                return std::pair{sqlstate, secs};
            }));
        }
        double worst = 0;
        for (auto& f : results) {
            auto [sqlstate, secs] = f.get();
            CHECK(sqlstate == "57014");  // query_canceled: the cancel reached the right backend
            CHECK(secs < 1.0);
            worst = std::max(worst, secs);
        }
        WARN("port " << port << ": slowest of " << kSessions << " cancels took " << worst << " s");
        // The sessions survive a cancel and serve the next query.
        CHECK(query_value(conns[0].conn, "SELECT 1") == "1");
    }

    // A CancelRequest with a key pgrelay never issued is dropped silently:
    // the proxy closes without answering and the running query is untouched.
    PgConn c = pg_connect(relay.conninfo(relay.rw_port(), "scramuser", "scrampass"));
    REQUIRE(c.ok());
    REQUIRE(PQsendQuery(c.conn, "SELECT pg_sleep(1), 'finished'") == 1);
    RawClient bogus(relay.rw_port());
    std::string cancel = startup_request(16, 80877102);
    cancel += std::string("\x12\x34\x56\x78\x0a\x0b\x0c\x0d", 8);
    REQUIRE(bogus.send(cancel));
    CHECK(bogus.read_all(3s).empty());
    PGresult* res = PQgetResult(c.conn);
    CHECK(PQresultStatus(res) == PGRES_TUPLES_OK);
    PQclear(res);
    while ((res = PQgetResult(c.conn))) PQclear(res);
}

TEST_CASE("malformed startup packets get ErrorResponse 08P01 and the proxy keeps serving", "[integration]") {
    auto& cluster = PgCluster::shared();
    Pgrelay relay(cluster);
    struct Case {
        const char* name;
        std::string bytes;
    };
    std::vector<Case> cases = {
        {"length below 8", startup_request(4, 196608)},
        {"length above 10000", startup_request(100000, 196608)},
        {"protocol 2.0", startup_request(8, 2u << 16)},
        {"unknown version 1234.1234", startup_request(8, (1234u << 16) | 1234u)},
        {"garbage (HTTP request)", "GET / HTTP/1.1\r\nHost: x\r\n\r\n"},
        {"garbage bytes", std::string("\xde\xad\xbe\xef\x00\x01\x02\x03\xff\xfe", 10)},
        {"startup without terminator", startup_message({{"user", "x"}}).substr(0, 4) + std::string("\x00\x03\x00\x00user", 8)},
    };
    // Fix the last case's length word so it is complete but malformed.
    {
        std::string& b = cases.back().bytes;
        const uint32_t len = static_cast<uint32_t>(b.size());
        for (int i = 0; i < 4; ++i) b[size_t(i)] = static_cast<char>((len >> (8 * (3 - i))) & 0xff);
    }
    for (uint16_t port : {relay.rw_port(), relay.ro_port()}) {
        for (const auto& c : cases) {
            INFO("port " << port << ": " << c.name);
            RawClient raw(port);
            REQUIRE(raw.connected());
            REQUIRE(raw.send(c.bytes));
            const std::string reply = raw.read_all(5s);  // ends at EOF: pgrelay closes
            auto err = first_error(reply);
            REQUIRE(err);
            CHECK(err->sqlstate == "08P01");
            CHECK(err->severity == "FATAL");
            CHECK_FALSE(err->message.empty());
            // Other clients are still served.
            PgConn ok = pg_connect(relay.conninfo(port, "md5user", "md5pass"));
            CHECK(ok.ok());
        }
    }
    // A client that never finishes its startup packet is dropped after
    // startup_timeout (3 s here) instead of holding a slot forever.
    RawClient slow(relay.rw_port());
    REQUIRE(slow.send(std::string("\x00\x00", 2)));
    const auto t0 = std::chrono::steady_clock::now();
    const std::string reply = slow.read_all(15s);
    const auto waited = std::chrono::steady_clock::now() - t0;
    auto err = first_error(reply);
    REQUIRE(err);
    CHECK(err->sqlstate == "08P01");
    CHECK(waited < 14s);  // closed by the proxy, not by our read deadline
    CHECK(relay.running());
}

TEST_CASE("SSLRequest and GSSENCRequest are answered N and the client goes on in plaintext", "[integration]") {
    auto& cluster = PgCluster::shared();
    Pgrelay relay(cluster);
    // libpq's own negotiation (sslmode=prefer, gssencmode=prefer).
    PgConn c = pg_connect("host=127.0.0.1 port=" + std::to_string(relay.rw_port()) +
                          " user=md5user password=md5pass dbname=postgres sslmode=prefer gssencmode=prefer");
    REQUIRE(c.ok());
    CHECK(query_value(c.conn, "SELECT 1") == "1");
    // pgjdbc's order by hand: GSSENCRequest, then SSLRequest, then the StartupMessage.
    RawClient raw(relay.rw_port());
    REQUIRE(raw.send(startup_request(8, 80877104)));
    // Read exactly one byte per answer.
    REQUIRE(raw.send(startup_request(8, 80877103)));
    REQUIRE(raw.send(startup_message({{"user", "md5user"}, {"database", "postgres"}})));
    const std::string reply = raw.read_all(2s);
    REQUIRE(reply.size() >= 3);
    CHECK(reply.substr(0, 2) == "NN");
    CHECK(reply[2] == 'R');  // the backend's AuthenticationMD5Password request
    // sslmode=require gets a clear refusal from libpq, not a hang.
    PgConn tls = pg_connect(relay.conninfo(relay.rw_port(), "md5user", "md5pass") + " sslmode=require");
    CHECK_FALSE(tls.ok());
}

TEST_CASE("a stopped backend gives 08006 and ro falls back to the primary", "[integration]") {
    auto& cluster = PgCluster::shared();
    const auto replicas = cluster.replicas();
    const std::string primary_port = std::to_string(cluster.primary().port);
    Pgrelay relay(cluster);
    PgrelayOptions strict_opts;
    strict_opts.ro_fallback_to_primary = false;
    Pgrelay strict(cluster, strict_opts);

    for (const auto& r : replicas) cluster.stop(r.name);
    // The health check notices within ~200 ms; poll rather than sleep.
    CHECK(eventually([&] { return port_via(relay.conninfo(relay.ro_port(), "md5user", "md5pass")) == primary_port; }, 10s));
    for (int i = 0; i < 4; ++i) CHECK(port_via(relay.conninfo(relay.ro_port(), "md5user", "md5pass")) == primary_port);

    // Without fallback, ro refuses with 57P03 (cannot connect now).
    PgConn refused;
    CHECK(eventually(
        [&] {
            refused = pg_connect(strict.conninfo(strict.ro_port(), "md5user", "md5pass"));
            return refused.sqlstate == "57P03";
        },
        10s));
    CHECK_THAT(refused.error, Catch::Contains("ro"));
    // rw is unaffected.
    CHECK(port_via(strict.conninfo(strict.rw_port(), "md5user", "md5pass")) == primary_port);

    for (const auto& r : replicas) cluster.start(r.name);
    CHECK(eventually([&] { return port_via(strict.conninfo(strict.ro_port(), "md5user", "md5pass")) != primary_port &&
                                  port_via(strict.conninfo(strict.ro_port(), "md5user", "md5pass")).rfind("error", 0) != 0; },
                     20s));

    // The primary stopped: rw answers 08006 (connection failure) at once, not a hang.
    cluster.stop(cluster.primary().name);
    const auto t0 = std::chrono::steady_clock::now();
    PgConn down = pg_connect(relay.conninfo(relay.rw_port(), "md5user", "md5pass"));
    CHECK_FALSE(down.ok());
    CHECK(down.sqlstate == "08006");
    CHECK_THAT(down.error, Catch::Contains("rw"));
    CHECK(std::chrono::steady_clock::now() - t0 < 5s);
    cluster.start(cluster.primary().name);
    CHECK(eventually([&] { return port_via(relay.conninfo(relay.rw_port(), "md5user", "md5pass")) == primary_port; }, 20s));
}

TEST_CASE("pgbench select-only and tpcb-like through rw finish with zero failed transactions", "[integration]") {
    auto& cluster = PgCluster::shared();
    Pgrelay relay(cluster);
    const std::string conn = "-h 127.0.0.1 -p " + std::to_string(relay.rw_port()) + " -U scramuser postgres";
    std::string out;
    REQUIRE(run_command("PGPASSWORD=scrampass pgbench -i -q -s 1 " + conn, &out) == 0);
    for (const char* mode : {"-S", ""}) {
        INFO("pgbench " << mode);
        const int rc = run_command(std::string("PGPASSWORD=scrampass pgbench -n -c 16 -j 2 -T 10 ") + mode + " " + conn, &out);
        INFO(out);
        CHECK(rc == 0);
        CHECK_THAT(out, Catch::Contains("number of failed transactions: 0 "));
        CHECK_THAT(out, Catch::Contains("number of transactions actually processed: "));
        WARN("pgbench " << mode << " through rw:\n" << out.substr(out.find("number of transactions actually")));
    }
    CHECK(relay.running());
}

TEST_CASE("a cancel key works from the other port and thread; oversized client frames get 08P01", "[integration]") {
    auto& cluster = PgCluster::shared();
    Pgrelay relay(cluster);
    // Session on rw; its query is cancelled through a CancelRequest sent to ro.
    RawSession s = md5_login(relay.rw_port(), "md5user", "md5pass");
    REQUIRE(s.error.empty());
    REQUIRE(s.pid != 0);
    REQUIRE(s.client->send(query_message("SELECT pg_sleep(30)")));
    PgConn direct = pg_connect(cluster.direct(cluster.primary()));
    REQUIRE(direct.ok());
    REQUIRE(eventually(
        [&] {
            return query_value(direct.conn,
                               "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'") == "1";
        },
        10s));
    {
        RawClient cancel(relay.ro_port());
        REQUIRE(cancel.send(cancel_request(s.pid, s.secret)));
        CHECK(cancel.read_all(5s).empty());  // no answer, then close: as PostgreSQL
    }
    const std::string reply = s.client->read_until(
        [](const std::string& b) {
            for (const auto& [t, body] : frames_of(b))
                if (t == 'Z') return true;
            return false;
        },
        10s);
    auto err = first_error(reply);
    REQUIRE(err);
    CHECK(err->sqlstate == "57014");

    // The same session then sends a message whose length word exceeds
    // max_frame_size: pgrelay answers 08P01 itself instead of allocating.
    std::string huge = "Q";
    huge += std::string("\x7f\xff\xff\xff", 4);
    REQUIRE(s.client->send(huge));
    const std::string after = s.client->read_all(5s);
    auto perr = first_error(after);
    REQUIRE(perr);
    CHECK(perr->sqlstate == "08P01");
    CHECK_THAT(perr->message, Catch::Contains("max_frame_size"));
    CHECK(relay.running());
}

// The plaintext relay's flow control: results and COPY streams far larger
// than the socket buffers, a client that stops reading in the middle of a
// result (the relay must hold the rest, not drop or reorder it), and COPY in
// and out compared byte for byte with what went in.
TEST_CASE("bulk results and COPY in and out pass whole; so does a result to a client that pauses reading", "[integration]") {
    auto& cluster = PgCluster::shared();
    Pgrelay relay(cluster);

    // 20,000 rows of 1,000 bytes: 20 MB, read only after a pause.
    RawSession s = md5_login(relay.rw_port(), "md5user", "md5pass");
    REQUIRE(s.error.empty());
    REQUIRE(s.client->send(query_message("SELECT i, repeat(chr(65 + i % 26), 1000) FROM generate_series(1, 20000) i")));
    std::this_thread::sleep_for(1500ms);
    const std::string ready_idle = std::string("Z\0\0\0\5I", 6);
    const std::string reply = s.client->read_until(
        [&](const std::string& b) { return b.size() >= 6 && b.compare(b.size() - 6, 6, ready_idle) == 0; }, 60s);
    const auto frames = frames_of(reply);
    size_t rows = 0, bad = 0;
    for (const auto& [t, body] : frames) {
        if (t != 'D') continue;
        ++rows;
        // int2 column count, then (int4 length, bytes) per column: the i
        // column's text, then 1,000 copies of the letter it selects.
        uint32_t len1 = 0;
        std::memcpy(&len1, body.data() + 2, 4);
        len1 = ntohl(len1);
        const int i = std::stoi(body.substr(6, len1));
        const std::string v = body.substr(6 + len1 + 4);
        if (i != static_cast<int>(rows) || v != std::string(1000, static_cast<char>('A' + i % 26))) ++bad;
    }
    CHECK(rows == 20000);
    CHECK(bad == 0);
    CHECK(frames.back().first == 'Z');

    // COPY FROM a 21 MB file through psql, then COPY TO: the same bytes.
    TempDir dir("pgrelay-bulk");
    const std::string in = dir.path() + "/in.tsv", out = dir.path() + "/out.tsv";
    {
        std::ofstream f(in);
        for (int i = 1; i <= 200000; ++i) f << i << '\t' << std::string(100, static_cast<char>('a' + i % 26)) << '\n';
    }
    const std::string psql = "psql -X -q -v ON_ERROR_STOP=1 '" + relay.conninfo(relay.rw_port(), "scramuser", "scrampass") + "' ";
    std::string output;
    REQUIRE(run_command(psql + "-c 'DROP TABLE IF EXISTS bulk_t' -c 'CREATE TABLE bulk_t (i int, v text)'", &output) == 0);
    INFO(output);
    REQUIRE(run_command(psql + "-c \"\\copy bulk_t from '" + in + "'\"", &output) == 0);
    REQUIRE(run_command(psql + "-c \"\\copy bulk_t to '" + out + "'\"", &output) == 0);
    CHECK(slurp(out) == slurp(in));
    PgConn c = pg_connect(relay.conninfo(relay.rw_port(), "scramuser", "scrampass"));
    REQUIRE(c.ok());
    CHECK(query_value(c.conn, "SELECT count(*) || ' ' || sum(i) || ' ' || sum(length(v)) FROM bulk_t") ==
          "200000 20000100000 20000000");
    exec(c.conn, "DROP TABLE bulk_t");
    CHECK(relay.running());
}
