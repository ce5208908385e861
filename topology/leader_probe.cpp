// LeaderProbe (leader_probe.hpp). One persistent libpq connection to the
// current leader, re-made on failure; in the fast window after a leader change
// it polls every few ms so rw routing flips the moment promotion completes.
#include "topology/leader_probe.hpp"

#include <libpq-fe.h>

#include <algorithm>

#include "proxy/log.hpp"

namespace pgrelay::topology {

using std::chrono::steady_clock;

namespace {

std::string conninfo_value(const std::string& v) {
    std::string out = "'";
    for (char c : v) {
        if (c == '\'' || c == '\\') out.push_back('\\');
        out.push_back(c);
    }
    return out + "'";
}

std::string trimmed_error(PGconn* c) {
    std::string e = PQerrorMessage(c);
    while (!e.empty() && (e.back() == '\n' || e.back() == ' ')) e.pop_back();
    return e;
}

// A persistent probe connection: query() connects when needed, and any
// failure drops the connection so the next query starts afresh.
class ProbeConnection {
public:
    ProbeConnection() = default;
    ProbeConnection(const ProbeConnection&) = delete;
    ProbeConnection& operator=(const ProbeConnection&) = delete;
    ~ProbeConnection() { drop(); }

    void drop() {
        if (conn_) PQfinish(conn_);
        conn_ = nullptr;
    }

    // Runs `sql`, which returns one row. Returns the result (PQclear it) or
    // nullptr with `error` set.
    PGresult* query(const ProbeOptions& o, const std::string& host, uint16_t port, const char* sql, std::string& error) {
        if (!conn_ || PQstatus(conn_) != CONNECTION_OK) {
            drop();
            conn_ = PQconnectdb(probe_conninfo(o, host, port).c_str());
            if (PQstatus(conn_) != CONNECTION_OK) {
                error = trimmed_error(conn_);
                drop();
                return nullptr;
            }
        }
        PGresult* res = PQexec(conn_, sql);
        if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) return res;
        error = trimmed_error(conn_);
        PQclear(res);
        drop();
        return nullptr;
    }

private:
    PGconn* conn_ = nullptr;
};

}  // namespace

void ProbeThread::stop() {
    {
        std::lock_guard lock(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
}

std::string probe_conninfo(const ProbeOptions& o, const std::string& host, uint16_t port) {
    return "host=" + conninfo_value(host) + " port=" + std::to_string(port) + " user=" + conninfo_value(o.user) +
           " password=" + conninfo_value(o.password) + " dbname=" + conninfo_value(o.dbname) +
           " connect_timeout=" + std::to_string(std::max<int64_t>(1, o.connect_timeout.count() / 1000)) +
           " application_name=pgrelay-probe sslmode=" + conninfo_value(o.sslmode) +
           (o.sslrootcert.empty() ? std::string() : " sslrootcert=" + conninfo_value(o.sslrootcert)) +
           // A probe must never hang on a half-open connection: bound the
           // query and let TCP give up within seconds, not minutes.
           " options='-c statement_timeout=2000' tcp_user_timeout=3000"
           " keepalives=1 keepalives_idle=2 keepalives_interval=1 keepalives_count=2";
}

LeaderProbe::LeaderProbe(ProbeOptions opts, Report report) : ProbeThread(std::move(opts)), report_(std::move(report)) {
    start();
}

LeaderProbe::~LeaderProbe() { stop(); }

void LeaderProbe::set_target(const std::string& member, const std::string& host, uint16_t port) {
    {
        std::lock_guard lock(mu_);
        if (member == member_ && host == host_ && port == port_) return;
        member_ = member;
        host_ = host;
        port_ = port;
        ++generation_;
    }
    cv_.notify_all();
}

void LeaderProbe::clear_target() { set_target("", "", 0); }

void LeaderProbe::run() {
    ProbeConnection conn;
    uint64_t gen = 0;
    std::string member, host;
    uint16_t port = 0;
    patroni::ProbeStatus last = patroni::ProbeStatus::Unknown;
    bool reported_once = false;
    steady_clock::time_point fast_until{};
    for (;;) {
        {
            std::unique_lock lock(mu_);
            if (stop_) break;
            if (gen != generation_) {
                gen = generation_;
                member = member_;
                host = host_;
                port = port_;
                conn.drop();
                last = patroni::ProbeStatus::Unknown;
                reported_once = false;
                fast_until = steady_clock::now() + opts_.fast_window;
            }
            if (member.empty()) {
                cv_.wait(lock, [&] { return stop_ || gen != generation_; });
                continue;
            }
        }

        patroni::ProbeStatus status = patroni::ProbeStatus::Unreachable;
        std::optional<uint64_t> position;
        std::string detail;
        if (PGresult* res = conn.query(opts_, host, port,
                                       "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN NULL "
                                       "ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint END",
                                       detail)) {
            const bool writable = std::string(PQgetvalue(res, 0, 0)) == "f";
            status = writable ? patroni::ProbeStatus::Writable : patroni::ProbeStatus::InRecovery;
            if (writable && !PQgetisnull(res, 0, 1)) position = std::stoull(PQgetvalue(res, 0, 1));
            PQclear(res);
        }

        const bool fast_now = status != patroni::ProbeStatus::Writable && steady_clock::now() < fast_until;
        bool report = false;
        {
            std::lock_guard lock(mu_);
            // Every verdict change at once; in steady state also the WAL
            // position once per interval (lag-aware routing uses it).
            report = gen == generation_ && (!reported_once || status != last || !fast_now);
        }
        if (report) {
            last = status;
            reported_once = true;
            report_(member, status, position, detail);
        }

        std::unique_lock lock(mu_);
        pause(lock, fast_now ? opts_.fast_interval : opts_.interval, gen);
    }
}

ReplayProbe::ReplayProbe(ProbeOptions opts, Report report) : ProbeThread(std::move(opts)), report_(std::move(report)) {
    start();
}

ReplayProbe::~ReplayProbe() { stop(); }

void ReplayProbe::set_targets(std::vector<Target> targets) {
    {
        std::lock_guard lock(mu_);
        if (targets == targets_) return;
        targets_ = std::move(targets);
        ++generation_;
    }
    cv_.notify_all();
}

void ReplayProbe::run() {
    std::map<std::string, std::pair<Target, ProbeConnection>> conns;  // member -> (target, connection)
    uint64_t gen = UINT64_MAX;
    std::vector<Target> targets;
    for (;;) {
        {
            std::unique_lock lock(mu_);
            if (stop_) break;
            if (gen != generation_) {
                gen = generation_;
                targets = targets_;
            }
        }
        // Close connections to members no longer probed (or moved).
        for (auto it = conns.begin(); it != conns.end();) {
            const bool keep = std::find(targets.begin(), targets.end(), it->second.first) != targets.end();
            it = keep ? std::next(it) : conns.erase(it);
        }
        for (const Target& t : targets) {
            auto& [target, conn] = conns[t.member];
            target = t;
            std::optional<uint64_t> replayed;
            std::string error;
            bool reachable = true;
            if (PGresult* res = conn.query(opts_, t.host, t.port,
                                           "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint", error)) {
                if (!PQgetisnull(res, 0, 0)) replayed = std::stoull(PQgetvalue(res, 0, 0));
                PQclear(res);
            } else {
                // libpq reports what the server said as "FATAL: ..."; anything
                // else (refused, timeout expired, no answer) never reached it.
                reachable = error.find("FATAL") != std::string::npos;
            }
            report_(t.member, replayed, reachable);
        }
        std::unique_lock lock(mu_);
        pause(lock, opts_.interval, gen);
    }
}

}  // namespace pgrelay::topology
