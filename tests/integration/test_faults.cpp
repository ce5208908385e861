// The fault campaign (issue #14): partial network faults between pgrelay and
// the DCS, under a write loop through rw and reads through ro, on the shared
// Patroni cluster (ZooKeeper, or etcd with PGRELAY_TEST_DCS=etcd). Faults are
// made by a TcpForwarder (fixtures.hpp) that pgrelay reaches the store
// through. Each case checks every acknowledged write afterwards; times are
// printed (WARN), never asserted beyond generous bounds that only tell
// "followed" from "did not follow".
#include <catch2/catch.hpp>

#include <atomic>
#include <regex>
#include <thread>

#include "fixtures.hpp"
#include "patroni_helpers.hpp"

using namespace pgrelay::test;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// Reads through ro on one connection, reconnecting on errors; counts both.
class Reader {
public:
    explicit Reader(uint16_t port) : port_(port), thread_([this] { loop(); }) {}
    ~Reader() { stop(); }
    void stop() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }
    size_t reads() const { return reads_; }
    size_t errors() const { return errors_; }

private:
    void loop() {
        const auto deadline = Clock::now() + 600s;  // bounded whatever happens
        PgConn c;
        while (!stop_ && Clock::now() < deadline) {
            if (!c.ok()) c = pg_connect(user_conninfo(port_));
            if (c.ok()) {
                try {
                    query_value(c.conn, "SELECT count(*) FROM pg_class");
                    ++reads_;
                } catch (const std::exception&) {
                    ++errors_;
                    c = PgConn();
                }
            } else {
                ++errors_;
            }
            std::this_thread::sleep_for(50ms);
        }
    }
    uint16_t port_;
    std::atomic<bool> stop_{false};
    std::atomic<size_t> reads_{0}, errors_{0};
    std::thread thread_;
};

std::string topology_of(const Pgrelay& r) { return r.http_get("/topology").second; }

// "N ms" from pgrelay's reroute line for `leader` measured from `what`, or "?".
std::string reroute_after(const Pgrelay& r, const std::string& leader, const std::string& what) {
    const std::string log = r.log();
    std::smatch m;
    const std::regex line("rw now routes to " + leader + " \\([^\n]*\\), ([0-9.]+ ms) after the " + what);
    return std::regex_search(log, m, line) ? m[1].str() : "?";
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Scenario 1: pgrelay cannot hear the DCS (a blackhole both ways) while
// Patroni switches over, 1 s into the cut. The cut lasts `cut` in all, or
// (cut = 0) ends as soon as rw reaches the new leader.
void blackholed_dcs_switchover(std::chrono::seconds cut) {
    auto& cluster = PatroniCluster::shared();
    wait_healthy();
    TcpForwarder dcs(cluster.dcs_port());
    Pgrelay r(cluster, "hold_timeout = \"60s\"\n",
              PgrelayOptions{.source_toml = cluster.source_toml_via(dcs.port(), "")});
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
