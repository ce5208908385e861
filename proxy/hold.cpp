#include "proxy/hold.hpp"

#include <sys/socket.h>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cerrno>

#include "proxy/client.hpp"
#include "proxy/log.hpp"
#include "proxy/metrics.hpp"
#include "proxy/session.hpp"
#include "topology/topology.hpp"

namespace pgrelay {

namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;
using net::tcp;
using net::use_tuple;

std::chrono::milliseconds switchover_wait(const topology::Topology* topo, bool rw, const Config& cfg) {
    if (!rw || !topo || !topo->switchover_pending || cfg.switchover_hold.count() <= 0) return {};
    const auto left = topo->switchover_since + cfg.switchover_hold - Hold::Clock::now();
    if (left <= Hold::Clock::duration::zero()) return {};
    return std::chrono::duration_cast<std::chrono::milliseconds>(left) + std::chrono::milliseconds(1);
}

Hold::Hold(ClientConn& client, WorkerShared& shared, std::string_view user, bool quiet)
    : client_(client), shared_(shared), user_(user), until_(since_ + client.config().hold_timeout), quiet_(quiet) {}

Hold::~Hold() {
    if (!held_) return;
    client_.stats().held_now.fetch_sub(1, std::memory_order_relaxed);
    client_.stats().hold_seconds.observe(std::chrono::duration<double>(Clock::now() - since_).count());
}

bool Hold::open() const noexcept { return client_.config().hold_timeout.count() > 0 && Clock::now() < until_; }

long long Hold::held_ms() const noexcept {
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - since_).count();
}

void Hold::released(const std::string& member) const {
    if (!held_) return;
    if (quiet_)
        log::debug("[{}] client={} released after {} ms: routing to {}", client_.role_name(), client_.peer(), held_ms(), member);
    else
        log::info("[{}] client={} released after {} ms: routing to {}", client_.role_name(), client_.peer(), held_ms(), member);
}

asio::awaitable<bool> Hold::wait(const std::string& why, std::chrono::milliseconds retry) {
    if (!held_) {
        held_ = true;
        client_.stats().held_now.fetch_add(1, std::memory_order_relaxed);
        client_.stats().held_total.fetch_add(1, std::memory_order_relaxed);
        const int64_t n = metrics::Registry::instance().held_now();
        if (quiet_)
            log::debug("[{}] client={} user={} held: {} ({} held)", client_.role_name(), client_.peer(), log::printable(user_),
                       why, n);
        else
            log::info("[{}] client={} user={} held: {} ({} connection{} held)", client_.role_name(), client_.peer(),
                      log::printable(user_), why, n, n == 1 ? "" : "s");
    }
    asio::steady_timer deadline(client_.socket().get_executor(), until_);
    if (retry.count() > 0 && Clock::now() + retry < until_) deadline.expires_after(retry);
    if (!watch_client_) {
        co_await (shared_.topology_changed->async_wait(use_tuple) || deadline.async_wait(use_tuple));
        co_return true;
    }
    // Also watch the client: one that gives up must not stay held (nor be
    // connected to a server later).
    auto r = co_await (shared_.topology_changed->async_wait(use_tuple) || deadline.async_wait(use_tuple) ||
                       client_.socket().async_wait(tcp::socket::wait_read, use_tuple));
    if (r.index() == 2) {
        char probe;
        const ssize_t n = ::recv(client_.socket().native_handle(), &probe, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
            log::info("[{}] client={} gave up while held ({} ms)", client_.role_name(), client_.peer(), held_ms());
            co_return false;
        }
        watch_client_ = false;  // it sent more (pipelined): stop watching, or the wait would spin
    }
    co_return true;
}

}  // namespace pgrelay
