// Patroni 3.0 znode parsing (members/<name>, status, optime/leader, sync) and
// build_topology on recorded-looking 3-node cluster snapshots, including
// mid-switchover states and lag-aware routing (routing.hpp) on the result.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "topology/patroni.hpp"
#include "topology/routing.hpp"
#include "topology/topology.hpp"

using namespace pgrelay::topology;
namespace pt = pgrelay::topology::patroni;
using Catch::Matchers::Contains;
using Idx = std::vector<size_t>;

namespace {

// ---- recorded-looking member znodes of a 3-node Patroni 3.0.2 cluster ----
// Leader WAL position (status.optime) while the cluster is healthy.
constexpr uint64_t kOptime = 67405600;

const std::string kPg0Master =
    R"({"conn_url":"postgres://127.0.0.1:5442/postgres","api_url":"http://127.0.0.1:8010/patroni",)"
    R"("state":"running","role":"master","version":"3.0.2","xlog_location":67405600,"timeline":1})";
const std::string kPg1Replica =
    R"({"conn_url":"postgres://127.0.0.1:5443/postgres","api_url":"http://127.0.0.1:8011/patroni",)"
    R"("state":"running","role":"replica","version":"3.0.2","xlog_location":67405600,"timeline":1})";
const std::string kPg2ReplicaNoLb =
    R"({"conn_url":"postgres://127.0.0.1:5444/postgres","api_url":"http://127.0.0.1:8012/patroni",)"
    R"("state":"running","role":"replica","version":"3.0.2","tags":{"noloadbalance":true},)"
    R"("xlog_location":67397408,"timeline":1})";
// Switchover to pg1: pg1 finished promotion (timeline 2), pg0 is being demoted.
const std::string kPg1Master =
    R"({"conn_url":"postgres://127.0.0.1:5443/postgres","api_url":"http://127.0.0.1:8011/patroni",)"
    R"("state":"running","role":"master","version":"3.0.2","xlog_location":67408000,"timeline":2})";
const std::string kPg1Promoted =
    R"({"conn_url":"postgres://127.0.0.1:5443/postgres","api_url":"http://127.0.0.1:8011/patroni",)"
    R"("state":"running","role":"promoted","version":"3.0.2","xlog_location":67405600,"timeline":1})";
const std::string kPg0Demoted =
    R"({"conn_url":"postgres://127.0.0.1:5442/postgres","api_url":"http://127.0.0.1:8010/patroni",)"
    R"("state":"stopping","role":"demoted","version":"3.0.2","xlog_location":67405600,"timeline":1})";

const std::string kStatus = R"({"optime":67405600,"slots":{"pg1":67405600,"pg2":67397408}})";
const std::string kSync = R"({"leader":"pg0","sync_standby":"pg1"})";

pt::MemberInfo must_parse(std::string_view name, std::string_view json) {
    std::string err;
    auto m = pt::parse_member(name, json, err);
    INFO("member " << name << ": " << json << " -> error '" << err << "'");
    REQUIRE(m.has_value());
    return *m;
}

// The error of a member that must be rejected (empty if it was accepted).
std::string must_reject(std::string_view name, std::string_view json) {
    std::string err;
    auto m = pt::parse_member(name, json, err);
    INFO("member " << name << ": " << json);
    CHECK_FALSE(m.has_value());
    CHECK_FALSE(err.empty());
    return err;
}

// A member znode with a given role and state (other fields as recorded).
std::string member_json(std::string_view role, std::string_view state, uint16_t port = 5443,
                        std::string_view extra = {}) {
    std::string s = R"({"conn_url":"postgres://127.0.0.1:)" + std::to_string(port) +
                     R"(/postgres","api_url":"http://127.0.0.1:8011/patroni","state":")" + std::string(state) +
                     R"(","role":")" + std::string(role) + R"(","version":"3.0.2")";
    if (!extra.empty()) s += "," + std::string(extra);
    return s + "}";
}

// ClusterState from znode contents, as zk_source would assemble it.
pt::ClusterState cluster(std::optional<std::string> leader,
                         std::vector<std::pair<std::string, std::string>> members,
                         std::optional<std::string> status = kStatus) {
    pt::ClusterState s;
    s.leader = std::move(leader);
    for (const auto& [name, json] : members) s.members.emplace(name, must_parse(name, json));
    if (status) s.optime = pt::parse_status_optime(*status);
    s.sync_standby = pt::parse_sync_standby(kSync);
    return s;
}

pt::ClusterState healthy(std::optional<std::string> leader = "pg0") {
    return cluster(std::move(leader), {{"pg0", kPg0Master}, {"pg1", kPg1Replica}, {"pg2", kPg2ReplicaNoLb}});
}

std::string primary_name(const Topology& t) {
    const Member* p = t.primary_member();
    return p ? p->name : std::string("<none>");
}

RoutingOptions lag_opts(uint64_t max_lag = 16ull << 20, bool fallback = true) {
    RoutingOptions o;
    o.lag_aware = true;
    o.max_replica_lag = max_lag;
    o.ro_fallback_to_primary = fallback;
    o.ro_balance = Balance::RoundRobin;
    return o;
}

std::vector<std::string> names(const Topology& t, const Idx& idx) {
    std::vector<std::string> out;
    for (size_t i : idx) out.push_back(t.members.at(i).name);
    return out;
}

using Names = std::vector<std::string>;

}  // namespace

// ============================== parse_member ==============================

TEST_CASE("parse_member: the recorded leader znode", "[patroni][member]") {
    const auto m = must_parse("pg0", kPg0Master);
    CHECK(m.name == "pg0");
    CHECK(m.host == "127.0.0.1");
    CHECK(m.port == 5442);
    CHECK(m.role == Role::Primary);
    CHECK(m.role_text == "master");
    CHECK(m.state == State::Running);
    CHECK(m.state_text == "running");
    CHECK(m.xlog_location == std::optional<uint64_t>(67405600));
    CHECK(m.timeline == std::optional<uint64_t>(1));
    CHECK(m.tags.empty());
}

TEST_CASE("parse_member: the name comes from the znode path, not the JSON", "[patroni][member]") {
    const auto m = must_parse("pg7", R"({"name":"other","conn_url":"postgres://db7:5432/postgres"})");
    CHECK(m.name == "pg7");
    CHECK(m.host == "db7");
}

TEST_CASE("parse_member: every Patroni role, kept verbatim and mapped", "[patroni][member]") {
    const std::vector<std::pair<std::string, Role>> roles = {
        {"master", Role::Primary},         {"primary", Role::Primary},   {"replica", Role::Replica},
        {"standby_leader", Role::StandbyLeader}, {"promoted", Role::Other}, {"demoted", Role::Other},
        {"uninitialized", Role::Other},
    };
    for (const auto& [text, role] : roles) {
        INFO("role " << text);
        const auto m = must_parse("pg1", member_json(text, "running"));
        CHECK(m.role_text == text);
        CHECK(m.role == role);
        CHECK(pt::parse_role(text) == role);
        CHECK(m.state == State::Running);
        CHECK(m.port == 5443);
    }
}

TEST_CASE("parse_member: every Patroni state, kept verbatim and mapped", "[patroni][member]") {
    const std::vector<std::pair<std::string, State>> states = {
        {"running", State::Running},   {"starting", State::Starting},         {"stopping", State::Stopped},
        {"stopped", State::Stopped},   {"crashed", State::Stopped},           {"start failed", State::Stopped},
        {"creating replica", State::Other}, {"restarting", State::Other},
        {"initializing new cluster", State::Other}, {"running custom bootstrap script", State::Other},
    };
    for (const auto& [text, state] : states) {
        INFO("state " << text);
        const auto m = must_parse("pg1", member_json("replica", text));
        CHECK(m.state_text == text);
        CHECK(m.state == state);
        CHECK(pt::parse_state(text) == state);
        CHECK(m.role == Role::Replica);
    }
}

TEST_CASE("parse_role / parse_state: unknown text is Other", "[patroni][member]") {
    CHECK(pt::parse_role("") == Role::Other);
    CHECK(pt::parse_role("leader") == Role::Other);
    CHECK(pt::parse_role("master ") == Role::Other);
    CHECK(pt::parse_state("") == State::Other);
    CHECK(pt::parse_state("runningx") == State::Other);
}

TEST_CASE("parse_member: tags", "[patroni][member][tags]") {
    SECTION("true tags are included, sorted") {
        const auto m = must_parse(
            "pg2", member_json("replica", "running", 5444, R"("tags":{"nofailover":true,"noloadbalance":true})"));
        CHECK(m.tags == Names{"nofailover", "noloadbalance"});
    }
    SECTION("every well-known tag") {
        const auto m = must_parse(
            "pg2", member_json("replica", "running", 5444,
                               R"("tags":{"noloadbalance":true,"nofailover":true,"clonefrom":true,"nosync":true})"));
        CHECK(m.tags == Names{"clonefrom", "nofailover", "noloadbalance", "nosync"});
    }
    SECTION("false tags are excluded") {
        const auto m = must_parse(
            "pg2", member_json("replica", "running", 5444, R"("tags":{"nofailover":false,"noloadbalance":true})"));
        CHECK(m.tags == Names{"noloadbalance"});
        const auto n = must_parse("pg2", member_json("replica", "running", 5444,
                                                      R"("tags":{"nofailover":false,"noloadbalance":false})"));
        CHECK(n.tags.empty());
    }
    SECTION("string values: \"true\" and custom values count, \"false\" does not") {
        const auto m = must_parse(
            "pg2", member_json("replica", "running", 5444,
                               R"("tags":{"noloadbalance":"true","dc":"eu-west-1","nosync":"false","rack":""})"));
        CHECK(m.tags == Names{"dc", "noloadbalance"});
    }
    SECTION("numbers and null") {
        const auto m = must_parse(
            "pg2", member_json("replica", "running", 5444, R"("tags":{"a":1,"b":0,"c":null,"d":7})"));
        CHECK(m.tags == Names{"a", "d"});
    }
    SECTION("no tags, or tags that are not an object") {
        CHECK(must_parse("pg1", kPg1Replica).tags.empty());
        CHECK(must_parse("pg1", member_json("replica", "running", 5443, R"("tags":["noloadbalance"])")).tags.empty());
        CHECK(must_parse("pg1", member_json("replica", "running", 5443, R"("tags":"noloadbalance")")).tags.empty());
        CHECK(must_parse("pg1", member_json("replica", "running", 5443, R"("tags":{})")).tags.empty());
    }
    SECTION("the recorded noloadbalance replica") {
        const auto m = must_parse("pg2", kPg2ReplicaNoLb);
        CHECK(m.tags == Names{"noloadbalance"});
        CHECK(m.xlog_location == std::optional<uint64_t>(67397408));
    }
}

TEST_CASE("parse_member: missing or mistyped optional fields take defaults", "[patroni][member]") {
    SECTION("only conn_url") {
        const auto m = must_parse("pg1", R"({"conn_url":"postgres://127.0.0.1:5443/postgres"})");
        CHECK(m.role == Role::Other);
        CHECK(m.role_text.empty());
        CHECK(m.state == State::Other);
        CHECK(m.state_text.empty());
        CHECK_FALSE(m.xlog_location.has_value());
        CHECK_FALSE(m.timeline.has_value());
        CHECK(m.tags.empty());
        CHECK(m.host == "127.0.0.1");
        CHECK(m.port == 5443);
    }
    SECTION("role and state of the wrong type") {
        const auto m = must_parse("pg1", R"({"conn_url":"postgres://h:5443/p","role":1,"state":null})");
        CHECK(m.role == Role::Other);
        CHECK(m.role_text.empty());
        CHECK(m.state == State::Other);
        CHECK(m.state_text.empty());
    }
    SECTION("xlog_location and timeline as strings are not read as numbers") {
        const auto m =
            must_parse("pg1", R"({"conn_url":"postgres://h:5443/p","xlog_location":"67405600","timeline":"1"})");
        CHECK_FALSE(m.xlog_location.has_value());
        CHECK_FALSE(m.timeline.has_value());
    }
    SECTION("zero and uint64 max are valid positions") {
        const auto z = must_parse("pg1", R"({"conn_url":"postgres://h:5443/p","xlog_location":0,"timeline":0})");
        CHECK(z.xlog_location == std::optional<uint64_t>(0));
        CHECK(z.timeline == std::optional<uint64_t>(0));
        const auto m =
            must_parse("pg1", R"({"conn_url":"postgres://h:5443/p","xlog_location":18446744073709551615})");
        CHECK(m.xlog_location == std::optional<uint64_t>(std::numeric_limits<uint64_t>::max()));
    }
    SECTION("leader znode extras (pending_restart) are ignored") {
        const auto m = must_parse(
            "pg0", member_json("master", "running", 5442,
                               R"("xlog_location":67405600,"timeline":1,"pending_restart":true)"));
        CHECK(m.role == Role::Primary);
        CHECK(m.state == State::Running);
        CHECK(m.tags.empty());
        CHECK(m.xlog_location == std::optional<uint64_t>(67405600));
    }
}

TEST_CASE("parse_member: conn_url variants", "[patroni][member][conn_url]") {
    struct Case {
        std::string url, host;
        uint16_t port;
    };
    const std::vector<Case> ok = {
        {"postgres://127.0.0.1:5442/postgres", "127.0.0.1", 5442},
        {"postgresql://10.0.0.11:5433/postgres", "10.0.0.11", 5433},
        {"postgres://replicator:s3cret@db1.example.com:6432/postgres", "db1.example.com", 6432},
        {"postgres://postgres@db1:5433/postgres", "db1", 5433},
        {"postgres://[::1]:5433/postgres", "::1", 5433},
        {"postgres://[fe80::1%25eth0]:5434/postgres", "fe80::1%25eth0", 5434},
        {"postgres://[::1]/postgres", "::1", 5432},
        {"postgres://db1/postgres", "db1", 5432},
        {"postgres://db1", "db1", 5432},
        {"postgres://db1:5433", "db1", 5433},
        {"postgres://db1:5433?sslmode=require", "db1", 5433},
        {"postgres://db1?sslmode=require", "db1", 5432},
        {"postgres://db1:5433/postgres?sslmode=require&connect_timeout=3", "db1", 5433},
        {"postgres://db1:1/postgres", "db1", 1},
        {"postgres://db1:65535/postgres", "db1", 65535},
    };
    for (const auto& c : ok) {
        INFO("conn_url " << c.url);
        const auto m = must_parse("pg1", R"({"conn_url":")" + c.url + R"(","role":"replica","state":"running"})");
        CHECK(m.host == c.host);
        CHECK(m.port == c.port);
        std::string h;
        uint16_t p = 0;
        CHECK(pt::parse_conn_url(c.url, h, p));
        CHECK(h == c.host);
        CHECK(p == c.port);
    }

    SECTION("IPv6 hosts keep brackets in Member::address()") {
        auto s = cluster("pg0", {{"pg0", R"({"conn_url":"postgres://[::1]:5433/postgres","role":"master",)"
                                         R"("state":"running"})"}});
        auto t = pt::build_topology(s, {}, "", pt::ProbeStatus::Unknown);
        REQUIRE(t->members.size() == 1);
        CHECK(t->members[0].address() == "[::1]:5433");
    }
}

TEST_CASE("parse_member: missing or invalid conn_url is an error", "[patroni][member][conn_url]") {
    SECTION("missing") {
        const auto err = must_reject("pg1", R"({"role":"replica","state":"running","xlog_location":1})");
        CHECK_THAT(err, Contains("pg1"));
        CHECK_THAT(err, Contains("conn_url"));
    }
    SECTION("not a string") {
        must_reject("pg1", R"({"conn_url":5432,"role":"replica"})");
        must_reject("pg1", R"({"conn_url":null,"role":"replica"})");
        must_reject("pg1", R"({"conn_url":{"host":"db1"},"role":"replica"})");
    }
    const std::vector<std::string> bad = {
        "postgres://db1:0/postgres",
        "postgres://db1:70000/postgres",
        "postgres://db1:65536/postgres",
        "postgres://db1:abc/postgres",
        "postgres://db1:-1/postgres",
        "postgres://db1:5432abc/postgres",
        "postgres://db1:99999999999999999999/postgres",
        "postgres://[::1]:0/postgres",
        "postgres://[::1]:abc/postgres",
        "postgres://[::1/postgres",
        "postgres://[::1]x5432/postgres",
        "postgres://[]:5432/postgres",
        "postgres://:5432/postgres",
        "postgres://user@:5432/postgres",
        "postgres://",
        "postgres:/db1:5432/postgres",
        "http://db1:5432/postgres",
        "db1:5432",
        "",
    };
    for (const auto& url : bad) {
        INFO("conn_url '" << url << "'");
        const auto err = must_reject("pg1", R"({"conn_url":")" + url + R"(","role":"replica"})");
        CHECK_THAT(err, Contains("conn_url"));
        std::string h;
        uint16_t p = 0;
        CHECK_FALSE(pt::parse_conn_url(url, h, p));
    }
}

TEST_CASE("parse_member: garbage JSON is rejected with an error", "[patroni][member][garbage]") {
    SECTION("every truncation of a recorded znode") {
        for (size_t n = 0; n < kPg2ReplicaNoLb.size(); ++n) {
            std::string err;
            const std::string_view cut = std::string_view(kPg2ReplicaNoLb).substr(0, n);
            INFO("truncated to " << n << ": " << cut);
            CHECK_FALSE(pt::parse_member("pg2", cut, err).has_value());
            CHECK_FALSE(err.empty());
        }
    }
    SECTION("valid JSON that is not an object") {
        for (std::string_view j : {"42", "\"pg0\"", "true", "false", "null", "[]", "-1", "1e400"}) {
            const auto err = must_reject("pg0", j);
            CHECK_THAT(err, Contains("pg0"));
        }
        must_reject("pg0", "[" + kPg0Master + "]");
        must_reject("pg0", "\"" + std::string("postgres://127.0.0.1:5442/postgres") + "\"");
    }
    SECTION("empty and blank") {
        must_reject("pg0", "");
        must_reject("pg0", "   \n\t");
    }
    SECTION("binary bytes") {
        must_reject("pg0", std::string("\x00\xff\xfe{\x01", 5));
        must_reject("pg0", std::string("\x1f\x8b\x08\x00\x00\x00\x00\x00", 8));  // a gzip header
        // A valid znode followed by a NUL and junk is not a valid document.
        must_reject("pg0", kPg0Master + std::string("\0junk", 5));
        must_reject("pg0", std::string("\0", 1) + kPg0Master);
        // Two concatenated documents.
        must_reject("pg0", kPg0Master + kPg1Replica);
    }
    SECTION("not JSON at all") {
        must_reject("pg0", "pg0");
        must_reject("pg0", "conn_url=postgres://127.0.0.1:5442/postgres");
        must_reject("pg0", "{conn_url:'postgres://127.0.0.1:5442/postgres'}");
        must_reject("pg0", R"({"conn_url":"postgres://127.0.0.1:5442/postgres",})");
        must_reject("pg0", R"({"conn_url":"postgres://127.0.0.1:5442/postgres","xlog_location":NaN})");
        must_reject("pg0", R"({"conn_url":"postgres://127.0.0.1:5442/postgres","xlog_location":Infinity})");
    }
    SECTION("deeply nested") {
        const std::string arrays = std::string(100000, '[') + std::string(100000, ']');
        must_reject("pg0", arrays);
        std::string tags = R"({"conn_url":"postgres://127.0.0.1:5442/postgres","tags":)";
        for (int i = 0; i < 5000; ++i) tags += R"({"a":)";
        tags += "true";
        tags += std::string(5000, '}');
        tags += "}";
        must_reject("pg0", tags);
        const std::string opened = std::string(100000, '{');
        must_reject("pg0", opened);
    }
}

TEST_CASE("parse_member: out-of-range positions are unknown, never wrapped", "[patroni][member][garbage]") {
    // The member itself is well-formed; only the number is unusable, so it is
    // kept with an unknown position (lag unknown -> not chosen by lag-aware routing).
    for (std::string_view num : {"-1", "-67405600", "-0.5", "-1e400", "1e400", "99999999999999999999999",
                                 "18446744073709551616", "1.8446744073709552e19", "-9223372036854775808"}) {
        INFO("xlog_location " << num);
        std::string err;
        const std::string j = member_json(
            "replica", "running", 5443,
            "\"xlog_location\":" + std::string(num) + ",\"timeline\":" + std::string(num));
        auto m = pt::parse_member("pg1", j, err);
        REQUIRE(m.has_value());
        CHECK_FALSE(m->xlog_location.has_value());
        CHECK_FALSE(m->timeline.has_value());
        CHECK(m->role == Role::Replica);
    }
    // A huge number elsewhere in the znode does not matter.
    const auto m = must_parse(
        "pg1", member_json("replica", "running", 5443,
                           R"("xlog_location":67405600,"version":1e400,"x":-99999999999999999999999)"));
    CHECK(m.xlog_location == std::optional<uint64_t>(67405600));
}

TEST_CASE("parse_member: fixed-seed random and mutated znodes never crash", "[patroni][member][fuzz]") {
    std::mt19937_64 rng(0x9e3779b97f4a7c15ull);  // fixed seed: the same inputs every run
    auto pick = [&](size_t n) { return n == 0 ? size_t(0) : size_t(rng() % n); };

    const std::vector<std::string> seeds = {kPg0Master, kPg1Replica, kPg2ReplicaNoLb, kPg1Master,
                                            kPg1Promoted, kPg0Demoted, kStatus, kSync};
    const std::string alphabet = "{}[]\":,0123456789-+eE.truefalsnul\\ \t\n/@?[]x";
    const std::vector<std::string> tokens = {
        "null", "true", "false", "-1", "1e400", "18446744073709551616", "\"\"", "{}", "[]", "\"conn_url\"",
        "\"postgres://[::1]:0/x\"", "\"postgres://h:70000\"", "\"tags\"", "{\"noloadbalance\":true}", "\\u0000",
        "\"\\ud800\"", "\xff", std::string("\0", 1)};

    auto mutate = [&](std::string s) {
        const int ops = 1 + int(pick(4));
        for (int k = 0; k < ops; ++k) {
            switch (pick(8)) {
                case 0:  // flip a byte to anything
                    if (!s.empty()) s[pick(s.size())] = char(rng() & 0xff);
                    break;
                case 1:  // insert a JSON-significant char
                    s.insert(s.begin() + long(pick(s.size() + 1)), alphabet[pick(alphabet.size())]);
                    break;
                case 2:  // delete a range
                    if (!s.empty()) {
                        const size_t at = pick(s.size());
                        s.erase(at, 1 + pick(16));
                    }
                    break;
                case 3:  // truncate
                    s.resize(pick(s.size() + 1));
                    break;
                case 4:  // duplicate a range
                    if (!s.empty()) {
                        const size_t at = pick(s.size());
                        const std::string part = s.substr(at, 1 + pick(32));
                        s.insert(pick(s.size() + 1), part);
                    }
                    break;
                case 5:  // insert a token
                    s.insert(pick(s.size() + 1), tokens[pick(tokens.size())]);
                    break;
                case 6:  // splice with another seed
                {
                    const std::string& o = seeds[pick(seeds.size())];
                    s = s.substr(0, pick(s.size() + 1)) + o.substr(pick(o.size() + 1));
                    break;
                }
                default:  // replace a digit run's first digit with a token
                {
                    const size_t at = s.find_first_of("0123456789", pick(s.size() + 1));
                    if (at != std::string::npos) s.replace(at, 1, tokens[pick(tokens.size())]);
                    break;
                }
            }
        }
        return s;
    };

    // Structurally valid objects with random member fields (many accepted).
    const std::vector<std::string> keys = {"conn_url", "role", "state", "xlog_location", "timeline", "tags",
                                           "api_url", "version", "pending_restart", "noloadbalance", ""};
    const std::vector<std::string> urls = {
        "\"postgres://127.0.0.1:5442/postgres\"", "\"postgresql://u:p@db:6432/x?sslmode=require\"",
        "\"postgres://[::1]:5433/postgres\"", "\"postgres://db\"", "\"postgres://db:0\"", "\"postgres://:1\"",
        "\"http://db:5432\"", "\"postgres://[::1\"", "5432", "null"};
    const std::vector<std::string> scalars = {"\"master\"", "\"primary\"", "\"replica\"", "\"standby_leader\"",
                                              "\"running\"", "\"creating replica\"", "\"stopped\"", "0", "1",
                                              "-1", "67405600", "1e400", "-1e400", "1.5", "true", "false",
                                              "null", "\"true\"", "\"false\"", "\"\""};
    std::function<std::string(int)> value = [&](int depth) -> std::string {
        const size_t k = pick(depth > 3 ? 2 : 4);
        if (k == 0) return scalars[pick(scalars.size())];
        if (k == 1) return urls[pick(urls.size())];
        if (k == 2) {
            std::string a = "[";
            for (size_t i = 0, n = pick(4); i < n; ++i) a += (i ? "," : "") + value(depth + 1);
            return a + "]";
        }
        std::string o = "{";
        for (size_t i = 0, n = pick(5); i < n; ++i)
            o += (i ? ",\"" : "\"") + keys[pick(keys.size())] + "\":" + value(depth + 1);
        return o + "}";
    };
    auto random_member = [&] {
        std::string o = "{";
        bool first = true;
        for (const auto& key : keys) {
            if (pick(4) == 0) continue;
            std::string v;
            if (key == "conn_url") v = urls[pick(urls.size())];
            else if (key == "tags") v = value(1);
            else v = pick(5) == 0 ? value(1) : scalars[pick(scalars.size())];
            o += (first ? "\"" : ",\"") + key + "\":" + v;
            first = false;
        }
        return o + "}";
    };

    size_t accepted = 0, rejected = 0, violations = 0;
    std::string first_violation;
    auto check_one = [&](const std::string& input) {
        std::string err;
        std::optional<pt::MemberInfo> m;
        try {
            m = pt::parse_member("pgX", input, err);
        } catch (...) {
            ++violations;
            if (first_violation.empty()) first_violation = "threw: " + input;
            return;
        }
        bool ok = true;
        if (m) {
            ++accepted;
            ok = m->name == "pgX" && !m->host.empty() && m->port != 0 && m->role == pt::parse_role(m->role_text) &&
                 m->state == pt::parse_state(m->state_text) && std::is_sorted(m->tags.begin(), m->tags.end());
        } else {
            ++rejected;
            ok = !err.empty();
        }
        // The other parsers see the same bytes.
        (void)pt::parse_status_optime(input);
        (void)pt::parse_legacy_optime(input);
        (void)pt::parse_sync_standby(input);
        (void)pt::parse_failover(input);
        if (!ok) {
            ++violations;
            if (first_violation.empty()) first_violation = input;
        }
        if (m) {
            pt::ClusterState s;
            s.leader = "pgX";
            s.optime = pt::parse_status_optime(kStatus);
            s.members.emplace("pgX", *m);
            auto t = pt::build_topology(s, {}, "pgX", pt::ProbeStatus::Unknown);
            const bool tok = t && t->members.size() == 1 && t->leader == "pgX" &&
                             (t->primary ? (*t->primary == 0 && t->primary_reason.empty())
                                         : !t->primary_reason.empty());
            if (!tok) {
                ++violations;
                if (first_violation.empty()) first_violation = "build_topology: " + input;
            }
        }
    };

    for (int i = 0; i < 3000; ++i) check_one(mutate(seeds[pick(seeds.size())]));
    for (int i = 0; i < 2000; ++i) check_one(random_member());
    for (int i = 0; i < 500; ++i) {  // pure random bytes
        std::string s(pick(64), '\0');
        for (auto& c : s) c = char(rng() & 0xff);
        check_one(s);
    }

    INFO("first violation: " << first_violation);
    CHECK(violations == 0);
    // The generators reach both outcomes, so the invariants were exercised.
    CHECK(accepted > 200);
    CHECK(rejected > 2000);
}

// =================== status, legacy optime/leader, sync ===================

TEST_CASE("parse_status_optime", "[patroni][status]") {
    CHECK(pt::parse_status_optime(kStatus) == std::optional<uint64_t>(kOptime));
    CHECK(pt::parse_status_optime(R"({"optime":67405600})"
                                  "\n") == std::optional<uint64_t>(kOptime));
    CHECK(pt::parse_status_optime(R"({"optime":0,"slots":{}})") == std::optional<uint64_t>(0));
    CHECK(pt::parse_status_optime(R"({"optime":18446744073709551615})") ==
          std::optional<uint64_t>(std::numeric_limits<uint64_t>::max()));
    CHECK_FALSE(pt::parse_status_optime(R"({"slots":{"pg1":67405600}})").has_value());
    CHECK_FALSE(pt::parse_status_optime("{}").has_value());
    CHECK_FALSE(pt::parse_status_optime("").has_value());
    CHECK_FALSE(pt::parse_status_optime("67405600").has_value());
    CHECK_FALSE(pt::parse_status_optime(R"([{"optime":67405600}])").has_value());
    CHECK_FALSE(pt::parse_status_optime(R"({"optime":-1})").has_value());
    CHECK_FALSE(pt::parse_status_optime(R"({"optime":-1e400})").has_value());
    CHECK_FALSE(pt::parse_status_optime(R"({"optime":1e400})").has_value());
    CHECK_FALSE(pt::parse_status_optime(R"({"optime":null})").has_value());
    CHECK_FALSE(pt::parse_status_optime(R"({"optime":"67405600"})").has_value());
    CHECK_FALSE(pt::parse_status_optime(R"({"optime":67405600)").has_value());
    CHECK_FALSE(pt::parse_status_optime(std::string("\xff\xfe\0", 3)).has_value());
}

TEST_CASE("parse_legacy_optime", "[patroni][status]") {
    CHECK(pt::parse_legacy_optime("67405600") == std::optional<uint64_t>(kOptime));
    CHECK(pt::parse_legacy_optime("67405600\n") == std::optional<uint64_t>(kOptime));
    CHECK(pt::parse_legacy_optime("0") == std::optional<uint64_t>(0));
    CHECK(pt::parse_legacy_optime("18446744073709551615") ==
          std::optional<uint64_t>(std::numeric_limits<uint64_t>::max()));
    CHECK_FALSE(pt::parse_legacy_optime("").has_value());
    CHECK_FALSE(pt::parse_legacy_optime("\n").has_value());
    CHECK_FALSE(pt::parse_legacy_optime("abc").has_value());
    CHECK_FALSE(pt::parse_legacy_optime("67405600abc").has_value());
    CHECK_FALSE(pt::parse_legacy_optime("0x4048A20").has_value());
    CHECK_FALSE(pt::parse_legacy_optime("1.5").has_value());
    CHECK_FALSE(pt::parse_legacy_optime("-1").has_value());
    CHECK_FALSE(pt::parse_legacy_optime("-67405600\n").has_value());
    CHECK_FALSE(pt::parse_legacy_optime("18446744073709551616").has_value());
    CHECK_FALSE(pt::parse_legacy_optime(R"({"optime":67405600})").has_value());
    CHECK_FALSE(pt::parse_legacy_optime(std::string("674\0" "05600", 9)).has_value());
}

TEST_CASE("parse_sync_standby", "[patroni][status]") {
    CHECK(pt::parse_sync_standby(kSync) == std::optional<std::string>("pg1"));
    CHECK(pt::parse_sync_standby(R"({"leader":"pg0","sync_standby":"pg1,pg2"})") ==
          std::optional<std::string>("pg1,pg2"));
    CHECK_FALSE(pt::parse_sync_standby(R"({"leader":"pg0","sync_standby":null})").has_value());
    CHECK_FALSE(pt::parse_sync_standby(R"({"leader":"pg0"})").has_value());
    CHECK_FALSE(pt::parse_sync_standby(R"({"leader":"pg0","sync_standby":1})").has_value());
    CHECK_FALSE(pt::parse_sync_standby("").has_value());
    CHECK_FALSE(pt::parse_sync_standby("pg1").has_value());
    CHECK_FALSE(pt::parse_sync_standby(R"(["pg1"])").has_value());
    CHECK_FALSE(pt::parse_sync_standby(R"({"leader":"pg0","sync_standby":"pg1")").has_value());
}

TEST_CASE("parse_failover: Patroni's failover key, JSON and the old plain form", "[patroni][status]") {
    // What patronictl switchover writes (patroni/ctl.py, api.py).
    auto f = pt::parse_failover(R"({"leader": "pg0", "member": "pg1"})");
    REQUIRE(f);
    CHECK(f->leader == std::optional<std::string>("pg0"));
    CHECK(f->candidate == std::optional<std::string>("pg1"));
    CHECK_FALSE(f->scheduled);
    f = pt::parse_failover(R"({"leader": "pg0", "member": "pg1", "scheduled_at": "2026-12-01T14:30:00+00:00"})");
    REQUIRE(f);
    CHECK(f->scheduled);
    f = pt::parse_failover(R"({"member": "pg2"})");  // a failover names only the candidate
    REQUIRE(f);
    CHECK_FALSE(f->leader);
    CHECK(f->candidate == std::optional<std::string>("pg2"));
    f = pt::parse_failover(R"({"leader": "pg0", "scheduled_at": null})");
    REQUIRE(f);
    CHECK_FALSE(f->scheduled);
    CHECK_FALSE(f->candidate);
    f = pt::parse_failover("pg0:pg1\n");
    REQUIRE(f);
    CHECK(f->leader == std::optional<std::string>("pg0"));
    CHECK(f->candidate == std::optional<std::string>("pg1"));
    f = pt::parse_failover(":pg1");
    REQUIRE(f);
    CHECK_FALSE(f->leader);
    CHECK(f->candidate == std::optional<std::string>("pg1"));
    CHECK_FALSE(pt::parse_failover(""));
    CHECK_FALSE(pt::parse_failover("{}"));  // what the new leader leaves behind
    CHECK_FALSE(pt::parse_failover(R"({"leader": "", "member": null})"));
    CHECK_FALSE(pt::parse_failover(":"));
    CHECK_FALSE(pt::parse_failover("{"));
    CHECK_FALSE(pt::parse_failover(R"(["pg0"])"));
}

TEST_CASE("build_topology: a failover key away from the leader is a pending switchover", "[patroni][build][switchover]") {
    auto s = healthy();
    CHECK_FALSE(pt::build_topology(s, {}, "pg0", pt::ProbeStatus::Unknown)->switchover_pending);
    s.failover_seen = std::chrono::steady_clock::now();
    s.failover = pt::parse_failover(R"({"leader": "pg0", "member": "pg1"})");
    auto t = pt::build_topology(s, {}, "pg0", pt::ProbeStatus::Unknown);
    CHECK(t->switchover_pending);
    CHECK(t->switchover_to == "pg1");
    CHECK(t->switchover_since == s.failover_seen);
    CHECK(primary_name(*t) == "pg0");  // still routed there: holding is the proxy's call
    SECTION("a failover naming only the candidate") {
        s.failover = pt::parse_failover(R"({"member": "pg1"})");
        CHECK(pt::build_topology(s, {}, "pg0", pt::ProbeStatus::Unknown)->switchover_pending);
    }
    SECTION("not pending: scheduled for later, naming another leader (stale), or the candidate already leads") {
        s.failover = pt::parse_failover(R"({"leader": "pg0", "member": "pg1", "scheduled_at": "2030-01-01T00:00:00Z"})");
        CHECK_FALSE(pt::build_topology(s, {}, "pg0", pt::ProbeStatus::Unknown)->switchover_pending);
        s.failover = pt::parse_failover(R"({"leader": "pg2", "member": "pg1"})");
        CHECK_FALSE(pt::build_topology(s, {}, "pg0", pt::ProbeStatus::Unknown)->switchover_pending);
        s.failover = pt::parse_failover(R"({"leader": "pg1", "member": "pg0"})");
        CHECK_FALSE(pt::build_topology(s, {}, "pg0", pt::ProbeStatus::Unknown)->switchover_pending);
        s.failover = pt::parse_failover(R"({"member": "pg0"})");
        CHECK_FALSE(pt::build_topology(s, {}, "pg0", pt::ProbeStatus::Unknown)->switchover_pending);
    }
    SECTION("no leader key: nothing to hand over (the leaderless window holds instead)") {
        s.leader.reset();
        CHECK_FALSE(pt::build_topology(s, {}, "pg0", pt::ProbeStatus::Unknown)->switchover_pending);
    }
}

// ============================== build_topology ==============================

TEST_CASE("build_topology: healthy cluster", "[patroni][build]") {
    const auto s = healthy();
    REQUIRE(s.optime == std::optional<uint64_t>(kOptime));
    REQUIRE(s.sync_standby == std::optional<std::string>("pg1"));
    auto t = pt::build_topology(s, {}, "pg0", pt::ProbeStatus::Unknown);
    REQUIRE(t);
    CHECK(t->source == "patroni");
    CHECK(t->leader == "pg0");
    REQUIRE(t->members.size() == 3);
    REQUIRE(t->primary.has_value());
    CHECK(primary_name(*t) == "pg0");
    CHECK(t->primary_member()->address() == "127.0.0.1:5442");
    CHECK(t->primary_reason.empty());

    const Member* pg1 = t->find("pg1");
    const Member* pg2 = t->find("pg2");
    REQUIRE(pg1);
    REQUIRE(pg2);
    CHECK(pg1->role == Role::Replica);
    CHECK(pg1->state == State::Running);
    CHECK(pg1->port == 5443);
    CHECK(pg1->tags.empty());
    CHECK(pg2->tags == Names{"noloadbalance"});
    CHECK(pg2->has_tag("noloadbalance"));
    CHECK(t->find("pg0")->lag_bytes == std::optional<uint64_t>(0));
    CHECK(pg1->lag_bytes == std::optional<uint64_t>(0));
    CHECK(pg2->lag_bytes == std::optional<uint64_t>(kOptime - 67397408));
    for (const auto& m : t->members) {
        CHECK(m.weight == 1);
        CHECK_FALSE(m.excluded);
    }

    SECTION("the probe agreeing does not change it") {
        auto w = pt::build_topology(s, {}, "pg0", pt::ProbeStatus::Writable);
        CHECK(primary_name(*w) == "pg0");
    }
    SECTION("primary (Patroni >= 3.0.? naming) works like master") {
        auto s2 = cluster("pg0", {{"pg0", member_json("primary", "running", 5442, R"("xlog_location":67405600)")},
                                  {"pg1", kPg1Replica}});
        CHECK(primary_name(*pt::build_topology(s2, {}, "", pt::ProbeStatus::Unknown)) == "pg0");
    }
}

TEST_CASE("build_topology: the leader's member must say writable, or the probe must", "[patroni][build]") {
    // leader=pg1, but pg1's znode still says replica (promotion in progress).
    const auto s = cluster("pg1", {{"pg0", kPg0Master}, {"pg1", kPg1Replica}, {"pg2", kPg2ReplicaNoLb}});

    SECTION("probe unknown: no primary yet") {
        auto t = pt::build_topology(s, {}, "pg1", pt::ProbeStatus::Unknown);
        CHECK_FALSE(t->primary.has_value());
        CHECK(t->leader == "pg1");
        CHECK_THAT(t->primary_reason, Contains("not writable"));
        CHECK_THAT(t->primary_reason, Contains("pg1"));
    }
    SECTION("probe in recovery: no primary yet") {
        auto t = pt::build_topology(s, {}, "pg1", pt::ProbeStatus::InRecovery);
        CHECK_FALSE(t->primary.has_value());
        CHECK_THAT(t->primary_reason, Contains("not writable"));
    }
    SECTION("probe writable on the leader: early reroute") {
        auto t = pt::build_topology(s, {}, "pg1", pt::ProbeStatus::Writable);
        REQUIRE(t->primary.has_value());
        CHECK(primary_name(*t) == "pg1");
        CHECK(t->primary_reason.empty());
        CHECK(t->leader == "pg1");
    }
    SECTION("a writable verdict about another member is stale and ignored") {
        auto t = pt::build_topology(s, {}, "pg0", pt::ProbeStatus::Writable);
        CHECK_FALSE(t->primary.has_value());
        CHECK_THAT(t->primary_reason, Contains("not writable"));
        auto t2 = pt::build_topology(s, {}, "", pt::ProbeStatus::Writable);
        CHECK_FALSE(t2->primary.has_value());
    }
    SECTION("the old primary still saying master is not the primary") {
        auto t = pt::build_topology(s, {}, "pg1", pt::ProbeStatus::Unknown);
        CHECK(t->primary_member() == nullptr);
    }
}

TEST_CASE("build_topology: master but not running is not writable", "[patroni][build]") {
    for (std::string_view state : {"starting", "stopping", "stopped", "crashed", "restarting", "creating replica"}) {
        INFO("state " << state);
        auto s = cluster("pg0", {{"pg0", member_json("master", state, 5442)}, {"pg1", kPg1Replica}});
        auto t = pt::build_topology(s, {}, "", pt::ProbeStatus::Unknown);
        CHECK_FALSE(t->primary.has_value());
        CHECK_THAT(t->primary_reason, Contains("not writable"));
    }
    for (std::string_view role : {"promoted", "demoted", "uninitialized", "replica"}) {
        INFO("role " << role);
        auto s = cluster("pg0", {{"pg0", member_json(role, "running", 5442)}, {"pg1", kPg1Replica}});
        auto t = pt::build_topology(s, {}, "", pt::ProbeStatus::Unknown);
        CHECK_FALSE(t->primary.has_value());
        CHECK_THAT(t->primary_reason, Contains("not writable"));
    }
}

TEST_CASE("build_topology: an unreachable leader never takes writes", "[patroni][build]") {
    const auto s = healthy();
    auto t = pt::build_topology(s, {}, "pg0", pt::ProbeStatus::Unreachable);
    CHECK_FALSE(t->primary.has_value());
    CHECK(t->leader == "pg0");
    CHECK_FALSE(t->primary_reason.empty());
    CHECK_THAT(t->primary_reason, Contains("pg0"));
    CHECK(t->members.size() == 3);

    SECTION("an unreachable verdict about a non-leader is ignored") {
        auto u = pt::build_topology(s, {}, "pg1", pt::ProbeStatus::Unreachable);
        CHECK(primary_name(*u) == "pg0");
    }
}

TEST_CASE("build_topology: no leader key", "[patroni][build]") {
    const auto s = healthy(std::nullopt);
    for (auto probe : {pt::ProbeStatus::Unknown, pt::ProbeStatus::Writable}) {
        INFO("probe " << pt::to_string(probe));
        auto t = pt::build_topology(s, {}, "pg0", probe);
        CHECK_FALSE(t->primary.has_value());
        CHECK(t->leader.empty());
        CHECK_THAT(t->primary_reason, Contains("no leader"));
        CHECK(t->members.size() == 3);
    }
}

TEST_CASE("build_topology: leader without a member znode", "[patroni][build]") {
    auto s = healthy("pg9");
    auto t = pt::build_topology(s, {}, "pg9", pt::ProbeStatus::Writable);
    CHECK_FALSE(t->primary.has_value());
    CHECK(t->leader == "pg9");
    CHECK_THAT(t->primary_reason, Contains("pg9"));
    CHECK(t->members.size() == 3);

    SECTION("a leader whose member znode was garbage (dropped by the caller)") {
        auto s2 = cluster("pg0", {{"pg1", kPg1Replica}, {"pg2", kPg2ReplicaNoLb}});
        std::string err;
        REQUIRE_FALSE(pt::parse_member("pg0", kPg0Master.substr(0, 40), err));
        auto t2 = pt::build_topology(s2, {}, "", pt::ProbeStatus::Unknown);
        CHECK_FALSE(t2->primary.has_value());
        CHECK(t2->leader == "pg0");
        CHECK_THAT(t2->primary_reason, Contains("pg0"));
    }
}

TEST_CASE("build_topology: standby_leader only when allowed", "[patroni][build]") {
    const auto s = cluster(
        "pg0", {{"pg0", member_json("standby_leader", "running", 5442, R"("xlog_location":67405600)")},
                {"pg1", kPg1Replica}});
    pt::BuildOptions no, yes;
    yes.allow_standby_leader = true;

    auto t = pt::build_topology(s, no, "", pt::ProbeStatus::Unknown);
    CHECK_FALSE(t->primary.has_value());
    CHECK_THAT(t->primary_reason, Contains("not writable"));
    CHECK(t->leader == "pg0");

    auto a = pt::build_topology(s, yes, "", pt::ProbeStatus::Unknown);
    CHECK(primary_name(*a) == "pg0");
    CHECK(a->primary_member()->role == Role::StandbyLeader);

    SECTION("allowed but not running") {
        auto s2 = cluster("pg0", {{"pg0", member_json("standby_leader", "starting", 5442)}});
        CHECK_FALSE(pt::build_topology(s2, yes, "", pt::ProbeStatus::Unknown)->primary.has_value());
    }
    SECTION("allowed but unreachable") {
        CHECK_FALSE(pt::build_topology(s, yes, "pg0", pt::ProbeStatus::Unreachable)->primary.has_value());
    }
}

TEST_CASE("build_topology: an excluded leader is never the primary", "[patroni][build]") {
    const auto s = healthy();
    pt::BuildOptions o;
    o.exclude = {"pg0"};
    for (auto probe : {pt::ProbeStatus::Unknown, pt::ProbeStatus::Writable}) {
        INFO("probe " << pt::to_string(probe));
        auto t = pt::build_topology(s, o, "pg0", probe);
        CHECK_FALSE(t->primary.has_value());
        CHECK(t->leader == "pg0");
        CHECK_THAT(t->primary_reason, Contains("excluded"));
        CHECK(t->find("pg0")->excluded);
        CHECK_FALSE(t->find("pg1")->excluded);
        CHECK_FALSE(t->find("pg2")->excluded);
    }
}

TEST_CASE("build_topology: lag is optime - xlog_location", "[patroni][build][lag]") {
    auto lag_of = [](std::optional<uint64_t> optime, std::optional<uint64_t> xlog) {
        pt::ClusterState s;
        s.leader = "pg0";
        s.optime = optime;
        auto m = must_parse("pg1", kPg1Replica);
        m.xlog_location = xlog;
        s.members.emplace("pg1", m);
        auto t = pt::build_topology(s, {}, "", pt::ProbeStatus::Unknown);
        REQUIRE(t->members.size() == 1);
        return t->members[0].lag_bytes;
    };
    CHECK(lag_of(1000, 400) == std::optional<uint64_t>(600));
    CHECK(lag_of(kOptime, kOptime) == std::optional<uint64_t>(0));
    CHECK(lag_of(400, 1000) == std::optional<uint64_t>(0));  // the replica is ahead of a stale optime
    CHECK(lag_of(std::numeric_limits<uint64_t>::max(), 0) ==
          std::optional<uint64_t>(std::numeric_limits<uint64_t>::max()));
    CHECK_FALSE(lag_of(std::nullopt, 400).has_value());
    CHECK_FALSE(lag_of(1000, std::nullopt).has_value());
    CHECK_FALSE(lag_of(std::nullopt, std::nullopt).has_value());

    SECTION("from the legacy optime/leader znode") {
        auto s = healthy();
        s.optime = pt::parse_legacy_optime("67409696\n");
        auto t = pt::build_topology(s, {}, "", pt::ProbeStatus::Unknown);
        CHECK(t->find("pg1")->lag_bytes == std::optional<uint64_t>(4096));
        CHECK(t->find("pg2")->lag_bytes == std::optional<uint64_t>(67409696 - 67397408));
    }
}

TEST_CASE("build_topology: weights and exclude apply by member name", "[patroni][build]") {
    const auto s = healthy();
    pt::BuildOptions o;
    o.weights = {{"pg1", 3}, {"pg2", 0}, {"pg9", 5}};
    o.exclude = {"pg2", "pg9"};
    auto t = pt::build_topology(s, o, "", pt::ProbeStatus::Unknown);
    REQUIRE(t->members.size() == 3);
    CHECK(t->find("pg0")->weight == 1);
    CHECK(t->find("pg1")->weight == 3);
    CHECK(t->find("pg2")->weight == 0);
    CHECK_FALSE(t->find("pg0")->excluded);
    CHECK_FALSE(t->find("pg1")->excluded);
    CHECK(t->find("pg2")->excluded);
    CHECK(primary_name(*t) == "pg0");
    CHECK(t->find("pg9") == nullptr);
}

// ======================= build_topology + routing.hpp =======================

TEST_CASE("lag-aware routing over a Patroni snapshot", "[patroni][routing]") {
    const uint64_t max_lag = 16ull << 20;
    const std::string far_behind = std::to_string(kOptime - max_lag - 1);
    const std::string at_limit = std::to_string(kOptime - max_lag);
    auto s = cluster("pg0", {
                                {"pg0", kPg0Master},
                                {"pg1", kPg1Replica},
                                {"pg2", kPg2ReplicaNoLb},
                                {"pg3", member_json("replica", "running", 5445, "\"xlog_location\":" + far_behind)},
                                {"pg4", member_json("replica", "running", 5446)},  // no xlog_location
                                {"pg5", member_json("replica", "running", 5447, "\"xlog_location\":" + at_limit)},
                            });
    auto t = pt::build_topology(s, {}, "pg0", pt::ProbeStatus::Unknown);
    REQUIRE(primary_name(*t) == "pg0");
    const auto opts = lag_opts(max_lag);

    CHECK(t->find("pg3")->lag_bytes == std::optional<uint64_t>(max_lag + 1));
    CHECK(t->find("pg5")->lag_bytes == std::optional<uint64_t>(max_lag));
    CHECK_FALSE(t->find("pg4")->lag_bytes.has_value());

    CHECK_THAT(ro_ineligibility(*t->find("pg2"), opts), Contains("noloadbalance"));
    CHECK_THAT(ro_ineligibility(*t->find("pg3"), opts), Contains("lag"));
    CHECK_THAT(ro_ineligibility(*t->find("pg4"), opts), Contains("lag unknown"));
    CHECK(ro_ineligibility(*t->find("pg5"), opts).empty());

    CHECK(names(*t, eligible_replicas(*t, opts)) == Names{"pg1", "pg5"});
    for (uint64_t rr = 0; rr < 6; ++rr) {
        INFO("rr " << rr);
        const auto c = names(*t, ro_candidates(*t, opts, rr));
        REQUIRE(c.size() == 3);
        CHECK(c.back() == "pg0");
        CHECK(std::set<std::string>(c.begin(), c.end()) == std::set<std::string>{"pg0", "pg1", "pg5"});
    }
    CHECK(names(*t, ro_candidates(*t, lag_opts(max_lag, false), 0)) == Names{"pg1", "pg5"});

    SECTION("a tighter max_replica_lag drops the laggards, fallback keeps the primary") {
        const auto tight = lag_opts(4096);
        CHECK(names(*t, eligible_replicas(*t, tight)) == Names{"pg1"});
        CHECK(names(*t, ro_candidates(*t, tight, 1)) == Names{"pg1", "pg0"});
    }
    SECTION("without an optime every lag is unknown: only the primary") {
        auto s2 = s;
        s2.optime.reset();
        auto t2 = pt::build_topology(s2, {}, "", pt::ProbeStatus::Unknown);
        CHECK(eligible_replicas(*t2, opts).empty());
        CHECK(names(*t2, ro_candidates(*t2, opts, 0)) == Names{"pg0"});
        CHECK(ro_candidates(*t2, lag_opts(max_lag, false), 0).empty());
    }
    SECTION("the noloadbalance replica stays out even with huge weight and no lag") {
        pt::BuildOptions o;
        o.weights = {{"pg2", 100}};
        auto s2 = s;
        s2.members.at("pg2").xlog_location = kOptime;
        auto t2 = pt::build_topology(s2, o, "", pt::ProbeStatus::Unknown);
        CHECK(t2->find("pg2")->lag_bytes == std::optional<uint64_t>(0));
        const auto e = names(*t2, eligible_replicas(*t2, opts));
        CHECK(std::find(e.begin(), e.end(), "pg2") == e.end());
    }
    SECTION("an excluded replica is not eligible") {
        pt::BuildOptions o;
        o.exclude = {"pg1"};
        auto t2 = pt::build_topology(s, o, "", pt::ProbeStatus::Unknown);
        CHECK(names(*t2, eligible_replicas(*t2, opts)) == Names{"pg5"});
    }
}

// ================== mid-switchover snapshots (pg0 -> pg1) ==================

TEST_CASE("switchover (a): leader key gone, pg0 still says master", "[patroni][switchover]") {
    const auto s = healthy(std::nullopt);
    auto t = pt::build_topology(s, {}, "pg0", pt::ProbeStatus::Writable);
    CHECK_FALSE(t->primary.has_value());
    CHECK(t->leader.empty());
    CHECK_THAT(t->primary_reason, Contains("no leader"));
    CHECK(t->find("pg0")->role == Role::Primary);

    const auto opts = lag_opts();
    // Reads keep going to the healthy sync replica; no primary to fall back to.
    CHECK(names(*t, eligible_replicas(*t, opts)) == Names{"pg1"});
    CHECK(names(*t, ro_candidates(*t, opts, 0)) == Names{"pg1"});
    CHECK(names(*t, ro_candidates(*t, opts, 1)) == Names{"pg1"});
}

TEST_CASE("switchover (b): leader=pg1 while pg1 still says replica", "[patroni][switchover]") {
    const auto opts = lag_opts();
    for (const std::string& pg0 : {kPg0Master, kPg0Demoted}) {
        INFO("pg0 znode " << pg0);
        const auto s = cluster("pg1", {{"pg0", pg0}, {"pg1", kPg1Replica}, {"pg2", kPg2ReplicaNoLb}});

        auto before = pt::build_topology(s, {}, "pg1", pt::ProbeStatus::Unknown);
        CHECK_FALSE(before->primary.has_value());
        CHECK(before->leader == "pg1");
        CHECK_THAT(before->primary_reason, Contains("not writable"));
        // pg0 is not the primary any more, even if its znode says so.
        CHECK(before->primary_member() == nullptr);

        auto t = pt::build_topology(s, {}, "pg1", pt::ProbeStatus::Writable);
        REQUIRE(t->primary.has_value());
        CHECK(primary_name(*t) == "pg1");
        CHECK(t->leader == "pg1");
        CHECK(t->find("pg1")->address() == "127.0.0.1:5443");

        // The new primary must not also be served as a read replica, and the
        // candidate list has each member at most once with the primary last.
        const auto e = names(*t, eligible_replicas(*t, opts));
        CHECK(std::find(e.begin(), e.end(), "pg1") == e.end());
        CHECK(std::find(e.begin(), e.end(), "pg0") == e.end());
        for (uint64_t rr = 0; rr < 3; ++rr) {
            INFO("rr " << rr);
            const auto c = names(*t, ro_candidates(*t, opts, rr));
            CHECK(std::set<std::string>(c.begin(), c.end()).size() == c.size());
            REQUIRE_FALSE(c.empty());
            CHECK(c.back() == "pg1");
        }
    }
    SECTION("transient role promoted with the probe writable") {
        const auto s = cluster("pg1", {{"pg0", kPg0Demoted}, {"pg1", kPg1Promoted}, {"pg2", kPg2ReplicaNoLb}});
        CHECK_FALSE(pt::build_topology(s, {}, "pg1", pt::ProbeStatus::Unknown)->primary.has_value());
        auto t = pt::build_topology(s, {}, "pg1", pt::ProbeStatus::Writable);
        CHECK(primary_name(*t) == "pg1");
        CHECK(names(*t, ro_candidates(*t, opts, 0)) == Names{"pg1"});
    }
}

TEST_CASE("switchover (c): leader=pg1, pg1 says master, pg0 demoted or gone", "[patroni][switchover]") {
    const auto opts = lag_opts();
    const std::string status_after = R"({"optime":67408000,"slots":{"pg0":67405600,"pg2":67397408}})";

    SECTION("pg0 demoted") {
        const auto s = cluster("pg1", {{"pg0", kPg0Demoted}, {"pg1", kPg1Master}, {"pg2", kPg2ReplicaNoLb}},
                               status_after);
        auto t = pt::build_topology(s, {}, "pg1", pt::ProbeStatus::Unknown);
        CHECK(primary_name(*t) == "pg1");
        CHECK(t->leader == "pg1");
        CHECK(t->find("pg0")->role == Role::Other);
        CHECK(t->find("pg0")->state == State::Stopped);
        CHECK(t->find("pg0")->lag_bytes == std::optional<uint64_t>(67408000 - 67405600));
        CHECK(t->find("pg1")->lag_bytes == std::optional<uint64_t>(0));
        CHECK(eligible_replicas(*t, opts).empty());
        CHECK(names(*t, ro_candidates(*t, opts, 0)) == Names{"pg1"});

        // A stale writable verdict about the old primary changes nothing.
        auto stale = pt::build_topology(s, {}, "pg0", pt::ProbeStatus::Writable);
        CHECK(primary_name(*stale) == "pg1");
        // The probe finding the new primary unreachable blocks it.
        auto down = pt::build_topology(s, {}, "pg1", pt::ProbeStatus::Unreachable);
        CHECK_FALSE(down->primary.has_value());
    }
    SECTION("pg0 vanished") {
        const auto s = cluster("pg1", {{"pg1", kPg1Master}, {"pg2", kPg2ReplicaNoLb}}, status_after);
        auto t = pt::build_topology(s, {}, "pg1", pt::ProbeStatus::Writable);
        CHECK(t->members.size() == 2);
        CHECK(t->find("pg0") == nullptr);
        CHECK(primary_name(*t) == "pg1");
        CHECK(t->primary_member()->port == 5443);
        CHECK(names(*t, ro_candidates(*t, opts, 0)) == Names{"pg1"});
        CHECK(ro_candidates(*t, lag_opts(16ull << 20, false), 0).empty());
    }
    SECTION("pg0 back as a replica of pg1") {
        const auto s = cluster("pg1",
                               {{"pg0", member_json("replica", "running", 5442,
                                                    R"("xlog_location":67408000,"timeline":2)")},
                                {"pg1", kPg1Master},
                                {"pg2", kPg2ReplicaNoLb}},
                               status_after);
        auto t = pt::build_topology(s, {}, "pg1", pt::ProbeStatus::Writable);
        CHECK(primary_name(*t) == "pg1");
        CHECK(names(*t, eligible_replicas(*t, opts)) == Names{"pg0"});
        CHECK(names(*t, ro_candidates(*t, opts, 0)) == Names{"pg0", "pg1"});
    }
}

TEST_CASE("build_topology: a leader whose probe says in recovery takes no writes, whatever its znode says",
          "[topology][patroni]") {
    pt::ClusterState s;
    s.leader = "pg0";
    std::string err;
    auto m = pt::parse_member("pg0", R"({"conn_url":"postgres://127.0.0.1:5432/postgres","role":"master","state":"running"})", err);
    REQUIRE(m);
    s.members["pg0"] = *m;
    auto t = pt::build_topology(s, {}, "pg0", pt::ProbeStatus::InRecovery);
    CHECK_FALSE(t->primary);
    CHECK_THAT(t->primary_reason, Catch::Contains("recovery"));
    // A stale verdict about another member does not veto.
    CHECK(pt::build_topology(s, {}, "pg1", pt::ProbeStatus::InRecovery)->primary);
}

TEST_CASE("build_topology: replica lag uses the fresher leader position and the lower replica position",
          "[topology][patroni]") {
    pt::ClusterState s;
    s.leader = "pg0";
    std::string err;
    s.members["pg0"] = *pt::parse_member("pg0", R"({"conn_url":"postgres://h:1/p","role":"master","state":"running"})", err);
    s.members["pg1"] = *pt::parse_member(
        "pg1", R"({"conn_url":"postgres://h:2/p","role":"replica","state":"running","xlog_location":1000})", err);
    s.optime = 1000;
    CHECK(pt::build_topology(s, {}, "", pt::ProbeStatus::Unknown)->find("pg1")->lag_bytes == 0u);
    // Replay paused: received WAL (xlog_location) is current, replay is not.
    s.replayed["pg1"] = 400;
    CHECK(pt::build_topology(s, {}, "", pt::ProbeStatus::Unknown)->find("pg1")->lag_bytes == 600u);
    // The probe's leader position is newer than Patroni's status optime.
    s.leader_wal = 5000;
    CHECK(pt::build_topology(s, {}, "", pt::ProbeStatus::Unknown)->find("pg1")->lag_bytes == 4600u);
}

// Patroni 3.0.2's GET /cluster, recorded (HTTP/1.0, body up to the close), with
// a backup node and a lag Patroni could not compute added.
TEST_CASE("parse_cluster: Patroni's REST /cluster", "[patroni][cluster]") {
    const std::string body =
        R"({"members": [{"name": "pg0", "role": "sync_standby", "state": "running", "api_url": "http://127.0.0.1:25959/patroni", "host": "127.0.0.1", "port": 26154, "timeline": 3, "lag": 0},)"
        R"( {"name": "pg1", "role": "replica", "state": "streaming", "api_url": "http://127.0.0.1:18670/patroni", "host": "127.0.0.1", "port": 23203, "timeline": 3, "lag": 1048576},)"
        R"( {"name": "pg2", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:24155/patroni", "host": "127.0.0.1", "port": 23211, "timeline": 3},)"
        R"( {"name": "pg3", "role": "replica", "state": "running", "host": "127.0.0.1", "port": 23300, "lag": "unknown", "tags": {"noloadbalance": true, "nofailover": true}}]})";
    std::string err;
    auto v = patroni::parse_cluster(body, err);
    INFO(err);
    REQUIRE(v);
    CHECK(v->leader == "pg2");
    CHECK_FALSE(v->paused);
    REQUIRE(v->members.size() == 4);
    CHECK(v->members[0].role == Role::Replica);  // sync_standby
    CHECK(v->members[0].reported_lag == 0u);
    CHECK(v->members[1].state == State::Running);  // "streaming"
    CHECK(v->members[1].reported_lag == 1048576u);
    // The leader key holder may still be promoting: only the probe makes it writable.
    CHECK(v->members[2].role == Role::Other);
    CHECK(v->members[2].role_text == "leader");
    CHECK(v->members[2].port == 23211);
    CHECK_FALSE(v->members[3].reported_lag);
    CHECK(v->members[3].tags == std::vector<std::string>{"nofailover", "noloadbalance"});

    // The same view through build_topology: no primary until the probe says so,
    // then rw goes to pg2; the reported lag keeps pg1 off lag-aware ro.
    patroni::ClusterState s;
    s.leader = v->leader;
    for (const auto& m : v->members) s.members[m.name] = m;
    auto before = patroni::build_topology(s, {}, "", patroni::ProbeStatus::Unknown);
    CHECK_FALSE(before->primary);
    auto after = patroni::build_topology(s, {}, "pg2", patroni::ProbeStatus::Writable);
    REQUIRE(after->primary);
    CHECK(after->members[*after->primary].name == "pg2");
    CHECK(after->find("pg1")->lag_bytes == 1048576u);
    CHECK_FALSE(after->find("pg3")->lag_bytes);
}

TEST_CASE("parse_cluster: paused, standby leader, members without host, garbage", "[patroni][cluster][garbage]") {
    std::string err;
    auto v = patroni::parse_cluster(
        R"({"members":[{"name":"a","role":"standby_leader","state":"running","host":"h","port":1},{"name":"b","role":"replica"}],"pause":true})",
        err);
    REQUIRE(v);
    CHECK(v->paused);
    CHECK(v->leader == "a");
    CHECK(v->members.size() == 1);  // b has no host to route to
    CHECK(v->members[0].role == Role::StandbyLeader);
    for (const char* bad : {"", "{}", "[]", R"({"members":{}})",
                            R"({"members":[{"name":"a","role":"leader","host":"h"},{"name":"b","role":"leader","host":"h"}]})"}) {
        INFO(bad);
        err.clear();
        CHECK_FALSE(patroni::parse_cluster(bad, err));
        CHECK_FALSE(err.empty());
    }
    auto junk = patroni::parse_cluster(R"({"members":[1,"x",null,{"name":5},{"name":"c","host":"h","port":99999}]})", err);
    REQUIRE(junk);
    REQUIRE(junk->members.size() == 1);
    CHECK(junk->members[0].port == 5432);
}

TEST_CASE("patroni: a member's api_url is kept as the REST API's base", "[patroni][rest_fallback]") {
    using pgrelay::topology::patroni::api_base;
    CHECK(api_base("http://127.0.0.1:8008/patroni") == "http://127.0.0.1:8008");
    CHECK(api_base("https://db1.example:8443/patroni?x=1") == "https://db1.example:8443");
    CHECK(api_base("http://[::1]:8008") == "http://[::1]:8008");
    CHECK(api_base("http://h") == "http://h");
    CHECK(api_base("ftp://h:21/").empty());
    CHECK(api_base("http:///patroni").empty());
    CHECK(api_base("http://user@h:8008/").empty());
    CHECK(api_base("127.0.0.1:8008").empty());
    std::string err;
    auto m = pgrelay::topology::patroni::parse_member(
        "pg1", R"({"conn_url":"postgres://127.0.0.1:5443/postgres","api_url":"http://127.0.0.1:8011/patroni"})", err);
    REQUIRE(m);
    CHECK(m->api_url == "http://127.0.0.1:8011");
    m = pgrelay::topology::patroni::parse_member("pg1", R"({"conn_url":"postgres://127.0.0.1:5443/postgres"})", err);
    REQUIRE(m);
    CHECK(m->api_url.empty());
}
