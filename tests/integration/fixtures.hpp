// Black-box test fixtures: a real PostgreSQL 15 primary + replicas (via
// tests/fixtures/pgcluster.py), a real pgrelay process, raw sockets and libpq
// helpers. Everything runs on loopback, on free ports, in temp dirs.
#pragma once

#include <libpq-fe.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace pgrelay::test {

// A fresh directory under /tmp, removed with its contents on destruction.
class TempDir {
public:
    explicit TempDir(const std::string& prefix);
    ~TempDir();
    const std::string& path() const { return path_; }

private:
    std::string path_;
};

uint16_t free_port();
std::string slurp(const std::string& path);
// Runs a shell command; returns its exit status and fills `out` with stdout+stderr.
int run_command(const std::string& cmd, std::string* out = nullptr);
// The source tree (tests/clients/... live there).
std::string source_dir();

struct Node {
    std::string name;
    uint16_t port = 0;
    std::string role;  // "primary" or "replica"
};

// Flow: PgCluster::shared() starts one cluster per test process on first use
// (torn down at exit); stop()/start() take single nodes down and up.
class PgCluster {
public:
    static PgCluster& shared();
    ~PgCluster();
    const Node& primary() const { return nodes_.at(0); }
    const std::vector<Node>& nodes() const { return nodes_; }
    std::vector<Node> replicas() const;
    const Node& node(const std::string& name) const;
    void stop(const std::string& name, const std::string& mode = "fast");
    void start(const std::string& name);
    // Superuser conninfo straight to a node (no proxy).
    std::string direct(const Node& n) const;

private:
    PgCluster();
    std::unique_ptr<TempDir> dir_;
    std::vector<Node> nodes_;
};

// A DCS + Patroni cluster (tests/fixtures/patroni_cluster.py): pg0..pg3,
// pg3 tagged noloadbalance + nofailover (a backup node). The DCS is
// ZooKeeper, or etcd when PGRELAY_TEST_DCS=etcd: the same suite runs on both
// (ctest runs it twice). The etcd cluster has authentication on (pgrelay
// reads as a user with read access to /service/ only), a short token TTL, and
// a second, https listener that requires client certificates.
struct PatroniNode {
    std::string name;
    uint16_t pg_port = 0;
    uint16_t rest_port = 0;
    std::string role;   // leader | replica | sync_standby ...
    std::string state;  // from `list`
};

class PatroniCluster {
public:
    static PatroniCluster& shared();
    ~PatroniCluster();
    const std::string& dcs() const { return dcs_; }  // "zookeeper" or "etcd"
    bool on_etcd() const { return dcs_ == "etcd"; }
    const std::string& zk_hosts() const { return zk_hosts_; }
    const std::string& etcd_url() const { return etcd_url_; }
    const std::string& etcd_user() const { return etcd_user_; }
    const std::string& etcd_password() const { return etcd_password_; }
    // etcd's https listener (client certificates required) and the files to reach it.
    struct EtcdTls {
        std::string url, ca, cert, key;
    };
    const EtcdTls& etcd_tls() const { return etcd_tls_; }
    static constexpr int kEtcdTokenTtl = 3;  // seconds (etcd --auth-token-ttl)
    const std::string& scope() const { return scope_; }
    // The [topology] source line and the store's section for following this
    // cluster (etcd: its plain http listener); `store_extra` is added to
    // [topology.zookeeper] / [topology.etcd], `endpoints_before` (etcd) go
    // before the real endpoint.
    std::string source_toml(const std::string& store_extra = "",
                            const std::vector<std::string>& endpoints_before = {}) const;
    // The same, but reaching the DCS members at 127.0.0.1:`ports` (a
    // TcpForwarder in front of each) instead of the members themselves.
    std::string source_toml_via(const std::vector<uint16_t>& ports, const std::string& store_extra = "") const;
    // The DCS is an ensemble of three (ZooKeeper) or a cluster of three
    // (etcd): each member's client port, in the fixture's member order
    // (kill-dcs-member N / start-dcs-member N count from 1). etcd: the plain
    // http listeners; etcd_url() is the first member's.
    const std::vector<uint16_t>& dcs_ports() const { return dcs_ports_; }
    // What pgrelay's reroute log line measures from on this DCS.
    std::string leader_event() const { return on_etcd() ? "leader key event" : "leader znode event"; }
    // Runs a fixture command ("list", "switchover", "kill pg0", ...); throws on failure.
    std::string run(const std::string& args, int timeout_s = 180) const;
    std::vector<PatroniNode> list() const;  // current view (patroni REST API)
    std::string leader() const;
    const PatroniNode& node(const std::string& name) const;
    const std::vector<PatroniNode>& nodes() const { return nodes_; }
    std::string direct(const std::string& name) const;  // superuser conninfo to a node

private:
    PatroniCluster();
    std::string source_toml_for(const std::vector<uint16_t>& ports, const std::string& store_extra,
                                const std::vector<std::string>& endpoints_before) const;
    std::unique_ptr<TempDir> dir_;
    std::string dcs_, zk_hosts_, etcd_url_, etcd_user_, etcd_password_, scope_;
    std::vector<uint16_t> dcs_ports_;
    EtcdTls etcd_tls_;
    std::vector<PatroniNode> nodes_;
};

// A pgrelay process with its own config (ports chosen here).
struct PgrelayOptions {
    bool ro_fallback_to_primary = true;
    std::string startup_timeout = "3s";
    std::string connect_timeout = "2s";
    std::string extra_server;  // extra lines for [server]
    std::string extra_topology;  // extra lines for [topology] (e.g. backend_tls), static cluster only
    // Patroni cluster only: the [topology] source and store section, instead of
    // PatroniCluster::source_toml() (e.g. source = "patroni_api").
    std::string source_toml;
    std::string extra_sections;  // whole extra tables (e.g. "[tls]\n...") at the end of the file
    std::string member_host = "127.0.0.1";  // how the static topology names the nodes' host
    std::string static_members;  // [[topology.members]] tables instead of the cluster's nodes
    unsigned threads = 2;
    // Where the rw, ro and admin listeners bind; ports 0 = free ones. Several
    // instances on 127.0.0.1, .2 and .3 share the same ports.
    std::string listen_host = "127.0.0.1";
    uint16_t rw_port = 0, ro_port = 0, admin_port = 0;
};

class Pgrelay {
public:
    Pgrelay(const PgCluster& cluster, PgrelayOptions opts = {});
    // Following a Patroni cluster through its DCS (or opts.source_toml);
    // `routing` is extra TOML for the [routing] section.
    Pgrelay(const PatroniCluster& cluster, const std::string& routing, PgrelayOptions opts = {});
    ~Pgrelay();
    uint16_t rw_port() const { return rw_; }
    uint16_t ro_port() const { return ro_; }
    uint16_t admin_port() const { return admin_; }
    const std::string& host() const { return opts_.listen_host; }
    // GET on the admin listener: (HTTP status, body); status 0 if unreachable.
    std::pair<int, std::string> http_get(const std::string& path) const;
    // Rewrites the config's [routing] extra lines and sends SIGHUP.
    void reload(const std::string& extra_routing);
    void signal(int sig);
    // Waits (bounded) for the process to exit; returns its exit status or -1.
    int wait_exit(std::chrono::milliseconds timeout);
    std::string conninfo(uint16_t port, const std::string& user, const std::string& password) const;
    std::string log() const;
    bool running();
    int open_fds() const;
    int pid() const { return pid_; }
    // A sample's value from /metrics (first series whose name and labels
    // start with `series`), or -1 when absent.
    double metric(const std::string& series) const;

private:
    void launch(const std::string& config_body, const PgrelayOptions& opts);
    void stop();  // SIGTERM, then SIGKILL after 5 s
    // The whole config file (server, ports, then `body`); returns its path.
    std::string write_config(const std::string& body) const;
    std::unique_ptr<TempDir> dir_;
    uint16_t rw_ = 0, ro_ = 0, admin_ = 0;
    int pid_ = -1;
    std::string body_;  // config after [listen], to rewrite on reload
    PgrelayOptions opts_;
};

// Certificates made with the openssl CLI (EC P-256, valid two days).
// Flow: TestCa ca(dir, "name"); ca.issue("server", "CN", "IP:127.0.0.1,DNS:localhost")
// writes dir/server.crt and dir/server.key signed by the CA (dir/name.crt).
class TestCa {
public:
    TestCa(std::string dir, std::string name);
    const std::string& cert() const { return cert_; }  // the CA's certificate (PEM path)
    // Issues a leaf certificate; `san` is an openssl subjectAltName value, or
    // empty for none. Returns the certificate's path (the key is beside it).
    std::string issue(const std::string& file_stem, const std::string& cn, const std::string& san) const;
    std::string key_of(const std::string& file_stem) const { return dir_ + "/" + file_stem + ".key"; }

private:
    std::string dir_, name_, cert_, key_;
};

// A network namespace of the test's own, joined to the root namespace by a
// veth pair: the root side is 10.254.N.1/30, the namespace side 10.254.N.2/30
// (N unused so far on this machine). A TcpForwarder can listen inside it, so
// that pgrelay reaches a server through a real link whose packets can be
// dropped: blackhole() makes the namespace answer nothing (a blackhole route
// for the root side there), so connects from the root side hang and data
// sent is never acknowledged, as on a partitioned network: keepalive and
// TCP_USER_TIMEOUT are what notice it. Removed (with the veth pair) on
// destruction. Traffic never leaves the machine.
class NetnsLink {
public:
    NetnsLink();
    ~NetnsLink();
    NetnsLink(const NetnsLink&) = delete;
    NetnsLink& operator=(const NetnsLink&) = delete;
    const std::string& name() const { return name_; }
    const std::string& inner_address() const { return inner_; }  // 10.254.N.2
    void blackhole();
    void heal();
    // Runs `f` on a thread inside the namespace (sockets it creates belong there).
    void run_inside(const std::function<void()>& f) const;

private:
    std::string name_, outer_, inner_, veth_;
    bool blackholed_ = false;
};

// A fault-injecting TCP forwarder on loopback, in the spirit of Toxiproxy,
// between a client (pgrelay) and a server (ZooKeeper, etcd, PostgreSQL), for
// the partial faults a process kill cannot make. Faults, until heal():
//  - cut(): every connection is reset, new ones are reset on accept;
//  - blackhole(direction): nothing more is delivered that way (up: client ->
//    server, down: server -> client, or both), so the peers see silence.
//    What was sent is kept and delivered at heal(), as TCP retransmission
//    delivers it once a real path heals. With both directions held, new
//    connections are accepted and stalled (a SYN that reached the far side's
//    backlog, then nothing). A client closing a held connection is noticed,
//    and that connection no longer counts in connections();
//  - stall_new(): open connections flow; new ones are accepted but get no
//    upstream (and nothing is read from them) until heal().
// Its own thread, non-blocking sockets; at most a few hundred connections.
class TcpForwarder {
public:
    enum class Direction { Up, Down, Both };
    // Listens on 127.0.0.1, or inside `link` on its inner address; the
    // upstream is 127.0.0.1:upstream_port in the root namespace.
    explicit TcpForwarder(uint16_t upstream_port, const NetnsLink* link = nullptr);
    ~TcpForwarder();
    uint16_t port() const { return port_; }
    const std::string& host() const { return host_; }
    void cut();
    void blackhole(Direction d = Direction::Both);
    void stall_new();
    void heal();
    int connections() const;    // open client connections
    uint64_t accepted() const;  // connections accepted so far

private:
    struct State;
    std::unique_ptr<State> st_;
    uint16_t port_ = 0;
    std::string host_ = "127.0.0.1";
};

// libpq connection with the SQLSTATE of a failed connect kept apart.
struct PgConn {
    PGconn* conn = nullptr;
    std::string error;     // PQerrorMessage on failure
    std::string sqlstate;  // from the FATAL/ERROR line, when the server sent one
    PgConn() = default;
    PgConn(PgConn&& o) noexcept : conn(o.conn), error(std::move(o.error)), sqlstate(std::move(o.sqlstate)) { o.conn = nullptr; }
    PgConn& operator=(PgConn&& o) noexcept {
        std::swap(conn, o.conn);
        error = std::move(o.error);
        sqlstate = std::move(o.sqlstate);
        return *this;
    }
    ~PgConn();
    bool ok() const { return conn && PQstatus(conn) == CONNECTION_OK; }
};
PgConn pg_connect(const std::string& conninfo);

// Single-value query; throws std::runtime_error with SQLSTATE on failure.
std::string query_value(PGconn* c, const std::string& sql);
void exec(PGconn* c, const std::string& sql);

// Raw TCP client for hand-made protocol bytes.
class RawClient {
public:
    explicit RawClient(uint16_t port, const std::string& host = "127.0.0.1");
    ~RawClient();
    bool connected() const { return fd_ >= 0; }
    bool send(const std::string& bytes);
    // Reads until EOF or timeout; returns all bytes read.
    std::string read_all(std::chrono::milliseconds timeout);
    // Reads until `done(bytes so far)` holds, EOF or timeout; returns the bytes.
    std::string read_until(const std::function<bool(const std::string&)>& done, std::chrono::milliseconds timeout);
    void close();

private:
    int fd_ = -1;
};

// Decodes the first ErrorResponse in `bytes`; nullopt if there is none.
struct ErrorInfo {
    std::string severity, sqlstate, message;
};
std::optional<ErrorInfo> first_error(const std::string& bytes);

// Polls `pred` every 50 ms until it returns true or `timeout` passes.
bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout);

// A StartupMessage; `version` is major << 16 | minor (196608: 3.0).
std::string startup_message(const std::map<std::string, std::string>& params, uint32_t version = 196608);

// Backend messages (type, body) in `bytes`, up to the last complete one.
std::vector<std::pair<char, std::string>> frames_of(const std::string& bytes);

// A protocol-level session logged in with md5 by hand, to get at what libpq
// hides: the BackendKeyData handed to the client.
struct RawSession {
    std::unique_ptr<RawClient> client;
    int32_t pid = 0, secret = 0;
    std::string error;  // non-empty when the login failed
};
RawSession md5_login(uint16_t port, const std::string& user, const std::string& password);
// A login by hand with any method (SCRAM, md5, cleartext) and any protocol
// version: the cancel key as the client got it (4 bytes in 3.0, longer in
// 3.2), and whether a NegotiateProtocolVersion came first (its version).
struct RawLogin {
    std::unique_ptr<RawClient> client;
    int32_t pid = 0;
    std::string secret;
    uint32_t negotiated = 0;  // the NegotiateProtocolVersion's version, 0 if none came
    std::string error;        // non-empty when the login failed
};
RawLogin raw_login(const std::string& host, uint16_t port, const std::string& user, const std::string& password,
                   uint32_t version = 196608);
// A CancelRequest with a secret of any length (protocol 3.2 allows 4 to 256 bytes).
std::string cancel_request(int32_t pid, const std::string& secret);
// Starts pg_sleep(30) on `who`, then sends `cancel` on a new connection to
// host:port: the first ErrorResponse `who` got up to its ReadyForQuery
// (nullopt if none came within 20 s); `answer` gets what the canceller's
// connection received before it closed (from PostgreSQL: nothing).
std::optional<ErrorInfo> cancel_running_query(RawLogin& who, const std::string& host, uint16_t port,
                                              const std::string& cancel, std::string* answer = nullptr);
std::string cancel_request(int32_t pid, int32_t secret);
// An 8-byte startup-phase request: length word, then code (SSLRequest, ...).
std::string startup_request(uint32_t len, uint32_t code);
std::string md5_hex(const std::string& in);
std::string query_message(const std::string& sql);

}  // namespace pgrelay::test
