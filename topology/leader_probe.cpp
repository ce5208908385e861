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

}  // namespace

std::string probe_conninfo(const ProbeOptions& o, const std::string& host, uint16_t port) {
    return "host=" + conninfo_value(host) + " port=" + std::to_string(port) + " user=" + conninfo_value(o.user) +
           " password=" + conninfo_value(o.password) + " dbname=" + conninfo_value(o.dbname) +
           " connect_timeout=" + std::to_string(std::max<int64_t>(1, o.connect_timeout.count() / 1000)) +
           " application_name=pgrelay-probe sslmode=prefer"
           // A probe must never hang on a half-open connection: bound the
           // query and let TCP give up within seconds, not minutes.
           " options='-c statement_timeout=2000' tcp_user_timeout=3000"
           " keepalives=1 keepalives_idle=2 keepalives_interval=1 keepalives_count=2";
}

LeaderProbe::LeaderProbe(ProbeOptions opts, Report report) : opts_(std::move(opts)), report_(std::move(report)) {
    thread_ = std::thread([this] { run(); });
}

LeaderProbe::~LeaderProbe() { stop(); }

void LeaderProbe::stop() {
    {
        std::lock_guard lock(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
}

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
    PGconn* conn = nullptr;
    uint64_t gen = 0;
    std::string member, host;
    uint16_t port = 0;
    patroni::ProbeStatus last = patroni::ProbeStatus::Unknown;
    bool reported_once = false;
    steady_clock::time_point fast_until{};
    auto drop = [&] {
        if (conn) PQfinish(conn);
        conn = nullptr;
    };
    for (;;) {
        {
            std::unique_lock lock(mu_);
            if (stop_) break;
            if (gen != generation_) {
                gen = generation_;
                member = member_;
                host = host_;
                port = port_;
                drop();
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
        if (!conn || PQstatus(conn) != CONNECTION_OK) {
            drop();
            conn = PQconnectdb(probe_conninfo(opts_, host, port).c_str());
            if (PQstatus(conn) != CONNECTION_OK) {
                detail = trimmed_error(conn);
                drop();
            }
        }
        if (conn) {
            PGresult* res = PQexec(conn,
                                   "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN NULL "
                                   "ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint END");
            if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
                const bool writable = std::string(PQgetvalue(res, 0, 0)) == "f";
                status = writable ? patroni::ProbeStatus::Writable : patroni::ProbeStatus::InRecovery;
                if (writable && !PQgetisnull(res, 0, 1)) position = std::stoull(PQgetvalue(res, 0, 1));
            } else {
                detail = trimmed_error(conn);
                drop();
            }
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
        cv_.wait_for(lock, fast_now ? opts_.fast_interval : opts_.interval, [&] { return stop_ || gen != generation_; });
    }
    drop();
}

ReplayProbe::ReplayProbe(ProbeOptions opts, Report report) : opts_(std::move(opts)), report_(std::move(report)) {
    thread_ = std::thread([this] { run(); });
}

ReplayProbe::~ReplayProbe() { stop(); }

void ReplayProbe::stop() {
    {
        std::lock_guard lock(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
}

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
    std::map<std::string, std::pair<Target, PGconn*>> conns;  // member -> (target, connection)
    auto drop = [](PGconn*& c) {
        if (c) PQfinish(c);
        c = nullptr;
    };
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
            if (!keep) drop(it->second.second);
            it = keep ? std::next(it) : conns.erase(it);
        }
        for (const Target& t : targets) {
            auto& [target, conn] = conns[t.member];
            target = t;
            std::optional<uint64_t> replayed;
            if (!conn || PQstatus(conn) != CONNECTION_OK) {
                drop(conn);
                conn = PQconnectdb(probe_conninfo(opts_, t.host, t.port).c_str());
                if (PQstatus(conn) != CONNECTION_OK) drop(conn);
            }
            if (conn) {
                PGresult* res = PQexec(conn, "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint");
                if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
                    if (!PQgetisnull(res, 0, 0)) replayed = std::stoull(PQgetvalue(res, 0, 0));
                } else {
                    drop(conn);
                }
                PQclear(res);
            }
            report_(t.member, replayed);
        }
        std::unique_lock lock(mu_);
        cv_.wait_for(lock, opts_.interval, [&] { return stop_ || gen != generation_; });
    }
    for (auto& [name, tc] : conns) drop(tc.second);
}

}  // namespace pgrelay::topology
