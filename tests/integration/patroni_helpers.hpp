// What the Patroni suites (test_patroni.cpp, test_faults.cpp) share: client
// conninfo, where a fresh connection lands, a write loop that records every
// acknowledged write, and the check that none was lost or committed on a
// node that was not the leader at the time.
#pragma once

#include <catch2/catch.hpp>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "fixtures.hpp"

namespace pgrelay::test {

using namespace std::chrono_literals;

inline std::string user_conninfo(uint16_t port) {
    return "host=127.0.0.1 port=" + std::to_string(port) +
           " user=scramuser password=scrampass dbname=postgres connect_timeout=90 sslmode=disable";
}

// The server port a fresh connection with `conninfo` reaches, or "error ...".
inline std::string port_reached(const std::string& conninfo) {
    PgConn c = pg_connect(conninfo);
    if (!c.ok()) return "error " + c.sqlstate + ": " + c.error;
    try {
        return query_value(c.conn, "SELECT inet_server_port()");
    } catch (const std::exception& e) {
        return std::string("error ") + e.what();
    }
}
inline std::string port_via(uint16_t port) { return port_reached(user_conninfo(port)); }

inline std::string pg_port_of(const std::string& name) { return std::to_string(PatroniCluster::shared().node(name).pg_port); }

// Until the cluster has a leader with every other node streaming again.
inline void wait_healthy() { PatroniCluster::shared().run("wait --timeout 120", 150); }

// The writes a write loop got acknowledged: ids (from the first free one of
// its table) with the server port that committed them.
class AckedWrites {
public:
    int64_t first_id() const { return first_id_; }
    size_t acked() {
        std::lock_guard l(mu_);
        return acked_.size();
    }
    std::vector<std::pair<int64_t, std::string>> acked_rows() {
        std::lock_guard l(mu_);
        return acked_;
    }
    // Blocks until `n` more writes were acknowledged (bounded).
    bool wait_more(size_t n, std::chrono::seconds timeout) {
        const size_t target = acked() + n;
        return eventually([&] { return acked() >= target; }, timeout);
    }

protected:
    // Makes `table` if needed; ids start after its last one.
    void prepare(const std::string& conninfo, const std::string& table) {
        PgConn c = pg_connect(conninfo);
        REQUIRE(c.ok());
        exec(c.conn, "CREATE TABLE IF NOT EXISTS " + table +
                         "(id bigint PRIMARY KEY, port int NOT NULL DEFAULT inet_server_port(), "
                         "at timestamptz DEFAULT clock_timestamp())");
        next_ = first_id_ = std::stoll(query_value(c.conn, "SELECT coalesce(max(id), 0) + 1 FROM " + table));
    }
    std::atomic<int64_t> next_{1};
    int64_t first_id_ = 1;
    std::mutex mu_;
    std::vector<std::pair<int64_t, std::string>> acked_;
};

// Writes one row per round trip through rw, reconnecting on any error, and
// records what the client saw: acknowledged ids with the server port that
// committed them, and every SQLSTATE of a failure.
class Writer : public AckedWrites {
public:
    // Writes for at most `bound` (every loop here is bounded; a soak passes more).
    explicit Writer(uint16_t port, std::chrono::seconds bound = 600s) : port_(port), bound_(bound) {
        prepare(user_conninfo(port_), "failover_writes");
        thread_ = std::thread([this] { loop(); });
    }
    ~Writer() { stop(); }

    void stop() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }
    std::multiset<std::string> errors() {
        std::lock_guard l(mu_);
        return errors_;
    }
    double longest_outage_s() {
        std::lock_guard l(mu_);
        return longest_outage_;
    }

private:
    void loop() {
        const auto deadline = std::chrono::steady_clock::now() + bound_;  // bounded whatever happens
        PgConn c;
        std::chrono::steady_clock::time_point last_ok = std::chrono::steady_clock::now();
        bool in_outage = false;
        while (!stop_ && std::chrono::steady_clock::now() < deadline) {
            if (!c.ok()) {
                c = pg_connect(user_conninfo(port_));
                if (!c.ok()) {
                    note_error(c.sqlstate.empty() ? "connect:" + c.error.substr(0, 60) : c.sqlstate);
                    in_outage = true;
                    std::this_thread::sleep_for(20ms);
                    continue;
                }
            }
            const int64_t id = next_++;
            PGresult* res = PQexec(c.conn, ("INSERT INTO failover_writes(id) VALUES (" + std::to_string(id) +
                                            ") RETURNING port")
                                               .c_str());
            if (PQresultStatus(res) == PGRES_TUPLES_OK) {
                const std::string port = PQgetvalue(res, 0, 0);
                std::lock_guard l(mu_);
                acked_.emplace_back(id, port);
                const auto now = std::chrono::steady_clock::now();
                if (in_outage)
                    longest_outage_ = std::max(longest_outage_, std::chrono::duration<double>(now - last_ok).count());
                in_outage = false;
                last_ok = now;
            } else {
                const char* code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
                // libpq drops the SQLSTATE of an ErrorResponse that came just
                // before the connection closed; keep the message's first line.
                std::string msg = PQresultErrorMessage(res);
                msg = msg.substr(0, msg.find('\n'));
                note_error(code ? std::string(code) : "no-sqlstate: " + msg);
                in_outage = true;
                c = PgConn();  // reconnect through pgrelay
            }
            PQclear(res);
        }
    }
    void note_error(const std::string& e) {
        std::lock_guard l(mu_);
        errors_.insert(e);
    }

    uint16_t port_;
    std::chrono::seconds bound_;
    std::atomic<bool> stop_{false};
    std::thread thread_;
    std::multiset<std::string> errors_;
    double longest_outage_ = 0;
};

// Every acknowledged write is on `final_leader` with the port that committed
// it, and ports change only in the order of the leaders: no write committed
// on a node after a later leader took over.
inline void check_no_lost_writes(const std::vector<std::pair<int64_t, std::string>>& acked, int64_t first_id,
                          const std::string& final_leader, const std::vector<std::string>& leader_ports_in_order,
                          const std::string& table = "failover_writes") {
    PgConn d = pg_connect(PatroniCluster::shared().direct(final_leader));
    REQUIRE(d.ok());
    PGresult* res = PQexec(d.conn, ("SELECT id, port FROM " + table + " WHERE id >= " + std::to_string(first_id) +
                                    " ORDER BY id")
                                       .c_str());
    REQUIRE(PQresultStatus(res) == PGRES_TUPLES_OK);
    std::map<int64_t, std::string> stored;
    for (int i = 0; i < PQntuples(res); ++i) stored[std::stoll(PQgetvalue(res, i, 0))] = PQgetvalue(res, i, 1);
    PQclear(res);
    size_t missing = 0;
    for (const auto& [id, port] : acked) {
        auto it = stored.find(id);
        if (it == stored.end() || it->second != port) ++missing;
    }
    CHECK(missing == 0);
    INFO("acknowledged writes: " << acked.size());
    CHECK(acked.size() > 0);
    size_t stage = 0;
    for (const auto& [id, port] : stored) {
        while (stage < leader_ports_in_order.size() && leader_ports_in_order[stage] != port) ++stage;
        INFO("row " << id << " committed on port " << port);
        REQUIRE(stage < leader_ports_in_order.size());  // a port outside the leader sequence, or out of order
    }
}
inline void check_no_lost_writes(Writer& w, const std::string& final_leader,
                          const std::vector<std::string>& leader_ports_in_order) {
    check_no_lost_writes(w.acked_rows(), w.first_id(), final_leader, leader_ports_in_order);
}

// pgrelay's own view (/topology): rw routes to `name`.
inline bool routes_to(const Pgrelay& r, const std::string& name) {
    const auto [status, body] = r.http_get("/topology");
    return status == 200 && body.find("\"primary\":\"" + name + "\"") != std::string::npos;
}

// A switchover, then rw through `r` reaches the new leader.
inline void check_follows_switchover(const Pgrelay& r) {
    auto& cluster = PatroniCluster::shared();
    wait_healthy();
    const std::string old_leader = cluster.leader();
    REQUIRE(eventually([&] { return port_via(r.rw_port()) == pg_port_of(old_leader); }, 30s));
    const std::string out = cluster.run("switchover");
    const std::string new_leader = cluster.leader();
    INFO(out);
    REQUIRE(new_leader != old_leader);
    CHECK(eventually([&] { return port_via(r.rw_port()) == pg_port_of(new_leader); }, 30s));
}


// Milliseconds since midnight of the last log line saying rw now routes to `leader`.
inline std::optional<int64_t> reroute_ms(const Pgrelay& r, const std::string& leader) {
    const std::string log = r.log();
    const size_t at = log.rfind("topology: rw now routes to " + leader + " ");
    if (at == std::string::npos) return std::nullopt;
    const size_t line = log.rfind('\n', at);
    const std::string ts = log.substr(line == std::string::npos ? 0 : line + 1, 24);  // 2026-12-01T17:23:37.103Z
    std::smatch m;
    if (!std::regex_search(ts, m, std::regex(R"((\d\d):(\d\d):(\d\d)\.(\d\d\d))"))) return std::nullopt;
    return ((std::stoll(m[1]) * 60 + std::stoll(m[2])) * 60 + std::stoll(m[3])) * 1000 + std::stoll(m[4]);
}

// Reads through ro on one connection, reconnecting on errors; counts both.
class Reader {
public:
    explicit Reader(uint16_t port, std::chrono::seconds bound = 600s)
        : port_(port), bound_(bound), thread_([this] { loop(); }) {}
    ~Reader() { stop(); }
    void stop() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }
    size_t reads() const { return reads_; }
    size_t errors() const { return errors_; }

private:
    void loop() {
        const auto deadline = std::chrono::steady_clock::now() + bound_;  // bounded whatever happens
        PgConn c;
        while (!stop_ && std::chrono::steady_clock::now() < deadline) {
            if (!c.ok()) c = pg_connect(user_conninfo(port_));
            if (c.ok()) {
                try {
                    query_value(c.conn, "SELECT count(*) FROM pg_class");
                    ++reads_;
                } catch (const std::exception&) {
                    ++errors_;
                    c = PgConn();
                }
            } else {
                ++errors_;
            }
            std::this_thread::sleep_for(50ms);
        }
    }
    uint16_t port_;
    std::chrono::seconds bound_;
    std::atomic<bool> stop_{false};
    std::atomic<size_t> reads_{0}, errors_{0};
    std::thread thread_;
};

// One TcpForwarder in front of each DCS member.
struct Forwarders {
    std::vector<std::unique_ptr<TcpForwarder>> all;
    explicit Forwarders(const std::vector<uint16_t>& upstreams) {
        for (uint16_t p : upstreams) all.push_back(std::make_unique<TcpForwarder>(p));
    }
    std::vector<uint16_t> ports() const {
        std::vector<uint16_t> out;
        for (const auto& f : all) out.push_back(f->port());
        return out;
    }
    void blackhole() {
        for (auto& f : all) f->blackhole();
    }
    void heal() {
        for (auto& f : all) f->heal();
    }
    TcpForwarder& operator[](size_t i) { return *all.at(i); }
    // The member (0-based) pgrelay holds connections to, when exactly one.
    std::optional<size_t> used() const {
        std::optional<size_t> at;
        for (size_t i = 0; i < all.size(); ++i)
            if (all[i]->connections() > 0) {
                if (at) return std::nullopt;
                at = i;
            }
        return at;
    }
};

inline double seconds_since(std::chrono::steady_clock::time_point t) { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count(); }


}  // namespace pgrelay::test
