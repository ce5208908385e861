// Config loading with toml++ (config.hpp). Every key is checked: unknown keys,
// wrong types and bad values are errors with a line number, because a typo in a
// proxy's config should fail at start, not route traffic somewhere surprising.
#include "proxy/config.hpp"
#include "topology/http.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <span>
#include <sstream>
#include <thread>
#include <toml++/toml.h>

namespace pgrelay {

std::string ConfigError::describe() const {
    if (line > 0) return file + ":" + std::to_string(line) + ": " + what();
    return file + ": " + what();
}

const char* to_string(PortRole r) noexcept { return r == PortRole::ReadWrite ? "rw" : "ro"; }

const char* to_string(PoolMode m) noexcept {
    switch (m) {
        case PoolMode::Passthrough: return "passthrough";
        case PoolMode::Session: return "session";
        case PoolMode::Transaction: return "transaction";
    }
    return "?";
}

const char* to_string(Config::BackendTls m) noexcept {
    switch (m) {
        case Config::BackendTls::Disable: return "disable";
        case Config::BackendTls::Prefer: return "prefer";
        case Config::BackendTls::Require: return "require";
        case Config::BackendTls::VerifyCa: return "verify-ca";
        case Config::BackendTls::VerifyFull: return "verify-full";
    }
    return "?";
}

unsigned Config::effective_threads() const noexcept {
    if (threads > 0) return threads;
    const unsigned n = std::thread::hardware_concurrency();
    return n > 0 ? n : 1;
}

namespace {
// Longest accepted duration: a day is far beyond any sane timeout, and keeps
// every conversion to milliseconds exact.
constexpr double kMaxDurationMs = 24.0 * 3600 * 1000;

bool to_duration(double ms, std::chrono::milliseconds& out) {
    if (!(ms >= 0 && ms <= kMaxDurationMs)) return false;  // also rejects NaN
    out = std::chrono::milliseconds(static_cast<int64_t>(ms + 0.5));
    return true;
}
}  // namespace

bool parse_duration(const std::string& s, std::chrono::milliseconds& out) {
    // Strict: digits with an optional fraction, then an optional unit. No
    // signs, spaces, exponents, hex or "inf" (std::stod would take them all).
    size_t i = 0;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
    const size_t int_digits = i;
    if (i < s.size() && s[i] == '.') {
        ++i;
        while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
    }
    if (int_digits == 0 || i > 18) return false;
    const double v = std::stod(s.substr(0, i));
    const std::string unit = s.substr(i);
    double ms;
    if (unit == "ms") ms = v;
    else if (unit == "s" || unit.empty()) ms = v * 1000;
    else if (unit == "m" || unit == "min") ms = v * 60000;
    else return false;
    return to_duration(ms, out);
}

namespace {

// Every table the parser reads and the keys it accepts there (a key that names
// a subtable is listed as well), with whether SIGHUP applies a change or only
// a restart does (proxy/server.cpp, Server::reload). [pool.rw] and [pool.ro]
// take [pool]'s keys. The documentation test (tests/proxy/test_config_docs.cpp)
// holds conf/pgrelay.toml, and so pgrelay.toml(5), to exactly this list.
constexpr ConfigKey kSchema[] = {
    {"", "server", false}, {"", "listen", false}, {"", "routing", false}, {"", "topology", false},
    {"", "admin", false}, {"", "tls", false}, {"", "pool", false}, {"", "instance", false},

    {"server", "threads", true}, {"server", "log_level", false}, {"server", "log_format", false},
    {"server", "connect_timeout", false}, {"server", "startup_timeout", false}, {"server", "max_frame_size", false},
    {"server", "shutdown_grace", false}, {"server", "max_client_connections", false},
    {"server", "idle_client_timeout", false}, {"server", "tcp_keepalive_idle", false},
    {"server", "tcp_keepalive_interval", false}, {"server", "tcp_keepalive_count", false},

    {"tls", "cert", false}, {"tls", "key", false}, {"tls", "client_ca", false}, {"tls", "client_tls", false},
    {"tls", "min_version", false}, {"tls", "ciphers", false},

    {"listen", "rw", true}, {"listen", "ro", true},

    {"instance", "id", true}, {"instance", "peer_address", true}, {"instance", "peers", false},
    {"instance", "register", true}, {"instance", "registry_path", true}, {"instance", "ttl", true},

    {"admin", "listen", true},

    {"pool", "pool_mode", true}, {"pool", "pool_size", false}, {"pool", "min_pool_size", false},
    {"pool", "max_db_connections", false}, {"pool", "server_lifetime", false},
    {"pool", "server_idle_timeout", false}, {"pool", "query_wait_timeout", false},
    {"pool", "server_reset_query", false}, {"pool", "auth_file", false}, {"pool", "auth_query", false},
    {"pool", "auth_user", false}, {"pool", "admin_users", false}, {"pool", "rw", false}, {"pool", "ro", false},

    {"routing", "ro_fallback_to_primary", false}, {"routing", "ro_balance", false},
    {"routing", "max_replica_lag", false}, {"routing", "weights", false}, {"routing", "exclude", false},
    {"routing", "hold_timeout", false}, {"routing", "switchover_hold", false},
    {"routing", "allow_standby_leader", false},

    {"topology", "source", true}, {"topology", "health_check_interval", true},
    {"topology", "health_check_timeout", true}, {"topology", "members", true}, {"topology", "zookeeper", true},
    {"topology", "etcd", true}, {"topology", "patroni_api", true}, {"topology", "probe", true},
    {"topology", "rest_fallback", true}, {"topology", "member_addresses", true},
    {"topology", "backend_tls", false}, {"topology", "backend_tls_ca", false}, {"topology", "backend_tls_sni", false},

    {"topology.members", "name", true}, {"topology.members", "host", true}, {"topology.members", "port", true},
    {"topology.members", "role", true}, {"topology.members", "tags", true},

    {"topology.zookeeper", "hosts", true}, {"topology.zookeeper", "namespace", true},
    {"topology.zookeeper", "scope", true}, {"topology.zookeeper", "session_timeout", true},

    {"topology.etcd", "endpoints", true}, {"topology.etcd", "namespace", true}, {"topology.etcd", "scope", true},
    {"topology.etcd", "username", true}, {"topology.etcd", "password", true},
    {"topology.etcd", "password_file", true}, {"topology.etcd", "ca", true}, {"topology.etcd", "cert", true},
    {"topology.etcd", "key", true}, {"topology.etcd", "request_timeout", true},
    {"topology.etcd", "check_interval", true},

    {"topology.patroni_api", "urls", true}, {"topology.patroni_api", "ca", true},
    {"topology.patroni_api", "cert", true}, {"topology.patroni_api", "key", true},
    {"topology.patroni_api", "interval", true}, {"topology.patroni_api", "request_timeout", true},

    {"topology.probe", "user", true}, {"topology.probe", "password", true}, {"topology.probe", "dbname", true},
    {"topology.probe", "interval", true}, {"topology.probe", "connect_timeout", true},

    {"topology.rest_fallback", "enabled", true}, {"topology.rest_fallback", "interval", true},
    {"topology.rest_fallback", "request_timeout", true}, {"topology.rest_fallback", "ca", true},
    {"topology.rest_fallback", "cert", true}, {"topology.rest_fallback", "key", true},
};

}  // namespace

std::span<const ConfigKey> config_keys() noexcept { return kSchema; }

namespace {

class Loader {
public:
    explicit Loader(std::string path) : path_(std::move(path)) {}

    [[noreturn]] void fail(const toml::node* n, const std::string& msg) const {
        throw ConfigError(path_, n ? static_cast<int>(n->source().begin.line) : 0, msg);
    }

    // Rejects keys the schema (kSchema) does not list for table `name` ("" =
    // the top level; [pool.rw] and [pool.ro] take [pool]'s keys but rw and ro):
    // a misspelt option must not be ignored.
    void only_keys(const toml::table& t, std::string_view name) {
        const bool port_pool = name == "pool.rw" || name == "pool.ro";
        auto accepts = [&](const ConfigKey& k) {
            if (port_pool) return k.table == "pool" && k.key != "rw" && k.key != "ro";
            return k.table == name;
        };
        for (const auto& [k, v] : t) {
            bool ok = false;
            for (const auto& a : kSchema) ok = ok || (accepts(a) && k.str() == a.key);
            if (!ok) {
                std::string list;
                for (const auto& a : kSchema)
                    if (accepts(a)) list += (list.empty() ? "" : ", ") + std::string(a.key);
                const std::string where = name.empty() ? std::string("the top level")
                                          : name == "topology.members" ? std::string("[[topology.members]]")
                                                                       : "[" + std::string(name) + "]";
                fail(&v, "unknown key '" + std::string(k.str()) + "' in " + where + " (expected one of: " + list + ")");
            }
        }
    }

    const toml::table* table(const toml::table& parent, std::string_view key) {
        const toml::node* n = parent.get(key);
        if (!n) return nullptr;
        if (!n->is_table()) fail(n, "'" + std::string(key) + "' must be a table");
        return n->as_table();
    }

    bool get_bool(const toml::table& t, std::string_view key, bool def) {
        const toml::node* n = t.get(key);
        if (!n) return def;
        if (auto v = n->value<bool>(); v && n->is_boolean()) return *v;
        fail(n, "'" + std::string(key) + "' must be true or false");
    }

    // "[pool.rw] " for messages that should name their table; "" otherwise.
    static std::string in(const std::string& where) { return where.empty() ? where : where + " "; }

    std::string get_string(const toml::table& t, std::string_view key, const std::string& def,
                           const std::string& where = {}) {
        const toml::node* n = t.get(key);
        if (!n) return def;
        if (!n->is_string()) fail(n, in(where) + "'" + std::string(key) + "' must be a string");
        return *n->value<std::string>();
    }

    int64_t get_int(const toml::table& t, std::string_view key, int64_t def, int64_t lo, int64_t hi,
                    const std::string& where = {}) {
        const toml::node* n = t.get(key);
        if (!n) return def;
        if (!n->is_integer()) fail(n, in(where) + "'" + std::string(key) + "' must be an integer");
        const int64_t v = *n->value<int64_t>();
        if (v < lo || v > hi)
            fail(n, in(where) + "'" + std::string(key) + "' = " + std::to_string(v) + " is out of range [" + std::to_string(lo) +
                        ", " + std::to_string(hi) + "]");
        return v;
    }

    std::chrono::milliseconds get_duration(const toml::table& t, std::string_view key, std::chrono::milliseconds def,
                                           const std::string& where = {}) {
        const toml::node* n = t.get(key);
        if (!n) return def;
        std::chrono::milliseconds out;
        if (n->is_integer() || n->is_floating_point()) {
            if (to_duration(*n->value<double>() * 1000, out)) return out;
        } else if (n->is_string() && parse_duration(*n->value<std::string>(), out)) {
            return out;
        }
        fail(n, in(where) + "'" + std::string(key) +
                    "' must be a duration from 0 to 24 hours such as \"500ms\", \"5s\" or \"2m\" (a number means seconds)");
    }

    // "host:port" or "[v6]:port"; an empty string disables the listener.
    ListenConfig get_listen(const toml::table& t, std::string_view key, PortRole role, const std::string& def) {
        ListenConfig l;
        l.role = role;
        const std::string s = get_string(t, key, def);
        if (s.empty()) return l;
        const toml::node* n = t.get(key);
        std::string host, port;
        if (!s.empty() && s[0] == '[') {
            const auto close = s.find(']');
            if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':')
                fail(n, "'" + std::string(key) + "' = \"" + s + "\": expected \"[address]:port\"");
            host = s.substr(1, close - 1);
            port = s.substr(close + 2);
        } else {
            const auto colon = s.rfind(':');
            if (colon == std::string::npos) fail(n, "'" + std::string(key) + "' = \"" + s + "\": expected \"address:port\"");
            host = s.substr(0, colon);
            port = s.substr(colon + 1);
            if (host.find(':') != std::string::npos)
                fail(n, "'" + std::string(key) + "' = \"" + s + "\": write IPv6 addresses as \"[address]:port\"");
        }
        l.host = host.empty() ? "0.0.0.0" : host;
        l.port = parse_port(n, port, key);
        l.enabled = true;
        return l;
    }

    uint16_t parse_port(const toml::node* n, const std::string& s, std::string_view key) {
        int v = -1;
        try {
            size_t idx = 0;
            v = std::stoi(s, &idx);
            if (idx != s.size()) v = -1;
        } catch (...) {
        }
        if (v < 1 || v > 65535) fail(n, "'" + std::string(key) + "': port must be 1..65535, got \"" + s + "\"");
        return static_cast<uint16_t>(v);
    }

    std::vector<std::string> get_string_list(const toml::table& t, std::string_view key, const std::string& where = {}) {
        std::vector<std::string> out;
        const toml::node* n = t.get(key);
        if (!n) return out;
        const toml::array* a = n->as_array();
        if (!a) fail(n, in(where) + "'" + std::string(key) + "' must be an array of strings");
        for (const auto& e : *a) {
            if (!e.is_string()) fail(&e, in(where) + "'" + std::string(key) + "' must contain only strings");
            out.push_back(*e.value<std::string>());
        }
        return out;
    }

    Config load(const toml::table& root) {
        Config c = load_main(root);
        const toml::table* inst = table(root, "instance");
        load_instance(inst, c);
        // The lease is kept alive every ttl/3; a keepalive may take up to
        // request_timeout, and must not let the lease lapse.
        if (c.topology_source == "etcd" && c.instance.register_ && c.instance.ttl < 3 * c.etcd.request_timeout)
            fail(inst && inst->get("ttl") ? inst->get("ttl") : nullptr,
                 "[instance] ttl (" + std::to_string(c.instance.ttl.count()) + " ms) must be at least 3 x "
                 "[topology.etcd] request_timeout (" + std::to_string(c.etcd.request_timeout.count()) + " ms)");
        return c;
    }

    // [instance]: who this pgrelay is among the instances behind one name.
    void load_instance(const toml::table* t, Config& c) {
        Config::Instance& in = c.instance;
        const ListenConfig& l = c.rw.enabled ? c.rw : c.ro;
        const bool wildcard = l.host == "0.0.0.0" || l.host == "::";
        const std::string hostname = host_name();
        const std::string listen = (l.host.find(':') != std::string::npos ? "[" + l.host + "]" : l.host) + ":" +
                                   std::to_string(l.port);
        in.id = hostname + ":" + listen;
        in.peer_address = wildcard ? hostname + ":" + std::to_string(l.port) : listen;
        const std::string scope = c.topology_source == "zookeeper" ? c.zookeeper.scope
                                  : c.topology_source == "etcd"    ? c.etcd.scope
                                                                   : std::string();
        in.registry_path = scope.empty() ? "/pgrelay/instances" : "/pgrelay/" + scope + "/instances";
        if (!t) return;
        only_keys(*t, "instance");
        in.id = get_string(*t, "id", in.id);
        // It names a znode or an etcd key, and shows up in logs and labels.
        if (in.id.empty() || in.id.size() > 200 || in.id == "." || in.id == ".." ||
            std::any_of(in.id.begin(), in.id.end(),
                        [](unsigned char ch) { return ch < 0x20 || ch == 0x7f || ch == '/' || ch == '"' || ch == '\\'; }))
            fail(t->get("id"), "[instance] id must be 1 to 200 printable characters without '/', quotes or "
                               "backslashes, and not \".\" or \"..\"");
        in.peer_address = get_string(*t, "peer_address", in.peer_address);
        if (!topology::parse_host_port(in.peer_address))
            fail(t->get("peer_address"), "[instance] peer_address must be \"host:port\" (\"[v6]:port\"), got \"" +
                                             in.peer_address + "\"");
        in.register_ = get_bool(*t, "register", in.register_);
        in.registry_path = get_string(*t, "registry_path", in.registry_path);
        while (in.registry_path.size() > 1 && in.registry_path.back() == '/') in.registry_path.pop_back();
        if (in.registry_path.size() < 2 || in.registry_path.front() != '/' ||
            in.registry_path.find("//") != std::string::npos ||
            (in.registry_path + "/").find("/./") != std::string::npos ||
            (in.registry_path + "/").find("/../") != std::string::npos)
            fail(t->get("registry_path"), "[instance] registry_path must start with '/', name at least one component, "
                                          "and have no empty, \".\" or \"..\" ones");
        const std::string patroni_base = c.topology_source == "zookeeper" ? c.zookeeper.base()
                                         : c.topology_source == "etcd"    ? c.etcd.base()
                                                                          : std::string();
        if (!patroni_base.empty() && (in.registry_path + "/").rfind(patroni_base + "/", 0) == 0)
            fail(t->get("registry_path"), "[instance] registry_path must not be inside Patroni's keys (" + patroni_base + ")");
        in.ttl = get_duration(*t, "ttl", in.ttl);
        if (in.ttl < std::chrono::seconds(2)) fail(t->get("ttl"), "[instance] ttl must be at least 2s");
        std::set<std::string> ids{in.id};
        if (const toml::node* n = t->get("peers")) {
            for (const std::string& s : get_string_list(*t, "peers", "[instance]")) {
                const size_t at = s.rfind('@');
                topology::InstanceInfo p;
                if (at != std::string::npos) {
                    p.id = s.substr(0, at);
                    p.peer_address = s.substr(at + 1);
                }
                if (p.id.empty() || !topology::parse_host_port(p.peer_address))
                    fail(n, "[instance] peers entries are \"id@host:port\" (the peer's [instance] id and "
                            "peer_address), got \"" + s + "\"");
                if (!ids.insert(p.id).second) fail(n, "[instance] peers: id '" + p.id + "' appears twice (or is this instance's)");
                in.peers.push_back(std::move(p));
            }
        }
    }

    static std::string host_name() {
        char buf[256] = {};
        if (::gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return "localhost";
        return buf;
    }

    Config load_main(const toml::table& root) {
        Config c;
        c.path = path_;
        only_keys(root, "");

        if (const toml::table* s = table(root, "server")) {
            only_keys(*s, "server");
            c.idle_client_timeout = get_duration(*s, "idle_client_timeout", c.idle_client_timeout);
            auto keepalive_secs = [&](std::string_view key, std::chrono::seconds def) {
                const auto d = get_duration(*s, key, def);
                if (d < std::chrono::seconds(1))
                    fail(s->get(key), "'" + std::string(key) + "' must be at least 1s (TCP keepalive counts seconds)");
                return std::chrono::duration_cast<std::chrono::seconds>(d);
            };
            c.keepalive_idle = keepalive_secs("tcp_keepalive_idle", c.keepalive_idle);
            c.keepalive_interval = keepalive_secs("tcp_keepalive_interval", c.keepalive_interval);
            c.keepalive_count = static_cast<unsigned>(get_int(*s, "tcp_keepalive_count", c.keepalive_count, 1, 127));
            c.max_client_connections =
                static_cast<uint32_t>(get_int(*s, "max_client_connections", 0, 0, 10'000'000));
            const std::string fmt = get_string(*s, "log_format", "text");
            if (fmt != "text" && fmt != "json")
                fail(s->get("log_format"), "log_format must be \"text\" or \"json\", got \"" + fmt + "\"");
            c.log_json = fmt == "json";
            c.shutdown_grace = get_duration(*s, "shutdown_grace", c.shutdown_grace);
            c.threads = static_cast<unsigned>(get_int(*s, "threads", 0, 0, 256));
            const std::string lvl = get_string(*s, "log_level", "info");
            if (!log::parse_level(lvl, c.log_level))
                fail(s->get("log_level"), "log_level must be one of debug, info, warning, error; got \"" + lvl + "\"");
            c.connect_timeout = get_duration(*s, "connect_timeout", c.connect_timeout);
            c.startup_timeout = get_duration(*s, "startup_timeout", c.startup_timeout);
            if (c.connect_timeout.count() == 0) fail(s->get("connect_timeout"), "connect_timeout must be above 0");
            if (c.startup_timeout.count() == 0) fail(s->get("startup_timeout"), "startup_timeout must be above 0");
            c.max_frame_size = static_cast<uint32_t>(get_int(*s, "max_frame_size", c.max_frame_size, 8192, 0x7fffffff));
        }

        if (const toml::table* l = table(root, "listen")) {
            only_keys(*l, "listen");
            c.rw = get_listen(*l, "rw", PortRole::ReadWrite, "");
            c.ro = get_listen(*l, "ro", PortRole::ReadOnly, "");
        }
        if (const toml::table* a = table(root, "admin")) {
            only_keys(*a, "admin");
            c.admin = get_listen(*a, "listen", PortRole::ReadWrite, "127.0.0.1:9187");
        }
        if (!c.rw.enabled && !c.ro.enabled) fail(root.get("listen"), "[listen] must set rw and/or ro (\"address:port\")");
        if (c.rw.enabled && c.ro.enabled && c.rw.port == c.ro.port && c.rw.host == c.ro.host)
            fail(root["listen"]["ro"].node(), "[listen] rw and ro must not use the same address and port");

        if (const toml::table* tls = table(root, "tls")) load_tls(*tls, c);
        if (const toml::table* pool = table(root, "pool")) load_pool(*pool, c);

        if (const toml::table* r = table(root, "routing")) {
            only_keys(*r, "routing");
            c.hold_timeout = get_duration(*r, "hold_timeout", c.hold_timeout);
            c.switchover_hold = get_duration(*r, "switchover_hold", c.switchover_hold);
            c.allow_standby_leader = get_bool(*r, "allow_standby_leader", false);
            c.routing.ro_fallback_to_primary = get_bool(*r, "ro_fallback_to_primary", true);
            const std::string bal = get_string(*r, "ro_balance", "round_robin");
            if (bal == "round_robin") c.routing.ro_balance = topology::Balance::RoundRobin;
            else if (bal == "least_conn") c.routing.ro_balance = topology::Balance::LeastConn;
            else fail(r->get("ro_balance"), "ro_balance must be \"round_robin\" or \"least_conn\", got \"" + bal + "\"");
            c.routing.max_replica_lag = static_cast<uint64_t>(
                get_int(*r, "max_replica_lag", static_cast<int64_t>(c.routing.max_replica_lag), 0, INT64_MAX));
            if (const toml::table* w = table(*r, "weights")) {
                for (const auto& [k, v] : *w) {
                    if (!v.is_integer() || *v.value<int64_t>() < 0 || *v.value<int64_t>() > 1000)
                        fail(&v, "weight of '" + std::string(k.str()) + "' must be an integer 0..1000");
                    c.weights[std::string(k.str())] = static_cast<uint32_t>(*v.value<int64_t>());
                }
            }
            c.exclude = get_string_list(*r, "exclude");
        }

        const toml::table* t = table(root, "topology");
        if (!t) fail(nullptr, "missing [topology] section (source and members)");
        only_keys(*t, "topology");
        load_backend_tls(*t, c);
        c.topology_source = get_string(*t, "source", "static");
        if (c.topology_source != "static" && c.topology_source != "zookeeper" && c.topology_source != "etcd" &&
            c.topology_source != "patroni_api")
            fail(t->get("source"), "topology source must be \"static\", \"zookeeper\", \"etcd\" or \"patroni_api\", got \"" +
                                       c.topology_source + "\"");
        for (const char* sub : {"zookeeper", "etcd", "patroni_api"})
            if (t->get(sub) && c.topology_source != sub)
                fail(t->get(sub), "[topology." + std::string(sub) + "] is only for source \"" + sub + "\"");
        c.health_check_interval = get_duration(*t, "health_check_interval", c.health_check_interval);
        c.health_check_timeout = get_duration(*t, "health_check_timeout", c.health_check_timeout);
        if (c.health_check_interval.count() == 0) fail(t->get("health_check_interval"), "health_check_interval must be above 0");
        if (c.health_check_timeout.count() == 0) fail(t->get("health_check_timeout"), "health_check_timeout must be above 0");
        if (const toml::table* p = table(*t, "probe")) {
            only_keys(*p, "topology.probe");
            c.probe.user = get_string(*p, "user", c.probe.user);
            c.probe.password = get_string(*p, "password", c.probe.password);
            c.probe.dbname = get_string(*p, "dbname", c.probe.dbname);
            c.probe.interval = get_duration(*p, "interval", c.probe.interval);
            c.probe.connect_timeout = get_duration(*p, "connect_timeout", c.probe.connect_timeout);
            if (c.probe.interval.count() == 0) fail(p->get("interval"), "probe interval must be above 0");
            if (c.probe.connect_timeout.count() < 1000)
                fail(p->get("connect_timeout"), "probe connect_timeout must be at least 1s (libpq's granularity)");
        }
        if (const toml::table* a = table(*t, "member_addresses")) {
            if (c.topology_source == "static")
                fail(t->get("member_addresses"), "[topology.member_addresses] is only for the Patroni sources");
            for (const auto& [name, v] : *a) {
                const auto* text = v.as_string();
                if (!text || !topology::parse_host_port(text->get()))
                    fail(&v, "[topology.member_addresses] " + std::string(name.str()) + " must be \"host:port\"");
                c.member_addresses[std::string(name.str())] = text->get();
            }
        }
        if (const toml::table* f = table(*t, "rest_fallback")) {
            if (c.topology_source != "zookeeper" && c.topology_source != "etcd")
                fail(t->get("rest_fallback"), "[topology.rest_fallback] is only for source \"zookeeper\" or \"etcd\"");
            only_keys(*f, "topology.rest_fallback");
            c.rest_fallback.enabled = get_bool(*f, "enabled", c.rest_fallback.enabled);
            c.rest_fallback.interval = get_duration(*f, "interval", c.rest_fallback.interval);
            c.rest_fallback.request_timeout = get_duration(*f, "request_timeout", c.rest_fallback.request_timeout);
            get_store_tls(*f, "[topology.rest_fallback]", c.rest_fallback.ca, c.rest_fallback.cert, c.rest_fallback.key);
            if (c.rest_fallback.interval < std::chrono::milliseconds(50))
                fail(f->get("interval"), "[topology.rest_fallback] interval must be at least 50ms");
            if (c.rest_fallback.request_timeout < std::chrono::milliseconds(100))
                fail(f->get("request_timeout"), "[topology.rest_fallback] request_timeout must be at least 100ms");
        }
        if (c.topology_source != "static") {
            if (c.topology_source == "zookeeper") load_zookeeper(*t, c);
            else if (c.topology_source == "etcd") load_etcd(*t, c);
            else load_patroni_api(*t, c);
            if (t->get("members"))
                fail(t->get("members"), "[[topology.members]] is only for source \"static\"");
            c.routing.lag_aware = true;
            return c;
        }
        load_members(*t, root.get_as<toml::table>("routing"), c);
        return c;
    }

    // Patroni writes namespace "/service/"; accept it with or without slashes.
    static void strip_slashes(std::string& part) {
        while (!part.empty() && part.front() == '/') part.erase(0, 1);
        while (!part.empty() && part.back() == '/') part.pop_back();
    }

    void load_zookeeper(const toml::table& t, Config& c) {
        const toml::table* z = table(t, "zookeeper");
        if (!z) fail(t.get("source"), "[topology] source \"zookeeper\" needs a [topology.zookeeper] section (hosts, scope)");
        only_keys(*z, "topology.zookeeper");
        c.zookeeper.hosts = get_string(*z, "hosts", "");
        if (c.zookeeper.hosts.empty()) fail(z, "[topology.zookeeper] hosts is required, e.g. \"zk1:2181,zk2:2181\"");
        c.zookeeper.namespace_ = get_string(*z, "namespace", c.zookeeper.namespace_);
        c.zookeeper.scope = get_string(*z, "scope", "");
        strip_slashes(c.zookeeper.namespace_);
        strip_slashes(c.zookeeper.scope);
        if (c.zookeeper.scope.empty()) fail(z, "[topology.zookeeper] scope (Patroni's cluster name) is required");
        c.zookeeper.session_timeout = get_duration(*z, "session_timeout", c.zookeeper.session_timeout);
        if (c.zookeeper.session_timeout.count() < 1000)
            fail(z->get("session_timeout"), "session_timeout must be at least 1s");
    }

    // A list of store URLs: each must parse, and they must not repeat.
    std::vector<std::string> get_urls(const toml::table& t, std::string_view key, const std::string& section,
                                      bool default_tls, uint16_t default_port, const char* example) {
        const std::vector<std::string> urls = get_string_list(t, key);
        if (urls.empty())
            fail(t.get(key) ? t.get(key) : &t, section + " " + std::string(key) + " is required, e.g. " + example);
        std::set<std::string> seen;
        for (size_t i = 0; i < urls.size(); ++i) {
            auto u = topology::http::parse_url(urls[i], default_tls, default_port);
            const toml::node* at = (*t.get_as<toml::array>(key)).get(i);
            if (!u)
                fail(at, section + " " + std::string(key) + ": '" + urls[i] +
                             "' is not http://host:port, https://host:port or host:port");
            if (!seen.insert(u->to_string()).second) fail(at, section + " " + std::string(key) + " lists '" + urls[i] + "' twice");
        }
        return urls;
    }

    // ca/cert/key for an https store: files must exist now, cert and key go together.
    void get_store_tls(const toml::table& t, const std::string& section, std::string& ca, std::string& cert,
                       std::string& key) {
        ca = get_string(t, "ca", "");
        cert = get_string(t, "cert", "");
        key = get_string(t, "key", "");
        if (cert.empty() != key.empty())
            fail(t.get(cert.empty() ? "key" : "cert"), section + " cert and key go together: set both or neither");
        const std::pair<const char*, const std::string*> files[] = {{"ca", &ca}, {"cert", &cert}, {"key", &key}};
        for (const auto& [k, f] : files)
            if (!f->empty() && !std::ifstream(*f)) fail(t.get(k), section + " " + k + ": cannot read '" + *f + "'");
    }

    void load_etcd(const toml::table& t, Config& c) {
        const toml::table* e = table(t, "etcd");
        if (!e) fail(t.get("source"), "[topology] source \"etcd\" needs a [topology.etcd] section (endpoints, scope)");
        only_keys(*e, "topology.etcd");
        get_store_tls(*e, "[topology.etcd]", c.etcd.ca, c.etcd.cert, c.etcd.key);
        const bool tls_files = !c.etcd.ca.empty() || !c.etcd.cert.empty();
        c.etcd.endpoints = get_urls(*e, "endpoints", "[topology.etcd]", tls_files, 2379,
                                    "[\"http://etcd1:2379\", \"http://etcd2:2379\"]");
        c.etcd.namespace_ = get_string(*e, "namespace", c.etcd.namespace_);
        c.etcd.scope = get_string(*e, "scope", "");
        strip_slashes(c.etcd.namespace_);
        strip_slashes(c.etcd.scope);
        if (c.etcd.scope.empty()) fail(e, "[topology.etcd] scope (Patroni's cluster name) is required");
        c.etcd.username = get_string(*e, "username", "");
        c.etcd.password = get_string(*e, "password", "");
        c.etcd.password_file = get_string(*e, "password_file", "");
        if (!c.etcd.password.empty() && !c.etcd.password_file.empty())
            fail(e->get("password_file"), "[topology.etcd] set password or password_file, not both");
        if (!c.etcd.password_file.empty()) {
            std::ifstream in(c.etcd.password_file);
            if (!in) fail(e->get("password_file"), "[topology.etcd] password_file: cannot read '" + c.etcd.password_file + "'");
            std::getline(in, c.etcd.password);
            while (!c.etcd.password.empty() && (c.etcd.password.back() == '\r' || c.etcd.password.back() == '\n'))
                c.etcd.password.pop_back();
        }
        if (c.etcd.username.empty() && (e->get("password") || e->get("password_file")))
            fail(e->get("password") ? e->get("password") : e->get("password_file"),
                 "[topology.etcd] a password needs a username");
        if (!c.etcd.username.empty() && c.etcd.password.empty())
            fail(e->get("username"), "[topology.etcd] username '" + c.etcd.username + "' needs a password or password_file");
        c.etcd.request_timeout = get_duration(*e, "request_timeout", c.etcd.request_timeout);
        c.etcd.check_interval = get_duration(*e, "check_interval", c.etcd.check_interval);
        if (c.etcd.request_timeout < std::chrono::milliseconds(100))
            fail(e->get("request_timeout"), "[topology.etcd] request_timeout must be at least 100ms");
        if (c.etcd.check_interval < std::chrono::milliseconds(100))
            fail(e->get("check_interval"), "[topology.etcd] check_interval must be at least 100ms");
    }

    void load_patroni_api(const toml::table& t, Config& c) {
        const toml::table* a = table(t, "patroni_api");
        if (!a) fail(t.get("source"), "[topology] source \"patroni_api\" needs a [topology.patroni_api] section (urls)");
        only_keys(*a, "topology.patroni_api");
        get_store_tls(*a, "[topology.patroni_api]", c.patroni_api.ca, c.patroni_api.cert, c.patroni_api.key);
        c.patroni_api.urls = get_urls(*a, "urls", "[topology.patroni_api]", false, 8008,
                                      "[\"http://pg1:8008\", \"http://pg2:8008\"]");
        c.patroni_api.interval = get_duration(*a, "interval", c.patroni_api.interval);
        c.patroni_api.request_timeout = get_duration(*a, "request_timeout", c.patroni_api.request_timeout);
        if (c.patroni_api.interval < std::chrono::milliseconds(50))
            fail(a->get("interval"), "[topology.patroni_api] interval must be at least 50ms");
        if (c.patroni_api.request_timeout < std::chrono::milliseconds(100))
            fail(a->get("request_timeout"), "[topology.patroni_api] request_timeout must be at least 100ms");
    }

    static constexpr int64_t kMaxPoolConnections = 100000;

    // Reads the keys `t` sets over `p` (which holds the defaults so far).
    void read_pool(const toml::table& t, const std::string& where, PoolConfig& p) {
        if (const toml::node* n = t.get("pool_mode")) {
            const std::string mode = get_string(t, "pool_mode", "", where);
            if (mode == "passthrough") p.mode = PoolMode::Passthrough;
            else if (mode == "session") p.mode = PoolMode::Session;
            else if (mode == "transaction") p.mode = PoolMode::Transaction;
            else
                fail(n, where + " pool_mode must be \"passthrough\", \"session\" or \"transaction\", got \"" + mode + "\"");
        }
        p.pool_size = static_cast<uint32_t>(get_int(t, "pool_size", p.pool_size, 1, kMaxPoolConnections, where));
        p.min_pool_size = static_cast<uint32_t>(get_int(t, "min_pool_size", p.min_pool_size, 0, kMaxPoolConnections, where));
        p.max_db_connections =
            static_cast<uint32_t>(get_int(t, "max_db_connections", p.max_db_connections, 0, kMaxPoolConnections, where));
        p.server_lifetime = get_duration(t, "server_lifetime", p.server_lifetime, where);
        p.server_idle_timeout = get_duration(t, "server_idle_timeout", p.server_idle_timeout, where);
        p.query_wait_timeout = get_duration(t, "query_wait_timeout", p.query_wait_timeout, where);
        p.server_reset_query = get_string(t, "server_reset_query", p.server_reset_query, where);
        p.auth_query = get_string(t, "auth_query", p.auth_query, where);
        p.auth_user = get_string(t, "auth_user", p.auth_user, where);
        p.auth_file = get_string(t, "auth_file", p.auth_file, where);
        // Kept as given, like every other file in the config: a relative path
        // is relative to pgrelay's working directory.
        if (!p.auth_file.empty() && t.get("auth_file")) {
            std::error_code ec;
            if (!std::ifstream(p.auth_file) || std::filesystem::is_directory(p.auth_file, ec))
                fail(t.get("auth_file"), where + " auth_file: cannot read '" + p.auth_file + "'");
        }
        if (t.get("admin_users")) {
            p.admin_users = get_string_list(t, "admin_users", where);
            for (size_t i = 0; i < p.admin_users.size(); ++i)
                if (p.admin_users[i].empty())
                    fail(t.get_as<toml::array>("admin_users")->get(i), where + " admin_users must not contain an empty name");
        }
    }

    // The settings one port ends up with must make sense together. Errors point
    // at the key in the most specific table that sets it, and name that table.
    void check_pool(const toml::table& base, const toml::table* port_table, const std::string& port_where,
                    PortRole role, const PoolConfig& p) {
        auto set_in_port = [&](std::string_view key) { return port_table && port_table->get(key); };
        auto node = [&](std::string_view key) -> const toml::node* {
            if (set_in_port(key)) return port_table->get(key);
            if (base.get(key)) return base.get(key);
            return port_table ? port_table : &base;
        };
        auto where = [&](std::string_view key) { return set_in_port(key) ? port_where : std::string("[pool]"); };
        const std::string port = std::string(" (") + to_string(role) + " port)";

        if (p.min_pool_size > p.pool_size) {
            const char* key = set_in_port("min_pool_size") || !set_in_port("pool_size") ? "min_pool_size" : "pool_size";
            fail(node(key), where(key) + " min_pool_size = " + std::to_string(p.min_pool_size) + " exceeds pool_size = " +
                                std::to_string(p.pool_size) + port);
        }
        if (p.pooled() && p.auth_file.empty() && p.auth_user.empty())
            fail(node("pool_mode"), where("pool_mode") + " pool_mode = \"" + to_string(p.mode) + "\"" + port +
                                        ": pgrelay authenticates clients in this mode and needs auth_file or auth_user + "
                                        "auth_query");
        if (!p.auth_user.empty() && p.auth_query.empty())
            fail(node("auth_query"), where("auth_query") + " auth_query must not be empty when auth_user is set" + port);
    }

    void load_pool(const toml::table& t, Config& c) {
        only_keys(t, "pool");
        PoolConfig base;
        read_pool(t, "[pool]", base);
        const toml::table* rw = table(t, "rw");
        const toml::table* ro = table(t, "ro");
        c.pool_rw = c.pool_ro = base;
        if (rw) {
            only_keys(*rw, "pool.rw");
            read_pool(*rw, "[pool.rw]", c.pool_rw);
        }
        if (ro) {
            only_keys(*ro, "pool.ro");
            read_pool(*ro, "[pool.ro]", c.pool_ro);
        }
        check_pool(t, rw, "[pool.rw]", PortRole::ReadWrite, c.pool_rw);
        check_pool(t, ro, "[pool.ro]", PortRole::ReadOnly, c.pool_ro);
    }

    void load_tls(const toml::table& t, Config& c) {
        only_keys(t, "tls");
        c.tls.cert = get_string(t, "cert", "");
        c.tls.key = get_string(t, "key", "");
        c.tls.client_ca = get_string(t, "client_ca", "");
        if (c.tls.cert.empty() != c.tls.key.empty())
            fail(t.get(c.tls.cert.empty() ? "key" : "cert"), "[tls] cert and key go together: set both or neither");
        const std::string mode = get_string(t, "client_tls", c.tls.enabled() ? "allow" : "disable");
        if (mode == "disable") c.tls.client = Config::ClientTls::Disable;
        else if (mode == "allow") c.tls.client = Config::ClientTls::Allow;
        else if (mode == "require") c.tls.client = Config::ClientTls::Require;
        else fail(t.get("client_tls"), "client_tls must be \"disable\", \"allow\" or \"require\", got \"" + mode + "\"");
        if (c.tls.client != Config::ClientTls::Disable && !c.tls.enabled())
            fail(t.get("client_tls"), "client_tls = \"" + mode + "\" needs [tls] cert and key");
        if (!c.tls.client_ca.empty() && c.tls.client == Config::ClientTls::Disable)
            fail(t.get("client_ca"), "[tls] client_ca needs TLS towards clients (cert, key, client_tls not \"disable\")");
        // A client certificate only travels inside TLS: requiring one requires TLS.
        if (!c.tls.client_ca.empty()) c.tls.client = Config::ClientTls::Require;
        const std::string minv = get_string(t, "min_version", "TLSv1.2");
        if (minv != "TLSv1.2" && minv != "TLSv1.3")
            fail(t.get("min_version"), "min_version must be \"TLSv1.2\" or \"TLSv1.3\", got \"" + minv + "\"");
        c.tls.tls13_only = minv == "TLSv1.3";
        c.tls.ciphers = get_string(t, "ciphers", c.tls.ciphers);
        if (c.tls.ciphers.empty()) fail(t.get("ciphers"), "[tls] ciphers must not be empty");
    }

    void load_backend_tls(const toml::table& t, Config& c) {
        const std::string mode = get_string(t, "backend_tls", "disable");
        if (mode == "disable") c.backend_tls = Config::BackendTls::Disable;
        else if (mode == "prefer") c.backend_tls = Config::BackendTls::Prefer;
        else if (mode == "require") c.backend_tls = Config::BackendTls::Require;
        else if (mode == "verify-ca") c.backend_tls = Config::BackendTls::VerifyCa;
        else if (mode == "verify-full") c.backend_tls = Config::BackendTls::VerifyFull;
        else
            fail(t.get("backend_tls"),
                 "backend_tls must be one of disable, prefer, require, verify-ca, verify-full; got \"" + mode + "\"");
        c.backend_tls_ca = get_string(t, "backend_tls_ca", "");
        c.backend_tls_sni = get_bool(t, "backend_tls_sni", true);
        if (c.backend_tls_ca.empty() &&
            (c.backend_tls == Config::BackendTls::VerifyCa || c.backend_tls == Config::BackendTls::VerifyFull))
            fail(t.get("backend_tls"), "backend_tls = \"" + mode + "\" needs backend_tls_ca (the CA that signed the servers' certificates)");
        if (!c.backend_tls_ca.empty() && c.backend_tls == Config::BackendTls::Disable)
            fail(t.get("backend_tls_ca"), "backend_tls_ca is set but backend_tls is \"disable\"");
    }

    void load_members(const toml::table& t, const toml::table* routing, Config& c) {
        const toml::node* n = t.get("members");
        if (!n) fail(&t, "[topology] source \"static\" needs [[topology.members]] entries");
        const toml::array* arr = n->as_array();
        if (!arr || arr->empty()) fail(n, "[[topology.members]] must be a non-empty array of tables");
        std::set<std::string> names;
        int primaries = 0;
        for (const auto& e : *arr) {
            const toml::table* m = e.as_table();
            if (!m) fail(&e, "each [[topology.members]] entry must be a table");
            only_keys(*m, "topology.members");
            topology::Member mem;
            mem.name = get_string(*m, "name", "");
            if (mem.name.empty()) fail(&e, "member without a name");
            if (!names.insert(mem.name).second) fail(m->get("name"), "duplicate member name '" + mem.name + "'");
            mem.host = get_string(*m, "host", "");
            if (mem.host.empty()) fail(&e, "member '" + mem.name + "' has no host");
            mem.port = static_cast<uint16_t>(get_int(*m, "port", 5432, 1, 65535));
            const std::string role = get_string(*m, "role", "");
            if (role == "primary" || role == "master") {
                mem.role = topology::Role::Primary;
                if (++primaries > 1)
                    fail(m->get("role"), "member '" + mem.name + "' is a second primary; at most one static member may have role \"primary\"");
            } else if (role == "replica") {
                mem.role = topology::Role::Replica;
            } else {
                fail(m->get("role") ? m->get("role") : &e,
                     "member '" + mem.name + "': role must be \"primary\" or \"replica\"");
            }
            mem.tags = get_string_list(*m, "tags");
            c.static_members.push_back(std::move(mem));
        }
        if (const toml::table* w = routing ? routing->get_as<toml::table>("weights") : nullptr)
            for (const auto& [name, v] : *w)
                if (!names.count(std::string(name.str())))
                    fail(&v, "[routing.weights] names unknown member '" + std::string(name.str()) + "'");
        if (const toml::array* x = routing ? routing->get_as<toml::array>("exclude") : nullptr)
            for (const auto& e : *x)
                if (!names.count(*e.value<std::string>()))
                    fail(&e, "[routing] exclude names unknown member '" + *e.value<std::string>() + "'");
        for (auto& m : c.static_members) {
            if (auto it = c.weights.find(m.name); it != c.weights.end()) m.weight = it->second;
            for (const auto& x : c.exclude) m.excluded = m.excluded || x == m.name;
        }
    }

private:
    std::string path_;
};

}  // namespace

Config parse_config(const std::string& text, const std::string& path) {
    toml::table root;
    try {
        root = toml::parse(text, path);
    } catch (const toml::parse_error& e) {
        throw ConfigError(path, static_cast<int>(e.source().begin.line), std::string(e.description()));
    }
    return Loader(path).load(root);
}

Config load_config(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw ConfigError(path, 0, "cannot open config file");
    std::stringstream ss;
    ss << in.rdbuf();
    return parse_config(ss.str(), path);
}

}  // namespace pgrelay
