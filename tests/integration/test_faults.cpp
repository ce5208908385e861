// The fault campaign (issue #14): partial network faults between pgrelay and
// the DCS, under a write loop through rw and reads through ro, on the shared
// Patroni cluster (ZooKeeper, or etcd with PGRELAY_TEST_DCS=etcd). Faults are
// made by a TcpForwarder (fixtures.hpp) that pgrelay reaches the store
// through. Each case checks every acknowledged write afterwards; times are
// printed (WARN), never asserted beyond generous bounds that only tell
// "followed" from "did not follow".
#include <catch2/catch.hpp>

#include <atomic>
#include <memory>
#include <optional>
#include <regex>
#include <thread>

#include "fixtures.hpp"
#include "patroni_helpers.hpp"

using namespace pgrelay::test;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

std::string topology_of(const Pgrelay& r) { return r.http_get("/topology").second; }

// "N ms" from pgrelay's reroute line for `leader` measured from `what`, or "?".
std::string reroute_after(const Pgrelay& r, const std::string& leader, const std::string& what) {
    const std::string log = r.log();
    std::smatch m;
    const std::regex line("rw now routes to " + leader + " \\([^\n]*\\), ([0-9.]+ ms) after the " + what);
    return std::regex_search(log, m, line) ? m[1].str() : "?";
}

// Scenario 1: pgrelay cannot hear the DCS (a blackhole both ways) while
// Patroni switches over, 1 s into the cut. The cut lasts `cut` in all, or
// (cut = 0) ends as soon as rw reaches the new leader.
void blackholed_dcs_switchover(std::chrono::seconds cut) {
    auto& cluster = PatroniCluster::shared();
    wait_healthy();
    // Every DCS member behind a forwarder of its own: the blackhole is total.
    Forwarders dcs(cluster.dcs_ports());
    Pgrelay r(cluster, "hold_timeout = \"60s\"\n", PgrelayOptions{.source_toml = cluster.source_toml_via(dcs.ports())});
    const std::string old_leader = cluster.leader();
    REQUIRE(eventually([&] { return routes_to(r, old_leader); }, 30s));
    REQUIRE(r.metric("pgrelay_dcs_rest_fallback") == 0);
    Writer writer(r.rw_port());
    Reader reader(r.ro_port());
    REQUIRE(writer.wait_more(20, 30s));

    const auto cut_at = Clock::now();
    dcs.blackhole();
    std::this_thread::sleep_for(1s);
    const std::string out = cluster.run("switchover");
    INFO(out);
    const std::string new_leader = cluster.leader();
    REQUIRE(new_leader != old_leader);
    const auto switched_at = Clock::now();

    // The DCS is still silent for pgrelay; rw follows Patroni's REST API.
    CHECK(eventually([&] { return port_via(r.rw_port()) == pg_port_of(new_leader); }, 15s));
    const double rw_after = seconds_since(switched_at);
    if (cut.count() > 0) CHECK(seconds_since(cut_at) < cut.count());  // still inside the cut
    CHECK(r.metric("pgrelay_dcs_rest_fallback") == 1);
    CHECK(r.metric("pgrelay_dcs_rest_takeovers_total") >= 1);
    CHECK_THAT(topology_of(r), Catch::Contains("\"leader_from\":\"patroni_rest\""));
    CHECK_THAT(r.log(), Catch::Contains("rest: " + new_leader + " answers GET /primary with 200"));
    CHECK(writer.wait_more(20, 30s));  // writes flow to the new leader during the cut

    const auto rest = Clock::now();
    if (Clock::now() < cut_at + cut) std::this_thread::sleep_until(cut_at + cut);
    const double rest_held = seconds_since(rest);
    const double cut_s = seconds_since(cut_at);
    dcs.heal();
    const auto healed_at = Clock::now();
    // The DCS is the authority again once it answers.
    CHECK(eventually([&] { return r.metric("pgrelay_dcs_rest_fallback") == 0; }, 30s));
    const double back_after = seconds_since(healed_at);
    CHECK(eventually([&] { return r.metric("pgrelay_dcs_connected") == 1; }, 30s));
    CHECK_THAT(r.log(), Catch::Contains("it is the authority for routing again (leader " + new_leader + ")"));
    CHECK_THAT(topology_of(r), Catch::Contains("\"leader_from\":\"dcs\""));
    CHECK(routes_to(r, new_leader));
    CHECK(writer.wait_more(20, 30s));
    writer.stop();
    reader.stop();

    WARN(cluster.dcs() << ", DCS blackholed " << cut_s << " s, switchover " << old_leader << " -> " << new_leader
                       << " 1 s in: rw on the new leader " << reroute_after(r, new_leader, "Patroni REST answer")
                       << " after its REST API said it holds the lock, " << rw_after
                       << " s after the switchover returned; "
                       << rest_held << " s more of the cut on the REST fallback; back on the DCS " << back_after
                       << " s after the heal; longest write outage " << writer.longest_outage_s() << " s; "
                       << writer.acked() << " writes acknowledged; ro: " << reader.reads() << " reads, "
                       << reader.errors() << " errors");
    std::string errs;
    for (const auto& e : writer.errors()) errs += e + " ";
    WARN("errors the writer saw: " << errs);
    CHECK(reader.reads() > 0);
    check_no_lost_writes(writer, new_leader, {pg_port_of(old_leader), pg_port_of(new_leader)});
    CHECK(r.running());
}

}  // namespace

TEST_CASE("faults: DCS blackholed from pgrelay, switchover 1 s in: rw follows Patroni's REST API, no write lost",
          "[patroni][faults]") {
    // Healed as soon as rw follows (about 5 s): the ZooKeeper session (10 s)
    // usually survives; etcd's request_timeout (2 s) notices the silence.
    SECTION("a short cut, healed once rw follows") { blackholed_dcs_switchover(0s); }
    // 20 s: the ZooKeeper session expires during the cut.
    SECTION("a long cut: the DCS session expires") { blackholed_dcs_switchover(20s); }
}

namespace {

// pgrelay's TCP bounds for these cases: a vanished peer is noticed after
// 2 + 1 * 3 = 5 s, idle or with a query in flight.
const std::string kShortKeepalive = "tcp_keepalive_idle = \"2s\"\ntcp_keepalive_interval = \"1s\"\ntcp_keepalive_count = 3\n";
constexpr double kKeepaliveBound = 5;

// [topology.member_addresses]: `member` reached through `via`.
std::string through(const std::string& member, const TcpForwarder& via) {
    return "[topology.member_addresses]\n" + member + " = \"" + via.host() + ":" + std::to_string(via.port()) + "\"\n";
}

}  // namespace

TEST_CASE("faults: pgrelay blackholed from the primary only: sessions get 08006 within the keepalive bound, new rw "
          "connections are held, writes resume after the heal or once the leader moves",
          "[patroni][faults]") {
    auto& cluster = PatroniCluster::shared();
    wait_healthy();
    const std::string leader = cluster.leader();
    NetnsLink link;
    TcpForwarder to_leader(cluster.node(leader).pg_port, &link);
    Pgrelay r(cluster, "hold_timeout = \"60s\"\n",
              PgrelayOptions{.extra_server = kShortKeepalive,
                             .source_toml = cluster.source_toml() + through(leader, to_leader)});
    REQUIRE(eventually([&] { return port_via(r.rw_port()) == pg_port_of(leader); }, 30s));
    REQUIRE(to_leader.accepted() > 0);  // rw really goes through the link

    RawSession idle = md5_login(r.rw_port(), "md5user", "md5pass");
    RawSession busy = md5_login(r.rw_port(), "md5user", "md5pass");
    REQUIRE(idle.error.empty());
    REQUIRE(busy.error.empty());
    Writer writer(r.rw_port());
    Reader reader(r.ro_port());
    REQUIRE(writer.wait_more(20, 30s));

    // 1. The path to the primary goes silent; the primary itself is fine.
    link.blackhole();
    const auto cut_at = Clock::now();
    const size_t acked_before = writer.acked();
    // A query sent into the silence: TCP_USER_TIMEOUT gives up on it; the
    // idle session: keepalive. Either way pgrelay says why.
    REQUIRE(busy.client->send(query_message("SELECT 1")));
    auto has_error = [](const std::string& b) { return first_error(b).has_value(); };
    std::optional<ErrorInfo> busy_bye, idle_bye;
    double busy_noticed = 0, idle_noticed = 0;
    std::thread busy_wait([&] {
        busy_bye = first_error(busy.client->read_until(has_error, 30s));
        busy_noticed = seconds_since(cut_at);
    });
    idle_bye = first_error(idle.client->read_until(has_error, 30s));
    idle_noticed = seconds_since(cut_at);
    busy_wait.join();
    for (const auto* bye : {&busy_bye, &idle_bye}) {
        REQUIRE(*bye);
        CHECK((*bye)->sqlstate == "08006");
        CHECK_THAT((*bye)->message, Catch::Contains("lost the connection to backend " + leader));
    }
    // The writer's reconnection is held: the probe cannot reach the leader either.
    CHECK(eventually([&] { return r.metric("pgrelay_held_connections") >= 1; }, 30s));
    CHECK_THAT(r.http_get("/topology").second, Catch::Contains("\"primary\":null"));
    const size_t acked_during = writer.acked() - acked_before;
    std::this_thread::sleep_for(2s);

    // 2. Healed: the held connection proceeds, writes flow again.
    link.heal();
    const auto healed_at = Clock::now();
    CHECK(writer.wait_more(20, 60s));
    const double resumed_after_heal = seconds_since(healed_at);

    // 3. Silent again, and this time the leader moves to a member pgrelay
    // reaches directly: writes resume on the new leader.
    REQUIRE(eventually([&] { return routes_to(r, leader); }, 30s));
    link.blackhole();
    const auto cut2_at = Clock::now();
    std::this_thread::sleep_for(2s);
    const std::string out = cluster.run("switchover");
    INFO(out);
    const std::string new_leader = cluster.leader();
    REQUIRE(new_leader != leader);
    CHECK(writer.wait_more(20, 60s));
    const double resumed_after_move = seconds_since(cut2_at);
    CHECK(routes_to(r, new_leader));
    link.heal();
    writer.stop();
    reader.stop();

    std::string errs;
    for (const auto& e : writer.errors()) errs += e + " ";
    WARN(cluster.dcs() << ", pgrelay blackholed from primary " << leader << " (keepalive bound " << kKeepaliveBound
                       << " s): idle session got 08006 after " << idle_noticed << " s, the busy one after "
                       << busy_noticed << " s; " << acked_during << " writes acknowledged meanwhile; writes resumed "
                       << resumed_after_heal << " s after the heal; with the leader moved to " << new_leader
                       << " during a second cut, writes resumed " << resumed_after_move
                       << " s after that cut began; ro: " << reader.reads() << " reads, " << reader.errors()
                       << " errors; writer errors: " << errs);
    CHECK(idle_noticed < 30);
    check_no_lost_writes(writer, new_leader, {pg_port_of(leader), pg_port_of(new_leader)});
    CHECK(r.running());
}

TEST_CASE("faults: a replica blackholed: new ro connections go to the other replica, none waits beyond connect_timeout",
          "[patroni][faults]") {
    auto& cluster = PatroniCluster::shared();
    wait_healthy();
    // The load-balanced replicas (the backup node pg3 takes no ro clients).
    std::vector<std::string> replicas;
    for (const auto& n : cluster.list())
        if (n.name != cluster.leader() && n.name != "pg3") replicas.push_back(n.name);
    REQUIRE(replicas.size() == 2);
    const std::string victim = replicas[0], other = replicas[1];
    NetnsLink link;
    TcpForwarder to_victim(cluster.node(victim).pg_port, &link);
    // connect_timeout 2 s (the fixture's default).
    Pgrelay r(cluster, "hold_timeout = \"60s\"\n",
              PgrelayOptions{.extra_server = kShortKeepalive,
                             .source_toml = cluster.source_toml() + through(victim, to_victim)});
    std::set<std::string> reached;
    REQUIRE(eventually(
        [&] {
            reached.insert(port_via(r.ro_port()));
            return reached.count(pg_port_of(victim)) && reached.count(pg_port_of(other));
        },
        30s));
    // A session on the other replica, which must never notice.
    PgConn on_other;
    REQUIRE(eventually(
        [&] {
            on_other = pg_connect(user_conninfo(r.ro_port()));
            return on_other.ok() && query_value(on_other.conn, "SELECT inet_server_port()") == pg_port_of(other);
        },
        30s));

    link.blackhole();
    const auto cut_at = Clock::now();
    // New ro connections, one after the other, for 12 s: each reaches a
    // replica, and only the first ones (before the probe noticed) pay the
    // connect_timeout on the victim first.
    double slowest = 0;
    size_t n = 0, to_victim_after = 0, errors = 0;
    std::optional<double> excluded_at;
    while (seconds_since(cut_at) < 12) {
        const auto t0 = Clock::now();
        const std::string port = port_via(r.ro_port());
        const double took = seconds_since(t0);
        slowest = std::max(slowest, took);
        ++n;
        if (port.rfind("error", 0) == 0) ++errors;
        if (!excluded_at && r.http_get("/topology").second.find("\"unreachable\":true") != std::string::npos)
            excluded_at = seconds_since(cut_at);
        if (excluded_at && port == pg_port_of(victim)) ++to_victim_after;
        INFO("ro connection " << n << " reached " << port << " in " << took << " s");
        CHECK(port == pg_port_of(other));
        CHECK(took < 2.0 + 1.0);  // connect_timeout (2 s), plus the second replica's login
        std::this_thread::sleep_for(100ms);
    }
    REQUIRE(excluded_at);
    CHECK(to_victim_after == 0);
    CHECK(query_value(on_other.conn, "SELECT 1") == "1");  // sessions on the other replica never noticed
    CHECK_THAT(r.log(), Catch::Contains("probe: replica " + victim + " unreachable"));

    link.heal();
    CHECK(eventually([&] { return r.http_get("/topology").second.find("\"unreachable\":true") == std::string::npos; },
                     30s));
    CHECK(eventually([&] { return port_via(r.ro_port()) == pg_port_of(victim); }, 30s));
    WARN(cluster.dcs() << ", replica " << victim << " blackholed: the probe excluded it from ro after " << *excluded_at
                       << " s; " << n << " ro connections meanwhile, slowest " << slowest << " s, " << errors
                       << " errors");
}

TEST_CASE("faults: the DCS member pgrelay uses is killed, then blackholed: pgrelay moves to another member, no "
          "session drops",
          "[patroni][faults]") {
    auto& cluster = PatroniCluster::shared();
    wait_healthy();
    REQUIRE(cluster.dcs_ports().size() == 3);
    Forwarders dcs(cluster.dcs_ports());
    // Without registration (etcd's runs on a connection of its own), the
    // forwarders show which member pgrelay follows the cluster on.
    Pgrelay r(cluster, "hold_timeout = \"60s\"\n",
              PgrelayOptions{.source_toml = cluster.source_toml_via(dcs.ports()),
                             .extra_sections = "[instance]\nregister = false\n"});
    REQUIRE(eventually([&] { return routes_to(r, cluster.leader()); }, 30s));
    std::optional<size_t> first;
    REQUIRE(eventually([&] { return (first = dcs.used()).has_value(); }, 20s));
    PgConn rw = pg_connect(user_conninfo(r.rw_port()));
    PgConn ro = pg_connect(user_conninfo(r.ro_port()));
    REQUIRE(rw.ok());
    REQUIRE(ro.ok());
    Writer writer(r.rw_port());
    REQUIRE(writer.wait_more(20, 30s));
    const double expiries = r.metric("pgrelay_zookeeper_session_expiries_total");
    const std::string leader = cluster.leader();
    // pgrelay is on a member other than `from`, connected, and the sessions
    // never noticed; returns the seconds since `t0`.
    auto moved_on = [&](size_t from, std::optional<size_t>& to, Clock::time_point t0) {
        CHECK(eventually([&] { return (to = dcs.used()).has_value() && *to != from; }, 30s));
        CHECK(eventually([&] { return r.metric("pgrelay_dcs_connected") == 1; }, 30s));
        const double s = seconds_since(t0);
        CHECK(query_value(rw.conn, "SELECT 1") == "1");
        CHECK(query_value(ro.conn, "SELECT 1") == "1");
        return s;
    };

    // 1. kill -9 of that member: the other two keep a quorum.
    const auto killed_at = Clock::now();
    cluster.run("kill-dcs-member " + std::to_string(*first + 1));
    std::optional<size_t> second;
    const double moved_after_kill = moved_on(*first, second, killed_at);
    CHECK(writer.wait_more(20, 30s));
    cluster.run("start-dcs-member " + std::to_string(*first + 1));
    // etcd may move on again while the member rejoins (a request timing out
    // in its election): settle on where pgrelay is now.
    std::this_thread::sleep_for(3s);
    REQUIRE(eventually([&] { return (second = dcs.used()).has_value(); }, 20s));

    // 2. Blackhole the member it uses now: silence, no reset.
    const auto cut_at = Clock::now();
    dcs[*second].blackhole();
    std::optional<size_t> third;
    const double moved_after_cut = moved_on(*second, third, cut_at);
    dcs[*second].heal();

    // Still following: a switchover is seen through the member it uses now.
    const std::string out = cluster.run("switchover");
    INFO(out);
    const std::string new_leader = cluster.leader();
    REQUIRE(new_leader != leader);
    CHECK(eventually([&] { return routes_to(r, new_leader); }, 30s));
    CHECK(writer.wait_more(20, 60s));
    writer.stop();
    if (!cluster.on_etcd()) CHECK(r.metric("pgrelay_zookeeper_session_expiries_total") == expiries);
    WARN(cluster.dcs() << ": member " << *first + 1 << " killed: pgrelay on member " << (second ? *second + 1 : 0)
                       << " after " << moved_after_kill << " s; member " << (second ? *second + 1 : 0)
                       << " blackholed: on member " << (third ? *third + 1 : 0) << " after " << moved_after_cut
                       << " s; sessions never noticed; longest write outage " << writer.longest_outage_s() << " s");
    check_no_lost_writes(writer, new_leader, {pg_port_of(leader), pg_port_of(new_leader)});
}
