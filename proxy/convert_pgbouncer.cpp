// convert_pgbouncer.hpp: PgBouncer's ini (sections [databases], [pgbouncer],
// [users], [peers]; %include; ';' and '#' comment lines) read into entries, then
// written out as pgrelay.toml keys (proxy/config.cpp's names, units and
// ranges). Whatever has no pgrelay equivalent becomes a note.
#include "proxy/convert_pgbouncer.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <tuple>

namespace pgrelay {

std::string ConvertNote::describe() const {
    std::string out = file;
    if (line > 0) out += ":" + std::to_string(line);
    out += ": ";
    if (error) out += "error: ";
    if (!key.empty()) {
        out += key;
        if (!value.empty()) out += " = " + value;
        out += ": ";
    }
    out += why;
    // One line per note, whatever the value held.
    for (char& c : out)
        if (c == '\n' || c == '\r') c = ' ';
    return out;
}

namespace {

constexpr int kMaxIncludeDepth = 10;
constexpr int64_t kMaxDurationMs = 24LL * 3600 * 1000;  // config.cpp's limit
constexpr int64_t kMaxPoolConnections = 100000;

std::string lower(std::string_view s) {
    std::string out(s);
    for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
    return s;
}

std::vector<std::string> split_list(std::string_view s) {
    std::vector<std::string> out;
    std::string cur;
    auto flush = [&] {
        if (!cur.empty()) out.push_back(cur);
        cur.clear();
    };
    for (char c : s) {
        if (c == ',' || std::isspace(static_cast<unsigned char>(c))) flush();
        else cur += c;
    }
    flush();
    return out;
}

// A TOML basic string.
std::string q(std::string_view s) {
    std::string out = "\"";
    for (char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (c == '"') out += "\\\"";
        else if (c == '\\') out += "\\\\";
        else if (c == '\n') out += "\\n";
        else if (c == '\t') out += "\\t";
        else if (u < 0x20 || u == 0x7f) {
            static const char* hex = "0123456789ABCDEF";
            out += "\\u00";
            out += hex[u >> 4];
            out += hex[u & 15];
        } else out += c;
    }
    return out + "\"";
}

// "500ms", "30s", "2m": what config.cpp's parse_duration reads back exactly.
std::string duration(int64_t ms) {
    if (ms >= 60000 && ms % 60000 == 0) return std::to_string(ms / 60000) + "m";
    if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
    return std::to_string(ms) + "ms";
}

struct Entry {
    std::string section;  // lower case
    std::string key;      // lower case, but database and user names as written
    std::string value;
    std::string file;
    int line = 0;
};

// ---------------------------------------------------------------------------
// The ini reader.

class IniReader {
public:
    IniReader(const IncludeReader& include, std::vector<ConvertNote>& notes) : include_(include), notes_(notes) {}

    std::vector<Entry> entries;
    bool failed = false;

    void read(std::string_view text, const std::string& file, int depth) {
        int lineno = 0;
        size_t pos = 0;
        while (pos <= text.size()) {
            size_t nl = text.find('\n', pos);
            if (nl == std::string_view::npos) nl = text.size();
            std::string_view raw = text.substr(pos, nl - pos);
            pos = nl + 1;
            ++lineno;
            line(trim(raw), file, lineno, depth);
            if (nl == text.size()) break;
        }
    }

private:
    void error(const std::string& file, int line, const std::string& why) {
        failed = true;
        notes_.push_back({file, line, "", "", why, true});
    }

    void line(std::string_view l, const std::string& file, int lineno, int depth) {
        if (l.empty() || l.front() == ';' || l.front() == '#') return;
        if (l.rfind("%include", 0) == 0 && (l.size() == 8 || std::isspace(static_cast<unsigned char>(l[8])))) {
            const std::string path(trim(l.substr(8)));
            if (path.empty()) return error(file, lineno, "%include without a file name");
            if (depth >= kMaxIncludeDepth)
                return error(file, lineno, "%include " + path + ": nested more than " + std::to_string(kMaxIncludeDepth) +
                                               " deep (an include loop?)");
            std::optional<std::string> text = include_ ? include_(path) : std::nullopt;
            if (!text) return error(file, lineno, "%include " + path + ": cannot read the file");
            read(*text, path, depth + 1);
            return;
        }
        if (l.front() == '[') {
            const size_t close = l.find(']');
            if (close == std::string_view::npos || !trim(l.substr(close + 1)).empty())
                return error(file, lineno, "cannot parse the section header '" + std::string(l) + "'");
            section_ = lower(trim(l.substr(1, close - 1)));
            return;
        }
        std::string key;
        std::string_view rest;
        if (l.front() == '"') {  // a quoted database or user name; "" is a quote
            size_t i = 1;
            bool closed = false;
            for (; i < l.size(); ++i) {
                if (l[i] == '"') {
                    if (i + 1 < l.size() && l[i + 1] == '"') {
                        key += '"';
                        ++i;
                        continue;
                    }
                    closed = true;
                    ++i;
                    break;
                }
                key += l[i];
            }
            if (!closed) return error(file, lineno, "unterminated quoted name");
            rest = trim(l.substr(i));
        } else {
            const size_t eq = l.find('=');
            if (eq == std::string_view::npos)
                return error(file, lineno, "cannot parse '" + std::string(l) + "': expected key = value");
            key = std::string(trim(l.substr(0, eq)));
            rest = l.substr(eq);
            if (key.empty() || std::any_of(key.begin(), key.end(), [](char c) { return std::isspace(static_cast<unsigned char>(c)); }))
                return error(file, lineno, "cannot parse '" + std::string(l) + "': expected key = value");
        }
        if (rest.empty() || rest.front() != '=')
            return error(file, lineno, "cannot parse '" + std::string(l) + "': expected key = value");
        if (section_.empty()) return error(file, lineno, "'" + key + "' is outside any [section]");
        const bool names = section_ == "databases" || section_ == "users" || section_ == "peers";
        entries.push_back({section_, names ? key : lower(key), std::string(trim(rest.substr(1))), file, lineno});
    }

    const IncludeReader& include_;
    std::vector<ConvertNote>& notes_;
    std::string section_;
};

// A libpq-style connect string: key=value pairs, values optionally in single
// quotes, backslash escapes.
bool parse_connstr(std::string_view s, std::vector<std::pair<std::string, std::string>>& out, std::string& err) {
    size_t i = 0;
    auto skip_ws = [&] {
        while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
    };
    while (true) {
        skip_ws();
        if (i >= s.size()) return true;
        std::string key;
        while (i < s.size() && s[i] != '=' && !std::isspace(static_cast<unsigned char>(s[i]))) key += s[i++];
        skip_ws();
        if (i >= s.size() || s[i] != '=') {
            err = "expected key=value in the connect string, got '" + key + "'";
            return false;
        }
        ++i;
        skip_ws();
        std::string value;
        if (i < s.size() && s[i] == '\'') {
            ++i;
            bool closed = false;
            while (i < s.size()) {
                if (s[i] == '\\' && i + 1 < s.size()) {
                    value += s[i + 1];
                    i += 2;
                } else if (s[i] == '\'') {
                    closed = true;
                    ++i;
                    break;
                } else value += s[i++];
            }
            if (!closed) {
                err = "unterminated quote in the value of '" + key + "'";
                return false;
            }
        } else {
            while (i < s.size() && !std::isspace(static_cast<unsigned char>(s[i]))) {
                if (s[i] == '\\' && i + 1 < s.size()) ++i;
                value += s[i++];
            }
        }
        out.emplace_back(lower(key), value);
    }
}

// ---------------------------------------------------------------------------
// [pgbouncer] settings pgrelay has no equivalent for: the reason, and the
// value that equals PgBouncer's default (setting a key to its default says
// nothing worth reporting).

struct Unsupported {
    const char* key;
    const char* default_value;  // nullptr: report any value
    const char* why;
};

constexpr const char* kLogs = "pgrelay logs to standard error (the systemd journal), one line per event";
constexpr const char* kTuning = "low-level tuning pgrelay does not expose";
constexpr const char* kDns = "pgrelay resolves member host names with the system resolver at each connect; no DNS cache to tune";

constexpr Unsupported kUnsupported[] = {
    {"logfile", "", "pgrelay writes no log file: it logs to standard error (the systemd journal)"},
    {"pidfile", "", "pgrelay does not daemonize or write a pid file; run it under systemd (conf/pgrelay.service)"},
    {"syslog", "0", kLogs},
    {"syslog_ident", "pgbouncer", kLogs},
    {"syslog_facility", "daemon", kLogs},
    {"log_connections", "1", kLogs},
    {"log_disconnections", "1", kLogs},
    {"log_pooler_errors", "1", kLogs},
    {"log_stats", "1", "pgrelay exports its statistics as Prometheus metrics on [admin] listen (/metrics) instead"},
    {"stats_period", "60", "pgrelay exports its statistics as Prometheus metrics on [admin] listen (/metrics) instead"},
    {"user", "", "pgrelay does not switch users; run it as that user (User= in conf/pgrelay.service)"},
    {"unix_socket_dir", "/tmp", "pgrelay listens on TCP only, no Unix socket"},
    {"unix_socket_mode", "0777", "pgrelay listens on TCP only, no Unix socket"},
    {"unix_socket_group", "", "pgrelay listens on TCP only, no Unix socket"},
    {"so_reuseport", "0", "pgrelay has no SO_REUSEPORT option; its [server] threads share one listening socket"},
    {"stats_users", "", "pgrelay has no read-only admin role; only [pool] admin_users may use its admin console"},
    {"application_name_add_host", "0", "pgrelay does not rewrite application_name"},
    {"dns_max_ttl", "15", kDns},
    {"dns_nxdomain_ttl", "15", kDns},
    {"dns_zone_check_period", "0", kDns},
    {"resolv_conf", "", kDns},
    {"listen_backlog", "128", kTuning},
    {"pkt_buf", "4096", kTuning},
    {"sbuf_loopcnt", "5", kTuning},
    {"tcp_defer_accept", nullptr, kTuning},
    {"tcp_socket_buffer", "0", kTuning},
    {"tcp_user_timeout", "0", "pgrelay sets TCP_USER_TIMEOUT itself, from the [server] tcp_keepalive_* settings"},
    {"reserve_pool_size", "0", "pgrelay has no reserve pool; raise [pool] pool_size instead"},
    {"reserve_pool_timeout", "5", "pgrelay has no reserve pool"},
    {"max_user_connections", "0", "pgrelay has no per-user server connection limit (only per pool and per database)"},
    {"max_user_client_connections", "0", "pgrelay has no per-user client limit"},
    {"max_db_client_connections", "0", "pgrelay has no per-database client limit"},
    {"server_reset_query_always", "0", "pgrelay runs server_reset_query in session mode only"},
    {"server_check_query", "select 1", "pgrelay checks members with its health checks, not a query before each use"},
    {"server_check_delay", "30", "pgrelay checks members with its health checks, not a query before each use"},
    {"server_fast_close", "0", "no equivalent"},
    {"server_login_retry", "15", "no equivalent: pgrelay tries a failed login again at the next client"},
    {"server_round_robin", "0", "no equivalent: pgrelay reuses idle server connections in its own order"},
    {"query_timeout", "0", "pgrelay has no query timeout; use PostgreSQL's statement_timeout"},
    {"cancel_wait_timeout", "10", "no equivalent"},
    {"idle_transaction_timeout", "0",
     "pgrelay never closes a session inside a transaction; use PostgreSQL's idle_in_transaction_session_timeout"},
    {"transaction_timeout", "0", "no equivalent; use PostgreSQL's transaction_timeout (17+)"},
    {"suspend_timeout", "10", "pgrelay has no SUSPEND or online restart (-R)"},
    {"autodb_idle_timeout", "3600", "pgrelay creates no per-database entries that could be cleaned up"},
    {"ignore_startup_parameters", "",
     "pgrelay needs no ignore list: it accepts the client's startup parameters and sets them on every server it uses"},
    {"track_extra_parameters", nullptr, "pgrelay tracks every parameter the server reports (ParameterStatus)"},
    {"max_prepared_statements", nullptr,
     "pgrelay always carries prepared statements from server to server in pooled modes, without a limit"},
    {"disable_pqexec", "0", "no equivalent"},
    {"conffile", "", "no equivalent: SIGHUP re-reads the file pgrelay started with"},
    {"service_name", "pgbouncer", "Windows only"},
    {"job_name", "pgbouncer", "Windows only"},
    {"auth_hba_file", "", "pgrelay has no HBA file; PostgreSQL's pg_hba.conf applies to pgrelay's own address"},
    {"auth_ident_file", "", "pgrelay has no ident maps"},
    {"auth_dbname", "", "pgrelay runs auth_query in the database the client asked for"},
    {"auth_ldap_options", "", "pgrelay has no LDAP authentication"},
    {"client_tls_dheparams", "auto", "pgrelay uses OpenSSL's defaults for key exchange"},
    {"client_tls_ecdhcurve", "auto", "pgrelay uses OpenSSL's defaults for key exchange"},
    {"server_tls_cert_file", "", "pgrelay presents no client certificate to PostgreSQL"},
    {"server_tls_key_file", "", "pgrelay presents no client certificate to PostgreSQL"},
    {"server_tls_protocols", "secure", "pgrelay uses OpenSSL's defaults towards PostgreSQL"},
    {"server_tls_ciphers", "default", "pgrelay uses OpenSSL's defaults towards PostgreSQL"},
    {"scram_iterations", "4096", "pgrelay does not compute SCRAM secrets; auth_file holds them as PostgreSQL stores them"},
};

// PgBouncer's booleans.
std::optional<bool> parse_bool(std::string_view v) {
    const std::string s = lower(trim(v));
    if (s == "1" || s == "on" || s == "true" || s == "yes") return true;
    if (s == "0" || s == "off" || s == "false" || s == "no") return false;
    return std::nullopt;
}

// Compares a setting with PgBouncer's default for it.
bool same_value(std::string_view a, std::string_view b) {
    const auto ba = parse_bool(a), bb = parse_bool(b);
    if (ba && bb) return *ba == *bb;
    return lower(trim(a)) == lower(trim(b));
}

// ---------------------------------------------------------------------------

struct Member {
    std::string host;
    int port = 5432;
    bool operator==(const Member& o) const { return host == o.host && port == o.port; }
};

class Converter {
public:
    Converter(std::string source, std::vector<ConvertNote>& notes) : source_(std::move(source)), notes_(notes) {}

    std::string run(const std::vector<Entry>& entries) {
        for (const Entry& e : entries) {
            if (e.section == "pgbouncer") settings_[e.key] = e;  // the last one counts, as in PgBouncer
            else if (e.section == "databases") add_database(e);
            else if (e.section == "users") users_.push_back(e);
            else if (e.section == "peers") peers_.push_back(e);
            else if (unknown_sections_.insert(e.section).second)
                note(e.file, e.line, "[" + e.section + "]", "", "not a PgBouncer section; ignored with its keys");
        }

        const std::string listen = convert_listen();
        const std::string server = convert_server();
        const std::string tls = convert_tls();
        const std::string topology = convert_topology();  // before pool: may take a database's auth_user
        const std::string pool = convert_pool();
        const std::string instance = convert_peers();
        for (const Entry& u : users_)
            note(u, "pgrelay has no per-user settings; [pool] applies to every user");
        report_leftovers();

        std::string out;
        out += "# pgrelay configuration converted from the PgBouncer configuration\n";
        out += "# " + one_line(source_) + " by `pgrelay --convert-pgbouncer`.\n";
        out += "# What could not be carried over was listed on standard error, one line each.\n";
        out += "# Check this file with: pgrelay --check-config FILE\n";
        out += "# Every option is described in pgrelay.toml(5) (conf/pgrelay.toml).\n\n";
        out += server + tls + listen + instance;
        out += "[admin]\n# pgrelay's HTTP endpoints (/metrics, /health, /topology); PgBouncer has none.\n"
               "# Keep it on loopback; \"\" disables it.\nlisten = \"127.0.0.1:9187\"\n\n";
        out += pool + topology;
        return out;
    }

private:
    // -- notes and settings -------------------------------------------------

    static std::string one_line(std::string s) {
        for (char& c : s)
            if (c == '\n' || c == '\r') c = ' ';
        return s;
    }

    static bool secret_key(std::string_view key) { return key.find("password") != std::string_view::npos; }

    void note(const std::string& file, int line, std::string key, std::string value, std::string why) {
        notes_.push_back({file, line, std::move(key), std::move(value), std::move(why), false});
    }
    void note(const Entry& e, const std::string& why) {
        note(e.file, e.line, "[" + e.section + "] " + e.key, secret_key(e.key) ? "***" : e.value, why);
    }

    // A [pgbouncer] setting, marked as handled.
    const Entry* take(const std::string& key) {
        used_.insert(key);
        auto it = settings_.find(key);
        return it == settings_.end() ? nullptr : &it->second;
    }

    std::optional<int64_t> int_of(const Entry& e) {
        const std::string v(trim(e.value));
        errno = 0;
        char* end = nullptr;
        const long long n = std::strtoll(v.c_str(), &end, 10);
        if (v.empty() || errno != 0 || *end != '\0') {
            note(e, "not an integer; not carried over");
            return std::nullopt;
        }
        return n;
    }

    // PgBouncer's times are seconds, fractions allowed ("0.5"); a unit suffix
    // (us, ms, s, min, h, d) is accepted as well.
    std::optional<int64_t> ms_of(const Entry& e) {
        const std::string v(trim(e.value));
        size_t i = 0;
        while (i < v.size() && (std::isdigit(static_cast<unsigned char>(v[i])) || v[i] == '.')) ++i;
        const std::string num = v.substr(0, i), unit = lower(trim(std::string_view(v).substr(i)));
        double factor = -1;
        if (unit.empty() || unit == "s") factor = 1000;
        else if (unit == "ms") factor = 1;
        else if (unit == "us") factor = 0.001;
        else if (unit == "min") factor = 60000;
        else if (unit == "h") factor = 3600000;
        else if (unit == "d") factor = 86400000;
        char* end = nullptr;
        const double d = num.empty() ? -1 : std::strtod(num.c_str(), &end);
        if (factor < 0 || num.empty() || *end != '\0' || !(d >= 0)) {
            note(e, "not a time in seconds; not carried over");
            return std::nullopt;
        }
        const double ms = d * factor;
        if (ms > static_cast<double>(kMaxDurationMs)) {
            note(e, "longer than pgrelay's limit for a duration (24 hours); written as \"24h\" = \"1440m\"");
            return kMaxDurationMs;
        }
        return static_cast<int64_t>(std::llround(ms));
    }

    // -- [listen] -----------------------------------------------------------

    std::string convert_listen() {
        const Entry* addr = take("listen_addr");
        const Entry* port_e = take("listen_port");
        int64_t port = 6432;
        if (port_e) {
            if (auto p = int_of(*port_e); p && *p >= 1 && *p <= 65535) port = *p;
            else if (p) note(*port_e, "not a TCP port; pgrelay listens on 6432");
        }
        std::string host = "127.0.0.1";
        std::string how = "listen_addr";
        const std::vector<std::string> addrs = addr ? split_list(addr->value) : std::vector<std::string>{};
        if (addrs.empty()) {
            note(addr ? addr->file : source_, addr ? addr->line : 0, "[pgbouncer] listen_addr", addr ? addr->value : "",
                 "not set: PgBouncer accepts only Unix socket connections; pgrelay listens on TCP only, on "
                 "127.0.0.1:" + std::to_string(port));
            how = "PgBouncer's Unix socket has no pgrelay equivalent: loopback instead";
        } else {
            const std::string& a = addrs.front();
            unsigned char buf[16];
            if (a == "*") {
                host = "0.0.0.0";
                note(*addr, "'*' also listens on IPv6; pgrelay's rw port listens on one address, 0.0.0.0 (IPv4 only; "
                            "\"[::]:" + std::to_string(port) + "\" for IPv6)");
            } else if (lower(a) == "localhost") {
                host = "127.0.0.1";
                how = "listen_addr = localhost";
            } else if (inet_pton(AF_INET, a.c_str(), buf) == 1) {
                host = a;
            } else if (inet_pton(AF_INET6, a.c_str(), buf) == 1) {
                host = "[" + a + "]";
            } else {
                note(*addr, "pgrelay listens on an IP address, not a host name; it listens on 127.0.0.1: put the "
                            "address '" + a + "' has in [listen] rw");
            }
            if (addrs.size() > 1)
                note(*addr, "pgrelay's rw port listens on one address; only '" + a + "' was carried over");
        }
        std::string out = "[listen]\n";
        out += "# PgBouncer's one port (" + how + ", listen_port) is pgrelay's rw port, which\n"
               "# always reaches the primary.\n";
        out += "rw = " + q(host + ":" + std::to_string(port)) + "\n";
        out += "# PgBouncer has no read-only port, so ro is disabled rather than opening a\n"
               "# port nobody expects. To spread read-only clients over the replicas, give it\n"
               "# an address, e.g. ro = \"127.0.0.1:" + std::to_string(port + 1 <= 65535 ? port + 1 : port - 1) +
               "\", and list the replicas in [[topology.members]].\n";
        out += "ro = \"\"\n\n";
        return out;
    }

    // -- [server] -----------------------------------------------------------

    std::string convert_server() {
        std::string out = "[server]\n";
        auto duration_key = [&](const char* pgb, const char* key, std::optional<int64_t> def, bool zero_ok,
                                const char* zero_why) {
            const Entry* e = take(pgb);
            std::optional<int64_t> ms = def;
            if (e) ms = ms_of(*e);
            if (!ms) return;
            if (*ms == 0 && !zero_ok) {
                if (e) note(*e, zero_why);
                return;
            }
            out += std::string(key) + " = " + q(duration(*ms)) + "  # " + pgb + (e ? "" : " (PgBouncer's default)") + "\n";
        };
        {
            const Entry* e = take("max_client_conn");
            std::optional<int64_t> n = 100;
            if (e) n = int_of(*e);
            if (n && (*n < 0 || *n > 10'000'000)) {
                note(*e, "out of pgrelay's range 0..10000000; not carried over");
                n.reset();
            }
            if (n)
                out += "max_client_connections = " + std::to_string(*n) + "  # max_client_conn" +
                       (e ? "" : " (PgBouncer's default)") + "\n";
        }
        duration_key("server_connect_timeout", "connect_timeout", 15000, false,
                     "0 (no limit) has no pgrelay equivalent: connect_timeout must be above 0; pgrelay's default (5s) applies");
        duration_key("client_login_timeout", "startup_timeout", 60000, false,
                     "0 (no limit) has no pgrelay equivalent: startup_timeout must be above 0; pgrelay's default (10s) applies");
        duration_key("client_idle_timeout", "idle_client_timeout", std::nullopt, true, "");
        if (const Entry* e = take("tcp_keepalive"); e && parse_bool(e->value) == false)
            note(*e, "pgrelay always enables TCP keepalive on client and server sockets");
        auto keepalive = [&](const char* pgb, const char* key) {
            const Entry* e = take(pgb);
            if (!e) return;
            auto ms = ms_of(*e);
            if (!ms || *ms == 0) return;  // 0: the system's default, pgrelay's own applies
            if (*ms < 1000) {
                note(*e, "below 1s, pgrelay's minimum (TCP keepalive counts seconds); not carried over");
                return;
            }
            out += std::string(key) + " = " + q(duration(*ms / 1000 * 1000)) + "  # " + pgb + "\n";
        };
        keepalive("tcp_keepidle", "tcp_keepalive_idle");
        keepalive("tcp_keepintvl", "tcp_keepalive_interval");
        if (const Entry* e = take("tcp_keepcnt")) {
            if (auto n = int_of(*e); n && *n >= 1 && *n <= 127)
                out += "tcp_keepalive_count = " + std::to_string(*n) + "  # tcp_keepcnt\n";
            else if (n && *n != 0) note(*e, "out of pgrelay's range 1..127; not carried over");
        }
        if (const Entry* e = take("max_packet_size")) {
            if (auto n = int_of(*e)) {
                const int64_t v = std::clamp<int64_t>(*n, 8192, 0x7fffffff);
                if (v != *n) note(*e, "out of pgrelay's range 8192..2147483647; written as " + std::to_string(v));
                out += "max_frame_size = " + std::to_string(v) + "  # max_packet_size\n";
            }
        }
        if (const Entry* e = take("verbose")) {
            if (auto n = int_of(*e); n && *n > 0) out += "log_level = \"debug\"  # verbose\n";
        }
        return out + "\n";
    }

    // -- [tls] and [topology] backend_tls ---------------------------------------

    std::string convert_tls() {
        const Entry* mode_e = take("client_tls_sslmode");
        const Entry* cert = take("client_tls_cert_file");
        const Entry* key = take("client_tls_key_file");
        const Entry* ca = take("client_tls_ca_file");
        const Entry* protocols = take("client_tls_protocols");
        const Entry* ciphers = take("client_tls_ciphers");
        const std::string mode = mode_e ? lower(trim(mode_e->value)) : "disable";
        const Entry* tls_keys[] = {cert, key, ca, protocols, ciphers};
        if (mode == "disable" || mode.empty()) {
            for (const Entry* e : tls_keys)
                if (e && !trim(e->value).empty()) note(*e, "client_tls_sslmode is disable: PgBouncer does not use it either");
            return "";
        }
        std::string client;
        if (mode == "allow" || mode == "prefer") client = "allow";
        else if (mode == "require" || mode == "verify-ca" || mode == "verify-full") client = "require";
        else {
            note(*mode_e, "not a PgBouncer client_tls_sslmode; TLS towards clients not configured");
            return "";
        }
        if (!cert || !key || trim(cert->value).empty() || trim(key->value).empty()) {
            note(*mode_e, "needs client_tls_cert_file and client_tls_key_file; TLS towards clients not configured");
            return "";
        }
        std::string out = "[tls]\n";
        out += "cert = " + q(trim(cert->value)) + "  # client_tls_cert_file\n";
        out += "key = " + q(trim(key->value)) + "  # client_tls_key_file\n";
        out += "client_tls = " + q(client) + "  # client_tls_sslmode = " + mode + "\n";
        if (mode == "verify-ca" || mode == "verify-full") {
            std::string file = ca ? std::string(trim(ca->value)) : "";
            if (file.empty()) {
                file = kSystemCa;
                note(*mode_e, "no client_tls_ca_file: PgBouncer used the system's CAs; written as client_ca = \"" + file + "\"");
            }
            out += "client_ca = " + q(file) + "  # client_tls_ca_file\n";
        } else if (ca && !trim(ca->value).empty()) {
            note(*ca, "used by PgBouncer only with client_tls_sslmode verify-ca or verify-full; not carried over");
        }
        if (protocols) {
            const std::vector<std::string> ps = split_list(lower(protocols->value));
            bool old = false, v12 = false;
            for (const auto& p : ps) {
                if (p == "all" || p == "legacy" || p == "tlsv1.0" || p == "tlsv1.1") old = true;
                if (p == "all" || p == "secure" || p == "legacy" || p == "tlsv1.2") v12 = true;
            }
            if (old) note(*protocols, "pgrelay accepts TLS 1.2 and 1.3 only; older versions are refused");
            out += "min_version = " + q(v12 || old || ps.empty() ? "TLSv1.2" : "TLSv1.3") + "  # client_tls_protocols\n";
        }
        if (ciphers) {
            const std::string c = lower(trim(ciphers->value));
            static const std::set<std::string> aliases = {"default", "fast", "normal", "secure", "compat", "legacy", "insecure", "all"};
            if (c.empty() || aliases.count(c))
                note(*ciphers, "a libtls cipher alias; pgrelay keeps its own list (\"HIGH:!aNULL:!MD5:!3DES:!RC4\")");
            else out += "ciphers = " + q(trim(ciphers->value)) + "  # client_tls_ciphers\n";
        }
        return out + "\n";
    }

    static constexpr const char* kSystemCa = "/etc/ssl/certs/ca-certificates.crt";

    std::string backend_tls() {
        const Entry* mode_e = take("server_tls_sslmode");
        const Entry* ca = take("server_tls_ca_file");
        std::string mode = mode_e ? lower(trim(mode_e->value)) : "disable";
        static const std::set<std::string> modes = {"disable", "prefer", "require", "verify-ca", "verify-full"};
        if (mode == "allow") {
            note(*mode_e, "pgrelay has no \"allow\" (plaintext first, TLS if refused); written as backend_tls = \"prefer\"");
            mode = "prefer";
        } else if (!modes.count(mode)) {
            note(*mode_e, "not a PgBouncer server_tls_sslmode; backend_tls stays \"disable\"");
            mode = "disable";
        }
        std::string out;
        if (mode_e) out += "backend_tls = " + q(mode) + "  # server_tls_sslmode\n";
        const std::string file = ca ? std::string(trim(ca->value)) : "";
        if (mode == "verify-ca" || mode == "verify-full") {
            if (file.empty())
                note(*mode_e, "no server_tls_ca_file: PgBouncer used the system's CAs; written as backend_tls_ca = \"" +
                                  std::string(kSystemCa) + "\"");
            out += "backend_tls_ca = " + q(file.empty() ? kSystemCa : file) + "  # server_tls_ca_file\n";
        } else if (!file.empty()) {
            note(*ca, "PgBouncer uses it only with server_tls_sslmode verify-ca or verify-full (pgrelay would check "
                      "certificates against it with \"" + mode + "\" too); not carried over");
        }
        return out;
    }

    // -- [pool] -------------------------------------------------------------

    std::string convert_pool() {
        std::string out = "[pool]\n";
        const Entry* mode_e = take("pool_mode");
        std::string mode = mode_e ? lower(trim(mode_e->value)) : "session";
        std::string mode_comment = mode_e ? "pool_mode" : "pool_mode (PgBouncer's default)";
        if (mode == "statement") {
            note(*mode_e, "pgrelay has no statement mode; written as \"transaction\", which also allows "
                          "multi-statement transactions");
            mode = "transaction";
        } else if (mode != "session" && mode != "transaction") {
            note(*mode_e, "not a PgBouncer pool_mode; written as \"session\" (PgBouncer's default)");
            mode = "session";
        }
        const Entry* auth_file = take("auth_file");
        const Entry* auth_user_e = take("auth_user");
        const Entry* auth_query = take("auth_query");
        const Entry* auth_type = take("auth_type");
        std::string auth_user = auth_user_e ? std::string(trim(auth_user_e->value)) : db_auth_user_;
        const bool have_file = auth_file && !trim(auth_file->value).empty();
        const std::string type = auth_type ? lower(trim(auth_type->value)) : "md5";
        if (!have_file && auth_user.empty()) {
            note(mode_e ? mode_e->file : source_, mode_e ? mode_e->line : 0, "[pgbouncer] pool_mode", mode,
                 "pgrelay authenticates clients itself when pooling and needs auth_file or auth_user, which the file "
                 "does not set; written as pool_mode = \"passthrough\" (PostgreSQL authenticates every client, one "
                 "server connection per client)");
            mode = "passthrough";
            mode_comment = "no auth_file or auth_user: see the notes";
        }
        out += "pool_mode = " + q(mode) + "  # " + mode_comment + "\n";
        if (auth_type) {
            if (type == "md5" || type == "scram-sha-256") {
                if (type == "scram-sha-256")
                    note(*auth_type, "pgrelay picks the method from each user's secret: SCRAM for a SCRAM secret, md5 "
                                     "for an md5 one");
            } else if (type == "trust" || type == "any") {
                note(*auth_type, mode == "passthrough"
                                     ? "pgrelay has no trust authentication; PostgreSQL authenticates the clients"
                                     : "pgrelay has no trust authentication: every client needs a secret in auth_file "
                                       "or from auth_query");
            } else if (type == "plain") {
                note(*auth_type, "pgrelay never asks for a cleartext password; it uses SCRAM or md5");
            } else {
                note(*auth_type, "pgrelay authenticates with SCRAM or md5 only (from auth_file or auth_query)");
            }
        }
        auto count = [&](const char* pgb, const char* key, std::optional<int64_t> def, int64_t lo) -> std::optional<int64_t> {
            const Entry* e = take(pgb);
            std::optional<int64_t> n = def;
            if (e) n = int_of(*e);
            if (n && (*n < lo || *n > kMaxPoolConnections)) {
                note(*e, "out of pgrelay's range " + std::to_string(lo) + ".." + std::to_string(kMaxPoolConnections) +
                             "; not carried over");
                return std::nullopt;
            }
            if (n)
                out += std::string(key) + " = " + std::to_string(*n) + "  # " + pgb +
                       (e ? "" : " (PgBouncer's default)") + "\n";
            return n;
        };
        const int64_t pool_size = count("default_pool_size", "pool_size", 20, 1).value_or(20);
        {
            const Entry* e = settings_.count("min_pool_size") ? &settings_.at("min_pool_size") : nullptr;
            char* end = nullptr;
            const long long min = e ? std::strtoll(e->value.c_str(), &end, 10) : 0;
            if (e && end && *end == '\0' && min > pool_size) {
                take("min_pool_size");
                note(*e, "above default_pool_size (" + std::to_string(pool_size) + "); not carried over");
            } else {
                count("min_pool_size", "min_pool_size", std::nullopt, 0);
            }
        }
        count("max_db_connections", "max_db_connections", std::nullopt, 0);
        auto dur = [&](const char* pgb, std::optional<int64_t> def, const char* zero_why) {
            const Entry* e = take(pgb);
            std::optional<int64_t> ms = def;
            if (e) ms = ms_of(*e);
            if (!ms) return;
            if (*ms == 0 && zero_why) {
                note(*e, zero_why);
                return;
            }
            out += std::string(pgb) + " = " + q(duration(*ms)) + "  # " + pgb + (e ? "" : " (PgBouncer's default)") + "\n";
        };
        dur("server_lifetime", 3600000,
            "0 (PgBouncer: use each server connection once) has no pgrelay equivalent (there 0 means never); "
            "pgrelay's default (60m) applies");
        dur("server_idle_timeout", 600000, nullptr);
        dur("query_wait_timeout", 120000, nullptr);
        if (const Entry* e = take("server_reset_query"))
            out += "server_reset_query = " + q(trim(e->value)) + "  # server_reset_query\n";
        else out += "server_reset_query = \"DISCARD ALL\"  # server_reset_query (PgBouncer's default)\n";
        if (have_file) out += "auth_file = " + q(trim(auth_file->value)) + "  # auth_file\n";
        if (!auth_user.empty())
            out += "auth_user = " + q(auth_user) + (auth_user_e ? "  # auth_user\n" : "  # a [databases] entry's auth_user\n");
        if (auth_query && !trim(auth_query->value).empty()) {
            if (auth_user.empty()) note(*auth_query, "used only with auth_user, which is not set; not carried over");
            else out += "auth_query = " + q(trim(auth_query->value)) + "  # auth_query\n";
        }
        if (const Entry* e = take("admin_users")) {
            const std::vector<std::string> users = split_list(e->value);
            out += "# admin_users: pgrelay's admin console is the virtual database \"pgrelay\", not \"pgbouncer\".\n";
            out += "admin_users = [";
            for (size_t i = 0; i < users.size(); ++i) out += (i ? ", " : "") + q(users[i]);
            out += "]\n";
        }
        return out + "\n";
    }

    // -- [databases] -> [topology] ------------------------------------------

    struct Database {
        Entry entry;
        std::vector<std::pair<std::string, std::string>> params;
        std::vector<Member> members;
    };

    void add_database(const Entry& e) {
        Database d{e, {}, {}};
        std::string err;
        if (!parse_connstr(e.value, d.params, err)) {
            notes_.push_back({e.file, e.line, "[databases] " + e.key, "", err, true});
            failed = true;
            return;
        }
        for (auto& old : databases_)
            if (old.entry.key == e.key) {
                old = std::move(d);  // a later line for the same name replaces it
                return;
            }
        databases_.push_back(std::move(d));
    }

    std::string param(const Database& d, const std::string& key) const {
        for (const auto& [k, v] : d.params)
            if (k == key) return v;
        return "";
    }

    // host=a,b port=1,2 (or one port for all); a host starting with '/' or
    // '@', or none, is a Unix socket: pgrelay connects to 127.0.0.1 instead.
    std::vector<Member> members_of(const Database& d) {
        const std::string db = "[databases] " + d.entry.key;
        const std::vector<std::string> hosts = split_list(param(d, "host"));
        std::vector<std::string> ports = split_list(param(d, "port"));
        std::vector<Member> out;
        auto port_at = [&](size_t i) -> int {
            const std::string& p = ports.empty() ? std::string("5432") : ports.size() == 1 ? ports[0]
                                                                     : i < ports.size()    ? ports[i]
                                                                                           : ports.back();
            char* end = nullptr;
            const long v = std::strtol(p.c_str(), &end, 10);
            if (p.empty() || *end != '\0' || v < 1 || v > 65535) {
                note(d.entry.file, d.entry.line, db, "port=" + param(d, "port"), "not a TCP port; 5432 instead");
                return 5432;
            }
            return static_cast<int>(v);
        };
        if (ports.size() > 1 && ports.size() != hosts.size())
            note(d.entry.file, d.entry.line, db, "port=" + param(d, "port"), "not one port per host");
        if (hosts.empty()) {
            const int port = port_at(0);
            note(d.entry.file, d.entry.line, db, d.entry.value,
                 "no host: PgBouncer connects over its Unix socket; pgrelay connects over TCP, to 127.0.0.1:" +
                     std::to_string(port));
            out.push_back({"127.0.0.1", port});
            return out;
        }
        for (size_t i = 0; i < hosts.size(); ++i) {
            Member m{hosts[i], port_at(i)};
            if (m.host.front() == '/' || m.host.front() == '@') {
                note(d.entry.file, d.entry.line, db, "host=" + hosts[i],
                     "a Unix socket; pgrelay connects over TCP, to 127.0.0.1:" + std::to_string(m.port));
                m.host = "127.0.0.1";
            }
            if (std::find(out.begin(), out.end(), m) == out.end()) out.push_back(m);
        }
        return out;
    }

    static std::string describe(const std::vector<Member>& ms) {
        std::string s;
        for (const auto& m : ms) s += (s.empty() ? "" : ",") + m.host + ":" + std::to_string(m.port);
        return s;
    }

    std::string convert_topology() {
        for (auto& d : databases_) d.members = members_of(d);
        const Database* cluster = nullptr;
        for (const auto& d : databases_)
            if (d.entry.key == "*") cluster = &d;
        if (!cluster && !databases_.empty()) cluster = &databases_.front();
        std::vector<Member> members;
        if (cluster) {
            members = cluster->members;
        } else {
            members.push_back({"127.0.0.1", 5432});
            note(source_, 0, "[databases]", "",
                 "no database entries (PgBouncer would serve only its admin console); pgrelay needs a server: "
                 "[[topology.members]] is a placeholder, 127.0.0.1:5432, to edit");
        }
        if (members.size() > 1)
            note(cluster->entry.file, cluster->entry.line, "[databases] " + cluster->entry.key, "host=" + param(*cluster, "host"),
                 "PgBouncer uses these hosts in turn, without knowing which is the primary; pgrelay's static list has a "
                 "fixed primary: " + members.front().host + ":" + std::to_string(members.front().port) +
                 " (rw), the others replicas. For a Patroni cluster use source = \"zookeeper\", \"etcd\" or \"patroni_api\"");

        // Per-database settings: pgrelay has one cluster and one set of pool
        // settings; the client's database name goes to the server unchanged.
        std::set<std::string> auth_users;
        for (const auto& d : databases_) {
            const std::string db = "[databases] " + d.entry.key;
            auto n = [&](const std::string& k, const std::string& v, const std::string& why) {
                note(d.entry.file, d.entry.line, db, k + "=" + (secret_key(k) ? std::string("***") : v), why);
            };
            if (&d != cluster && !(d.members == members))
                n("host", param(d, "host"),
                  "pgrelay reaches one cluster (" + describe(members) + "); clients asking for database '" + d.entry.key +
                      "' reach it there");
            for (const auto& [k, v] : d.params) {
                if (k == "host" || k == "port") continue;
                if (k == "dbname") {
                    if (v != d.entry.key)
                        n(k, v, d.entry.key == "*" ? "pgrelay has no database aliases; clients reach the database they name"
                                                   : "pgrelay has no database aliases; clients must ask for '" + v +
                                                         "' instead of '" + d.entry.key + "'");
                } else if (k == "user" || k == "password") {
                    n(k, v, "pgrelay has no forced server login; clients log in as themselves");
                } else if (k == "auth_user") {
                    auth_users.insert(v);
                } else if (k == "pool_mode" || k == "pool_size" || k == "min_pool_size" || k == "max_db_connections" ||
                           k == "reserve_pool" || k == "reserve_pool_size" || k == "server_lifetime" ||
                           k == "max_db_client_connections" || k == "auth_query" || k == "auth_dbname" ||
                           k == "load_balance_hosts") {
                    n(k, v, "pgrelay has no per-database settings; [pool] applies to every database");
                } else if (k == "connect_query") {
                    n(k, v, "pgrelay runs no query on new server connections");
                } else if (k == "client_encoding" || k == "datestyle" || k == "timezone" || k == "application_name") {
                    n(k, v, "pgrelay sets no server parameters of its own; the client's startup parameters apply");
                } else {
                    n(k, v, "not a PgBouncer connect-string parameter pgrelay knows; ignored");
                }
            }
        }
        // A database's auth_user becomes [pool] auth_user when [pgbouncer] sets
        // none and the databases agree on it.
        if (!auth_users.empty()) {
            const bool global = settings_.count("auth_user") && !trim(settings_.at("auth_user").value).empty();
            if (!global && auth_users.size() == 1) db_auth_user_ = *auth_users.begin();
            for (const auto& d : databases_) {
                const std::string u = param(d, "auth_user");
                if (u.empty()) continue;
                if (u == db_auth_user_) {
                    if (databases_.size() > 1)
                        note(d.entry.file, d.entry.line, "[databases] " + d.entry.key, "auth_user=" + u,
                             "written as [pool] auth_user, which applies to every database");
                } else {
                    note(d.entry.file, d.entry.line, "[databases] " + d.entry.key, "auth_user=" + u,
                         "pgrelay has one auth_user for every database; not carried over");
                }
            }
        }

        std::string out = "[topology]\n";
        out += "# PgBouncer's servers as a static member list: the primary is fixed, members\n"
               "# are checked by TCP connect.\n";
        out += "source = \"static\"\n";
        out += backend_tls();
        out += "\n";
        if (!cluster)
            out += "# A placeholder: the PgBouncer file lists no database. Put the server here.\n";
        for (size_t i = 0; i < members.size(); ++i) {
            out += "[[topology.members]]\n";
            out += "name = " + q("pg" + std::to_string(i)) + "\n";
            out += "host = " + q(members[i].host) + "\n";
            out += "port = " + std::to_string(members[i].port) + "\n";
            out += std::string("role = ") + (i == 0 ? "\"primary\"" : "\"replica\"") + "\n\n";
        }
        return out;
    }

    // -- [peers] -> [instance] ------------------------------------------------

    std::string convert_peers() {
        const Entry* id_e = take("peer_id");
        int64_t id = 0;
        if (id_e) id = int_of(*id_e).value_or(0);
        if (peers_.empty()) {
            if (id_e && id != 0) note(*id_e, "no [peers] section; not carried over");
            return "";
        }
        if (id <= 0) {
            for (const Entry& p : peers_) note(p, "[pgbouncer] peer_id is not set, so PgBouncer does not use [peers]; not carried over");
            return "";
        }
        std::vector<std::string> list;
        for (const Entry& p : peers_) {
            if (trim(p.key) == std::to_string(id)) continue;  // this instance itself
            std::vector<std::pair<std::string, std::string>> params;
            std::string err;
            if (!parse_connstr(p.value, params, err)) {
                notes_.push_back({p.file, p.line, "[peers] " + p.key, "", err, true});
                failed = true;
                continue;
            }
            std::string host, port = "6432";
            for (const auto& [k, v] : params) {
                if (k == "host") host = v;
                else if (k == "port") port = v;
                else note(p.file, p.line, "[peers] " + p.key, k + "=" + v, "pgrelay forwards cancel requests only; ignored");
            }
            if (host.empty() || host.front() == '/' || host.front() == '@') {
                note(p, "a Unix socket peer; pgrelay reaches peers over TCP only; not carried over");
                continue;
            }
            if (host.find(':') != std::string::npos) host = "[" + host + "]";
            list.push_back(std::string(trim(p.key)) + "@" + host + ":" + port);
        }
        std::string out = "[instance]\n";
        out += "# PgBouncer's peer_id and [peers]: cancel requests for another instance's\n"
               "# sessions are sent on to it. Every instance needs its own id; the peers\n"
               "# below are their ids and rw addresses.\n";
        out += "id = " + q(std::to_string(id)) + "  # peer_id\n";
        out += "peers = [";
        for (size_t i = 0; i < list.size(); ++i) out += (i ? ", " : "") + q(list[i]);
        out += "]\n\n";
        return out;
    }

    // -- the rest -------------------------------------------------------------

    void report_leftovers() {
        std::vector<const Entry*> rest;
        for (const auto& [k, e] : settings_)
            if (!used_.count(k)) rest.push_back(&e);
        std::sort(rest.begin(), rest.end(), [](const Entry* a, const Entry* b) {
            return std::tie(a->file, a->line) < std::tie(b->file, b->line);
        });
        for (const Entry* e : rest) {
            const Unsupported* u = nullptr;
            for (const auto& x : kUnsupported)
                if (e->key == x.key) u = &x;
            if (!u) {
                note(*e, "not a PgBouncer setting pgrelay knows; ignored");
                continue;
            }
            if (u->default_value && same_value(e->value, u->default_value)) continue;
            note(*e, u->why);
        }
    }

public:
    bool failed = false;

private:
    std::string source_;
    std::vector<ConvertNote>& notes_;
    std::map<std::string, Entry> settings_;
    std::set<std::string> used_;
    std::vector<Database> databases_;
    std::vector<Entry> users_, peers_;
    std::set<std::string> unknown_sections_;
    std::string db_auth_user_;
};

}  // namespace

ConvertResult convert_pgbouncer(std::string_view ini_text, std::string_view source, const IncludeReader& read_include) {
    ConvertResult r;
    const std::string file(source);
    IniReader reader(read_include, r.notes);
    reader.read(ini_text, file, 0);
    if (reader.failed) return r;
    Converter conv(file, r.notes);
    std::string toml = conv.run(reader.entries);
    // In the order of the input: the main file first, then each included file.
    std::vector<std::string> files{file};
    for (const Entry& e : reader.entries)
        if (std::find(files.begin(), files.end(), e.file) == files.end()) files.push_back(e.file);
    auto rank = [&](const ConvertNote& n) {
        return std::pair(std::find(files.begin(), files.end(), n.file) - files.begin(), n.line);
    };
    std::stable_sort(r.notes.begin(), r.notes.end(),
                     [&](const ConvertNote& a, const ConvertNote& b) { return rank(a) < rank(b); });
    if (conv.failed) return r;
    r.ok = true;
    r.toml = std::move(toml);
    return r;
}

namespace {
std::optional<std::string> read_whole(const std::string& path) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) return std::nullopt;
    std::ifstream in(path, std::ios::binary);
    if (!in) return std::nullopt;
    std::stringstream ss;
    ss << in.rdbuf();
    if (in.bad()) return std::nullopt;
    return ss.str();
}
}  // namespace

ConvertResult convert_pgbouncer_file(const std::string& path) {
    const std::optional<std::string> text = read_whole(path);
    if (!text) {
        ConvertResult r;
        r.notes.push_back({path, 0, "", "", "cannot read the file", true});
        return r;
    }
    return convert_pgbouncer(*text, path, read_whole);
}

}  // namespace pgrelay
