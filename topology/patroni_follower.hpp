// PatroniFollower: what every Patroni source (ZooKeeper, etcd, Patroni's REST
// API) shares once it has read its store: Patroni's keys turned into a
// ClusterState, the member grace period, the leader and replay probes, and
// publishing a snapshot with the reroute time. A source only reads its store
// and feeds what it read here; everything runs on the control thread.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "topology/leader_probe.hpp"
#include "topology/patroni.hpp"
#include "topology/source.hpp"

namespace boost::asio::ssl {
class context;
}

namespace pgrelay::topology {

namespace http {
class Client;
}

// While the DCS cannot be trusted (unreachable, or its leader no longer
// writable), the follower asks every member's Patroni REST API `GET /primary`,
// the check HAProxy relies on: only the member holding the leader lock
// answers 200. rw follows that member once the libpq probe sees it writable,
// until the DCS answers again and is the authority once more.
struct RestFallbackOptions {
    bool enabled = false;  // the DCS sources turn it on (patroni_api reads the REST API already)
    std::chrono::milliseconds interval{250};
    std::chrono::milliseconds request_timeout{500};
    std::shared_ptr<boost::asio::ssl::context> tls;  // for https api_urls; null: those members are skipped
};

struct FollowerOptions {
    std::string source;        // Topology::source and the log prefix: "zookeeper", "etcd", "patroni_api"
    std::string leader_event;  // what the reroute time is measured from, for the log: "leader znode event"
    std::string where;         // the store, for "cluster state loaded from ..."
    patroni::BuildOptions build;
    uint64_t max_replica_lag = 16ull << 20;  // only to log when a replica crosses it
    // Called with the time from the leader event (note_leader_event) to rw
    // routing to the new leader.
    std::function<void(double seconds)> on_reroute;
    ProbeOptions probe;
    RestFallbackOptions rest;
    // Member name -> "host:port" pgrelay uses instead of its conn_url's.
    std::map<std::string, std::string> addresses;
    SourceStats* stats = nullptr;  // optional: the REST fallback's gauge and counter
};

// Flow: create() on the control thread, start() (probe threads). Feed it
// with apply_key() / set_* / member_gone() as the store is read; call
// set_loaded() once the first complete read is in, then publish() after each
// batch of changes (it publishes only when the snapshot differs). stop() joins
// the probes; the sources call it from their own stop().
class PatroniFollower : public std::enable_shared_from_this<PatroniFollower> {
public:
    using Clock = std::chrono::steady_clock;

    static std::shared_ptr<PatroniFollower> create(boost::asio::io_context& ctx, SnapshotHub& hub,
                                                   FollowerOptions opts);
    ~PatroniFollower();
    void start();
    void stop();

    // One of Patroni's keys by its path below /<namespace>/<scope>/:
    // "leader", "members/<name>", "status", "optime/leader", "sync". `value`
    // null means the key is absent (a member then leaves after the grace
    // period). Other keys are ignored; returns whether the key is one of these.
    bool apply_key(std::string_view key, const std::string* value);
    // The same from an already parsed view (Patroni's REST /cluster).
    void set_leader(std::optional<std::string> leader);
    void set_member(patroni::MemberInfo m);
    void member_gone(const std::string& name);
    std::vector<std::string> member_names() const;

    // The event that announced a new leader key (reroute timing starts here).
    void note_leader_event(Clock::time_point at) {
        leader_event_at_ = at;
        leader_event_label_.clear();
    }
    const std::optional<std::string>& leader() const { return state_.leader; }

    void set_loaded();
    bool loaded() const { return loaded_; }
    // From the source: whether its store is reachable (ZooKeeper connected,
    // etcd endpoint answering). While it is not, the REST fallback runs.
    void set_store_reachable(bool reachable);
    // From the source, after a complete read answered by the store (a
    // re-read, a watch batch, a check): its view is current, so a REST
    // override ends and the DCS is the authority again.
    void note_store_answered();
    void publish();
    void set_member_options(const std::map<std::string, uint32_t>& weights, const std::vector<std::string>& exclude,
                            bool allow_standby_leader);

    // Members vanish and come back around every state change Patroni makes
    // (ZooKeeper: a new ephemeral znode; etcd: a new lease): one that is
    // back within this long never left, and its sessions stay.
    static constexpr std::chrono::milliseconds kVanishGrace{1500};

private:
    PatroniFollower(boost::asio::io_context& ctx, SnapshotHub& hub, FollowerOptions opts);
    void probe_report(const std::string& member, patroni::ProbeStatus status, std::optional<uint64_t> wal,
                      const std::string& detail);
    void replay_report(const std::string& member, std::optional<uint64_t> replayed, bool reachable);
    std::string summarize(const Topology& t, bool with_lag) const;
    // REST fallback: start or stop the per-member checks as rest_wanted() says.
    bool rest_wanted() const;
    void rest_update();
    // `self` keeps this object alive for the check's whole life.
    boost::asio::awaitable<void> rest_check(std::shared_ptr<PatroniFollower> self, std::string member, std::string url,
                                            uint64_t ticket);
    void rest_decide();
    void rest_clear(const char* why);

    boost::asio::io_context& ctx_;
    SnapshotHub& hub_;
    FollowerOptions opts_;
    bool stopped_ = false;
    bool loaded_ = false;

    patroni::ClusterState state_;
    std::optional<uint64_t> status_optime_, legacy_optime_;
    std::string last_summary_, last_routing_summary_;
    std::string last_primary_;  // the member rw routed to in the last snapshot
    std::optional<Clock::time_point> leader_event_at_;

    std::map<std::string, uint64_t> vanished_;  // member -> removal ticket
    uint64_t vanish_ticket_ = 0;

    std::string probe_member_;
    patroni::ProbeStatus probe_status_ = patroni::ProbeStatus::Unknown;
    std::optional<uint64_t> probe_wal_;
    std::string leader_event_label_;  // what leader_event_at_ was (default: opts_.leader_event)

    bool store_reachable_ = true;
    struct RestAnswer {
        int status = 0;  // HTTP status of GET /primary; 0: no answer
        Clock::time_point at{};
    };
    bool rest_running_ = false;
    struct RestCheck {
        std::string url;  // the member's API base the check polls
        uint64_t ticket = 0;
    };
    std::map<std::string, RestCheck> rest_checks_;  // member -> its running check (it ends once gone or replaced)
    uint64_t rest_tickets_ = 0;
    std::map<std::string, RestAnswer> rest_answers_;
    std::map<std::string, std::shared_ptr<http::Client>> rest_clients_;
    bool rest_override_ = false;             // routing follows the REST answers, not the DCS's leader
    std::optional<std::string> rest_leader_;  // the one member answering 200 (none: hold rw)
    std::string rest_warned_;                 // last warning, not repeated

    std::unique_ptr<LeaderProbe> probe_;
    std::unique_ptr<ReplayProbe> replay_probe_;
};

// Runs a source's main coroutine on `ctx`, keeping `keep` (the source's
// state) alive until it ends; an exception that escapes it is logged with
// `what` ("etcd: the watcher") instead of ending the process.
void spawn_source_loop(boost::asio::io_context& ctx, boost::asio::awaitable<void> loop, std::shared_ptr<void> keep,
                       std::string what);

}  // namespace pgrelay::topology
