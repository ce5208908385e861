// Config loading: a full valid TOML config parses to the expected values; every
// kind of bad config raises ConfigError pointing at the offending line
// ("test.toml:<line>: ..."); parse_duration accepts ms/s/m/plain seconds only.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>

#include "proxy/config.hpp"

using namespace std::chrono_literals;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;
using pgrelay::ConfigError;
using pgrelay::parse_config;
using pgrelay::topology::Role;

namespace {

// Marks the offending line in the error-case texts (a TOML comment).
constexpr const char* kHere = "# <- here";

// 1-based number of the first line of `text` containing `needle`, 0 if none.
int line_of(const std::string& text, const std::string& needle) {
    const size_t pos = text.find(needle);
    if (pos == std::string::npos) return 0;
    int line = 1;
    for (size_t i = 0; i < pos; ++i)
        if (text[i] == '\n') ++line;
    return line;
}

// Parses `text`, requiring a ConfigError on the line marked kHere whose message
// contains `message_part`.
void require_error_at_marker(const std::string& text, const std::string& message_part) {
    const int want = line_of(text, kHere);
    REQUIRE(want > 0);
    INFO("config text:\n" << text);
    try {
        parse_config(text, "test.toml");
        FAIL("parse_config accepted the config");
    } catch (const ConfigError& e) {
        INFO("describe(): " << e.describe());
        CHECK(e.file == "test.toml");
        CHECK(e.line == want);
        CHECK_THAT(e.describe(), StartsWith("test.toml:" + std::to_string(want) + ":"));
        CHECK_THAT(std::string(e.what()), Contains(message_part));
    }
}

// A minimal valid config, for tests that add one thing to it.
const std::string kListen = "[listen]\nrw = \"127.0.0.1:6432\"\n";
const std::string kTopology =
    "[topology]\n"
    "[[topology.members]]\n"
    "name = \"pg1\"\n"
    "host = \"10.0.0.1\"\n"
    "role = \"primary\"\n";

const std::string kFullConfig = R"(# every key pgrelay knows
[server]
threads = 4
log_level = "warning"
connect_timeout = "250ms"
startup_timeout = "2m"
max_frame_size = 65536

[listen]
rw = "127.0.0.1:6432"
ro = "[::1]:6433"

[routing]
ro_fallback_to_primary = false
ro_balance = "least_conn"
max_replica_lag = 1048576
exclude = ["pg3"]
switchover_hold = "4s"

[routing.weights]
pg1 = 3
pg2 = 0

[topology]
source = "static"
health_check_interval = "5s"
health_check_timeout = 2

[[topology.members]]
name = "pg1"
host = "10.0.0.1"
port = 5433
role = "primary"

[[topology.members]]
name = "pg2"
host = "10.0.0.2"
role = "replica"
tags = ["nofailover", "noloadbalance"]

[[topology.members]]
name = "pg3"
host = "db3.internal"
port = 6543
role = "replica"
)";

}  // namespace

TEST_CASE("a full config parses to the expected values", "[config]") {
    const pgrelay::Config c = parse_config(kFullConfig, "test.toml");

    CHECK(c.path == "test.toml");
    CHECK(c.threads == 4);
    CHECK(c.effective_threads() == 4);
    CHECK(c.log_level == pgrelay::log::Level::Warning);
    CHECK(c.connect_timeout == 250ms);
    CHECK(c.startup_timeout == 120s);
    CHECK(c.max_frame_size == 65536);

    CHECK(c.rw.enabled);
    CHECK(c.rw.role == pgrelay::PortRole::ReadWrite);
    CHECK(c.rw.host == "127.0.0.1");
    CHECK(c.rw.port == 6432);
    CHECK(c.ro.enabled);
    CHECK(c.ro.role == pgrelay::PortRole::ReadOnly);
    CHECK(c.ro.host == "::1");
    CHECK(c.ro.port == 6433);

    CHECK_FALSE(c.routing.ro_fallback_to_primary);
    CHECK(c.routing.ro_balance == pgrelay::topology::Balance::LeastConn);
    CHECK(c.routing.max_replica_lag == 1048576);
    CHECK(c.switchover_hold == 4s);
    CHECK(c.weights == std::map<std::string, uint32_t>{{"pg1", 3}, {"pg2", 0}});
    CHECK(c.exclude == std::vector<std::string>{"pg3"});

    CHECK(c.topology_source == "static");
    CHECK(c.health_check_interval == 5s);
    CHECK(c.health_check_timeout == 2s);

    REQUIRE(c.static_members.size() == 3);
    const auto& m1 = c.static_members[0];
    CHECK(m1.name == "pg1");
    CHECK(m1.host == "10.0.0.1");
    CHECK(m1.port == 5433);
    CHECK(m1.role == Role::Primary);
    CHECK(m1.tags.empty());
    CHECK(m1.weight == 3);
    CHECK_FALSE(m1.excluded);

    const auto& m2 = c.static_members[1];
    CHECK(m2.name == "pg2");
    CHECK(m2.host == "10.0.0.2");
    CHECK(m2.port == 5432);  // default
    CHECK(m2.role == Role::Replica);
    CHECK(m2.tags == std::vector<std::string>{"nofailover", "noloadbalance"});
    CHECK(m2.has_tag("noloadbalance"));
    CHECK(m2.weight == 0);
    CHECK_FALSE(m2.excluded);

    const auto& m3 = c.static_members[2];
    CHECK(m3.name == "pg3");
    CHECK(m3.host == "db3.internal");
    CHECK(m3.port == 6543);
    CHECK(m3.role == Role::Replica);
    CHECK(m3.weight == 1);  // not in [routing.weights]
    CHECK(m3.excluded);
}

TEST_CASE("a minimal config gets the documented defaults", "[config]") {
    const pgrelay::Config c = parse_config(kListen + kTopology, "test.toml");
    CHECK(c.threads == 0);
    CHECK(c.effective_threads() >= 1);
    CHECK(c.log_level == pgrelay::log::Level::Info);
    CHECK(c.connect_timeout == 5s);
    CHECK(c.startup_timeout == 10s);
    CHECK(c.max_frame_size == (1u << 30));
    CHECK(c.rw.enabled);
    CHECK_FALSE(c.ro.enabled);
    CHECK(c.routing.ro_fallback_to_primary);
    CHECK(c.routing.ro_balance == pgrelay::topology::Balance::RoundRobin);
    CHECK(c.routing.max_replica_lag == (16ull << 20));
    CHECK(c.switchover_hold == 15s);
    CHECK(c.weights.empty());
    CHECK(c.exclude.empty());
    CHECK(c.topology_source == "static");
    CHECK(c.health_check_interval == 1s);
    CHECK(c.health_check_timeout == 1s);
    REQUIRE(c.static_members.size() == 1);
    CHECK(c.static_members[0].port == 5432);
    CHECK(c.static_members[0].weight == 1);
}

TEST_CASE("config value forms: plain-number durations, master role, ro-only, empty host", "[config]") {
    const std::string text = "[server]\n"
                             "connect_timeout = 3\n"
                             "startup_timeout = 1.5\n"
                             "[listen]\n"
                             "ro = \":6433\"\n"
                             "[topology]\n"
                             "health_check_interval = \"10\"\n"
                             "health_check_timeout = \"1min\"\n"
                             "[[topology.members]]\n"
                             "name = \"old\"\n"
                             "host = \"10.0.0.9\"\n"
                             "role = \"master\"\n";
    const pgrelay::Config c = parse_config(text, "test.toml");
    CHECK(c.connect_timeout == 3s);
    CHECK(c.startup_timeout == 1500ms);
    CHECK(c.health_check_interval == 10s);
    CHECK(c.health_check_timeout == 60s);
    CHECK_FALSE(c.rw.enabled);
    CHECK(c.ro.enabled);
    CHECK(c.ro.host == "0.0.0.0");
    CHECK(c.ro.port == 6433);
    REQUIRE(c.static_members.size() == 1);
    CHECK(c.static_members[0].role == Role::Primary);
}

TEST_CASE("config error: TOML syntax error", "[config]") {
    SECTION("unclosed table header") {
        require_error_at_marker("[listen]\nrw = \"127.0.0.1:6432\"\n\n[server # <- here\nthreads = 2\n" + kTopology, "");
    }
    SECTION("missing value") {
        require_error_at_marker(kListen + "[server]\nthreads = 2\nlog_level = # <- here\n" + kTopology, "");
    }
    SECTION("duplicate key") {
        require_error_at_marker(kListen + "[server]\nthreads = 2\nthreads = 3 # <- here\n" + kTopology, "");
    }
}

TEST_CASE("config error: unknown keys everywhere", "[config]") {
    SECTION("top level key") {
        require_error_at_marker("conect_timeout = \"5s\" # <- here\n" + kListen + kTopology, "unknown key 'conect_timeout'");
    }
    SECTION("top level table") {
        require_error_at_marker(kListen + "[sever] # <- here\nthreads = 2\n" + kTopology, "unknown key 'sever'");
    }
    SECTION("[server]") {
        require_error_at_marker(kListen + "[server]\nthreads = 2\nconect_timeout = \"5s\" # <- here\n" + kTopology,
                                "unknown key 'conect_timeout' in [server]");
    }
    SECTION("[listen]") {
        require_error_at_marker("[listen]\nrw = \"127.0.0.1:6432\"\nrd = \"127.0.0.1:6433\" # <- here\n" + kTopology,
                                "unknown key 'rd' in [listen]");
    }
    SECTION("[routing]") {
        require_error_at_marker(kListen + "[routing]\nro_fallback_to_primry = false # <- here\n" + kTopology,
                                "unknown key 'ro_fallback_to_primry' in [routing]");
    }
    SECTION("[topology]") {
        require_error_at_marker(kListen +
                                    "[topology]\nhelth_check_interval = \"1s\" # <- here\n"
                                    "[[topology.members]]\nname = \"pg1\"\nhost = \"h\"\nrole = \"primary\"\n",
                                "unknown key 'helth_check_interval' in [topology]");
    }
    SECTION("[[topology.members]]") {
        require_error_at_marker(kListen +
                                    "[topology]\n[[topology.members]]\nname = \"pg1\"\nhots = \"h\" # <- here\n"
                                    "role = \"primary\"\n",
                                "unknown key 'hots' in [[topology.members]]");
    }
}

TEST_CASE("config error: wrong types", "[config]") {
    SECTION("threads as a string") {
        require_error_at_marker(kListen + "[server]\nthreads = \"2\" # <- here\n" + kTopology, "'threads' must be an integer");
    }
    SECTION("bool as a string") {
        require_error_at_marker(kListen + "[routing]\nro_fallback_to_primary = \"yes\" # <- here\n" + kTopology,
                                "'ro_fallback_to_primary' must be true or false");
    }
    SECTION("listen address as a number") {
        require_error_at_marker("[listen]\nrw = 6432 # <- here\n" + kTopology, "'rw' must be a string");
    }
    SECTION("tags as a string") {
        require_error_at_marker(kListen + kTopology + "tags = \"noloadbalance\" # <- here\n", "'tags' must be an array");
    }
    SECTION("exclude containing a number") {
        require_error_at_marker(kListen + "[routing]\nexclude = [\"pg1\", 2] # <- here\n" + kTopology,
                                "'exclude' must contain only strings");
    }
    SECTION("[server] as a value") {
        require_error_at_marker("server = 1 # <- here\n" + kListen + kTopology, "'server' must be a table");
    }
    SECTION("weight as a string") {
        require_error_at_marker(kListen + "[routing.weights]\npg1 = \"2\" # <- here\n" + kTopology,
                                "weight of 'pg1' must be an integer 0..1000");
    }
}

TEST_CASE("config error: out of range numbers", "[config]") {
    SECTION("member port above 65535") {
        require_error_at_marker(kListen + kTopology + "port = 70000 # <- here\n", "'port' = 70000 is out of range");
    }
    SECTION("member port 0") {
        require_error_at_marker(kListen + kTopology + "port = 0 # <- here\n", "'port' = 0 is out of range");
    }
    SECTION("listen port above 65535") {
        require_error_at_marker("[listen]\nrw = \"127.0.0.1:70000\" # <- here\n" + kTopology, "port must be 1..65535");
    }
    SECTION("listen port 0") {
        require_error_at_marker("[listen]\nrw = \"127.0.0.1:0\" # <- here\n" + kTopology, "port must be 1..65535");
    }
    SECTION("listen port not a number") {
        require_error_at_marker("[listen]\nrw = \"127.0.0.1:pg\" # <- here\n" + kTopology, "port must be 1..65535");
    }
    SECTION("threads above 256") {
        require_error_at_marker(kListen + "[server]\nthreads = 257 # <- here\n" + kTopology, "out of range [0, 256]");
    }
    SECTION("max_frame_size below 8192") {
        require_error_at_marker(kListen + "[server]\nmax_frame_size = 100 # <- here\n" + kTopology, "out of range");
    }
    SECTION("weight above 1000") {
        require_error_at_marker(kListen + "[routing.weights]\npg1 = 1001 # <- here\n" + kTopology, "0..1000");
    }
    SECTION("negative max_replica_lag") {
        require_error_at_marker(kListen + "[routing]\nmax_replica_lag = -1 # <- here\n" + kTopology, "out of range");
    }
}

TEST_CASE("config error: bad values", "[config]") {
    SECTION("duration with an unknown unit") {
        require_error_at_marker(kListen + "[server]\nconnect_timeout = \"5 parsecs\" # <- here\n" + kTopology,
                                "'connect_timeout' must be a duration");
    }
    SECTION("negative duration") {
        require_error_at_marker(kListen + "[topology]\nhealth_check_timeout = -1 # <- here\n"
                                          "[[topology.members]]\nname = \"pg1\"\nhost = \"h\"\nrole = \"primary\"\n",
                                "'health_check_timeout' must be a duration");
    }
    SECTION("zero connect_timeout") {
        require_error_at_marker(kListen + "[server]\nconnect_timeout = \"0ms\" # <- here\n" + kTopology,
                                "connect_timeout must be above 0");
    }
    SECTION("bad log_level") {
        require_error_at_marker(kListen + "[server]\nlog_level = \"verbose\" # <- here\n" + kTopology, "log_level must be one of");
    }
    SECTION("bad ro_balance") {
        require_error_at_marker(kListen + "[routing]\nro_balance = \"random\" # <- here\n" + kTopology,
                                "ro_balance must be");
    }
    SECTION("bad topology source") {
        require_error_at_marker(kListen + "[topology]\nsource = \"consul\" # <- here\n"
                                          "[[topology.members]]\nname = \"pg1\"\nhost = \"h\"\nrole = \"primary\"\n",
                                "topology source must be \"static\"");
    }
    SECTION("bad role") {
        require_error_at_marker(kListen +
                                    "[topology]\n[[topology.members]]\nname = \"pg1\"\nhost = \"h\"\n"
                                    "role = \"leader\" # <- here\n",
                                "role must be \"primary\" or \"replica\"");
    }
}

TEST_CASE("config error: members", "[config]") {
    SECTION("duplicate member name") {
        require_error_at_marker(kListen + kTopology +
                                    "[[topology.members]]\nname = \"pg1\" # <- here\nhost = \"10.0.0.2\"\nrole = \"replica\"\n",
                                "duplicate member name 'pg1'");
    }
    SECTION("two primaries: the second primary's role is the offending line") {
        require_error_at_marker(kListen + kTopology +
                                    "[[topology.members]]\nname = \"pg2\"\nhost = \"10.0.0.2\"\nrole = \"primary\" # <- here\n",
                                "at most one static member may have role \"primary\"");
    }
    SECTION("member without a host") {
        require_error_at_marker(kListen + "[topology]\n[[topology.members]] # <- here\nname = \"pg1\"\nrole = \"primary\"\n",
                                "has no host");
    }
    SECTION("missing members") {
        require_error_at_marker(kListen + "[topology] # <- here\nsource = \"static\"\n", "needs [[topology.members]]");
    }
    SECTION("empty members array") {
        require_error_at_marker(kListen + "[topology]\nmembers = [] # <- here\n", "non-empty array");
    }
}

TEST_CASE("config error: listen addresses", "[config]") {
    SECTION("IPv4 without port") {
        require_error_at_marker("[listen]\nrw = \"127.0.0.1\" # <- here\n" + kTopology, "expected \"address:port\"");
    }
    SECTION("bracketed IPv6 without port") {
        require_error_at_marker("[listen]\nrw = \"127.0.0.1:6432\"\nro = \"[::1]\" # <- here\n" + kTopology,
                                "expected \"[address]:port\"");
    }
    SECTION("rw and ro on the same address: the second of the two is the offending line") {
        require_error_at_marker("[listen]\nrw = \"127.0.0.1:6432\"\nro = \"127.0.0.1:6432\" # <- here\n" + kTopology,
                                "rw and ro must not use the same address and port");
    }
}

TEST_CASE("config error: neither listener set", "[config]") {
    try {
        parse_config("[listen]\n" + kTopology, "test.toml");
        FAIL("parse_config accepted a config with no listener");
    } catch (const ConfigError& e) {
        CHECK_THAT(std::string(e.what()), Contains("[listen] must set rw and/or ro"));
        CHECK(e.line == 1);
        CHECK_THAT(e.describe(), StartsWith("test.toml:1:"));
    }
}

TEST_CASE("config error: weights or exclude naming an unknown member", "[config]") {
    SECTION("weights") {
        require_error_at_marker(kListen + "[routing.weights]\npg1 = 2\npg9 = 2 # <- here\n" + kTopology,
                                "[routing.weights] names unknown member 'pg9'");
    }
    SECTION("exclude") {
        require_error_at_marker(kListen + "[routing]\nexclude = [\"pg9\"] # <- here\n" + kTopology,
                                "[routing] exclude names unknown member 'pg9'");
    }
}

TEST_CASE("config error: missing [topology] has no line to point at", "[config]") {
    try {
        parse_config(kListen + "[server]\nthreads = 2\n", "test.toml");
        FAIL("parse_config accepted a config without [topology]");
    } catch (const ConfigError& e) {
        CHECK(e.file == "test.toml");
        CHECK(e.line == 0);
        CHECK_THAT(std::string(e.what()), Contains("missing [topology]"));
        CHECK(e.describe() == "test.toml: " + std::string(e.what()));
    }
}

TEST_CASE("config error: non-finite durations are rejected", "[config]") {
    SECTION("TOML inf") {
        require_error_at_marker(kListen + "[server]\nconnect_timeout = inf # <- here\n" + kTopology,
                                "'connect_timeout' must be a duration");
    }
    SECTION("TOML nan") {
        require_error_at_marker(kListen + "[server]\nconnect_timeout = nan # <- here\n" + kTopology,
                                "'connect_timeout' must be a duration");
    }
    SECTION("string \"inf\"") {
        require_error_at_marker(kListen + "[server]\nstartup_timeout = \"inf\" # <- here\n" + kTopology,
                                "'startup_timeout' must be a duration");
    }
    SECTION("string \"nan\"") {
        require_error_at_marker(kListen + "[server]\nstartup_timeout = \"nan\" # <- here\n" + kTopology,
                                "'startup_timeout' must be a duration");
    }
}

TEST_CASE("config: a huge duration is rejected or stays positive", "[config]") {
    for (const char* value : {"1e300", "\"1e300s\"", "9.3e15"}) {
        INFO("connect_timeout = " << value);
        const std::string text = kListen + "[server]\nconnect_timeout = " + value + "\n" + kTopology;
        try {
            const pgrelay::Config c = parse_config(text, "test.toml");
            CHECK(c.connect_timeout > 0ms);
        } catch (const ConfigError& e) {
            CHECK(e.line == 4);
        }
    }
}

TEST_CASE("ConfigError::describe formats file and line", "[config]") {
    CHECK(ConfigError("a.toml", 12, "boom").describe() == "a.toml:12: boom");
    CHECK(ConfigError("a.toml", 0, "boom").describe() == "a.toml: boom");
}

TEST_CASE("load_config on a missing file raises ConfigError", "[config]") {
    try {
        pgrelay::load_config("/nonexistent/pgrelay-test.toml");
        FAIL("load_config accepted a missing file");
    } catch (const ConfigError& e) {
        CHECK(e.file == "/nonexistent/pgrelay-test.toml");
        CHECK(e.line == 0);
        CHECK_THAT(std::string(e.what()), Contains("cannot open"));
    }
}

TEST_CASE("parse_duration accepts ms, s, m/min and plain seconds", "[config][duration]") {
    std::chrono::milliseconds d{-1};
    CHECK(pgrelay::parse_duration("250ms", d));
    CHECK(d == 250ms);
    CHECK(pgrelay::parse_duration("5s", d));
    CHECK(d == 5s);
    CHECK(pgrelay::parse_duration("2m", d));
    CHECK(d == 120s);
    CHECK(pgrelay::parse_duration("3min", d));
    CHECK(d == 180s);
    CHECK(pgrelay::parse_duration("7", d));
    CHECK(d == 7s);
    CHECK(pgrelay::parse_duration("1.5s", d));
    CHECK(d == 1500ms);
    CHECK(pgrelay::parse_duration("0.25", d));
    CHECK(d == 250ms);
    CHECK(pgrelay::parse_duration("0.5ms", d));  // rounds half up
    CHECK(d == 1ms);
    CHECK(pgrelay::parse_duration("0", d));
    CHECK(d == 0ms);
}

TEST_CASE("parse_duration rejects anything else and leaves the output alone", "[config][duration]") {
    for (const char* bad : {"", "5 parsecs", "5parsecs", "ms", "s", "-1s", "-5", "5h", "5sec", "5 s", "5S", "abc",
                            "5msx", "5m5s"}) {
        INFO("input \"" << bad << "\"");
        std::chrono::milliseconds d{1234};
        CHECK_FALSE(pgrelay::parse_duration(bad, d));
        CHECK(d == 1234ms);
    }
}

TEST_CASE("parse_duration rejects non-finite numbers", "[config][duration]") {
    for (const char* bad : {"nan", "inf", "infinity", "infs", "nanms"}) {
        INFO("input \"" << bad << "\"");
        std::chrono::milliseconds d{1234};
        CHECK_FALSE(pgrelay::parse_duration(bad, d));
    }
}

TEST_CASE("parse_duration never yields a negative duration for huge inputs", "[config][duration]") {
    for (const char* big : {"1e300", "1e300s", "1e300ms", "9.3e15"}) {
        INFO("input \"" << big << "\"");
        std::chrono::milliseconds d{1234};
        if (pgrelay::parse_duration(big, d)) CHECK(d > 0ms);
        else CHECK(d == 1234ms);
    }
}

TEST_CASE("config: max_client_connections, shutdown_grace, log_format and [admin] listen", "[config]") {
    const pgrelay::Config c = parse_config("[server]\nmax_client_connections = 500\nshutdown_grace = \"5s\"\nlog_format = \"json\"\n"
                                  "[admin]\nlisten = \"127.0.0.1:9999\"\n" + kListen + kTopology,
                                  "test.toml");
    CHECK(c.max_client_connections == 500);
    CHECK(c.shutdown_grace == std::chrono::milliseconds(5000));
    CHECK(c.log_json);
    CHECK(c.admin.enabled);
    CHECK(c.admin.port == 9999);
    const pgrelay::Config d = parse_config(kListen + kTopology, "test.toml");
    CHECK(d.max_client_connections == 0);
    CHECK(d.admin.enabled);  // on by default, loopback only
    CHECK(d.admin.host == "127.0.0.1");
    CHECK_THROWS_AS(parse_config("[server]\nmax_client_connections = -1\n" + kListen + kTopology, "test.toml"), ConfigError);
    CHECK_THROWS_AS(parse_config("[server]\nlog_format = \"xml\"\n" + kListen + kTopology, "test.toml"), ConfigError);
    CHECK(parse_config("[admin]\nlisten = \"\"\n" + kListen + kTopology, "test.toml").admin.enabled == false);
}

TEST_CASE("config: [tls], backend_tls, idle_client_timeout and TCP keepalive", "[config][tls]") {
    using pgrelay::Config;
    const Config defaults = parse_config(kListen + kTopology, "test.toml");
    CHECK_FALSE(defaults.tls.enabled());
    CHECK(defaults.tls.client == Config::ClientTls::Disable);
    CHECK(defaults.backend_tls == Config::BackendTls::Disable);
    CHECK(defaults.backend_tls_sni);
    CHECK(defaults.idle_client_timeout == 0ms);
    CHECK(defaults.keepalive_idle == 60s);
    CHECK(defaults.keepalive_interval == 10s);
    CHECK(defaults.keepalive_count == 6);

    const Config c = parse_config("[server]\nidle_client_timeout = \"5m\"\ntcp_keepalive_idle = 30\n"
                                  "tcp_keepalive_interval = \"2s\"\ntcp_keepalive_count = 3\n" +
                                      kListen +
                                      "[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nmin_version = \"TLSv1.3\"\n"
                                      "ciphers = \"ECDHE+AESGCM\"\n"
                                      "[topology]\nbackend_tls = \"verify-full\"\nbackend_tls_ca = \"/ca.pem\"\n"
                                      "backend_tls_sni = false\n"
                                      "[[topology.members]]\nname = \"pg1\"\nhost = \"db\"\nrole = \"primary\"\n",
                                  "test.toml");
    CHECK(c.idle_client_timeout == 300s);
    CHECK(c.keepalive_idle == 30s);
    CHECK(c.keepalive_interval == 2s);
    CHECK(c.keepalive_count == 3);
    CHECK(c.tls.enabled());
    CHECK(c.tls.client == Config::ClientTls::Allow);  // the default once a certificate is set
    CHECK(c.tls.tls13_only);
    CHECK(c.tls.ciphers == "ECDHE+AESGCM");
    CHECK(c.backend_tls == Config::BackendTls::VerifyFull);
    CHECK(c.backend_tls_ca == "/ca.pem");
    CHECK_FALSE(c.backend_tls_sni);
    CHECK(std::string(to_string(c.backend_tls)) == "verify-full");

    // client_ca implies require.
    const Config ca = parse_config(kListen + "[tls]\ncert = \"/c\"\nkey = \"/k\"\nclient_ca = \"/ca\"\n" + kTopology, "t");
    CHECK(ca.tls.client == Config::ClientTls::Require);

    const std::string tls = "[tls]\n";
    require_error_at_marker(kListen + tls + "cert = \"/c.pem\" " + kHere + "\n" + kTopology, "cert and key go together");
    require_error_at_marker(kListen + tls + "client_tls = \"require\" " + kHere + "\n" + kTopology, "needs [tls] cert and key");
    require_error_at_marker(kListen + tls + "cert = \"/c\"\nkey = \"/k\"\nclient_tls = \"always\" " + kHere + "\n" + kTopology,
                            "client_tls must be");
    require_error_at_marker(kListen + tls + "client_ca = \"/ca\" " + kHere + "\n" + kTopology, "client_ca needs TLS");
    require_error_at_marker(kListen + tls + "min_version = \"TLSv1.1\" " + kHere + "\n" + kTopology, "min_version must be");
    require_error_at_marker(kListen + tls + "ciphers = \"\" " + kHere + "\n" + kTopology, "ciphers must not be empty");
    require_error_at_marker(kListen + tls + "certfile = \"/c\" " + kHere + "\n" + kTopology, "unknown key 'certfile'");
    const std::string members = "[[topology.members]]\nname = \"pg1\"\nhost = \"db\"\nrole = \"primary\"\n";
    require_error_at_marker(kListen + "[topology]\nbackend_tls = \"verify\" " + kHere + "\n" + members, "backend_tls must be one of");
    require_error_at_marker(kListen + "[topology]\nbackend_tls = \"verify-ca\" " + kHere + "\n" + members,
                            "needs backend_tls_ca");
    require_error_at_marker(kListen + "[topology]\nbackend_tls_ca = \"/ca\" " + kHere + "\n" + members,
                            "backend_tls is \"disable\"");
    require_error_at_marker("[server]\ntcp_keepalive_idle = \"500ms\" " + std::string(kHere) + "\n" + kListen + kTopology,
                            "at least 1s");
    require_error_at_marker("[server]\ntcp_keepalive_count = 0 " + std::string(kHere) + "\n" + kListen + kTopology,
                            "out of range");
}

TEST_CASE("config: [topology.etcd]", "[config][etcd]") {
    const std::string base = kListen + "[topology]\nsource = \"etcd\"\n[topology.etcd]\n";
    auto c = parse_config(base + "endpoints = [\"http://10.0.0.1:2379\", \"10.0.0.2\"]\nscope = \"/main/\"\n", "t.toml");
    CHECK(c.topology_source == "etcd");
    CHECK(c.etcd.endpoints == std::vector<std::string>{"http://10.0.0.1:2379", "10.0.0.2"});
    CHECK(c.etcd.base() == "/service/main");
    CHECK(c.etcd.request_timeout == 2s);
    CHECK(c.etcd.check_interval == 1s);
    CHECK(c.etcd.username.empty());
    CHECK(c.routing.lag_aware);

    const std::string pw_path = "/tmp/pgrelay-test-etcd-password-" + std::to_string(::getpid());
    std::ofstream(pw_path) << "s3cret\n";
    struct Remove {
        std::string p;
        ~Remove() { std::remove(p.c_str()); }
    } remove_pw{pw_path};
    c = parse_config(base + "endpoints = [\"h:1\"]\nscope = \"m\"\nnamespace = \"pg\"\nusername = \"pgrelay\"\n"
                            "password_file = \"" + pw_path + "\"\nrequest_timeout = \"500ms\"\ncheck_interval = \"3s\"\n",
                     "t.toml");
    CHECK(c.etcd.password == "s3cret");  // the file's first line, without its newline
    CHECK(c.etcd.base() == "/pg/m");
    CHECK(c.etcd.request_timeout == 500ms);
    CHECK(c.etcd.check_interval == 3s);

    require_error_at_marker(kListen + "[topology]\nsource = \"etcd\" # <- here\n", "needs a [topology.etcd] section");
    const std::string header = kListen + "[topology]\nsource = \"etcd\"\n[topology.etcd] # <- here\n";
    require_error_at_marker(header + "scope = \"m\"\n", "endpoints is required");
    require_error_at_marker(header + "endpoints = [\"h:1\"]\n", "scope (Patroni's cluster name) is required");
    require_error_at_marker(base + "endpoints = [\"h:1\", \"ftp://x\" # <- here\n]\nscope = \"m\"\n", "is not http://");
    require_error_at_marker(base + "endpoints = [\"h:1\", \"http://h:1\" # <- here\n]\nscope = \"m\"\n", "twice");
    require_error_at_marker(base + "endpoints = [\"h:1\"]\nscope = \"m\"\nusername = \"u\" # <- here\n", "needs a password");
    require_error_at_marker(base + "endpoints = [\"h:1\"]\nscope = \"m\"\npassword = \"p\" # <- here\n", "needs a username");
    require_error_at_marker(base + "endpoints = [\"h:1\"]\nscope = \"m\"\nusername = \"u\"\npassword = \"p\"\n"
                                   "password_file = \"/x\" # <- here\n",
                            "not both");
    require_error_at_marker(base + "endpoints = [\"h:1\"]\nscope = \"m\"\nusername = \"u\"\n"
                                   "password_file = \"/nonexistent/pw\" # <- here\n",
                            "cannot read");
    require_error_at_marker(base + "endpoints = [\"h:1\"]\nscope = \"m\"\nca = \"/nonexistent/ca.pem\" # <- here\n",
                            "cannot read");
    require_error_at_marker(base + "endpoints = [\"h:1\"]\nscope = \"m\"\ncert = \"/x\" # <- here\n", "go together");
    require_error_at_marker(base + "endpoints = [\"h:1\"]\nscope = \"m\"\ncheck_interval = \"10ms\" # <- here\n",
                            "at least 100ms");
    require_error_at_marker(base + "endpoints = [\"h:1\"]\nscope = \"m\"\nhosts = \"x\" # <- here\n", "unknown key");
    require_error_at_marker(kListen + "[topology]\nsource = \"zookeeper\"\n[topology.etcd] # <- here\nendpoints = [\"h:1\"]\n",
                            "only for source \"etcd\"");
}

TEST_CASE("config: [topology.patroni_api]", "[config][patroni_api]") {
    const std::string base = kListen + "[topology]\nsource = \"patroni_api\"\n[topology.patroni_api]\n";
    auto c = parse_config(base + "urls = [\"http://10.0.0.1:8008\", \"10.0.0.2\"]\n", "t.toml");
    CHECK(c.topology_source == "patroni_api");
    CHECK(c.patroni_api.urls.size() == 2);
    CHECK(c.patroni_api.interval == 250ms);
    CHECK(c.patroni_api.request_timeout == 1s);
    c = parse_config(base + "urls = [\"h\"]\ninterval = \"1s\"\nrequest_timeout = \"300ms\"\n", "t.toml");
    CHECK(c.patroni_api.interval == 1s);
    CHECK(c.patroni_api.request_timeout == 300ms);
    require_error_at_marker(base + "urls = [] # <- here\n", "urls is required");
    require_error_at_marker(base + "urls = [\"h\"]\ninterval = \"10ms\" # <- here\n", "at least 50ms");
    require_error_at_marker(base + "urls = [\"h\"]\nscope = \"x\" # <- here\n", "unknown key");
    require_error_at_marker(kListen + "[topology]\nsource = \"patroni_api\" # <- here\n", "needs a [topology.patroni_api]");
}

TEST_CASE("config: [topology.member_addresses]", "[config]") {
    const std::string zk = kListen + "[topology]\nsource = \"zookeeper\"\n[topology.zookeeper]\nhosts = \"h:2181\"\n"
                                     "scope = \"s\"\n";
    auto c = parse_config(zk + "[topology.member_addresses]\npg0 = \"10.0.0.5:6432\"\npg1 = \"[::1]:5432\"\n", "t.toml");
    CHECK(c.member_addresses.size() == 2);
    CHECK(c.member_addresses.at("pg0") == "10.0.0.5:6432");
    CHECK(c.member_addresses.at("pg1") == "[::1]:5432");
    require_error_at_marker(zk + "[topology.member_addresses]\npg0 = \"10.0.0.5\" # <- here\n", "must be \"host:port\"");
    require_error_at_marker(zk + "[topology.member_addresses]\npg0 = 5 # <- here\n", "must be \"host:port\"");
    require_error_at_marker(kListen + kTopology + "[topology.member_addresses] # <- here\npg0 = \"h:1\"\n",
                            "only for the Patroni sources");
}

TEST_CASE("config: [topology.rest_fallback]", "[config][rest_fallback]") {
    const std::string zk = kListen + "[topology]\nsource = \"zookeeper\"\n[topology.zookeeper]\nhosts = \"h:2181\"\n"
                                     "scope = \"s\"\n";
    auto c = parse_config(zk, "t.toml");
    CHECK(c.rest_fallback.enabled);  // on by default
    CHECK(c.rest_fallback.interval == 250ms);
    CHECK(c.rest_fallback.request_timeout == 500ms);
    c = parse_config(zk + "[topology.rest_fallback]\nenabled = false\ninterval = \"1s\"\nrequest_timeout = \"2s\"\n",
                     "t.toml");
    CHECK_FALSE(c.rest_fallback.enabled);
    CHECK(c.rest_fallback.interval == 1s);
    CHECK(c.rest_fallback.request_timeout == 2s);
    require_error_at_marker(zk + "[topology.rest_fallback]\ninterval = \"10ms\" # <- here\n", "at least 50ms");
    require_error_at_marker(zk + "[topology.rest_fallback]\nrequest_timeout = \"50ms\" # <- here\n", "at least 100ms");
    require_error_at_marker(zk + "[topology.rest_fallback]\nurls = [] # <- here\n", "unknown key");
    require_error_at_marker(zk + "[topology.rest_fallback]\nca = \"/nonexistent/ca.crt\" # <- here\n", "/nonexistent/ca.crt");
    // patroni_api reads the REST API already; static has no Patroni.
    require_error_at_marker(kListen + "[topology]\nsource = \"patroni_api\"\n[topology.patroni_api]\nurls = [\"h\"]\n"
                                      "[topology.rest_fallback] # <- here\nenabled = true\n",
                            "only for source \"zookeeper\" or \"etcd\"");
}

namespace {

using pgrelay::PoolConfig;
using pgrelay::PoolMode;
using pgrelay::PortRole;

// A file or directory removed when the test ends, however it ends.
struct TempPath {
    std::string path;
    ~TempPath() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
};

// A PgBouncer-style userlist.txt in /tmp, unique to this test process.
TempPath make_userlist(const std::string& tag) {
    TempPath f{"/tmp/pgrelay-test-userlist-" + tag + "-" + std::to_string(::getpid()) + ".txt"};
    std::ofstream(f.path) << "\"pgrelay_auth\" \"SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy\"\n"
                             "\"alice\" \"md5d41d8cd98f00b204e9800998ecf8427e\"\n";
    return f;
}

}  // namespace

TEST_CASE("config: pool defaults are passthrough with the documented values", "[config][pool]") {
    const pgrelay::Config c = parse_config(kListen + kTopology, "test.toml");
    for (const PoolConfig* p : {&c.pool_rw, &c.pool_ro}) {
        CHECK(p->mode == PoolMode::Passthrough);
        CHECK_FALSE(p->pooled());
        CHECK(p->pool_size == 20);
        CHECK(p->min_pool_size == 0);
        CHECK(p->max_db_connections == 0);
        CHECK(p->server_lifetime == 3600s);
        CHECK(p->server_idle_timeout == 600s);
        CHECK(p->query_wait_timeout == 120s);
        CHECK(p->server_reset_query == "DISCARD ALL");
        CHECK(p->auth_query ==
              "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = $1 AND (rolvaliduntil IS NULL OR "
              "rolvaliduntil > now())");
        CHECK(p->auth_file.empty());
        CHECK(p->auth_user.empty());
        CHECK(p->admin_users.empty());
    }
    CHECK(&c.pool(PortRole::ReadWrite) == &c.pool_rw);
    CHECK(&c.pool(PortRole::ReadOnly) == &c.pool_ro);
    CHECK(std::string(to_string(PoolMode::Passthrough)) == "passthrough");
    CHECK(std::string(to_string(PoolMode::Session)) == "session");
    CHECK(std::string(to_string(PoolMode::Transaction)) == "transaction");

    // Existing configs keep parsing, unpooled, with every other value as before.
    const pgrelay::Config full = parse_config(kFullConfig, "test.toml");
    CHECK(full.pool_rw.mode == PoolMode::Passthrough);
    CHECK(full.pool_ro.mode == PoolMode::Passthrough);
    CHECK(full.static_members.size() == 3);
    // An empty [pool] changes nothing either.
    const pgrelay::Config empty = parse_config(kListen + "[pool]\n" + kTopology, "test.toml");
    CHECK_FALSE(empty.pool_rw.pooled());
    CHECK(empty.pool_ro.pool_size == 20);
}

TEST_CASE("config: [pool] applies to both ports", "[config][pool]") {
    const TempPath users = make_userlist("both");
    const pgrelay::Config c = parse_config(kListen +
                                               "[pool]\n"
                                               "pool_mode = \"transaction\"\n"
                                               "pool_size = 50\n"
                                               "min_pool_size = 5\n"
                                               "max_db_connections = 30\n"
                                               "server_lifetime = \"30m\"\n"
                                               "server_idle_timeout = 0\n"
                                               "query_wait_timeout = \"0s\"\n"
                                               "server_reset_query = \"\"\n"
                                               "auth_file = \"" + users.path + "\"\n"
                                               "auth_user = \"pgrelay_auth\"\n"
                                               "auth_query = \"SELECT usename, passwd FROM pgrelay.get_auth($1)\"\n"
                                               "admin_users = [\"alice\", \"ops\"]\n" +
                                               kTopology,
                                           "test.toml");
    for (const PoolConfig* p : {&c.pool_rw, &c.pool_ro}) {
        CHECK(p->mode == PoolMode::Transaction);
        CHECK(p->pooled());
        CHECK(p->pool_size == 50);
        CHECK(p->min_pool_size == 5);
        CHECK(p->max_db_connections == 30);  // below pool_size is allowed
        CHECK(p->server_lifetime == 1800s);
        CHECK(p->server_idle_timeout == 0ms);  // 0 = never
        CHECK(p->query_wait_timeout == 0ms);   // 0 = wait forever
        CHECK(p->server_reset_query.empty());
        CHECK(p->auth_file == users.path);
        CHECK(p->auth_user == "pgrelay_auth");
        CHECK(p->auth_query == "SELECT usename, passwd FROM pgrelay.get_auth($1)");
        CHECK(p->admin_users == std::vector<std::string>{"alice", "ops"});
    }
}

TEST_CASE("config: [pool.rw] and [pool.ro] override [pool] for one port only", "[config][pool]") {
    const pgrelay::Config c = parse_config(kListen +
                                               "[pool]\n"
                                               "pool_mode = \"session\"\n"
                                               "pool_size = 40\n"
                                               "auth_user = \"pgrelay_auth\"\n"
                                               "admin_users = [\"alice\"]\n"
                                               "[pool.rw]\n"
                                               "pool_mode = \"transaction\"\n"
                                               "server_reset_query = \"RESET ALL\"\n"
                                               "[pool.ro]\n"
                                               "pool_size = 10\n"
                                               "admin_users = []\n" +
                                               kTopology,
                                           "test.toml");
    CHECK(c.pool_rw.mode == PoolMode::Transaction);
    CHECK(c.pool_rw.server_reset_query == "RESET ALL");
    CHECK(c.pool_rw.pool_size == 40);  // from [pool]
    CHECK(c.pool_rw.auth_user == "pgrelay_auth");
    CHECK(c.pool_rw.admin_users == std::vector<std::string>{"alice"});

    CHECK(c.pool_ro.mode == PoolMode::Session);  // [pool.rw] does not leak into ro
    CHECK(c.pool_ro.server_reset_query == "DISCARD ALL");
    CHECK(c.pool_ro.pool_size == 10);
    CHECK(c.pool_ro.auth_user == "pgrelay_auth");
    CHECK(c.pool_ro.admin_users.empty());  // an explicit [] overrides

    // A port table without [pool]: the other port keeps every default.
    const pgrelay::Config only_ro = parse_config(
        kListen + "[pool.ro]\npool_mode = \"session\"\nauth_user = \"a\"\nmin_pool_size = 2\n" + kTopology, "test.toml");
    CHECK(only_ro.pool_ro.mode == PoolMode::Session);
    CHECK(only_ro.pool_ro.min_pool_size == 2);
    CHECK(only_ro.pool_rw.mode == PoolMode::Passthrough);
    CHECK(only_ro.pool_rw.min_pool_size == 0);
    CHECK(only_ro.pool_rw.auth_user.empty());
}

TEST_CASE("config error: [pool] values", "[config][pool]") {
    const std::string auth = "auth_user = \"pgrelay_auth\"\n";
    SECTION("unknown pool_mode, listing the three") {
        require_error_at_marker(kListen + "[pool]\npool_mode = \"statement\" # <- here\n" + kTopology,
                                "[pool] pool_mode must be \"passthrough\", \"session\" or \"transaction\", got \"statement\"");
        require_error_at_marker(kListen + "[pool.ro]\npool_mode = \"Session\" # <- here\n" + kTopology,
                                "[pool.ro] pool_mode must be \"passthrough\", \"session\" or \"transaction\"");
    }
    SECTION("pool_mode not a string") {
        require_error_at_marker(kListen + "[pool]\npool_mode = 1 # <- here\n" + kTopology,
                                "[pool] 'pool_mode' must be a string");
    }
    SECTION("pool_size below 1") {
        require_error_at_marker(kListen + "[pool]\npool_size = 0 # <- here\n" + kTopology,
                                "[pool] 'pool_size' = 0 is out of range [1, ");
        require_error_at_marker(kListen + "[pool.rw]\npool_size = -3 # <- here\n" + kTopology,
                                "[pool.rw] 'pool_size' = -3 is out of range [1, ");
    }
    SECTION("pool_size not an integer") {
        require_error_at_marker(kListen + "[pool.ro]\npool_size = \"20\" # <- here\n" + kTopology,
                                "[pool.ro] 'pool_size' must be an integer");
    }
    SECTION("min_pool_size above pool_size in one table") {
        require_error_at_marker(kListen + "[pool]\npool_size = 5\nmin_pool_size = 6 # <- here\n" + kTopology,
                                "[pool] min_pool_size = 6 exceeds pool_size = 5 (rw port)");
    }
    SECTION("min_pool_size from [pool] above the pool_size [pool.ro] sets") {
        require_error_at_marker(kListen + "[pool]\nmin_pool_size = 10\n[pool.ro]\npool_size = 4 # <- here\n" + kTopology,
                                "[pool.ro] min_pool_size = 10 exceeds pool_size = 4 (ro port)");
    }
    SECTION("min_pool_size in [pool.rw] above the default pool_size") {
        require_error_at_marker(kListen + "[pool.rw]\nmin_pool_size = 21 # <- here\n" + kTopology,
                                "[pool.rw] min_pool_size = 21 exceeds pool_size = 20 (rw port)");
    }
    SECTION("negative max_db_connections") {
        require_error_at_marker(kListen + "[pool]\nmax_db_connections = -1 # <- here\n" + kTopology,
                                "[pool] 'max_db_connections' = -1 is out of range [0, ");
    }
    SECTION("negative or malformed durations") {
        require_error_at_marker(kListen + "[pool]\nserver_lifetime = -1 # <- here\n" + kTopology,
                                "[pool] 'server_lifetime' must be a duration");
        require_error_at_marker(kListen + "[pool.ro]\nserver_idle_timeout = \"-5s\" # <- here\n" + kTopology,
                                "[pool.ro] 'server_idle_timeout' must be a duration");
        require_error_at_marker(kListen + "[pool.rw]\nquery_wait_timeout = \"soon\" # <- here\n" + kTopology,
                                "[pool.rw] 'query_wait_timeout' must be a duration");
    }
    SECTION("session mode without auth_file or auth_user") {
        require_error_at_marker(kListen + "[pool]\npool_mode = \"session\" # <- here\n" + kTopology,
                                "[pool] pool_mode = \"session\" (rw port): pgrelay authenticates clients in this mode "
                                "and needs auth_file or auth_user + auth_query");
    }
    SECTION("transaction mode in [pool.ro] without auth") {
        require_error_at_marker(kListen + "[pool.ro]\npool_mode = \"transaction\" # <- here\n" + kTopology,
                                "[pool.ro] pool_mode = \"transaction\" (ro port): pgrelay authenticates clients");
    }
    SECTION("auth set for one port only: the other port still needs it") {
        require_error_at_marker(kListen + "[pool]\npool_mode = \"session\" # <- here\n[pool.rw]\n" + auth + kTopology,
                                "[pool] pool_mode = \"session\" (ro port): pgrelay authenticates clients");
    }
    SECTION("auth_user with an empty auth_query") {
        require_error_at_marker(kListen + "[pool]\n" + auth + "[pool.rw]\nauth_query = \"\" # <- here\n" + kTopology,
                                "[pool.rw] auth_query must not be empty when auth_user is set (rw port)");
    }
    SECTION("auth_file that cannot be read") {
        require_error_at_marker(kListen + "[pool]\nauth_file = \"/nonexistent/userlist.txt\" # <- here\n" + kTopology,
                                "[pool] auth_file: cannot read '/nonexistent/userlist.txt'");
        require_error_at_marker(kListen + "[pool.ro]\nauth_file = \"/tmp\" # <- here\n" + kTopology,
                                "[pool.ro] auth_file: cannot read '/tmp'");
    }
    SECTION("admin_users must be an array of non-empty strings") {
        require_error_at_marker(kListen + "[pool]\nadmin_users = \"alice\" # <- here\n" + kTopology,
                                "[pool] 'admin_users' must be an array of strings");
        require_error_at_marker(kListen + "[pool.rw]\nadmin_users = [\"alice\", 7] # <- here\n" + kTopology,
                                "[pool.rw] 'admin_users' must contain only strings");
        require_error_at_marker(kListen + "[pool.ro]\nadmin_users = [\"\"] # <- here\n" + kTopology,
                                "[pool.ro] admin_users must not contain an empty name");
    }
    SECTION("string keys of the wrong type") {
        require_error_at_marker(kListen + "[pool]\nserver_reset_query = false # <- here\n" + kTopology,
                                "[pool] 'server_reset_query' must be a string");
        require_error_at_marker(kListen + "[pool.ro]\nauth_user = 1 # <- here\n" + kTopology,
                                "[pool.ro] 'auth_user' must be a string");
    }
}

TEST_CASE("config: [pool] values at their limits are accepted", "[config][pool]") {
    const pgrelay::Config c = parse_config(kListen +
                                               "[pool]\npool_size = 1\nmin_pool_size = 1\nmax_db_connections = 1\n"
                                               "server_lifetime = 0\nserver_idle_timeout = \"0ms\"\n"
                                               "query_wait_timeout = 0\n"
                                               "[pool.ro]\npool_size = 3\nmin_pool_size = 3\n" +
                                               kTopology,
                                           "test.toml");
    CHECK(c.pool_rw.pool_size == 1);
    CHECK(c.pool_rw.min_pool_size == 1);
    CHECK(c.pool_rw.max_db_connections == 1);
    CHECK(c.pool_rw.server_lifetime == 0ms);
    CHECK(c.pool_rw.server_idle_timeout == 0ms);
    CHECK(c.pool_rw.query_wait_timeout == 0ms);
    CHECK(c.pool_ro.pool_size == 3);
    CHECK(c.pool_ro.min_pool_size == 3);
    CHECK(c.pool_ro.max_db_connections == 1);
    // auth_user without pooling is accepted (and kept) in passthrough mode.
    const pgrelay::Config p = parse_config(kListen + "[pool]\nauth_user = \"x\"\n" + kTopology, "test.toml");
    CHECK_FALSE(p.pool_rw.pooled());
    CHECK(p.pool_rw.auth_user == "x");
}

TEST_CASE("config error: unknown keys in [pool], [pool.rw] and [pool.ro]", "[config][pool]") {
    SECTION("[pool.ro]") {
        require_error_at_marker(kListen + "[pool.ro]\npool_size = 5\npool_sise = 5 # <- here\n" + kTopology,
                                "unknown key 'pool_sise' in [pool.ro] (expected one of: pool_mode, pool_size");
    }
    SECTION("[pool.rw] does not nest further") {
        require_error_at_marker(kListen + "[pool.rw]\nro = 1 # <- here\n" + kTopology, "unknown key 'ro' in [pool.rw]");
    }
    SECTION("[pool]") {
        require_error_at_marker(kListen + "[pool]\nmode = \"session\" # <- here\n" + kTopology,
                                "unknown key 'mode' in [pool]");
    }
    SECTION("a port override that is not a table") {
        require_error_at_marker(kListen + "[pool]\nrw = \"session\" # <- here\n" + kTopology, "'rw' must be a table");
    }
}

TEST_CASE("config: a real auth_file enables session and transaction mode", "[config][pool]") {
    const TempPath users = make_userlist("real");
    const pgrelay::Config c = parse_config(kListen + "[pool]\npool_mode = \"session\"\nauth_file = \"" + users.path +
                                               "\"\n[pool.ro]\npool_mode = \"transaction\"\n" + kTopology,
                                           "test.toml");
    CHECK(c.pool_rw.mode == PoolMode::Session);
    CHECK(c.pool_ro.mode == PoolMode::Transaction);
    CHECK(c.pool_rw.auth_file == users.path);
    CHECK(c.pool_ro.auth_file == users.path);
    CHECK(c.pool_ro.auth_user.empty());

    // The same through load_config, and auth_file overridden to "" for ro
    // with auth_user instead.
    const TempPath dir{"/tmp/pgrelay-test-pool-conf-" + std::to_string(::getpid())};
    std::filesystem::create_directories(dir.path);
    const std::string conf = dir.path + "/pgrelay.toml";
    std::ofstream(conf) << kListen << "[pool]\npool_mode = \"session\"\nauth_file = \"" << users.path
                        << "\"\n[pool.ro]\nauth_file = \"\"\nauth_user = \"pgrelay_auth\"\n"
                        << kTopology;
    const pgrelay::Config l = pgrelay::load_config(conf);
    CHECK(l.pool_rw.auth_file == users.path);
    CHECK(l.pool_ro.auth_file.empty());
    CHECK(l.pool_ro.auth_user == "pgrelay_auth");
    CHECK(l.pool_ro.pooled());

    // Once the file is gone, the same config is refused.
    std::filesystem::remove(users.path);
    CHECK_THROWS_WITH(pgrelay::load_config(conf), Contains("[pool] auth_file: cannot read '" + users.path + "'"));
}

TEST_CASE("config: a relative auth_file is kept as given, relative to the working directory", "[config][pool]") {
    // Like [tls] cert and etcd's password_file, a relative path is not
    // rewritten and is opened from pgrelay's working directory.
    const TempPath users = make_userlist("relative");
    const std::string rel = std::filesystem::relative(users.path, std::filesystem::current_path()).string();
    REQUIRE_FALSE(rel.empty());
    REQUIRE(rel.front() != '/');
    const pgrelay::Config c =
        parse_config(kListen + "[pool.rw]\npool_mode = \"session\"\nauth_file = \"" + rel + "\"\n" + kTopology, "test.toml");
    CHECK(c.pool_rw.auth_file == rel);
    CHECK(c.pool_ro.auth_file.empty());

    // A name that only exists next to the config file is not found there.
    const TempPath dir{"/tmp/pgrelay-test-pool-rel-" + std::to_string(::getpid())};
    std::filesystem::create_directories(dir.path);
    const std::string name = "userlist-only-in-conf-dir-" + std::to_string(::getpid()) + ".txt";
    std::ofstream(dir.path + "/" + name) << "\"alice\" \"secret\"\n";
    REQUIRE_FALSE(std::filesystem::exists(name));
    std::ofstream(dir.path + "/pgrelay.toml") << kListen << "[pool]\nauth_file = \"" << name << "\"\n" << kTopology;
    try {
        pgrelay::load_config(dir.path + "/pgrelay.toml");
        FAIL("load_config resolved auth_file against the config's directory");
    } catch (const ConfigError& e) {
        CHECK(e.line == 4);
        CHECK_THAT(std::string(e.what()), Contains("[pool] auth_file: cannot read '" + name + "'"));
    }
}

TEST_CASE("config: conf/pgrelay.toml parses and documents the [pool] defaults", "[config][pool]") {
    const std::string path = std::string(PGRELAY_SOURCE_DIR) + "/conf/pgrelay.toml";
    const pgrelay::Config shipped = pgrelay::load_config(path);
    CHECK(shipped.pool_rw.mode == PoolMode::Passthrough);
    CHECK(shipped.pool_ro.mode == PoolMode::Passthrough);

    // Uncomment every "# key = value" line of [pool] (not the example
    // auth_file/auth_user, nor the [pool.rw]/[pool.ro] examples after it): the
    // values the file documents must be the ones the code defaults to.
    std::ifstream in(path);
    REQUIRE(in);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    const size_t begin = text.find("\n[pool]\n");
    const size_t end = text.find("\n# Overrides for one port", begin);
    REQUIRE(begin != std::string::npos);
    REQUIRE(end != std::string::npos);
    std::istringstream section(text.substr(begin, end - begin));
    const std::regex commented_key(R"(^# ([a-z_]+) = (.*)$)");
    std::string line, pool = "[pool]\n";
    int keys = 0;
    while (std::getline(section, line)) {
        std::smatch m;
        if (!std::regex_match(line, m, commented_key) || m[1] == "auth_file" || m[1] == "auth_user") continue;
        pool += line.substr(2) + "\n";
        ++keys;
    }
    INFO(pool);
    CHECK(keys == 10);
    const pgrelay::Config c = parse_config(kListen + pool + kTopology, "test.toml");
    const PoolConfig def;
    for (const PoolConfig* p : {&c.pool_rw, &c.pool_ro}) {
        CHECK(p->mode == def.mode);
        CHECK(p->pool_size == def.pool_size);
        CHECK(p->min_pool_size == def.min_pool_size);
        CHECK(p->max_db_connections == def.max_db_connections);
        CHECK(p->server_lifetime == def.server_lifetime);
        CHECK(p->server_idle_timeout == def.server_idle_timeout);
        CHECK(p->query_wait_timeout == def.query_wait_timeout);
        CHECK(p->server_reset_query == def.server_reset_query);
        CHECK(p->auth_query == def.auth_query);
        CHECK(p->admin_users == def.admin_users);
    }
}
