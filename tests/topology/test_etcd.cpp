// etcd's JSON gateway as pgrelay reads it (topology/etcd_gateway.hpp), on
// traffic recorded from etcd 3.4.23 with Patroni 3.0.2 (tests/topology/data/etcd/):
// range and watch answers parsed whole and split at every byte through the
// HTTP parser and the object splitter; omitted fields and int64 strings;
// canceled + compact_revision; error objects; garbage; and the WatchLedger
// that tells a stale watch.
#include <catch2/catch.hpp>

#include <fstream>
#include <random>
#include <sstream>

#include "topology/etcd_gateway.hpp"
#include "topology/http.hpp"

using namespace pgrelay::topology;
using etcd::WatchMessage;

namespace {

std::string recorded(const std::string& name) {
    std::ifstream in(std::string(PGRELAY_SOURCE_DIR) + "/tests/topology/data/etcd/" + name, std::ios::binary);
    REQUIRE(in);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

struct Decoded {
    int status = 0;
    std::string body;
    std::vector<std::string> objects;  // the body cut into JSON objects
    std::string error;
};

// The whole pipeline the source runs: bytes -> HTTP parser -> object splitter,
// with the bytes cut at `cut` (0 = whole).
Decoded decode(const std::string& bytes, size_t cut) {
    http::ResponseParser p;
    http::JsonObjectSplitter s;
    Decoded d;
    auto feed = [&](std::string_view part) {
        p.feed(part);
        std::string b = p.take_body();
        d.body += b;
        s.feed(b);
        while (auto o = s.next()) d.objects.push_back(*o);
    };
    if (cut > 0 && cut < bytes.size()) {
        feed(std::string_view(bytes).substr(0, cut));
        feed(std::string_view(bytes).substr(cut));
    } else {
        feed(bytes);
    }
    d.status = p.status();
    d.error = p.error() + s.error();
    return d;
}

Decoded decode_every_split(const std::string& bytes) {
    const Decoded whole = decode(bytes, 0);
    for (size_t i = 1; i < bytes.size(); ++i) {
        const Decoded d = decode(bytes, i);
        INFO("split at byte " << i);
        REQUIRE(d.error == whole.error);
        REQUIRE(d.objects == whole.objects);
        REQUIRE(d.body == whole.body);
    }
    return whole;
}

std::vector<WatchMessage> messages(const std::vector<std::string>& objects) {
    std::vector<WatchMessage> out;
    for (const auto& o : objects) {
        std::string err;
        auto m = etcd::parse_watch_message(o, err);
        INFO(o << "\n" << err);
        REQUIRE(m);
        out.push_back(std::move(*m));
    }
    return out;
}

etcd::KeyValue kv(std::string key, int64_t mod) {
    etcd::KeyValue k;
    k.key = std::move(key);
    k.mod_revision = mod;
    return k;
}

}  // namespace

TEST_CASE("etcd: request bodies", "[etcd]") {
    CHECK(etcd::prefix_range_end("/service/pgrelay/") == "/service/pgrelay0");
    CHECK(etcd::prefix_range_end(std::string("a\xff", 2)) == "b");
    CHECK(etcd::prefix_range_end(std::string("\xff\xff", 2)) == std::string(1, '\0'));
    CHECK(etcd::prefix_range_end("") == std::string(1, '\0'));
    CHECK(etcd::range_request("/service/pgrelay/", false) ==
          R"({"key":"L3NlcnZpY2UvcGdyZWxheS8=","range_end":"L3NlcnZpY2UvcGdyZWxheTA="})");
    CHECK(etcd::range_request("/service/pgrelay/", true) ==
          R"({"key":"L3NlcnZpY2UvcGdyZWxheS8=","range_end":"L3NlcnZpY2UvcGdyZWxheTA=","keys_only":true})");
    // start_revision is an int64, hence a string; the whole create_request in one body.
    CHECK(etcd::watch_request("/service/pgrelay/", 134) ==
          R"({"create_request":{"key":"L3NlcnZpY2UvcGdyZWxheS8=","range_end":"L3NlcnZpY2UvcGdyZWxheTA=",)"
          R"("start_revision":"134","prev_kv":true,"progress_notify":true}})");
    // JSON-escaped, whatever the password holds.
    CHECK(etcd::authenticate_request("pgrelay", "p\"w\\d") == R"({"name":"pgrelay","password":"p\"w\\d"})");
}

TEST_CASE("etcd: /version picks the gateway prefix", "[etcd]") {
    const Decoded d = decode_every_split(recorded("version.http"));
    REQUIRE(d.status == 200);
    std::string err;
    CHECK(etcd::api_prefix(d.body, err) == "/v3");
    CHECK(etcd::api_prefix(R"({"etcdserver":"3.3.27","etcdcluster":"3.3.0"})", err) == "/v3beta");
    CHECK(etcd::api_prefix(R"({"etcdserver":"3.2.1","etcdcluster":"3.2.0"})", err) == "/v3alpha");
    CHECK(etcd::api_prefix(R"({"etcdserver":"3.5.9","etcdcluster":"3.5.0"})", err) == "/v3");
    CHECK_FALSE(etcd::api_prefix(R"({"etcdserver":"3.0.17","etcdcluster":"3.0.0"})", err));
    CHECK_THAT(err, Catch::Contains("too old"));
    for (const char* bad : {"", "{}", R"({"etcdcluster":3})", R"({"etcdcluster":"x.y"})", R"({"etcdcluster":"3"})"}) {
        INFO(bad);
        CHECK_FALSE(etcd::api_prefix(bad, err));
    }
}

TEST_CASE("etcd: a recorded range of Patroni's keys, split at every byte", "[etcd][range]") {
    const Decoded d = decode_every_split(recorded("range.http"));  // chunked
    REQUIRE(d.error.empty());
    REQUIRE(d.status == 200);
    std::string err;
    auto r = etcd::parse_range_response(d.body, err);
    INFO(err);
    REQUIRE(r);
    CHECK(r->revision == 140);
    CHECK_FALSE(r->more);
    std::map<std::string, etcd::KeyValue> by_key;
    for (const auto& k : r->kvs) by_key[k.key] = k;
    REQUIRE(by_key.count("/service/pgrelay/leader"));
    const auto& leader = by_key["/service/pgrelay/leader"];
    CHECK(leader.value == "pg1");
    CHECK(leader.lease == 5633899987938598704);  // an int64 beyond double's precision
    CHECK(leader.mod_revision == 49);
    REQUIRE(by_key.count("/service/pgrelay/members/pg0"));
    CHECK_THAT(by_key["/service/pgrelay/members/pg0"].value, Catch::StartsWith("{\"conn_url\":\"postgres://127.0.0.1:"));
    // Keys without a lease have none in the JSON: 0.
    REQUIRE(by_key.count("/service/pgrelay/config"));
    CHECK(by_key["/service/pgrelay/config"].lease == 0);
}

TEST_CASE("etcd: a keys-only range has no values; a range matching nothing has no kvs", "[etcd][range]") {
    const Decoded d = decode_every_split(recorded("range_keys.http"));  // Content-Length
    std::string err;
    auto r = etcd::parse_range_response(d.body, err);
    REQUIRE(r);
    CHECK(r->revision == 141);
    REQUIRE_FALSE(r->kvs.empty());
    for (const auto& k : r->kvs) {
        CHECK(k.value.empty());
        CHECK(k.mod_revision > 0);
    }
    auto empty = etcd::parse_range_response(R"({"header":{"cluster_id":"1","revision":"7","raft_term":"2"}})", err);
    REQUIRE(empty);
    CHECK(empty->kvs.empty());
    CHECK(empty->revision == 7);
    // Plain JSON numbers are taken as well as strings.
    auto numbers = etcd::parse_range_response(R"({"header":{"revision":9},"kvs":[{"key":"YQ==","mod_revision":3}]})", err);
    REQUIRE(numbers);
    CHECK(numbers->kvs.at(0).key == "a");
    CHECK(numbers->kvs.at(0).mod_revision == 3);
}

TEST_CASE("etcd: malformed range answers are errors", "[etcd][range][garbage]") {
    std::string err;
    for (const char* bad : {"", "null", "[]", "{}", R"({"header":{}})", R"({"header":{"revision":"x"},"kvs":[]})",
                            R"({"header":{"revision":"5"},"kvs":{}})", R"({"header":{"revision":"5"},"kvs":[1]})",
                            R"({"header":{"revision":"5"},"kvs":[{"key":"not base64!"}]})",
                            R"({"header":{"revision":"5"},"kvs":[{"value":"YQ=="}]})",
                            R"({"header":{"revision":"5"},"kvs":[{"key":"YQ==","mod_revision":"99999999999999999999"}]})",
                            R"({"header":{"revision":"5"},"kvs":[{"key":"YQ==","lease":true}]})"}) {
        INFO(bad);
        err.clear();
        CHECK_FALSE(etcd::parse_range_response(bad, err));
        CHECK_FALSE(err.empty());
    }
}

TEST_CASE("etcd: unary errors (401 invalid token, 403 permission denied)", "[etcd][error]") {
    const Decoded unauth = decode_every_split(recorded("range_noauth.http"));
    CHECK(unauth.status == 401);
    auto e = etcd::parse_error(unauth.body);
    REQUIRE(e);
    CHECK(e->grpc_code == etcd::kGrpcUnauthenticated);
    CHECK(e->message == "etcdserver: invalid auth token");
    const Decoded denied = decode_every_split(recorded("range_forbidden.http"));
    CHECK(denied.status == 403);
    e = etcd::parse_error(denied.body);
    REQUIRE(e);
    CHECK(e->grpc_code == 7);
    CHECK_THAT(e->message, Catch::Contains("permission denied"));
    CHECK_FALSE(etcd::parse_error(R"({"header":{"revision":"1"}})"));
    CHECK_FALSE(etcd::parse_error("not json"));
    e = etcd::parse_error(R"({"error":"bare"})");
    REQUIRE(e);
    CHECK(e->message == "bare");
    std::string err;
    CHECK(etcd::parse_authenticate_response(R"({"header":{},"token":"ZXPDYZnWRFEAdqsZ.171"})", err) ==
          "ZXPDYZnWRFEAdqsZ.171");
    CHECK_FALSE(etcd::parse_authenticate_response(R"({"header":{}})", err));
}

TEST_CASE("etcd: a recorded watch through a switchover, then etcd's shutdown, split at every byte",
          "[etcd][watch]") {
    const Decoded d = decode_every_split(recorded("watch_switchover.http"));
    REQUIRE(d.error.empty());
    REQUIRE(d.status == 200);
    const auto ms = messages(d.objects);
    REQUIRE(ms.size() == 21);
    CHECK(ms.front().kind == WatchMessage::Kind::Created);
    CHECK(ms.front().revision == 143);
    // The first answer replays revisions 140..143 in one message.
    REQUIRE(ms[1].kind == WatchMessage::Kind::Events);
    REQUIRE(ms[1].events.size() == 4);
    CHECK(ms[1].events[0].kv.mod_revision == 140);
    CHECK(ms[1].events[3].kv.mod_revision == 143);
    // The switchover: DELETE leader (no value, type DELETE), then a PUT of
    // the new leader with no "type" at all (PUT is the default).
    std::vector<std::pair<etcd::Event::Type, std::string>> leader_events;
    for (const auto& m : ms)
        for (const auto& e : m.events)
            if (e.kv.key == "/service/pgrelay/leader")
                leader_events.emplace_back(e.type, e.kv.value);
    REQUIRE(leader_events.size() == 2);
    CHECK(leader_events[0].first == etcd::Event::Type::Delete);
    CHECK(leader_events[0].second.empty());
    CHECK(leader_events[1].first == etcd::Event::Type::Put);
    CHECK(leader_events[1].second == "pg2");
    // Revisions only grow.
    int64_t last = 0;
    for (const auto& m : ms)
        for (const auto& e : m.events) {
            CHECK(e.kv.mod_revision > last);
            last = e.kv.mod_revision;
        }
    // etcd stopping: an error object, then the end of the response.
    CHECK(ms.back().kind == WatchMessage::Kind::Error);
    CHECK(ms.back().error.grpc_code == 14);
    CHECK(ms.back().error.http_code == 503);
    CHECK(ms.back().error.message == "transport is closing");
}

TEST_CASE("etcd: a watch from a compacted revision is created, then canceled with compact_revision",
          "[etcd][watch]") {
    const Decoded d = decode_every_split(recorded("watch_compacted.http"));
    const auto ms = messages(d.objects);
    REQUIRE(ms.size() == 2);
    CHECK(ms[0].kind == WatchMessage::Kind::Created);
    CHECK(ms[1].kind == WatchMessage::Kind::Canceled);
    CHECK(ms[1].compact_revision == 61);
    CHECK(ms[1].revision == 0);  // that header carries no revision
}

TEST_CASE("etcd: progress notifications and cancel reasons", "[etcd][watch]") {
    std::string err;
    auto p = etcd::parse_watch_message(R"({"result":{"header":{"revision":"500"},"watch_id":"1"}})", err);
    REQUIRE(p);
    CHECK(p->kind == WatchMessage::Kind::Progress);
    CHECK(p->revision == 500);
    CHECK(p->watch_id == 1);
    auto c = etcd::parse_watch_message(R"({"result":{"header":{},"canceled":true,"cancel_reason":"rpc error"}})", err);
    REQUIRE(c);
    CHECK(c->kind == WatchMessage::Kind::Canceled);
    CHECK(c->compact_revision == 0);
    CHECK(c->cancel_reason == "rpc error");
}

TEST_CASE("etcd: malformed watch messages are errors, and garbage never crashes", "[etcd][watch][garbage]") {
    std::string err;
    for (const char* bad : {"", "{}", "[]", R"({"result":5})", R"({"result":{"events":{}}})",
                            R"({"result":{"events":[5]}})", R"({"result":{"events":[{"type":"PATCH","kv":{"key":"YQ=="}}]}})",
                            R"({"result":{"events":[{"type":"PUT"}]}})",
                            R"({"result":{"events":[{"kv":{"key":"%%%%"}}]}})",
                            R"({"result":{"header":{"revision":[]}}})", R"({"result":{"compact_revision":"1e3"}})"}) {
        INFO(bad);
        err.clear();
        CHECK_FALSE(etcd::parse_watch_message(bad, err));
        CHECK_FALSE(err.empty());
    }
    // Mutations of the recorded stream: every cut object either parses or
    // is refused with a reason.
    const Decoded d = decode(recorded("watch_switchover.http"), 0);
    std::mt19937 rng(42);
    for (int i = 0; i < 4000; ++i) {
        std::string o = d.objects[rng() % d.objects.size()];
        for (int e = 0; e < 3; ++e) o[rng() % o.size()] = "{}[]\":,0aZ="[rng() % 11];
        err.clear();
        auto m = etcd::parse_watch_message(o, err);
        CHECK((m.has_value() || !err.empty()));
    }
}

TEST_CASE("WatchLedger: a watch that delivers everything stays in step", "[etcd][ledger]") {
    etcd::WatchLedger l;
    l.reset({kv("/s/leader", 10), kv("/s/members/pg0", 8), kv("/s/status", 11)});
    CHECK(l.check({kv("/s/leader", 10), kv("/s/members/pg0", 8), kv("/s/status", 11)}, 11) ==
          etcd::WatchLedger::Verdict::InStep);
    l.put("/s/status", 12);
    l.erase("/s/leader", 13);
    l.put("/s/leader", 14);
    CHECK(l.check({kv("/s/leader", 14), kv("/s/members/pg0", 8), kv("/s/status", 12)}, 14) ==
          etcd::WatchLedger::Verdict::InStep);
    // The watch can be ahead of the read: a key written after the read's revision.
    l.put("/s/members/pg1", 20);
    CHECK(l.check({kv("/s/leader", 14), kv("/s/members/pg0", 8), kv("/s/status", 12)}, 15) ==
          etcd::WatchLedger::Verdict::InStep);
    // Or have seen a later delete than the read shows.
    l.erase("/s/members/pg1", 21);
    CHECK(l.check({kv("/s/leader", 14), kv("/s/members/pg0", 8), kv("/s/members/pg1", 20), kv("/s/status", 12)}, 20) ==
          etcd::WatchLedger::Verdict::InStep);
}

TEST_CASE("WatchLedger: a difference the next check still finds is a stale watch", "[etcd][ledger]") {
    using V = etcd::WatchLedger::Verdict;
    SECTION("a change that never arrives") {
        etcd::WatchLedger l;
        l.reset({kv("/s/leader", 10)});
        CHECK(l.check({kv("/s/leader", 15)}, 15) == V::Behind);  // may be in flight
        CHECK(l.check({kv("/s/leader", 15)}, 16) == V::Stale);
        CHECK_THAT(l.difference(), Catch::Contains("/s/leader"));
    }
    SECTION("a deletion that never arrives") {
        etcd::WatchLedger l;
        l.reset({kv("/s/leader", 10), kv("/s/members/pg0", 9)});
        CHECK(l.check({kv("/s/members/pg0", 9)}, 12) == V::Behind);
        CHECK(l.check({kv("/s/members/pg0", 9)}, 12) == V::Stale);
        CHECK_THAT(l.difference(), Catch::Contains("deletion"));
    }
    SECTION("a change that arrives before the next check was only in flight") {
        etcd::WatchLedger l;
        l.reset({kv("/s/leader", 10), kv("/s/status", 9)});
        CHECK(l.check({kv("/s/leader", 15), kv("/s/status", 9)}, 15) == V::Behind);
        l.put("/s/leader", 15);
        // Meanwhile status moved again, seen by the read but not yet by the
        // watch: a new first strike, not a stale watch.
        CHECK(l.check({kv("/s/leader", 15), kv("/s/status", 16)}, 16) == V::Behind);
        l.put("/s/status", 16);
        CHECK(l.check({kv("/s/leader", 15), kv("/s/status", 16)}, 16) == V::InStep);
    }
    SECTION("a key deleted and written again satisfies a pending deletion") {
        etcd::WatchLedger l;
        l.reset({kv("/s/leader", 10)});
        CHECK(l.check({}, 11) == V::Behind);
        l.erase("/s/leader", 11);
        l.put("/s/leader", 12);
        CHECK(l.check({kv("/s/leader", 12)}, 12) == V::InStep);
    }
    SECTION("reset forgets what was pending") {
        etcd::WatchLedger l;
        l.reset({kv("/s/leader", 10)});
        CHECK(l.check({kv("/s/leader", 15)}, 15) == V::Behind);
        l.reset({kv("/s/leader", 15)});
        CHECK(l.check({kv("/s/leader", 15)}, 15) == V::InStep);
    }
}

TEST_CASE("etcd: lease requests and answers, as etcd 3.4's gateway sends them", "[etcd][lease]") {
    CHECK(etcd::lease_grant_request(10) == R"({"TTL":"10"})");
    CHECK(etcd::lease_request(2324035745981172741) == R"({"ID":"2324035745981172741"})");
    // Key and value in base64; the lease as a string.
    CHECK(etcd::put_request("/k", "v", 7) == R"({"key":"L2s=","value":"dg==","lease":"7"})");
    CHECK(etcd::put_request("/k", "v", 0) == R"({"key":"L2s=","value":"dg=="})");

    std::string err;
    const std::string header = R"("header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"1","raft_term":"2"})";
    CHECK(etcd::parse_lease_grant("{" + header + R"(,"ID":"2324035745981172741","TTL":"5"})", err) == 2324035745981172741);
    CHECK_FALSE(etcd::parse_lease_grant("{" + header + "}", err).has_value());
    CHECK_FALSE(err.empty());
    CHECK_FALSE(etcd::parse_lease_grant("not json", err).has_value());

    // A live lease's keepalive gives its TTL; an expired or revoked one's
    // answer has no TTL at all (0).
    CHECK(etcd::parse_keepalive_ttl(R"({"result":{)" + header + R"(,"ID":"2324035745981172741","TTL":"5"}})", err) == 5);
    CHECK(etcd::parse_keepalive_ttl(R"({"result":{)" + header + R"(,"ID":"2324035745981172741"}})", err) == 0);
    // Only the first object of the stream counts.
    CHECK(etcd::parse_keepalive_ttl(R"({"result":{"TTL":"3"}}{"result":{"TTL":"9"}})", err) == 3);
    err.clear();
    CHECK_FALSE(etcd::parse_keepalive_ttl(R"({"error":{"grpc_code":14,"http_code":503,"message":"unavailable"}})", err));
    CHECK(err.find("unavailable") != std::string::npos);
    CHECK_FALSE(etcd::parse_keepalive_ttl(R"({"result":{"TTL":"x"}})", err));
    CHECK_FALSE(etcd::parse_keepalive_ttl("", err));
}
