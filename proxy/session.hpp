// One client connection, from accept to close: startup (SSL/GSS answers,
// CancelRequest, StartupMessage), routing, backend connect, then two half-duplex
// relay loops joined with ||. Runs as a coroutine on one worker thread.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <atomic>
#include <list>
#include <memory>
#include <string>

#include "proxy/cancel_registry.hpp"
#include "proxy/config.hpp"
#include "proxy/router.hpp"
#include "proxy/tls.hpp"
#include "topology/source.hpp"

namespace pgrelay {

// What SHOW CLIENTS / SHOW SERVERS tell about a pooled client.
struct ClientInfo {
    std::string peer, user, database, state;  // state: "active" (holds a server), "waiting", "idle"
    std::string member;                       // of the server it holds
    uint64_t server_id = 0;                   // 0 when it holds none
    int32_t server_pid = 0;
    double connected_seconds = 0, server_age_seconds = 0;
};

// What the worker may do to a relaying session (same thread only).
class SessionHandle {
public:
    PortRole role = PortRole::ReadWrite;
    std::string member;     // backend member the session relays to
    bool fallback = false;  // an ro session that fell back to the primary
    // A pooled client: `member` is the server it holds now, empty between
    // transactions (then no topology change concerns it).
    bool pooled = false;
    // Ends the session with a FATAL ErrorResponse (sent only at a message
    // boundary of the client stream) and closes both sides.
    virtual void terminate(const char* sqlstate, std::string message) = 0;
    // Its server's member lost the role it was routed for (`why`, from
    // lost_role_reason). A passthrough session ends with 57P01; a pooled
    // client whose session pgrelay can carry only loses that server, and its
    // next transaction goes to the member that has the role now.
    virtual void lost_role(std::string why) { terminate("57P01", std::move(why)); }
    // Pooled clients describe themselves for the admin console.
    virtual bool client_info(ClientInfo&) const { return false; }
    // Called by the worker at shutdown, after its thread stopped: a session
    // that no coroutine holds (one relaying in the epoll loop owns itself)
    // deletes itself; the others go with the io_context.
    virtual void abandon() noexcept {}

protected:
    ~SessionHandle() = default;
};

// What every session on one worker thread shares. Owned by the worker.
class PoolManager;
class AuthStore;
class RelayLoop;

struct WorkerShared {
    std::shared_ptr<const Config> config;
    std::shared_ptr<const TlsContexts> tls;  // swapped together with config on reload
    topology::SnapshotHub::Reader topology;
    Router* router;
    CancelRegistry* cancels;
    std::list<SessionHandle*> sessions;           // relaying sessions on this thread
    std::unique_ptr<boost::asio::steady_timer> topology_changed;  // never expires; cancel() wakes waiters
    // The pooled ports' clients all run on the worker that owns these (null on
    // the others).
    PoolManager* pools = nullptr;
    AuthStore* auth = nullptr;
    const std::atomic<bool>* draining = nullptr;  // set on SIGTERM: new sessions get 57P03
    // Plaintext passthrough sessions relay through this thread's epoll loop
    // (null: every session relays with coroutines).
    RelayLoop* relay_loop = nullptr;
};

// Runs on the worker thread after a new snapshot: wakes held connections and
// ends sessions whose backend lost its role -- rw sessions not on the member
// holding the leader key, ro sessions on a member that vanished, stopped
// running, stopped being a replica, got noloadbalance or was excluded. A
// replica that merely lags keeps its sessions (it gets no new ones).
void apply_topology_change(WorkerShared& shared, const topology::Topology& after);

// Why `s` must end under snapshot `after` (the 57P01 message), or empty.
std::string lost_role_reason(const SessionHandle& s, const topology::Topology& after);

// Accepted socket in, returns when the connection is over. Never throws.
boost::asio::awaitable<void> run_session(boost::asio::ip::tcp::socket client, PortRole role, WorkerShared& shared);
// The same for a port in session or transaction pool mode (pooled_session.cpp).
boost::asio::awaitable<void> run_pooled_session(boost::asio::ip::tcp::socket client, PortRole role, WorkerShared& shared);

}  // namespace pgrelay
