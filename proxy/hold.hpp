// Holding a client while its port has nowhere to send it: no primary during a
// switchover's leaderless window, no topology yet, or a primary that refuses
// connections because it is restarting or about to lose the leader key. The
// client waits, up to hold_timeout, for the next topology change instead of
// getting an error. Used by the passthrough relay (connecting) and by pooled
// clients (before each transaction), so both count, log and give up alike.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <string>
#include <string_view>

namespace pgrelay {

class ClientConn;
struct WorkerShared;
struct Config;
namespace topology {
struct Topology;
}

// How long a new rw connection or transaction should still wait for an
// announced switchover (Topology::switchover_pending, switchover_hold) before
// it may go to the current leader; zero when it need not.
std::chrono::milliseconds switchover_wait(const topology::Topology* topo, bool rw, const Config& cfg);

class Hold {
public:
    using Clock = std::chrono::steady_clock;
    // The hold window starts now and lasts hold_timeout (of the client's
    // config). `user` (for the log) must outlive the Hold. Constructing one
    // costs no allocation: pooled clients make one per transaction.
    // `quiet`: log at debug level (pooled clients hold per transaction, which
    // at thousands of transactions a second would flood the log; the
    // pgrelay_held_* metrics count them all the same).
    Hold(ClientConn& client, WorkerShared& shared, std::string_view user, bool quiet = false);
    ~Hold();
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;

    // hold_timeout is set and not yet reached.
    bool open() const noexcept;
    // Holds the client (counted in pgrelay_held_connections and logged the
    // first time, with `why`), then waits for the next topology change, the
    // end of the window, or `retry` when not zero. False when the client gave
    // up (closed its connection) meanwhile.
    boost::asio::awaitable<bool> wait(const std::string& why, std::chrono::milliseconds retry = {});
    bool held() const noexcept { return held_; }
    long long held_ms() const noexcept;
    // Logs where a held client finally went.
    void released(const std::string& member) const;

private:
    ClientConn& client_;
    WorkerShared& shared_;
    std::string_view user_;
    Clock::time_point since_ = Clock::now();
    Clock::time_point until_;
    bool held_ = false;
    bool quiet_ = false;
    bool watch_client_ = true;
};

}  // namespace pgrelay
