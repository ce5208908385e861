// RelayLoop (relay_loop.hpp).
#include "proxy/relay_loop.hpp"

#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <cerrno>
#include <system_error>

namespace pgrelay {

namespace asio = boost::asio;

namespace {
constexpr int kBatch = 64;      // events taken per epoll_wait
constexpr int kMaxRounds = 16;  // rounds in a row before other handlers get their turn
}  // namespace

struct RelayLoop::Waiter {
    asio::io_context& ctx;
    asio::posix::stream_descriptor desc;
    bool waiting = false;
    Waiter(asio::io_context& c, int fd) : ctx(c), desc(c, fd) {}
};

RelayLoop::RelayLoop(asio::io_context& ctx) {
    epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ < 0) throw std::system_error(errno, std::generic_category(), "epoll_create1");
    waiter_ = std::make_unique<Waiter>(ctx, epfd_);
}

RelayLoop::~RelayLoop() {
    detach();
    ::close(epfd_);
}

void RelayLoop::detach() noexcept {
    if (!waiter_) return;
    boost::system::error_code ec;
    waiter_->desc.cancel(ec);
    waiter_->desc.release();  // epfd_ is ours to close
    waiter_.reset();
}

bool RelayLoop::add(int fd, Client* c, int tag) {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = reinterpret_cast<uintptr_t>(c) | static_cast<uintptr_t>(tag & 1);
    if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) != 0) return false;
    arm();
    return true;
}

void RelayLoop::remove(int fd) noexcept { ::epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr); }

void RelayLoop::defer(Client* c) {
    if (std::find(deferred_.begin(), deferred_.end(), c) == deferred_.end()) deferred_.push_back(c);
}

void RelayLoop::forget(Client* c) noexcept {
    std::erase(deferred_, c);
    std::replace(resuming_.begin(), resuming_.end(), c, static_cast<Client*>(nullptr));
}

// Asio's wait re-arms the descriptor in its own epoll (EPOLL_CTL_MOD), which
// looks at our ready list afresh: an event that arrived after the last round
// wakes us at once, so nothing is missed between a round and the wait.
void RelayLoop::arm() {
    if (!waiter_ || waiter_->waiting) return;
    waiter_->waiting = true;
    waiter_->desc.async_wait(asio::posix::descriptor_base::wait_read, [this](const boost::system::error_code& ec) {
        if (ec) return;  // cancelled: detach(), the loop is going
        waiter_->waiting = false;
        run_rounds();
    });
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
        if (n < kBatch && deferred_.empty()) {
            arm();
            return;
        }
    }
    if (waiter_) asio::post(waiter_->ctx, [this] { run_rounds(); });
}

}  // namespace pgrelay
