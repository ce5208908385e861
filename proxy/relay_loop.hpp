// The plaintext relay's event loop: one epoll instance per worker thread.
// A relaying session's two sockets leave Asio's reactor for it
// (edge-triggered, registered once for reading and writing), and Asio watches
// only the epoll descriptor itself: one wake-up per batch of events, where
// a coroutine relay pays for an operation, a completion handler and a
// resumption per message. That machinery was most of the user-space CPU a
// transaction cost (bench/README.md has the profiles). Everything runs on the
// worker thread; nothing here locks.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace boost::asio {
class io_context;
}

namespace pgrelay {

class RelayLoop {
public:
    // What has sockets in the loop. Its calls run inside a round and must not
    // destroy it: it ends by remove() and forget(), and goes later.
    class Client {
    public:
        // `tag` is what add() was given (0 or 1); `events` epoll's bits.
        virtual void on_events(int tag, uint32_t events) = 0;
        // Asked for by defer().
        virtual void on_resume() = 0;

    protected:
        ~Client() = default;
    };

    explicit RelayLoop(boost::asio::io_context& ctx);
    ~RelayLoop();
    RelayLoop(const RelayLoop&) = delete;
    RelayLoop& operator=(const RelayLoop&) = delete;

    // Edge-triggered for input, output and the peer's shutdown. False (errno
    // set) when epoll refuses the descriptor. Clients are 2-aligned: `tag`
    // rides in the low bit of the pointer.
    bool add(int fd, Client* c, int tag);
    void remove(int fd) noexcept;
    // c->on_resume() in the next round: it has read part of what a socket
    // holds, and no new edge will say so again.
    void defer(Client* c);
    // Drops a pending defer (before c goes away).
    void forget(Client* c) noexcept;
    // No round starts after this (call it before the io_context goes;
    // remove() still works).
    void detach() noexcept;

private:
    struct Waiter;
    void run_rounds();

    int epfd_ = -1;
    std::unique_ptr<Waiter> waiter_;  // Asio's view of epfd_ (Asio headers stay in the .cpp)
    std::vector<Client*> deferred_, resuming_;
};

}  // namespace pgrelay
