// PatroniApiSource (patroni_api_source.hpp): one polling coroutine on the
// control io_context, one keep-alive HTTP client per member URL.
#include "topology/patroni_api_source.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <set>

#include "proxy/log.hpp"
#include "topology/http_client.hpp"

namespace pgrelay::topology {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

struct PatroniApiSource::Impl : std::enable_shared_from_this<Impl> {
    asio::io_context& ctx;
    PatroniApiSourceOptions opts;
    std::shared_ptr<asio::ssl::context> tls;
    std::shared_ptr<PatroniFollower> follower;
    std::vector<std::shared_ptr<http::Client>> clients;
    std::shared_ptr<asio::steady_timer> timer;
    bool stopped = false;
    bool answered = false;  // the last poll got an answer
    std::string last_failure;
    Clock::time_point last_failure_at{};

    Impl(asio::io_context& c, SnapshotHub& hub, PatroniApiSourceOptions o) : ctx(c), opts(std::move(o)) {
        bool any_tls = false;
        for (const auto& u : opts.urls) any_tls = any_tls || u.tls;
        if (any_tls) tls = http::make_client_tls({opts.ca, opts.cert, opts.key});
        opts.follower.source = "patroni_api";
        opts.follower.leader_event = "poll that saw the new leader";
        std::string where;
        for (const auto& u : opts.urls) where += (where.empty() ? "" : ",") + u.to_string();
        opts.follower.where = where + " (GET /cluster)";
        follower = PatroniFollower::create(ctx, hub, opts.follower);
        for (const auto& u : opts.urls) clients.push_back(std::make_shared<http::Client>(ctx.get_executor(), u, tls));
        timer = std::make_shared<asio::steady_timer>(ctx);
    }

    void apply(const patroni::ClusterView& v, Clock::time_point at) {
        if (v.leader && v.leader != follower->leader()) follower->note_leader_event(at);
        follower->set_leader(v.leader);
        std::set<std::string> now;
        for (const auto& m : v.members) now.insert(m.name);
        for (const auto& name : follower->member_names())
            if (!now.count(name)) follower->member_gone(name);
        for (const auto& m : v.members) follower->set_member(m);
        follower->set_loaded();
        follower->publish();
    }

    void note_failure(const http::Client& c, const std::string& why) {
        if (opts.stats) opts.stats->endpoint_failures.fetch_add(1, std::memory_order_relaxed);
        const auto now = Clock::now();
        const std::string msg = c.url().to_string() + ": " + why;
        if (msg == last_failure && now - last_failure_at < std::chrono::seconds(5)) {
            log::debug("patroni_api: {}", msg);
            return;
        }
        last_failure = msg;
        last_failure_at = now;
        log::warn("patroni_api: {}{}", msg,
                  follower->loaded() ? "" : " (new rw connections are held until a primary is known)");
    }

    // One poll: the members' APIs in turn, from the one that answered last,
    // until one answers.
    asio::awaitable<void> poll(size_t& idx) {
        for (size_t k = 0; k < clients.size() && !stopped; ++k) {
            auto c = clients[idx];
            auto r = co_await c->request("GET", "/cluster", "", "", opts.request_timeout);
            if (stopped) co_return;
            const auto at = Clock::now();
            std::string why = r.error;
            if (why.empty() && r.status != 200) why = "HTTP " + std::to_string(r.status);
            std::optional<patroni::ClusterView> view;
            if (why.empty()) {
                std::string err;
                view = patroni::parse_cluster(r.body, err);
                if (!view) why = err;
            }
            if (view) {
                if (!answered && opts.stats) {
                    if (follower->loaded()) opts.stats->reconnects.fetch_add(1, std::memory_order_relaxed);
                    opts.stats->connected.store(1, std::memory_order_relaxed);
                }
                if (!answered) log::info("patroni_api: {} answers", c->url().to_string());
                answered = true;
                apply(*view, at);
                co_return;
            }
            note_failure(*c, why);
            c->close();
            idx = (idx + 1) % clients.size();
        }
        if (answered) log::warn("patroni_api: no Patroni REST API answers; routing on the last known topology");
        answered = false;
        if (opts.stats) opts.stats->connected.store(0, std::memory_order_relaxed);
    }

    asio::awaitable<void> run() {
        size_t idx = 0;
        while (!stopped) {
            const auto next = Clock::now() + opts.interval;
            co_await poll(idx);
            if (stopped) break;
            timer->expires_at(next);
            co_await timer->async_wait(asio::as_tuple(asio::use_awaitable));
        }
    }
};

PatroniApiSource::PatroniApiSource(asio::io_context& ctx, SnapshotHub& hub, PatroniApiSourceOptions opts)
    : impl_(std::make_shared<Impl>(ctx, hub, std::move(opts))) {}

PatroniApiSource::~PatroniApiSource() { stop(); }

void PatroniApiSource::start() {
    impl_->follower->start();
    spawn_source_loop(impl_->ctx, impl_->run(), impl_, "patroni_api: the poller");
}

void PatroniApiSource::set_member_options(const std::map<std::string, uint32_t>& weights,
                                          const std::vector<std::string>& exclude, bool allow_standby_leader) {
    impl_->follower->set_member_options(weights, exclude, allow_standby_leader);
}

void PatroniApiSource::stop() {
    if (!impl_ || impl_->stopped) return;
    impl_->stopped = true;
    for (auto& c : impl_->clients) c->close();
    impl_->timer->cancel();
    impl_->follower->stop();
}

}  // namespace pgrelay::topology
