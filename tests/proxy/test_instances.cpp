// Several pgrelay instances behind one name: instance tags, entries, the peer
// directory, the [instance] configuration, and cancel keys that carry the
// tag of the instance that issued them (protocol 3.0 and 3.2 lengths).
#include <catch2/catch.hpp>

#include <algorithm>
#include <set>

#include "proxy/cancel_registry.hpp"
#include "proxy/config.hpp"
#include "topology/peers.hpp"

using pgrelay::CancelRegistry;
using pgrelay::CancelTarget;
using pgrelay::ConfigError;
using pgrelay::parse_config;
using pgrelay::protocol::CancelKey;
using namespace pgrelay::topology;
using Catch::Matchers::Contains;

namespace {
InstanceInfo inst(std::string id, std::string addr) { return InstanceInfo{std::move(id), std::move(addr), "0.1.0", 1}; }

// An id other than `id` with the same tag (a tag is 16 bits: found quickly).
std::string colliding_id(const std::string& id) {
    for (int i = 0;; ++i) {
        std::string other = "x" + std::to_string(i);
        if (other != id && instance_tag(other) == instance_tag(id)) return other;
    }
}

const char* kBase = R"(
[listen]
rw = "127.0.0.2:6432"
ro = "127.0.0.2:6433"
[topology]
source = "zookeeper"
[topology.zookeeper]
hosts = "127.0.0.1:2181"
scope = "demo"
)";
}  // namespace

TEST_CASE("instance entries: JSON round trip, tags, host:port", "[instances]") {
    const InstanceInfo a = inst("lb1:127.0.0.1:6432", "127.0.0.1:6432");
    const auto back = parse_instance_json(instance_json(a));
    REQUIRE(back);
    CHECK(*back == a);
    CHECK_FALSE(parse_instance_json(R"({"peer_address":"h:1"})"));
    CHECK_FALSE(parse_instance_json(R"({"id":"a","peer_address":"no-port"})"));
    CHECK_FALSE(parse_instance_json(R"({"id":"","peer_address":"h:1"})"));
    CHECK_FALSE(parse_instance_json("[]"));
    CHECK_FALSE(parse_instance_json("garbage"));
    // Older or newer fields beyond these are tolerated.
    CHECK(parse_instance_json(R"({"id":"a","peer_address":"h:1","extra":[1]})"));

    CHECK(instance_tag("a") == instance_tag("a"));
    std::set<uint16_t> tags;
    for (const char* id : {"lb1:127.0.0.1:6432", "lb2:127.0.0.2:6432", "lb3:127.0.0.3:6432", "a", "b"})
        tags.insert(instance_tag(id));
    CHECK(tags.size() == 5);

    CHECK(parse_host_port("127.0.0.1:6432")->port == 6432);
    CHECK(parse_host_port("[::1]:6432")->host == "::1");
    CHECK(parse_host_port("db.example:1")->host == "db.example");
    for (const char* bad : {"", "h", "h:", ":5", "h:0", "h:65536", "h:12x", "::1:5", "[::1]5", "[::1]:"})
        CHECK_FALSE(parse_host_port(bad));
}

TEST_CASE("peer directory: self left out, static and DCS entries merged, tags looked up", "[instances]") {
    PeerDirectory d;
    d.set_self(inst("me", "127.0.0.1:1"));
    d.update({inst("me", "127.0.0.1:1"), inst("b", "127.0.0.2:1"), inst("a", "127.0.0.3:1")}, "test");
    auto p = d.peers();
    REQUIRE(p.size() == 2);
    CHECK(p[0].id == "a");  // sorted by id
    CHECK(p[1].id == "b");
    const uint64_t changes = d.changes();
    d.update({inst("b", "127.0.0.2:1"), inst("a", "127.0.0.3:1")}, "test");
    CHECK(d.changes() == changes);  // the same list: no change

    CHECK(d.peers_for_tag(instance_tag("me")).empty());  // never to itself
    REQUIRE(d.peers_for_tag(instance_tag("a")).size() == 1);
    CHECK(d.peers_for_tag(instance_tag("a"))[0].peer_address == "127.0.0.3:1");
    CHECK(d.peers_for_tag(static_cast<uint16_t>(instance_tag("a") ^ instance_tag("b") ^ 1)).size() <= 1);

    // Static peers stay listed; a DCS entry with the same id wins.
    d.set_static({inst("s", "127.0.0.9:9"), inst("a", "127.0.0.99:99")});
    p = d.peers();
    REQUIRE(p.size() == 3);
    CHECK(p[0].peer_address == "127.0.0.3:1");
    CHECK(p[2].id == "s");
    d.update({}, "test");  // the DCS list emptied: the static ones remain
    p = d.peers();
    REQUIRE(p.size() == 2);
    CHECK(p[0].peer_address == "127.0.0.99:99");

    // Two ids, one tag: reported; a peer sharing this instance's tag gets no forwards.
    CHECK(d.tag_conflicts() == 0);
    const std::string twin = colliding_id("me");
    d.update({inst(twin, "127.0.0.5:5")}, "test");
    CHECK(d.tag_conflicts() == 1);
    CHECK(d.peers_for_tag(instance_tag("me")).empty());
    // Two peers sharing a tag other than ours: both get the forward.
    const std::string twin_a = colliding_id("a");
    d.update({inst("a", "127.0.0.3:1"), inst(twin_a, "127.0.0.6:6")}, "test");
    CHECK(d.peers_for_tag(instance_tag("a")).size() == 2);

    // One that left (a drain deregisters first) still gets cancels for a while.
    d.set_static({});
    d.update({inst("a", "127.0.0.3:1")}, "test");
    CHECK(d.peers().size() == 1);
    const auto to = d.peers_for_tag(instance_tag(twin_a));  // its tag is a's too: both
    REQUIRE(to.size() == 2);
    CHECK(std::any_of(to.begin(), to.end(), [&](const InstanceInfo& p) { return p.id == twin_a; }));
    // Never to this instance's own address (a peer_address copied from
    // another instance, a VIP), whatever the id.
    d.update({inst("c", "127.0.0.1:1")}, "test");
    CHECK(d.peers().size() == 1);
    CHECK(d.peers_for_tag(instance_tag("c")).empty());
}

TEST_CASE("cancel keys carry the instance tag; 3.0 and 3.2 secret lengths; found only whole", "[instances][cancel]") {
    const uint16_t tag = instance_tag("lb2:127.0.0.2:6432");
    CancelRegistry reg(tag);
    std::set<std::pair<int32_t, std::string>> seen;
    for (int i = 0; i < 2000; ++i) {
        const CancelKey k = reg.add(CancelTarget{"pg1", "127.0.0.1", 5432, CancelKey{1000 + i, std::string(4, 'b')}});
        CHECK(k.pid > 0);
        CHECK(CancelRegistry::tag_of(k) == tag);
        CHECK(k.secret.size() == 4);
        CHECK(seen.emplace(k.pid, k.secret).second);
    }
    CHECK(reg.size() == 2000);

    const CancelKey backend{77, std::string(32, 'q')};
    const CancelKey k = reg.add(CancelTarget{"pg2", "127.0.0.1", 5433, backend}, 32);
    REQUIRE(k.secret.size() == 32);
    CHECK(CancelRegistry::tag_of(k) == tag);
    REQUIRE(reg.find(k));
    CHECK(reg.find(k)->backend_key == backend);
    CHECK(reg.find(k)->member == "pg2");
    // Any byte off, a byte short or long, or only the first 4 bytes: not found.
    for (size_t i : {size_t(0), size_t(4), size_t(31)}) {
        CancelKey wrong = k;
        wrong.secret[i] = static_cast<char>(wrong.secret[i] ^ 1);
        CHECK_FALSE(reg.find(wrong));
    }
    CHECK_FALSE(reg.find(CancelKey{k.pid, k.secret.substr(0, 31)}));
    CHECK_FALSE(reg.find(CancelKey{k.pid, k.secret + "x"}));
    CHECK_FALSE(reg.find(CancelKey{k.pid, k.secret.substr(0, 4)}));
    CHECK_FALSE(reg.find(CancelKey{k.pid, k.secret.substr(0, 3)}));
    CHECK_FALSE(reg.find(CancelKey{k.pid ^ 1, k.secret}));

    // Pooled keys: no target until retargeted; remove needs the whole key.
    const CancelKey p = reg.add_pooled(32);
    CHECK(p.secret.size() == 32);
    CHECK_FALSE(reg.find(p));  // a pooled client holding no server: nothing to cancel
    CHECK(reg.size() == 2002);
    reg.retarget(p, CancelTarget{"pg3", "127.0.0.1", 5434, CancelKey{5, std::string(4, 'z')}});
    CHECK(reg.find(p).has_value());
    reg.remove(CancelKey{p.pid, p.secret.substr(0, 4)});
    CHECK(reg.find(p).has_value());
    reg.remove(p);
    CHECK_FALSE(reg.find(p));
    reg.remove(k);
    CHECK_FALSE(reg.find(k));
    CHECK(reg.size() == 2000);
}

TEST_CASE("[instance]: defaults from the host name and rw address; peers; refusals", "[instances][config]") {
    const auto c = parse_config(kBase, "test.toml");
    CHECK(c.instance.id.find(":127.0.0.2:6432") != std::string::npos);
    CHECK(c.instance.peer_address == "127.0.0.2:6432");
    CHECK(c.instance.registry_path == "/pgrelay/demo/instances");
    CHECK(c.instance.register_);
    CHECK(c.instance.ttl == std::chrono::seconds(10));
    CHECK(c.instance.peers.empty());

    const auto d = parse_config(std::string(kBase) + R"(
[instance]
id = "lb-a"
peer_address = "10.0.0.1:6432"
peers = ["lb-b@10.0.0.2:6432", "lb@c@[::1]:7000"]
registry_path = "/lb/instances/"
ttl = "4s"
register = false
)", "test.toml");
    CHECK(d.instance.id == "lb-a");
    CHECK(d.instance.peer_address == "10.0.0.1:6432");
    REQUIRE(d.instance.peers.size() == 2);
    CHECK(d.instance.peers[0].id == "lb-b");
    CHECK(d.instance.peers[0].peer_address == "10.0.0.2:6432");
    CHECK(d.instance.peers[1].id == "lb@c");
    CHECK(d.instance.peers[1].peer_address == "[::1]:7000");
    CHECK(d.instance.registry_path == "/lb/instances");
    CHECK(d.instance.ttl == std::chrono::seconds(4));
    CHECK_FALSE(d.instance.register_);

    // A wildcard listener: peers reach the instance by host name.
    const auto w = parse_config(std::string(kBase).replace(std::string(kBase).find("127.0.0.2:6432"), 14, "0.0.0.0:6432"),
                                "test.toml");
    CHECK(w.instance.peer_address.find("0.0.0.0") == std::string::npos);
    CHECK(w.instance.peer_address.size() > 5);

    auto refused = [](const std::string& section, const std::string& what) {
        INFO(section);
        try {
            parse_config(std::string(kBase) + "[instance]\n" + section, "test.toml");
            FAIL("accepted");
        } catch (const ConfigError& e) {
            CHECK_THAT(e.describe(), Contains(what));
        }
    };
    refused("peers = [\"10.0.0.2:6432\"]\n", "id@host:port");
    refused("peers = [\"b@nowhere\"]\n", "id@host:port");
    refused("peers = [\"b@h:1\", \"b@h:2\"]\n", "appears twice");
    refused("id = \"a\"\npeers = [\"a@h:1\"]\n", "appears twice");
    refused("id = \"a/b\"\n", "[instance] id");
    refused("id = \"\"\n", "[instance] id");
    refused("id = \"..\"\n", "[instance] id");
    refused("id = \"a\\nb\"\n", "[instance] id");
    refused("registry_path = \"/\"\n", "registry_path");
    refused("registry_path = \"/a//b\"\n", "registry_path");
    refused("registry_path = \"/a/..\"\n", "registry_path");
    refused("peer_address = \"h\"\n", "peer_address");
    refused("registry_path = \"/service/demo/pgrelay\"\n", "inside Patroni's keys");
    refused("registry_path = \"relative\"\n", "must start with '/'");
    refused("ttl = \"1s\"\n", "at least 2s");
    refused("color = \"red\"\n", "color");

    // etcd: the lease must outlive a keepalive's request_timeout thrice over.
    const std::string etcd = R"(
[listen]
rw = "127.0.0.2:6432"
[topology]
source = "etcd"
[topology.etcd]
endpoints = ["http://127.0.0.1:2379"]
scope = "demo"
request_timeout = "4s"
)";
    CHECK_THROWS_WITH(parse_config(etcd, "test.toml"), Contains("at least 3 x [topology.etcd] request_timeout"));
    CHECK(parse_config(etcd + "[instance]\nttl = \"12s\"\n", "test.toml").instance.ttl == std::chrono::seconds(12));
    CHECK_FALSE(parse_config(etcd + "[instance]\nregister = false\n", "test.toml").instance.register_);
    // Without a scope (static members): a registry path of its own, unused.
    const auto s = parse_config(R"(
[listen]
rw = "127.0.0.2:6432"
[instance]
peers = ["b@127.0.0.3:6432"]
[topology]
[[topology.members]]
name = "pg"
host = "127.0.0.1"
role = "primary"
)", "test.toml");
    CHECK(s.instance.registry_path == "/pgrelay/instances");
    CHECK(s.instance.peers.size() == 1);
}
