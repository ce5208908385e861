// PatroniFollower (topology/patroni_follower.hpp), the part every Patroni
// source shares, driven by the etcd traffic recorded through a switchover
// (tests/topology/data/etcd/): the range at revision 140, then the watch from
// there, fed message by message as EtcdSource feeds it. No probes run (start()
// is not called), so the member keys alone decide writability.
#include <catch2/catch.hpp>

#include <boost/asio/io_context.hpp>
#include <fstream>
#include <sstream>

#include "topology/etcd_gateway.hpp"
#include "topology/http.hpp"
#include "proxy/log.hpp"
#include "topology/patroni_follower.hpp"

using namespace pgrelay::topology;
using namespace std::chrono_literals;

namespace {

std::string body_of(const std::string& name) {
    std::ifstream in(std::string(PGRELAY_SOURCE_DIR) + "/tests/topology/data/etcd/" + name, std::ios::binary);
    REQUIRE(in);
    std::stringstream ss;
    ss << in.rdbuf();
    http::ResponseParser p;
    p.feed(ss.str());
    REQUIRE(p.error().empty());
    return p.take_body();
}

const std::string kPrefix = "/service/pgrelay/";

// The follower logs every topology change at info: keep the test output clean.
struct QuietLog {
    QuietLog() { pgrelay::log::set_level(pgrelay::log::Level::Error); }
    ~QuietLog() { pgrelay::log::set_level(pgrelay::log::Level::Info); }
};

std::string primary_of(const SnapshotHub& hub) {
    auto t = hub.latest();
    REQUIRE(t);
    return t->primary ? t->members[*t->primary].name : "-";
}

}  // namespace

TEST_CASE("follower: a recorded etcd switchover, range then watch", "[follower][etcd]") {
    QuietLog quiet;
    boost::asio::io_context ctx;
    SnapshotHub hub;
    FollowerOptions o;
    o.source = "etcd";
    o.leader_event = "leader key event";
    o.where = "test";
    std::vector<double> reroutes;
    o.on_reroute = [&](double s) { reroutes.push_back(s); };
    auto f = PatroniFollower::create(ctx, hub, o);

    // Nothing is published before the first complete read.
    std::string err;
    auto range = etcd::parse_range_response(body_of("range.http"), err);
    REQUIRE(range);
    for (const auto& kv : range->kvs) {
        REQUIRE(kv.key.rfind(kPrefix, 0) == 0);
        f->apply_key(kv.key.substr(kPrefix.size()), &kv.value);
    }
    f->publish();
    CHECK_FALSE(hub.latest());
    f->set_loaded();
    f->publish();
    REQUIRE(hub.latest());
    CHECK(hub.latest()->source == "etcd");
    CHECK(primary_of(hub) == "pg1");
    CHECK(hub.latest()->members.size() == 3);
    CHECK(reroutes.empty());  // the first read is no reroute

    // The watch, one message at a time, each published as one snapshot.
    http::JsonObjectSplitter split;
    split.feed(body_of("watch_switchover.http"));
    std::vector<std::pair<int64_t, std::string>> primaries;  // revision -> primary after it
    uint64_t versions = hub.version();
    size_t publishes = 0;
    while (auto obj = split.next()) {
        auto m = etcd::parse_watch_message(*obj, err);
        REQUIRE(m);
        if (m->kind != etcd::WatchMessage::Kind::Events) continue;
        for (const auto& e : m->events) {
            const std::string rel = e.kv.key.substr(kPrefix.size());
            if (rel == "leader" && e.type == etcd::Event::Type::Put) f->note_leader_event(PatroniFollower::Clock::now());
            f->apply_key(rel, e.type == etcd::Event::Type::Delete ? nullptr : &e.kv.value);
        }
        f->publish();
        if (hub.version() != versions) ++publishes;
        versions = hub.version();
        primaries.emplace_back(m->events.back().kv.mod_revision, primary_of(hub));
    }
    auto primary_at = [&](int64_t rev) {
        std::string p = "?";
        for (const auto& [r, name] : primaries)
            if (r <= rev) p = name;
        return p;
    };
    CHECK(primary_at(148) == "pg1");
    // The leader key is deleted (149) while pg1's member key still says
    // master: the leader key is the write authority, so no primary.
    CHECK(primary_at(149) == "-");
    // pg2 holds the key (153) but its member key says replica until 159:
    // without a probe saying writable, writes wait.
    CHECK(primary_at(153) == "-");
    CHECK(primary_at(158) == "-");
    CHECK(primary_at(159) == "pg2");
    CHECK(primary_of(hub) == "pg2");
    CHECK(hub.latest()->leader == "pg2");
    // status rewrites that change nothing publish nothing; routing changes do.
    CHECK(publishes < primaries.size());
    CHECK(publishes >= 3);
    REQUIRE(reroutes.size() == 1);  // pg1 -> pg2, timed from the leader key's PUT
    CHECK(reroutes[0] >= 0);
    f->stop();
}

TEST_CASE("follower: a member that vanishes and comes back within the grace period never left", "[follower]") {
    QuietLog quiet;
    boost::asio::io_context ctx;
    SnapshotHub hub;
    FollowerOptions o;
    o.source = "zookeeper";
    auto f = PatroniFollower::create(ctx, hub, o);
    const std::string leader = "pg0";
    const std::string m0 = R"({"conn_url":"postgres://127.0.0.1:5432/postgres","state":"running","role":"master"})";
    const std::string m1 = R"({"conn_url":"postgres://127.0.0.1:5433/postgres","state":"running","role":"replica"})";
    f->apply_key("leader", &leader);
    f->apply_key("members/pg0", &m0);
    f->apply_key("members/pg1", &m1);
    f->set_loaded();
    f->publish();
    REQUIRE(hub.latest()->members.size() == 2);

    // Gone, and back 0.5 s later: still two members throughout.
    f->apply_key("members/pg1", nullptr);
    f->publish();
    ctx.run_for(500ms);
    CHECK(hub.latest()->members.size() == 2);
    f->apply_key("members/pg1", &m1);
    f->publish();
    ctx.run_for(PatroniFollower::kVanishGrace + 300ms);
    CHECK(hub.latest()->members.size() == 2);

    // Gone for good: dropped once the grace period is over, not before.
    f->member_gone("pg1");
    ctx.restart();
    ctx.run_for(PatroniFollower::kVanishGrace - 500ms);
    CHECK(hub.latest()->members.size() == 2);
    ctx.run_for(800ms);
    CHECK(hub.latest()->members.size() == 1);
    CHECK(hub.latest()->find("pg1") == nullptr);
    // Keys the follower does not know are ignored, not mistaken for members.
    CHECK_FALSE(f->apply_key("members/pg9/extra", &m1));
    CHECK_FALSE(f->apply_key("config", &m1));
    CHECK(hub.latest()->members.size() == 1);
    f->stop();
}
