// Operations, black-box: the admin endpoints (/metrics parsed by promtool,
// /health, /topology), SIGHUP reload (a weight change takes effect without
// dropping sessions; a broken file keeps the old config) and SIGTERM draining.
#include <catch2/catch.hpp>

#include <signal.h>

#include <fstream>
#include <regex>
#include <thread>

#include "fixtures.hpp"

using namespace pgrelay::test;
using namespace std::chrono_literals;

namespace {

std::string ro_port_of(Pgrelay& relay) {
    PgConn c = pg_connect(relay.conninfo(relay.ro_port(), "md5user", "md5pass"));
    if (!c.ok()) return "error " + c.sqlstate;
    return query_value(c.conn, "SELECT inet_server_port()");
}

// Value of one sample line "name{labels} value" in a /metrics body, or -1.
double sample(const std::string& body, const std::string& name_and_labels) {
    const auto at = body.find("\n" + name_and_labels + " ");
    if (at == std::string::npos) return -1;
    return std::stod(body.substr(at + name_and_labels.size() + 2));
}

bool promtool_accepts(const std::string& body, std::string& report) {
    char path[] = "/tmp/pgrelay-metrics-XXXXXX";
    const int fd = mkstemp(path);
    ::close(fd);
    std::ofstream(path) << body;
    const int rc = run_command(std::string("promtool check metrics < ") + path, &report);
    ::unlink(path);
    return rc == 0;
}

}  // namespace

TEST_CASE("/metrics moves during a pgbench run and is valid Prometheus text", "[ops]") {
    auto& cluster = PgCluster::shared();
    Pgrelay relay(cluster);
    const std::string primary = cluster.primary().name;
    auto [st0, before] = relay.http_get("/metrics");
    REQUIRE(st0 == 200);

    const std::string conn = "-h 127.0.0.1 -p " + std::to_string(relay.rw_port()) + " -U scramuser postgres";
    std::string out;
    REQUIRE(run_command("PGPASSWORD=scrampass pgbench -i -q -s 1 " + conn, &out) == 0);
    std::string during;
    std::thread scraper([&] {
        std::this_thread::sleep_for(1500ms);
        during = relay.http_get("/metrics").second;
    });
    const int rc = run_command("PGPASSWORD=scrampass pgbench -n -c 4 -j 2 -T 3 " + conn, &out);
    scraper.join();
    REQUIRE(rc == 0);
    // pgbench has exited; pgrelay notices each close right after.
    std::string after;
    CHECK(eventually(
        [&] {
            after = relay.http_get("/metrics").second;
            return sample(after, "pgrelay_client_connections{port=\"rw\"}") == 0;
        },
        10s));

    const std::string rw_member = "{port=\"rw\",member=\"" + primary + "\"}";
    INFO(after);
    // Open client connections were visible mid-run (4 pgbench clients).
    CHECK(sample(during, "pgrelay_client_connections{port=\"rw\"}") >= 4);
    CHECK(sample(after, "pgrelay_queries_total" + rw_member) > 100);
    CHECK(sample(after, "pgrelay_transactions_total" + rw_member) > 10);
    CHECK(sample(during, "pgrelay_queries_total" + rw_member) < sample(after, "pgrelay_queries_total" + rw_member));
    CHECK(sample(after, "pgrelay_client_bytes_sent_total" + rw_member) > 1000);
    CHECK(sample(after, "pgrelay_client_bytes_received_total" + rw_member) > 1000);
    CHECK(sample(after, "pgrelay_query_seconds_count{port=\"rw\"}") ==
          sample(after, "pgrelay_queries_total" + rw_member));
    CHECK(sample(after, "pgrelay_backend_connections_total" + rw_member) >= 5);
    CHECK(sample(after, "pgrelay_primary_available") == 1);
    CHECK(sample(after, "pgrelay_member_is_primary{member=\"" + primary + "\",role=\"primary\"}") == 1);

    // An error from the backend and one of pgrelay's own are counted by SQLSTATE.
    PgConn c = pg_connect(relay.conninfo(relay.rw_port(), "md5user", "md5pass"));
    REQUIRE(c.ok());
    CHECK_THROWS(exec(c.conn, "SELECT * FROM no_such_table"));
    RawClient bad(relay.rw_port());
    bad.send(std::string("\x00\x00\x00\x04", 4));
    bad.read_all(3s);
    const std::string last = relay.http_get("/metrics").second;
    CHECK(sample(last, "pgrelay_errors_total{origin=\"backend\",sqlstate=\"42P01\"}") >= 1);
    CHECK(sample(last, "pgrelay_errors_total{origin=\"pgrelay\",sqlstate=\"08P01\"}") >= 1);

    std::string report;
    CHECK(promtool_accepts(last, report));
    INFO(report);
    CHECK(promtool_accepts(during, report));
}

TEST_CASE("/health, /health/ro and /topology tell what pgrelay can route", "[ops]") {
    auto& cluster = PgCluster::shared();
    Pgrelay relay(cluster);
    auto [hs, hb] = relay.http_get("/health");
    CHECK(hs == 200);
    CHECK_THAT(hb, Catch::Contains(cluster.primary().name));
    CHECK(relay.http_get("/health/ro").first == 200);
    auto [ts, tb] = relay.http_get("/topology");
    CHECK(ts == 200);
    CHECK_THAT(tb, Catch::Contains("\"primary\":\"" + cluster.primary().name + "\""));
    for (const auto& r : cluster.replicas()) CHECK_THAT(tb, Catch::Contains("\"name\":\"" + r.name + "\""));
    CHECK(relay.http_get("/nope").first == 404);
}

TEST_CASE("GET / serves the status page with a strict CSP and /topology has what it shows", "[ops]") {
    auto& cluster = PgCluster::shared();
    Pgrelay relay(cluster);
    RawClient c(relay.admin_port());
    REQUIRE(c.connected());
    c.send("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    const std::string resp = c.read_all(5s);
    const auto end = resp.find("\r\n\r\n");
    REQUIRE(end != std::string::npos);
    const std::string head = resp.substr(0, end), body = resp.substr(end + 4);
    INFO(head);
    CHECK(head.rfind("HTTP/1.1 200", 0) == 0);
    CHECK_THAT(head, Catch::Contains("Content-Type: text/html; charset=utf-8"));
    CHECK_THAT(head, Catch::Contains("Content-Security-Policy: default-src 'none'; script-src 'sha256-"));
    CHECK_THAT(head, Catch::Contains("connect-src 'self'"));
    CHECK_THAT(body, Catch::Contains("<!DOCTYPE html>") && Catch::Contains("id=\"leader\""));
    CHECK_THAT(body, !Catch::Contains("http://") && !Catch::Contains("https://"));
    CHECK(relay.http_get("/status").first == 200);

    // The page's data: the first snapshot is in the changes, eligibility per
    // port with reasons, backends and client connections.
    PgConn held = pg_connect(relay.conninfo(relay.rw_port(), "md5user", "md5pass"));
    REQUIRE(held.ok());
    std::string topo;
    CHECK(eventually(
        [&] {
            topo = relay.http_get("/topology").second;
            return topo.find("\"backends\":{\"rw\":1") != std::string::npos;
        },
        5s));
    INFO(topo);
    CHECK_THAT(topo, Catch::Contains("\"changes\":[{\"at\":\""));
    CHECK_THAT(topo, Catch::Contains("first topology from static: rw " + cluster.primary().name));
    CHECK_THAT(topo, Catch::Contains("\"rw_eligible\":true"));
    CHECK_THAT(topo, Catch::Contains("\"rw_excluded_because\":\""));
    CHECK_THAT(topo, Catch::Contains("\"is_leader\":true"));
    CHECK_THAT(topo, Catch::Contains("\"connections\":{\"rw\":{\"clients\":1"));
    CHECK_THAT(topo, Catch::Contains("\"generated_at_unix_ms\":"));
}

TEST_CASE("SIGHUP: a new weight changes routing without dropping open sessions; a broken file changes nothing",
          "[ops]") {
    auto& cluster = PgCluster::shared();
    const auto replicas = cluster.replicas();
    Pgrelay relay(cluster);
    PgConn open_rw = pg_connect(relay.conninfo(relay.rw_port(), "md5user", "md5pass"));
    PgConn open_ro = pg_connect(relay.conninfo(relay.ro_port(), "md5user", "md5pass"));
    REQUIRE(open_rw.ok());
    REQUIRE(open_ro.ok());
    exec(open_rw.conn, "BEGIN");  // a session inside a transaction survives too

    relay.reload("weights = { " + replicas[0].name + " = 3, " + replicas[1].name + " = 1 }");
    REQUIRE(eventually([&] { return relay.log().find("reload: configuration") != std::string::npos; }, 10s));
    std::map<std::string, int> hits;
    for (int i = 0; i < 16; ++i) ++hits[ro_port_of(relay)];
    CHECK(hits[std::to_string(replicas[0].port)] == 12);  // weighted round robin: 3 of every 4
    CHECK(hits[std::to_string(replicas[1].port)] == 4);
    CHECK(query_value(open_rw.conn, "SELECT 1") == "1");
    exec(open_rw.conn, "COMMIT");
    CHECK(query_value(open_ro.conn, "SELECT 1") == "1");

    // A broken file: logged, and the running configuration stays.
    relay.reload("weights = { " + replicas[0].name + " = 'heavy' }");
    REQUIRE(eventually([&] { return relay.log().find("keeping the running configuration") != std::string::npos; }, 10s));
    hits.clear();
    for (int i = 0; i < 8; ++i) ++hits[ro_port_of(relay)];
    CHECK(hits[std::to_string(replicas[0].port)] == 6);
    CHECK(query_value(open_ro.conn, "SELECT 1") == "1");
    CHECK(relay.running());
}

TEST_CASE("SIGTERM drains: new sessions get 57P03, open ones finish and can be cancelled, the rest get 57P01 after "
          "shutdown_grace",
          "[ops]") {
    auto& cluster = PgCluster::shared();
    {
        Pgrelay relay(cluster);
        PgConn open = pg_connect(relay.conninfo(relay.rw_port(), "md5user", "md5pass"));
        REQUIRE(open.ok());
        RawSession running = md5_login(relay.rw_port(), "md5user", "md5pass");
        REQUIRE(running.error.empty());
        relay.signal(SIGTERM);
        // As PostgreSQL shutting down: the port answers, new sessions get
        // 57P03 (libpq 14+ moves on to its next host), /health says 503.
        REQUIRE(eventually([&] { return relay.http_get("/health").first == 503; }, 5s));
        PgConn late = pg_connect(relay.conninfo(relay.rw_port(), "md5user", "md5pass"));
        CHECK_FALSE(late.ok());
        CHECK(late.sqlstate == "57P03");
        CHECK_THAT(late.error, Catch::Contains("shutting down"));
        CHECK(query_value(open.conn, "SELECT 42") == "42");  // still served
        // ... and a running query can still be cancelled.
        RawLogin r;
        r.client = std::move(running.client);
        r.pid = running.pid;
        r.secret = std::string(4, '\0');
        for (int i = 0; i < 4; ++i) r.secret[i] = static_cast<char>(static_cast<uint32_t>(running.secret) >> (24 - 8 * i));
        const auto err = cancel_running_query(r, "127.0.0.1", relay.rw_port(), cancel_request(r.pid, r.secret));
        REQUIRE(err);
        CHECK(err->sqlstate == "57014");
        r.client.reset();
        PQfinish(open.conn);
        open.conn = nullptr;
        CHECK(relay.wait_exit(10s) == 0);  // exits once the last session is gone
    }
    {
        PgrelayOptions o;
        o.extra_server = "shutdown_grace = \"1s\"";
        Pgrelay relay(cluster, o);
        RawSession s = md5_login(relay.rw_port(), "md5user", "md5pass");
        REQUIRE(s.error.empty());
        relay.signal(SIGTERM);
        const auto err = first_error(s.client->read_all(10s));
        REQUIRE(err);
        CHECK(err->sqlstate == "57P01");
        CHECK_THAT(err->message, Catch::Contains("shutting down"));
        CHECK(relay.wait_exit(10s) == 0);
    }
}

TEST_CASE("static instance peers without a DCS: cancel across instances, /topology and /metrics list the peers",
          "[ops][instances]") {
    auto& cluster = PgCluster::shared();
    const uint16_t rw = free_port(), ro = free_port(), admin = free_port();
    auto options = [&](const std::string& host, const std::string& id, const std::string& peers) {
        PgrelayOptions o;
        o.listen_host = host;
        o.rw_port = rw;
        o.ro_port = ro;
        o.admin_port = admin;
        o.extra_sections = "[instance]\nid = \"" + id + "\"\npeers = [" + peers + "]\n";
        return o;
    };
    const std::string at1 = "\"a@127.0.0.1:" + std::to_string(rw) + "\"", at2 = "\"b@127.0.0.2:" + std::to_string(rw) + "\"";
    Pgrelay a(cluster, options("127.0.0.1", "a", at2));
    Pgrelay b(cluster, options("127.0.0.2", "b", at1));
    const auto [status, topo] = b.http_get("/topology");
    REQUIRE(status == 200);
    CHECK_THAT(topo, Catch::Contains("\"instance\":{\"id\":\"b\""));
    CHECK_THAT(topo, Catch::Contains("\"peers\":[{\"id\":\"a\",\"peer_address\":\"127.0.0.1:" + std::to_string(rw)));
    CHECK(b.metric("pgrelay_peers") == 1);
    CHECK(b.metric("pgrelay_peer_info{id=\"a\"") == 1);
    CHECK(b.metric("pgrelay_instance_info{id=\"b\"") == 1);

    // A session on a, its query cancelled through b.
    RawSession s = md5_login(rw, "md5user", "md5pass");  // 127.0.0.1: instance a
    REQUIRE(s.error.empty());
    REQUIRE(s.client->send(query_message("SELECT pg_sleep(30) /* static peers */")));
    std::this_thread::sleep_for(300ms);
    RawClient canceller(rw, "127.0.0.2");
    REQUIRE(canceller.send(cancel_request(s.pid, s.secret)));
    CHECK(canceller.read_all(10s).empty());
    const auto err = first_error(s.client->read_until([](const std::string& got) { return got.find('Z') != std::string::npos; }, 15s));
    REQUIRE(err);
    CHECK(err->sqlstate == "57014");
    CHECK(b.metric("pgrelay_cancel_requests_total{outcome=\"to_peer\"}") == 1);
    CHECK(a.metric("pgrelay_cancel_requests_total{outcome=\"forwarded\"}") == 1);

    // A key of no listed instance's tag is dropped where it lands.
    RawClient stray(rw, "127.0.0.2");
    REQUIRE(stray.send(cancel_request(0x7fff0001, 1)));
    stray.read_all(5s);
    CHECK(b.metric("pgrelay_cancel_requests_total{outcome=\"unknown_key\"}") == 1);
    CHECK(b.metric("pgrelay_cancel_requests_total{outcome=\"to_peer\"}") == 1);
}

TEST_CASE("a second pgrelay on the same ports refuses to start instead of sharing them", "[ops]") {
    auto& cluster = PgCluster::shared();
    Pgrelay relay(cluster);
    TempDir dir("pgrelay-second");
    const std::string cfg = dir.path() + "/second.toml";
    std::ofstream(cfg) << "[listen]\nrw = \"127.0.0.1:" << relay.rw_port() << "\"\n[admin]\nlisten = \"\"\n"
                       << "[topology]\n[[topology.members]]\nname = \"pg0\"\nhost = \"127.0.0.1\"\nport = "
                       << cluster.primary().port << "\nrole = \"primary\"\n";
    std::string out;
    const int rc = run_command(std::string("timeout 10 ") + PGRELAY_BINARY_PATH + " --config " + cfg, &out);
    CHECK(rc == 1);
    CHECK_THAT(out, Catch::Contains("cannot listen on rw port") && Catch::Contains("in use"));
    CHECK(relay.running());
}

TEST_CASE("max_client_connections: the next client gets 53300, open sessions are untouched", "[ops]") {
    auto& cluster = PgCluster::shared();
    PgrelayOptions o;
    o.extra_server = "max_client_connections = 2";
    Pgrelay relay(cluster, o);
    PgConn a = pg_connect(relay.conninfo(relay.rw_port(), "md5user", "md5pass"));
    PgConn b = pg_connect(relay.conninfo(relay.rw_port(), "md5user", "md5pass"));
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    PgConn c = pg_connect(relay.conninfo(relay.rw_port(), "md5user", "md5pass"));
    CHECK_FALSE(c.ok());
    CHECK(c.sqlstate == "53300");
    CHECK(query_value(a.conn, "SELECT 1") == "1");
    CHECK(query_value(b.conn, "SELECT 2") == "2");
    // The limit is per port: ro still has room.
    PgConn r = pg_connect(relay.conninfo(relay.ro_port(), "md5user", "md5pass"));
    CHECK(r.ok());
    // A slot freed is a slot available.
    PQfinish(a.conn);
    a.conn = nullptr;
    CHECK(eventually([&] { return pg_connect(relay.conninfo(relay.rw_port(), "md5user", "md5pass")).ok(); }, 10s));
}
