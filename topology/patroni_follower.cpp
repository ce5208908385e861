// PatroniFollower (patroni_follower.hpp).
#include "topology/patroni_follower.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <sstream>

#include "proxy/log.hpp"

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
        opts_.probe, [weak](const std::string& member, std::optional<uint64_t> replayed) {
            if (auto self = weak.lock())
                asio::post(self->ctx_, [self, member, replayed] { self->replay_report(member, replayed); });
        });
}

void PatroniFollower::stop() {
    stopped_ = true;
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

void PatroniFollower::replay_report(const std::string& member, std::optional<uint64_t> replayed) {
    if (stopped_) return;
    if (replayed) state_.replayed[member] = *replayed;
    else state_.replayed.erase(member);
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
    // Point the probes at whoever the leader key names, and at the replicas.
    const patroni::MemberInfo* leader = nullptr;
    if (state_.leader)
        if (auto it = state_.members.find(*state_.leader); it != state_.members.end()) leader = &it->second;
    if (probe_) {
        if (leader) probe_->set_target(leader->name, leader->host, leader->port);
        else probe_->clear_target();
    }
    if (replay_probe_) {
        std::vector<ReplayProbe::Target> replicas;
        for (const auto& [name, m] : state_.members)
            if (m.role == Role::Replica && (!state_.leader || name != *state_.leader))
                replicas.push_back({name, m.host, m.port});
        replay_probe_->set_targets(std::move(replicas));
    }
    state_.leader_wal = leader && probe_member_ == leader->name ? probe_wal_ : std::nullopt;

    auto t = patroni::build_topology(state_, opts_.build, probe_member_, probe_status_);
    t->source = opts_.source;
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
            const std::string how = probe_member_ == primary && probe_status_ == patroni::ProbeStatus::Writable
                                        ? "the probe saw it writable"
                                        : "its member key says running primary";
            if (leader_event_at_) {
                const auto ms = std::chrono::duration<double, std::milli>(Clock::now() - *leader_event_at_).count();
                log::info("topology: rw now routes to {} ({}), {:.1f} ms after the {}", primary, how, ms,
                          opts_.leader_event);
                if (opts_.on_reroute) opts_.on_reroute(ms / 1000.0);
                leader_event_at_.reset();
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
