// Integration tests against a real 4-node Patroni cluster (pg3 is a backup node
// tagged noloadbalance + nofailover) and a real pgrelay following it through
// its DCS: routing, switchover and crash failover under a write loop with zero
// acknowledged writes lost, held connections, lag-aware reads, and a DCS
// outage. One suite for every DCS: ctest runs this binary on ZooKeeper and, with
// PGRELAY_TEST_DCS=etcd, on etcd (with authentication on). Cases tagged [etcd]
// need etcd; [patroni_api] follows the cluster through Patroni's REST API
// whatever its DCS. One cluster and one pgrelay are shared by all cases.
#include <catch2/catch.hpp>

#include <signal.h>

#include <atomic>
#include <fstream>
#include <future>
#include <random>
#include <algorithm>
#include <map>
#include <mutex>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "checks.hpp"
#include "fixtures.hpp"
#include "patroni_helpers.hpp"

using namespace pgrelay::test;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

constexpr uint64_t kMaxLag = 1 << 20;  // max_replica_lag for the shared pgrelay

Pgrelay& relay() {
    static Pgrelay r(PatroniCluster::shared(), "max_replica_lag = " + std::to_string(kMaxLag) + "\nhold_timeout = \"60s\"\n");
    return r;
}


// Pooled clients log in as pooluser (a role of their own, so that the
// members' pg_stat_activity tells pgrelay's pooled server connections apart).
constexpr int kPooledSize = 10;
std::string pooled_conninfo(uint16_t port, const std::string& extra = {}) {
    return "host=127.0.0.1 port=" + std::to_string(port) +
           " user=pooluser password=poolpass dbname=postgres connect_timeout=90 sslmode=disable" + extra;
}
// An auth_file with pooluser's secret (plain), and the role on the cluster.
const std::string& pooled_users() {
    static TempDir dir("pgrelay-pooled-users");
    static const std::string path = [] {
        auto& cluster = PatroniCluster::shared();
        PgConn d = pg_connect(cluster.direct(cluster.leader()));
        REQUIRE(d.ok());
        exec(d.conn, "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pooluser') THEN "
                     "CREATE ROLE pooluser SUPERUSER LOGIN PASSWORD 'poolpass'; END IF; END $$");
        const std::string p = dir.path() + "/users.txt";
        std::ofstream(p) << "\"pooluser\" \"poolpass\"\n";
        return p;
    }();
    return path;
}
PgrelayOptions pooled_options() {
    return PgrelayOptions{.extra_sections = "[pool.rw]\npool_mode = \"transaction\"\npool_size = " +
                                            std::to_string(kPooledSize) + "\nauth_file = \"" + pooled_users() + "\"\n"};
}
// pgrelay with rw in transaction pool mode: it authenticates pooluser itself
// and logs into the members with the pool's keys.
Pgrelay& pooled_relay() {
    static Pgrelay r(PatroniCluster::shared(), "hold_timeout = \"60s\"\n", pooled_options());
    return r;
}
// The same with a 2 s hold_timeout, to see it run out.
Pgrelay& short_hold_relay() {
    static Pgrelay r(PatroniCluster::shared(), "hold_timeout = \"2s\"\n", pooled_options());
    return r;
}
std::string pooled_port_via(uint16_t port) { return port_reached(pooled_conninfo(port)); }

// Long-lived clients that each write a row every 0.3-1.2 s on one
// connection, never reconnecting unless the connection itself is gone.
class SteadyClients : public AckedWrites {
public:
    SteadyClients(std::string conninfo, int n) : conninfo_(std::move(conninfo)) {
        prepare(conninfo_, "pooled_writes");
        for (int i = 0; i < n; ++i) threads_.emplace_back([this, i] { loop(i); });
    }
    ~SteadyClients() { stop(); }
    void stop() {
        stop_ = true;
        for (auto& t : threads_)
            if (t.joinable()) t.join();
    }
    std::vector<std::string> errors() {
        std::lock_guard l(mu_);
        return errors_;
    }
    size_t reconnects() const { return reconnects_; }
    double slowest_write_s() {
        std::lock_guard l(mu_);
        return slowest_;
    }

private:
    void loop(int i) {
        const auto deadline = Clock::now() + 600s;  // bounded whatever happens
        std::minstd_rand rng(static_cast<unsigned>(i) * 7919u + 1);
        PgConn c = pg_connect(conninfo_);
        while (!stop_ && Clock::now() < deadline) {
            std::this_thread::sleep_for(std::chrono::milliseconds(300 + rng() % 900));
            if (!c.ok()) {
                ++reconnects_;
                c = pg_connect(conninfo_);
                if (!c.ok()) continue;
            }
            const int64_t id = next_++;
            const auto t0 = Clock::now();
            PGresult* res = PQexec(c.conn, ("INSERT INTO pooled_writes(id) VALUES (" + std::to_string(id) +
                                            ") RETURNING port")
                                               .c_str());
            const double took = std::chrono::duration<double>(Clock::now() - t0).count();
            std::lock_guard l(mu_);
            if (PQresultStatus(res) == PGRES_TUPLES_OK) {
                acked_.emplace_back(id, PQgetvalue(res, 0, 0));
                slowest_ = std::max(slowest_, took);
            } else {
                const char* code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
                errors_.push_back(std::string(code ? code : "no-sqlstate") + " " + PQresultErrorMessage(res));
            }
            PQclear(res);
        }
    }
    std::string conninfo_;
    std::atomic<bool> stop_{false};
    std::atomic<size_t> reconnects_{0};
    std::vector<std::thread> threads_;
    std::vector<std::string> errors_;
    double slowest_ = 0;
};

}  // namespace

TEST_CASE("rw reaches the Patroni leader and ro round-robins over the load-balanced replicas", "[patroni]") {
    auto& cluster = PatroniCluster::shared();
    wait_healthy();
    const std::string leader = cluster.leader();
    std::set<std::string> replicas;
    for (const auto& n : cluster.list())
        if (n.name != leader && n.name != "pg3") replicas.insert(pg_port_of(n.name));
    REQUIRE(replicas.size() == 2);

    REQUIRE(eventually([&] { return port_via(relay().rw_port()) == pg_port_of(leader); }, 30s));
    // On a fresh cluster a replica's lag is unknown until pgrelay's probes
    // have seen it, and a replica with unknown lag takes no ro connections:
    // wait until pgrelay counts both load-balanced replicas in.
    REQUIRE(eventually([&] {
        const std::string body = relay().http_get("/topology").second;
        size_t n = 0;
        for (size_t at = body.find("\"ro_eligible\":true"); at != std::string::npos; at = body.find("\"ro_eligible\":true", at + 1))
            ++n;
        return n == 2;
    }, 30s));
    std::vector<std::string> seen;
    for (int i = 0; i < 12; ++i) seen.push_back(port_via(relay().ro_port()));
    for (size_t i = 0; i < seen.size(); ++i) {
        INFO("ro connection " << i << " -> " << seen[i]);
        CHECK(replicas.count(seen[i]) == 1);  // never the leader, never the backup node pg3
        if (i > 0) CHECK(seen[i] != seen[i - 1]);
    }
    CHECK_THAT(relay().log(), Catch::Contains("cluster state loaded"));
}

TEST_CASE("the noloadbalance backup node never receives an ro connection", "[patroni]") {
    const std::string backup = pg_port_of("pg3");
    for (int i = 0; i < 40; ++i) {
        const std::string p = port_via(relay().ro_port());
        INFO("ro connection " << i << " -> " << p);
        REQUIRE(p.rfind("error", 0) != 0);
        CHECK(p != backup);
    }
}

TEST_CASE("a replica lagging beyond max_replica_lag gets no new ro connections but keeps its sessions", "[patroni]") {
    auto& cluster = PatroniCluster::shared();
    wait_healthy();
    const std::string leader = cluster.leader();
    std::string lagger;
    for (const auto& n : cluster.list())
        if (n.name != leader && n.name != "pg3") lagger = n.name;
    REQUIRE(!lagger.empty());
    const std::string lag_port = pg_port_of(lagger);

    // An ro session on the replica that is about to lag.
    PgConn held;
    REQUIRE(eventually(
        [&] {
            held = pg_connect(user_conninfo(relay().ro_port()));
            return held.ok() && query_value(held.conn, "SELECT inet_server_port()") == lag_port;
        },
        10s));

    // Patroni resumes paused replay unless the cluster is in maintenance mode.
    cluster.run("maintenance on");
    cluster.run("psql " + lagger + " 'SELECT pg_wal_replay_pause()'");
    {
        PgConn w = pg_connect(user_conninfo(relay().rw_port()));
        REQUIRE(w.ok());
        exec(w.conn, "DROP TABLE IF EXISTS lag_fill; CREATE TABLE lag_fill AS SELECT g, repeat('x', 1000) AS pad "
                     "FROM generate_series(1, 4000) g");  // ~4 MB of WAL > 1 MiB max_replica_lag
    }
    // Patroni publishes optime and xlog_location every loop_wait (2 s).
    CHECK(eventually(
        [&] {
            for (int i = 0; i < 6; ++i)
                if (port_via(relay().ro_port()) == lag_port) return false;
            return true;
        },
        30s));
    for (int i = 0; i < 10; ++i) CHECK(port_via(relay().ro_port()) != lag_port);
    // The lagging replica's open session was not cut.
    CHECK(query_value(held.conn, "SELECT inet_server_port()") == lag_port);

    cluster.run("psql " + lagger + " 'SELECT pg_wal_replay_resume()'");
    cluster.run("maintenance off");
    CHECK(eventually(
        [&] {
            for (int i = 0; i < 4; ++i)
                if (port_via(relay().ro_port()) == lag_port) return true;
            return false;
        },
        30s));
    CHECK(query_value(held.conn, "SELECT 1") == "1");
}

TEST_CASE("stopping the DCS for 10 s drops no session, and routing follows the cluster afterwards", "[patroni]") {
    auto& cluster = PatroniCluster::shared();
    wait_healthy();
    const std::string leader = cluster.leader();
    REQUIRE(eventually([&] { return port_via(relay().rw_port()) == pg_port_of(leader); }, 30s));
    PgConn rw = pg_connect(user_conninfo(relay().rw_port()));
    PgConn ro = pg_connect(user_conninfo(relay().ro_port()));
    REQUIRE(rw.ok());
    REQUIRE(ro.ok());

    const double resyncs = relay().metric("pgrelay_dcs_resyncs_total");
    REQUIRE(resyncs >= 0);
    cluster.run("stop-dcs");
    const auto until = Clock::now() + 10s;
    while (Clock::now() < until) {
        CHECK(query_value(rw.conn, "SELECT 1") == "1");
        CHECK(query_value(ro.conn, "SELECT 1") == "1");
        std::this_thread::sleep_for(1s);
    }
    // New connections route on the last known topology meanwhile.
    CHECK(port_via(relay().rw_port()) == pg_port_of(leader));
    CHECK(port_via(relay().ro_port()).rfind("error", 0) != 0);
    // pgrelay saw the outage, and reads the whole state again once it is over.
    CHECK(relay().metric("pgrelay_dcs_connected") == 0);
    cluster.run("start-dcs");
    CHECK(query_value(rw.conn, "SELECT 1") == "1");
    CHECK(query_value(ro.conn, "SELECT 1") == "1");
    CHECK(eventually([&] { return relay().metric("pgrelay_dcs_resyncs_total") > resyncs; }, 60s));
    CHECK(eventually([&] { return relay().metric("pgrelay_dcs_connected") == 1; }, 30s));

    // Routing follows the cluster again: a switchover now is seen.
    wait_healthy();
    const std::string out = cluster.run("switchover");
    const std::string new_leader = cluster.leader();
    INFO(out);
    REQUIRE(new_leader != leader);
    CHECK(eventually([&] { return port_via(relay().rw_port()) == pg_port_of(new_leader); }, 30s));
}

TEST_CASE("switchover under a write loop: old sessions get 57P01, new ones are held, no write is lost", "[patroni]") {
    auto& cluster = PatroniCluster::shared();
    wait_healthy();
    const std::string old_leader = cluster.leader();
    REQUIRE(eventually([&] { return port_via(relay().rw_port()) == pg_port_of(old_leader); }, 30s));

    // An idle session on the old primary, besides the busy writer; at the
    // protocol level, to see exactly what reaches the client.
    RawSession idle = md5_login(relay().rw_port(), "md5user", "md5pass");
    REQUIRE(idle.error.empty());

    Writer writer(relay().rw_port());
    REQUIRE(writer.wait_more(50, 30s));

    // New connections keep arriving during the switchover: three clients,
    // each opening one every 50 ms.
    std::atomic<bool> stop_connecting{false};
    std::mutex mu;
    struct Attempt {
        Clock::time_point start;
        std::string outcome;
        double seconds;
    };
    std::vector<Attempt> attempts;
    auto connect_loop = [&] {
        const auto deadline = Clock::now() + 120s;
        while (!stop_connecting && Clock::now() < deadline) {
            const auto t0 = Clock::now();
            PgConn c = pg_connect(user_conninfo(relay().rw_port()));
            std::string outcome;
            if (!c.ok()) outcome = "error " + c.sqlstate + " " + c.error;
            else {
                try {
                    outcome = query_value(c.conn, "SELECT pg_is_in_recovery()") == "f" ? "writable" : "read-only";
                } catch (const std::exception& e) {
                    outcome = std::string("error ") + e.what();
                }
            }
            {
                std::lock_guard l(mu);
                attempts.push_back({t0, outcome, std::chrono::duration<double>(Clock::now() - t0).count()});
            }
            std::this_thread::sleep_for(50ms);
        }
    };
    std::vector<std::thread> connectors;
    for (int i = 0; i < 3; ++i) connectors.emplace_back(connect_loop);

    // /health is polled throughout: it must say 503 while there is no primary.
    std::atomic<bool> stop_polling{false};
    std::vector<int> health;
    Clock::time_point window_start{}, window_end{};  // first and last 503 seen
    std::thread poller([&] {
        const auto deadline = Clock::now() + 120s;
        while (!stop_polling && Clock::now() < deadline) {
            const auto now = Clock::now();
            const int st = relay().http_get("/health").first;
            if (st == 503) {
                if (window_start == Clock::time_point{}) window_start = now;
                window_end = Clock::now();
            }
            if (health.empty() || health.back() != st) health.push_back(st);
            std::this_thread::sleep_for(10ms);
        }
    });

    const std::string out = cluster.run("switchover");
    const std::string new_leader = cluster.leader();
    INFO(out);
    REQUIRE(new_leader != old_leader);
    CHECK(writer.wait_more(50, 60s));
    stop_connecting = true;
    for (auto& t : connectors) t.join();
    stop_polling = true;
    poller.join();
    std::string seq;
    for (int h : health) seq += std::to_string(h) + " ";
    INFO("/health during the switchover: " << seq);
    CHECK(health.front() == 200);
    CHECK(std::find(health.begin(), health.end(), 503) != health.end());
    CHECK(health.back() == 200);
    writer.stop();

    // The client only had to reconnect: its old session ended with 57P01
    // (PostgreSQL's own at the demotion's shutdown, or pgrelay's when the
    // leader key moved, whichever came first).
    const auto goodbye = first_error(idle.client->read_all(5s));
    REQUIRE(goodbye);
    INFO("idle session after the switchover: " << goodbye->severity << " " << goodbye->message);
    CHECK(goodbye->severity == "FATAL");
    CHECK(goodbye->sqlstate == "57P01");
    const auto errors = writer.errors();
    std::string all;
    for (const auto& e : errors) all += e + " ";
    INFO("errors the writer saw: " << all);
    CHECK(errors.count("57P03") == 0);  // never refused for lack of a primary
    CHECK(errors.count("08006") == 0);  // nor for the old primary refusing connections
    WARN("switchover " << old_leader << " -> " << new_leader << ": longest write outage " << writer.longest_outage_s()
                       << " s");

    // Connections opened while pgrelay had no primary (/health said 503) were
    // held, then all reached a writable primary. One accepted by the old
    // primary just before its shutdown may see that shutdown, as with any proxy.
    size_t in_window = 0;
    for (const auto& a : attempts) {
        const bool during = a.start >= window_start && a.start <= window_end;
        INFO("connect attempt " << (during ? "in" : "outside") << " the leaderless window: " << a.outcome << " after "
                                << a.seconds << " s");
        if (during) {
            ++in_window;
            CHECK(a.outcome == "writable");
        } else if (a.outcome != "writable") {
            CHECK_THAT(a.outcome, Catch::Contains("57P01") || Catch::Contains("terminating connection") ||
                                      Catch::Contains("lost the connection"));
        }
    }
    CHECK(attempts.size() > 10);
    // The window can be a few ms (/health polls every 10 ms), so an attempt
    // inside it is likely but not certain; that connections were held and
    // then released is asserted from pgrelay's log below.
    WARN(in_window << " connection attempts started inside the leaderless window");
    CHECK_THAT(relay().log(), Catch::Contains("held:") && Catch::Contains("released after"));
    // The failover key was seen, and is over once the new leader has it
    // (Patroni leaves "{}" behind, which announces nothing).
    CHECK_THAT(relay().log(), Catch::Contains("failover key: " + old_leader + " -> " + new_leader));
    CHECK(eventually([&] { return relay().http_get("/topology").second.find("switchover_to") == std::string::npos; }, 10s));
    CHECK_THAT(relay().log(), Catch::Contains("ms after the " + cluster.leader_event()));

    check_no_lost_writes(writer, new_leader, {pg_port_of(old_leader), pg_port_of(new_leader)});
}

TEST_CASE("kill -9 of the leader's Patroni and PostgreSQL: rw follows the new leader, pooled clients stay, a herd is "
          "held, no acknowledged write lost",
          "[patroni]") {
    auto& cluster = PatroniCluster::shared();
    wait_healthy();
    const std::string old_leader = cluster.leader();
    REQUIRE(eventually([&] { return port_via(relay().rw_port()) == pg_port_of(old_leader); }, 30s));
    REQUIRE(eventually([&] { return pooled_port_via(pooled_relay().rw_port()) == pg_port_of(old_leader); }, 30s));
    REQUIRE(eventually([&] { return pooled_port_via(short_hold_relay().rw_port()) == pg_port_of(old_leader); }, 30s));
    Writer writer(relay().rw_port());
    SteadyClients pooled(pooled_conninfo(pooled_relay().rw_port()), 20);
    REQUIRE(writer.wait_more(50, 30s));
    REQUIRE(pooled.wait_more(40, 30s));
    // A pooled client behind a 2 s hold_timeout.
    PgConn short_hold = pg_connect(pooled_conninfo(short_hold_relay().rw_port()));
    REQUIRE(short_hold.ok());
    REQUIRE(query_value(short_hold.conn, "SELECT 1") == "1");

    cluster.run("kill " + old_leader);
    // A herd: 300 new pooled connections while there is no primary, each
    // logging in and asking whether it may write.
    constexpr int kHerd = 300;
    std::vector<std::string> herd(kHerd);
    std::vector<std::thread> herders;
    for (int t = 0; t < 10; ++t)
        herders.emplace_back([&, t] {
            std::vector<PgConn> mine;
            for (int i = t; i < kHerd; i += 10) {
                mine.push_back(pg_connect(pooled_conninfo(pooled_relay().rw_port(), " application_name=herd")));
                if (!mine.back().ok()) herd[size_t(i)] = "connect " + mine.back().sqlstate + " " + mine.back().error;
            }
            // All logged in (held or not): now every one sends its query.
            for (auto& c : mine) (void)PQsendQuery(c.conn, "SELECT pg_is_in_recovery()");
            for (size_t k = 0; k < mine.size(); ++k) {
                const int i = t + int(k) * 10;
                if (!herd[size_t(i)].empty()) continue;
                PGresult* r = nullptr;
                std::string outcome = "no result";
                while (PGresult* next = PQgetResult(mine[k].conn)) {
                    if (!r) r = next;
                    else PQclear(next);
                }
                if (r) {
                    outcome = PQresultStatus(r) == PGRES_TUPLES_OK ? (std::string(PQgetvalue(r, 0, 0)) == "f" ? "writable" : "read-only")
                                                                   : "error " + std::string(PQresultErrorMessage(r));
                    PQclear(r);
                }
                herd[size_t(i)] = outcome;
            }
        });
    // The short-hold client's transaction starts in the leaderless window and
    // waits 2 s for a primary: 57P03, and its connection stays.
    {
        PGresult* r = PQexec(short_hold.conn, "SELECT 1");
        const char* code = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        const char* sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
        INFO(PQresultErrorMessage(r));
        CHECK(PQresultStatus(r) == PGRES_FATAL_ERROR);
        CHECK(std::string(code ? code : "") == "57P03");
        CHECK(std::string(sev ? sev : "") == "ERROR");
        PQclear(r);
        CHECK(PQstatus(short_hold.conn) == CONNECTION_OK);
    }
    // The leader key lives until Patroni's DCS session expires (ttl 10 s).
    const std::string new_leader = [&] {
        std::string l = cluster.run("leader --wait 90 --not " + old_leader, 120);
        while (!l.empty() && (l.back() == '\n' || l.back() == ' ')) l.pop_back();
        return l;
    }();
    REQUIRE(new_leader != old_leader);
    CHECK(new_leader != "pg3");  // nofailover
    CHECK(eventually([&] { return port_via(relay().rw_port()) == pg_port_of(new_leader); }, 60s));
    // The new primary never sees more than pool_size pooled server
    // connections, herd or not.
    PgConn watch = pg_connect(cluster.direct(new_leader));
    REQUIRE(watch.ok());
    int most = 0, samples = 0;
    bool herd_done = false;
    for (const auto until = Clock::now() + 90s; !herd_done && Clock::now() < until; ++samples) {
        most = std::max(most, std::stoi(query_value(
                                  watch.conn, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'pooluser'")));
        herd_done = std::all_of(herd.begin(), herd.end(), [](const std::string& h) { return !h.empty(); });
        std::this_thread::sleep_for(50ms);
    }
    for (auto& t : herders) t.join();
    std::map<std::string, int> outcomes;
    for (const auto& h : herd) ++outcomes[h];
    for (const auto& [o, n] : outcomes) {
        INFO("herd: " << n << " x " << o);
        CHECK(o == "writable");
    }
    WARN("herd of " << kHerd << " after kill -9: at most " << most << " pooled server connections on the new primary ("
                    << samples << " samples)");
    // Two pgrelays pool to it: pooled_relay and short_hold_relay.
    CHECK(most <= 2 * kPooledSize);
    // The same short-hold connection works on the new primary.
    CHECK(eventually([&] {
        PGresult* r = PQexec(short_hold.conn, "SELECT pg_is_in_recovery()");
        const bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && std::string(PQgetvalue(r, 0, 0)) == "f";
        PQclear(r);
        return ok;
    }, 30s));
    CHECK(PQstatus(short_hold.conn) == CONNECTION_OK);

    CHECK(writer.wait_more(50, 60s));
    CHECK(pooled.wait_more(40, 60s));
    writer.stop();
    pooled.stop();
    WARN("crash of " << old_leader << " -> " << new_leader << ": longest write outage " << writer.longest_outage_s()
                     << " s; 20 pooled clients: " << pooled.errors().size() << " errors, " << pooled.reconnects()
                     << " reconnects, slowest write " << pooled.slowest_write_s() << " s");
    check_no_lost_writes(writer, new_leader, {pg_port_of(old_leader), pg_port_of(new_leader)});
    // The pooled clients kept their connections through the crash.
    CHECK(pooled.reconnects() == 0);
    for (const auto& e : pooled.errors()) CHECK(e.rfind("08007", 0) == 0);
    check_no_lost_writes(pooled.acked_rows(), pooled.first_id(), new_leader, {pg_port_of(old_leader), pg_port_of(new_leader)},
                         "pooled_writes");

    cluster.run("start " + old_leader);
    wait_healthy();
    CHECK(relay().running());
    CHECK(pooled_relay().running());
}

// [pooled_failover]: what the pool does once the topology moved is the same
// on every DCS, so these run on ZooKeeper only (ctest excludes them from the
// etcd run); the kill -9 case, which runs on both, covers pooled clients too.
TEST_CASE("transaction pool through 3 switchovers: 40 clients stay connected, only requests in flight fail, no write lost",
          "[patroni][pooled_failover]") {
    auto& cluster = PatroniCluster::shared();
    wait_healthy();
    Pgrelay& relay = pooled_relay();
    std::vector<std::string> ports{pg_port_of(cluster.leader())};
    REQUIRE(eventually([&] { return pooled_port_via(relay.rw_port()) == ports.back(); }, 30s));
    SteadyClients clients(pooled_conninfo(relay.rw_port()), 40);
    REQUIRE(clients.wait_more(80, 30s));
    std::vector<size_t> errors_per_switchover;
    for (int round = 0; round < 3; ++round) {
        const std::string before = cluster.leader();
        const size_t errors_before = clients.errors().size();
        const std::string out = cluster.run("switchover");
        INFO(out);
        const std::string after = cluster.leader();
        REQUIRE(after != before);
        ports.push_back(pg_port_of(after));
        CHECK(clients.wait_more(80, 60s));
        errors_per_switchover.push_back(clients.errors().size() - errors_before);
        wait_healthy();
    }
    clients.stop();
    std::string summary;
    for (size_t n : errors_per_switchover) summary += std::to_string(n) + " ";
    const auto errors = clients.errors();
    std::string all;
    for (const auto& e : errors) all += e + "\n";
    INFO("errors per switchover: " << summary << "\n" << all);
    WARN("40 pooled clients, 3 switchovers: errors per switchover " << summary << ", reconnects " << clients.reconnects()
                                                                   << ", slowest write " << clients.slowest_write_s() << " s");
    // No client had to reconnect.
    CHECK(clients.reconnects() == 0);
    // Only requests in flight on the old primary failed, each with an error
    // that says so (08007: it may have committed; 40001 cannot occur for
    // autocommit INSERTs), never a refusal or a lost connection.
    for (const auto& e : errors) CHECK(e.rfind("08007", 0) == 0);
    for (size_t n : errors_per_switchover) CHECK(n <= 10);  // a handful, not one per client
    // Every acknowledged write is on the final primary, and none was committed
    // on a member after a later leader took over.
    check_no_lost_writes(clients.acked_rows(), clients.first_id(), cluster.leader(), ports, "pooled_writes");
    CHECK(relay.running());
}

TEST_CASE("session state survives a switchover: pgJDBC prepared statements and psycopg2's SET TimeZone, no reconnect",
          "[patroni][pooled_failover]") {
    auto& cluster = PatroniCluster::shared();
    wait_healthy();
    Pgrelay& relay = pooled_relay();
    const std::string before = cluster.leader();
    REQUIRE(eventually([&] { return pooled_port_via(relay.rw_port()) == pg_port_of(before); }, 30s));
    const std::string clients = source_dir() + "/tests/clients/";
    const std::string args = " 127.0.0.1 " + std::to_string(relay.rw_port()) + " pooluser poolpass postgres --steady 32 --expect-move";
    auto launch = [](const std::string& cmd) {
        return std::async(std::launch::async, [cmd] {
            std::string out;
            const int rc = run_command("timeout 120 " + cmd + " 2>&1", &out);
            return std::make_pair(rc, out);
        });
    };
    auto py = launch("/usr/bin/python3 " + clients + "psycopg2_clients.py" + args);
    auto jdbc = launch("java -cp /usr/share/java/postgresql.jar " + clients + "JdbcClients.java" + args);
    std::this_thread::sleep_for(12s);  // both connected and running (java compiles the source first)
    const std::string out = cluster.run("switchover");
    INFO(out);
    REQUIRE(cluster.leader() != before);
    for (auto* job : {&py, &jdbc}) {
        const auto [rc, text] = job->get();
        INFO(text);
        CHECK(rc == 0);
        CHECK_THAT(text, Catch::Contains("steady:"));
        WARN(text);
    }
    wait_healthy();
}


TEST_CASE("etcd: a compaction while pgrelay watches, then a switchover: rw follows", "[patroni][etcd]") {
    auto& cluster = PatroniCluster::shared();
    REQUIRE(cluster.on_etcd());
    wait_healthy();
    REQUIRE(eventually([&] { return routes_to(relay(), cluster.leader()); }, 30s));
    // Everything before the current revision is gone; pgrelay's watch
    // started earlier and must keep delivering.
    const std::string out = cluster.run("compact");
    INFO(out);
    REQUIRE(out.rfind("compacted ", 0) == 0);
    check_follows_switchover(relay());
    CHECK(relay().metric("pgrelay_dcs_connected{source=\"etcd\"}") == 1);
}

TEST_CASE("etcd: etcd restarted: no session dropped, the state is read again, a switchover is followed",
          "[patroni][etcd]") {
    auto& cluster = PatroniCluster::shared();
    REQUIRE(cluster.on_etcd());
    wait_healthy();
    REQUIRE(eventually([&] { return routes_to(relay(), cluster.leader()); }, 30s));
    PgConn rw = pg_connect(user_conninfo(relay().rw_port()));
    PgConn ro = pg_connect(user_conninfo(relay().ro_port()));
    REQUIRE(rw.ok());
    REQUIRE(ro.ok());
    const double resyncs = relay().metric("pgrelay_dcs_resyncs_total");
    // etcd forgets every auth token when it restarts: pgrelay logs in again.
    cluster.run("restart-dcs");
    CHECK(eventually([&] { return relay().metric("pgrelay_dcs_resyncs_total") > resyncs; }, 30s));
    CHECK(eventually([&] { return relay().metric("pgrelay_dcs_connected") == 1; }, 30s));
    CHECK(query_value(rw.conn, "SELECT 1") == "1");
    CHECK(query_value(ro.conn, "SELECT 1") == "1");
    check_follows_switchover(relay());
}

TEST_CASE("etcd: an auth token that expires between checks is renewed, and the password is never logged",
          "[patroni][etcd]") {
    auto& cluster = PatroniCluster::shared();
    REQUIRE(cluster.on_etcd());
    // A check every 5 s against a 3 s token TTL: each check finds its token expired.
    static_assert(PatroniCluster::kEtcdTokenTtl < 5);
    Pgrelay r(cluster, "", PgrelayOptions{.source_toml = cluster.source_toml("check_interval = \"5s\"\n")});
    wait_healthy();
    REQUIRE(eventually([&] { return routes_to(r, cluster.leader()); }, 30s));
    CHECK(eventually([&] { return r.log().find("invalid auth token'; authenticating again") != std::string::npos; },
                     30s));
    check_follows_switchover(r);
    CHECK(r.metric("pgrelay_dcs_connected") == 1);
    CHECK(r.log().find(cluster.etcd_password()) == std::string::npos);
}

TEST_CASE("etcd: with the first endpoint down, pgrelay follows the cluster through the next one", "[patroni][etcd]") {
    auto& cluster = PatroniCluster::shared();
    REQUIRE(cluster.on_etcd());
    const std::string dead = "http://127.0.0.1:" + std::to_string(free_port());
    Pgrelay r(cluster, "", PgrelayOptions{.source_toml = cluster.source_toml("", {dead})});
    wait_healthy();
    REQUIRE(eventually([&] { return routes_to(r, cluster.leader()); }, 30s));
    CHECK_THAT(r.log(), Catch::Contains(dead + ": GET /version: connect: Connection refused"));
    CHECK(r.metric("pgrelay_dcs_endpoint_failures_total") >= 1);
    check_follows_switchover(r);
}

TEST_CASE("patroni_api: a switchover is followed and counted from the poll that saw the new leader",
          "[patroni][patroni_api]") {
    auto& cluster = PatroniCluster::shared();
    wait_healthy();
    // Every member's REST API, after one that does not answer.
    std::string urls = "\"http://127.0.0.1:" + std::to_string(free_port()) + "\"";
    for (const auto& n : cluster.nodes()) urls += ", \"http://127.0.0.1:" + std::to_string(n.rest_port) + "\"";
    constexpr double kInterval = 0.25;
    Pgrelay api(cluster, "max_replica_lag = " + std::to_string(kMaxLag) + "\n",
                PgrelayOptions{.source_toml = "source = \"patroni_api\"\n[topology.patroni_api]\nurls = [" + urls +
                                              "]\ninterval = \"250ms\"\n"});
    const std::string leader = cluster.leader();
    REQUIRE(eventually([&] { return port_via(api.rw_port()) == pg_port_of(leader); }, 30s));
    for (int i = 0; i < 8; ++i) {
        const std::string p = port_via(api.ro_port());
        INFO("ro connection " << i << " -> " << p);
        CHECK(p != pg_port_of(leader));
        CHECK(p != pg_port_of("pg3"));  // noloadbalance, as Patroni's REST API reports its tags
        CHECK(p.rfind("error", 0) != 0);
    }
    CHECK(api.metric("pgrelay_dcs_endpoint_failures_total") >= 1);

    // Both pgrelays live through the same switchover: the one watching the DCS
    // is the reference, so the comparison does not depend on how long
    // Patroni takes to promote.
    std::atomic<bool> stop{false};
    std::string new_leader;
    std::mutex mu;
    std::optional<Clock::time_point> watched_at, polled_at;
    std::thread poller([&] {
        const auto deadline = Clock::now() + 120s;
        while (!stop && Clock::now() < deadline) {
            std::unique_lock l(mu);
            const std::string target = new_leader;
            const bool need_watched = !watched_at, need_polled = !polled_at;
            l.unlock();
            if (!target.empty()) {
                const auto now = Clock::now();
                const bool w = need_watched && routes_to(relay(), target);
                const bool p = need_polled && routes_to(api, target);
                l.lock();
                if (w) watched_at = now;
                if (p) polled_at = now;
                if (watched_at && polled_at) break;
                l.unlock();
            }
            std::this_thread::sleep_for(5ms);
        }
    });
    // Patroni's candidate is known before the switchover: the sync standby.
    std::string candidate;
    for (const auto& n : cluster.list())
        if (n.role == "sync_standby") candidate = n.name;
    REQUIRE(!candidate.empty());
    {
        std::lock_guard l(mu);
        new_leader = candidate;
    }
    const std::string out = cluster.run("switchover --candidate " + candidate);
    INFO(out);
    CHECK(eventually(
        [&] {
            std::lock_guard l(mu);
            return watched_at && polled_at;
        },
        30s));
    stop = true;
    poller.join();
    REQUIRE(watched_at);
    REQUIRE(polled_at);
    // How far behind the watch the poller was is a timing, so it is reported
    // here, not asserted (bench/run's failover scenario measures it side by
    // side, target pgrelay-api). What must hold: the poller followed the same
    // switchover to the same member, and says which poll its reroute counts
    // from, so an operator can read the lag off its log.
    const double behind = std::chrono::duration<double>(*polled_at - *watched_at).count();
    auto reroutes = [](const std::string& log) {
        std::string out;
        std::istringstream in(log);
        for (std::string line; std::getline(in, line);)
            if (line.find("rw now routes to") != std::string::npos) out += "\n  " + line;
        return out;
    };
    WARN("patroni_api rerouted " << behind * 1000 << " ms after the " << cluster.dcs() << " source (poll interval "
                                  << kInterval * 1000 << " ms); patroni_api:" << reroutes(api.log()) << "\n"
                                  << cluster.dcs() << ":" << reroutes(relay().log()));
    CHECK(port_via(api.rw_port()) == pg_port_of(candidate));
    // The reroute to the candidate, as the poller logged it.
    std::string to_candidate;
    {
        std::istringstream in(reroutes(api.log()));
        for (std::string line; std::getline(in, line);)
            if (line.find("rw now routes to " + candidate + " ") != std::string::npos) to_candidate = line;
    }
    INFO(api.log());
    CHECK_THAT(to_candidate, Catch::Contains("ms after the poll that saw the new leader"));
}

TEST_CASE("etcd over https with a client certificate: verified both ways, and a switchover is followed",
          "[patroni][etcd][tls]") {
    auto& cluster = PatroniCluster::shared();
    REQUIRE(cluster.on_etcd());
    const auto& tls = cluster.etcd_tls();
    auto https = [&](const std::string& files) {
        return "source = \"etcd\"\n[topology.etcd]\nendpoints = [\"" + tls.url + "\"]\nscope = \"" + cluster.scope() +
               "\"\nusername = \"" + cluster.etcd_user() + "\"\npassword = \"" + cluster.etcd_password() + "\"\n" +
               files;
    };
    Pgrelay r(cluster, "",
              PgrelayOptions{.source_toml = https("ca = \"" + tls.ca + "\"\ncert = \"" + tls.cert + "\"\nkey = \"" +
                                                  tls.key + "\"\n")});
    wait_healthy();
    REQUIRE(eventually([&] { return routes_to(r, cluster.leader()); }, 30s));
    check_follows_switchover(r);

    // No client certificate: etcd refuses the connection; pgrelay says why and
    // never gets a topology (both ports hold).
    Pgrelay no_cert(cluster, "", PgrelayOptions{.source_toml = https("ca = \"" + tls.ca + "\"\n")});
    CHECK(eventually([&] { return no_cert.log().find("bad certificate") != std::string::npos; }, 20s));
    // etcd's certificate checked against another CA: pgrelay refuses etcd.
    TempDir other_dir("pgrelay-other-ca");
    TestCa other(other_dir.path(), "other");
    Pgrelay wrong_ca(cluster, "", PgrelayOptions{.source_toml = https("ca = \"" + other.cert() + "\"\n")});
    CHECK(eventually([&] { return wrong_ca.log().find("certificate verify failed") != std::string::npos; }, 20s));
    CHECK(no_cert.http_get("/topology").second.find("\"known\":false") != std::string::npos);
    CHECK(wrong_ca.http_get("/topology").second.find("\"known\":false") != std::string::npos);
}

TEST_CASE("etcd: the endpoint pgrelay follows is cut, the next one goes silent: pgrelay moves on each time",
          "[patroni][etcd][faults]") {
    auto& cluster = PatroniCluster::shared();
    REQUIRE(cluster.on_etcd());
    const auto etcd_port = static_cast<uint16_t>(std::stoi(cluster.etcd_url().substr(cluster.etcd_url().rfind(':') + 1)));
    TcpForwarder a(etcd_port), b(etcd_port);
    const std::string via_a = "http://127.0.0.1:" + std::to_string(a.port());
    const std::string via_b = "http://127.0.0.1:" + std::to_string(b.port());
    // Endpoints: A, B, then etcd itself; short timeouts so the test is quick.
    Pgrelay r(cluster, "",
              PgrelayOptions{.source_toml = cluster.source_toml("request_timeout = \"1s\"\ncheck_interval = \"500ms\"\n",
                                                                {via_a, via_b})});
    wait_healthy();
    REQUIRE(eventually([&] { return routes_to(r, cluster.leader()); }, 30s));
    REQUIRE(eventually([&] { return a.connections() >= 2; }, 10s));  // the unary connection and the watch
    PgConn session = pg_connect(user_conninfo(r.rw_port()));
    REQUIRE(session.ok());

    // A: every connection reset. pgrelay re-reads the state through B.
    a.cut();
    CHECK(eventually([&] { return b.connections() >= 2 && r.metric("pgrelay_dcs_connected") == 1; }, 20s));
    CHECK_THAT(r.log(), Catch::Contains(via_a + ": "));
    // B: open but silent (a wedged member, a blackholed path). The check's
    // read times out, and pgrelay moves on to etcd itself.
    b.blackhole();
    CHECK(eventually([&] { return r.log().find(via_b + ": check: ") != std::string::npos; }, 20s));
    CHECK(eventually([&] { return r.metric("pgrelay_dcs_connected") == 1 && b.connections() == 0; }, 20s));
    CHECK(r.metric("pgrelay_dcs_endpoint_failures_total") >= 2);
    // Sessions never noticed, and routing follows the cluster.
    CHECK(query_value(session.conn, "SELECT 1") == "1");
    check_follows_switchover(r);
}

// ------------------------------------------------------------------ instances

namespace {

// The instance's live peers' ids, from /topology.
std::set<std::string> peers_of(const Pgrelay& r) {
    const auto [status, body] = r.http_get("/topology");
    std::set<std::string> out;
    if (status != 200) return out;
    const size_t at = body.find("\"peers\":[");
    if (at == std::string::npos) return out;
    const std::string list = body.substr(at, body.find(']', at) - at);
    static const std::regex id(R"re("id":"([^"]+)")re");
    for (std::sregex_iterator it(list.begin(), list.end(), id), end; it != end; ++it) out.insert((*it)[1]);
    return out;
}

}  // namespace

TEST_CASE("three instances on 127.0.0.1-3 behind one name: peers, cancel across instances, a switchover followed by all, "
          "kill -9 and SIGTERM of an instance",
          "[patroni][instances]") {
    auto& cluster = PatroniCluster::shared();
    wait_healthy();
    pooled_users();  // pooluser exists
    const uint16_t rw = free_port(), ro = free_port(), admin = free_port();
    // etcd: the lease's TTL, the time a crashed instance stays listed (ZooKeeper: its 10 s session timeout).
    const auto listed_after_crash = cluster.on_etcd() ? 6s : 10s;
    static int run = 0;
    const std::string registry = "/pgrelay/" + cluster.scope() + "/lbtest" + std::to_string(++run);
    auto options = [&](int n) {
        PgrelayOptions o;
        o.listen_host = "127.0.0." + std::to_string(n);
        o.rw_port = rw;
        o.ro_port = ro;
        o.admin_port = admin;
        o.extra_server = "shutdown_grace = \"20s\"\n";
        // rw passthrough (protocol 3.0 keys from PostgreSQL 15); ro pooled, for
        // pgrelay's own keys, 3.2 ones included.
        // A registry of their own: the suite's other pgrelays follow the same
        // cluster and register too (each run of this case starts afresh).
        o.extra_sections = "[instance]\nid = \"lb" + std::to_string(n) + "\"\nttl = \"6s\"\nregistry_path = \"" +
                           registry + "\"\n[pool.ro]\npool_mode = "
                           "\"transaction\"\npool_size = 4\nauth_file = \"" + pooled_users() + "\"\n";
        return o;
    };
    std::vector<std::unique_ptr<Pgrelay>> lb;
    for (int n = 1; n <= 3; ++n) lb.push_back(std::make_unique<Pgrelay>(cluster, "hold_timeout = \"60s\"\n", options(n)));
    for (int i = 0; i < 3; ++i) {
        INFO("lb" << i + 1);
        std::set<std::string> want = {"lb1", "lb2", "lb3"};
        want.erase("lb" + std::to_string(i + 1));
        CHECK(eventually([&] { return peers_of(*lb[i]) == want; }, 30s));
        CHECK(lb[i]->metric("pgrelay_peers") == 2);
        CHECK(eventually([&] { return routes_to(*lb[i], cluster.leader()); }, 30s));
    }

    SECTION("cancel across instances: a PostgreSQL key (3.0) and a pooled 3.2 key, each sent to another instance") {
        RawLogin plain = raw_login("127.0.0.1", rw, "scramuser", "scrampass");
        INFO(plain.error);
        REQUIRE(plain.error.empty());
        REQUIRE(plain.secret.size() == 4);
        expect_cancelled(plain, "127.0.0.2", rw, cancel_request(plain.pid, plain.secret));
        CHECK(lb[1]->metric("pgrelay_cancel_requests_total{outcome=\"to_peer\"}") == 1);
        CHECK(lb[0]->metric("pgrelay_cancel_requests_total{outcome=\"forwarded\"}") == 1);

        RawLogin long_key = raw_login("127.0.0.1", ro, "pooluser", "poolpass", (3u << 16) | 2);
        INFO(long_key.error);
        REQUIRE(long_key.error.empty());
        REQUIRE(long_key.secret.size() == 32);
        expect_cancelled(long_key, "127.0.0.3", ro, cancel_request(long_key.pid, long_key.secret));
        CHECK(lb[2]->metric("pgrelay_cancel_requests_total{outcome=\"to_peer\"}") == 1);
        CHECK(lb[0]->metric("pgrelay_cancel_requests_total{outcome=\"forwarded\"}") == 2);
        // A wrong secret is passed on once, and dropped by the owner.
        RawClient bad(ro, "127.0.0.2");
        std::string wrong = long_key.secret;
        wrong[7] = static_cast<char>(wrong[7] ^ 1);
        REQUIRE(bad.send(cancel_request(long_key.pid, wrong)));
        bad.read_all(5s);
        CHECK(eventually([&] { return lb[0]->metric("pgrelay_cancel_requests_total{outcome=\"unknown_key\"}") == 1; }, 5s));
        CHECK(lb[1]->metric("pgrelay_cancel_requests_total{outcome=\"to_peer\"}") == 2);
    }

    SECTION("a switchover is followed by all three; kill -9 of one: multi-host clients go on through the others") {
        const std::string old_leader = cluster.leader();
        const std::string out = cluster.run("switchover");
        const std::string new_leader = cluster.leader();
        INFO(out);
        REQUIRE(new_leader != old_leader);
        std::vector<int64_t> at;
        for (auto& r : lb) {
            CHECK(eventually([&] { return routes_to(*r, new_leader); }, 30s));
            if (auto ms = reroute_ms(*r, new_leader)) at.push_back(*ms);
        }
        REQUIRE(at.size() == 3);
        const int64_t spread = *std::max_element(at.begin(), at.end()) - *std::min_element(at.begin(), at.end());
        WARN("the three instances rerouted within " << spread << " ms of one another");
        CHECK(spread < 1000);  // all follow the DCS watch; none waits for a later poll
        wait_healthy();

        // Clients with the name's three addresses, writing in a loop.
        {
            PgConn d = pg_connect(cluster.direct(cluster.leader()));
            REQUIRE(d.ok());
            exec(d.conn, "CREATE TABLE IF NOT EXISTS instance_writes (id bigserial PRIMARY KEY, client int, after_kill bool)");
        }
        const std::string multi = "host=127.0.0.1,127.0.0.2,127.0.0.3 port=" + std::to_string(rw) +
                                  " user=scramuser password=scrampass dbname=postgres connect_timeout=5 sslmode=disable";
        std::atomic<bool> killed{false}, stop{false};
        std::atomic<int> errors{0}, reconnects{0};
        std::vector<std::atomic<int>> after(6);
        std::vector<std::thread> clients;
        for (int c = 0; c < 6; ++c)
            clients.emplace_back([&, c] {
                std::unique_ptr<PgConn> conn;
                const auto deadline = Clock::now() + 120s;
                while (!stop && Clock::now() < deadline) {
                    if (!conn) {
                        conn = std::make_unique<PgConn>(pg_connect(multi));
                        if (!conn->ok()) {
                            conn.reset();
                            ++errors;
                            std::this_thread::sleep_for(200ms);
                            continue;
                        }
                        ++reconnects;
                    }
                    const bool k = killed;
                    PGresult* res = PQexec(conn->conn, ("INSERT INTO instance_writes (client, after_kill) VALUES (" +
                                                        std::to_string(c) + ", " + (k ? "true" : "false") + ")")
                                                           .c_str());
                    const bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
                    PQclear(res);
                    if (!ok) {
                        ++errors;
                        conn.reset();
                        continue;
                    }
                    if (k) ++after[c];
                    std::this_thread::sleep_for(100ms);
                }
            });
        // Some clients are on lb1 (libpq tries the first address first).
        REQUIRE(eventually([&] { return lb[0]->metric("pgrelay_client_connections{port=\"rw\"}") >= 1; }, 20s));
        std::this_thread::sleep_for(1s);
        const auto kill_at = Clock::now();
        ::kill(lb[0]->pid(), SIGKILL);
        killed = true;
        CHECK(lb[0]->wait_exit(5s) == 128 + SIGKILL);
        bool all_writing = eventually(
            [&] {
                for (auto& a : after)
                    if (a < 5) return false;
                return true;
            },
            60s);
        stop = true;
        for (auto& t : clients) t.join();
        CHECK(all_writing);
        INFO("errors " << errors << ", connections " << reconnects);
        CHECK(reconnects >= 7);  // at least the one on lb1 came back through another instance
        // The others drop lb1 once its DCS entry goes (session timeout / lease TTL).
        for (int i = 1; i < 3; ++i) {
            INFO("lb" << i + 1);
            CHECK(eventually([&] { return peers_of(*lb[i]).count("lb1") == 0; }, listed_after_crash + 10s));
            CHECK(peers_of(*lb[i]).size() == 1);
        }
        WARN("lb1 left the others' peer lists " << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - kill_at).count()
                                                << " ms after kill -9 (" << cluster.dcs() << ")");
    }

    SECTION("SIGTERM drains: /health 503 at once, the entry leaves the DCS before the session timeout") {
        PgConn held = pg_connect(lb[2]->conninfo(rw, "scramuser", "scrampass"));  // keeps lb3 draining
        REQUIRE(held.ok());
        CHECK(lb[2]->http_get("/health").first == 200);
        const auto t0 = Clock::now();
        lb[2]->signal(SIGTERM);
        CHECK(eventually([&] { return lb[2]->http_get("/health").first == 503; }, 2s));
        CHECK(lb[2]->http_get("/health/ro").first == 503);
        CHECK(eventually([&] { return peers_of(*lb[1]).count("lb3") == 0; }, 4s));
        WARN("lb3 left lb2's peer list " << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count()
                                         << " ms after SIGTERM");
        CHECK(lb[2]->running());  // still draining its session
        CHECK(query_value(held.conn, "SELECT 1") == "1");
    }
}
