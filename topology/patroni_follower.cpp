// PatroniFollower (patroni_follower.hpp).
#include "topology/patroni_follower.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <sstream>

#include "proxy/log.hpp"
#include "topology/http_client.hpp"

namespace pgrelay::topology {

namespace asio = boost::asio;

std::shared_ptr<PatroniFollower> PatroniFollower::create(asio::io_context& ctx, SnapshotHub& hub,
                                                         FollowerOptions opts) {
    return std::shared_ptr<PatroniFollower>(new PatroniFollower(ctx, hub, std::move(opts)));
}

PatroniFollower::PatroniFollower(asio::io_context& ctx, SnapshotHub& hub, FollowerOptions opts)
    : ctx_(ctx), hub_(hub), opts_(std::move(opts)) {}

PatroniFollower::~PatroniFollower() { stop(); }

void PatroniFollower::start() {
    // Probe threads report through the control thread; a report arriving
    // after the follower is gone is dropped.
    std::weak_ptr<PatroniFollower> weak = weak_from_this();
    probe_ = std::make_unique<LeaderProbe>(
        opts_.probe, [weak](const std::string& member, patroni::ProbeStatus status, std::optional<uint64_t> wal,
                            const std::string& detail) {
            if (auto self = weak.lock())
                asio::post(self->ctx_, [self, member, status, wal, detail] {
                    self->probe_report(member, status, wal, detail);
                });
        });
    replay_probe_ = std::make_unique<ReplayProbe>(
        opts_.probe, [weak](const std::string& member, std::optional<uint64_t> replayed, bool reachable) {
            if (auto self = weak.lock())
                asio::post(self->ctx_,
                           [self, member, replayed, reachable] { self->replay_report(member, replayed, reachable); });
        });
}

void PatroniFollower::stop() {
    stopped_ = true;
    rest_checks_.clear();
    for (auto& [name, c] : rest_clients_) c->close();
    if (probe_) probe_->stop();
    if (replay_probe_) replay_probe_->stop();
}

bool PatroniFollower::apply_key(std::string_view key, const std::string* value) {
    if (key == "leader") {
        std::optional<std::string> leader;
        if (value) {
            std::string v = *value;
            while (!v.empty() && (v.back() == '\n' || v.back() == ' ')) v.pop_back();
            if (!v.empty()) leader = v;
        }
        set_leader(std::move(leader));
    } else if (key == "status") {
        status_optime_ = value ? patroni::parse_status_optime(*value) : std::nullopt;
    } else if (key == "optime/leader") {
        legacy_optime_ = value ? patroni::parse_legacy_optime(*value) : std::nullopt;
    } else if (key == "sync") {
        state_.sync_standby = value ? patroni::parse_sync_standby(*value) : std::nullopt;
    } else if (key == "failover") {
        auto f = value ? patroni::parse_failover(*value) : std::nullopt;
        // A new request (or one rewritten in place) starts its own
        // switchover_hold.
        if (f && (!state_.failover || state_.failover->leader != f->leader || state_.failover->candidate != f->candidate ||
                  state_.failover->scheduled != f->scheduled)) {
            state_.failover_seen = Clock::now();
            log::info("{}: failover key: {} -> {}{}", opts_.source, f->leader.value_or("(the leader)"),
                      f->candidate.value_or("(any member)"), f->scheduled ? " (scheduled)" : "");
        }
        state_.failover = std::move(f);
    } else if (key.rfind("members/", 0) == 0 && key.size() > 8 && key.find('/', 8) == std::string_view::npos) {
        const std::string name(key.substr(8));
        if (!value) {
            member_gone(name);
        } else {
            std::string err;
            if (auto m = patroni::parse_member(name, *value, err)) {
                set_member(std::move(*m));
            } else {
                log::warn("{}: ignoring member {}: {}", opts_.source, name, err);
                vanished_.erase(name);
                state_.members.erase(name);
            }
        }
    } else {
        return false;
    }
    state_.optime = status_optime_ ? status_optime_ : legacy_optime_;
    return true;
}

void PatroniFollower::set_leader(std::optional<std::string> leader) {
    if (leader == state_.leader) return;
    log::info("{}: leader key {}", opts_.source, leader ? "names " + *leader : std::string("is gone"));
    // A new leader learnt without an event of its own (ZooKeeper: deleted and
    // created again before the re-read; a resync): time it from now, so the
    // reroute is still measured.
    if (leader && loaded_ && !leader_event_at_) leader_event_at_ = Clock::now();
    state_.leader = std::move(leader);
}

void PatroniFollower::set_member(patroni::MemberInfo m) {
    vanished_.erase(m.name);
    if (auto a = opts_.addresses.find(m.name); a != opts_.addresses.end())
        if (auto hp = parse_host_port(a->second)) {
            m.host = hp->host;
            m.port = hp->port;
        }
    std::string name = m.name;
    state_.members[name] = std::move(m);
}

std::vector<std::string> PatroniFollower::member_names() const {
    std::vector<std::string> out;
    for (const auto& [name, m] : state_.members) out.push_back(name);
    return out;
}

void PatroniFollower::member_gone(const std::string& name) {
    if (!state_.members.count(name) || vanished_.count(name)) return;
    const uint64_t ticket = ++vanish_ticket_;
    vanished_[name] = ticket;
    auto timer = std::make_shared<asio::steady_timer>(ctx_, kVanishGrace);
    timer->async_wait([self = shared_from_this(), timer, name, ticket](const boost::system::error_code& ec) {
        if (ec || self->stopped_) return;
        auto it = self->vanished_.find(name);
        if (it == self->vanished_.end() || it->second != ticket) return;  // came back meanwhile
        self->vanished_.erase(it);
        self->state_.members.erase(name);
        self->state_.replayed.erase(name);
        self->state_.unreachable.erase(name);
        log::info("{}: member {} is gone", self->opts_.source, name);
        self->publish();
    });
}

void PatroniFollower::set_loaded() {
    if (loaded_) return;
    loaded_ = true;
    log::info("{}: cluster state loaded from {}", opts_.source, opts_.where);
}

void PatroniFollower::probe_report(const std::string& member, patroni::ProbeStatus status,
                                   std::optional<uint64_t> wal, const std::string& detail) {
    if (stopped_) return;
    if (member != probe_member_ || status != probe_status_) {
        if (status == patroni::ProbeStatus::Unreachable)
            log::warn("probe: leader {} unreachable: {}", member, detail);
        else
            log::info("probe: leader {} is {}", member, to_string(status));
    }
    probe_member_ = member;
    probe_status_ = status;
    probe_wal_ = wal;
    publish();
}

void PatroniFollower::replay_report(const std::string& member, std::optional<uint64_t> replayed, bool reachable) {
    if (stopped_) return;
    if (replayed) state_.replayed[member] = *replayed;
    else state_.replayed.erase(member);
    // A replica pgrelay cannot reach gets no new ro connections until it
    // answers again (each would wait out connect_timeout first).
    if (!reachable && state_.unreachable.insert(member).second)
        log::warn("probe: replica {} unreachable; no new ro connections go there until it answers", member);
    else if (reachable && state_.unreachable.erase(member))
        log::info("probe: replica {} answers again", member);
    publish();
}

void PatroniFollower::set_member_options(const std::map<std::string, uint32_t>& weights,
                                         const std::vector<std::string>& exclude, bool allow_standby_leader) {
    opts_.build.weights = weights;
    opts_.build.exclude = exclude;
    opts_.build.allow_standby_leader = allow_standby_leader;
    if (loaded_) publish();
}

void PatroniFollower::publish() {
    // Only a complete first read is a topology.
    if (!loaded_ || stopped_) return;
    rest_update();
    // While the REST answers override the DCS, build from a copy whose leader
    // is the member holding the lock. Neither it nor the leader the DCS last
    // named is a replica for ro: their member keys are stale, and the new
    // leader only takes writes once the probe sees it writable.
    patroni::ClusterState overridden;
    const patroni::ClusterState* view = &state_;
    if (rest_override_) {
        overridden = state_;
        for (const auto* name : {&state_.leader, &rest_leader_})
            if (*name)
                if (auto it = overridden.members.find(**name); it != overridden.members.end()) it->second.role = Role::Other;
        overridden.leader = rest_leader_;
        overridden.failover.reset();
        view = &overridden;
    }
    const patroni::ClusterState& st = *view;
    // Point the probes at whoever the leader key names, and at the replicas.
    const patroni::MemberInfo* leader = nullptr;
    if (st.leader)
        if (auto it = st.members.find(*st.leader); it != st.members.end()) leader = &it->second;
    if (probe_) {
        if (leader) probe_->set_target(leader->name, leader->host, leader->port);
        else probe_->clear_target();
    }
    if (replay_probe_) {
        std::vector<ReplayProbe::Target> replicas;
        for (const auto& [name, m] : st.members)
            if (m.role == Role::Replica && (!st.leader || name != *st.leader)) replicas.push_back({name, m.host, m.port});
        replay_probe_->set_targets(std::move(replicas));
    }
    state_.leader_wal = leader && probe_member_ == leader->name ? probe_wal_ : std::nullopt;
    overridden.leader_wal = state_.leader_wal;

    auto t = patroni::build_topology(st, opts_.build, probe_member_, probe_status_);
    t->source = opts_.source;
    t->leader_from_rest = rest_override_;
    if (rest_override_ && !rest_leader_)
        t->primary_reason = store_reachable_ ? "no member's Patroni REST API says it holds the leader lock"
                                             : "the DCS is unreachable and no member's Patroni REST API says it holds "
                                               "the leader lock";
    const std::string primary = t->primary ? t->members[*t->primary].name : "";
    const std::string summary = summarize(*t, true);
    if (summary == last_summary_) return;
    last_summary_ = summary;
    // Lag moves with every write; the info log only shows what changes routing.
    const std::string routing_summary = summarize(*t, false);
    const bool log_it = routing_summary != last_routing_summary_;
    last_routing_summary_ = routing_summary;
    if (primary != last_primary_) {
        if (!primary.empty()) {
            std::string how = probe_member_ == primary && probe_status_ == patroni::ProbeStatus::Writable
                                  ? "the probe saw it writable"
                                  : "its member key says running primary";
            if (rest_override_) how += "; its Patroni REST API says it holds the leader lock";
            if (leader_event_at_) {
                const auto ms = std::chrono::duration<double, std::milli>(Clock::now() - *leader_event_at_).count();
                log::info("topology: rw now routes to {} ({}), {:.1f} ms after the {}", primary, how, ms,
                          leader_event_label_.empty() ? opts_.leader_event : leader_event_label_);
                if (opts_.on_reroute) opts_.on_reroute(ms / 1000.0);
                leader_event_at_.reset();
                leader_event_label_.clear();
            } else {
                log::info("topology: rw routes to {} ({})", primary, how);
            }
        } else {
            log::warn("topology: no primary for rw: {}", t->primary_reason);
        }
        last_primary_ = primary;
    }
    if (log_it) log::info("topology: {}", routing_summary);
    else log::debug("topology: {}", summary);
    hub_.publish(std::move(t));
}

// ---------------------------------------------------------------- REST fallback

void PatroniFollower::set_store_reachable(bool reachable) {
    if (reachable == store_reachable_) return;
    store_reachable_ = reachable;
    if (reachable) rest_warned_.clear();
    rest_update();
}

void PatroniFollower::note_store_answered() {
    store_reachable_ = true;
    if (rest_override_) rest_clear("answers again");
    rest_update();
}

bool PatroniFollower::rest_wanted() const {
    if (!opts_.rest.enabled || stopped_ || !loaded_) return false;
    if (!store_reachable_ || rest_override_) return true;
    // The DCS still names a leader the probe finds demoted or down: the DCS
    // may be behind (a blackholed connection is noticed only at its timeout).
    return state_.leader && probe_member_ == *state_.leader &&
           (probe_status_ == patroni::ProbeStatus::InRecovery || probe_status_ == patroni::ProbeStatus::Unreachable);
}

void PatroniFollower::rest_update() {
    if (!rest_wanted()) {
        if (!rest_running_) return;
        rest_running_ = false;
        rest_checks_.clear();
        for (auto& [name, c] : rest_clients_) c->close();
        rest_clients_.clear();
        rest_answers_.clear();
        log::info("rest: the {} view is current; no longer asking the members' Patroni REST APIs", opts_.source);
        return;
    }
    if (!rest_running_) {
        rest_running_ = true;
        log::info("rest: {}; asking every member's Patroni REST API for GET /primary every {} ms",
                  !store_reachable_ ? opts_.source + " is unreachable"
                                    : "leader " + state_.leader.value_or("-") + " is " +
                                          std::string(to_string(probe_status_)) + " but " + opts_.source +
                                          " still names it",
                  opts_.rest.interval.count());
    }
    for (const auto& [name, m] : state_.members) {
        if (m.api_url.empty()) continue;
        if (m.api_url.rfind("https://", 0) == 0 && !opts_.rest.tls) continue;  // no TLS context to reach it with
        auto it = rest_checks_.find(name);
        if (it != rest_checks_.end() && it->second.url == m.api_url) continue;
        const uint64_t ticket = ++rest_tickets_;
        rest_checks_[name] = RestCheck{m.api_url, ticket};
        // The owner goes in by value, taken here while this object surely
        // lives: the check may outlive a stop() by one interval.
        asio::co_spawn(ctx_, rest_check(shared_from_this(), name, m.api_url, ticket), asio::detached);
    }
}

asio::awaitable<void> PatroniFollower::rest_check([[maybe_unused]] std::shared_ptr<PatroniFollower> self,
                                                  std::string member, std::string url_text, uint64_t ticket) {
    const auto url = http::parse_url(url_text, false, 8008);
    if (!url) co_return;
    auto client = std::make_shared<http::Client>(ctx_.get_executor(), *url, url->tls ? opts_.rest.tls : nullptr);
    if (auto old = rest_clients_.find(member); old != rest_clients_.end()) old->second->close();
    rest_clients_[member] = client;
    auto live = [&] {
        auto it = rest_checks_.find(member);
        return !stopped_ && it != rest_checks_.end() && it->second.ticket == ticket;
    };
    asio::steady_timer timer(ctx_);
    while (live()) {
        const auto next = Clock::now() + opts_.rest.interval;
        auto r = co_await client->request("GET", "/primary", "", "", opts_.rest.request_timeout);
        if (!live()) break;
        if (!r.error.empty()) {
            client->close();
            log::debug("rest: {} {}: {}", member, url_text, r.error);
        }
        rest_answers_[member] = RestAnswer{r.error.empty() ? r.status : 0, Clock::now()};
        rest_decide();
        timer.expires_at(next);
        co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    }
    if (auto it = rest_clients_.find(member); it != rest_clients_.end() && it->second == client) rest_clients_.erase(it);
}

void PatroniFollower::rest_decide() {
    if (stopped_) return;
    // Only answers from this round or the last count; a member that does not
    // answer is no evidence either way.
    const auto now = Clock::now();
    const auto fresh = 2 * opts_.rest.interval + opts_.rest.request_timeout;
    std::vector<std::string> holders;
    auto said_not_leader = [&](const std::optional<std::string>& who) {
        if (!who) return true;
        auto it = rest_answers_.find(*who);
        return it != rest_answers_.end() && now - it->second.at <= fresh && it->second.status != 0 &&
               it->second.status != 200;
    };
    for (const auto& [name, a] : rest_answers_)
        if (now - a.at <= fresh && a.status == 200 && state_.members.count(name)) holders.push_back(name);
    std::optional<std::string> leader;
    if (holders.size() == 1) {
        leader = holders.front();
        if (!rest_override_ && state_.leader == leader) return;  // the DCS agrees
    } else if (holders.size() > 1) {
        // Patroni's lock has one holder; two answers of 200 are a stale view
        // somewhere. Writes wait until it clears rather than go to either.
        const std::string msg = holders[0] + " and " + holders[1];
        if (rest_warned_ != msg)
            log::warn("rest: {} both answer GET /primary with 200; rw waits until only one does", msg);
        rest_warned_ = msg;
    } else if (store_reachable_ || !said_not_leader(rest_override_ ? rest_leader_ : state_.leader)) {
        // Nobody claims the lock, but the DCS can still say (or the leader we
        // follow did not answer): keep what we have.
        return;
    }
    if (rest_override_ && rest_leader_ == leader) return;
    if (leader) {
        log::warn("rest: {} answers GET /primary with 200 (it holds the leader lock) while {} {}: rw follows it once "
                  "the probe sees it writable",
                  *leader, opts_.source,
                  store_reachable_ ? "still names " + state_.leader.value_or("no leader") : std::string("is unreachable"));
        if (opts_.stats && leader != state_.leader) opts_.stats->rest_takeovers.fetch_add(1, std::memory_order_relaxed);
        leader_event_at_ = now;
        leader_event_label_ = "Patroni REST answer";
    } else if (holders.empty()) {
        log::warn("rest: no member answers GET /primary with 200 while {} is unreachable: rw waits for a leader",
                  opts_.source);
    }
    rest_override_ = true;
    rest_leader_ = std::move(leader);
    if (opts_.stats) opts_.stats->rest_authority.store(1, std::memory_order_relaxed);
    publish();
}

void PatroniFollower::rest_clear(const char* why) {
    rest_override_ = false;
    rest_leader_.reset();
    rest_warned_.clear();
    if (opts_.stats) opts_.stats->rest_authority.store(0, std::memory_order_relaxed);
    log::info("rest: {} {}; it is the authority for routing again (leader {})", opts_.source, why,
              state_.leader.value_or("-"));
    publish();
}

std::string PatroniFollower::summarize(const Topology& t, bool with_lag) const {
    std::ostringstream os;
    os << "leader=" << (t.leader.empty() ? "-" : t.leader)
       << " primary=" << (t.primary ? t.members[*t.primary].name : "-") << " members=[";
    bool first = true;
    for (const auto& m : t.members) {
        os << (first ? "" : ", ") << m.name << " " << m.address() << " " << to_string(m.role) << "/"
           << to_string(m.state);
        if (with_lag && m.lag_bytes) os << " lag=" << *m.lag_bytes;
        if (m.role == Role::Replica && (!m.lag_bytes || *m.lag_bytes > opts_.max_replica_lag))
            os << (m.lag_bytes ? " lagging" : " lag-unknown");
        if (m.unreachable) os << " unreachable";
        for (const auto& tag : m.tags) os << " +" << tag;
        first = false;
    }
    os << "]";
    if (t.switchover_pending) os << " switchover=>" << (t.switchover_to.empty() ? "any" : t.switchover_to);
    return os.str();
}

void spawn_source_loop(asio::io_context& ctx, asio::awaitable<void> loop, std::shared_ptr<void> keep,
                       std::string what) {
    asio::co_spawn(ctx, std::move(loop), [keep = std::move(keep), what = std::move(what)](std::exception_ptr e) {
        if (!e) return;
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& ex) {
            log::error("{} stopped on an unexpected error: {}", what, ex.what());
        }
    });
}

}  // namespace pgrelay::topology
