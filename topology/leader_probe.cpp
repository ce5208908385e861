// LeaderProbe (leader_probe.hpp). One persistent libpq connection to the
// current leader, re-made on failure; in the fast window after a leader change
// it polls every few ms so rw routing flips the moment promotion completes.
#include "topology/leader_probe.hpp"

#include <libpq-fe.h>

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

}  // namespace

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
        std::string detail;
        if (!conn || PQstatus(conn) != CONNECTION_OK) {
            drop();
            const std::string ci = "host=" + conninfo_value(host) + " port=" + std::to_string(port) +
                                   " user=" + conninfo_value(opts_.user) + " password=" + conninfo_value(opts_.password) +
                                   " dbname=" + conninfo_value(opts_.dbname) + " connect_timeout=" +
                                   std::to_string(std::max<int64_t>(1, opts_.connect_timeout.count() / 1000)) +
                                   " application_name=pgrelay-probe sslmode=prefer";
            conn = PQconnectdb(ci.c_str());
            if (PQstatus(conn) != CONNECTION_OK) {
                detail = PQerrorMessage(conn);
                while (!detail.empty() && detail.back() == '\n') detail.pop_back();
                drop();
            }
        }
        if (conn) {
            PGresult* res = PQexec(conn, "SELECT pg_is_in_recovery()");
            if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
                status = std::string(PQgetvalue(res, 0, 0)) == "f" ? patroni::ProbeStatus::Writable
                                                                    : patroni::ProbeStatus::InRecovery;
            } else {
                detail = PQerrorMessage(conn);
                while (!detail.empty() && detail.back() == '\n') detail.pop_back();
                drop();
            }
            PQclear(res);
        }

        bool changed = false;
        {
            std::lock_guard lock(mu_);
            changed = gen == generation_ && (!reported_once || status != last);
        }
        if (changed) {
            last = status;
            reported_once = true;
            report_(member, status, detail);
        }

        const bool fast = status != patroni::ProbeStatus::Writable && steady_clock::now() < fast_until;
        std::unique_lock lock(mu_);
        cv_.wait_for(lock, fast ? opts_.fast_interval : opts_.interval, [&] { return stop_ || gen != generation_; });
    }
    drop();
}

}  // namespace pgrelay::topology
