// Session coroutine (session.hpp). Errors on the relay path are error_codes
// (as_tuple), never exceptions; pgrelay's own failures reach the client as a
// PostgreSQL ErrorResponse with a SQLSTATE (docs/INTERNALS.md has the table).
#include "proxy/session.hpp"

#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>

#include "protocol/encode.hpp"
#include "protocol/frames.hpp"
#include "protocol/startup.hpp"
#include "proxy/client.hpp"
#include "proxy/hold.hpp"
#include "proxy/net.hpp"
#include "proxy/pool.hpp"
#include "proxy/server_conn.hpp"
#include "proxy/log.hpp"
#include "proxy/metrics.hpp"
#include "proxy/relay_loop.hpp"

namespace pgrelay {

namespace asio = boost::asio;
using asio::ip::tcp;
using namespace asio::experimental::awaitable_operators;
using std::chrono::steady_clock;

namespace {

constexpr uint32_t kMaxWatched = 8192;  // ErrorResponse/ParameterStatus held whole up to this size
static_assert(kMaxWatched >= 4 + 4 + protocol::kMaxCancelSecret, "a BackendKeyData must be held whole to be rewritten");

using net::IoResult;
using net::kIdleRead;
using net::kRelayBuffer;
using net::read_pooled;
using net::RelayBuffer;
using net::take_carried;
using net::TlsStream;
using net::use_tuple;

class Session final : public SessionHandle, private RelayLoop::Client {
public:
    Session(tcp::socket client, PortRole role, WorkerShared& shared)
        : client_(std::move(client), role, shared.config, shared.tls, *shared.cancels, shared.draining),
          shared_(shared), cfg_(shared.config), peer_(client_.peer()), started_(steady_clock::now()) {
        this->role = role;
        port_stats_ = &client_.stats();
    }

    ~Session() {
        *alive_ = false;
        if (fast_) {
            // Gone with the worker while relaying (abandon(), or the finish
            // coroutine destroyed with the io_context): the sockets are ours.
            shared_.relay_loop->remove(fds_[0]);
            shared_.relay_loop->remove(fds_[1]);
            shared_.relay_loop->forget(this);
            ::close(fds_[0]);
        }
        if (fds_[1] >= 0) ::close(fds_[1]);
        if (member_stats_) member_stats_->backend_open.fetch_sub(1, std::memory_order_relaxed);
        if (proxy_key_) shared_.cancels->remove(*proxy_key_);
        if (counted_) shared_.router->closed(target_.member);
        if (registered_) shared_.sessions.erase(self_);
    }

    void terminate(const char* sqlstate, std::string message) override {
        if (end_sqlstate_) return;
        port_stats_->terminated.fetch_add(1, std::memory_order_relaxed);
        end_sqlstate_ = sqlstate;
        end_message_ = std::move(message);
        log::info("[{}] client={} backend {}: {}", role_name(), peer_, target_.member, end_message_);
        // Never cut a write to the client midway: the relay stops after it.
        if (!down_writing_) {
            stop_relay();
            return;
        }
        // Let the write in flight finish so the client stream stays whole,
        // but a client that does not read must not pin the session: after 2 s
        // stop anyway (then without the ErrorResponse).
        terminate_pending_ = true;
        if (!terminate_deadline_) terminate_deadline_ = std::make_unique<asio::steady_timer>(executor());
        terminate_deadline_->expires_after(std::chrono::seconds(2));
        // The handler may run after the session is gone (already queued when
        // the session ended): `alive` says whether `this` may be touched.
        terminate_deadline_->async_wait([this, alive = alive_](const boost::system::error_code& ec) {
            if (!ec && *alive) stop_relay();
        });
    }

    // True when the session went on into the epoll relay: it then owns
    // itself (adopt()) and deletes itself once ended.
    asio::awaitable<bool> run();
    void adopt();
    // After a self-owned session's relay ended: waits for the idle watcher,
    // gives the sockets back to Asio and runs the ending.
    asio::awaitable<void> finish();
    void spawn_finish();
    // At the worker's shutdown: a session relaying in the loop has no
    // coroutine that would destroy it with the io_context.
    void abandon() noexcept override {
        if (self_owned_ && !finishing_) delete this;
    }

private:
    asio::any_io_executor executor() { return client_.socket().get_executor(); }
    asio::awaitable<void> ending();
    const char* role_name() const { return to_string(role); }
    asio::awaitable<bool> establish();
    asio::awaitable<bool> connect_backend(const protocol::StartupPacket& packet, const std::string& startup_bytes);
    asio::awaitable<void> relay_client_to_backend();
    asio::awaitable<void> relay_backend_to_client();
    asio::awaitable<void> send_error(const char* sqlstate, const std::string& message, const std::string& hint = {}) {
        return client_.send_error(sqlstate, message, hint);
    }

    asio::awaitable<void> watch_idle();

    // The relay's per-message work, shared by the coroutine relay (TLS) and
    // the epoll one (plaintext). scan_*: the frames in [0, len), with `pos`
    // advanced past what may be forwarded; false when the relay must end
    // (end_sqlstate_ or backend_closed_ says why). sent_*: a chunk went out whole.
    void init_scanners();
    bool scan_up(uint8_t* data, size_t len, size_t& pos, bool& terminate);
    bool scan_down(uint8_t* data, size_t len, size_t& pos, char& chunk_last_type);
    void sent_up(size_t n);
    void sent_down(size_t n, char chunk_last_type);

    // The epoll relay (plaintext on both sides).
    struct Pipe {
        int src = -1, dst = -1;
        RelayBuffer buf;       // held while it has bytes, else back in the pool
        size_t len = 0;        // bytes in buf
        size_t pos = 0;        // [0, pos) scanned, to be sent
        size_t sent = 0;       // of those, sent
        bool readable = false; // src may have bytes (an edge not yet read empty)
        bool hup = false;      // src's peer shut down: read on until EOF
        bool blocked = false;  // dst's buffer was full: waiting for EPOLLOUT
        bool terminate = false;  // up: the chunk ends the session (Terminate)
        char last_type = 0;      // down: type of the chunk's last frame header
    };
    // False when the loop refused the sockets (the coroutine relay runs then).
    bool start_fast_relay();
    void on_events(int tag, uint32_t events) override;
    void on_resume() override;
    // Flushes what is pending, then reads once (or scans what is buffered).
    void pump(Pipe& p, bool scan_buffered);
    // Sends [sent, pos); true when all of it went out and the relay goes on.
    bool flush(Pipe& p);
    void end_relay();
    // The sockets back into Asio, for the ending (errors, linger, close).
    void restore_sockets();
    asio::awaitable<void> relay_task(asio::awaitable<void> (Session::*body)());

    // Ends the relay: every loop returns at its next step, and the reads and
    // writes in flight are cancelled (all on this thread, so a loop is either
    // suspended in one of them or checks stopping_ before starting the next).
    void stop_relay() {
        if (fast_) {
            end_relay();
            return;
        }
        if (stopping_) return;
        stopping_ = true;
        boost::system::error_code ec;
        client_.socket().cancel(ec);
        if (backend_) backend_->socket().cancel(ec);
        if (idle_timer_) idle_timer_->cancel();
    }

    // Client and backend I/O, through TLS when it was negotiated. These
    // return the initiating operation's awaitable itself: no extra frame.
    asio::awaitable<IoResult> client_write(asio::const_buffer b) { return client_.write(b); }
    asio::awaitable<IoResult> backend_write(asio::const_buffer b) { return backend_->write(b); }

    void on_ready_for_query(std::optional<protocol::TxStatus> status) {
        if (status) tx_status_ = *status;
        if (track_idle_) last_activity_ = steady_clock::now();
        if (outstanding_ == 0) return;  // the one after authentication answers no request
        if (outstanding_ <= request_started_.size()) {
            port_stats_->query_seconds.observe(
                std::chrono::duration<double>(steady_clock::now() - request_started_[0]).count());
        }
        std::rotate(request_started_.begin(), request_started_.begin() + 1, request_started_.end());
        --outstanding_;
        member_stats_->queries.fetch_add(1, std::memory_order_relaxed);
        if (status == protocol::TxStatus::Idle) member_stats_->transactions.fetch_add(1, std::memory_order_relaxed);
    }

    ClientConn client_;  // the client side: socket, TLS, startup
    // The server side, bound to this client for its lifetime: the backend
    // authenticates the client through it (forward_startup).
    // (The epoll relay keeps only its descriptor, fds_[1].)
    std::unique_ptr<ServerConn> backend_;
    // The coroutine relay runs as run() (client -> backend) plus spawned
    // coroutines (backend -> client, the idle watcher); the last to end
    // cancels relay_done_, which run() (or finish()) waits on before the
    // session may go away. The timers exist only where they are used: an
    // idle plaintext session has none.
    std::unique_ptr<asio::steady_timer> relay_done_;
    std::unique_ptr<asio::steady_timer> idle_timer_;
    int relays_running_ = 0;
    bool stopping_ = false;
    std::unique_ptr<asio::steady_timer> terminate_deadline_;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
    bool registered_ = false;
    std::list<SessionHandle*>::iterator self_;
    bool terminate_pending_ = false;
    WorkerShared& shared_;
    std::shared_ptr<const Config> cfg_;
    std::string peer_;
    steady_clock::time_point started_;
    Target target_;
    std::optional<protocol::CancelKey> proxy_key_;
    bool counted_ = false;  // included in the router's per-member connection count
    metrics::PortStats* port_stats_;  // this port's counters
    metrics::MemberStats* member_stats_ = nullptr;  // set once connected
    // Requests the client sent that await a ReadyForQuery (Query, Sync,
    // FunctionCall), with the start time of the oldest ones for latency.
    uint32_t outstanding_ = 0;
    std::array<steady_clock::time_point, 16> request_started_{};
    std::string pipelined_;  // client bytes read after the StartupMessage
    std::string backend_prefix_;  // backend bytes read while opening the session

    // Relay state, shared by the two directions (same thread, no lock).
    uint64_t bytes_up_ = 0, bytes_down_ = 0;
    bool client_closed_ = false;   // client ended the session (EOF or Terminate)
    bool backend_closed_ = false;  // backend closed
    bool down_writing_ = false;    // a write to the client is in flight
    bool client_at_boundary_ = true;  // what the client received so far ends at a message boundary
    const char* end_sqlstate_ = nullptr;  // pgrelay's own error to report, if any
    std::string end_message_;
    protocol::FrameScanner up_scanner_{1};    // replaced in init_scanners
    protocol::FrameScanner down_scanner_{1};
    Pipe up_, down_;
    bool fast_ = false;        // the sockets are in the relay loop, released from Asio
    bool self_owned_ = false;  // relaying in the loop with no coroutine: adopt()
    bool finishing_ = false;   // finish() runs, and owns the session
    bool relay_over_ = false;  // the epoll relay ended
    int fds_[2] = {-1, -1};    // client, backend, while fast_
    bool client_v6_ = false;
    // Type of the last message header forwarded to the client: an
    // ErrorResponse read but never written (the session stopped first) does
    // not count as the client having been told.
    char last_down_type_ = 0;
    // idle_client_timeout: transaction status from the last ReadyForQuery,
    // and the last client read or ReadyForQuery.
    protocol::TxStatus tx_status_ = protocol::TxStatus::Idle;
    bool track_idle_ = false;
    steady_clock::time_point last_activity_{};
};

// A self-owned session's ending; deletes it.
asio::awaitable<void> finish_session(std::unique_ptr<Session> s) {
    try {
        co_await s->finish();
    } catch (const std::exception& e) {
        log::error("session ended by an unexpected error: {}", e.what());
    }
}

asio::awaitable<bool> Session::connect_backend(const protocol::StartupPacket& packet, const std::string& startup_bytes) {
    // While there is no primary (rw) or no topology yet (both ports), hold the
    // connection instead of refusing it: a switchover's leaderless window is
    // seconds, and a client that waits them out never sees an error. With a
    // source that can move the primary (Patroni), a leader that refuses
    // connections is waited out the same way: it is restarting, or about to
    // lose the leader key.
    Hold hold(client_, shared_, packet.parameter("user"));
    for (;;) {
        const topology::TopologyPtr topo = shared_.topology.current();
        if (const auto wait = switchover_wait(topo.get(), role == PortRole::ReadWrite, *cfg_);
            wait.count() > 0 && hold.open()) {
            // A planned switchover is under way: not a new session on the
            // old primary, which Patroni is about to stop.
            if (!co_await hold.wait("switchover from " + topo->leader + " announced (failover key)", wait)) co_return false;
            continue;
        }
        RouteDecision d = shared_.router->route(role, topo.get());
        if (d.candidates.empty()) {
            if (hold.open() && (role == PortRole::ReadWrite || !topo)) {
                if (!co_await hold.wait(d.message)) co_return false;
                continue;
            }
            if (hold.held()) d.message += " (held " + std::to_string(hold.held_ms()) + " ms, hold_timeout reached)";
            log::warn("[{}] client={} user={} refused: {}", role_name(), peer_, log::printable(packet.parameter("user")), d.message);
            co_await send_error(d.sqlstate, d.message,
                                "Retry later; the cluster has no member that can serve this port.");
            co_return false;
        }

        std::string failures;
        bool unreachable = false;  // some candidate failed at the TCP level (vs. answering 57P03)
        bool tls_config_failure = false;  // some candidate failed backend_tls: waiting will not help
        for (const Target& t : d.candidates) {
            backend_ = std::make_unique<ServerConn>(executor());
            backend_prefix_.clear();
            std::optional<LoginError> refusal = co_await backend_->connect(*cfg_, *client_.tls_contexts(), t);
            if (!refusal) {
                if (backend_->tls())
                    log::debug("[{}] client={} backend {} TLS established: {}", role_name(), peer_, t.member,
                               net::tls_description(*backend_->tls()));
                refusal = co_await backend_->forward_startup(startup_bytes, cfg_->connect_timeout, backend_prefix_);
            }
            if (!refusal) {
                target_ = t;
                member = t.member;
                member_stats_ = &metrics::Registry::instance().member(role, t.member);
                member_stats_->backend_open.fetch_add(1, std::memory_order_relaxed);
                member_stats_->backend_total.fetch_add(1, std::memory_order_relaxed);
                fallback = role == PortRole::ReadOnly && &t == &d.candidates.back() && d.primary_last;
                if (role == PortRole::ReadOnly) {
                    shared_.router->opened(t.member);
                    counted_ = true;
                }
                hold.released(t.member);
                co_return true;
            }
            unreachable = unreachable || refusal->unreachable;
            tls_config_failure = tls_config_failure || refusal->config_failure;
            log::warn("[{}] client={} backend {} ({}) cannot take the connection: {}", role_name(), peer_, t.member,
                      t.address(), refusal->message);
            backend_->close();
            backend_.reset();
            if (!failures.empty()) failures += "; ";
            failures += t.member + " (" + t.address() + "): " + refusal->message;
        }
        if (role == PortRole::ReadWrite && topo && topo->elects_primary() && hold.open() && !tls_config_failure) {
            // Re-route on the next topology change, or retry shortly anyway.
            if (!co_await hold.wait("primary " + d.candidates.front().member + " cannot take connections",
                                    std::chrono::milliseconds(100)))
                co_return false;
            continue;
        }
        const std::string what = role == PortRole::ReadWrite ? "primary" : "backend";
        co_await send_error(unreachable ? "08006" : "57P03",
                            std::string("pgrelay ") + role_name() + ": could not connect to " + what + " " + failures,
                            "The database server may be down or restarting; retry shortly.");
        co_return false;
    }
}

bool Session::scan_up(uint8_t* data, size_t len, size_t& pos, bool& terminate) {
    protocol::Frame f;
    for (;;) {
        auto st = up_scanner_.next({data, len}, pos, f);
        if (st == protocol::FrameScanner::Status::NeedMore) return true;
        if (st == protocol::FrameScanner::Status::Error) {
            end_sqlstate_ = "08P01";
            end_message_ = std::string("pgrelay ") + role_name() + ": invalid message from client (type '" +
                           std::string(1, up_scanner_.bad_type()) + "', length " +
                           std::to_string(up_scanner_.bad_length()) + ", max_frame_size " +
                           std::to_string(cfg_->max_frame_size) + ")";
            return false;
        }
        switch (static_cast<protocol::FrontendType>(f.type)) {
            case protocol::FrontendType::Terminate: terminate = true; break;
            case protocol::FrontendType::Query:
            case protocol::FrontendType::Sync:
            case protocol::FrontendType::FunctionCall:
                // Each of these is answered by exactly one ReadyForQuery.
                if (outstanding_ < request_started_.size()) request_started_[outstanding_] = steady_clock::now();
                ++outstanding_;
                break;
            default: break;
        }
    }
}

bool Session::scan_down(uint8_t* data, size_t len, size_t& pos, char& chunk_last_type) {
    protocol::Frame f;
    const std::span<uint8_t> buf(data, len);
    for (;;) {
        auto st = down_scanner_.next(buf, pos, f);
        if (st == protocol::FrameScanner::Status::NeedMore) return true;
        if (st == protocol::FrameScanner::Status::Error) {
            log::error("[{}] client={} backend {} sent an invalid frame (type '{}', length {})", role_name(), peer_,
                       target_.member, down_scanner_.bad_type(), down_scanner_.bad_length());
            backend_closed_ = true;
            return false;
        }
        chunk_last_type = f.type;
        if (f.type == static_cast<char>(protocol::BackendType::ReadyForQuery) && f.complete) {
            on_ready_for_query(protocol::decode_ready_for_query(f.body(buf)));
        } else if (f.type == static_cast<char>(protocol::BackendType::ErrorResponse) && f.complete) {
            if (auto e = protocol::decode_error_fields(f.body(buf)))
                metrics::Registry::instance().count_error("backend", e->sqlstate);
        }
        if (f.type == static_cast<char>(protocol::BackendType::BackendKeyData) && !f.complete) {
            // Longer than any key (kMaxWatched is far above 3.2's 264
            // bytes), so streamed: never passed on.
            log::error("[{}] client={} backend {} sent a BackendKeyData of {} bytes; closing", role_name(), peer_,
                       target_.member, f.length);
            backend_closed_ = true;
            return false;
        }
        if (f.type == static_cast<char>(protocol::BackendType::BackendKeyData) && f.complete) {
            // The client gets a key of pgrelay's with the backend's secret
            // length (4 bytes in protocol 3.0, PostgreSQL 18's 32 in 3.2),
            // so the frame is rewritten in place. A key pgrelay cannot
            // replace is never passed on: it would show the backend's.
            auto body = f.body(buf);
            auto key = protocol::decode_backend_key_data(body);
            if (!key) {
                log::error("[{}] client={} backend {} sent a malformed BackendKeyData ({} bytes); closing", role_name(),
                           peer_, target_.member, body.size());
                backend_closed_ = true;
                return false;
            }
            const size_t secret_len = key->secret.size();
            if (proxy_key_) shared_.cancels->remove(*proxy_key_);
            proxy_key_ = shared_.cancels->add(CancelTarget{target_.member, target_.host, target_.port, std::move(*key)},
                                              secret_len);
            protocol::rewrite_backend_key_data(body, *proxy_key_);
        }
    }
}

void Session::sent_up(size_t n) {
    bytes_up_ += n;
    member_stats_->bytes_from_client.fetch_add(n, std::memory_order_relaxed);
}

void Session::sent_down(size_t n, char chunk_last_type) {
    client_at_boundary_ = down_scanner_.at_boundary();
    last_down_type_ = chunk_last_type;
    bytes_down_ += n;
    member_stats_->bytes_to_client.fetch_add(n, std::memory_order_relaxed);
}

void Session::init_scanners() {
    up_scanner_ = protocol::FrameScanner(cfg_->max_frame_size);
    down_scanner_ = protocol::FrameScanner(UINT32_MAX, kMaxWatched);
    down_scanner_.watch(static_cast<char>(protocol::BackendType::BackendKeyData));
    down_scanner_.watch(static_cast<char>(protocol::BackendType::ReadyForQuery));
    down_scanner_.watch(static_cast<char>(protocol::BackendType::ErrorResponse));
}

// The coroutine relay, for sessions with TLS on either side.
asio::awaitable<void> Session::relay_client_to_backend() {
    RelayBuffer buf;
    bool drained = true;
    uint8_t idle[kIdleRead];
    size_t len = take_carried(pipelined_, buf);
    for (bool carried = len > 0;; carried = false) {
        if (stopping_) co_return;
        if (!carried) {
            auto [rec, n] = co_await read_pooled(client_.socket(), client_.tls(), buf, len, drained, idle);
            if (rec) {
                if (rec != asio::error::operation_aborted) client_closed_ = true;
                co_return;
            }
            if (track_idle_) last_activity_ = steady_clock::now();
            len += n;
        }
        size_t pos = 0;
        bool terminate = false;
        if (!scan_up(buf.data(), len, pos, terminate)) co_return;
        if (pos > 0) {
            if (stopping_) co_return;
            auto [wec, wn] = co_await backend_write(asio::buffer(buf.data(), pos));
            if (wec) {
                if (wec != asio::error::operation_aborted) backend_closed_ = true;
                co_return;
            }
            sent_up(pos);
        }
        if (terminate) {
            client_closed_ = true;
            co_return;
        }
        std::memmove(buf.data(), buf.data() + pos, len - pos);
        len -= pos;
    }
}

asio::awaitable<void> Session::relay_backend_to_client() {
    RelayBuffer buf;
    bool drained = true;
    uint8_t idle[kIdleRead];
    size_t len = take_carried(backend_prefix_, buf);
    for (bool carried = len > 0;; carried = false) {
        if (stopping_) co_return;
        if (!carried) {
            auto [rec, n] = co_await read_pooled(backend_->socket(), backend_->tls(), buf, len, drained, idle);
            if (rec) {
                if (rec != asio::error::operation_aborted) backend_closed_ = true;
                co_return;
            }
            len += n;
        }
        size_t pos = 0;
        char chunk_last_type = last_down_type_;
        if (!scan_down(buf.data(), len, pos, chunk_last_type)) co_return;
        if (pos > 0) {
            if (stopping_) co_return;
            down_writing_ = true;
            auto [wec, wn] = co_await client_write(asio::buffer(buf.data(), pos));
            down_writing_ = false;
            if (wec) {
                // A write cut short (cancelled by ||, or failed) leaves the
                // client stream inside a message unless nothing went out.
                if (wn > 0) client_at_boundary_ = false;
                if (wec != asio::error::operation_aborted) client_closed_ = true;
                co_return;
            }
            sent_down(pos, chunk_last_type);
            if (terminate_pending_) co_return;
        }
        std::memmove(buf.data(), buf.data() + pos, len - pos);
        len -= pos;
    }
}

// The epoll relay, for plaintext sessions (relay_loop.hpp). Each direction
// is a Pipe: one read per readiness edge into a pooled buffer, the frames
// scanned, then one send. A pipe whose send was short waits for its
// destination's EPOLLOUT and reads nothing meanwhile (the source's edge is
// remembered in `readable`). A read that filled the buffer, or one after the
// peer's shutdown, leaves more behind: the pipe reads again next round.
bool Session::start_fast_relay() {
    const int cfd = client_.socket().native_handle();
    const int bfd = backend_->socket().native_handle();
    boost::system::error_code ec;
    client_v6_ = client_.socket().local_endpoint(ec).address().is_v6();
    if (!shared_.relay_loop->add(cfd, this, 0)) return false;
    if (!shared_.relay_loop->add(bfd, this, 1)) {
        shared_.relay_loop->remove(cfd);
        return false;
    }
    // Out of Asio's reactor: its epoll would wake for every message too.
    client_.socket().release();
    backend_->socket().release();
    backend_.reset();  // nothing of it is needed past the startup but the descriptor
    fast_ = true;
    fds_[0] = cfd;
    fds_[1] = bfd;
    up_.src = down_.dst = cfd;
    up_.dst = down_.src = bfd;
    up_.len = take_carried(pipelined_, up_.buf);
    down_.len = take_carried(backend_prefix_, down_.buf);
    // Both sockets may hold bytes already: their edges came before the
    // registration, so read each once.
    up_.readable = down_.readable = true;
    pump(down_, down_.len > 0);
    if (!relay_over_) pump(up_, up_.len > 0);
    return true;
}

void Session::on_events(int tag, uint32_t events) {
    if (relay_over_) return;
    Pipe& in = tag == 0 ? up_ : down_;   // this socket is its source
    Pipe& out = tag == 0 ? down_ : up_;  // and this one's destination
    if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) in.hup = true;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) in.readable = true;
    if ((events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) && out.blocked) {
        out.blocked = false;
        pump(out, false);
        if (relay_over_) return;
    }
    if (in.readable && !in.blocked) pump(in, false);
}

void Session::on_resume() {
    if (relay_over_) return;
    if (down_.readable && !down_.blocked) pump(down_, false);
    if (!relay_over_ && up_.readable && !up_.blocked) pump(up_, false);
}

void Session::pump(Pipe& p, bool scan_buffered) {
    const bool up = &p == &up_;
    if (p.sent < p.pos && !flush(p)) return;
    if (!scan_buffered) {
        if (!p.readable) {
            if (p.len == 0) p.buf.release();
            return;
        }
        p.buf.ensure();
        const size_t space = kRelayBuffer - p.len;
        ssize_t n;
        do n = ::recv(p.src, p.buf.data() + p.len, space, 0);
        while (n < 0 && errno == EINTR);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            p.readable = false;
            if (p.len == 0) p.buf.release();
            return;
        }
        if (n <= 0) {
            // EOF or a reset: the source is gone.
            (up ? client_closed_ : backend_closed_) = true;
            end_relay();
            return;
        }
        if (up && track_idle_) last_activity_ = steady_clock::now();
        p.len += static_cast<size_t>(n);
        // A short read emptied the socket: the next byte brings a new edge.
        p.readable = static_cast<size_t>(n) == space || p.hup;
    }
    p.pos = 0;
    bool ok;
    if (up) {
        ok = scan_up(p.buf.data(), p.len, p.pos, p.terminate);
    } else {
        p.last_type = last_down_type_;
        ok = scan_down(p.buf.data(), p.len, p.pos, p.last_type);
    }
    if (!ok) {
        end_relay();
        return;
    }
    if (p.pos > 0 && !flush(p)) return;
    // An empty buffer goes back to the pool even when the socket is read
    // again next round: sessions starting together (each deferred once, its
    // sockets unread) would otherwise each hold one, beyond what the pool
    // keeps, and leave them as holes in the heap.
    if (p.len == 0) p.buf.release();
    if (p.readable) shared_.relay_loop->defer(this);
}

bool Session::flush(Pipe& p) {
    const bool up = &p == &up_;
    if (stopping_) return false;
    while (p.sent < p.pos) {
        const ssize_t n = ::send(p.dst, p.buf.data() + p.sent, p.pos - p.sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            p.blocked = true;
            if (!up) down_writing_ = true;
            return false;
        }
        if (n < 0) {
            (up ? backend_closed_ : client_closed_) = true;
            end_relay();
            return false;
        }
        p.sent += static_cast<size_t>(n);
        if (p.sent < p.pos) {
            // Short: the socket's buffer is full, and EPOLLOUT will say
            // when it has room (a second send now would only fail).
            p.blocked = true;
            if (!up) down_writing_ = true;
            return false;
        }
    }
    const size_t n = p.pos;
    if (up) {
        sent_up(n);
    } else {
        down_writing_ = false;
        sent_down(n, p.last_type);
    }
    std::memmove(p.buf.data(), p.buf.data() + n, p.len - n);
    p.len -= n;
    p.pos = p.sent = 0;
    if (up && p.terminate) {
        client_closed_ = true;
        end_relay();
        return false;
    }
    if (!up && terminate_pending_) {
        end_relay();
        return false;
    }
    return true;
}

// Out of the loop; run() takes the sockets back for the ending.
void Session::end_relay() {
    if (relay_over_) return;
    relay_over_ = true;
    stopping_ = true;
    shared_.relay_loop->remove(fds_[0]);
    shared_.relay_loop->remove(fds_[1]);
    shared_.relay_loop->forget(this);
    // Part of a chunk went out: the client stream stops inside a message.
    if (down_.sent > 0) client_at_boundary_ = false;
    down_writing_ = false;
    up_.buf.release();
    down_.buf.release();
    if (idle_timer_) idle_timer_->cancel();
    spawn_finish();
}

// Posted, never run inline: co_spawn starts the coroutine at once, and an
// ending with nothing to send would delete the session inside the round
// that ended it. Unrun (the worker stopping), the handler deletes it.
void Session::spawn_finish() {
    if (!self_owned_ || finishing_) return;
    finishing_ = true;
    asio::post(executor(), [s = std::unique_ptr<Session>(this)]() mutable {
        const auto ex = s->executor();
        asio::co_spawn(ex, finish_session(std::move(s)), asio::detached);
    });
}

void Session::adopt() {
    self_owned_ = true;
    if (relay_over_) spawn_finish();
}

void Session::restore_sockets() {
    if (!fast_) return;
    fast_ = false;
    boost::system::error_code ec;
    client_.socket().assign(client_v6_ ? tcp::v6() : tcp::v4(), fds_[0], ec);
    if (ec) ::close(fds_[0]);
    fds_[0] = -1;
}

asio::awaitable<void> Session::finish() {
    while (relays_running_ > 0) co_await relay_done_->async_wait(use_tuple);
    restore_sockets();
    co_await ending();
}

// A relay coroutine spawned beside run(); whatever way it ends, the others
// stop, and the last one out releases run().
asio::awaitable<void> Session::relay_task(asio::awaitable<void> (Session::*body)()) {
    try {
        co_await (this->*body)();
    } catch (const std::exception& e) {
        log::error("[{}] client={} relay ended by an unexpected error: {}", role_name(), peer_, e.what());
    }
    stop_relay();
    if (--relays_running_ == 0 && relay_done_) relay_done_->cancel();
}

// idle_client_timeout: ends the session once the client has been silent that
// long with nothing outstanding and no transaction open (as PostgreSQL's
// idle_session_timeout, 57P05). Inside a transaction it only looks again later.
asio::awaitable<void> Session::watch_idle() {
    const auto limit = cfg_->idle_client_timeout;
    auto due = last_activity_ + limit;
    for (;;) {
        if (stopping_) co_return;
        idle_timer_->expires_at(due);
        if (auto [ec] = co_await idle_timer_->async_wait(use_tuple); ec) co_return;
        const auto now = steady_clock::now();
        due = last_activity_ + limit;
        if (now < due) continue;
        if (outstanding_ == 0 && tx_status_ == protocol::TxStatus::Idle) {
            terminate("57P05", std::string("pgrelay ") + role_name() +
                                   ": terminating connection due to idle-session timeout (idle_client_timeout = " +
                                   std::to_string(limit.count()) + " ms)");
            co_return;
        }
        due = now + limit;
    }
}

// Startup, limits, routing and backend connect; true once the session can
// relay. Its own frame, so the startup packet is freed before the relay.
asio::awaitable<bool> Session::establish() {
    std::string startup_bytes;
    protocol::StartupPacket packet;
    if (!co_await client_.startup(startup_bytes, packet, pipelined_)) co_return false;
    if (!co_await connect_backend(packet, startup_bytes)) co_return false;
    const std::string user = log::printable(packet.parameter("user"));
    log::info("[{}] client={} user={} db={} -> backend {} ({}) connected", role_name(), peer_, user,
              packet.parameter("database").empty() ? user : log::printable(packet.parameter("database")),
              target_.member, target_.address());
    co_return true;
}

asio::awaitable<bool> Session::run() {
    if (!co_await establish()) co_return false;

    self_ = shared_.sessions.insert(shared_.sessions.end(), this);
    registered_ = true;
    // A snapshot published while this session was connecting skipped it:
    // check it against the newest one before relaying anything.
    std::string moved;
    if (const auto& now = shared_.topology.current()) moved = lost_role_reason(*this, *now);
    track_idle_ = cfg_->idle_client_timeout.count() > 0;
    last_activity_ = steady_clock::now();
    init_scanners();
    if (track_idle_) idle_timer_ = std::make_unique<asio::steady_timer>(executor());
    auto start_watch_idle = [this] {
        if (!track_idle_) return;
        if (!relay_done_) relay_done_ = std::make_unique<asio::steady_timer>(executor(), steady_clock::time_point::max());
        ++relays_running_;
        asio::co_spawn(executor(), relay_task(&Session::watch_idle), asio::detached);
    };
    if (!moved.empty()) {
        terminate("57P01", std::move(moved));
    } else if (!client_.tls() && !backend_->tls() && shared_.relay_loop && start_fast_relay()) {
        if (!relay_over_) {
            // From here the loop drives the session; no coroutine holds it
            // (run_session adopts it).
            start_watch_idle();
            co_return true;
        }
        restore_sockets();  // it ended on the bytes it had already
    } else {
        // One coroutine per direction, not `a || b`: the operators' parallel
        // group, cancellation signals and per-branch threads cost about 4 KiB
        // per session, which 10,000 idle clients notice.
        relay_done_ = std::make_unique<asio::steady_timer>(executor(), steady_clock::time_point::max());
        relays_running_ = 1;
        asio::co_spawn(executor(), relay_task(&Session::relay_backend_to_client), asio::detached);
        start_watch_idle();
        try {
            co_await relay_client_to_backend();
        } catch (const std::exception& e) {
            log::error("[{}] client={} relay ended by an unexpected error: {}", role_name(), peer_, e.what());
        }
        stop_relay();
        // The spawned coroutines use this session: wait for them.
        while (relays_running_ > 0) co_await relay_done_->async_wait(use_tuple);
    }
    co_await ending();
    co_return false;
}

asio::awaitable<void> Session::ending() {
    // Only whole messages may precede pgrelay's own ErrorResponse.
    const bool can_tell_client = !client_closed_ && client_at_boundary_;
    if (end_sqlstate_ && can_tell_client) {
        co_await send_error(end_sqlstate_, end_message_);
    } else if (backend_closed_ && !client_closed_ && can_tell_client && last_down_type_ != 'E') {
        // The backend vanished without a word (crash, kill -9, network): say
        // so, instead of leaving the client with a bare reset. When it said
        // goodbye with an ErrorResponse (e.g. 57P01 at shutdown) that suffices.
        co_await send_error("08006", std::string("pgrelay ") + role_name() + ": lost the connection to backend " +
                                         target_.member + (bytes_down_ == 0 ? " during startup" : ""),
                            "The server may have crashed or restarted; reconnect.");
    }
    if (backend_) {
        boost::system::error_code ec;
        backend_->socket().shutdown(tcp::socket::shutdown_both, ec);
        backend_->socket().close(ec);
    } else if (fds_[1] >= 0) {
        ::shutdown(fds_[1], SHUT_RDWR);
        ::close(fds_[1]);
        fds_[1] = -1;
    }
    if (!client_closed_) co_await client_.linger_close();
    client_.close();
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(steady_clock::now() - started_).count();
    const char* why = end_sqlstate_ ? end_message_.c_str() : client_closed_ ? "client closed" : "backend closed";
    log::info("[{}] client={} backend {} closed: {} ({} bytes up, {} bytes down, {} ms)", role_name(), peer_,
              target_.member, why, bytes_up_, bytes_down_, ms);
}

}  // namespace

std::string lost_role_reason(const SessionHandle& s, const topology::Topology& after) {
    if (s.role == PortRole::ReadWrite) {
        if (after.leader == s.member) return {};
        return "pgrelay rw: terminating connection because the primary moved from " + s.member + " to " +
               (after.leader.empty() ? std::string("(none yet)") : after.leader) + "; reconnect to reach the new primary";
    }
    const topology::Member* m = after.find(s.member);
    std::string why;
    if (!m) why = "left the cluster";
    else if (m->state != topology::State::Running) why = "is " + std::string(topology::to_string(m->state));
    else if (m->excluded) why = "was excluded in config";
    else if (!s.fallback && (m->role != topology::Role::Replica || after.primary_member() == m))
        why = "is no longer a replica";
    else if (!s.fallback && m->has_tag("noloadbalance")) why = "was tagged noloadbalance";
    if (why.empty()) return {};
    return "pgrelay ro: terminating connection because " + s.member + " " + why + "; reconnect to reach another replica";
}

void apply_topology_change(WorkerShared& shared, const topology::Topology& after) {
    shared.topology_changed->cancel();
    // terminate() does not remove from the list (the session erases itself on
    // destruction, later), so iterating here is safe.
    if (shared.pools) {
        // Pools of members that can no longer serve their port keep no idle
        // servers; busy ones close when their client gives them back.
        for (const PortRole r : {PortRole::ReadWrite, PortRole::ReadOnly}) {
            std::vector<std::string> keep;
            for (const Target& t : shared.router->route(r, &after).candidates) keep.push_back(t.member);
            shared.pools->keep_only(r, keep);
        }
    }
    for (SessionHandle* s : shared.sessions) {
        if (s->pooled && s->member.empty()) continue;  // between transactions: its next one routes anew
        std::string why = lost_role_reason(*s, after);
        if (!why.empty()) s->lost_role(std::move(why));
    }
}

asio::awaitable<void> run_session(tcp::socket client, PortRole role, WorkerShared& shared) {
    try {
        auto s = std::make_unique<Session>(std::move(client), role, shared);
        // Relaying in the epoll loop: the session owns itself from here, and
        // this coroutine (and its frame) goes.
        if (co_await s->run()) s.release()->adopt();
    } catch (const std::exception& e) {
        log::error("[{}] session ended by an unexpected error: {}", to_string(role), e.what());
    }
}

}  // namespace pgrelay
