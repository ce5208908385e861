// AuthStore (auth_store.hpp).
#include "proxy/auth_store.hpp"

#include <fstream>
#include <sstream>

#include "protocol/frames.hpp"
#include "protocol/pooling.hpp"
#include "proxy/log.hpp"

namespace pgrelay {

namespace asio = boost::asio;

namespace {


std::map<std::string, protocol::auth::Secret> load_userlist(const std::string& path) {
    std::map<std::string, protocol::auth::Secret> out;
    if (path.empty()) return out;
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        log::error("auth_file {}: cannot read it; no user can log in through it", path);
        return out;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    std::vector<protocol::auth::UserlistError> errors;
    for (auto& e : protocol::auth::parse_userlist(ss.str(), errors)) out[e.user] = std::move(e.secret);
    // The line number and why, never the line: it may hold a secret.
    for (const auto& e : errors) log::warn("auth_file {}:{}: {}; line skipped", path, e.line, e.message);
    log::info("auth_file {}: {} user{}", path, out.size(), out.size() == 1 ? "" : "s");
    return out;
}

// Parse/Bind/Execute/Sync of `sql` with one text parameter.
std::string extended_query(const std::string& sql, const std::string& param) {
    std::string out;
    protocol::pool::encode_parse(out, "", sql, {});
    std::string rest;
    protocol::append_u16(rest, 0);  // parameter formats: all text
    protocol::append_u16(rest, 1);
    protocol::append_u32(rest, static_cast<uint32_t>(param.size()));
    rest += param;
    protocol::append_u16(rest, 0);  // result formats: all text
    protocol::pool::encode_bind(out, "", "", {reinterpret_cast<const uint8_t*>(rest.data()), rest.size()});
    out.push_back('E');
    protocol::append_u32(out, 4 + 1 + 4);
    out.push_back('\0');
    protocol::append_u32(out, 0);
    protocol::pool::encode_sync(out);
    return out;
}

// The columns of a DataRow (nullopt for SQL NULL); empty on a malformed row.
std::vector<std::optional<std::string>> data_row(std::span<const uint8_t> b) {
    std::vector<std::optional<std::string>> cols;
    if (b.size() < 2) return cols;
    const size_t n = (size_t(b[0]) << 8) | b[1];
    size_t at = 2;
    for (size_t i = 0; i < n; ++i) {
        if (at + 4 > b.size()) return {};
        const uint32_t len = protocol::read_u32(b.data() + at);
        at += 4;
        if (len == 0xffffffffu) {
            cols.emplace_back(std::nullopt);
            continue;
        }
        if (at + len > b.size()) return {};
        cols.emplace_back(std::string(reinterpret_cast<const char*>(b.data() + at), len));
        at += len;
    }
    return cols;
}

AuthStore::Lookup make_lookup(std::optional<protocol::auth::Secret> secret, std::string error, const char* source) {
    AuthStore::Lookup l;
    l.secret = std::move(secret);
    l.error = std::move(error);
    l.source = source;
    return l;
}

}  // namespace

AuthStore::AuthStore(asio::any_io_executor ex, std::shared_ptr<const Config> cfg, std::shared_ptr<const TlsContexts> tls)
    : ex_(ex) {
    reconfigure(std::move(cfg), std::move(tls));
}

void AuthStore::reconfigure(std::shared_ptr<const Config> cfg, std::shared_ptr<const TlsContexts> tls) {
    cfg_ = std::move(cfg);
    tls_ = tls ? std::move(tls) : std::make_shared<const TlsContexts>();
    file_ = load_userlist(cfg_->pool_rw.pooled() ? cfg_->pool_rw.auth_file : std::string());
    file_ro_ = cfg_->pool_ro.auth_file == cfg_->pool_rw.auth_file && cfg_->pool_rw.pooled()
                   ? file_
                   : load_userlist(cfg_->pool_ro.pooled() ? cfg_->pool_ro.auth_file : std::string());
    conns_.clear();
}

asio::awaitable<AuthStore::Lookup> AuthStore::lookup(PortRole role, const std::string& user, const std::string& database,
                                                     Router& router, const topology::Topology* topo) {
    const auto& file = role == PortRole::ReadWrite ? file_ : file_ro_;
    if (auto it = file.find(user); it != file.end()) co_return make_lookup(it->second, {}, "auth_file");
    const PoolConfig& pc = cfg_->pool(role);
    if (pc.auth_user.empty()) co_return make_lookup(std::nullopt, {}, "auth_file");
    Lookup l = co_await query(role, user, database, router, topo);
    if (l.error.empty()) {
        cache_[user] = Cached{l.secret};
        co_return l;
    }
    if (auto it = cache_.find(user); it != cache_.end()) {
        log::warn("auth_query for user {} failed ({}); using its last answer", log::printable(user), l.error);
        co_return make_lookup(it->second.secret, {}, "cache");
    }
    co_return l;
}

asio::awaitable<AuthStore::Lookup> AuthStore::query(PortRole role, const std::string& user, const std::string& database,
                                                    Router& router, const topology::Topology* topo) {
    const PoolConfig& pc = cfg_->pool(role);
    const auto& file = role == PortRole::ReadWrite ? file_ : file_ro_;
    auto auth = file.find(pc.auth_user);
    if (auth == file.end())
        co_return make_lookup(std::nullopt, "auth_user " + log::printable(pc.auth_user) + " is not in auth_file", "auth_query");
    RouteDecision d = router.route(PortRole::ReadWrite, topo);
    if (d.candidates.empty()) co_return make_lookup(std::nullopt, "no primary to run auth_query on: " + d.message, "auth_query");
    const Target& t = d.candidates.front();
    auto& idle = conns_[{t.member, database}];
    std::unique_ptr<ServerConn> conn;
    while (!idle.empty() && !conn) {
        conn = std::move(idle.back());
        idle.pop_back();
        if (!conn->looks_alive()) conn.reset();
    }
    if (!conn) {
        conn = std::make_unique<ServerConn>(ex_);
        protocol::BackendLogin::Credentials creds;
        const auto& s = auth->second;
        if (s.kind == protocol::auth::Secret::Kind::Plain) creds.password = s.plain;
        else if (s.kind == protocol::auth::Secret::Kind::Md5) creds.md5 = s.md5;
        else
            co_return make_lookup(std::nullopt,
                             "auth_user's auth_file entry is a SCRAM secret: pgrelay needs its password (or md5 hash) to log in as it",
                             "auth_query");
        if (auto err = co_await conn->open(*cfg_, *tls_, t, pc.auth_user, database, creds))
            co_return make_lookup(std::nullopt, "cannot log in as auth_user on " + t.member + ": " + err->message, "auth_query");
    }
    std::optional<std::string> password;
    bool found = false, failed = false;
    std::string error;
    std::string err = co_await conn->request(extended_query(pc.auth_query, user), cfg_->connect_timeout,
                                             [&](char type, std::span<const uint8_t> body) {
                                                 if (type == 'D' && !found) {
                                                     auto cols = data_row(body);
                                                     if (cols.size() >= 2) {
                                                         found = true;
                                                         password = cols[1];
                                                     } else {
                                                         failed = true;
                                                         error = "auth_query must return (user name, password)";
                                                     }
                                                 } else if (type == 'E') {
                                                     failed = true;
                                                     auto e = protocol::decode_error_fields(body);
                                                     error = "auth_query failed: " +
                                                             (e ? std::string(e->sqlstate) + " " + std::string(e->message) : std::string("error"));
                                                 }
                                             });
    if (!err.empty()) co_return make_lookup(std::nullopt, "auth_query on " + t.member + ": " + err, "auth_query");
    if (idle.size() < 2) idle.push_back(std::move(conn));
    if (failed) co_return make_lookup(std::nullopt, error, "auth_query");
    if (!found || !password) co_return make_lookup(std::nullopt, {}, "auth_query");
    co_return make_lookup(protocol::auth::parse_secret(*password), {}, "auth_query");
}

}  // namespace pgrelay
