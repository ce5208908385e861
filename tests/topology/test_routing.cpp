// Routing over hand-built Topology snapshots: eligibility and its reasons, weighted
// round robin and least_conn order in ro_candidates, primary fallback, Router::route
// per port role (rw/ro, 57P03 refusals) and SnapshotHub publish/Reader/listeners.
#include <catch2/catch.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "proxy/config.hpp"
#include "proxy/router.hpp"
#include "topology/routing.hpp"
#include "topology/source.hpp"
#include "topology/topology.hpp"

using namespace pgrelay::topology;
using Catch::Matchers::Contains;
using Idx = std::vector<size_t>;

namespace {

Member make_member(std::string name, Role role, State state = State::Running) {
    Member m;
    m.host = name + ".db.internal";
    m.name = std::move(name);
    m.port = 5432;
    m.role = role;
    m.state = state;
    return m;
}

Member replica(std::string name, uint32_t weight = 1) {
    Member m = make_member(std::move(name), Role::Replica);
    m.weight = weight;
    return m;
}

// members[0] is the primary "p" (when with_primary), followed by `replicas`.
Topology cluster(std::vector<Member> replicas, bool with_primary = true) {
    Topology t;
    t.source = "test";
    if (with_primary) {
        t.members.push_back(make_member("p", Role::Primary));
        t.primary = 0;
    }
    for (auto& r : replicas) t.members.push_back(std::move(r));
    return t;
}

RoutingOptions rr_opts(bool fallback = true) {
    RoutingOptions o;
    o.ro_fallback_to_primary = fallback;
    o.ro_balance = Balance::RoundRobin;
    return o;
}

// Each member index at most once.
bool all_distinct(const Idx& v) { return std::set<size_t>(v.begin(), v.end()).size() == v.size(); }

}  // namespace

TEST_CASE("eligible_replicas keeps only running, weighted, non-excluded replicas", "[routing]") {
    Topology t = cluster({});
    t.members.push_back(replica("ok1"));                                     // 1: eligible
    t.members.push_back(make_member("stopped", Role::Replica, State::Stopped));   // 2
    t.members.push_back(make_member("starting", Role::Replica, State::Starting)); // 3
    t.members.push_back(make_member("standby", Role::StandbyLeader));        // 4
    t.members.push_back(make_member("other", Role::Other));                  // 5
    Member nolb = replica("nolb");
    nolb.tags = {"nofailover", "noloadbalance"};
    t.members.push_back(nolb);                                               // 6
    t.members.push_back(replica("w0", 0));                                   // 7
    Member ex = replica("ex");
    ex.excluded = true;
    t.members.push_back(ex);                                                 // 8
    Member tagged = replica("tagged");
    tagged.tags = {"nofailover", "clonefrom"};
    t.members.push_back(tagged);                                             // 9: other tags are fine
    t.members.push_back(replica("ok2", 5));                                  // 10: eligible

    // The primary (0) is never a read replica.
    CHECK(eligible_replicas(t, rr_opts()) == Idx{1, 9, 10});
}

TEST_CASE("eligible_replicas on an empty or replica-less topology is empty", "[routing]") {
    CHECK(eligible_replicas(Topology{}, rr_opts()).empty());
    CHECK(eligible_replicas(cluster({}), rr_opts()).empty());
}

TEST_CASE("lag_aware routing excludes unknown lag and lag above max_replica_lag", "[routing]") {
    Member unknown = replica("unknown");  // lag_bytes not set
    Member below = replica("below");
    below.lag_bytes = 99;
    Member equal = replica("equal");
    equal.lag_bytes = 100;
    Member above = replica("above");
    above.lag_bytes = 101;
    Member zero = replica("zero");
    zero.lag_bytes = 0;
    const Topology t = cluster({unknown, below, equal, above, zero});

    RoutingOptions o = rr_opts();
    o.max_replica_lag = 100;

    SECTION("lag_aware on: unknown and above are ineligible, the limit itself is allowed") {
        o.lag_aware = true;
        CHECK(eligible_replicas(t, o) == Idx{2, 3, 5});
    }
    SECTION("lag_aware off: lag is ignored entirely") {
        o.lag_aware = false;
        CHECK(eligible_replicas(t, o) == Idx{1, 2, 3, 4, 5});
    }
    SECTION("raising max_replica_lag readmits the lagging member but not the unknown one") {
        o.lag_aware = true;
        o.max_replica_lag = 1000;
        CHECK(eligible_replicas(t, o) == Idx{2, 3, 4, 5});
    }
}

TEST_CASE("ro_candidates round robin over 2 replicas alternates the first element", "[routing]") {
    const Topology t = cluster({replica("r1"), replica("r2")});
    const RoutingOptions o = rr_opts(true);
    const size_t expected_first[] = {1, 2, 1, 2, 1, 2};
    for (uint64_t rr = 0; rr <= 5; ++rr) {
        INFO("rr = " << rr);
        const Idx c = ro_candidates(t, o, rr);
        REQUIRE(c.size() == 3);
        CHECK(c[0] == expected_first[rr]);
        CHECK(c[1] == (expected_first[rr] == 1 ? 2u : 1u));
        CHECK(c[2] == 0u);  // primary last
        CHECK(all_distinct(c));
    }
}

TEST_CASE("ro_candidates round robin over 3 replicas rotates in snapshot order", "[routing]") {
    const Topology t = cluster({replica("r1"), replica("r2"), replica("r3")});
    const Idx expected[] = {{1, 2, 3, 0}, {2, 3, 1, 0}, {3, 1, 2, 0}, {1, 2, 3, 0}, {2, 3, 1, 0}, {3, 1, 2, 0}};
    for (uint64_t rr = 0; rr <= 5; ++rr) {
        INFO("rr = " << rr);
        const Idx c = ro_candidates(t, rr_opts(true), rr);
        CHECK(c == expected[rr]);
        CHECK(all_distinct(c));
    }
    SECTION("without fallback the primary is not appended") {
        for (uint64_t rr = 0; rr <= 5; ++rr) {
            INFO("rr = " << rr);
            const Idx c = ro_candidates(t, rr_opts(false), rr);
            REQUIRE(c.size() == 3);
            CHECK(c == Idx(expected[rr].begin(), expected[rr].end() - 1));
        }
    }
}

TEST_CASE("ro_candidates skips ineligible members in the rotation", "[routing]") {
    Member down = make_member("down", Role::Replica, State::Stopped);
    const Topology t = cluster({replica("r1"), down, replica("r3")});
    CHECK(ro_candidates(t, rr_opts(false), 0) == Idx{1, 3});
    CHECK(ro_candidates(t, rr_opts(false), 1) == Idx{3, 1});
    CHECK(ro_candidates(t, rr_opts(false), 2) == Idx{1, 3});
}

TEST_CASE("ro_candidates with no eligible replica: primary only, or nothing", "[routing]") {
    Member nolb = replica("nolb");
    nolb.tags = {"noloadbalance"};
    const Topology t = cluster({make_member("down", Role::Replica, State::Stopped), nolb});

    for (uint64_t rr : {0ull, 1ull, 7ull}) {
        INFO("rr = " << rr);
        CHECK(ro_candidates(t, rr_opts(true), rr) == Idx{0});
        CHECK(ro_candidates(t, rr_opts(false), rr).empty());
    }

    SECTION("no primary either: empty even with fallback") {
        const Topology no_primary = cluster({make_member("down", Role::Replica, State::Stopped)}, false);
        CHECK(ro_candidates(no_primary, rr_opts(true), 0).empty());
    }
    SECTION("an excluded primary is not used as fallback") {
        Topology ex = t;
        ex.members[0].excluded = true;
        CHECK(ro_candidates(ex, rr_opts(true), 0).empty());
    }
}

TEST_CASE("ro_candidates weighted round robin: weight 2 vs 1 is first exactly 2/3 of the time", "[routing]") {
    const Topology t = cluster({replica("heavy", 2), replica("light", 1)});
    const RoutingOptions o = rr_opts(true);

    int heavy_first = 0, light_first = 0;
    for (uint64_t rr = 0; rr < 300; ++rr) {
        const Idx c = ro_candidates(t, o, rr);
        REQUIRE(c.size() == 3);  // each member once despite weight 2, then the primary
        REQUIRE(all_distinct(c));
        REQUIRE(c.back() == 0u);
        if (c[0] == 1) ++heavy_first;
        if (c[0] == 2) ++light_first;
    }
    CHECK(heavy_first == 200);
    CHECK(light_first == 100);

    // The cycle is heavy, heavy, light.
    CHECK(ro_candidates(t, o, 0) == Idx{1, 2, 0});
    CHECK(ro_candidates(t, o, 1) == Idx{1, 2, 0});
    CHECK(ro_candidates(t, o, 2) == Idx{2, 1, 0});
}

TEST_CASE("ro_candidates weighted round robin with unequal weights over three members", "[routing]") {
    const Topology t = cluster({replica("a", 1), replica("b", 3), replica("c", 2)});
    int first[4] = {0, 0, 0, 0};
    for (uint64_t rr = 0; rr < 600; ++rr) {
        const Idx c = ro_candidates(t, rr_opts(false), rr);
        REQUIRE(c.size() == 3);
        REQUIRE(all_distinct(c));
        ++first[c[0]];
    }
    CHECK(first[1] == 100);
    CHECK(first[2] == 300);
    CHECK(first[3] == 200);
}

TEST_CASE("ro_candidates least_conn orders by connections per weight, ties follow rr", "[routing]") {
    RoutingOptions o = rr_opts(true);
    o.ro_balance = Balance::LeastConn;

    SECTION("fewest connections per unit of weight first") {
        // p, a(w1), b(w1), c(w2)
        const Topology t = cluster({replica("a", 1), replica("b", 1), replica("c", 2)});
        const std::vector<uint32_t> conns{50, 3, 1, 3};  // loads: a 3, b 1, c 1.5
        for (uint64_t rr = 0; rr < 4; ++rr) {
            INFO("rr = " << rr);
            CHECK(ro_candidates(t, o, rr, &conns) == Idx{2, 3, 1, 0});
        }
        // c's weight makes 4 connections (load 2) still lighter than a's 3.
        const std::vector<uint32_t> conns2{0, 3, 5, 4};
        CHECK(ro_candidates(t, o, 0, &conns2) == Idx{3, 1, 2, 0});
    }
    SECTION("equal load alternates with rr") {
        const Topology t = cluster({replica("a"), replica("b")});
        const std::vector<uint32_t> conns{0, 2, 2};
        CHECK(ro_candidates(t, o, 0, &conns) == Idx{1, 2, 0});
        CHECK(ro_candidates(t, o, 1, &conns) == Idx{2, 1, 0});
        CHECK(ro_candidates(t, o, 2, &conns) == Idx{1, 2, 0});
    }
    SECTION("ties among three keep the rotated order, the lighter member still leads") {
        const Topology t = cluster({replica("a"), replica("b"), replica("c")});
        const std::vector<uint32_t> conns{0, 4, 4, 1};
        CHECK(ro_candidates(t, o, 0, &conns) == Idx{3, 1, 2, 0});
        CHECK(ro_candidates(t, o, 1, &conns) == Idx{3, 2, 1, 0});
    }
    SECTION("a conns vector shorter than members counts missing members as 0") {
        const Topology t = cluster({replica("a"), replica("b")});
        const std::vector<uint32_t> conns{0, 7};  // b has no entry
        CHECK(ro_candidates(t, o, 0, &conns) == Idx{2, 1, 0});
    }
    SECTION("ineligible members are not ranked even with no connections") {
        Member down = make_member("down", Role::Replica, State::Stopped);
        const Topology t = cluster({replica("a"), down});
        const std::vector<uint32_t> conns{0, 9, 0};
        CHECK(ro_candidates(t, o, 0, &conns) == Idx{1, 0});
    }
    SECTION("without a conns vector least_conn falls back to round robin") {
        const Topology t = cluster({replica("a"), replica("b")});
        CHECK(ro_candidates(t, o, 0) == Idx{1, 2, 0});
        CHECK(ro_candidates(t, o, 1) == Idx{2, 1, 0});
    }
}

TEST_CASE("ro_ineligibility explains each reason", "[routing]") {
    RoutingOptions o = rr_opts();
    o.max_replica_lag = 1000;

    CHECK(ro_ineligibility(replica("ok"), o).empty());

    Member m = replica("ex");
    m.excluded = true;
    CHECK(ro_ineligibility(m, o) == "excluded in config");

    CHECK(ro_ineligibility(make_member("p", Role::Primary), o) == "role is primary");
    CHECK(ro_ineligibility(make_member("s", Role::StandbyLeader), o) == "role is standby_leader");
    CHECK(ro_ineligibility(make_member("o", Role::Other), o) == "role is other");

    CHECK(ro_ineligibility(make_member("st", Role::Replica, State::Stopped), o) == "state is stopped");
    CHECK(ro_ineligibility(make_member("sg", Role::Replica, State::Starting), o) == "state is starting");
    CHECK(ro_ineligibility(make_member("so", Role::Replica, State::Other), o) == "state is other");

    m = replica("nolb");
    m.tags = {"noloadbalance"};
    CHECK(ro_ineligibility(m, o) == "tagged noloadbalance");

    CHECK(ro_ineligibility(replica("w0", 0), o) == "weight is 0");

    o.lag_aware = true;
    CHECK(ro_ineligibility(replica("nolag"), o) == "lag unknown");
    m = replica("lagging");
    m.lag_bytes = 5000;
    CHECK(ro_ineligibility(m, o) == "lag 5000 bytes > max_replica_lag 1000");
    m.lag_bytes = 1000;
    CHECK(ro_ineligibility(m, o).empty());

    SECTION("exclusion is reported first when several reasons apply") {
        Member multi = make_member("multi", Role::Primary, State::Stopped);
        multi.excluded = true;
        multi.weight = 0;
        CHECK(ro_ineligibility(multi, o) == "excluded in config");
    }
}

TEST_CASE("Member and Target addresses bracket IPv6 hosts", "[routing]") {
    Member m = replica("v4");
    m.host = "10.1.2.3";
    m.port = 6000;
    CHECK(m.address() == "10.1.2.3:6000");
    m.host = "fe80::1";
    CHECK(m.address() == "[fe80::1]:6000");
    CHECK(pgrelay::Target{"x", "::1", 5432}.address() == "[::1]:5432");
    CHECK(pgrelay::Target{"x", "db.local", 5433}.address() == "db.local:5433");
}

TEST_CASE("Router::route rw picks the primary", "[router]") {
    const Topology t = cluster({replica("r1"), replica("r2")});
    pgrelay::Router router(rr_opts(true));
    for (int i = 0; i < 3; ++i) {
        const pgrelay::RouteDecision d = router.route(pgrelay::PortRole::ReadWrite, &t);
        REQUIRE(d.candidates.size() == 1);
        CHECK(d.candidates[0].member == "p");
        CHECK(d.candidates[0].host == t.members[0].host);
        CHECK(d.candidates[0].port == 5432);
        CHECK(std::string(d.sqlstate).empty());
    }
}

TEST_CASE("Router::route rw without a primary refuses with 57P03", "[router]") {
    pgrelay::Router router(rr_opts(true));

    Topology t = cluster({replica("r1")}, false);
    t.primary_reason = "no leader key in DCS";
    pgrelay::RouteDecision d = router.route(pgrelay::PortRole::ReadWrite, &t);
    CHECK(d.candidates.empty());
    CHECK(std::string(d.sqlstate) == "57P03");
    CHECK_THAT(d.message, Contains("rw"));
    CHECK_THAT(d.message, Contains("no leader key in DCS"));

    SECTION("no snapshot at all") {
        d = router.route(pgrelay::PortRole::ReadWrite, nullptr);
        CHECK(d.candidates.empty());
        CHECK(std::string(d.sqlstate) == "57P03");
        CHECK_THAT(d.message, Contains("rw"));
    }
}

TEST_CASE("Router::route ro alternates across calls and ends with the primary", "[router]") {
    const Topology t = cluster({replica("r1"), replica("r2")});
    pgrelay::Router router(rr_opts(true));
    const char* expected_first[] = {"r1", "r2", "r1", "r2"};
    for (const char* want : expected_first) {
        const pgrelay::RouteDecision d = router.route(pgrelay::PortRole::ReadOnly, &t);
        REQUIRE(d.candidates.size() == 3);
        CHECK(d.candidates[0].member == want);
        CHECK(d.candidates[1].member == (std::string(want) == "r1" ? "r2" : "r1"));
        CHECK(d.candidates[2].member == "p");
        CHECK(std::string(d.sqlstate).empty());
    }
}

TEST_CASE("Router::route ro with no eligible replica", "[router]") {
    const Topology t = cluster({make_member("down", Role::Replica, State::Stopped)});

    SECTION("fallback off refuses with 57P03") {
        pgrelay::Router router(rr_opts(false));
        const pgrelay::RouteDecision d = router.route(pgrelay::PortRole::ReadOnly, &t);
        CHECK(d.candidates.empty());
        CHECK(std::string(d.sqlstate) == "57P03");
        CHECK_THAT(d.message, Contains("ro"));
    }
    SECTION("fallback on goes to the primary") {
        pgrelay::Router router(rr_opts(true));
        const pgrelay::RouteDecision d = router.route(pgrelay::PortRole::ReadOnly, &t);
        REQUIRE(d.candidates.size() == 1);
        CHECK(d.candidates[0].member == "p");
        CHECK(std::string(d.sqlstate).empty());
    }
    SECTION("fallback on but no primary refuses with 57P03") {
        const Topology np = cluster({make_member("down", Role::Replica, State::Stopped)}, false);
        pgrelay::Router router(rr_opts(true));
        const pgrelay::RouteDecision d = router.route(pgrelay::PortRole::ReadOnly, &np);
        CHECK(d.candidates.empty());
        CHECK(std::string(d.sqlstate) == "57P03");
    }
    SECTION("no snapshot refuses with 57P03") {
        pgrelay::Router router(rr_opts(true));
        const pgrelay::RouteDecision d = router.route(pgrelay::PortRole::ReadOnly, nullptr);
        CHECK(d.candidates.empty());
        CHECK(std::string(d.sqlstate) == "57P03");
    }
}

TEST_CASE("SnapshotHub publish stamps increasing versions and Reader sees the newest", "[source]") {
    SnapshotHub hub;
    SnapshotHub::Reader reader(hub);

    CHECK(hub.version() == 0);
    CHECK(hub.latest() == nullptr);
    CHECK(reader.current() == nullptr);

    std::vector<TopologyPtr> published;
    for (int i = 0; i < 3; ++i) {
        auto t = std::make_shared<Topology>(cluster({replica("r" + std::to_string(i))}));
        t->version = 1000;  // whatever the source put there is overwritten
        hub.publish(t);
        published.push_back(t);
        INFO("publish #" << i);
        CHECK(t->version == uint64_t(i + 1));
        CHECK(hub.version() == uint64_t(i + 1));
        CHECK(hub.latest() == published.back());
        CHECK(reader.current() == published.back());
        CHECK(reader.current()->members.back().name == "r" + std::to_string(i));
        // Asking again without a publish returns the same snapshot.
        CHECK(reader.current() == published.back());
    }

    SECTION("a reader created late still gets the newest snapshot") {
        SnapshotHub::Reader late(hub);
        REQUIRE(late.current() != nullptr);
        CHECK(late.current()->version == 3);
    }
    SECTION("a reader that skipped publishes jumps straight to the newest") {
        SnapshotHub::Reader r2(hub);
        REQUIRE(r2.current()->version == 3);
        hub.publish(std::make_shared<Topology>(cluster({})));
        auto last = std::make_shared<Topology>(cluster({replica("last")}));
        hub.publish(last);
        CHECK(r2.current() == TopologyPtr(last));
        CHECK(r2.current()->version == 5);
    }
}

TEST_CASE("SnapshotHub on_change listeners get (before, after)", "[source]") {
    SnapshotHub hub;
    std::vector<std::pair<TopologyPtr, TopologyPtr>> calls_a, calls_b;
    hub.on_change([&](const TopologyPtr& b, const TopologyPtr& a) { calls_a.emplace_back(b, a); });
    hub.on_change([&](const TopologyPtr& b, const TopologyPtr& a) { calls_b.emplace_back(b, a); });

    auto t1 = std::make_shared<Topology>(cluster({replica("r1")}));
    auto t2 = std::make_shared<Topology>(cluster({replica("r2")}));
    hub.publish(t1);
    REQUIRE(calls_a.size() == 1);
    CHECK(calls_a[0].first == nullptr);
    CHECK(calls_a[0].second == TopologyPtr(t1));
    CHECK(calls_a[0].second->version == 1);

    hub.publish(t2);
    REQUIRE(calls_a.size() == 2);
    CHECK(calls_a[1].first == TopologyPtr(t1));
    CHECK(calls_a[1].second == TopologyPtr(t2));
    CHECK(calls_a[1].first->version == 1);
    CHECK(calls_a[1].second->version == 2);

    // Every listener is called for every publish.
    CHECK(calls_b == calls_a);
}
