// pgrelay's configuration, loaded from a TOML file (conf/pgrelay.toml documents
// every key). Loading validates everything up front: a bad file yields a
// ConfigError naming the file, the line and what is wrong.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/log.hpp"
#include "topology/peers.hpp"
#include "topology/routing.hpp"
#include "topology/topology.hpp"

namespace pgrelay {

struct ConfigError : std::runtime_error {
    ConfigError(std::string file, int line, const std::string& what)
        : std::runtime_error(what), file(std::move(file)), line(line) {}
    std::string file;
    int line;  // 0 when unknown
    std::string describe() const;  // "FILE:LINE: message"
};

enum class PortRole { ReadWrite, ReadOnly };
const char* to_string(PortRole r) noexcept;  // "rw" / "ro"

enum class PoolMode { Passthrough, Session, Transaction };
const char* to_string(PoolMode m) noexcept;  // "passthrough" / "session" / "transaction"

// [pool] (defaults for both ports) and [pool.rw] / [pool.ro] (overrides for one port).
struct PoolConfig {
    PoolMode mode = PoolMode::Passthrough;       // key: pool_mode
    uint32_t pool_size = 20;                     // server connections per (member, database, user)
    uint32_t min_pool_size = 0;                  // kept open per pool once it exists
    uint32_t max_db_connections = 0;             // per (member, database), across users; 0 = unlimited
    std::chrono::milliseconds server_lifetime{3600000};      // close a server connection this old once idle; 0 = never
    std::chrono::milliseconds server_idle_timeout{600000};   // close a server idle this long; 0 = never
    std::chrono::milliseconds query_wait_timeout{120000};    // a client waiting for a server gets an error after this; 0 = wait forever
    std::string server_reset_query = "DISCARD ALL";          // session mode, when a client leaves; "" = none
    std::string auth_file;                                   // PgBouncer userlist.txt format
    std::string auth_query = "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = $1 AND (rolvaliduntil IS NULL OR rolvaliduntil > now())";
    std::string auth_user;                                   // runs auth_query; its own secret must be in auth_file
    std::vector<std::string> admin_users;                    // may use the admin console (virtual database "pgrelay")
    bool pooled() const noexcept { return mode != PoolMode::Passthrough; }
};

struct ListenConfig {
    PortRole role = PortRole::ReadWrite;
    bool enabled = false;
    std::string host;
    uint16_t port = 0;
};

struct Config {
    std::string path;
    unsigned threads = 0;  // 0 = one per core
    log::Level log_level = log::Level::Info;
    bool log_json = false;

    ListenConfig rw{PortRole::ReadWrite, false, {}, 0};
    ListenConfig ro{PortRole::ReadOnly, false, {}, 0};
    ListenConfig admin{PortRole::ReadWrite, true, "127.0.0.1", 9187};  // role unused
    // SIGTERM: stop accepting, let sessions finish this long, then end the
    // rest with 57P01.
    std::chrono::milliseconds shutdown_grace{30000};

    std::chrono::milliseconds connect_timeout{5000};
    std::chrono::milliseconds startup_timeout{10000};
    uint32_t max_frame_size = 1u << 30;
    uint32_t max_client_connections = 0;  // per port; 0 = unlimited
    // A client idle this long (no request outstanding, outside any
    // transaction) gets 57P05 and is closed. 0 = never.
    std::chrono::milliseconds idle_client_timeout{0};
    // TCP keepalive on client and backend sockets (TCP_KEEPIDLE/INTVL/CNT):
    // a peer that vanished is noticed after idle + interval * count, also
    // with data in flight (TCP_USER_TIMEOUT is set to the same).
    std::chrono::seconds keepalive_idle{60};
    std::chrono::seconds keepalive_interval{10};
    unsigned keepalive_count = 6;

    // Client-facing TLS ([tls]). Enabled when `cert` is set.
    enum class ClientTls { Disable, Allow, Require };
    struct Tls {
        std::string cert, key;  // PEM files: certificate chain, private key
        std::string client_ca;  // PEM CA file: when set, every client must present a certificate it signed
        ClientTls client = ClientTls::Disable;  // client_tls; "allow" by default once cert is set
        bool tls13_only = false;  // min_version = "TLSv1.3" (default TLSv1.2)
        std::string ciphers = "HIGH:!aNULL:!MD5:!3DES:!RC4";  // TLS 1.2 cipher list (OpenSSL syntax)
        bool enabled() const noexcept { return !cert.empty(); }
    } tls;

    // pgrelay -> backend TLS ([topology] backend_tls*), libpq's sslmode semantics.
    enum class BackendTls { Disable, Prefer, Require, VerifyCa, VerifyFull };
    BackendTls backend_tls = BackendTls::Disable;
    std::string backend_tls_ca;   // PEM CA file to verify backends with
    bool backend_tls_sni = true;  // send the member's host name as SNI (not for IP addresses), as libpq

    // Connection pooling per port ([pool], [pool.rw], [pool.ro]).
    PoolConfig pool_rw, pool_ro;
    const PoolConfig& pool(PortRole r) const noexcept { return r == PortRole::ReadWrite ? pool_rw : pool_ro; }

    topology::RoutingOptions routing;
    // How long a new connection waits for a primary (rw) or for a first
    // topology (both ports) before it gets 57P03. 0 = refuse at once.
    std::chrono::milliseconds hold_timeout{30000};
    // Patroni's failover key announces a switchover: new rw connections and
    // transactions wait (within hold_timeout) for the leader to move, at most
    // this long after the key appeared; then they go to the old primary
    // (Patroni may refuse the switchover). 0 = do not wait for it.
    std::chrono::milliseconds switchover_hold{15000};
    bool allow_standby_leader = false;
    std::map<std::string, uint32_t> weights;  // member name -> weight
    std::vector<std::string> exclude;         // member names never routed to

    std::string topology_source = "static";  // "static", "zookeeper", "etcd" or "patroni_api"
    std::vector<topology::Member> static_members;
    std::chrono::milliseconds health_check_interval{1000};
    std::chrono::milliseconds health_check_timeout{1000};

    struct ZooKeeper {
        std::string hosts;                 // "h1:2181,h2:2181[/chroot]"
        std::string namespace_ = "service";  // Patroni's namespace
        std::string scope;                 // Patroni's scope (cluster name)
        std::chrono::milliseconds session_timeout{10000};
        std::string base() const { return "/" + namespace_ + "/" + scope; }
    } zookeeper;

    struct Etcd {
        std::vector<std::string> endpoints;  // "http://h:2379", "https://h:2379" or "h:2379"
        std::string namespace_ = "service";
        std::string scope;
        std::string username;
        std::string password;       // from `password` or read from `password_file`; never logged
        std::string password_file;
        std::string ca, cert, key;  // https: CA to verify etcd with; client certificate and key
        std::chrono::milliseconds request_timeout{2000};
        std::chrono::milliseconds check_interval{1000};
        std::string base() const { return "/" + namespace_ + "/" + scope; }
    } etcd;

    struct PatroniApi {
        std::vector<std::string> urls;  // the members' Patroni REST APIs: "http://h:8008"
        std::string ca, cert, key;
        std::chrono::milliseconds interval{250};
        std::chrono::milliseconds request_timeout{1000};
    } patroni_api;

    // [topology.rest_fallback] (zookeeper, etcd): while the DCS is
    // unreachable or behind, follow the members' Patroni REST APIs
    // (GET /primary), as HAProxy's checks do.
    struct RestFallback {
        bool enabled = true;
        std::chrono::milliseconds interval{250};
        std::chrono::milliseconds request_timeout{500};
        std::string ca, cert, key;  // https api_urls: CA to verify Patroni with, optional client certificate
    } rest_fallback;

    // [topology.member_addresses] (Patroni sources): where pgrelay reaches a
    // member, by name, instead of the host:port in its conn_url (NAT, a
    // member advertising an address pgrelay cannot use). Sessions and probes
    // use it.
    std::map<std::string, std::string> member_addresses;

    struct Probe {
        std::string user = "postgres";
        std::string password;
        std::string dbname = "postgres";
        std::chrono::milliseconds interval{1000};
        std::chrono::milliseconds connect_timeout{2000};
    } probe;

    // [instance]: this pgrelay among the instances behind one name.
    struct Instance {
        std::string id;            // default: "<host name>:<rw listen address>"
        std::string peer_address;  // where the other instances reach this one: default the rw listen address
        std::vector<topology::InstanceInfo> peers;  // static peers ("id@host:port"), without a DCS
        bool register_ = true;      // register in the DCS followed (zookeeper, etcd)
        std::string registry_path;  // default "/pgrelay/<scope>/instances"
        std::chrono::milliseconds ttl{10000};  // etcd lease TTL (ZooKeeper: its session timeout)
    } instance;

    unsigned effective_threads() const noexcept;
};

const char* to_string(Config::BackendTls m) noexcept;  // "disable" ... "verify-full"

// One key the parser accepts: in `table` ("" = the top level, "server",
// "topology.etcd", "topology.members" for [[topology.members]] entries; [pool.rw]
// and [pool.ro] take [pool]'s keys), and whether a change needs a restart
// (true) or SIGHUP applies it. A key naming a subtable is listed too.
struct ConfigKey {
    std::string_view table;
    std::string_view key;
    bool restart;
};
// Every key, in the order conf/pgrelay.toml documents them.
std::span<const ConfigKey> config_keys() noexcept;

// Throws ConfigError.
Config load_config(const std::string& path);
Config parse_config(const std::string& toml_text, const std::string& path_for_errors);

// "250ms", "5s", "2m" or a plain number of seconds; false on anything else.
bool parse_duration(const std::string& s, std::chrono::milliseconds& out);

}  // namespace pgrelay
