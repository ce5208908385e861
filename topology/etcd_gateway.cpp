// etcd JSON gateway bodies (etcd_gateway.hpp), with Boost.JSON.
#include "topology/etcd_gateway.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>
#include <charconv>

#include "proxy/log.hpp"
#include "topology/http.hpp"

namespace pgrelay::topology::etcd {

namespace json = boost::json;

namespace {

std::optional<json::value> parse_json(std::string_view text) {
    boost::system::error_code ec;
    json::value v = json::parse(text, ec);
    if (ec) return std::nullopt;
    return v;
}

// int64 fields come as JSON strings ("123"); accept plain numbers too. An
// absent field is 0 (the gateway omits defaults); a malformed one is an error.
bool get_int64(const json::object& o, std::string_view key, int64_t& out) {
    out = 0;
    const json::value* v = o.if_contains(key);
    if (!v) return true;
    if (v->is_int64()) {
        out = v->get_int64();
        return true;
    }
    if (v->is_uint64()) {
        if (v->get_uint64() > uint64_t(INT64_MAX)) return false;
        out = static_cast<int64_t>(v->get_uint64());
        return true;
    }
    if (!v->is_string()) return false;
    const auto& s = v->get_string();
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    return ec == std::errc() && p == s.data() + s.size() && !s.empty();
}

bool get_bytes(const json::object& o, std::string_view key, std::string& out) {
    out.clear();
    const json::value* v = o.if_contains(key);
    if (!v) return true;
    if (!v->is_string()) return false;
    auto d = http::base64_decode(std::string_view(v->get_string()));
    if (!d) return false;
    out = std::move(*d);
    return true;
}

bool get_bool(const json::object& o, std::string_view key) {
    const json::value* v = o.if_contains(key);
    return v && v->is_bool() && v->get_bool();
}

bool parse_kv(const json::value& v, KeyValue& kv, std::string& error) {
    if (!v.is_object()) {
        error = "a key-value is not an object";
        return false;
    }
    const auto& o = v.get_object();
    if (!get_bytes(o, "key", kv.key) || !get_bytes(o, "value", kv.value)) {
        error = "a key or value is not valid base64";
        return false;
    }
    if (!get_int64(o, "create_revision", kv.create_revision) || !get_int64(o, "mod_revision", kv.mod_revision) ||
        !get_int64(o, "version", kv.version) || !get_int64(o, "lease", kv.lease)) {
        error = "a key-value has a malformed revision, version or lease";
        return false;
    }
    if (kv.key.empty()) {
        error = "a key-value without a key";
        return false;
    }
    return true;
}

bool header_revision(const json::object& o, int64_t& rev, std::string& error) {
    rev = 0;
    const json::value* h = o.if_contains("header");
    if (!h) return true;
    if (!h->is_object() || !get_int64(h->get_object(), "revision", rev)) {
        error = "malformed header";
        return false;
    }
    return true;
}

std::string encode(const json::object& o) { return json::serialize(o); }

}  // namespace

std::string prefix_range_end(std::string_view prefix) {
    std::string end(prefix);
    while (!end.empty()) {
        auto& last = reinterpret_cast<unsigned char&>(end.back());
        if (last < 0xff) {
            ++last;
            return end;
        }
        end.pop_back();
    }
    return std::string(1, '\0');
}

std::string range_request(std::string_view prefix, bool keys_only) {
    json::object o;
    o["key"] = http::base64_encode(prefix);
    o["range_end"] = http::base64_encode(prefix_range_end(prefix));
    if (keys_only) o["keys_only"] = true;
    return encode(o);
}

std::string watch_request(std::string_view prefix, int64_t start_revision) {
    json::object c;
    c["key"] = http::base64_encode(prefix);
    c["range_end"] = http::base64_encode(prefix_range_end(prefix));
    c["start_revision"] = std::to_string(start_revision);
    c["prev_kv"] = true;
    c["progress_notify"] = true;
    json::object o;
    o["create_request"] = std::move(c);
    return encode(o);
}

std::string authenticate_request(std::string_view user, std::string_view password) {
    json::object o;
    o["name"] = user;
    o["password"] = password;
    return encode(o);
}

std::string lease_grant_request(int64_t ttl_seconds) {
    json::object o;
    o["TTL"] = std::to_string(ttl_seconds);
    return encode(o);
}

std::string put_request(std::string_view key, std::string_view value, int64_t lease) {
    json::object o;
    o["key"] = http::base64_encode(key);
    o["value"] = http::base64_encode(value);
    if (lease != 0) o["lease"] = std::to_string(lease);
    return encode(o);
}

std::string lease_request(int64_t lease) {
    json::object o;
    o["ID"] = std::to_string(lease);
    return encode(o);
}

std::optional<int64_t> parse_lease_grant(std::string_view body, std::string& error) {
    auto v = parse_json(body);
    int64_t id = 0;
    if (!v || !v->is_object() || !get_int64(v->get_object(), "ID", id) || id == 0) {
        error = "lease grant: no lease ID in the answer";
        return std::nullopt;
    }
    return id;
}

std::optional<int64_t> parse_keepalive_ttl(std::string_view body, std::string& error) {
    // A streamed RPC: one object per answer; the first is enough.
    http::JsonObjectSplitter splitter;
    splitter.feed(body);
    auto first = splitter.next();
    auto v = first ? parse_json(*first) : std::nullopt;
    if (!v || !v->is_object()) {
        error = "lease keepalive: unreadable answer";
        return std::nullopt;
    }
    const json::object* o = &v->get_object();
    if (const json::value* r = o->if_contains("result")) {
        if (!r->is_object()) {
            error = "lease keepalive: malformed result";
            return std::nullopt;
        }
        o = &r->get_object();
    } else if (o->if_contains("error")) {
        error = "lease keepalive: " + log::printable(body.substr(0, 200));
        return std::nullopt;
    }
    int64_t ttl = 0;
    if (!get_int64(*o, "TTL", ttl)) {
        error = "lease keepalive: malformed TTL";
        return std::nullopt;
    }
    return ttl;
}

std::optional<std::string> api_prefix(std::string_view body, std::string& error) {
    auto v = parse_json(body);
    const json::value* cl = v && v->is_object() ? v->get_object().if_contains("etcdcluster") : nullptr;
    if (!cl || !cl->is_string()) {
        error = "/version did not answer {\"etcdcluster\": ...}";
        return std::nullopt;
    }
    const std::string_view s(cl->get_string());
    int major = 0, minor = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), major);
    if (ec != std::errc() || p == s.data() + s.size() || *p != '.' ||
        std::from_chars(p + 1, s.data() + s.size(), minor).ec != std::errc()) {
        error = "unreadable etcd cluster version '" + std::string(s) + "'";
        return std::nullopt;
    }
    if (major < 3 || (major == 3 && minor < 1)) {
        // 3.0 has no watch in its gateway.
        error = "etcd cluster version " + std::string(s) + " is too old (pgrelay needs 3.1 or later)";
        return std::nullopt;
    }
    if (major == 3 && minor < 3) return std::string("/v3alpha");
    if (major == 3 && minor == 3) return std::string("/v3beta");
    return std::string("/v3");
}

std::optional<RangeResponse> parse_range_response(std::string_view body, std::string& error) {
    auto v = parse_json(body);
    if (!v || !v->is_object()) {
        error = "range answer is not a JSON object";
        return std::nullopt;
    }
    const auto& o = v->get_object();
    RangeResponse r;
    if (!header_revision(o, r.revision, error)) return std::nullopt;
    if (r.revision <= 0) {
        error = "range answer has no header revision";
        return std::nullopt;
    }
    if (const json::value* kvs = o.if_contains("kvs")) {
        if (!kvs->is_array()) {
            error = "range answer's kvs is not an array";
            return std::nullopt;
        }
        for (const auto& e : kvs->get_array()) {
            KeyValue kv;
            if (!parse_kv(e, kv, error)) return std::nullopt;
            r.kvs.push_back(std::move(kv));
        }
    }
    r.more = get_bool(o, "more");
    return r;
}

std::optional<std::string> parse_authenticate_response(std::string_view body, std::string& error) {
    auto v = parse_json(body);
    const json::value* t = v && v->is_object() ? v->get_object().if_contains("token") : nullptr;
    if (!t || !t->is_string() || t->get_string().empty()) {
        error = "authenticate answer has no token";
        return std::nullopt;
    }
    return std::string(t->get_string());
}

std::optional<Error> parse_error(std::string_view body) {
    auto v = parse_json(body);
    if (!v || !v->is_object()) return std::nullopt;
    const auto& o = v->get_object();
    const json::value* e = o.if_contains("error");
    if (!e) return std::nullopt;
    Error err;
    int64_t n = 0;
    if (e->is_object()) {  // streamed: {"error": {"grpc_code", "http_code", "message", "http_status"}}
        const auto& eo = e->get_object();
        if (get_int64(eo, "grpc_code", n)) err.grpc_code = static_cast<int>(n);
        if (get_int64(eo, "http_code", n)) err.http_code = static_cast<int>(n);
        if (const json::value* m = eo.if_contains("message"); m && m->is_string()) err.message = m->get_string();
    } else {  // unary: {"error": "...", "code": N, "message": "..."}
        if (get_int64(o, "code", n)) err.grpc_code = static_cast<int>(n);
        if (const json::value* m = o.if_contains("message"); m && m->is_string()) err.message = m->get_string();
        else if (e->is_string()) err.message = e->get_string();
    }
    if (err.message.empty()) err.message = "unspecified error";
    return err;
}

std::optional<WatchMessage> parse_watch_message(std::string_view object, std::string& error) {
    auto v = parse_json(object);
    if (!v || !v->is_object()) {
        error = "watch message is not a JSON object";
        return std::nullopt;
    }
    WatchMessage m;
    if (auto e = parse_error(object)) {
        m.kind = WatchMessage::Kind::Error;
        m.error = std::move(*e);
        return m;
    }
    const json::value* r = v->get_object().if_contains("result");
    if (!r || !r->is_object()) {
        error = "watch message has neither result nor error";
        return std::nullopt;
    }
    const auto& o = r->get_object();
    if (!header_revision(o, m.revision, error) || !get_int64(o, "watch_id", m.watch_id) ||
        !get_int64(o, "compact_revision", m.compact_revision)) {
        if (error.empty()) error = "watch message has a malformed watch_id or compact_revision";
        return std::nullopt;
    }
    if (const json::value* evs = o.if_contains("events")) {
        if (!evs->is_array()) {
            error = "watch message's events is not an array";
            return std::nullopt;
        }
        for (const auto& ev : evs->get_array()) {
            if (!ev.is_object()) {
                error = "a watch event is not an object";
                return std::nullopt;
            }
            const auto& eo = ev.get_object();
            Event e;
            if (const json::value* t = eo.if_contains("type")) {
                if (t->is_string() && t->get_string() == "DELETE") e.type = Event::Type::Delete;
                else if (!(t->is_string() && t->get_string() == "PUT")) {
                    error = "a watch event of unknown type";
                    return std::nullopt;
                }
            }
            const json::value* kv = eo.if_contains("kv");
            if (!kv || !parse_kv(*kv, e.kv, error)) {
                if (error.empty()) error = "a watch event without kv";
                return std::nullopt;
            }
            m.events.push_back(std::move(e));
        }
    }
    if (const json::value* cr = o.if_contains("cancel_reason"); cr && cr->is_string()) m.cancel_reason = cr->get_string();
    if (get_bool(o, "canceled")) m.kind = WatchMessage::Kind::Canceled;
    else if (get_bool(o, "created")) m.kind = WatchMessage::Kind::Created;
    else if (!m.events.empty()) m.kind = WatchMessage::Kind::Events;
    else m.kind = WatchMessage::Kind::Progress;
    return m;
}

void WatchLedger::reset(const std::vector<KeyValue>& kvs) {
    known_.clear();
    deleted_.clear();
    pending_.clear();
    for (const auto& kv : kvs) known_[kv.key] = kv.mod_revision;
}

void WatchLedger::put(const std::string& key, int64_t mod_revision) {
    known_[key] = mod_revision;
    deleted_.erase(key);
}

void WatchLedger::erase(const std::string& key, int64_t mod_revision) {
    known_.erase(key);
    deleted_[key] = mod_revision;
}

bool WatchLedger::met(const Expectation& e) const {
    const auto k = known_.find(e.key);
    if (e.present) {
        // Seen at that revision or later, or deleted after it.
        if (k != known_.end() && k->second >= e.revision) return true;
        const auto d = deleted_.find(e.key);
        return d != deleted_.end() && d->second > e.revision;
    }
    // Gone at the read, so the watch owes us its deletion -- unless the key
    // was written again since (a newer revision than we held then).
    return k == known_.end() || k->second != e.revision;
}

WatchLedger::Verdict WatchLedger::check(const std::vector<KeyValue>& keys, int64_t revision) {
    // The previous check's differences must be explained by now.
    for (const auto& e : pending_) {
        if (!met(e)) {
            difference_ = e.present ? "key " + e.key + " at revision " + std::to_string(e.revision) +
                                          " never came through the watch"
                                    : "the deletion of key " + e.key + " never came through the watch";
            pending_.clear();
            return Verdict::Stale;
        }
    }
    pending_.clear();
    std::map<std::string, int64_t> read;
    for (const auto& kv : keys) {
        read[kv.key] = kv.mod_revision;
        Expectation e{kv.key, kv.mod_revision, true};
        if (!met(e)) pending_.push_back(std::move(e));
    }
    for (const auto& [key, rev] : known_)
        if (!read.count(key) && rev <= revision) pending_.push_back({key, rev, false});
    if (pending_.empty()) return Verdict::InStep;
    difference_ = pending_.front().present ? "key " + pending_.front().key + " changed at revision " +
                                                 std::to_string(pending_.front().revision) + ", not yet seen"
                                           : "key " + pending_.front().key + " was deleted, not yet seen";
    return Verdict::Behind;
}

}  // namespace pgrelay::topology::etcd
