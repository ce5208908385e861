// The admin console (admin_console.hpp).
#include "proxy/admin_console.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <vector>

#include "protocol/encode.hpp"
#include "protocol/messages.hpp"
#include "protocol/pooling.hpp"
#include "proxy/log.hpp"
#include "proxy/pool.hpp"

namespace pgrelay {

namespace {


// A result set of text columns (type text, OID 25).
class Table {
public:
    explicit Table(std::vector<std::string> columns) : columns_(std::move(columns)) {}
    void row(std::vector<std::string> values) { rows_.push_back(std::move(values)); }
    void encode(std::string& out, std::string_view tag) const {
        const size_t start = protocol::begin_message(out, 'T');
        protocol::append_u16(out, static_cast<uint16_t>(columns_.size()));
        for (const auto& c : columns_) {
            out += c;
            out.push_back('\0');
            protocol::append_u32(out, 0);  // table OID
            protocol::append_u16(out, 0);  // column number
            protocol::append_u32(out, 25);  // text
            protocol::append_u16(out, 0xffff);  // typlen -1
            protocol::append_u32(out, 0xffffffff);  // typmod -1
            protocol::append_u16(out, 0);  // text format
        }
        protocol::end_message(out, start);
        for (const auto& r : rows_) {
            const size_t at = protocol::begin_message(out, 'D');
            protocol::append_u16(out, static_cast<uint16_t>(r.size()));
            for (const auto& v : r) {
                protocol::append_u32(out, static_cast<uint32_t>(v.size()));
                out += v;
            }
            protocol::end_message(out, at);
        }
        const std::string cc = std::string(tag) + " " + std::to_string(rows_.size());
        out.push_back('C');
        protocol::append_u32(out, static_cast<uint32_t>(4 + cc.size() + 1));
        out += cc;
        out.push_back('\0');
    }

private:
    std::vector<std::string> columns_;
    std::vector<std::vector<std::string>> rows_;
};

std::string secs(double s) { return fmt::format("{:.1f}", s); }

// "show  Pools ;" -> "SHOW POOLS"
std::string normalize(std::string_view sql) {
    std::string out;
    bool space = false;
    for (char c : sql) {
        if (c == ';') break;
        if (std::isspace(static_cast<unsigned char>(c))) {
            space = !out.empty();
            continue;
        }
        if (space) out.push_back(' ');
        space = false;
        out.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
    }
    return out;
}

void show_pools(std::string& out, const PoolManager& pools) {
    Table t({"port", "mode", "member", "database", "user", "pool_size", "clients", "clients_active", "clients_waiting",
             "servers_active", "servers_idle", "servers_opening"});
    for (const auto& [k, p] : pools.pools())
        t.row({to_string(k.role), to_string(pools.config(k.role).mode), k.member, k.database, k.user,
               std::to_string(pools.config(k.role).pool_size), std::to_string(p->clients), std::to_string(p->active_count()),
               std::to_string(p->waiting_count()), std::to_string(p->active_count()), std::to_string(p->idle_count()),
               std::to_string(p->opening_count())});
    t.encode(out, "SHOW");
}

void show_stats(std::string& out, const PoolManager& pools) {
    Table t({"port", "member", "database", "user", "acquired_total", "wait_timeouts_total", "wait_seconds_total",
             "servers_opened_total", "servers_closed_total"});
    for (const auto& [k, p] : pools.pools())
        t.row({to_string(k.role), k.member, k.database, k.user, std::to_string(p->acquired), std::to_string(p->wait_timeouts),
               fmt::format("{:.3f}", p->wait_seconds_total), std::to_string(p->servers_opened),
               std::to_string(p->servers_closed)});
    t.encode(out, "SHOW");
}

void show_clients(std::string& out, const WorkerShared& shared) {
    Table t({"port", "peer", "user", "database", "state", "member", "server_id", "connected_seconds"});
    for (const SessionHandle* s : shared.sessions) {
        ClientInfo c;
        if (!s->client_info(c)) continue;
        t.row({to_string(s->role), c.peer, c.user, c.database, c.state, c.member,
               c.server_id ? std::to_string(c.server_id) : std::string(), secs(c.connected_seconds)});
    }
    t.encode(out, "SHOW");
}

void show_servers(std::string& out, const WorkerShared& shared, PoolManager& pools) {
    Table t({"id", "port", "member", "database", "user", "state", "backend_pid", "age_seconds", "idle_seconds", "client"});
    const auto now = std::chrono::steady_clock::now();
    for (const SessionHandle* s : shared.sessions) {
        ClientInfo c;
        if (!s->client_info(c) || !c.server_id) continue;
        t.row({std::to_string(c.server_id), to_string(s->role), c.member, c.database, c.user, "active",
               std::to_string(c.server_pid), secs(c.server_age_seconds), "0.0", c.peer});
    }
    for (const auto& [k, p] : pools.pools()) {
        for (const ServerConn* sc : p->idle_list())
            t.row({std::to_string(sc->id), to_string(k.role), k.member, k.database, k.user, "idle",
                   std::to_string(sc->backend_key().pid),
                   secs(std::chrono::duration<double>(now - sc->created).count()),
                   secs(std::chrono::duration<double>(now - sc->idle_since).count()), ""});
    }
    t.encode(out, "SHOW");
}

std::string ms(std::chrono::milliseconds d) { return std::to_string(d.count()) + "ms"; }

void show_config(std::string& out, const Config& c) {
    Table t({"key", "value"});
    t.row({"config_file", c.path});
    t.row({"threads", std::to_string(c.effective_threads())});
    t.row({"connect_timeout", ms(c.connect_timeout)});
    t.row({"hold_timeout", ms(c.hold_timeout)});
    t.row({"switchover_hold", ms(c.switchover_hold)});
    t.row({"topology.source", c.topology_source});
    for (const PortRole r : {PortRole::ReadWrite, PortRole::ReadOnly}) {
        const PoolConfig& p = c.pool(r);
        const std::string pre = std::string("pool.") + to_string(r) + ".";
        t.row({pre + "pool_mode", to_string(p.mode)});
        t.row({pre + "pool_size", std::to_string(p.pool_size)});
        t.row({pre + "min_pool_size", std::to_string(p.min_pool_size)});
        t.row({pre + "max_db_connections", std::to_string(p.max_db_connections)});
        t.row({pre + "server_lifetime", ms(p.server_lifetime)});
        t.row({pre + "server_idle_timeout", ms(p.server_idle_timeout)});
        t.row({pre + "query_wait_timeout", ms(p.query_wait_timeout)});
        t.row({pre + "server_reset_query", p.server_reset_query});
        t.row({pre + "auth_file", p.auth_file});
        t.row({pre + "auth_user", p.auth_user});
        t.row({pre + "auth_query", p.auth_query});
        std::string admins;
        for (const auto& a : p.admin_users) admins += (admins.empty() ? "" : ",") + a;
        t.row({pre + "admin_users", admins});
    }
    t.encode(out, "SHOW");
}

}  // namespace

std::string admin_console_command(std::string_view sql) { return normalize(sql); }

std::string admin_console_answer(std::string_view sql, WorkerShared& shared) {
    std::string out;
    const std::string cmd = normalize(sql);
    auto done = [&](std::string_view tag) {
        protocol::append_message(out, 'C', [&](std::string& o) {
            o.append(tag);
            o.push_back('\0');
        });
    };
    if (cmd == "SHOW POOLS") show_pools(out, *shared.pools);
    else if (cmd == "SHOW STATS") show_stats(out, *shared.pools);
    else if (cmd == "SHOW CLIENTS") show_clients(out, shared);
    else if (cmd == "SHOW SERVERS") show_servers(out, shared, *shared.pools);
    else if (cmd == "SHOW CONFIG") show_config(out, *shared.config);
    else if (cmd == "PAUSE") {
        const size_t busy = shared.pools->servers_in_use();
        if (!shared.pools->paused()) {
            protocol::encode_error_response(out, protocol::Severity::Error, "55000",
                                            "pgrelay admin console: resumed before PAUSE completed");
        } else if (busy > 0) {
            protocol::encode_error_response(out, protocol::Severity::Error, "55000",
                                            "pgrelay admin console: paused, but " + std::to_string(busy) +
                                                " server connections are still in use after 5 minutes");
        } else {
            done("PAUSE");
        }
    } else if (cmd == "RESUME") {
        shared.pools->resume();
        log::info("admin console: RESUME");
        shared.topology_changed->cancel();  // wakes the held clients
        done("RESUME");
    } else if (cmd == "RECONNECT") {
        shared.pools->reconnect();
        log::info("admin console: RECONNECT (every server connection closes once not in use)");
        done("RECONNECT");
    } else if (cmd == "SHOW HELP" || cmd.empty()) {
        Table t({"command"});
        for (const char* c : {"SHOW POOLS", "SHOW CLIENTS", "SHOW SERVERS", "SHOW STATS", "SHOW CONFIG", "SHOW HELP", "PAUSE",
                              "RESUME", "RECONNECT"})
            t.row({c});
        t.encode(out, "SHOW");
    } else {
        protocol::encode_error_response(out, protocol::Severity::Error, "42601",
                                        "pgrelay admin console: unknown command; try SHOW HELP");
    }
    protocol::pool::encode_ready_for_query(out, protocol::TxStatus::Idle);
    return out;
}

}  // namespace pgrelay
