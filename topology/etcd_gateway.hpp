// etcd v3's JSON gateway (grpc-gateway over HTTP/1.1), as pgrelay uses it:
// request bodies it sends and the answers it reads. No I/O here.
// Gateway conventions (etcd 3.4, api/etcdserverpb/rpc.proto mapped to JSON):
//  - keys and values are base64; int64 fields are JSON strings;
//  - fields at their default value are left out: a PUT event has no "type",
//    a range that matches nothing has no "kvs", a revision 0 no "revision";
//  - a unary error is {"error": "...", "code": <grpc code>, "message": "..."};
//    an error in a stream is {"error": {"grpc_code", "http_code", "message"}}.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgrelay::topology::etcd {

// gRPC status codes that change what pgrelay does.
constexpr int kGrpcUnauthenticated = 16;  // token expired or invalid: authenticate again
constexpr int kGrpcFailedPrecondition = 9;

struct KeyValue {
    std::string key;  // decoded
    std::string value;
    int64_t create_revision = 0;
    int64_t mod_revision = 0;
    int64_t version = 0;
    int64_t lease = 0;
};

struct Error {
    int grpc_code = 0;  // 0 when the answer said none
    int http_code = 0;
    std::string message;
};

// The end of the range holding every key that starts with `prefix`: the
// prefix with its last byte incremented (bytes 0xff are dropped first);
// "\0" (all keys) for an empty or all-0xff prefix, as etcdctl does.
std::string prefix_range_end(std::string_view prefix);

std::string range_request(std::string_view prefix, bool keys_only);
std::string watch_request(std::string_view prefix, int64_t start_revision);
std::string authenticate_request(std::string_view user, std::string_view password);

// Leases, for pgrelay's own registration key (lease/grant, kv/put with the
// lease, lease/keepalive, lease/revoke).
std::string lease_grant_request(int64_t ttl_seconds);
std::string put_request(std::string_view key, std::string_view value, int64_t lease);
std::string lease_request(int64_t lease);  // {"ID": ...}: keepalive and revoke
// The lease granted: {"ID":"..","TTL":".."}; nullopt with `error` set.
std::optional<int64_t> parse_lease_grant(std::string_view body, std::string& error);
// A keepalive's answer ({"result":{"ID","TTL"}}, or the same unwrapped): the
// lease's remaining TTL; 0 when the lease is gone (expired or revoked).
std::optional<int64_t> parse_keepalive_ttl(std::string_view body, std::string& error);

// GET /version: {"etcdserver":"3.4.23","etcdcluster":"3.4.0"}. The gateway's
// path prefix for that cluster version ("/v3" from 3.4, "/v3beta" on 3.3,
// "/v3alpha" before), or nullopt with `error` set.
std::optional<std::string> api_prefix(std::string_view version_body, std::string& error);

struct RangeResponse {
    int64_t revision = 0;  // the store's revision the range was read at
    std::vector<KeyValue> kvs;
    bool more = false;
};
std::optional<RangeResponse> parse_range_response(std::string_view body, std::string& error);
std::optional<std::string> parse_authenticate_response(std::string_view body, std::string& error);

// An error answer (unary or streamed); nullopt when `body` is not one.
std::optional<Error> parse_error(std::string_view body);

struct Event {
    enum class Type { Put, Delete } type = Type::Put;
    KeyValue kv;
};

// One object of the watch stream.
struct WatchMessage {
    enum class Kind {
        Created,   // the watch is set up
        Events,    // one or more changes, in revision order
        Progress,  // no change; the header revision says how far the watch is
        Canceled,  // the server ended the watch (e.g. compacted: compact_revision set)
        Error,     // the stream failed; the server closes it next
    } kind = Kind::Progress;
    int64_t revision = 0;  // header.revision
    int64_t watch_id = 0;
    std::vector<Event> events;
    int64_t compact_revision = 0;
    std::string cancel_reason;
    Error error;
};
std::optional<WatchMessage> parse_watch_message(std::string_view object, std::string& error);

// What the watch has told us about the prefix's keys, checked against
// periodic keys-only reads. A watch can fall silent without the connection
// dropping (a gateway or member wedged, vip-manager's 15-minute hang); this
// is how that is noticed even when TCP keepalive sees a live peer.
//
// Flow: reset() after every range; put()/erase() for every watch event;
// check() with each keys-only read. A read at revision H shows what the
// watch must have delivered by then; an event may still be in flight, so a
// difference only counts when the next check finds it still unexplained.
class WatchLedger {
public:
    enum class Verdict { InStep, Behind, Stale };  // Behind: a first unexplained difference

    void reset(const std::vector<KeyValue>& kvs);
    void put(const std::string& key, int64_t mod_revision);
    void erase(const std::string& key, int64_t mod_revision);
    Verdict check(const std::vector<KeyValue>& keys, int64_t revision);
    // What the last Behind/Stale verdict was about, for the log.
    const std::string& difference() const noexcept { return difference_; }
    size_t size() const noexcept { return known_.size(); }

private:
    struct Expectation {
        std::string key;
        int64_t revision = 0;
        bool present = true;  // the key must be at >= revision; else gone (or changed) since `revision`
    };
    bool met(const Expectation& e) const;

    std::map<std::string, int64_t> known_;    // key -> mod_revision, as the watch delivered
    std::map<std::string, int64_t> deleted_;  // key -> revision of its deletion, since the last reset
    std::vector<Expectation> pending_;        // unexplained at the previous check
    std::string difference_;
};

}  // namespace pgrelay::topology::etcd
