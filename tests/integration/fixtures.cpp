// Test fixtures (fixtures.hpp).
#include "fixtures.hpp"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include <openssl/evp.h>

#include "protocol/frames.hpp"
#include "protocol/login.hpp"

#ifndef PGRELAY_SOURCE_DIR
#error "PGRELAY_SOURCE_DIR must be defined"
#endif
#ifndef PGRELAY_BINARY
#error "PGRELAY_BINARY must be defined"
#endif

namespace pgrelay::test {

using namespace std::chrono_literals;

TempDir::TempDir(const std::string& prefix) {
    std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
    chmod(path_.c_str(), 0755);
}

TempDir::~TempDir() {
    if (!path_.empty()) run_command("rm -rf '" + path_ + "'");
}

uint16_t free_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw std::runtime_error("bind failed");
    socklen_t len = sizeof a;
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(fd);
    return ntohs(a.sin_port);
}

std::string slurp(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

int run_command(const std::string& cmd, std::string* out) {
    FILE* p = popen((cmd + " 2>&1").c_str(), "r");
    if (!p) return -1;
    char buf[4096];
    std::string acc;
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) acc.append(buf, n);
    const int st = pclose(p);
    if (out) *out = acc;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

std::string source_dir() { return PGRELAY_SOURCE_DIR; }

static std::string fixture_script() { return std::string(PGRELAY_SOURCE_DIR) + "/tests/fixtures/pgcluster.py"; }

PgCluster& PgCluster::shared() {
    static PgCluster cluster;
    return cluster;
}

PgCluster::PgCluster() : dir_(std::make_unique<TempDir>("pgrelay-cluster")) {
    std::string out;
    const std::string clusterdir = dir_->path() + "/c";
    if (run_command("python3 " + fixture_script() + " up --dir " + clusterdir, &out) != 0)
        throw std::runtime_error("pgcluster up failed:\n" + out);
    std::istringstream in(out);
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream ls(line);
        std::string word;
        Node n;
        if (ls >> word && word == "node" && ls >> n.name >> n.port >> n.role) nodes_.push_back(n);
    }
    if (nodes_.size() != 3 || nodes_[0].role != "primary") throw std::runtime_error("unexpected pgcluster output:\n" + out);
}

PgCluster::~PgCluster() {
    run_command("python3 " + fixture_script() + " down --dir " + dir_->path() + "/c");
}

std::vector<Node> PgCluster::replicas() const { return {nodes_.begin() + 1, nodes_.end()}; }

const Node& PgCluster::node(const std::string& name) const {
    for (const auto& n : nodes_)
        if (n.name == name) return n;
    throw std::runtime_error("no node " + name);
}

void PgCluster::stop(const std::string& name, const std::string& mode) {
    std::string out;
    if (run_command("python3 " + fixture_script() + " stop --dir " + dir_->path() + "/c " + name + " --mode " + mode, &out) != 0)
        throw std::runtime_error("pgcluster stop failed: " + out);
}

void PgCluster::start(const std::string& name) {
    std::string out;
    if (run_command("python3 " + fixture_script() + " start --dir " + dir_->path() + "/c " + name, &out) != 0)
        throw std::runtime_error("pgcluster start failed: " + out);
}

static std::string patroni_script() { return std::string(PGRELAY_SOURCE_DIR) + "/tests/fixtures/patroni_cluster.py"; }

PatroniCluster& PatroniCluster::shared() {
    static PatroniCluster cluster;
    return cluster;
}

PatroniCluster::PatroniCluster() : dir_(std::make_unique<TempDir>("pgrelay-patroni")) {
    const char* env = std::getenv("PGRELAY_TEST_DCS");
    dcs_ = env && *env ? env : "zookeeper";
    if (dcs_ != "zookeeper" && dcs_ != "etcd") throw std::runtime_error("PGRELAY_TEST_DCS must be zookeeper or etcd");
    const std::string dcs_args =
        dcs_ == "etcd" ? " --dcs etcd --etcd-auth --etcd-tls --etcd-token-ttl " + std::to_string(kEtcdTokenTtl) : "";
    const std::string out = run("up --nodes 4 --dcs-members 3 --tags pg3=noloadbalance,nofailover" + dcs_args, 600);
    std::istringstream in(out);
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream ls(line);
        std::string word;
        ls >> word;
        if (word == "zookeeper") ls >> zk_hosts_;
        else if (word == "etcd") ls >> etcd_url_;
        else if (word == "etcd_auth") ls >> etcd_user_ >> etcd_password_;
        else if (word == "dcs_members") {
            std::string list, addr;
            ls >> list;
            std::istringstream ms(list);
            while (std::getline(ms, addr, ','))
                dcs_ports_.push_back(static_cast<uint16_t>(std::stoi(addr.substr(addr.rfind(':') + 1))));
        }
        else if (word == "etcd_tls") ls >> etcd_tls_.url >> etcd_tls_.ca >> etcd_tls_.cert >> etcd_tls_.key;
        else if (word == "scope") ls >> scope_;
        else if (word == "node") {
            PatroniNode n;
            ls >> n.name >> n.pg_port >> n.rest_port >> n.role;
            nodes_.push_back(n);
        }
    }
    const bool store_known =
        dcs_ == "etcd" ? !etcd_url_.empty() && !etcd_user_.empty() && !etcd_tls_.key.empty() : !zk_hosts_.empty();
    if (!store_known || scope_.empty() || nodes_.size() != 4 || dcs_ports_.size() != 3)
        throw std::runtime_error("unexpected patroni_cluster output:\n" + out);
}

std::string PatroniCluster::source_toml(const std::string& store_extra,
                                        const std::vector<std::string>& endpoints_before) const {
    return source_toml_for(dcs_ports_, store_extra, endpoints_before);
}

std::string PatroniCluster::source_toml_via(const std::vector<uint16_t>& ports, const std::string& store_extra) const {
    return source_toml_for(ports, store_extra, {});
}

std::string PatroniCluster::source_toml_for(const std::vector<uint16_t>& ports, const std::string& store_extra,
                                            const std::vector<std::string>& endpoints_before) const {
    std::ostringstream t;
    if (on_etcd()) {
        t << "source = \"etcd\"\n[topology.etcd]\nendpoints = [";
        for (const auto& e : endpoints_before) t << "\"" << e << "\", ";
        for (size_t i = 0; i < ports.size(); ++i) t << (i ? ", " : "") << "\"http://127.0.0.1:" << ports[i] << "\"";
        t << "]\nnamespace = \"service\"\nscope = \"" << scope_ << "\"\nusername = \"" << etcd_user_
          << "\"\npassword = \"" << etcd_password_ << "\"\n";
    } else {
        t << "source = \"zookeeper\"\n[topology.zookeeper]\nhosts = \"";
        for (size_t i = 0; i < ports.size(); ++i) t << (i ? "," : "") << "127.0.0.1:" << ports[i];
        t << "\"\nnamespace = \"service\"\nscope = \"" << scope_ << "\"\nsession_timeout = \"10s\"\n";
    }
    t << store_extra << "\n";
    return t.str();
}

PatroniCluster::~PatroniCluster() { run_command("python3 " + patroni_script() + " down --dir " + dir_->path() + "/c"); }

std::string PatroniCluster::run(const std::string& args, int timeout_s) const {
    std::string out;
    const std::string cmd = "timeout " + std::to_string(timeout_s) + " python3 " + patroni_script() + " " +
                            args.substr(0, args.find(' ')) + " --dir " + dir_->path() + "/c" +
                            (args.find(' ') == std::string::npos ? "" : args.substr(args.find(' ')));
    if (run_command(cmd, &out) != 0) throw std::runtime_error("patroni_cluster " + args + " failed:\n" + out);
    return out;
}

std::vector<PatroniNode> PatroniCluster::list() const {
    std::vector<PatroniNode> out;
    std::istringstream in(run("list"));
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream ls(line);
        std::string word;
        PatroniNode n;
        if (ls >> word && word == "node" && ls >> n.name >> n.pg_port >> n.rest_port >> n.role >> n.state) out.push_back(n);
    }
    return out;
}

std::string PatroniCluster::leader() const {
    // The member asked may have a view without a leader for a moment (its
    // DCS connection moving between ensemble members): wait up to 15 s.
    std::string l = run("leader --wait 15");
    while (!l.empty() && (l.back() == '\n' || l.back() == ' ')) l.pop_back();
    return l;
}

const PatroniNode& PatroniCluster::node(const std::string& name) const {
    for (const auto& n : nodes_)
        if (n.name == name) return n;
    throw std::runtime_error("no node " + name);
}

std::string PatroniCluster::direct(const std::string& name) const {
    return "host=127.0.0.1 port=" + std::to_string(node(name).pg_port) +
           " user=postgres password=postgres dbname=postgres connect_timeout=5";
}

std::string PgCluster::direct(const Node& n) const {
    return "host=127.0.0.1 port=" + std::to_string(n.port) + " user=postgres password=postgres dbname=postgres connect_timeout=5";
}

Pgrelay::Pgrelay(const PgCluster& cluster, PgrelayOptions opts) : dir_(std::make_unique<TempDir>("pgrelay-proxy")) {
    std::ostringstream cfg;
    cfg << "[routing]\nro_fallback_to_primary = " << (opts.ro_fallback_to_primary ? "true" : "false") << "\n"
        << "[topology]\nsource = \"static\"\nhealth_check_interval = \"200ms\"\nhealth_check_timeout = \"500ms\"\n"
        << opts.extra_topology << "\n";
    if (!opts.static_members.empty()) cfg << opts.static_members;
    else
        for (const auto& n : cluster.nodes())
            cfg << "[[topology.members]]\nname = \"" << n.name << "\"\nhost = \"" << opts.member_host << "\"\nport = "
                << n.port << "\nrole = \"" << n.role << "\"\n";
    launch(cfg.str(), opts);
}

Pgrelay::Pgrelay(const PatroniCluster& cluster, const std::string& routing, PgrelayOptions opts)
    : dir_(std::make_unique<TempDir>("pgrelay-proxy")) {
    std::ostringstream cfg;
    cfg << "[routing]\nro_fallback_to_primary = " << (opts.ro_fallback_to_primary ? "true" : "false") << "\n"
        << routing << "\n"
        << "[topology]\n"
        << (opts.source_toml.empty() ? cluster.source_toml() : opts.source_toml)
        << "[topology.probe]\nuser = \"pgrelay\"\npassword = \"pgrelay\"\ndbname = \"postgres\"\ninterval = \"500ms\"\n";
    launch(cfg.str(), opts);
}

double Pgrelay::metric(const std::string& series) const {
    const auto [status, body] = http_get("/metrics");
    if (status != 200) return -1;
    std::istringstream in(body);
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty() || line[0] == '#' || line.rfind(series, 0) != 0) continue;
        const size_t sp = line.rfind(' ');
        if (sp == std::string::npos) continue;
        return std::stod(line.substr(sp + 1));
    }
    return -1;
}

void Pgrelay::launch(const std::string& body, const PgrelayOptions& opts) {
    rw_ = opts.rw_port ? opts.rw_port : free_port();
    if (opts.ro_port) ro_ = opts.ro_port;
    else do ro_ = free_port(); while (ro_ == rw_);
    if (opts.admin_port) admin_ = opts.admin_port;
    else do admin_ = free_port(); while (admin_ == rw_ || admin_ == ro_);
    body_ = body;
    opts_ = opts;
    const std::string cfg_path = write_config(body);
    const std::string log_path = dir_->path() + "/pgrelay.log";

    pid_ = fork();
    if (pid_ == 0) {
        const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        execl(PGRELAY_BINARY, PGRELAY_BINARY, "--config", cfg_path.c_str(), nullptr);
        _exit(127);
    }
    const bool up = eventually(
        [&] {
            RawClient a(rw_, opts_.listen_host), b(ro_, opts_.listen_host);
            return a.connected() && b.connected();
        },
        10s);
    if (!up) throw std::runtime_error("pgrelay did not start listening:\n" + log());
}

Pgrelay::~Pgrelay() {
    stop();
    // .ci/sanitize.sh reads the logs of every pgrelay run (UBSan reports land
    // there): keep a copy before the temporary directory goes.
    if (const char* keep = std::getenv("PGRELAY_TEST_LOG_DIR"); keep && *keep) {
        const std::string name = dir_->path().substr(dir_->path().rfind('/') + 1);
        std::ofstream(std::string(keep) + "/" + name + ".log") << log();
    }
}

void Pgrelay::stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    for (int i = 0; i < 100; ++i) {
        if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
            pid_ = -1;
            return;
        }
        std::this_thread::sleep_for(50ms);
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
}

std::string Pgrelay::write_config(const std::string& body) const {
    std::ostringstream cfg;
    cfg << "[server]\nthreads = " << opts_.threads << "\nlog_level = \"debug\"\n"
        << "connect_timeout = \"" << opts_.connect_timeout << "\"\nstartup_timeout = \"" << opts_.startup_timeout
        << "\"\n"
        << opts_.extra_server << "\n"
        << "[listen]\nrw = \"" << opts_.listen_host << ":" << rw_ << "\"\nro = \"" << opts_.listen_host << ":" << ro_
        << "\"\n"
        << "[admin]\nlisten = \"" << opts_.listen_host << ":" << admin_ << "\"\n"
        << body << "\n"
        << opts_.extra_sections << "\n";
    const std::string path = dir_->path() + "/pgrelay.toml";
    std::ofstream(path) << cfg.str();
    return path;
}

void Pgrelay::signal(int sig) {
    if (pid_ > 0) kill(pid_, sig);
}

int Pgrelay::wait_exit(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (pid_ > 0 && std::chrono::steady_clock::now() < deadline) {
        int st = 0;
        if (waitpid(pid_, &st, WNOHANG) == pid_) {
            pid_ = -1;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        std::this_thread::sleep_for(20ms);
    }
    return -1;
}

void Pgrelay::reload(const std::string& extra_routing) {
    std::string body = body_;
    const auto at = body.find("[routing]\n");
    if (at != std::string::npos) body.insert(at + 10, extra_routing + "\n");
    write_config(body);
    signal(SIGHUP);
}

std::pair<int, std::string> Pgrelay::http_get(const std::string& path) const {
    RawClient c(admin_, opts_.listen_host);
    if (!c.connected()) return {0, ""};
    c.send("GET " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    const std::string resp = c.read_all(5s);
    int status = 0;
    if (resp.rfind("HTTP/1.1 ", 0) == 0) status = std::atoi(resp.c_str() + 9);
    const auto body = resp.find("\r\n\r\n");
    return {status, body == std::string::npos ? "" : resp.substr(body + 4)};
}

bool Pgrelay::running() { return pid_ > 0 && waitpid(pid_, nullptr, WNOHANG) == 0; }

int Pgrelay::open_fds() const {
    int n = 0;
    DIR* d = opendir(("/proc/" + std::to_string(pid_) + "/fd").c_str());
    if (!d) return -1;
    while (dirent* e = readdir(d))
        if (e->d_name[0] != '.') ++n;
    closedir(d);
    return n;
}

TestCa::TestCa(std::string dir, std::string name)
    : dir_(std::move(dir)), name_(std::move(name)), cert_(dir_ + "/" + name_ + ".crt"), key_(dir_ + "/" + name_ + ".key") {
    std::string out;
    const std::string cmd = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj '/CN=" +
                            name_ + "' -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign" +
                            " -keyout " + key_ + " -out " + cert_ + " 2>&1";
    if (run_command(cmd, &out) != 0) throw std::runtime_error("openssl: cannot make CA " + name_ + ": " + out);
}

std::string TestCa::issue(const std::string& stem, const std::string& cn, const std::string& san) const {
    const std::string base = dir_ + "/" + stem;
    std::ofstream(base + ".ext") << (san.empty() ? "" : "subjectAltName=" + san + "\n")
                                 << "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n";
    std::string out;
    const std::string cmd = "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj '/CN=" + cn +
                            "' -keyout " + base + ".key -out " + base + ".csr 2>&1 && openssl x509 -req -in " + base +
                            ".csr -CA " + cert_ + " -CAkey " + key_ + " -CAcreateserial -days 2 -extfile " + base +
                            ".ext -out " + base + ".crt 2>&1 && chmod 600 " + base + ".key";
    if (run_command(cmd, &out) != 0) throw std::runtime_error("openssl: cannot issue " + stem + ": " + out);
    return base + ".crt";
}

std::string Pgrelay::conninfo(uint16_t port, const std::string& user, const std::string& password) const {
    return "host=" + opts_.listen_host + " port=" + std::to_string(port) + " user=" + user + " password=" + password +
           " dbname=postgres connect_timeout=10 sslmode=disable gssencmode=disable";
}

std::string Pgrelay::log() const { return slurp(dir_->path() + "/pgrelay.log"); }

PgConn::~PgConn() {
    if (conn) PQfinish(conn);
}

PgConn pg_connect(const std::string& conninfo) {
    PgConn r;
    r.conn = PQconnectStart(conninfo.c_str());
    if (!r.conn) {
        r.error = "out of memory";
        return r;
    }
    // Verbose mode makes libpq put the code of a connection-time
    // ErrorResponse into the error message ("FATAL:  28P01"): the only way to
    // see it, since a failed connect yields no PGresult.
    PQsetErrorVerbosity(r.conn, PQERRORS_VERBOSE);
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
        if (std::chrono::steady_clock::now() > deadline) break;
        pollfd p{PQsocket(r.conn), static_cast<short>(st == PGRES_POLLING_READING ? POLLIN : POLLOUT), 0};
        if (p.fd >= 0) ::poll(&p, 1, 100);
        st = PQconnectPoll(r.conn);
    }
    if (st != PGRES_POLLING_OK) {
        r.error = PQerrorMessage(r.conn);
        static const std::regex code(R"((FATAL|ERROR):  ([0-9A-Z]{5}))");
        std::smatch m;
        if (std::regex_search(r.error, m, code)) r.sqlstate = m[2];
    }
    PQsetErrorVerbosity(r.conn, PQERRORS_DEFAULT);
    return r;
}

std::string query_value(PGconn* c, const std::string& sql) {
    PGresult* res = PQexec(c, sql.c_str());
    const auto st = PQresultStatus(res);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        const char* code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        std::string msg = std::string(code ? code : "?????") + " " + PQerrorMessage(c);
        PQclear(res);
        throw std::runtime_error(msg);
    }
    std::string v = (st == PGRES_TUPLES_OK && PQntuples(res) > 0) ? PQgetvalue(res, 0, 0) : "";
    PQclear(res);
    return v;
}

void exec(PGconn* c, const std::string& sql) { (void)query_value(c, sql); }

RawClient::RawClient(uint16_t port, const std::string& host) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    ::inet_pton(AF_INET, host.c_str(), &a.sin_addr);
    a.sin_port = htons(port);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) close();
}

RawClient::~RawClient() { close(); }

void RawClient::close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
}

bool RawClient::send(const std::string& bytes) {
    size_t off = 0;
    while (off < bytes.size()) {
        const ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
        if (n <= 0) return false;
        off += size_t(n);
    }
    return true;
}

std::string RawClient::read_all(std::chrono::milliseconds timeout) {
    return read_until([](const std::string&) { return false; }, timeout);
}

std::string RawClient::read_until(const std::function<bool(const std::string&)>& done, std::chrono::milliseconds timeout) {
    std::string out;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    char buf[4096];
    while (fd_ >= 0) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) break;
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
        const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
        if (n <= 0) break;
        out.append(buf, size_t(n));
        if (done(out)) break;
    }
    return out;
}

std::optional<ErrorInfo> first_error(const std::string& bytes) {
    protocol::FrameScanner scanner(1 << 20, 1 << 20);
    scanner.watch('E');
    std::span<const uint8_t> buf(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    size_t pos = 0;
    protocol::Frame f;
    while (scanner.next(buf, pos, f) == protocol::FrameScanner::Status::Frame) {
        if (f.type != 'E' || !f.complete) continue;
        std::span<const uint8_t> body = buf.subspan(f.offset + 5, f.length - 4);
        if (auto e = protocol::decode_error_fields(body))
            return ErrorInfo{std::string(e->severity), std::string(e->sqlstate), std::string(e->message)};
    }
    return std::nullopt;
}

bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        if (pred()) return true;
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(50ms);
    }
}

std::string startup_message(const std::map<std::string, std::string>& params, uint32_t version) {
    std::string body;
    auto put32 = [](std::string& s, uint32_t v) {
        for (int i = 3; i >= 0; --i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    };
    put32(body, version);
    for (const auto& [k, v] : params) {
        body += k;
        body.push_back('\0');
        body += v;
        body.push_back('\0');
    }
    body.push_back('\0');
    std::string out;
    put32(out, static_cast<uint32_t>(body.size() + 4));
    return out + body;
}

namespace {
void put32(std::string& s, uint32_t v) {
    for (int i = 3; i >= 0; --i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint32_t get32(const std::string& s, size_t at) {
    return (uint32_t(uint8_t(s[at])) << 24) | (uint32_t(uint8_t(s[at + 1])) << 16) | (uint32_t(uint8_t(s[at + 2])) << 8) |
           uint32_t(uint8_t(s[at + 3]));
}
bool has_frame(const std::string& bytes, char type) {
    for (const auto& [t, body] : frames_of(bytes))
        if (t == type) return true;
    return false;
}
}  // namespace

std::string md5_hex(const std::string& in) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(in.data(), in.size(), md, &len, EVP_md5(), nullptr);
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (unsigned i = 0; i < len; ++i) {
        out.push_back(hex[md[i] >> 4]);
        out.push_back(hex[md[i] & 15]);
    }
    return out;
}

std::string startup_request(uint32_t len, uint32_t code) {
    std::string s;
    for (uint32_t v : {len, code})
        for (int i = 3; i >= 0; --i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    return s;
}

std::vector<std::pair<char, std::string>> frames_of(const std::string& bytes) {
    std::vector<std::pair<char, std::string>> out;
    size_t pos = 0;
    while (bytes.size() - pos >= 5) {
        const uint32_t len = get32(bytes, pos + 1);
        if (len < 4 || bytes.size() - pos < size_t(len) + 1) break;
        out.emplace_back(bytes[pos], bytes.substr(pos + 5, len - 4));
        pos += size_t(len) + 1;
    }
    return out;
}

std::string cancel_request(int32_t pid, int32_t secret) {
    std::string s;
    put32(s, 16);
    put32(s, 80877102);
    put32(s, static_cast<uint32_t>(pid));
    put32(s, static_cast<uint32_t>(secret));
    return s;
}

std::string query_message(const std::string& sql) {
    std::string s(1, 'Q');
    put32(s, static_cast<uint32_t>(sql.size() + 5));
    s += sql;
    s.push_back('\0');
    return s;
}

RawSession md5_login(uint16_t port, const std::string& user, const std::string& password) {
    RawSession r;
    r.client = std::make_unique<RawClient>(port);
    auto& c = *r.client;
    if (!c.send(startup_message({{"user", user}, {"database", "postgres"}}))) {
        r.error = "send failed";
        return r;
    }
    std::string in = c.read_until([](const std::string& b) { return has_frame(b, 'R') || has_frame(b, 'E'); }, 10s);
    auto frames = frames_of(in);
    if (frames.empty() || frames[0].first != 'R' || frames[0].second.size() != 8 || get32(frames[0].second, 0) != 5) {
        r.error = "expected AuthenticationMD5Password";
        return r;
    }
    // PasswordMessage: "md5" + md5(md5(password + user) + salt), protocol-flow.html
    const std::string salt = frames[0].second.substr(4, 4);
    const std::string hashed = "md5" + md5_hex(md5_hex(password + user) + salt);
    std::string msg(1, 'p');
    put32(msg, static_cast<uint32_t>(hashed.size() + 5));
    msg += hashed;
    msg.push_back('\0');
    c.send(msg);
    in = c.read_until([](const std::string& b) { return has_frame(b, 'Z') || has_frame(b, 'E'); }, 10s);
    for (const auto& [t, body] : frames_of(in)) {
        if (t == 'E') r.error = "login failed";
        if (t == 'K' && body.size() == 8) {
            r.pid = static_cast<int32_t>(get32(body, 0));
            r.secret = static_cast<int32_t>(get32(body, 4));
        }
    }
    if (r.error.empty() && !has_frame(in, 'Z')) r.error = "no ReadyForQuery";
    return r;
}

RawLogin raw_login(const std::string& host, uint16_t port, const std::string& user, const std::string& password,
                   uint32_t version) {
    RawLogin r;
    r.client = std::make_unique<RawClient>(port, host);
    auto& c = *r.client;
    if (!c.connected() || !c.send(startup_message({{"user", user}, {"database", "postgres"}}, version))) {
        r.error = "cannot connect to " + host + ":" + std::to_string(port);
        return r;
    }
    protocol::BackendLogin login(user, protocol::BackendLogin::Credentials{password, {}, {}, {}},
                                 "rawloginnonce" + std::to_string(port));
    std::string in;
    const auto deadline = std::chrono::steady_clock::now() + 15s;
    for (;;) {
        size_t used = 0;
        for (const auto& [type, body] : frames_of(in)) {
            used += 5 + body.size();
            if (type == 'v') r.negotiated = get32(body, 0);
            if (type == 'K' && body.size() >= 8) {
                r.pid = static_cast<int32_t>(get32(body, 0));
                r.secret = body.substr(4);
            }
            const auto step = login.on_message(
                type, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(body.data()), body.size()));
            if (step.kind == protocol::LoginStep::Kind::Fail) {
                r.error = step.sqlstate + " " + step.error;
                return r;
            }
            if (step.kind == protocol::LoginStep::Kind::Done) return r;
            if (!step.bytes.empty()) c.send(step.bytes);
        }
        in.erase(0, used);
        if (std::chrono::steady_clock::now() > deadline) {
            r.error = "login timed out";
            return r;
        }
        const std::string more = c.read_until([](const std::string& b) { return !b.empty(); }, 5s);
        if (more.empty()) {
            r.error = "connection closed (or silent for 5 s) during login";
            return r;
        }
        in += more;
    }
}

std::string cancel_request(int32_t pid, const std::string& secret) {
    std::string out;
    put32(out, static_cast<uint32_t>(12 + secret.size()));
    put32(out, 80877102);
    put32(out, static_cast<uint32_t>(pid));
    return out + secret;
}

std::optional<ErrorInfo> cancel_running_query(RawLogin& who, const std::string& host, uint16_t port,
                                              const std::string& cancel, std::string* answer) {
    if (!who.client->send(query_message("SELECT pg_sleep(30) /* to be cancelled */"))) return std::nullopt;
    std::this_thread::sleep_for(500ms);  // the query is running
    RawClient canceller(port, host);
    if (!canceller.connected() || !canceller.send(cancel)) return std::nullopt;
    const std::string got = canceller.read_all(10s);
    if (answer) *answer = got;
    return first_error(who.client->read_until(
        [](const std::string& b) {
            for (const auto& f : frames_of(b))
                if (f.first == 'Z') return true;
            return false;
        },
        20s));
}

// ---------------------------------------------------------------- NetnsLink

namespace {
void ip(const std::string& args) {
    std::string out;
    if (run_command("ip " + args, &out) != 0) throw std::runtime_error("ip " + args + " failed: " + out);
}
}  // namespace

NetnsLink::NetnsLink() {
    // Links left by a test process that was killed (no destructor ran): gone
    // with their namespace, whose name carries the dead process's pid.
    {
        std::string list;
        run_command("ip netns list", &list);
        std::istringstream in(list);
        std::string name, rest;
        while (in >> name) {
            std::getline(in, rest);
            if (name.rfind("pgrelay-t", 0) != 0) continue;
            const int pid = std::atoi(name.c_str() + 9);
            if (pid > 0 && pid != ::getpid() && ::kill(pid, 0) != 0 && errno == ESRCH) {
                run_command("ip link del pgr" + name.substr(9) + "a");
                run_command("ip netns del " + name);
            }
        }
    }
    static std::atomic<int> seq{0};
    const std::string tag = std::to_string(::getpid()) + "x" + std::to_string(seq++ % 100);
    name_ = "pgrelay-t" + tag;
    veth_ = "pgr" + tag;  // interface names: at most 15 characters
    std::string addrs;
    run_command("ip -o -4 addr show", &addrs);
    int n = 1;
    while (n < 250 && addrs.find("10.254." + std::to_string(n) + ".1/") != std::string::npos) ++n;
    if (n == 250) throw std::runtime_error("NetnsLink: no free 10.254.N.0/30");
    const std::string net = "10.254." + std::to_string(n) + ".";
    outer_ = net + "1";
    inner_ = net + "2";
    ip("netns add " + name_);
    try {
        ip("link add " + veth_ + "a type veth peer name " + veth_ + "b");
        ip("link set " + veth_ + "b netns " + name_);
        ip("addr add " + outer_ + "/30 dev " + veth_ + "a");
        ip("link set " + veth_ + "a up");
        ip("-n " + name_ + " addr add " + inner_ + "/30 dev " + veth_ + "b");
        ip("-n " + name_ + " link set " + veth_ + "b up");
        ip("-n " + name_ + " link set lo up");
    } catch (...) {
        run_command("ip link del " + veth_ + "a");
        run_command("ip netns del " + name_);
        throw;
    }
}

NetnsLink::~NetnsLink() {
    run_command("ip link del " + veth_ + "a");  // takes its peer in the namespace along
    run_command("ip netns del " + name_);
}

void NetnsLink::blackhole() {
    if (blackholed_) return;
    ip("-n " + name_ + " route add blackhole " + outer_ + "/32");
    blackholed_ = true;
}

void NetnsLink::heal() {
    if (!blackholed_) return;
    ip("-n " + name_ + " route del blackhole " + outer_ + "/32");
    blackholed_ = false;
}

void NetnsLink::run_inside(const std::function<void()>& f) const {
    std::string error;
    std::thread t([&] {
        const int fd = ::open(("/run/netns/" + name_).c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0 || ::setns(fd, CLONE_NEWNET) != 0) {
            error = "cannot enter network namespace " + name_;
            if (fd >= 0) ::close(fd);
            return;
        }
        ::close(fd);
        f();  // the thread ends inside the namespace: nothing else runs on it
    });
    t.join();
    if (!error.empty()) throw std::runtime_error(error);
}

// ---------------------------------------------------------------- TcpForwarder

struct TcpForwarder::State {
    uint16_t upstream = 0;
    int listen_fd = -1;
    int wake[2] = {-1, -1};  // a pipe: wakes the loop when the faults change or on stop
    std::mutex mu;           // guards the fault settings below
    bool held[2] = {false, false};  // per direction (0 up: client -> upstream, 1 down): nothing delivered
    bool stall_new = false;         // new connections get no upstream until heal
    bool cut = false;               // reset everything, refuse new connections
    std::atomic<bool> stop{false};
    std::atomic<int> open{0};
    std::atomic<uint64_t> accepted{0};
    std::thread thread;
    static constexpr size_t kMaxPending = 256 * 1024;  // per direction; reading stops above it
    struct Pair {
        int fd[2] = {-1, -1};    // client, upstream (-1 while stalled)
        std::string pending[2];  // read from fd[d], to write to fd[1 - d]
        bool eof[2] = {false, false};
        bool shut[2] = {false, false};   // shutdown(SHUT_WR) sent on fd[1 - d] after eof[d]
        bool client_gone = false;        // the client closed or reset (seen even while held)
    };
    std::vector<Pair> pairs;

    static void set_nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }
    static void reset(int fd) {
        if (fd < 0) return;
        linger l{1, 0};  // close with RST, as a cut path would
        ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        ::close(fd);
    }
    static void reset(Pair& p) {
        reset(p.fd[0]);
        reset(p.fd[1]);
        p.fd[0] = p.fd[1] = -1;
    }
    int connect_upstream() const {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(upstream);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
            ::close(fd);
            return -1;
        }
        set_nonblocking(fd);
        return fd;
    }
    // One direction's step after poll: read what may be read, write what is pending.
    // Returns false when the pair is broken (a reset, or a failed write).
    bool step(Pair& p, int d, short src_events, short dst_events, bool is_held, char* buf, size_t cap) {
        const int src = p.fd[d], dst = p.fd[1 - d];
        if (!is_held && (src_events & (POLLIN | POLLHUP | POLLERR)) && !p.eof[d]) {
            const ssize_t n = ::recv(src, buf, cap, 0);
            if (n > 0) p.pending[d].append(buf, size_t(n));
            else if (n == 0) p.eof[d] = true;
            else if (errno != EAGAIN && errno != EINTR) return false;
        }
        if (!is_held && dst >= 0 && !p.pending[d].empty() && (dst_events & POLLOUT)) {
            const ssize_t w = ::send(dst, p.pending[d].data(), p.pending[d].size(), MSG_NOSIGNAL);
            if (w > 0) p.pending[d].erase(0, size_t(w));
            else if (w < 0 && errno != EAGAIN && errno != EINTR) return false;
        }
        if (!is_held && dst >= 0 && p.eof[d] && p.pending[d].empty() && !p.shut[d]) {
            ::shutdown(dst, SHUT_WR);
            p.shut[d] = true;
        }
        return true;
    }
    void loop() {
        std::vector<char> buf(65536);
        while (!stop) {
            bool h[2], stall, is_cut;
            {
                std::lock_guard lock(mu);
                h[0] = held[0];
                h[1] = held[1];
                stall = stall_new;
                is_cut = cut;
            }
            if (is_cut) {
                for (auto& p : pairs) reset(p);
                pairs.clear();
            }
            // A stalled connection gets its upstream once nothing stalls it. A
            // pair closed in the last round (fd[0] < 0, erased below) has no
            // upstream either and must not get one: it would leak a connection
            // that never speaks, and PostgreSQL waits out authentication_timeout
            // for it before a shutdown completes.
            for (auto& p : pairs)
                if (p.fd[0] >= 0 && p.fd[1] < 0 && !stall && !(h[0] && h[1]) && !p.client_gone) {
                    p.fd[1] = connect_upstream();
                    if (p.fd[1] < 0) reset(p);
                }
            std::erase_if(pairs, [](const Pair& p) { return p.fd[0] < 0; });
            int live = 0;
            for (const auto& p : pairs) live += p.client_gone ? 0 : 1;
            open = live;

            std::vector<pollfd> fds;
            fds.push_back({wake[0], POLLIN, 0});
            fds.push_back({listen_fd, POLLIN, 0});
            for (const auto& p : pairs) {
                for (int side = 0; side < 2; ++side) {
                    short ev = 0;
                    const int d = side;  // reading fd[side] is direction `side`
                    if (p.fd[side] >= 0) {
                        if (!h[d] && !p.eof[d] && p.pending[d].size() < kMaxPending && p.fd[1] >= 0) ev |= POLLIN;
                        if (!h[1 - d] && !p.pending[1 - d].empty()) ev |= POLLOUT;
                        // A held client is still watched for closing (without reading it).
                        if (side == 0 && !p.client_gone && !(ev & POLLIN)) ev |= POLLRDHUP;
                    }
                    // Nothing wanted (held, or a gone client): not polled at
                    // all, or its hang-up would wake the loop forever.
                    fds.push_back({ev ? p.fd[side] : -1, ev, 0});
                }
            }
            if (::poll(fds.data(), fds.size(), 200) <= 0) continue;
            if (fds[0].revents) {
                char drain[64];
                while (::read(wake[0], drain, sizeof drain) > 0) {
                }
            }
            const size_t polled = pairs.size();  // fds holds these pairs, not one accepted below
            if (fds[1].revents & POLLIN) {
                const int c = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
                if (c >= 0) {
                    ++accepted;
                    Pair p;
                    p.fd[0] = c;
                    if (is_cut) {
                        reset(c);
                    } else {
                        if (!stall && !(h[0] && h[1])) {
                            p.fd[1] = connect_upstream();
                            if (p.fd[1] < 0) {
                                reset(c);
                                p.fd[0] = -1;
                            }
                        }
                        if (p.fd[0] >= 0) pairs.push_back(std::move(p));
                    }
                }
            }
            for (size_t i = 0; i < polled; ++i) {
                Pair& p = pairs[i];
                const short ev0 = fds[2 + 2 * i].revents, ev1 = fds[3 + 2 * i].revents;
                if (!(fds[2 + 2 * i].events & POLLIN) && (ev0 & (POLLRDHUP | POLLHUP | POLLERR))) p.client_gone = true;
                bool ok = step(p, 0, ev0, ev1, h[0], buf.data(), buf.size()) &&
                          step(p, 1, ev1, ev0, h[1], buf.data(), buf.size());
                if (p.eof[0]) p.client_gone = true;
                const bool done = p.eof[0] && p.eof[1] && p.pending[0].empty() && p.pending[1].empty();
                if (!ok) {
                    reset(p);
                } else if (done || (p.client_gone && p.fd[1] < 0)) {
                    ::close(p.fd[0]);
                    if (p.fd[1] >= 0) ::close(p.fd[1]);
                    p.fd[0] = p.fd[1] = -1;
                }
            }
        }
        for (auto& p : pairs) {
            if (p.fd[0] >= 0) ::close(p.fd[0]);
            if (p.fd[1] >= 0) ::close(p.fd[1]);
        }
    }
    void poke() { (void)!::write(wake[1], "x", 1); }
    template <class F>
    void set(F f) {
        {
            std::lock_guard lock(mu);
            f();
        }
        poke();
    }
};

TcpForwarder::TcpForwarder(uint16_t upstream_port, const NetnsLink* link) : st_(std::make_unique<State>()) {
    st_->upstream = upstream_port;
    if (::pipe2(st_->wake, O_CLOEXEC | O_NONBLOCK) != 0) throw std::runtime_error("pipe failed");
    if (link) host_ = link->inner_address();
    sockaddr_in a{};
    a.sin_family = AF_INET;
    ::inet_pton(AF_INET, host_.c_str(), &a.sin_addr);
    bool listening = false;
    auto make = [&] {
        st_->listen_fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        listening = ::bind(st_->listen_fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                    ::listen(st_->listen_fd, 64) == 0;
    };
    if (link) link->run_inside(make);
    else make();
    if (!listening) throw std::runtime_error("forwarder: cannot listen on " + host_);
    socklen_t len = sizeof a;
    ::getsockname(st_->listen_fd, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    st_->thread = std::thread([s = st_.get()] { s->loop(); });
}

TcpForwarder::~TcpForwarder() {
    st_->stop = true;
    st_->poke();
    st_->thread.join();
    ::close(st_->listen_fd);
    ::close(st_->wake[0]);
    ::close(st_->wake[1]);
}

void TcpForwarder::cut() {
    st_->set([s = st_.get()] { s->cut = true; });
}
void TcpForwarder::blackhole(Direction d) {
    st_->set([s = st_.get(), d] {
        if (d != Direction::Down) s->held[0] = true;
        if (d != Direction::Up) s->held[1] = true;
    });
}
void TcpForwarder::stall_new() {
    st_->set([s = st_.get()] { s->stall_new = true; });
}
void TcpForwarder::heal() {
    st_->set([s = st_.get()] {
        s->held[0] = s->held[1] = false;
        s->stall_new = s->cut = false;
    });
}
int TcpForwarder::connections() const { return st_->open.load(); }
uint64_t TcpForwarder::accepted() const { return st_->accepted.load(); }

}  // namespace pgrelay::test
