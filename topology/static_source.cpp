// StaticSource (static_source.hpp): one health-check coroutine per member on the
// control io_context; a state change publishes a fresh snapshot.
#include "topology/static_source.hpp"

#include <cerrno>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>

#include "proxy/log.hpp"

namespace pgrelay::topology {

namespace asio = boost::asio;
using asio::ip::tcp;
using namespace asio::experimental::awaitable_operators;

struct StaticSource::Impl : std::enable_shared_from_this<Impl> {
    asio::io_context& ctx;
    SnapshotHub& hub;
    StaticSourceOptions opts;
    std::vector<State> states;
    bool stopped = false;
    std::vector<std::unique_ptr<asio::steady_timer>> timers;
    std::string last_local_error;

    Impl(asio::io_context& c, SnapshotHub& h, StaticSourceOptions o) : ctx(c), hub(h), opts(std::move(o)) {
        states.assign(opts.members.size(), State::Running);
    }

    void publish() {
        auto t = initial_snapshot(opts.members);
        for (size_t i = 0; i < states.size(); ++i) t->members[i].state = states[i];
        hub.publish(std::move(t));
    }

    enum class Probe { Up, Down, Unknown };

    // Up when a TCP connection to the member succeeds within the timeout;
    // Unknown when pgrelay itself cannot open a socket (out of descriptors or
    // memory), which says nothing about the member.
    asio::awaitable<Probe> probe(const Member& m) {
        tcp::resolver resolver(ctx);
        auto [rec, results] = co_await resolver.async_resolve(m.host, std::to_string(m.port),
                                                              asio::as_tuple(asio::use_awaitable));
        if (rec) co_return Probe::Down;
        tcp::socket sock(ctx);
        asio::steady_timer deadline(ctx, opts.timeout);
        auto r = co_await (asio::async_connect(sock, results, asio::as_tuple(asio::use_awaitable)) ||
                           deadline.async_wait(asio::as_tuple(asio::use_awaitable)));
        if (r.index() != 0) co_return Probe::Down;
        const boost::system::error_code ec = std::get<0>(std::get<0>(r));
        if (!ec) co_return Probe::Up;
        const int v = ec.value();
        if (ec.category() == boost::system::system_category() &&
            (v == EMFILE || v == ENFILE || v == ENOBUFS || v == ENOMEM)) {
            last_local_error = ec.message();
            co_return Probe::Unknown;
        }
        co_return Probe::Down;
    }

    asio::awaitable<void> check_loop(size_t i) {
        auto self = shared_from_this();
        asio::steady_timer& timer = *timers[i];
        const Member& m = opts.members[i];
        bool blind = false;  // the last check failed locally
        while (!stopped) {
            const Probe p = co_await probe(m);
            if (stopped) break;
            if (p == Probe::Unknown) {
                // Keep the member's state: a local shortage is not the member's fault.
                if (!blind) log::warn("topology: cannot check member {} ({}): {}; keeping its state", m.name,
                                      m.address(), last_local_error);
                blind = true;
            } else {
                blind = false;
                const bool up = p == Probe::Up;
                const State s = up ? State::Running : State::Stopped;
                if (s != states[i]) {
                    states[i] = s;
                    if (up) log::info("topology: member {} ({}) is reachable again", m.name, m.address());
                    else log::warn("topology: member {} ({}) refuses connections, marked stopped", m.name, m.address());
                    publish();
                }
            }
            timer.expires_after(opts.interval);
            co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
        }
    }
};

StaticSource::StaticSource(asio::io_context& ctx, SnapshotHub& hub, StaticSourceOptions opts)
    : impl_(std::make_shared<Impl>(ctx, hub, std::move(opts))) {}

StaticSource::~StaticSource() { stop(); }

std::shared_ptr<Topology> StaticSource::initial_snapshot(const std::vector<Member>& members) {
    auto t = std::make_shared<Topology>();
    t->source = "static";
    t->members = members;
    for (size_t i = 0; i < t->members.size(); ++i) {
        t->members[i].state = State::Running;
        if (t->members[i].role == Role::Primary) t->leader = t->members[i].name;
        if (t->members[i].role == Role::Primary && !t->members[i].excluded) t->primary = i;
    }
    if (!t->primary) t->primary_reason = "no primary in the static member list";
    return t;
}

void StaticSource::start() {
    impl_->publish();
    for (size_t i = 0; i < impl_->opts.members.size(); ++i) {
        impl_->timers.push_back(std::make_unique<asio::steady_timer>(impl_->ctx));
        asio::co_spawn(impl_->ctx, impl_->check_loop(i), asio::detached);
    }
}

void StaticSource::set_member_options(const std::map<std::string, uint32_t>& weights,
                                      const std::vector<std::string>& exclude, bool) {
    for (auto& m : impl_->opts.members) {
        auto w = weights.find(m.name);
        m.weight = w == weights.end() ? 1 : w->second;
        m.excluded = std::find(exclude.begin(), exclude.end(), m.name) != exclude.end();
    }
    impl_->publish();
}

void StaticSource::stop() {
    if (!impl_ || impl_->stopped) return;
    impl_->stopped = true;
    for (auto& t : impl_->timers) t->cancel();
}

}  // namespace pgrelay::topology
