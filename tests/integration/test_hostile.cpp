// Hostile input, black-box (issue #4): clients that lie about lengths, stall,
// flood pgrelay with half-open connections, garble CancelRequests or vanish at
// random points of the startup. Each case asserts what pgrelay answers, byte
// for byte ('N', ErrorResponse SQLSTATE and message, or a silent close), and
// that afterwards it still serves and its descriptors are back at baseline.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "fixtures.hpp"

using namespace pgrelay::test;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

constexpr uint32_t kProtocol3 = 196608;
constexpr uint32_t kCancelCode = 80877102;
constexpr uint32_t kSSLCode = 80877103;
constexpr uint32_t kGSSCode = 80877104;

std::string be32(uint32_t v) {
    std::string s;
    for (int i = 3; i >= 0; --i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    return s;
}

uint32_t get32(const std::string& s, size_t at) {
    return (uint32_t(uint8_t(s[at])) << 24) | (uint32_t(uint8_t(s[at + 1])) << 16) | (uint32_t(uint8_t(s[at + 2])) << 8) |
           uint32_t(uint8_t(s[at + 3]));
}

// An 8-byte startup-phase packet: length word, then code.

std::string garbage_cancel(uint32_t len, uint32_t pid, uint32_t secret) {
    return be32(len) + be32(kCancelCode) + be32(pid) + be32(secret);
}

std::string login_startup(const std::string& user) {
    return startup_message({{"user", user}, {"database", "postgres"}, {"application_name", "hostile"}});
}


// PasswordMessage for AuthenticationMD5Password with `salt` (protocol-flow.html).
std::string md5_password_message(const std::string& user, const std::string& password, const std::string& salt) {
    const std::string hashed = "md5" + md5_hex(md5_hex(password + user) + salt);
    return "p" + be32(static_cast<uint32_t>(hashed.size() + 5)) + hashed + std::string(1, '\0');
}

// A well-formed SASLInitialResponse (SCRAM client-first-message), to be cut short.
std::string sasl_initial_response() {
    const std::string first = "n,,n=,r=hostilehostilehostile";
    std::string body = "SCRAM-SHA-256" + std::string(1, '\0') + be32(static_cast<uint32_t>(first.size())) + first;
    return "p" + be32(static_cast<uint32_t>(body.size() + 4)) + body;
}

bool has_frame(const std::string& bytes, char type) {
    for (const auto& [t, body] : frames_of(bytes))
        if (t == type) return true;
    return false;
}

// Backend bytes for a failure message: "R(5) E[FATAL 08P01 ...] +3 bytes".
std::string summary(const std::string& bytes) {
    if (bytes.empty()) return "nothing";
    std::ostringstream out;
    size_t used = 0;
    for (const auto& [t, body] : frames_of(bytes)) {
        out << t;
        if (t == 'R' && body.size() >= 4) out << "(" << get32(body, 0) << ")";
        if (t == 'E') {
            auto e = first_error(bytes.substr(used));
            if (e) out << "[" << e->severity << " " << e->sqlstate << " " << e->message << "]";
        }
        out << " ";
        used += 5 + body.size();
    }
    if (used < bytes.size()) {
        out << "+" << bytes.size() - used << " bytes:";
        for (size_t i = used; i < bytes.size() && i < used + 16; ++i) {
            char hex[4];
            std::snprintf(hex, sizeof hex, " %02x", unsigned(uint8_t(bytes[i])));
            out << hex;
        }
    }
    return out.str();
}

// The error when `bytes` is exactly one whole ErrorResponse and nothing else.
std::optional<ErrorInfo> sole_error(const std::string& bytes) {
    const auto frames = frames_of(bytes);
    if (frames.size() != 1 || frames[0].first != 'E' || frames[0].second.size() + 5 != bytes.size()) return std::nullopt;
    return first_error(bytes);
}

// A raw loopback socket with what RawClient does not offer: bounded sends,
// half-close, abortive close (RST via SO_LINGER 0), and how a read ended.
class Sock {
public:
    explicit Sock(uint16_t port) {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(port);
        if (fd_ >= 0 && ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) close();
    }
    Sock(Sock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
    Sock& operator=(Sock&&) = delete;
    ~Sock() { close(); }
    bool connected() const { return fd_ >= 0; }
    int fd() const { return fd_; }

    // False when the peer is gone or the bytes did not fit within 5 s.
    bool send(const std::string& bytes) {
        const auto deadline = Clock::now() + 5s;
        size_t off = 0;
        while (fd_ >= 0 && off < bytes.size()) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
            pollfd p{fd_, POLLOUT, 0};
            if (left <= 0 || ::poll(&p, 1, int(left)) <= 0) return false;
            const ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (n <= 0) return false;
            off += size_t(n);
        }
        return fd_ >= 0;
    }
    void shutdown_write() {
        if (fd_ >= 0) ::shutdown(fd_, SHUT_WR);
    }
    // Abortive close: the peer gets RST instead of FIN.
    void reset() {
        if (fd_ < 0) return;
        linger l{1, 0};
        ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        close();
    }
    void close() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }

private:
    int fd_ = -1;
};

// How a read ended: the predicate held, orderly close, reset, or our deadline.
enum class End { Done, Eof, Reset, Timeout };
const char* to_string(End e) {
    switch (e) {
        case End::Done: return "done";
        case End::Eof: return "EOF";
        case End::Reset: return "reset";
        case End::Timeout: return "timeout";
    }
    return "?";
}
struct Reply {
    std::string bytes;
    End end = End::Timeout;
};

// Reads from `s` until `done(bytes)` holds, the peer closes, or `timeout`.
Reply read_until(Sock& s, const std::function<bool(const std::string&)>& done, std::chrono::milliseconds timeout) {
    Reply r;
    const auto deadline = Clock::now() + timeout;
    char buf[4096];
    while (s.connected()) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        if (left <= 0) return r;
        pollfd p{s.fd(), POLLIN, 0};
        const int pr = ::poll(&p, 1, int(left));
        if (pr < 0 && errno == EINTR) continue;
        if (pr <= 0) return r;
        const ssize_t n = ::recv(s.fd(), buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n == 0) {
            r.end = End::Eof;
            return r;
        }
        if (n < 0) {
            r.end = End::Reset;
            return r;
        }
        r.bytes.append(buf, size_t(n));
        if (done(r.bytes)) {
            r.end = End::Done;
            return r;
        }
    }
    return r;
}

Reply read_to_end(Sock& s, std::chrono::milliseconds timeout) {
    return read_until(s, [](const std::string&) { return false; }, timeout);
}

Reply read_frame(Sock& s, char type, std::chrono::milliseconds timeout) {
    return read_until(s, [type](const std::string& b) { return has_frame(b, type) || has_frame(b, 'E'); }, timeout);
}

// Reads every socket in `socks` to its end (EOF or reset) in one poll loop.
std::vector<Reply> read_all_to_end(std::vector<Sock>& socks, std::chrono::milliseconds timeout) {
    std::vector<Reply> out(socks.size());
    std::vector<bool> open(socks.size());
    for (size_t i = 0; i < socks.size(); ++i) open[i] = socks[i].connected();
    const auto deadline = Clock::now() + timeout;
    char buf[4096];
    for (;;) {
        std::vector<pollfd> fds;
        std::vector<size_t> idx;
        for (size_t i = 0; i < socks.size(); ++i)
            if (open[i]) {
                fds.push_back({socks[i].fd(), POLLIN, 0});
                idx.push_back(i);
            }
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        if (fds.empty() || left <= 0) break;
        const int pr = ::poll(fds.data(), fds.size(), int(left));
        if (pr < 0 && errno == EINTR) continue;
        if (pr <= 0) break;
        for (size_t j = 0; j < fds.size(); ++j) {
            if (!fds[j].revents) continue;
            const size_t i = idx[j];
            const ssize_t n = ::recv(fds[j].fd, buf, sizeof buf, 0);
            if (n > 0) {
                out[i].bytes.append(buf, size_t(n));
            } else if (n == 0 || errno != EINTR) {
                out[i].end = n == 0 ? End::Eof : End::Reset;
                open[i] = false;
            }
        }
    }
    return out;
}

// A StartupMessage already went out on `s`: answers AuthenticationMD5Password
// and reads up to ReadyForQuery. Empty on success, else what went wrong.
std::string finish_md5_login(Sock& s, const std::string& user, const std::string& password) {
    Reply r = read_frame(s, 'R', 10s);
    auto frames = frames_of(r.bytes);
    if (frames.empty() || frames[0].first != 'R' || frames[0].second.size() != 8 || get32(frames[0].second, 0) != 5)
        return "expected AuthenticationMD5Password, got " + summary(r.bytes) + " (" + to_string(r.end) + ")";
    if (!s.send(md5_password_message(user, password, frames[0].second.substr(4, 4)))) return "password send failed";
    r = read_frame(s, 'Z', 10s);
    frames = frames_of(r.bytes);
    if (frames.empty() || frames[0].first != 'R' || get32(frames[0].second, 0) != 0 || !has_frame(r.bytes, 'K') ||
        frames.back().first != 'Z')
        return "expected AuthenticationOk ... BackendKeyData ... ReadyForQuery, got " + summary(r.bytes) + " (" +
               to_string(r.end) + ")";
    return {};
}

// Runs `sql` on a logged-in raw session; the first column of its one row, or
// "error: ..." when it did not come back as RowDescription, DataRow,
// CommandComplete, ReadyForQuery.
std::string raw_query(Sock& s, const std::string& sql) {
    if (!s.send(query_message(sql))) return "error: send failed";
    Reply r = read_until(s, [](const std::string& b) { return has_frame(b, 'Z'); }, 10s);
    const auto frames = frames_of(r.bytes);
    if (frames.size() != 4 || frames[0].first != 'T' || frames[1].first != 'D' || frames[2].first != 'C' ||
        frames[3].first != 'Z')
        return "error: " + summary(r.bytes);
    const std::string& row = frames[1].second;  // int16 count, int32 length, value
    if (row.size() < 6) return "error: short DataRow";
    return row.substr(6, get32(row, 2));
}

// pgrelay's descriptors with nothing in flight. The static health check opens
// a short-lived socket to each member every 200 ms: take the least of samples.
int quiet_fds(const Pgrelay& relay) {
    int least = INT_MAX;
    for (int i = 0; i < 20; ++i) {
        least = std::min(least, relay.open_fds());
        std::this_thread::sleep_for(25ms);
    }
    return least;
}

// Baseline: after start and after one client came and went (lazily opened
// descriptors are in), as in the brief for #4.
int baseline_fds(const Pgrelay& relay) {
    PgConn c = pg_connect(relay.conninfo(relay.rw_port(), "md5user", "md5pass"));
    REQUIRE(c.ok());
    REQUIRE(query_value(c.conn, "SELECT 1") == "1");
    PQfinish(c.conn);
    c.conn = nullptr;
    return quiet_fds(relay);
}

void check_fds_back(const Pgrelay& relay, int baseline) {
    int now = -1;
    const bool back = eventually(
        [&] {
            now = relay.open_fds();
            return now <= baseline;
        },
        20s);
    INFO("pgrelay fds: baseline " << baseline << ", now " << now);
    CHECK(back);
}

// The pid of this process's child running pgrelay (the fixture keeps its own
// private); -1 unless there is exactly one.
int pgrelay_pid() {
    int found = -1, count = 0;
    DIR* d = opendir("/proc");
    if (!d) return -1;
    while (dirent* e = readdir(d)) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        const std::string stat = slurp(std::string("/proc/") + e->d_name + "/stat");
        const auto open = stat.find('('), close = stat.rfind(')');
        if (open == std::string::npos || close == std::string::npos) continue;
        std::istringstream rest(stat.substr(close + 2));
        char state;
        int ppid = 0;
        rest >> state >> ppid;
        if (ppid == getpid() && stat.substr(open + 1, close - open - 1) == "pgrelay") {
            found = std::atoi(e->d_name);
            ++count;
        }
    }
    closedir(d);
    return count == 1 ? found : -1;
}

// A "Vm...:" line of /proc/<pid>/status, in kB; -1 if absent.
long vm_kb(int pid, const std::string& field) {
    std::istringstream in(slurp("/proc/" + std::to_string(pid) + "/status"));
    std::string line;
    while (std::getline(in, line))
        if (line.rfind(field + ":", 0) == 0) return std::atol(line.c_str() + field.size() + 1);
    return -1;
}

size_t count_of(const std::string& haystack, const std::string& needle) {
    size_t n = 0;
    for (size_t at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + 1)) ++n;
    return n;
}

double metric(const Pgrelay& relay, const std::string& name_and_labels) {
    const std::string body = relay.http_get("/metrics").second;
    const auto at = body.find("\n" + name_and_labels + " ");
    if (at == std::string::npos) return -1;
    return std::stod(body.substr(at + name_and_labels.size() + 2));
}

// A query on `port` through libpq is cancelled by PQcancel: 57014, and the
// session then serves the next query.
void check_cancel_works(const PgCluster& cluster, const Pgrelay& relay, uint16_t port) {
    PgConn c = pg_connect(relay.conninfo(port, "scramuser", "scrampass"));
    REQUIRE(c.ok());
    const std::string node_port = query_value(c.conn, "SELECT inet_server_port()");
    const Node* node = nullptr;
    for (const auto& n : cluster.nodes())
        if (std::to_string(n.port) == node_port) node = &n;
    REQUIRE(node);
    PgConn watch = pg_connect(cluster.direct(*node));
    REQUIRE(watch.ok());
    const std::string sql = "SELECT pg_sleep(30) /* hostile cancel probe " + std::to_string(port) + " */";
    REQUIRE(PQsendQuery(c.conn, sql.c_str()) == 1);
    REQUIRE(eventually(
        [&] {
            return query_value(watch.conn, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = '" +
                                               sql + "'") == "1";
        },
        10s));
    PGcancel* cancel = PQgetCancel(c.conn);
    char err[256] = {0};
    CHECK(PQcancel(cancel, err, sizeof err) == 1);
    PQfreeCancel(cancel);
    PGresult* res = PQgetResult(c.conn);
    const char* code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    CHECK(std::string(code ? code : "none") == "57014");
    PQclear(res);
    while ((res = PQgetResult(c.conn))) PQclear(res);
    CHECK(query_value(c.conn, "SELECT 1") == "1");
}

// Normal clients after the abuse: pgrelay is up, libpq logs in (md5 and
// SCRAM) and queries on both ports, and a cancel works on both.
void check_still_serving(const PgCluster& cluster, Pgrelay& relay) {
    CHECK(relay.running());
    for (uint16_t port : {relay.rw_port(), relay.ro_port()}) {
        for (auto [user, pass] : {std::pair{"md5user", "md5pass"}, std::pair{"scramuser", "scrampass"}}) {
            INFO("port " << port << " user " << user);
            PgConn c = pg_connect(relay.conninfo(port, user, pass));
            REQUIRE(c.ok());
            CHECK(query_value(c.conn, "SELECT current_user") == user);
            CHECK(query_value(c.conn, "SELECT pg_is_in_recovery()") == (port == relay.rw_port() ? "f" : "t"));
        }
        check_cancel_works(cluster, relay, port);
    }
    CHECK_THAT(relay.log(), !Catch::Contains("unexpected error"));
}

PgrelayOptions with_startup_timeout(const std::string& t) {
    PgrelayOptions o;
    o.startup_timeout = t;
    return o;
}

}  // namespace

TEST_CASE("truncated startup packets: EOF mid-packet closes silently, a stall gets 08P01 at startup_timeout",
          "[hostile]") {
    auto& cluster = PgCluster::shared();
    Pgrelay relay(cluster, with_startup_timeout("1s"));
    const int baseline = baseline_fds(relay);
    const std::string startup = login_startup("md5user");
    const std::vector<size_t> cuts = {0, 1, 2, 3, 4, 5, 8, startup.size() / 2, startup.size() - 1};

    for (uint16_t port : {relay.rw_port(), relay.ro_port()}) {
        // The client sends part of the packet and half-closes: nothing to
        // answer, pgrelay closes (as PostgreSQL: no ErrorResponse to a client
        // that is gone).
        for (size_t k : cuts) {
            INFO("port " << port << ": " << k << " of " << startup.size() << " bytes, then EOF");
            Sock s(port);
            REQUIRE(s.connected());
            REQUIRE(s.send(startup.substr(0, k)));
            s.shutdown_write();
            const Reply r = read_to_end(s, 5s);
            CHECK(r.end == End::Eof);
            CHECK(summary(r.bytes) == "nothing");
        }
        // The same cut short by a reset: nothing to observe but pgrelay's
        // descriptors (checked at the end).
        for (size_t k : cuts) {
            Sock s(port);
            REQUIRE(s.connected());
            REQUIRE(s.send(startup.substr(0, k)));
            s.reset();
        }

        // Stalled clients are closed at startup_timeout with 08P01, after the
        // one-byte answers they were owed.
        struct Stall {
            std::string name, bytes, answers;
        };
        std::vector<Stall> stalls;
        for (size_t k : cuts) stalls.push_back({std::to_string(k) + " bytes of a StartupMessage", startup.substr(0, k), ""});
        stalls.push_back({"a 10000-byte length word and 100 bytes", be32(10000) + be32(kProtocol3) + std::string(92, 'x'), ""});
        stalls.push_back({"half a CancelRequest", garbage_cancel(16, 1, 2).substr(0, 10), ""});
        stalls.push_back({"SSLRequest, then 5 bytes", startup_request(8, kSSLCode) + startup.substr(0, 5), "N"});
        stalls.push_back({"GSSENCRequest, SSLRequest, then nothing", startup_request(8, kGSSCode) + startup_request(8, kSSLCode), "NN"});
        std::vector<Sock> socks;
        for (const auto& st : stalls) {
            socks.emplace_back(port);
            REQUIRE(socks.back().connected());
            REQUIRE(socks.back().send(st.bytes));
        }
        const auto replies = read_all_to_end(socks, 15s);
        const std::string role = port == relay.rw_port() ? "rw" : "ro";
        for (size_t i = 0; i < stalls.size(); ++i) {
            INFO("port " << port << ": " << stalls[i].name << " -> " << summary(replies[i].bytes) << " ("
                         << to_string(replies[i].end) << ")");
            CHECK(replies[i].end == End::Eof);
            REQUIRE(replies[i].bytes.substr(0, stalls[i].answers.size()) == stalls[i].answers);
            auto err = sole_error(replies[i].bytes.substr(stalls[i].answers.size()));
            REQUIRE(err);
            CHECK(err->severity == "FATAL");
            CHECK(err->sqlstate == "08P01");
            CHECK(err->message == "pgrelay " + role + ": startup packet not received in time");
        }
    }
    // A slowloris: one byte every 100 ms. startup_timeout bounds the whole
    // startup, not each read, so trickling does not keep the slot.
    {
        Sock s(relay.rw_port());
        REQUIRE(s.connected());
        std::atomic<size_t> sent{0};
        std::thread trickle([&] {
            for (size_t i = 0; i < startup.size(); ++i) {
                pollfd p{s.fd(), POLLIN, 0};
                if (::poll(&p, 1, 100) != 0) break;  // pgrelay answered or closed: stop
                if (!s.send(startup.substr(i, 1))) break;
                ++sent;
            }
        });
        const Reply r = read_to_end(s, 15s);
        trickle.join();
        INFO("trickled " << sent << " of " << startup.size() << " bytes, got " << summary(r.bytes) << " ("
                         << to_string(r.end) << ")");
        CHECK(sent < startup.size());
        CHECK(r.end != End::Timeout);
        auto err = sole_error(r.bytes);
        REQUIRE(err);
        CHECK(err->sqlstate == "08P01");
        CHECK(err->message == "pgrelay rw: startup packet not received in time");
    }
    const std::string log = relay.log();
    CHECK(count_of(log, "startup not completed within 1000 ms") == 2 * (cuts.size() + 4) + 1);
    CHECK_THAT(log, Catch::Contains("connection ended during startup"));
    check_fds_back(relay, baseline);
    check_still_serving(cluster, relay);
}

TEST_CASE("oversized startup lengths get 08P01 at once, without allocating; exactly 10000 bytes still logs in",
          "[hostile]") {
    auto& cluster = PgCluster::shared();
    Pgrelay relay(cluster);
    const int baseline = baseline_fds(relay);
    const int pid = pgrelay_pid();
    REQUIRE(pid > 0);
    const long peak_before = vm_kb(pid, "VmPeak"), hwm_before = vm_kb(pid, "VmHWM");
    REQUIRE(peak_before > 0);

    const std::vector<uint32_t> lengths = {10001, 10002, 65536, 1u << 20, 0x7ffffffe, 0x7fffffff, 0x80000000, 0xffffffff};
    for (uint16_t port : {relay.rw_port(), relay.ro_port()}) {
        const std::string role = port == relay.rw_port() ? "rw" : "ro";
        for (int round = 0; round < 5; ++round) {
            for (uint32_t len : lengths) {
                for (uint32_t code : {kProtocol3, kSSLCode, kCancelCode}) {
                    INFO("port " << port << ": length " << len << ", code " << code);
                    Sock s(port);
                    REQUIRE(s.connected());
                    REQUIRE(s.send(startup_request(len, code)));
                    const Reply r = read_to_end(s, 5s);
                    INFO("got " << summary(r.bytes) << " (" << to_string(r.end) << ")");
                    CHECK(r.end == End::Eof);
                    auto err = sole_error(r.bytes);
                    REQUIRE(err);
                    CHECK(err->severity == "FATAL");
                    CHECK(err->sqlstate == "08P01");
                    CHECK(err->message == "pgrelay " + role + ": invalid length of startup packet (" + std::to_string(len) +
                                              " bytes; expected 8 to 10000)");
                }
            }
        }
        // The length word alone decides: only its 4 bytes are needed.
        {
            Sock s(port);
            REQUIRE(s.send(be32(0x7fffffff)));
            const Reply r = read_to_end(s, 5s);
            INFO("got " << summary(r.bytes) << " (" << to_string(r.end) << ")");
            auto err = sole_error(r.bytes);
            REQUIRE(err);
            CHECK(err->sqlstate == "08P01");
        }
        // A client that goes on sending the body it announced: pgrelay
        // answers and closes with bytes unread (a reset may overtake the
        // answer), but never reads on.
        {
            Sock s(port);
            REQUIRE(s.send(be32(10001) + be32(kProtocol3)));
            s.send(std::string(9993, 'y'));
            const Reply r = read_to_end(s, 5s);
            INFO("got " << summary(r.bytes) << " (" << to_string(r.end) << ")");
            CHECK(r.end != End::Timeout);
            if (!r.bytes.empty()) {
                auto err = sole_error(r.bytes);
                REQUIRE(err);
                CHECK(err->sqlstate == "08P01");
            }
        }
        // The limit itself is allowed, as by PostgreSQL: a 10000-byte
        // StartupMessage (application_name padded) logs in.
        {
            std::string big = startup_message({{"user", "md5user"}, {"database", "postgres"}, {"application_name", ""}});
            big = startup_message(
                {{"user", "md5user"}, {"database", "postgres"}, {"application_name", std::string(10000 - big.size(), 'a')}});
            REQUIRE(big.size() == 10000);
            Sock s(port);
            REQUIRE(s.send(big));
            CHECK(finish_md5_login(s, "md5user", "md5pass") == "");
            CHECK(raw_query(s, "SELECT 'big startup ok'") == "big startup ok");
        }
    }
    // Nothing was reserved for the announced lengths (2 GiB would show in VmPeak).
    const long peak_after = vm_kb(pid, "VmPeak"), hwm_after = vm_kb(pid, "VmHWM");
    INFO("VmPeak " << peak_before << " -> " << peak_after << " kB, VmHWM " << hwm_before << " -> " << hwm_after << " kB");
    CHECK(peak_after - peak_before < 256 * 1024);
    CHECK(hwm_after - hwm_before < 64 * 1024);
    check_fds_back(relay, baseline);
    check_still_serving(cluster, relay);
}

TEST_CASE("a flood of half-open connections is closed at startup_timeout while normal clients are served",
          "[hostile]") {
    auto& cluster = PgCluster::shared();
    Pgrelay relay(cluster, with_startup_timeout("2s"));
    const int baseline = baseline_fds(relay);
    constexpr int kFlood = 400;
    const std::string startup = login_startup("md5user");

    std::vector<Sock> socks;
    std::vector<std::string> answers, names;
    for (int i = 0; i < kFlood; ++i) {
        const uint16_t port = i % 2 ? relay.ro_port() : relay.rw_port();
        socks.emplace_back(port);
        REQUIRE(socks.back().connected());
        std::string bytes, answer;
        switch (i % 5) {
            case 0: break;  // connects and sends nothing
            case 1: bytes = startup.substr(0, 1 + size_t(i % 3)); break;  // part of the length word
            case 2: bytes = startup.substr(0, 4 + size_t(i % 13)); break;  // the length and part of the packet
            case 3: bytes = startup_request(8, kSSLCode), answer = "N"; break;  // SSLRequest, then nothing
            case 4: bytes = startup_request(8, kGSSCode) + startup.substr(0, 6), answer = "N"; break;
        }
        names.push_back("#" + std::to_string(i) + " port " + std::to_string(port) + " sent " + std::to_string(bytes.size()) +
                        " bytes");
        answers.push_back(answer);
        if (!bytes.empty()) REQUIRE(socks.back().send(bytes));
    }
    // While the flood holds its slots, real clients still get in.
    for (uint16_t port : {relay.rw_port(), relay.ro_port()}) {
        PgConn c = pg_connect(relay.conninfo(port, "md5user", "md5pass"));
        REQUIRE(c.ok());
        CHECK(query_value(c.conn, "SELECT 'during the flood'") == "during the flood");
    }

    const auto replies = read_all_to_end(socks, 30s);
    std::vector<std::string> wrong;
    for (int i = 0; i < kFlood; ++i) {
        const Reply& r = replies[size_t(i)];
        const std::string role = i % 2 ? "ro" : "rw";
        const std::string tail = r.bytes.substr(std::min(r.bytes.size(), answers[size_t(i)].size()));
        auto err = sole_error(tail);
        if (r.end != End::Eof || r.bytes.substr(0, answers[size_t(i)].size()) != answers[size_t(i)] || !err ||
            err->sqlstate != "08P01" || err->message != "pgrelay " + role + ": startup packet not received in time")
            wrong.push_back(names[size_t(i)] + ": got " + summary(r.bytes) + " (" + to_string(r.end) + ")");
    }
    INFO(wrong.size() << " of " << kFlood << " wrong; first: " << (wrong.empty() ? "" : wrong[0]));
    CHECK(wrong.empty());
    CHECK(count_of(relay.log(), "startup not completed within 2000 ms") == size_t(kFlood));
    socks.clear();
    CHECK(eventually([&] { return metric(relay, "pgrelay_client_connections{port=\"rw\"}") == 0 &&
                                  metric(relay, "pgrelay_client_connections{port=\"ro\"}") == 0; },
                     10s));
    check_fds_back(relay, baseline);
    check_still_serving(cluster, relay);
}

TEST_CASE("SSLRequest and GSSENCRequest get 'N' and a plaintext login follows; a second request of a kind is 08P01",
          "[hostile]") {
    auto& cluster = PgCluster::shared();
    Pgrelay relay(cluster);
    const int baseline = baseline_fds(relay);
    const auto one_byte = [](const std::string& b) { return !b.empty(); };
    for (uint16_t port : {relay.rw_port(), relay.ro_port()}) {
        const std::string role = port == relay.rw_port() ? "rw" : "ro";
        INFO("port " << port);
        {
            // libpq's order (sslmode=prefer): SSLRequest, 'N', StartupMessage.
            Sock s(port);
            REQUIRE(s.send(startup_request(8, kSSLCode)));
            const Reply n = read_until(s, one_byte, 5s);
            CHECK(n.bytes == "N");
            REQUIRE(s.send(login_startup("md5user")));
            CHECK(finish_md5_login(s, "md5user", "md5pass") == "");
            CHECK(raw_query(s, "SELECT 'after SSLRequest'") == "after SSLRequest");
            REQUIRE(s.send(std::string("X") + be32(4)));  // Terminate
            const Reply end = read_to_end(s, 5s);
            CHECK(end.end == End::Eof);
            CHECK(end.bytes.empty());
        }
        {
            // pgjdbc's order (gssEncMode=prefer, sslmode=prefer): GSSENCRequest,
            // 'N', SSLRequest, 'N', StartupMessage, each answer read first.
            Sock s(port);
            REQUIRE(s.send(startup_request(8, kGSSCode)));
            CHECK(read_until(s, one_byte, 5s).bytes == "N");
            REQUIRE(s.send(startup_request(8, kSSLCode)));
            CHECK(read_until(s, one_byte, 5s).bytes == "N");
            REQUIRE(s.send(login_startup("md5user")));
            CHECK(finish_md5_login(s, "md5user", "md5pass") == "");
            CHECK(raw_query(s, "SELECT 'after GSSENCRequest and SSLRequest'") == "after GSSENCRequest and SSLRequest");
        }
        {
            // All three in one write: the answers come in order, then the
            // backend's authentication request.
            Sock s(port);
            REQUIRE(s.send(startup_request(8, kGSSCode) + startup_request(8, kSSLCode) + login_startup("md5user")));
            const Reply r = read_until(s, [](const std::string& b) { return b.size() >= 2 && has_frame(b.substr(2), 'R'); }, 10s);
            REQUIRE(r.bytes.size() >= 2);
            CHECK(r.bytes.substr(0, 2) == "NN");
            const auto frames = frames_of(r.bytes.substr(2));
            REQUIRE(frames.size() == 1);
            CHECK(frames[0].first == 'R');
            CHECK(get32(frames[0].second, 0) == 5);  // AuthenticationMD5Password
        }
        // PostgreSQL allows one negotiation of each kind: a second one is a
        // protocol violation, answered after the first 'N'.
        struct Case {
            std::string name, bytes, answers, message;
        };
        const std::vector<Case> cases = {
            {"SSLRequest twice", startup_request(8, kSSLCode) + startup_request(8, kSSLCode), "N", "duplicate SSLRequest during startup"},
            {"GSSENCRequest twice", startup_request(8, kGSSCode) + startup_request(8, kGSSCode), "N", "duplicate GSSENCRequest during startup"},
            {"SSL, GSS, SSL", startup_request(8, kSSLCode) + startup_request(8, kGSSCode) + startup_request(8, kSSLCode), "NN",
             "duplicate SSLRequest during startup"},
            {"SSLRequest of length 12", be32(12) + be32(kSSLCode) + be32(0), "",
             "invalid length of SSLRequest/GSSENCRequest packet"},
            {"GSSENCRequest of length 9", be32(9) + be32(kGSSCode) + "x", "",
             "invalid length of SSLRequest/GSSENCRequest packet"},
            {"SSLRequest, then protocol 2.0", startup_request(8, kSSLCode) + startup_request(8, 2u << 16), "N",
             "unsupported frontend protocol 2.0: pgrelay supports protocol 3.x only"},
            {"SSLRequest, then a StartupMessage without user", startup_request(8, kSSLCode) + startup_message({{"database", "postgres"}}),
             "N", "no PostgreSQL user name specified in startup packet"},
        };
        for (const auto& c : cases) {
            INFO(c.name);
            Sock s(port);
            REQUIRE(s.send(c.bytes));
            const Reply r = read_to_end(s, 5s);
            INFO("got " << summary(r.bytes.substr(std::min(r.bytes.size(), c.answers.size()))) << " ("
                        << to_string(r.end) << ")");
            CHECK(r.end == End::Eof);
            CHECK(r.bytes.substr(0, c.answers.size()) == c.answers);
            auto err = sole_error(r.bytes.substr(std::min(r.bytes.size(), c.answers.size())));
            REQUIRE(err);
            CHECK(err->sqlstate == (c.name.find("without user") != std::string::npos ? "28000" : "08P01"));
            CHECK(err->message == "pgrelay " + role + ": " + c.message);
        }
        {
            // SSLRequest, then gone before the 'N' is read.
            Sock s(port);
            REQUIRE(s.send(startup_request(8, kSSLCode)));
            s.reset();
        }
    }
    check_fds_back(relay, baseline);
    check_still_serving(cluster, relay);
}

TEST_CASE("garbage CancelRequests are closed and cancel nothing; the real key still works", "[hostile]") {
    auto& cluster = PgCluster::shared();
    Pgrelay relay(cluster);
    const int baseline = baseline_fds(relay);
    const double unknown_before = metric(relay, "pgrelay_cancel_requests_total{outcome=\"unknown_key\"}");
    const double forwarded_before = metric(relay, "pgrelay_cancel_requests_total{outcome=\"forwarded\"}");

    // The victim: a raw session (its BackendKeyData in hand) running a long query.
    Sock victim(relay.rw_port());
    REQUIRE(victim.send(login_startup("md5user")));
    Reply login;
    {
        Reply r = read_frame(victim, 'R', 10s);
        const auto frames = frames_of(r.bytes);
        REQUIRE(frames.size() == 1);
        REQUIRE(get32(frames[0].second, 0) == 5);
        REQUIRE(victim.send(md5_password_message("md5user", "md5pass", frames[0].second.substr(4, 4))));
        login = read_frame(victim, 'Z', 10s);
    }
    uint32_t pid = 0, secret = 0;
    for (const auto& [t, body] : frames_of(login.bytes))
        if (t == 'K' && body.size() == 8) pid = get32(body, 0), secret = get32(body, 4);
    REQUIRE(pid != 0);
    const std::string sql = "SELECT pg_sleep(30) /* hostile cancel victim */";
    REQUIRE(victim.send(query_message(sql)));
    PgConn watch = pg_connect(cluster.direct(cluster.primary()));
    REQUIRE(watch.ok());
    const auto victim_running = [&] {
        return query_value(watch.conn, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = '" + sql +
                                           "'") == "1";
    };
    REQUIRE(eventually(victim_running, 10s));

    const uint64_t seed = std::random_device{}();
    INFO("seed " << seed);
    std::mt19937 rng(static_cast<uint32_t>(seed));
    struct Case {
        std::string name, bytes;
        const char* message;  // the 08P01 message, or nullptr: closed without a word
        bool unknown_key;     // counted as a well-formed cancel with an unknown key
    };
    const std::string bad_len = "invalid length of CancelRequest packet";
    std::vector<Case> cases = {
        {"length 12", garbage_cancel(12, pid, secret).substr(0, 12), bad_len.c_str(), false},
        // Protocol 3.2's longer secrets: well-formed, and matching nothing.
        {"length 20 (the victim's secret and 4 bytes more, as 3.2)", garbage_cancel(20, pid, secret) + be32(0), nullptr,
         true},
        {"length 268 (a 256-byte secret)", garbage_cancel(268, pid, secret) + std::string(252, '\x11'), nullptr, true},
        {"length 269 (a 257-byte secret)", garbage_cancel(269, pid, secret) + std::string(253, '\x11'), bad_len.c_str(),
         false},
        {"length 8, no key", garbage_cancel(8, pid, secret).substr(0, 8), bad_len.c_str(), false},
        {"random key", garbage_cancel(16, rng(), rng()), nullptr, true},
        {"all-zero key", garbage_cancel(16, 0, 0), nullptr, true},
        {"the victim's pid, secret + 1", garbage_cancel(16, pid, secret + 1), nullptr, true},
        {"the victim's pid, secret ^ 0x80000000", garbage_cancel(16, pid, secret ^ 0x80000000u), nullptr, true},
        {"the victim's secret, pid + 1", garbage_cancel(16, pid + 1, secret), nullptr, true},
        {"random key and 100 bytes after it", garbage_cancel(16, rng(), rng()) + std::string(100, '\x5a'), nullptr, true},
        {"random key and a StartupMessage after it", garbage_cancel(16, rng(), rng()) + login_startup("md5user"), nullptr,
         true},
        {"random key twice", garbage_cancel(16, rng(), rng()) + garbage_cancel(16, rng(), rng()), nullptr, true},
        {"half a CancelRequest, then EOF", garbage_cancel(16, pid, secret).substr(0, 11), nullptr, false},
    };
    int unknown_expected = 0;
    for (uint16_t port : {relay.rw_port(), relay.ro_port()}) {
        const std::string role = port == relay.rw_port() ? "rw" : "ro";
        for (const auto& c : cases) {
            INFO("port " << port << ": " << c.name);
            Sock s(port);
            REQUIRE(s.connected());
            REQUIRE(s.send(c.bytes));
            if (c.name.find("EOF") != std::string::npos) s.shutdown_write();
            const Reply r = read_to_end(s, 5s);
            INFO("got " << summary(r.bytes) << " (" << to_string(r.end) << ")");
            if (c.message) {
                CHECK(r.end == End::Eof);
                auto err = sole_error(r.bytes);
                REQUIRE(err);
                CHECK(err->sqlstate == "08P01");
                CHECK(err->message == "pgrelay " + role + ": " + c.message);
            } else {
                // As PostgreSQL: no answer, just the close. Bytes sent after
                // the request are left unread, so the close may be a reset.
                CHECK(r.bytes.empty());
                CHECK(r.end != End::Timeout);
            }
            if (c.unknown_key) ++unknown_expected;
        }
    }
    // A burst of random keys in parallel, some dropped with a reset at once.
    {
        std::vector<Sock> burst;
        for (int i = 0; i < 200; ++i) {
            burst.emplace_back(i % 2 ? relay.ro_port() : relay.rw_port());
            REQUIRE(burst.back().send(garbage_cancel(16, rng(), rng())));
            if (i % 4 == 0) burst.back().reset();
        }
        const auto replies = read_all_to_end(burst, 10s);
        int silent = 0;
        for (size_t i = 0; i < replies.size(); ++i)
            if (i % 4 == 0 || (replies[i].bytes.empty() && replies[i].end == End::Eof)) ++silent;
        CHECK(silent == 200);
    }

    // The victim's query ran on, untouched: no byte came back, still active.
    const Reply quiet = read_until(victim, [](const std::string&) { return true; }, 500ms);
    INFO("victim got " << summary(quiet.bytes));
    CHECK(quiet.end == End::Timeout);
    CHECK(victim_running());
    // Exactly the well-formed ones were looked up and found unknown (the
    // burst's resets may close before pgrelay reads them).
    const double unknown_after = metric(relay, "pgrelay_cancel_requests_total{outcome=\"unknown_key\"}");
    CHECK(unknown_after - unknown_before >= unknown_expected + 150);
    CHECK(unknown_after - unknown_before <= unknown_expected + 200);
    CHECK(metric(relay, "pgrelay_cancel_requests_total{outcome=\"forwarded\"}") == forwarded_before);

    // The real key, sent to the other port, still cancels it.
    {
        Sock c(relay.ro_port());
        REQUIRE(c.send(garbage_cancel(16, pid, secret)));
        const Reply r = read_to_end(c, 5s);
        CHECK(r.bytes.empty());
        CHECK(r.end == End::Eof);
    }
    // Up to the ReadyForQuery (read_frame stops at the ErrorResponse, and the
    // two may arrive in separate reads).
    const Reply cancelled = read_until(victim, [](const std::string& b) { return has_frame(b, 'Z'); }, 10s);
    auto err = first_error(cancelled.bytes);
    REQUIRE(err);
    CHECK(err->sqlstate == "57014");
    CHECK(raw_query(victim, "SELECT 'victim lives'") == "victim lives");
    victim.close();
    check_fds_back(relay, baseline);
    check_still_serving(cluster, relay);
}

namespace {

// One connection of the storm: where in the startup it vanishes, and how.
struct Plan {
    enum Kind {
        Silent,            // connects, sends nothing
        PartialStartup,    // k bytes of a StartupMessage
        StartupNoRead,     // the whole StartupMessage, gone before any answer
        AfterAuthRequest,  // reads the authentication request, gone
        PartialPassword,   // k bytes of the password (md5) or SASLInitialResponse (SCRAM)
        AfterLogin,        // logs in (md5), then one of four endings
        SslThenPartial,    // SSLRequest, 'N', k bytes of a StartupMessage
        RandomCancel,      // CancelRequest with a random key
        WrongPassword,     // md5 with a wrong password: 28P01
        kKinds
    };
    Kind kind = Silent;
    bool ro = false;
    bool reset = false;  // SO_LINGER 0: RST instead of FIN
    bool scram = false;  // scramuser instead of md5user
    uint32_t k = 0;      // a cut point or sub-choice, reduced per kind
    uint32_t pid = 0, secret = 0;

    std::string describe() const {
        static const char* names[] = {"silent",         "partial startup", "startup, no read", "after auth request",
                                      "partial password", "after login",   "SSL then partial", "random cancel",
                                      "wrong password"};
        return std::string(names[kind]) + (ro ? " ro" : " rw") + (scram ? " scram" : " md5") + " k=" + std::to_string(k) +
               (reset ? " RST" : " FIN");
    }
};

// Runs one plan; empty when pgrelay answered as expected up to the drop.
std::string run_plan(const Plan& p, uint16_t port) {
    Sock s(port);
    if (!s.connected()) return "connect failed";
    const std::string user = p.scram ? "scramuser" : "md5user";
    const std::string startup = login_startup(user);
    const auto drop = [&] {
        if (p.reset) s.reset();
        else s.close();
    };
    std::string problem;
    const auto auth_request = [&](uint32_t want) -> std::string {
        const Reply r = read_frame(s, 'R', 10s);
        const auto frames = frames_of(r.bytes);
        if (frames.size() != 1 || frames[0].first != 'R' || get32(frames[0].second, 0) != want) {
            problem = "expected AuthenticationRequest " + std::to_string(want) + ", got " + summary(r.bytes) + " (" +
                      to_string(r.end) + ")";
            return {};
        }
        return frames[0].second;
    };
    switch (p.kind) {
        case Plan::Silent: break;
        case Plan::PartialStartup:
            if (!s.send(startup.substr(0, 1 + p.k % (startup.size() - 1)))) problem = "send failed";
            break;
        case Plan::StartupNoRead:
            if (!s.send(startup)) problem = "send failed";
            break;
        case Plan::AfterAuthRequest:
            if (!s.send(startup)) return "send failed";
            auth_request(p.scram ? 10 : 5);
            break;
        case Plan::PartialPassword: {
            if (!s.send(startup)) return "send failed";
            const std::string req = auth_request(p.scram ? 10 : 5);
            if (req.empty()) break;
            const std::string msg =
                p.scram ? sasl_initial_response() : md5_password_message(user, "md5pass", req.substr(4, 4));
            if (!s.send(msg.substr(0, 1 + p.k % (msg.size() - 1)))) problem = "send failed";
            break;
        }
        case Plan::AfterLogin: {
            if (!s.send(login_startup("md5user"))) return "send failed";
            problem = finish_md5_login(s, "md5user", "md5pass");
            if (!problem.empty()) break;
            const std::string q = query_message("SELECT 'storm'");
            switch (p.k % 4) {
                case 0: break;  // gone while idle, without Terminate
                case 1: s.send(q); break;  // gone with a query in flight
                case 2: s.send(q.substr(0, 3 + p.k % (q.size() - 3))); break;  // gone mid-message
                case 3:  // a clean session: query, Terminate, EOF
                    if (raw_query(s, "SELECT 'storm'") != "storm") problem = "query failed";
                    else if (s.send(std::string("X") + be32(4))) {
                        const Reply r = read_to_end(s, 10s);
                        if (r.end != End::Eof || !r.bytes.empty())
                            problem = "after Terminate: " + summary(r.bytes) + " (" + to_string(r.end) + ")";
                    }
                    break;
            }
            break;
        }
        case Plan::SslThenPartial: {
            if (!s.send(startup_request(8, kSSLCode))) return "send failed";
            const Reply n = read_until(s, [](const std::string& b) { return !b.empty(); }, 10s);
            if (n.bytes != "N") {
                problem = "expected N, got " + summary(n.bytes) + " (" + to_string(n.end) + ")";
                break;
            }
            if (!s.send(startup.substr(0, p.k % startup.size()))) problem = "send failed";
            break;
        }
        case Plan::RandomCancel:
            if (!s.send(garbage_cancel(16, p.pid, p.secret) + std::string(p.k % 3 == 2 ? 64 : 0, '\x01')))
                return "send failed";
            if (p.k % 3 != 0) {
                const Reply r = read_to_end(s, 10s);
                if (!r.bytes.empty() || r.end == End::Timeout)
                    problem = "cancel answered " + summary(r.bytes) + " (" + to_string(r.end) + ")";
            }
            break;
        case Plan::WrongPassword: {
            if (!s.send(login_startup("md5user"))) return "send failed";
            const std::string req = auth_request(5);
            if (req.empty()) break;
            if (!s.send(md5_password_message("md5user", "not-the-password", req.substr(4, 4)))) return "send failed";
            const Reply r = read_to_end(s, 10s);
            auto err = sole_error(r.bytes);
            if (!err || err->sqlstate != "28P01" || r.end != End::Eof)
                problem = "expected 28P01, got " + summary(r.bytes) + " (" + to_string(r.end) + ")";
            break;
        }
        case Plan::kKinds: break;
    }
    drop();
    return problem;
}

}  // namespace

TEST_CASE("1000 connections dropped at random points of the startup leave pgrelay serving, descriptors at baseline",
          "[hostile]") {
    auto& cluster = PgCluster::shared();
    Pgrelay relay(cluster);
    const int baseline = baseline_fds(relay);

    uint64_t seed = std::random_device{}();
    if (const char* env = std::getenv("PGRELAY_HOSTILE_SEED")) seed = std::strtoull(env, nullptr, 10);
    WARN("storm seed " << seed << " (rerun with PGRELAY_HOSTILE_SEED=" << seed << ")");
    INFO("storm seed " << seed);
    std::mt19937_64 rng(seed);
    constexpr int kConnections = 1000;
    std::vector<Plan> plans(kConnections);
    for (auto& p : plans) {
        p.kind = static_cast<Plan::Kind>(rng() % Plan::kKinds);
        p.ro = rng() % 2;
        p.reset = rng() % 2;
        p.scram = rng() % 2;
        p.k = static_cast<uint32_t>(rng());
        p.pid = static_cast<uint32_t>(rng());
        p.secret = static_cast<uint32_t>(rng());
    }

    // 16 clients at a time, each taking the next plan; no new connection
    // after 120 s whatever happens.
    std::atomic<int> next{0}, done{0};
    std::mutex mu;
    std::vector<std::string> failures;
    const auto stop_at = Clock::now() + 120s;
    const auto t0 = Clock::now();
    std::vector<std::thread> workers;
    for (int w = 0; w < 16; ++w)
        workers.emplace_back([&] {
            for (int i = next++; i < kConnections && Clock::now() < stop_at; i = next++) {
                const std::string problem = run_plan(plans[size_t(i)], plans[size_t(i)].ro ? relay.ro_port() : relay.rw_port());
                ++done;
                if (!problem.empty()) {
                    std::lock_guard lock(mu);
                    failures.push_back("#" + std::to_string(i) + " (" + plans[size_t(i)].describe() + "): " + problem);
                }
            }
        });
    for (auto& t : workers) t.join();
    // The storm reached the backends: every plan that read an authentication
    // request had a backend session opened for it.
    const std::string log = relay.log();
    const size_t backends = count_of(log, ") connected");
    const size_t need_backend = size_t(std::count_if(plans.begin(), plans.end(), [](const Plan& p) {
        return p.kind == Plan::AfterAuthRequest || p.kind == Plan::PartialPassword || p.kind == Plan::AfterLogin ||
               p.kind == Plan::WrongPassword;
    }));
    WARN("storm: " << done << " connections in " << std::chrono::duration<double>(Clock::now() - t0).count() << " s; "
                   << backends << " backend sessions opened (" << need_backend << " plans needed one), "
                   << count_of(log, "connection ended during startup") << " ended during startup, "
                   << count_of(log, "cancel request with unknown key ignored") << " unknown cancel keys");
    CHECK(done == kConnections);
    CHECK(backends >= need_backend);
    std::sort(failures.begin(), failures.end());
    for (size_t i = 0; i < failures.size() && i < 10; ++i) UNSCOPED_INFO(failures[i]);
    CHECK(failures.empty());

    // Every session ended: none counted open, no backend left behind.
    double rw_open = -1, ro_open = -1;
    const bool sessions_ended = eventually(
        [&] {
            rw_open = metric(relay, "pgrelay_client_connections{port=\"rw\"}");
            ro_open = metric(relay, "pgrelay_client_connections{port=\"ro\"}");
            return rw_open == 0 && ro_open == 0;
        },
        20s);
    {
        INFO("open client connections: rw " << rw_open << ", ro " << ro_open);
        CHECK(sessions_ended);
    }
    for (const auto& n : cluster.nodes()) {
        PgConn watch = pg_connect(cluster.direct(n));
        REQUIRE(watch.ok());
        std::string left;
        const bool none_left = eventually(
            [&] {
                left = query_value(watch.conn,
                                   "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid "
                                   "<> pg_backend_pid()");
                return left == "0";
            },
            20s);
        INFO("node " << n.name << ": " << left << " client backends left");
        CHECK(none_left);
    }
    check_fds_back(relay, baseline);
    check_still_serving(cluster, relay);
    check_fds_back(relay, baseline);
}

TEST_CASE("a flood beyond pgrelay's descriptor limit: accept backs off, every client still gets 08P01, pgrelay recovers",
          "[hostile]") {
    auto& cluster = PgCluster::shared();
    Pgrelay relay(cluster, with_startup_timeout("1s"));
    const int baseline = baseline_fds(relay);
    // Room for 40 more descriptors, then 150 half-open clients: most wait in
    // the listen backlog while pgrelay's accepts fail with EMFILE, and are
    // accepted (and timed out) as earlier ones free their descriptor.
    const int pid = pgrelay_pid();
    REQUIRE(pid > 0);
    rlimit lim{};
    REQUIRE(prlimit(pid, RLIMIT_NOFILE, nullptr, &lim) == 0);
    lim.rlim_cur = rlim_t(baseline + 40);
    REQUIRE(prlimit(pid, RLIMIT_NOFILE, &lim, nullptr) == 0);
    constexpr int kFlood = 150;
    std::vector<Sock> socks;
    for (int i = 0; i < kFlood; ++i) {
        socks.emplace_back(i % 2 ? relay.ro_port() : relay.rw_port());
        REQUIRE(socks.back().connected());
        if (i % 3 == 1) REQUIRE(socks.back().send(startup_request(8, kSSLCode)));
    }
    const auto replies = read_all_to_end(socks, 60s);
    std::vector<std::string> wrong;
    for (int i = 0; i < kFlood; ++i) {
        const Reply& r = replies[size_t(i)];
        const std::string answer = i % 3 == 1 ? "N" : "";
        const std::string role = i % 2 ? "ro" : "rw";
        auto err = sole_error(r.bytes.substr(std::min(r.bytes.size(), answer.size())));
        if (r.end != End::Eof || r.bytes.substr(0, answer.size()) != answer || !err || err->sqlstate != "08P01" ||
            err->message != "pgrelay " + role + ": startup packet not received in time")
            wrong.push_back("#" + std::to_string(i) + ": got " + summary(r.bytes) + " (" + to_string(r.end) + ")");
    }
    INFO(wrong.size() << " of " << kFlood << " wrong; first: " << (wrong.empty() ? "" : wrong[0]));
    CHECK(wrong.empty());
    socks.clear();
    std::string log = relay.log();
    CHECK_THAT(log, Catch::Contains("accept failed: Too many open files"));
    CHECK(count_of(log, "startup not completed within 1000 ms") == size_t(kFlood));
    WARN("descriptor flood: " << count_of(log, "accept failed") << " failed accepts logged, "
                              << count_of(log, "marked stopped") << " members marked stopped by the health check");
    // Still at the low limit: the health check sees the members again (it
    // cannot open a socket while descriptors are out), then clients get in.
    CHECK(eventually(
        [&] {
            log = relay.log();
            return count_of(log, "marked stopped") == count_of(log, "is reachable again");
        },
        10s));
    check_fds_back(relay, baseline);
    check_still_serving(cluster, relay);
}
