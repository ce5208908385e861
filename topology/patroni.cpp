// Patroni znode parsing and topology building (patroni.hpp), with Boost.JSON.
#include "topology/patroni.hpp"

#include <algorithm>
#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>
#include <charconv>

namespace pgrelay::topology::patroni {

namespace json = boost::json;

namespace {

std::optional<uint64_t> as_u64(const json::value* v) {
    if (!v) return std::nullopt;
    if (v->is_uint64()) return v->get_uint64();
    if (v->is_int64() && v->get_int64() >= 0) return static_cast<uint64_t>(v->get_int64());
    if (v->is_double() && v->get_double() >= 0 && v->get_double() < 1.8e19) return static_cast<uint64_t>(v->get_double());
    return std::nullopt;
}

std::optional<json::value> parse_json(std::string_view text) {
    boost::system::error_code ec;
    json::value v = json::parse(text, ec);
    if (ec) return std::nullopt;
    return v;
}

// Patroni writes true tags as JSON true; custom tags may be strings or numbers.
bool tag_is_set(const json::value& v) {
    if (v.is_bool()) return v.get_bool();
    if (v.is_string()) {
        const auto& s = v.get_string();
        return !(s == "false" || s == "False" || s == "0" || s.empty());
    }
    if (v.is_null()) return false;
    if (v.is_int64()) return v.get_int64() != 0;
    if (v.is_uint64()) return v.get_uint64() != 0;
    return true;
}

}  // namespace

Role parse_role(std::string_view r) noexcept {
    if (r == "master" || r == "primary") return Role::Primary;
    if (r == "replica") return Role::Replica;
    if (r == "standby_leader") return Role::StandbyLeader;
    if (r == "sync_standby") return Role::Replica;  // REST /cluster's name for the synchronous replica
    return Role::Other;  // promoted, demoted, uninitialized, ...
}

State parse_state(std::string_view s) noexcept {
    // "streaming": newer Patroni's state of a replica receiving WAL.
    if (s == "running" || s == "streaming") return State::Running;
    if (s == "starting") return State::Starting;
    if (s == "stopped" || s == "stopping" || s == "crashed" || s == "start failed" || s == "stop failed")
        return State::Stopped;
    return State::Other;  // "creating replica", "restarting", ...
}

std::string_view to_string(ProbeStatus s) noexcept {
    switch (s) {
        case ProbeStatus::Unknown: return "unknown";
        case ProbeStatus::Writable: return "writable";
        case ProbeStatus::InRecovery: return "in recovery";
        case ProbeStatus::Unreachable: return "unreachable";
    }
    return "?";
}

bool parse_conn_url(std::string_view url, std::string& host, uint16_t& port) {
    for (std::string_view scheme : {"postgres://", "postgresql://"}) {
        if (url.substr(0, scheme.size()) == scheme) {
            url.remove_prefix(scheme.size());
            goto have_scheme;
        }
    }
    return false;
have_scheme:
    url = url.substr(0, url.find_first_of("/?"));
    if (auto at = url.rfind('@'); at != std::string_view::npos) url.remove_prefix(at + 1);
    std::string_view h, p;
    if (!url.empty() && url[0] == '[') {
        const auto close = url.find(']');
        if (close == std::string_view::npos) return false;
        h = url.substr(1, close - 1);
        if (close + 1 < url.size()) {
            if (url[close + 1] != ':') return false;
            p = url.substr(close + 2);
        }
    } else {
        const auto colon = url.find(':');
        h = url.substr(0, colon);
        if (colon != std::string_view::npos) p = url.substr(colon + 1);
    }
    if (h.empty()) return false;
    unsigned v = 5432;
    if (!p.empty()) {
        auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), v);
        if (ec != std::errc() || end != p.data() + p.size() || v == 0 || v > 65535) return false;
    }
    host.assign(h);
    port = static_cast<uint16_t>(v);
    return true;
}

std::string api_base(std::string_view url) {
    size_t scheme = 0;
    if (url.substr(0, 7) == "http://") scheme = 7;
    else if (url.substr(0, 8) == "https://") scheme = 8;
    else return {};
    const size_t end = url.find_first_of("/?#", scheme);
    const std::string_view authority = url.substr(scheme, end == std::string_view::npos ? url.size() - scheme : end - scheme);
    if (authority.empty() || authority.find_first_of("@ ") != std::string_view::npos) return {};
    return std::string(url.substr(0, scheme)) + std::string(authority);
}

std::optional<MemberInfo> parse_member(std::string_view name, std::string_view text, std::string& error) {
    auto v = parse_json(text);
    if (!v || !v->is_object()) {
        error = "member " + std::string(name) + ": znode is not a JSON object";
        return std::nullopt;
    }
    const json::object& o = v->get_object();
    MemberInfo m;
    m.name = name;
    const json::value* url = o.if_contains("conn_url");
    if (!url || !url->is_string() || !parse_conn_url(std::string_view(url->get_string()), m.host, m.port)) {
        error = "member " + std::string(name) + ": missing or invalid conn_url";
        return std::nullopt;
    }
    if (const json::value* r = o.if_contains("role"); r && r->is_string()) {
        m.role_text = std::string(r->get_string());
        m.role = parse_role(m.role_text);
    }
    if (const json::value* s = o.if_contains("state"); s && s->is_string()) {
        m.state_text = std::string(s->get_string());
        m.state = parse_state(m.state_text);
    }
    if (const json::value* a = o.if_contains("api_url"); a && a->is_string()) m.api_url = api_base(a->get_string());
    m.xlog_location = as_u64(o.if_contains("xlog_location"));
    m.timeline = as_u64(o.if_contains("timeline"));
    if (const json::value* t = o.if_contains("tags"); t && t->is_object())
        for (const auto& [k, tv] : t->get_object())
            if (tag_is_set(tv)) m.tags.emplace_back(k);
    std::sort(m.tags.begin(), m.tags.end());
    return m;
}

std::optional<ClusterView> parse_cluster(std::string_view text, std::string& error) {
    auto v = parse_json(text);
    const json::value* ms = v && v->is_object() ? v->get_object().if_contains("members") : nullptr;
    if (!ms || !ms->is_array()) {
        error = "/cluster did not answer {\"members\": [...]}";
        return std::nullopt;
    }
    ClusterView view;
    if (const json::value* p = v->get_object().if_contains("pause"); p && p->is_bool()) view.paused = p->get_bool();
    for (const auto& e : ms->get_array()) {
        if (!e.is_object()) continue;
        const json::object& o = e.get_object();
        const json::value* name = o.if_contains("name");
        const json::value* host = o.if_contains("host");
        if (!name || !name->is_string() || name->get_string().empty()) continue;
        MemberInfo m;
        m.name = name->get_string();
        // A member without host (no conn_url yet) cannot be routed to.
        if (!host || !host->is_string() || host->get_string().empty()) continue;
        m.host = host->get_string();
        const auto port = as_u64(o.if_contains("port"));
        m.port = port && *port > 0 && *port <= 65535 ? static_cast<uint16_t>(*port) : 5432;
        if (const json::value* r = o.if_contains("role"); r && r->is_string()) m.role_text = r->get_string();
        if (m.role_text == "leader") {
            if (view.leader) {
                error = "/cluster names two leaders";
                return std::nullopt;
            }
            view.leader = m.name;
            m.role = Role::Other;
        } else {
            m.role = parse_role(m.role_text);
            if (m.role == Role::StandbyLeader) view.leader = m.name;
        }
        if (const json::value* s = o.if_contains("state"); s && s->is_string()) {
            m.state_text = s->get_string();
            m.state = parse_state(m.state_text);
        }
        m.timeline = as_u64(o.if_contains("timeline"));
        m.reported_lag = as_u64(o.if_contains("lag"));  // "unknown" stays unknown
        if (const json::value* t = o.if_contains("tags"); t && t->is_object())
            for (const auto& [k, tv] : t->get_object())
                if (tag_is_set(tv)) m.tags.emplace_back(k);
        std::sort(m.tags.begin(), m.tags.end());
        view.members.push_back(std::move(m));
    }
    return view;
}

std::optional<uint64_t> parse_status_optime(std::string_view text) {
    auto v = parse_json(text);
    if (!v || !v->is_object()) return std::nullopt;
    return as_u64(v->get_object().if_contains("optime"));
}

std::optional<uint64_t> parse_legacy_optime(std::string_view text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
    uint64_t v = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc() || end != text.data() + text.size() || text.empty()) return std::nullopt;
    return v;
}

std::optional<std::string> parse_sync_standby(std::string_view text) {
    auto v = parse_json(text);
    if (!v || !v->is_object()) return std::nullopt;
    const json::value* s = v->get_object().if_contains("sync_standby");
    if (!s || !s->is_string()) return std::nullopt;
    return std::string(s->get_string());
}

std::optional<FailoverKey> parse_failover(std::string_view value) {
    while (!value.empty() && (value.back() == '\n' || value.back() == ' ')) value.remove_suffix(1);
    if (value.empty()) return std::nullopt;
    FailoverKey f;
    if (value.front() == '[' || value.front() == '"') return std::nullopt;  // JSON, but not an object
    if (value.front() != '{') {
        // "leader:member" (either part may be empty)
        const size_t colon = value.find(':');
        auto trim = [](std::string_view v) {
            while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
            while (!v.empty() && v.back() == ' ') v.remove_suffix(1);
            return v;
        };
        const std::string_view l = trim(value.substr(0, colon));
        const std::string_view m = colon == std::string_view::npos ? std::string_view() : trim(value.substr(colon + 1));
        if (!l.empty()) f.leader = std::string(l);
        if (!m.empty()) f.candidate = std::string(m);
        if (!f.leader && !f.candidate) return std::nullopt;
        return f;
    }
    boost::system::error_code ec;
    const json::value v = json::parse(json::string_view(value.data(), value.size()), ec);
    if (ec || !v.is_object()) return std::nullopt;
    const auto& o = v.get_object();
    auto str = [&](const char* k) -> std::optional<std::string> {
        const json::value* x = o.if_contains(k);
        if (!x || !x->is_string() || x->get_string().empty()) return std::nullopt;
        return std::string(x->get_string());
    };
    f.leader = str("leader");
    f.candidate = str("member");
    const json::value* at = o.if_contains("scheduled_at");
    f.scheduled = at && !at->is_null();
    // The new leader empties the key once a switchover is done (Patroni
    // writes "{}" rather than deleting it): naming nobody, it asks for nothing.
    if (!f.leader && !f.candidate) return std::nullopt;
    return f;
}

std::shared_ptr<Topology> build_topology(const ClusterState& s, const BuildOptions& o, const std::string& probe_member,
                                         ProbeStatus probe) {
    auto t = std::make_shared<Topology>();
    t->source = "patroni";  // the follower names its store
    if (s.leader) t->leader = *s.leader;
    // A switchover (or failover) asked for now, away from the current leader.
    if (s.failover && !s.failover->scheduled && s.leader && (!s.failover->leader || *s.failover->leader == *s.leader) &&
        (!s.failover->candidate || *s.failover->candidate != *s.leader)) {
        t->switchover_pending = true;
        t->switchover_to = s.failover->candidate.value_or("");
        t->switchover_since = s.failover_seen;
    }
    for (const auto& [name, mi] : s.members) {
        Member m;
        m.name = name;
        m.host = mi.host;
        m.port = mi.port;
        m.role = mi.role;
        m.state = mi.state;
        m.tags = mi.tags;
        std::optional<uint64_t> head = s.optime;
        if (s.leader_wal && (!head || *s.leader_wal > *head)) head = s.leader_wal;
        std::optional<uint64_t> pos = mi.xlog_location;
        if (auto r = s.replayed.find(name); r != s.replayed.end()) pos = pos ? std::min(*pos, r->second) : r->second;
        if (head && pos) m.lag_bytes = *head > *pos ? *head - *pos : 0;
        else if (mi.reported_lag) m.lag_bytes = mi.reported_lag;
        if (auto w = o.weights.find(name); w != o.weights.end()) m.weight = w->second;
        m.excluded = std::find(o.exclude.begin(), o.exclude.end(), name) != o.exclude.end();
        m.unreachable = s.unreachable.count(name) > 0;
        t->members.push_back(std::move(m));
    }
    if (!s.leader) {
        t->primary_reason = "no leader key: Patroni has no leader (failover or switchover in progress)";
        return t;
    }
    size_t idx = t->members.size();
    for (size_t i = 0; i < t->members.size(); ++i)
        if (t->members[i].name == *s.leader) idx = i;
    if (idx == t->members.size()) {
        t->primary_reason = "leader " + *s.leader + " has no member znode";
        return t;
    }
    const Member& m = t->members[idx];
    const bool probed = probe_member == *s.leader;
    if (m.excluded) {
        t->primary_reason = "leader " + m.name + " is excluded in config";
    } else if (probed && probe == ProbeStatus::Unreachable) {
        t->primary_reason = "leader " + m.name + "'s PostgreSQL refuses connections";
    } else if (probed && probe == ProbeStatus::InRecovery &&
               !(m.role == Role::StandbyLeader && o.allow_standby_leader && m.state == State::Running)) {
        // Still (or again) read-only whatever its znode says: promotion not
        // finished, or a demotion under way. Writes would fail with 25006.
        t->primary_reason = "leader " + m.name + " is not writable: its PostgreSQL is in recovery";
    } else if ((probed && probe == ProbeStatus::Writable) ||
               (m.state == State::Running &&
                (m.role == Role::Primary || (m.role == Role::StandbyLeader && o.allow_standby_leader)))) {
        t->primary = idx;
    } else {
        t->primary_reason = "leader " + m.name + " is not writable yet (role " + std::string(to_string(m.role)) +
                            ", state " + std::string(to_string(m.state)) +
                            (probed ? ", probe: " + std::string(to_string(probe)) : std::string()) + ")";
    }
    return t;
}

}  // namespace pgrelay::topology::patroni
