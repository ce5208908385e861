// pgrelay --convert-pgbouncer (proxy/convert_pgbouncer.hpp): PgBouncer ini in,
// pgrelay.toml out. Every converted text must load with parse_config (what
// --check-config runs); what has no equivalent must show up as a note naming
// the key; unparseable input must fail with the line.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "proxy/config.hpp"
#include "proxy/convert_pgbouncer.hpp"

using namespace std::chrono_literals;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;
using pgrelay::convert_pgbouncer;
using pgrelay::ConvertResult;
using pgrelay::PoolMode;
using pgrelay::topology::Role;

namespace {

// A readable auth_file: pooled modes need one, and parse_config checks it.
const std::string& auth_file() {
    static const std::string path = [] {
        const std::string p = (std::filesystem::temp_directory_path() /
                               ("pgrelay-convert-userlist-" + std::to_string(::getpid()) + ".txt"))
                                  .string();
        std::ofstream(p) << "\"alice\" \"md5e8b1c1d5e4bd7fb7d0f3b8e3d1b1a6d2\"\n";
        return p;
    }();
    return path;
}

ConvertResult convert(const std::string& ini) { return convert_pgbouncer(ini, "test.ini"); }

pgrelay::Config load(const ConvertResult& r) {
    INFO(r.toml);
    REQUIRE(r.ok);
    try {
        return pgrelay::parse_config(r.toml, "converted.toml");
    } catch (const pgrelay::ConfigError& e) {
        FAIL("converted config rejected: " << e.describe() << "\n" << r.toml);
    }
    return {};
}

// The note whose key contains `key` (and whose reason contains `why`), or null.
const pgrelay::ConvertNote* find_note(const ConvertResult& r, const std::string& key, const std::string& why = "") {
    for (const auto& n : r.notes)
        if (n.key.find(key) != std::string::npos && n.why.find(why) != std::string::npos) return &n;
    return nullptr;
}

std::string all_notes(const ConvertResult& r) {
    std::string s;
    for (const auto& n : r.notes) s += n.describe() + "\n";
    return s;
}

std::string base(const std::string& pgbouncer_extra = "", const std::string& databases = "* = host=10.0.0.5 port=5433\n") {
    return "[databases]\n" + databases + "[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = 6432\nauth_file = " +
           auth_file() + "\n" + pgbouncer_extra;
}

}  // namespace

TEST_CASE("convert: a small PgBouncer file becomes a valid pgrelay config", "[convert]") {
    const auto r = convert(
        "[databases]\n"
        "* = host=10.0.0.5 port=5433\n"
        "[pgbouncer]\n"
        "listen_addr = 0.0.0.0\n"
        "listen_port = 7000\n"
        "auth_file = " + auth_file() + "\n"
        "pool_mode = transaction\n"
        "default_pool_size = 30\n"
        "max_client_conn = 500\n"
        "admin_users = admin, ops\n");
    INFO(all_notes(r));
    REQUIRE(r.ok);
    CHECK_THAT(r.toml, StartsWith("# pgrelay configuration converted from the PgBouncer configuration\n# test.ini "));
    const auto c = load(r);
    CHECK(c.rw.enabled);
    CHECK(c.rw.host == "0.0.0.0");
    CHECK(c.rw.port == 7000);
    CHECK_FALSE(c.ro.enabled);
    CHECK(c.pool_rw.mode == PoolMode::Transaction);
    CHECK(c.pool_rw.pool_size == 30);
    CHECK(c.pool_rw.auth_file == auth_file());
    CHECK(c.max_client_connections == 500);
    CHECK(c.pool_rw.admin_users == std::vector<std::string>{"admin", "ops"});
    CHECK(c.topology_source == "static");
    REQUIRE(c.static_members.size() == 1);
    CHECK(c.static_members[0].host == "10.0.0.5");
    CHECK(c.static_members[0].port == 5433);
    CHECK(c.static_members[0].role == Role::Primary);
    // The ro port's absence is explained in the output itself.
    CHECK_THAT(r.toml, Contains("PgBouncer has no read-only port"));
    CHECK(r.notes.empty());
}

TEST_CASE("convert: PgBouncer's defaults are written where pgrelay's differ", "[convert]") {
    const auto c = load(convert(base()));
    CHECK(c.pool_rw.mode == PoolMode::Session);  // PgBouncer's default pool_mode
    CHECK(c.max_client_connections == 100);
    CHECK(c.connect_timeout == 15s);
    CHECK(c.startup_timeout == 60s);
    CHECK(c.pool_rw.server_lifetime == 3600s);
    CHECK(c.pool_rw.server_idle_timeout == 600s);
    CHECK(c.pool_rw.query_wait_timeout == 120s);
    CHECK(c.pool_rw.server_reset_query == "DISCARD ALL");
}

TEST_CASE("convert: seconds become pgrelay durations", "[convert]") {
    const auto r = convert(base(
        "server_idle_timeout = 0.5\n"
        "server_lifetime = 7200\n"
        "query_wait_timeout = 0\n"
        "client_idle_timeout = 45\n"
        "server_connect_timeout = 3\n"
        "client_login_timeout = 1.25\n"
        "tcp_keepidle = 30\n"
        "tcp_keepintvl = 5\n"
        "tcp_keepcnt = 4\n"));
    INFO(all_notes(r));
    const auto c = load(r);
    CHECK(c.pool_rw.server_idle_timeout == 500ms);
    CHECK(c.pool_rw.server_lifetime == 120min);
    CHECK(c.pool_rw.query_wait_timeout == 0ms);
    CHECK(c.idle_client_timeout == 45s);
    CHECK(c.connect_timeout == 3s);
    CHECK(c.startup_timeout == 1250ms);
    CHECK(c.keepalive_idle == 30s);
    CHECK(c.keepalive_interval == 5s);
    CHECK(c.keepalive_count == 4u);
    CHECK_THAT(r.toml, Contains("server_idle_timeout = \"500ms\""));
    CHECK_THAT(r.toml, Contains("server_lifetime = \"120m\""));
    CHECK(r.notes.empty());
}

TEST_CASE("convert: zero and too long times are reported", "[convert]") {
    const auto r = convert(base("server_lifetime = 0\nserver_idle_timeout = 200000\nserver_connect_timeout = 0\n"
                                "client_login_timeout = soon\n"));
    const auto c = load(r);
    // PgBouncer's 0 is "use once", pgrelay's "never": not carried over.
    CHECK(c.pool_rw.server_lifetime == 60min);
    REQUIRE(find_note(r, "server_lifetime", "use each server connection once"));
    CHECK(find_note(r, "server_lifetime")->value == "0");
    CHECK(c.pool_rw.server_idle_timeout == 24h);
    CHECK(find_note(r, "server_idle_timeout", "24 hours"));
    CHECK(c.connect_timeout == 5s);
    CHECK(find_note(r, "server_connect_timeout", "above 0"));
    CHECK(c.startup_timeout == 10s);
    CHECK(find_note(r, "client_login_timeout", "not a time"));
}

TEST_CASE("convert: pool modes", "[convert]") {
    SECTION("statement becomes transaction") {
        const auto r = convert(base("pool_mode = statement\n"));
        CHECK(load(r).pool_rw.mode == PoolMode::Transaction);
        CHECK(find_note(r, "[pgbouncer] pool_mode", "no statement mode"));
    }
    SECTION("session") {
        const auto r = convert(base("pool_mode = session\n"));
        CHECK(load(r).pool_rw.mode == PoolMode::Session);
        CHECK(r.notes.empty());
    }
    SECTION("an unknown mode stays session") {
        const auto r = convert(base("pool_mode = bogus\n"));
        CHECK(load(r).pool_rw.mode == PoolMode::Session);
        CHECK(find_note(r, "pool_mode", "not a PgBouncer pool_mode"));
    }
    SECTION("no auth_file nor auth_user: passthrough") {
        const auto r = convert("[databases]\n* = host=db1\n[pgbouncer]\nlisten_addr = 127.0.0.1\n"
                               "pool_mode = transaction\nauth_type = trust\n");
        CHECK(load(r).pool_rw.mode == PoolMode::Passthrough);
        CHECK(find_note(r, "pool_mode", "passthrough"));
        CHECK(find_note(r, "auth_type", "trust"));
    }
    SECTION("auth_user and auth_query carry over, a database's auth_user too") {
        auto r = convert(base("auth_user = pgb\nauth_query = SELECT usename, passwd FROM pg_shadow WHERE usename=$1\n"));
        auto c = load(r);
        CHECK(c.pool_rw.auth_user == "pgb");
        CHECK(c.pool_rw.auth_query == "SELECT usename, passwd FROM pg_shadow WHERE usename=$1");
        r = convert(base("", "app = host=db1 auth_user=lookup\n"));
        c = load(r);
        CHECK(c.pool_rw.auth_user == "lookup");
    }
}

TEST_CASE("convert: settings without an equivalent become notes", "[convert]") {
    const auto r = convert(base(
        "logfile = /var/log/pgbouncer.log\n"
        "pidfile = /run/pgbouncer.pid\n"
        "unix_socket_dir = /var/run/postgresql\n"
        "so_reuseport = 0\n"          // PgBouncer's default: nothing to report
        "log_connections = 1\n"       // likewise
        "stats_users = stats\n"
        "reserve_pool_size = 5\n"
        "idle_transaction_timeout = 60\n"
        "application_name_add_host = 1\n"
        "dns_max_ttl = 30\n"
        "frobnicate = yes\n"
        "auth_type = hba\n"
        "auth_hba_file = /etc/pgbouncer/hba.conf\n"
        "[users]\n"
        "alice = pool_mode=session max_user_connections=10\n"
        "[nonsense]\n"
        "a = b\n"));
    INFO(all_notes(r));
    load(r);
    for (const char* key : {"logfile", "pidfile", "unix_socket_dir", "stats_users", "reserve_pool_size",
                            "idle_transaction_timeout", "application_name_add_host", "dns_max_ttl", "auth_type",
                            "auth_hba_file", "[users] alice", "[nonsense]"}) {
        INFO(key);
        CHECK(find_note(r, key));
    }
    CHECK(find_note(r, "frobnicate", "not a PgBouncer setting"));
    CHECK(find_note(r, "logfile")->value == "/var/log/pgbouncer.log");
    CHECK(find_note(r, "logfile")->line == 7);
    CHECK_FALSE(find_note(r, "so_reuseport"));
    CHECK_FALSE(find_note(r, "log_connections"));
    // One line per note, in the order of the file.
    CHECK(find_note(r, "logfile")->describe() ==
          "test.ini:7: [pgbouncer] logfile = /var/log/pgbouncer.log: pgrelay writes no log file: it logs to standard "
          "error (the systemd journal)");
    for (size_t i = 1; i < r.notes.size(); ++i) CHECK(r.notes[i - 1].line <= r.notes[i].line);
}

TEST_CASE("convert: comments blank lines and CRLF", "[convert]") {
    const auto r = convert(
        ";; PgBouncer configuration\r\n"
        "# another comment\r\n"
        "\r\n"
        "[databases]\r\n"
        "   ; indented comment\r\n"
        ";foodb = host=commented.out\r\n"
        "* = host=10.1.1.1\r\n"
        "[pgbouncer]\r\n"
        "  listen_addr = 127.0.0.2   \r\n"
        "#logfile = /var/log/x.log\r\n"
        "auth_file = " + auth_file() + "\r\n");
    INFO(all_notes(r));
    const auto c = load(r);
    CHECK(c.rw.host == "127.0.0.2");
    CHECK(c.rw.port == 6432);
    REQUIRE(c.static_members.size() == 1);
    CHECK(c.static_members[0].host == "10.1.1.1");
    CHECK(c.static_members[0].port == 5432);
    CHECK(r.notes.empty());
}

TEST_CASE("convert: the fallback database and named ones", "[convert]") {
    const auto r = convert(base("",
                                "app = host=10.0.0.5 port=5433 dbname=app_prod user=svc password='s3 cr\\'et' pool_size=50\n"
                                "* = host=10.0.0.5 port=5433\n"
                                "other = host=10.9.9.9 dbname=other\n"
                                "\"odd name\" = host=10.0.0.5 port=5433 connect_query='SELECT 1'\n"));
    INFO(all_notes(r));
    const auto c = load(r);
    // The cluster is the '*' entry's.
    REQUIRE(c.static_members.size() == 1);
    CHECK(c.static_members[0].host == "10.0.0.5");
    CHECK(find_note(r, "[databases] app", "aliases"));
    CHECK(find_note(r, "[databases] app", "forced server login"));
    CHECK(find_note(r, "[databases] app", "per-database"));
    CHECK(find_note(r, "[databases] other", "one cluster"));
    CHECK(find_note(r, "[databases] odd name", "no query"));
    // dbname equal to the entry's name is no alias.
    CHECK_FALSE(find_note(r, "[databases] other", "aliases"));
    // Secrets never reach standard error.
    for (const auto& n : r.notes) CHECK(n.describe().find("s3 cr") == std::string::npos);
    REQUIRE(find_note(r, "[databases] app", "forced"));
    CHECK(all_notes(r).find("password=***") != std::string::npos);
}

TEST_CASE("convert: several hosts become a static member list", "[convert]") {
    const auto r = convert(base("", "* = host=pg-a,pg-b,pg-c port=5432,5433,5434\n"));
    INFO(all_notes(r));
    const auto c = load(r);
    REQUIRE(c.static_members.size() == 3);
    CHECK(c.static_members[0].host == "pg-a");
    CHECK(c.static_members[0].port == 5432);
    CHECK(c.static_members[0].role == Role::Primary);
    CHECK(c.static_members[1].host == "pg-b");
    CHECK(c.static_members[1].port == 5433);
    CHECK(c.static_members[1].role == Role::Replica);
    CHECK(c.static_members[2].port == 5434);
    CHECK(c.static_members[2].role == Role::Replica);
    CHECK(find_note(r, "[databases] *", "fixed primary"));

    // One port for every host; a repeated host is one member.
    const auto r2 = convert(base("", "* = host=pg-a,pg-b,pg-a port=6000\n"));
    const auto c2 = load(r2);
    REQUIRE(c2.static_members.size() == 2);
    CHECK(c2.static_members[1].port == 6000);
}

TEST_CASE("convert: Unix sockets become loopback TCP", "[convert]") {
    const auto r = convert("[databases]\nfoodb =\nbar = host=/var/run/postgresql port=5433\n"
                           "[pgbouncer]\nauth_file = " + auth_file() + "\n");
    INFO(all_notes(r));
    const auto c = load(r);
    REQUIRE(c.static_members.size() == 1);
    CHECK(c.static_members[0].host == "127.0.0.1");
    CHECK(c.static_members[0].port == 5432);
    CHECK(find_note(r, "[databases] foodb", "Unix socket"));
    CHECK(find_note(r, "[databases] bar", "Unix socket"));
    // No listen_addr: PgBouncer listened on its socket only.
    CHECK(c.rw.host == "127.0.0.1");
    CHECK(find_note(r, "listen_addr", "Unix socket"));
}

TEST_CASE("convert: no database entry gives a placeholder member", "[convert]") {
    const auto r = convert("[databases]\n[pgbouncer]\nlisten_addr = localhost\nauth_file = " + auth_file() + "\n");
    const auto c = load(r);
    REQUIRE(c.static_members.size() == 1);
    CHECK(c.static_members[0].host == "127.0.0.1");
    CHECK(c.static_members[0].port == 5432);
    CHECK(find_note(r, "[databases]", "placeholder"));
    CHECK(c.rw.host == "127.0.0.1");
}

TEST_CASE("convert: listen addresses", "[convert]") {
    auto listen = [](const std::string& addr) {
        return convert("[databases]\n* = host=db\n[pgbouncer]\nlisten_addr = " + addr + "\nlisten_port = 6500\n");
    };
    auto r = listen("*");
    CHECK(load(r).rw.host == "0.0.0.0");
    CHECK(find_note(r, "listen_addr", "IPv6"));
    r = listen("::1");
    CHECK(load(r).rw.host == "::1");
    CHECK(load(r).rw.port == 6500);
    r = listen("10.0.0.1, 10.0.0.2");
    CHECK(load(r).rw.host == "10.0.0.1");
    CHECK(find_note(r, "listen_addr", "one address"));
    r = listen("proxy.example.com");
    CHECK(load(r).rw.host == "127.0.0.1");
    CHECK(find_note(r, "listen_addr", "host name"));
}

TEST_CASE("convert: TLS towards clients and servers", "[convert]") {
    auto r = convert(base("client_tls_sslmode = verify-full\n"
                          "client_tls_cert_file = /etc/pgbouncer/server.crt\n"
                          "client_tls_key_file = /etc/pgbouncer/server.key\n"
                          "client_tls_ca_file = /etc/pgbouncer/ca.crt\n"
                          "client_tls_protocols = tlsv1.3\n"
                          "client_tls_ciphers = fast\n"
                          "server_tls_sslmode = verify-ca\n"
                          "server_tls_ca_file = /etc/pgbouncer/pg-ca.crt\n"
                          "server_tls_cert_file = /etc/pgbouncer/client.crt\n"));
    INFO(all_notes(r));
    auto c = load(r);
    CHECK(c.tls.cert == "/etc/pgbouncer/server.crt");
    CHECK(c.tls.key == "/etc/pgbouncer/server.key");
    CHECK(c.tls.client_ca == "/etc/pgbouncer/ca.crt");
    CHECK(c.tls.client == pgrelay::Config::ClientTls::Require);
    CHECK(c.tls.tls13_only);
    CHECK(find_note(r, "client_tls_ciphers", "alias"));
    CHECK(c.backend_tls == pgrelay::Config::BackendTls::VerifyCa);
    CHECK(c.backend_tls_ca == "/etc/pgbouncer/pg-ca.crt");
    CHECK(find_note(r, "server_tls_cert_file", "client certificate"));

    r = convert(base("client_tls_sslmode = require\nserver_tls_sslmode = allow\n"));
    c = load(r);
    CHECK_FALSE(c.tls.enabled());
    CHECK(find_note(r, "client_tls_sslmode", "client_tls_cert_file"));
    CHECK(c.backend_tls == pgrelay::Config::BackendTls::Prefer);
    CHECK(find_note(r, "server_tls_sslmode", "allow"));
}

TEST_CASE("convert: limits and peers", "[convert]") {
    auto r = convert(base("default_pool_size = 10\nmin_pool_size = 15\nmax_db_connections = 40\n"
                          "max_packet_size = 100\npeer_id = 1\n"
                          "[peers]\n1 = host=10.0.0.11 port=6432\n2 = host=10.0.0.12\n3 = host=/tmp\n"));
    INFO(all_notes(r));
    auto c = load(r);
    CHECK(c.pool_rw.pool_size == 10);
    CHECK(c.pool_rw.min_pool_size == 0);
    CHECK(find_note(r, "min_pool_size", "above default_pool_size"));
    CHECK(c.pool_rw.max_db_connections == 40);
    CHECK(c.max_frame_size == 8192);
    CHECK(find_note(r, "max_packet_size", "range"));
    CHECK(c.instance.id == "1");
    REQUIRE(c.instance.peers.size() == 1);
    CHECK(c.instance.peers[0].id == "2");
    CHECK(c.instance.peers[0].peer_address == "10.0.0.12:6432");
    CHECK(find_note(r, "[peers] 3", "Unix socket"));
}

TEST_CASE("convert: lines that do not parse fail with their line", "[convert]") {
    const std::map<std::string, std::string> bad = {
        {"this is not ini\n", "expected key = value"},
        {"[databases\n", "section header"},
        {"[databases] extra\n", "section header"},
        {"key with space = 1\n", "expected key = value"},
        {"* = host='unterminated\n", "unterminated quote"},
        {"* = host\n", "expected key=value"},
        {"\"quoted = host=x\n", "unterminated quoted name"},
    };
    for (const auto& [line, why] : bad) {
        INFO(line);
        const auto r = convert("[databases]\n" + line + "[pgbouncer]\nlisten_addr = 127.0.0.1\n");
        CHECK_FALSE(r.ok);
        CHECK(r.toml.empty());
        bool found = false;
        for (const auto& n : r.notes)
            found = found || (n.error && n.line == 2 && n.why.find(why) != std::string::npos);
        CHECK(found);
    }
    const auto r = convert("listen_port = 6432\n[databases]\n");
    CHECK_FALSE(r.ok);
    REQUIRE_FALSE(r.notes.empty());
    CHECK(r.notes[0].line == 1);
    CHECK_THAT(r.notes[0].describe(), StartsWith("test.ini:1: error: 'listen_port' is outside any [section]"));
}

TEST_CASE("convert: include files", "[convert]") {
    std::map<std::string, std::string> files = {
        {"dbs.ini", "[databases]\n* = host=10.2.2.2 port=5440\n"},
        {"loop.ini", "%include loop.ini\n"},
    };
    auto reader = [&](const std::string& path) -> std::optional<std::string> {
        auto it = files.find(path);
        if (it == files.end()) return std::nullopt;
        return it->second;
    };
    auto r = convert_pgbouncer("%include dbs.ini\n[pgbouncer]\nauth_file = " + auth_file() + "\nlogfile = /x.log\n",
                               "main.ini", reader);
    INFO(all_notes(r));
    auto c = load(r);
    REQUIRE(c.static_members.size() == 1);
    CHECK(c.static_members[0].port == 5440);
    CHECK_THAT(r.toml, Contains("main.ini"));
    CHECK(find_note(r, "logfile")->file == "main.ini");

    r = convert_pgbouncer("[pgbouncer]\n%include missing.ini\n", "main.ini", reader);
    CHECK_FALSE(r.ok);
    REQUIRE_FALSE(r.notes.empty());
    CHECK_THAT(r.notes[0].describe(), Contains("main.ini:2: error: %include missing.ini: cannot read the file"));

    r = convert_pgbouncer("%include loop.ini\n", "main.ini", reader);
    CHECK_FALSE(r.ok);
    CHECK_THAT(all_notes(r), Contains("include loop"));

    // Without a reader every %include fails.
    CHECK_FALSE(convert("%include dbs.ini\n").ok);
}

TEST_CASE("convert: a file that cannot be read", "[convert]") {
    const auto r = pgrelay::convert_pgbouncer_file("/nonexistent/pgbouncer.ini");
    CHECK_FALSE(r.ok);
    REQUIRE(r.notes.size() == 1);
    CHECK(r.notes[0].error);
    CHECK(r.notes[0].describe() == "/nonexistent/pgbouncer.ini: error: cannot read the file");
    CHECK_FALSE(pgrelay::convert_pgbouncer_file(std::filesystem::temp_directory_path().string()).ok);
}
