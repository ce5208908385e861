// RelayLoop (relay_loop.hpp).
#include "proxy/relay_loop.hpp"

#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/detail/reactor.hpp>
#include <boost/asio/detail/reactor_op.hpp>
#include <cerrno>
#include <system_error>

namespace pgrelay {

namespace asio = boost::asio;

namespace {
constexpr int kBatch = 64;      // events taken per epoll_wait
constexpr int kMaxRounds = 16;  // rounds in a row before other handlers get their turn
}  // namespace

// Asio's reactor watches epfd_ with one read operation that never completes:
// each edge (a socket of ours became ready) runs a round inside the reactor's
// own dispatch, and the operation stays queued for the next. An ordinary
// async_wait would complete, and re-arming it costs an epoll_ctl and a
// handler per wake-up. That needs Asio's reactor interface from
// boost/asio/detail (stable in the Boost this builds with, 1.81).
struct RelayLoop::Waiter : asio::detail::reactor_op {
    asio::io_context& ctx;
    asio::detail::reactor& reactor;
    asio::detail::reactor::per_descriptor_data data = nullptr;
    RelayLoop* loop;
    bool live = true;

    Waiter(asio::io_context& c, RelayLoop* l)
        : reactor_op(boost::system::error_code(), &Waiter::perform_round, &Waiter::complete),
          ctx(c), reactor(asio::use_service<asio::detail::reactor>(c)), loop(l) {}
    static status perform_round(reactor_op* op) {
        auto* w = static_cast<Waiter*>(op);
        if (w->live) w->loop->run_rounds();
        return not_done;
    }
    // Called only when Asio drops the operation (its shutdown): the Waiter
    // is the loop's, which outlives the io_context.
    static void complete(void*, asio::detail::operation*, const boost::system::error_code&, std::size_t) {}
};

RelayLoop::RelayLoop(asio::io_context& ctx) {
    epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ < 0) throw std::system_error(errno, std::generic_category(), "epoll_create1");
    waiter_ = std::make_unique<Waiter>(ctx, this);
    if (const int err = waiter_->reactor.register_descriptor(epfd_, waiter_->data); err != 0)
        throw std::system_error(err, std::generic_category(), "registering the relay loop with the reactor");
    waiter_->reactor.start_op(asio::detail::reactor::read_op, epfd_, waiter_->data, waiter_.get(), false, true);
}

RelayLoop::~RelayLoop() { ::close(epfd_); }

// The reactor drops the operation and the descriptor when the io_context
// goes; until then no round may start.
void RelayLoop::detach() noexcept { waiter_->live = false; }

bool RelayLoop::add(int fd, Client* c, int tag) {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = reinterpret_cast<uintptr_t>(c) | static_cast<uintptr_t>(tag & 1);
    return ::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) == 0;
}

void RelayLoop::remove(int fd) noexcept { ::epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr); }

void RelayLoop::defer(Client* c) {
    if (std::find(deferred_.begin(), deferred_.end(), c) == deferred_.end()) deferred_.push_back(c);
}

void RelayLoop::forget(Client* c) noexcept {
    std::erase(deferred_, c);
    std::replace(resuming_.begin(), resuming_.end(), c, static_cast<Client*>(nullptr));
}

// A round: the events epoll has, then the clients that asked to resume. A
// round that took fewer events than it could, with nobody deferred, drained
// the loop: wait again. Busy, it goes on for kMaxRounds, then yields to the
// worker's other handlers (TLS sessions, timers, accepts) and comes back.
void RelayLoop::run_rounds() {
    for (int round = 0; round < kMaxRounds; ++round) {
        epoll_event evs[kBatch];
        int n = ::epoll_wait(epfd_, evs, kBatch, 0);
        if (n < 0) n = 0;  // EINTR: nothing taken
        resuming_.swap(deferred_);
        for (int i = 0; i < n; ++i) {
            const uintptr_t v = evs[i].data.u64;
            reinterpret_cast<Client*>(v & ~uintptr_t{1})->on_events(static_cast<int>(v & 1), evs[i].events);
        }
        for (Client* c : resuming_)
            if (c) c->on_resume();
        resuming_.clear();
        if (n < kBatch && deferred_.empty()) return;
    }
    asio::post(waiter_->ctx, [this] {
        if (waiter_->live) run_rounds();
    });
}

}  // namespace pgrelay
