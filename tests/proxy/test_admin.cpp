// The admin listener's documents without a cluster: the TopologyHistory ring
// (what counts as a change, reroute times attached to the change that moved
// rw, the bound), the fields /topology gained for the status page, and the
// page itself (self-contained, served as HTML with a strict CSP).
#include <catch2/catch.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>
#include <string>

#include "proxy/admin.hpp"
#include "proxy/status_page.hpp"
#include "topology/source.hpp"
#include "topology/topology.hpp"

using namespace pgrelay;
using Catch::Matchers::Contains;
namespace json = boost::json;

namespace {

topology::Member member(std::string name, topology::Role role) {
    topology::Member m;
    m.name = std::move(name);
    m.host = "127.0.0.1";
    m.port = 5432;
    m.role = role;
    m.state = topology::State::Running;
    m.lag_bytes = 0;
    return m;
}

// pg0 primary and leader, pg1 and pg2 replicas (Patroni source).
topology::Topology cluster(const std::string& leader = "pg0") {
    topology::Topology t;
    t.source = "zookeeper";
    t.leader = leader;
    for (const char* n : {"pg0", "pg1", "pg2"})
        t.members.push_back(member(n, n == leader ? topology::Role::Primary : topology::Role::Replica));
    for (size_t i = 0; i < t.members.size(); ++i)
        if (t.members[i].name == leader) t.primary = i;
    return t;
}

}  // namespace

TEST_CASE("TopologyHistory records routing changes and not lag", "[admin]") {
    TopologyHistory h;
    auto a = cluster();
    a.version = 1;
    REQUIRE(h.record(nullptr, a, 1000));
    auto lag = a;
    lag.version = 2;
    lag.members[1].lag_bytes = 12345;
    CHECK_FALSE(h.record(&a, lag, 2000));
    REQUIRE(h.recent().size() == 1);
    CHECK_THAT(h.recent()[0].what.at(0), Contains("first topology from zookeeper: rw pg0, 3 members"));

    // A switchover: the leader key moves, then rw follows with its reroute time.
    auto b = a;
    b.version = 3;
    b.leader = "pg1";
    b.primary.reset();
    b.primary_reason = "leader pg1 is not writable yet";
    h.note_reroute(9.0);  // a stale sample that belongs to nothing recorded yet...
    REQUIRE(h.record(&a, b, 3000));
    auto c = cluster("pg1");
    c.version = 4;
    h.note_reroute(0.042);
    REQUIRE(h.record(&b, c, 3042));
    const auto r = h.recent();
    REQUIRE(r.size() == 3);
    CHECK(r[1].primary_before == "pg0");
    CHECK(r[1].primary.empty());
    CHECK(r[1].primary_reason == "leader pg1 is not writable yet");
    CHECK_FALSE(r[1].reroute_seconds);  // no new primary: not a reroute (the sample waits)
    CHECK_THAT(r[1].what.at(0), Contains("rw: pg0 -> none"));
    CHECK_THAT(r[1].what.at(1), Contains("leader: pg0 -> pg1"));
    CHECK(r[2].primary_before.empty());
    CHECK(r[2].primary == "pg1");
    REQUIRE(r[2].reroute_seconds);
    CHECK(*r[2].reroute_seconds == Approx(0.042));
    CHECK(r[2].at_unix_ms == 3042);
    bool role_line = false;
    for (const auto& w : r[2].what) role_line |= w == "pg1: role replica -> primary";
    CHECK(role_line);

    // Members leaving and joining.
    auto d = c;
    d.members.pop_back();
    REQUIRE(h.record(&c, d, 4000));
    CHECK(h.recent().back().what == std::vector<std::string>{"pg2 left"});
    REQUIRE(h.record(&d, c, 5000));
    CHECK(h.recent().back().what == std::vector<std::string>{"pg2 joined as replica"});
}

TEST_CASE("TopologyHistory keeps the last 20 changes", "[admin]") {
    TopologyHistory h;
    auto a = cluster();
    auto b = a;
    b.members[2].weight = 0;
    h.record(nullptr, a, 0);
    for (int i = 0; i < 30; ++i) REQUIRE(h.record(i % 2 ? &b : &a, i % 2 ? a : b, i + 1));
    const auto r = h.recent();
    CHECK(r.size() == TopologyHistory::kCapacity);
    CHECK(h.total() == 31);
    CHECK(r.back().at_unix_ms == 30);
    CHECK(r.front().at_unix_ms == 11);
}

TEST_CASE("/topology JSON has eligibility reasons per port and the changes newest first", "[admin]") {
    TopologyHistory h;
    auto a = cluster();
    h.record(nullptr, a, 1000);
    auto b = cluster("pg1");
    h.note_reroute(0.5);
    h.record(&a, b, 2000);
    b.members[2].excluded = true;
    topology::RoutingOptions opts;
    const json::value v = json::parse(topology_json(&b, opts, nullptr, &h));
    const auto& o = v.as_object();
    CHECK(o.at("leader").as_string() == "pg1");
    CHECK(o.at("generated_at_unix_ms").as_int64() > 0);
    CHECK(o.at("connections").at("rw").at("clients").is_int64());
    CHECK(o.at("connections").at("ro").at("held").is_int64());
    const auto& members = o.at("members").as_array();
    REQUIRE(members.size() == 3);
    const auto& pg0 = members[0].as_object();
    CHECK_FALSE(pg0.at("rw_eligible").as_bool());
    CHECK(pg0.at("rw_excluded_because").as_string() == "not the leader (pg1 is)");
    CHECK(pg0.at("ro_eligible").as_bool());
    CHECK_FALSE(pg0.at("is_leader").as_bool());
    const auto& pg1 = members[1].as_object();
    CHECK(pg1.at("rw_eligible").as_bool());
    CHECK(pg1.at("is_leader").as_bool());
    CHECK_FALSE(pg1.contains("rw_excluded_because"));
    CHECK(pg1.at("backends").at("rw").as_int64() == 0);
    CHECK(members[2].at("ro_excluded_because").as_string() == "excluded in config");

    const auto& changes = o.at("changes").as_array();
    REQUIRE(changes.size() == 2);
    CHECK(o.at("changes_total").as_int64() == 2);
    CHECK(changes[0].at("primary").as_string() == "pg1");
    CHECK(changes[0].at("primary_before").as_string() == "pg0");
    CHECK(changes[0].at("reroute_seconds").as_double() == Approx(0.5));
    CHECK(changes[0].at("at").as_string() == "1970-01-01T00:00:02.000Z");
    CHECK(changes[1].at("reroute_seconds").is_null());

    // Without a history (or a topology) the old shape is unchanged.
    const json::value none = json::parse(topology_json(nullptr, opts));
    CHECK_FALSE(none.as_object().contains("changes"));
    CHECK_FALSE(none.at("known").as_bool());
}

TEST_CASE("the status page is one self-contained document served at / with a strict CSP", "[admin]") {
    const std::string html(status_page_html());
    CHECK(html.rfind("<!DOCTYPE html>", 0) == 0);
    CHECK_THAT(html, Contains("id=\"leader\""));
    CHECK_THAT(html, Contains("fetch(path"));
    // Nothing from elsewhere: no URLs, no src or href attributes, no markup from data.
    CHECK_THAT(html, !Contains("http://") && !Contains("https://") && !Contains("src=") && !Contains("innerHTML") &&
                         !Contains("@import") && !Contains("url("));
    // The one href: an empty data: favicon, so the browser asks for none.
    const auto href = html.find("href=");
    CHECK(html.substr(href, 14) == "href=\"data:,\">");
    CHECK(html.find("href=", href + 1) == std::string::npos);
    const std::string csp(status_page_csp());
    CHECK(csp.rfind("default-src 'none'; script-src 'sha256-", 0) == 0);
    CHECK_THAT(csp, Contains("style-src 'sha256-") && Contains("connect-src 'self'") && Contains("frame-ancestors 'none'"));
    CHECK_THAT(csp, !Contains("unsafe"));

    boost::asio::io_context ctx;
    topology::SnapshotHub hub;
    AdminServer admin(ctx, "127.0.0.1", 0, hub, [] { return topology::RoutingOptions{}; });
    for (const char* path : {"/", "/status", "/?x=1"}) {
        const auto r = admin.handle(path);
        CHECK(r.status == 200);
        CHECK(r.content_type == "text/html; charset=utf-8");
        CHECK(r.body == html);
    }
    CHECK(admin.handle("/topology").content_type == "application/json");
    CHECK(admin.handle("/nope").status == 404);
}
