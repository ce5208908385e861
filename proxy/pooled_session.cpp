// A client of a pooled port (session or transaction pool mode): pgrelay
// authenticates it itself (FrontendAuth against auth_file / auth_query), then
// lends it a server connection from the pool of (member, database, user) --
// for its whole life in session mode, from the first message of a transaction
// to the ReadyForQuery 'I' that ends it in transaction mode.
//
// Two coroutines while a server is held: the client reader turns client
// messages into server messages (prepared statement names, restored session
// parameters) and writes them; the server reader forwards the answers, drops
// the ones to messages pgrelay inserted (ResponseTracker), and gives the
// server back once nothing is outstanding outside a transaction. Both run on
// the pool worker's thread, so neither needs a lock: a decision and the state
// it reads happen between two suspensions.
#include <sys/socket.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "protocol/crypto.hpp"
#include "protocol/frames.hpp"
#include "protocol/login.hpp"
#include "protocol/pooling.hpp"
#include "protocol/scram.hpp"
#include "proxy/admin_console.hpp"
#include "proxy/auth_store.hpp"
#include "proxy/client.hpp"
#include "proxy/hold.hpp"
#include "proxy/log.hpp"
#include "proxy/metrics.hpp"
#include "proxy/pool.hpp"
#include "proxy/session.hpp"

namespace pgrelay {

namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;
using net::tcp;
using net::use_tuple;
using protocol::pool::ResponseTracker;
using std::chrono::steady_clock;

namespace {

using Origin = ResponseTracker::Origin;
using Verdict = ResponseTracker::Verdict;

// A never-prepared statement name: Close of it answers CloseComplete, which
// stands in for ParseComplete when the server already has the statement.
constexpr std::string_view kNopName = "pgrelay.nop";
constexpr uint32_t kMaxWatchedServer = 1u << 20;
// The secret pgrelay gives a protocol 3.2 client, as long as PostgreSQL 18's.
constexpr uint8_t kLongCancelSecret = 32;

// ParameterStatus values the server decides; never restored on another server.
bool server_owned(std::string_view name) {
    static constexpr std::array<std::string_view, 8> owned = {"server_version", "server_encoding", "integer_datetimes",
                                                              "in_hot_standby", "is_superuser", "session_authorization",
                                                              "default_transaction_read_only", "scram_iterations"};
    return std::find(owned.begin(), owned.end(), name) != owned.end();
}

std::string lower(std::string_view s) {
    std::string out(s);
    for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

// A process-wide random key for the mock SCRAM salt of unknown users.
const std::string& mock_key() {
    static const std::string key = protocol::scram::make_nonce();
    return key;
}

// LISTEN in transaction mode: notifications would reach whichever client
// holds that server later. The client gets an error in its place in the
// stream, from the server itself.
constexpr std::string_view kSessionAuthRefusal =
    "DO $pgrelay$ BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', MESSAGE = 'pgrelay: SET SESSION "
    "AUTHORIZATION is not supported in transaction pool mode', HINT = 'Use SET ROLE, or a session-mode port.'; END $pgrelay$";
constexpr std::string_view kListenRefusal =
    "DO $pgrelay$ BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', MESSAGE = 'pgrelay: LISTEN is not "
    "supported in transaction pool mode', HINT = 'Use a port in session or passthrough mode for LISTEN.'; END $pgrelay$";

// `sql` begins (after blanks) with `word`, case-insensitively, as a whole word.
bool starts_with_word(std::string_view sql, std::string_view word) {
    size_t i = 0;
    while (i < sql.size() && std::isspace(static_cast<unsigned char>(sql[i]))) ++i;
    if (sql.size() - i < word.size()) return false;
    for (size_t k = 0; k < word.size(); ++k)
        if (std::toupper(static_cast<unsigned char>(sql[i + k])) != word[k]) return false;
    const size_t end = i + word.size();
    return end == sql.size() || !std::isalnum(static_cast<unsigned char>(sql[end]));
}

// What follows the first word of `sql` (leading blanks skipped).
std::string_view after_word(std::string_view sql) {
    size_t i = sql.find_first_not_of(" \t\r\n");
    if (i == std::string_view::npos) return {};
    while (i < sql.size() && (std::isalnum(static_cast<unsigned char>(sql[i])) || sql[i] == '_')) ++i;
    const size_t j = sql.find_first_not_of(" \t\r\n", i);
    return j == std::string_view::npos ? std::string_view() : sql.substr(j);
}

// SET ROLE x / SET role {TO|=} x / SET ROLE NONE / RESET ROLE, alone in the
// query: carried like a parameter (name "role", replayed as SET role TO x).
std::optional<protocol::pool::SetCommand> parse_role(std::string_view sql) {
    protocol::pool::SetCommand c;
    c.name = "role";
    std::string_view v;
    if (starts_with_word(sql, "RESET") && starts_with_word(after_word(sql), "ROLE")) {
        v = after_word(after_word(sql));
        c.reset = true;
    } else if (starts_with_word(sql, "SET") && starts_with_word(after_word(sql), "ROLE")) {
        v = after_word(after_word(sql));
        if (!v.empty() && v[0] == '=') v = v.substr(1);
        else if (starts_with_word(v, "TO")) v = after_word(v);
    } else {
        return std::nullopt;
    }
    while (!v.empty() && (v.back() == ';' || std::isspace(static_cast<unsigned char>(v.back())))) v.remove_suffix(1);
    while (!v.empty() && std::isspace(static_cast<unsigned char>(v.front()))) v.remove_prefix(1);
    if (c.reset) return v.empty() ? std::optional(c) : std::nullopt;
    if (v.empty()) return std::nullopt;
    // One identifier or one quoted literal without quotes inside: nothing
    // else can hide a second statement.
    const bool quoted = v.size() >= 2 && (v.front() == '\'' || v.front() == '"') && v.back() == v.front() &&
                        v.substr(1, v.size() - 2).find(v.front()) == std::string_view::npos;
    const bool ident = std::all_of(v.begin(), v.end(), [](char ch) {
        return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_';
    });
    if (!quoted && !ident) return std::nullopt;
    if (ident && starts_with_word(v, "NONE")) {
        c.reset = true;
        return c;
    }
    c.value = std::string(v);
    return c;
}

// Whether `sql` may change session state: a statement starting with SET or
// RESET (at the start or after a ';'), or a call of set_config. A rough
// test on purpose: a false positive only costs a fresh server connection.
bool may_change_session(std::string_view sql) {
    auto ieq = [](char a, char b) { return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b)); };
    auto contains = [&](std::string_view needle) {
        return std::search(sql.begin(), sql.end(), needle.begin(), needle.end(), ieq) != sql.end();
    };
    if (contains("set_config")) return true;
    for (size_t i = 0; i <= sql.size();) {
        const std::string_view rest = sql.substr(i);
        if (starts_with_word(rest, "RESET")) return true;
        if (starts_with_word(rest, "SET")) {
            // SET LOCAL and SET TRANSACTION end with the transaction.
            const size_t at = rest.find_first_not_of(" \t\r\n", rest.find_first_of("Tt") + 1);
            const std::string_view next = at == std::string_view::npos ? std::string_view() : rest.substr(at);
            if (!starts_with_word(next, "LOCAL") && !starts_with_word(next, "TRANSACTION")) return true;
        }
        const size_t semi = sql.find(';', i);
        if (semi == std::string_view::npos) break;
        i = semi + 1;
    }
    return false;
}

// `sql` has a statement that might end a transaction, or run in one of its
// own (procedures and DO blocks may commit): a cut-off request with one may
// have committed. Statements are found at the start and after each ';' (a
// ';' inside a literal can only add a false positive, which turns a
// retryable error into 08007).
bool may_end_transaction(std::string_view sql) {
    static constexpr std::array<std::string_view, 7> words = {"COMMIT", "END", "ROLLBACK", "ABORT", "PREPARE", "CALL", "DO"};
    for (size_t i = 0; i <= sql.size();) {
        const std::string_view rest = sql.substr(i);
        for (const std::string_view w : words)
            if (starts_with_word(rest, w)) return true;
        const size_t semi = sql.find(';', i);
        if (semi == std::string_view::npos) break;
        i = semi + 1;
    }
    return false;
}

// Session state pgrelay cannot restore on another server, as far as the
// statement shows it: LISTEN, temporary tables, session advisory locks,
// cursors WITH HOLD, SQL-level PREPARE, SET SESSION AUTHORIZATION. A
// session-mode client that ran one stays on its server: if that server's
// member loses its role, the client ends (57P01) as in passthrough.
bool pins_session(std::string_view sql) {
    auto ieq = [](char a, char b) { return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b)); };
    auto contains = [&](std::string_view needle) {
        return std::search(sql.begin(), sql.end(), needle.begin(), needle.end(), ieq) != sql.end();
    };
    if (contains("pg_advisory_lock") || contains("pg_try_advisory_lock") || contains("with hold")) return true;
    for (size_t i = 0; i <= sql.size();) {
        const std::string_view rest = sql.substr(i);
        if (starts_with_word(rest, "LISTEN") || starts_with_word(rest, "PREPARE") ||
            (starts_with_word(rest, "SET") && starts_with_word(after_word(rest), "SESSION") &&
             starts_with_word(after_word(after_word(rest)), "AUTHORIZATION")))
            return true;
        if (starts_with_word(rest, "CREATE")) {
            std::string_view w = after_word(rest);
            if (starts_with_word(w, "LOCAL") || starts_with_word(w, "GLOBAL")) w = after_word(w);
            if (starts_with_word(w, "TEMP") || starts_with_word(w, "TEMPORARY")) return true;
        }
        const size_t semi = sql.find(';', i);
        if (semi == std::string_view::npos) break;
        i = semi + 1;
    }
    return false;
}

// A statement whose effect pgrelay carries from server to server.
std::optional<protocol::pool::SetCommand> carried_set(std::string_view sql) {
    if (auto r = parse_role(sql)) return r;
    return protocol::pool::parse_set(sql);
}

// A server reader's buffer, lent by the thread: one reader runs per
// transaction, and a fresh 16 KiB (zeroed) each time costs more than the
// relay itself.
struct BufferLease {
    BufferLease() {
        auto& f = free_list();
        if (f.empty()) {
            buf.resize(net::kRelayBuffer);
        } else {
            buf = std::move(f.back());
            f.pop_back();
        }
    }
    ~BufferLease() {
        auto& f = free_list();
        if (f.size() < 64 && buf.size() <= 4 * net::kRelayBuffer) f.push_back(std::move(buf));
    }
    BufferLease(const BufferLease&) = delete;
    BufferLease& operator=(const BufferLease&) = delete;
    static std::vector<std::vector<uint8_t>>& free_list() {
        thread_local std::vector<std::vector<uint8_t>> f;
        return f;
    }
    std::vector<uint8_t> buf;
};

std::span<const uint8_t> as_bytes(std::string_view s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

class PooledSession final : public SessionHandle {
public:
    PooledSession(tcp::socket sock, PortRole r, WorkerShared& shared)
        : client_(std::move(sock), r, shared.config, shared.tls, *shared.cancels, shared.draining), shared_(shared),
          pools_(*shared.pools),
          cfg_(shared.config), pc_(shared.config->pool(r)), reader_done_(client_.socket().get_executor()) {
        role = r;
        pooled = true;
        reader_done_.expires_at(steady_clock::time_point::max());
    }
    ~PooledSession() {
        *alive_ = false;
        if (have_key_) shared_.cancels->remove(key_);
        if (registered_) shared_.sessions.erase(self_);
        if (counted_pool_ && *pools_alive_) --counted_pool_->clients;
    }

    void terminate(const char* sqlstate, std::string message) override {
        if (end_sqlstate_) return;
        client_.stats().terminated.fetch_add(1, std::memory_order_relaxed);
        end_sqlstate_ = sqlstate;
        end_message_ = std::move(message);
        log::info("[{}] client={} server {}: {}", client_.role_name(), client_.peer(), member, end_message_);
        stop();
    }

    // The member of the server it holds lost its role: the server is cut
    // (shut down, so PostgreSQL rolls back whatever it was doing, and the
    // server reader takes the path of a lost server: server_gone). A client
    // with state pgrelay cannot carry ends instead.
    void lost_role(std::string why) override {
        if (!srv_ || stopping_) return;
        if (!carriable_) {
            terminate("57P01", std::move(why) + " (this session holds state pgrelay cannot move: LISTEN, temporary "
                                                "tables, advisory locks, WITH HOLD cursors or SQL PREPARE)");
            return;
        }
        log::info("[{}] client={} server #{} on {}: {}; the client stays, its next transaction goes to the new member",
                  role_name(), client_.peer(), srv_->id, member, why);
        cut_ = true;
        srv_->broken = true;
        boost::system::error_code ec;
        srv_->socket().shutdown(tcp::socket::shutdown_both, ec);
    }

    asio::awaitable<void> run();

private:
    const char* role_name() const { return client_.role_name(); }
    // A change of session state pgrelay cannot carry: in transaction mode the
    // server is not lent to anyone else afterwards; in session mode the
    // session can no longer move to another server.
    void uncarried_session_change() {
        if (pc_.mode == PoolMode::Transaction) srv_->broken = true;
        else carriable_ = false;
    }
    // Bind of a statement holding `set` (or none) into `portal`. Only the
    // unnamed portal's SET is carried (what drivers use); one bound into a
    // named portal is not.
    void set_portal(std::string_view portal, std::optional<protocol::pool::SetCommand> set) {
        portal_set_.reset();
        if (!set) return;
        if (portal.empty()) portal_set_ = std::move(set);
        else uncarried_session_change();
    }
    // No transaction block open on the held server (as of its last
    // ReadyForQuery; a fresh server is outside one).
    bool outside_block() const {
        const auto st = tracker_->last_status();
        return !st || *st == protocol::TxStatus::Idle;
    }
    // The client closed its side (checked after a wait, before running what it sent).
    bool client_gone() {
        if (client_.tls()) return false;  // bytes may be TLS records, not an EOF: only plaintext can tell
        char probe;
        const ssize_t n = ::recv(client_.socket().native_handle(), &probe, 1, MSG_PEEK | MSG_DONTWAIT);
        return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
    }
    void stop() {
        if (stopping_) return;
        stopping_ = true;
        boost::system::error_code ec;
        client_.socket().cancel(ec);
        if (srv_) srv_->socket().cancel(ec);
    }

    asio::awaitable<bool> login(const protocol::StartupPacket& packet);
    asio::awaitable<bool> read_client_message(char& type, std::span<const uint8_t>& body, bool login = true);
    asio::awaitable<void> client_loop();
    asio::awaitable<void> admin_loop();
    bool client_info(ClientInfo& c) const override {
        c.peer = client_.peer();
        c.user = user_;
        c.database = db_;
        c.state = srv_ ? "active" : waiting_ ? "waiting" : admin_ ? "admin" : "idle";
        c.member = member;
        c.connected_seconds = std::chrono::duration<double>(steady_clock::now() - started_).count();
        if (srv_) {
            c.server_id = srv_->id;
            c.server_pid = srv_->backend_key().pid;
            c.server_age_seconds = std::chrono::duration<double>(steady_clock::now() - srv_->created).count();
        }
        return true;
    }
    asio::awaitable<bool> attach(bool& fatal);
    // One wait of attach() in `hold` (waiting_ set meanwhile, for SHOW
    // CLIENTS); false when attach must give up: the client left (it is
    // stopped) or the session is stopping.
    asio::awaitable<bool> hold_wait(Hold& hold, const std::string& why, std::chrono::milliseconds retry = {}) {
        waiting_ = true;
        const bool stayed = co_await hold.wait(why, retry);
        waiting_ = false;
        if (!stayed) {
            client_closed_ = true;
            stop();
        }
        co_return stayed && !stopping_;
    }
    // After attach: the held server gets the client's session (SETs into
    // `out`, ahead of the client's messages) and its reader starts.
    void start_relay(std::string& out) {
        restore_parameters(out);
        reader_running_ = true;
        asio::co_spawn(client_.socket().get_executor(), server_reader(srv_.get()), asio::detached);
    }
    asio::awaitable<void> server_reader(ServerConn* s);
    asio::awaitable<void> server_gone(ServerConn* s, const std::string& why);
    asio::awaitable<bool> answer_lost_block(size_t upto);
    asio::awaitable<void> detach_at_end();
    void release_server(bool reusable);
    void transform(char type, std::span<const uint8_t> body, std::span<const uint8_t> raw, std::string& out);
    void ensure_prepared(const protocol::pool::Statement& st, std::string& out);
    void restore_parameters(std::string& out);
    void on_server_parameter(std::string_view name, std::string_view value);
    void on_client_ready(protocol::TxStatus st);
    asio::awaitable<void> refuse_batch(size_t upto, const LoginError& err);
    asio::awaitable<bool> answer_prepare_locally(size_t upto);
    void consume(size_t n) {
        cin_.erase(cin_.begin(), cin_.begin() + static_cast<std::ptrdiff_t>(n));
        if (cin_.empty() && cin_.capacity() > 4096) std::vector<uint8_t>().swap(cin_);  // idle clients hold no buffer
    }

    ClientConn client_;
    WorkerShared& shared_;
    PoolManager& pools_;
    std::shared_ptr<const Config> cfg_;
    PoolConfig pc_;  // as of the login: a reload applies to new clients
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
    bool registered_ = false;
    std::list<SessionHandle*>::iterator self_;
    Pool* counted_pool_ = nullptr;
    std::shared_ptr<const bool> pools_alive_ = pools_.alive();

    std::string user_, db_;
    protocol::BackendLogin::Credentials creds_;
    std::string ro_member_;  // ro: the replica this client sticks to while it can serve
    protocol::CancelKey key_{};
    uint8_t key_len_ = protocol::kMinCancelSecret;  // the secret's length: 32 in protocol 3.2
    bool have_key_ = false;

    // The server held now, and the pool it came from.
    std::unique_ptr<ServerConn> srv_;
    Pool* pool_ = nullptr;
    std::optional<ResponseTracker> tracker_;  // while a server is held (an empty one allocates)
    bool reader_running_ = false;
    asio::steady_timer reader_done_;
    bool down_boundary_ = true;  // what the client got so far ends at a message boundary

    // Client state that travels with it from server to server.
    protocol::pool::ClientStatements stmts_;
    std::map<std::string, std::string> reported_;    // reported GUCs it may set: name -> value (its view)
    std::map<std::string, std::string> unreported_;  // other GUCs it set: lower-case name -> SQL text
    // Per request answered by ReadyForQuery. Vectors, not deques: an empty
    // std::deque allocates, and idle clients are many.
    std::vector<std::optional<protocol::pool::SetCommand>> pending_sets_;
    // Extended protocol: the SET the unnamed statement / the last bound
    // portal holds, and the one executed since the last Sync.
    std::optional<protocol::pool::SetCommand> unnamed_set_, portal_set_, batch_set_;
    bool error_since_ready_ = false;
    uint32_t unsynced_ = 0;        // extended-protocol messages since the last Sync
    bool skip_until_sync_ = false;  // pgrelay refused a batch that had no Sync yet

    std::vector<uint64_t> parses_;  // named Parses sent, oldest first, until their ParseComplete
    std::vector<uint8_t> cin_;  // client bytes not yet handled (whole messages are handled)
    bool stopping_ = false;
    bool admin_ = false;    // the admin console, not a database session
    bool waiting_ = false;  // for a server, in attach()
    steady_clock::time_point started_ = steady_clock::now();
    bool client_closed_ = false;
    bool server_lost_ = false;
    // The held server is gone (lost, or cut by lost_role): the server reader
    // is answering what was in flight; the client reader waits for it.
    bool gone_ = false;
    bool cut_ = false;          // lost_role() cut it, rather than it failing
    bool carriable_ = true;     // session state pgrelay can restore on another server
    bool may_commit_ = false;   // a request in flight could commit (autocommit, or transaction control)
    bool unnamed_may_end_ = false;  // the unnamed statement's text may end a transaction
    // The server went away inside a transaction block with nothing in
    // flight: the client's next request learns that its transaction is gone.
    bool lost_block_ = false;
    const char* end_sqlstate_ = nullptr;
    std::string end_message_;
    LoginError attach_error_;  // why the last attach failed
};

// One whole client message into (type, body) at the front of cin_ (the
// caller consumes it). False on EOF, error, or a malformed length (then
// end_sqlstate_ says so).
asio::awaitable<bool> PooledSession::read_client_message(char& type, std::span<const uint8_t>& body, bool login) {
    uint8_t chunk[4096];
    for (;;) {
        if (cin_.size() >= 5) {
            const uint32_t len = protocol::read_u32(cin_.data() + 1);
            if (len < 4 || len > cfg_->max_frame_size) {
                end_sqlstate_ = "08P01";
                end_message_ = "pgrelay: invalid message length from client";
                co_return false;
            }
            if (cin_.size() >= size_t(len) + 1) {
                type = static_cast<char>(cin_[0]);
                body = std::span<const uint8_t>(cin_.data() + 5, len - 4);
                co_return true;
            }
        }
        asio::steady_timer deadline(client_.socket().get_executor(),
                                    login ? cfg_->startup_timeout : std::chrono::milliseconds(std::chrono::hours(24 * 365)));
        auto r = co_await (client_.read(asio::buffer(chunk)) || deadline.async_wait(use_tuple));
        if (r.index() == 1) {
            end_sqlstate_ = "08P01";
            end_message_ = "pgrelay: authentication not completed within startup_timeout";
            co_return false;
        }
        auto [ec, n] = std::get<0>(r);
        if (ec) {
            client_closed_ = true;
            co_return false;
        }
        cin_.insert(cin_.end(), chunk, chunk + n);
    }
}

asio::awaitable<bool> PooledSession::login(const protocol::StartupPacket& packet) {
    auto& reg = metrics::Registry::instance();
    user_ = std::string(packet.parameter("user"));
    db_ = packet.parameter("database").empty() ? user_ : std::string(packet.parameter("database"));
    const std::string who = log::printable(user_);
    if (user_.empty()) {
        co_await client_.send_error("28000", "no PostgreSQL user name specified in startup packet");
        co_return false;
    }
    if (!packet.parameter("replication").empty()) {
        co_await client_.send_error("08P01", std::string("pgrelay ") + role_name() +
                                                 ": replication connections cannot go through a pooled port",
                                    "Use a passthrough port, or connect to the member directly.");
        co_return false;
    }
    const topology::TopologyPtr topo = shared_.topology.current();
    // auth_query runs in the database the client asked for; the admin
    // console's is virtual, so its users are looked up in "postgres".
    const std::string lookup_db = db_ == kAdminDatabase ? std::string("postgres") : db_;
    AuthStore::Lookup found = co_await shared_.auth->lookup(role, user_, lookup_db, *shared_.router, topo.get());
    if (!found.error.empty()) {
        log::warn("[{}] client={} user={}: cannot look up the password: {}", role_name(), client_.peer(), who, found.error);
        reg.count_login(role, "error");
        co_await client_.send_error("08006", std::string("pgrelay ") + role_name() + ": cannot check the password now",
                                    "Retry shortly; pgrelay could not reach auth_query's server.");
        co_return false;
    }
    protocol::FrontendAuth::Options opts;
    opts.mock_key = mock_key();
    opts.server_nonce = protocol::scram::make_nonce();
    if (opts.server_nonce.empty() || !protocol::crypto::random_bytes(opts.md5_salt.data(), opts.md5_salt.size())) {
        co_await client_.send_error("08006", "pgrelay: no random bytes for the authentication exchange");
        co_return false;
    }
    const std::optional<protocol::auth::Secret> secret = found.secret;
    protocol::FrontendAuth fa(user_, secret, opts);
    protocol::LoginStep step = fa.start();
    // pgrelay speaks protocol 3.0 or 3.2 to pooled clients (3.2 differs only
    // in the cancel key's length, which is pgrelay's own), whatever its
    // servers speak. A client asking for more, or sending protocol options,
    // is told first, as PostgreSQL 18 would (PostgreSQL 19's libpq aborts on
    // a server that does not).
    {
        protocol::Negotiated neg = protocol::negotiate_for(packet);
        if (neg.version >= protocol::kProtocolV3_2) key_len_ = kLongCancelSecret;
        step.bytes.insert(0, neg.message);
    }
    while (step.kind == protocol::LoginStep::Kind::Send) {
        if (!co_await client_.write_bounded(step.bytes)) co_return false;
        char type = 0;
        std::span<const uint8_t> body;
        if (!co_await read_client_message(type, body)) {
            if (end_sqlstate_) co_await client_.send_error(end_sqlstate_, end_message_);
            reg.count_login(role, "abandoned");
            co_return false;
        }
        step = fa.on_message(type, body);
        consume(body.size() + 5);
    }
    if (step.kind == protocol::LoginStep::Kind::Fail) {
        // The same words for a wrong password and an unknown user (FrontendAuth
        // makes them); the log tells the operator which it was.
        log::warn("[{}] client={} user={} db={}: authentication failed ({}{})", role_name(), client_.peer(), who,
                  log::printable(db_), secret ? "wrong password" : "unknown user", secret ? "" : " or no password");
        reg.count_login(role, step.sqlstate == "28P01" ? "failed" : "malformed");
        reg.count_error("pgrelay", step.sqlstate);
        co_await client_.write_bounded(step.bytes);
        co_return false;
    }
    // Authenticated. What pgrelay logs into servers with, as this user.
    creds_ = {};
    if (secret->kind == protocol::auth::Secret::Kind::Scram) {
        creds_.scram = secret->scram;
        creds_.client_key = fa.client_key();
    } else if (secret->kind == protocol::auth::Secret::Kind::Md5) {
        creds_.md5 = secret->md5;
    } else {
        creds_.password = secret->plain;
    }
    // Every pool of this user gets the newest keys: a changed password
    // reaches the servers pgrelay opens from now on.
    for (const auto& [k, p] : pools_.pools())
        if (k.user == user_ && k.database == db_) p->set_credentials(creds_);
    reg.count_login(role, "ok");
    std::string out = std::move(step.bytes);  // SASLFinal (SCRAM) and AuthenticationOk

    // Session parameters: the startup packet's (and its options' -c), over
    // the defaults of a fresh server of the pool.
    std::vector<std::pair<std::string, std::string>> asked;
    for (const auto& [k, v] : packet.parameters) {
        if (k == "user" || k == "database" || k == "replication") continue;
        if (k.rfind("_pq_.", 0) == 0) continue;  // protocol options, not parameters (declined above)
        if (k == "options") {
            for (auto& kv : protocol::pool::parse_startup_options(v)) asked.push_back(std::move(kv));
            continue;
        }
        asked.emplace_back(k, v);
    }
    if (db_ == kAdminDatabase) {
        const auto& admins = pc_.admin_users;
        if (std::find(admins.begin(), admins.end(), user_) == admins.end()) {
            log::warn("[{}] client={} user={}: not in admin_users, admin console refused", role_name(), client_.peer(), who);
            co_await client_.send_error("28000", "pgrelay: user \"" + user_ + "\" may not use the admin console",
                                        "List the user in [pool] admin_users.");
            co_return false;
        }
        admin_ = true;
        for (const auto& [k, v] : std::vector<std::pair<std::string, std::string>>{
                 {"server_version", "15.0 (pgrelay admin console)"}, {"server_encoding", "UTF8"}, {"client_encoding", "UTF8"},
                 {"DateStyle", "ISO, MDY"}, {"integer_datetimes", "on"}, {"standard_conforming_strings", "on"},
                 {"application_name", std::string(packet.parameter("application_name"))}})
            protocol::pool::encode_parameter_status(out, k, v);
        key_ = shared_.cancels->add_pooled(key_len_);
        have_key_ = true;
        protocol::encode_backend_key_data(out, key_);
        protocol::pool::encode_ready_for_query(out, protocol::TxStatus::Idle);
        log::info("[{}] client={} user={} opened the admin console", role_name(), client_.peer(), who);
        co_return co_await client_.write_bounded(out);
    }
    // A pool that had a server knows what a fresh one reports; otherwise
    // borrow one to learn it. Logins never wait for a server otherwise: a
    // client that must log in before others can finish (pgbench -j 1
    // connects all its clients first) would wait for ever.
    Pool* welcome_pool = nullptr;
    {
        RouteDecision d = shared_.router->route(role, topo.get());
        if (!d.candidates.empty()) {
            Pool& p = pools_.pool(PoolKey{role, d.candidates.front().member, db_, user_});
            if (!p.welcome.empty()) welcome_pool = &p;
        }
    }
    if (!welcome_pool) {
        bool fatal = false;
        if (!co_await attach(fatal)) co_return false;  // attach told the client why
        welcome_pool = pool_;
    }
    const std::vector<std::pair<std::string, std::string>> welcome = welcome_pool->welcome;
    counted_pool_ = welcome_pool;
    ++welcome_pool->clients;
    for (const auto& [k, v] : welcome)
        if (!server_owned(k)) reported_[k] = v;
    for (const auto& [k, v] : asked) {
        auto it = std::find_if(reported_.begin(), reported_.end(),
                               [&](const auto& kv) { return lower(kv.first) == lower(k); });
        if (it != reported_.end()) it->second = v;
        else unreported_[lower(k)] = protocol::pool::quote_literal(v);
    }
    for (const auto& [k, v] : welcome) {
        auto it = reported_.find(k);
        protocol::pool::encode_parameter_status(out, k, it != reported_.end() ? it->second : v);
    }
    key_ = shared_.cancels->add_pooled(key_len_);
    have_key_ = true;
    protocol::encode_backend_key_data(out, key_);
    protocol::pool::encode_ready_for_query(out, protocol::TxStatus::Idle);
    if (pc_.mode == PoolMode::Transaction) {
        release_server(true);
    } else if (srv_) {
        // Session mode: the server stays; it takes the client's parameters now.
        std::string pre;
        start_relay(pre);
        if (!pre.empty()) {
            auto [wec, wn] = co_await srv_->write(asio::buffer(pre));
            if (wec) srv_->broken = true;
        }
    }
    if (!co_await client_.write_bounded(out)) co_return false;
    log::info("[{}] client={} user={} db={} logged in ({}, {} mode, secret from {})", role_name(), client_.peer(), who,
              log::printable(db_), fa.used_scram() ? "SCRAM-SHA-256" : "md5", to_string(pc_.mode), found.source);
    co_return true;
}

// Finds the member for this port now, and a server of its pool. On failure the
// client has been told (FATAL when `fatal`, during login; else an ERROR that
// leaves the connection usable, written by the caller through refuse_batch).
asio::awaitable<bool> PooledSession::attach(bool& fatal) {
    const bool at_login = pool_ == nullptr && !have_key_;
    // As a passthrough connection is held before it connects (hold.hpp), a
    // transaction that starts while the port has nowhere to go waits here.
    Hold hold(client_, shared_, user_, /*quiet=*/!at_login);
    std::optional<LoginError> failure;
    for (;;) {
        if (pools_.paused()) {
            // The admin console's PAUSE: held like a leaderless window.
            if (!hold.open()) {
                failure = login_error("57P03", std::string("pgrelay ") + role_name() + ": paused by the admin console (PAUSE) for longer than hold_timeout");
                break;
            }
            if (!co_await hold_wait(hold, "paused by the admin console")) co_return false;
            continue;
        }
        const topology::TopologyPtr topo = shared_.topology.current();
        if (const auto wait = switchover_wait(topo.get(), role == PortRole::ReadWrite, *cfg_);
            wait.count() > 0 && hold.open()) {
            // A planned switchover is under way: no new transaction on the
            // old primary, which Patroni is about to stop.
            if (!co_await hold_wait(hold, "switchover from " + topo->leader + " announced (failover key)", wait)) co_return false;
            continue;
        }
        RouteDecision d = shared_.router->route(role, topo.get());
        if (d.candidates.empty()) {
            if (hold.open() && (role == PortRole::ReadWrite || !topo)) {
                if (!co_await hold_wait(hold, d.message)) co_return false;
                continue;
            }
            if (hold.held()) d.message += " (held " + std::to_string(hold.held_ms()) + " ms, hold_timeout reached)";
            failure = login_error(d.sqlstate, d.message, false);
            break;
        }
        const Target* t = &d.candidates.front();
        if (role == PortRole::ReadOnly && !ro_member_.empty()) {
            for (const Target& c : d.candidates)
                if (c.member == ro_member_) t = &c;
        }
        Pool& pool = pools_.pool(PoolKey{role, t->member, db_, user_});
        if (!pool.has_credentials()) pool.set_credentials(creds_);
        metrics::Registry::instance().pool_waiting(role, +1);
        waiting_ = true;
        Pool::Acquired a = co_await pool.acquire(*t);
        waiting_ = false;
        metrics::Registry::instance().pool_waiting(role, -1);
        pool.observe_wait(a.waited);
        if (stopping_) {
            if (a.server) pool.release(std::move(a.server), true);
            co_return false;
        }
        if (!a.server && a.paused) continue;  // back to the PAUSE hold above
        if (!a.server) {
            // A primary that refuses connections (unreachable, or 57P03:
            // shutting down, starting up) is restarting or about to lose the
            // leader key: wait for the next topology change, as passthrough
            // does.
            if (a.error && (a.error->unreachable || a.error->sqlstate == "57P03") && !a.error->config_failure &&
                role == PortRole::ReadWrite && topo && topo->elects_primary() && hold.open()) {
                if (!co_await hold_wait(hold, "primary " + t->member + " cannot take connections: " +
                                                           a.error->message,
                                                       std::chrono::milliseconds(100))) co_return false;
                continue;
            }
            failure = a.error;
            if (hold.held() && role == PortRole::ReadWrite && (failure->unreachable || failure->sqlstate == "57P03")) {
                // Held for a primary that never took connections: to the
                // client this is no primary in time, as in a leaderless window.
                failure->sqlstate = "57P03";
                failure->message = std::string("pgrelay ") + role_name() + ": no primary could take the transaction (" +
                                   failure->message + "; held " + std::to_string(hold.held_ms()) +
                                   " ms, hold_timeout reached)";
            }
            break;
        }
        if (a.waited > 0.001 && client_gone()) {
            // It gave up while it waited: its batch must not run now.
            pool.release(std::move(a.server), true);
            client_closed_ = true;
            stop();
            co_return false;
        }
        hold.released(t->member);
        cut_ = false;
        srv_ = std::move(a.server);
        pool_ = &pool;
        member = t->member;
        if (role == PortRole::ReadOnly) ro_member_ = t->member;
        tracker_.emplace();
        if (have_key_)
            shared_.cancels->retarget(key_, CancelTarget{t->member, t->host, t->port, srv_->backend_key()});
        co_return true;
    }
    fatal = at_login;
    if (at_login) {
        log::warn("[{}] client={} user={}: no server: {}", role_name(), client_.peer(), log::printable(user_),
                  failure->message);
        co_await client_.send_error(failure->sqlstate.c_str(), failure->message);
    }
    attach_error_ = *failure;
    co_return false;
}

// The SETs and RESETs that make this server's session what the client had:
// prepended to the client's batch as one Query whose answers it never sees.
void PooledSession::restore_parameters(std::string& out) {
    ServerConn& s = *srv_;
    std::string sql;
    for (const auto& [name, value] : reported_) {
        auto it = s.reported.find(name);
        if (it == s.reported.end() || it->second != value) sql += protocol::pool::set_statement(name, value, false) + "; ";
    }
    for (const auto& [name, value] : unreported_) {
        auto it = s.unreported.find(name);
        if (it == s.unreported.end() || it->second != value) {
            sql += protocol::pool::set_statement(name, value, true) + "; ";
            s.unreported[name] = value;
        }
    }
    for (auto it = s.unreported.begin(); it != s.unreported.end();) {
        if (unreported_.count(it->first)) {
            ++it;
            continue;
        }
        sql += protocol::pool::reset_statement(it->first) + "; ";
        it = s.unreported.erase(it);
    }
    if (sql.empty()) return;
    protocol::pool::encode_query(out, sql);
    tracker_->sent('Q', Origin::Inserted);
}

void PooledSession::on_server_parameter(std::string_view name, std::string_view value) {
    srv_->reported[std::string(name)] = std::string(value);
    // While it holds this server, the server's session is the client's.
    if (!server_owned(name)) reported_[std::string(name)] = std::string(value);
}

// Prepares `st` on the held server if it lacks it (a Parse whose answer the
// client never sees), closing the least recently used one beyond the cap.
void PooledSession::ensure_prepared(const protocol::pool::Statement& st, std::string& out) {
    ServerConn& s = *srv_;
    if (s.statements.has(st.id)) {
        s.statements.touch(st.id);
        return;
    }
    if (auto evicted = s.statements.add(st)) {
        protocol::pool::encode_close(out, 'S', *evicted);
        tracker_->sent('C', Origin::Inserted);
    }
    protocol::pool::encode_parse(out, st.server_name, st.query, as_bytes(st.param_types));
    tracker_->sent('P', Origin::Inserted);
    parses_.push_back(st.id);
}

// A name the client never prepared goes to the server as it is (the server
// answers "does not exist", or finds a statement the client made with SQL
// PREPARE), unless it could name one of pgrelay's, which belong to everyone.
std::string unknown_statement(std::string_view name) {
    if (name.rfind("pgrelay", 0) == 0) return "pgrelay_missing_" + std::string(name);
    return std::string(name);
}

void PooledSession::transform(char type, std::span<const uint8_t> body, std::span<const uint8_t> raw, std::string& out) {
    auto forward = [&](char describe_kind = 0) {
        out.append(reinterpret_cast<const char*>(raw.data()), raw.size());
        tracker_->sent(type, Origin::Client, describe_kind);
    };
    switch (type) {
        case 'Q': {
            std::string_view sql(reinterpret_cast<const char*>(body.data()), body.empty() ? 0 : body.size() - 1);
            pending_sets_.push_back(carried_set(sql));
            may_commit_ = may_commit_ || outside_block() || may_end_transaction(sql);
            if (pc_.mode == PoolMode::Session && carriable_ &&
                (pins_session(sql) || (!pending_sets_.back() && may_change_session(sql))))
                carriable_ = false;
            if (pc_.mode == PoolMode::Transaction && starts_with_word(sql, "SET") &&
                starts_with_word(after_word(sql), "SESSION") && starts_with_word(after_word(after_word(sql)), "AUTHORIZATION")) {
                protocol::pool::encode_query(out, kSessionAuthRefusal);
                tracker_->sent('Q', Origin::Client);
                return;
            }
            // A change of session state pgrelay cannot carry (SET ROLE, SET
            // SESSION AUTHORIZATION, set_config(), a SET among other
            // statements): the server is not lent to anyone else afterwards.
            if (pc_.mode == PoolMode::Transaction && !pending_sets_.back() && may_change_session(sql)) srv_->broken = true;
            if (pc_.mode == PoolMode::Transaction && starts_with_word(sql, "LISTEN")) {
                protocol::pool::encode_query(out, kListenRefusal);
                tracker_->sent('Q', Origin::Client);
                return;
            }
            if (starts_with_word(sql, "DISCARD") || starts_with_word(sql, "DEALLOCATE")) {
                // The client drops its statements (and with DISCARD ALL its
                // settings); the server loses pgrelay's shared ones too, so it
                // is not lent again.
                stmts_.clear();
                if (starts_with_word(sql, "DISCARD")) unreported_.clear();
                srv_->broken = true;
            }
            forward();
            return;
        }
        case 'F':
            pending_sets_.push_back(std::nullopt);
            may_commit_ = true;  // a function call may do anything
            forward();
            return;
        case 'S':
            pending_sets_.push_back(std::move(batch_set_));
            batch_set_.reset();
            unsynced_ = 0;
            forward();
            return;
        case 'P': {
            ++unsynced_;
            auto m = protocol::pool::decode_parse(body);
            if (m && pc_.mode == PoolMode::Transaction && starts_with_word(m->query, "LISTEN")) {
                m->query = kListenRefusal;  // parsed fine; fails when executed, as a LISTEN would run
                m->param_types = {};
                if (m->name.empty()) {
                    protocol::pool::encode_parse(out, "", m->query, {});
                    tracker_->sent('P', Origin::Client);
                    return;
                }
            }
            // A lone SET (or SET ROLE) is carried as in a simple Query, once
            // a Sync after its Execute has seen it succeed.
            auto set = m ? carried_set(m->query) : std::nullopt;
            if (m && pc_.mode == PoolMode::Transaction && !set && may_change_session(m->query)) srv_->broken = true;
            if (m && pc_.mode == PoolMode::Session && (pins_session(m->query) || (!set && may_change_session(m->query))))
                carriable_ = false;
            if (!m) unnamed_may_end_ = true;
            else if (m->name.empty()) unnamed_may_end_ = may_end_transaction(m->query);
            if (!m || m->name.empty()) unnamed_set_ = std::move(set);
            if (!m || m->name.empty()) return forward();
            auto st = pools_.statements().intern(m->query, m->param_types);
            stmts_.add(m->name, st);
            if (srv_->statements.has(st->id)) {
                srv_->statements.touch(st->id);
                protocol::pool::encode_close(out, 'S', kNopName);
                tracker_->sent('C', Origin::NopParse);
                return;
            }
            if (auto evicted = srv_->statements.add(*st)) {
                protocol::pool::encode_close(out, 'S', *evicted);
                tracker_->sent('C', Origin::Inserted);
            }
            protocol::pool::encode_parse(out, st->server_name, m->query, m->param_types);
            tracker_->sent('P', Origin::Client);
            parses_.push_back(st->id);
            return;
        }
        case 'B': {
            ++unsynced_;
            auto m = protocol::pool::decode_bind(body);
            if (!m || m->statement.empty()) {
                may_commit_ = may_commit_ || outside_block() || unnamed_may_end_;
                set_portal(m ? m->portal : std::string_view(), unnamed_set_);
                return forward();
            }
            portal_set_.reset();
            if (auto st = stmts_.find(m->statement)) {
                may_commit_ = may_commit_ || outside_block() || may_end_transaction(st->query);
                set_portal(m->portal, carried_set(st->query));
                ensure_prepared(*st, out);
                protocol::pool::encode_bind(out, m->portal, st->server_name, m->rest);
            } else {
                may_commit_ = true;  // a statement pgrelay does not know (SQL PREPARE)
                protocol::pool::encode_bind(out, m->portal, unknown_statement(m->statement), m->rest);
            }
            tracker_->sent('B', Origin::Client);
            return;
        }
        case 'D': {
            ++unsynced_;
            auto m = protocol::pool::decode_target(body);
            if (!m) return forward('P');
            if (m->kind != 'S' || m->name.empty()) return forward(m->kind);
            if (auto st = stmts_.find(m->name)) {
                ensure_prepared(*st, out);
                protocol::pool::encode_describe(out, 'S', st->server_name);
            } else {
                protocol::pool::encode_describe(out, 'S', unknown_statement(m->name));
            }
            tracker_->sent('D', Origin::Client, 'S');
            return;
        }
        case 'C': {
            ++unsynced_;
            auto m = protocol::pool::decode_target(body);
            if (!m || m->kind != 'S' || m->name.empty()) return forward();
            // The client's name goes; the server keeps the statement for
            // whoever prepares the same text next. CloseComplete still comes
            // from the server, in its place in the stream.
            stmts_.erase(m->name);
            protocol::pool::encode_close(out, 'S', kNopName);
            tracker_->sent('C', Origin::Client);
            return;
        }
        case 'E':
            ++unsynced_;
            if (portal_set_) {
                // One SET per Sync is carried; a second one is not, and the
                // server keeps it: it is not lent again (or, in session mode,
                // the session cannot move).
                if (batch_set_) uncarried_session_change();
                else batch_set_ = portal_set_;
            }
            return forward();
        case 'H':
            ++unsynced_;
            return forward();
        default:
            return forward();
    }
}

// The batch cin_[0, upto) cannot run (no server): answer it as the server
// would answer an error in it -- one ErrorResponse, then ReadyForQuery for
// every Query and Sync -- and leave the connection usable.
asio::awaitable<void> PooledSession::refuse_batch(size_t upto, const LoginError& err) {
    metrics::Registry::instance().count_error("pgrelay", err.sqlstate);
    std::string out;
    auto error = [&] { protocol::encode_error_response(out, protocol::Severity::Error, err.sqlstate, err.message); };
    size_t at = 0;
    while (at < upto) {
        const char type = static_cast<char>(cin_[at]);
        const uint32_t len = protocol::read_u32(cin_.data() + at + 1);
        at += size_t(len) + 1;
        if (type == 'Q') {
            error();
            protocol::pool::encode_ready_for_query(out, protocol::TxStatus::Idle);
            skip_until_sync_ = false;
        } else if (type == 'S') {
            if (!skip_until_sync_) error();
            protocol::pool::encode_ready_for_query(out, protocol::TxStatus::Idle);
            skip_until_sync_ = false;
        } else if (type != 'X' && !skip_until_sync_) {
            error();
            skip_until_sync_ = true;  // the rest up to a Sync is skipped, as the server would
        }
    }
    co_await client_.write_bounded(out);
}

void PooledSession::release_server(bool reusable) {
    if (!srv_) return;
    if (have_key_) shared_.cancels->retarget(key_, std::nullopt);
    pool_->release(std::move(srv_), reusable);
    member.clear();
    tracker_.reset();
    parses_.clear();
}

// PQprepare outside a transaction (Parse ... Sync) of statements a server
// already accepted: answered here, with no server. pgbench -M prepared
// prepares synchronously, one client at a time per thread, while the
// thread's other clients hold servers in their transactions: were it to wait
// for a server, none would come. The statement is prepared on the server the
// client gets later, at its first Bind or Describe.
asio::awaitable<bool> PooledSession::answer_prepare_locally(size_t upto) {
    std::vector<std::pair<std::string_view, std::shared_ptr<const protocol::pool::Statement>>> parses;
    size_t at = 0;
    bool sync_last = false;
    while (at < upto) {
        const char type = static_cast<char>(cin_[at]);
        const uint32_t len = protocol::read_u32(cin_.data() + at + 1);
        const std::span<const uint8_t> body(cin_.data() + at + 5, len - 4);
        at += size_t(len) + 1;
        if (sync_last) co_return false;  // something after the Sync
        if (type == 'S') {
            sync_last = true;
            continue;
        }
        if (type != 'P') co_return false;
        auto m = protocol::pool::decode_parse(body);
        if (!m || m->name.empty()) co_return false;
        auto st = pools_.statements().intern(m->query, m->param_types);
        if (!pools_.validated(st->id)) co_return false;
        parses.emplace_back(m->name, std::move(st));
    }
    if (!sync_last || parses.empty()) co_return false;
    std::string out;
    for (auto& [name, st] : parses) {
        stmts_.add(name, std::move(st));
        out.append("1\0\0\0\4", 5);
    }
    protocol::pool::encode_ready_for_query(out, protocol::TxStatus::Idle);
    consume(upto);
    co_await client_.write_bounded(out);
    co_return true;
}

// The held server went away: it died, its connection broke, or lost_role()
// cut it. pgrelay never sends a request again that reached a server, so what
// was in flight fails, but the client keeps its connection: every request
// it awaits gets an ErrorResponse and a ReadyForQuery 'I' (the transaction
// is over), and its next one goes to whichever member has the role then.
// - 08007 (transaction_resolution_unknown) when a request in flight could
//   have committed: an autocommit statement, or one that ends a transaction.
// - 40001 (serialization_failure: retryable) inside a transaction block,
//   where nothing can have committed.
// - Nothing in flight outside a block: nothing to say; inside one, the next
//   request learns it (lost_block_).
// The client's stream must be at a message boundary to be told, and its
// session must be one pgrelay can carry; else it ends with 08006 (FATAL).
asio::awaitable<void> PooledSession::server_gone(ServerConn* s, const std::string& why) {
    s->broken = true;
    const bool cut = cut_;
    cut_ = false;
    log::warn("[{}] client={} server #{} on {} {}: {}", role_name(), client_.peer(), s->id, member, cut ? "cut" : "lost", why);
    if (stopping_ || !carriable_ || !down_boundary_) {
        server_lost_ = true;
        stop();
        co_return;
    }
    gone_ = true;
    const size_t requests = tracker_->client_requests();
    const bool in_block = !outside_block();
    // Extended COPY FROM STDIN: the server dropped the batch's Sync (it
    // ignores Sync until CopyDone); the client's next Sync awaits the answer.
    if (tracker_->in_copy_in() && unsynced_ == 0) unsynced_ = 1;
    // The server already sent this request's ErrorResponse: the client gets
    // no second one for it, only the ReadyForQuery it awaits.
    const bool already_failed = error_since_ready_;
    std::string out;
    if (requests > 0 || unsynced_ > 0) {
        const bool unknown = may_commit_ || !in_block;
        const char* code = unknown ? "08007" : "40001";
        const std::string prefix =
            std::string("pgrelay ") + role_name() + ": the connection to server " + member + " (" + why + ") was lost ";
        const std::string message = unknown ? prefix + "while a request was running; it may or may not have committed"
                                            : prefix + "inside a transaction block; the transaction was rolled back";
        const std::string hint = unknown ? "Check whether it took effect before retrying. This connection is still usable."
                                         : "Retry the transaction. This connection is still usable.";
        size_t errors = 0;
        for (size_t i = 0; i < requests; ++i) {
            if (i > 0 || !already_failed) {
                protocol::encode_error_response(out, protocol::Severity::Error, code, message, hint);
                ++errors;
            }
            protocol::pool::encode_ready_for_query(out, protocol::TxStatus::Idle);
        }
        if (unsynced_ > 0) {
            // The client has not sent the Sync of its last batch yet: it gets
            // its error now (unless the server sent it one) and its
            // ReadyForQuery at the Sync.
            if (requests > 0 || !already_failed) {
                protocol::encode_error_response(out, protocol::Severity::Error, code, message, hint);
                ++errors;
            }
            skip_until_sync_ = true;
        }
        for (size_t i = 0; i < errors; ++i) metrics::Registry::instance().count_error("pgrelay", code);
    } else if (in_block) {
        lost_block_ = true;
    }
    pending_sets_.clear();
    batch_set_.reset();
    error_since_ready_ = false;
    unsynced_ = 0;
    may_commit_ = false;
    if (!out.empty()) {
        auto [wec, wn] = co_await client_.write(asio::buffer(out));
        if (wec) {
            if (wn > 0) down_boundary_ = false;
            if (wec != asio::error::operation_aborted) client_closed_ = true;
            stop();
        }
    }
    if (srv_.get() == s) release_server(false);
}

// `sql` is a lone ROLLBACK or ABORT (blanks and a ';' allowed).
bool lone_rollback(std::string_view sql) {
    while (!sql.empty() && (sql.back() == ';' || sql.back() == '\0' || std::isspace(static_cast<unsigned char>(sql.back()))))
        sql.remove_suffix(1);
    return (starts_with_word(sql, "ROLLBACK") || starts_with_word(sql, "ABORT")) && after_word(sql).empty();
}

// The answers a server would give to cin_[0, upto) if it is nothing but a
// ROLLBACK: a simple Query, or Parse/Bind/Describe/Execute/Sync of one (as
// pgJDBC and Npgsql send it). Empty when the batch is anything else.
std::string answer_rollback_batch(const std::vector<uint8_t>& cin, size_t upto) {
    std::string out;
    bool parsed = false;
    char last = 0;
    for (size_t at = 0; at < upto;) {
        const char type = static_cast<char>(cin[at]);
        const uint32_t len = protocol::read_u32(cin.data() + at + 1);
        const std::span<const uint8_t> body(cin.data() + at + 5, len - 4);
        at += size_t(len) + 1;
        last = type;
        auto done = [&] { protocol::append_message(out, 'C', [](std::string& o) { o.append("ROLLBACK", 9); }); };
        switch (type) {
            case 'Q':
                if (upto != at || !lone_rollback({reinterpret_cast<const char*>(body.data()), body.size()})) return {};
                done();
                protocol::pool::encode_ready_for_query(out, protocol::TxStatus::Idle);
                break;
            case 'P': {
                auto m = protocol::pool::decode_parse(body);
                if (!m || !lone_rollback(m->query)) return {};
                parsed = true;
                out.append("1\0\0\0\4", 5);  // ParseComplete
                break;
            }
            case 'B':
                if (!parsed) return {};
                out.append("2\0\0\0\4", 5);  // BindComplete
                break;
            case 'D':
                if (!parsed) return {};
                if (!body.empty() && body[0] == 'S') out.append("t\0\0\0\6\0\0", 7);  // no parameters
                out.append("n\0\0\0\4", 5);  // NoData
                break;
            case 'E':
                if (!parsed) return {};
                done();
                break;
            case 'S':
                protocol::pool::encode_ready_for_query(out, protocol::TxStatus::Idle);
                break;
            case 'H':
                break;
            default:
                return {};
        }
    }
    if (last != 'S' && last != 'Q') return {};
    return out;
}

// The first batch after the server went away inside the client's
// transaction block: a lone ROLLBACK succeeds (the block is over, as it
// asked); anything else gets 40001 and ReadyForQuery 'I'.
asio::awaitable<bool> PooledSession::answer_lost_block(size_t upto) {
    lost_block_ = false;
    const std::string rollback = answer_rollback_batch(cin_, upto);
    if (!rollback.empty()) {
        consume(upto);
        co_return co_await client_.write_bounded(rollback);
    }
    LoginError e = login_error("40001", std::string("pgrelay ") + role_name() +
                                            ": the connection to the server was lost inside this transaction block; "
                                            "the transaction was rolled back");
    co_await refuse_batch(upto, e);
    consume(upto);
    co_return true;
}

asio::awaitable<void> PooledSession::server_reader(ServerConn* s) {
    BufferLease lease;
    std::vector<uint8_t>& buf = lease.buf;
    size_t len = 0;
    protocol::FrameScanner scanner(UINT32_MAX, kMaxWatchedServer);
    for (const char t : std::string_view("123CEIKNASZnstTGHWVcvR")) scanner.watch(t);
    std::string out;
    bool ended = false;
    std::string fatal;  // a FATAL ErrorResponse the server ended with, kept from the client
    while (!ended && srv_.get() == s && !stopping_) {
        if (len == buf.size()) buf.resize(std::min<size_t>(buf.size() * 2, kMaxWatchedServer + net::kRelayBuffer));
        auto [ec, n] = co_await s->read(asio::buffer(buf.data() + len, buf.size() - len));
        if (srv_.get() != s) break;
        if (ec) {
            if (ec != asio::error::operation_aborted) co_await server_gone(s, ec.message());
            break;
        }
        len += n;
        size_t pos = 0, copied = 0;
        out.clear();
        protocol::Frame f;
        for (;;) {
            const auto st = scanner.next({buf.data(), len}, pos, f);
            if (st == protocol::FrameScanner::Status::NeedMore) break;
            if (st == protocol::FrameScanner::Status::Error) {
                log::error("[{}] client={} server #{} sent an invalid frame", role_name(), client_.peer(), s->id);
                s->broken = true;
                server_lost_ = true;
                stop();
                ended = true;
                break;
            }
            std::optional<protocol::TxStatus> status;
            const auto body = f.complete ? f.body({buf.data(), len}) : std::span<uint8_t>();
            if (f.type == 'Z' && f.complete) status = protocol::decode_ready_for_query(body);
            const auto r = tracker_->received(f.type, status);
            if (f.type == 'Z' && tracker_->client_requests() == 0 && unsynced_ == 0)
                may_commit_ = false;  // nothing of the client's in flight
            if (r.unexpected) {
                log::warn("[{}] client={} server #{}: unexpected '{}' from the server", role_name(), client_.peer(), s->id,
                          f.type);
                s->broken = true;
            }
            if (r.inserted_error) {
                auto e = protocol::decode_error_fields(body);
                log::warn("[{}] client={} server #{}: a statement pgrelay sent failed: {}", role_name(), client_.peer(), s->id,
                          e ? std::string(e->message) : std::string("?"));
                s->broken = true;
            }
            if (f.type == '1') {
                // ParseComplete of a named Parse (never the stand-in Close's,
                // whose type is '3' on the wire).
                if (!parses_.empty()) {
                    pools_.set_validated(parses_.front());
                    parses_.erase(parses_.begin());
                }
            } else if (f.type == 'E' && !parses_.empty()) {
                // The server skips what follows up to a Sync: which Parses it
                // skipped is not known here, so none of them counts.
                parses_.clear();
            }
            if (f.type == 'S' && f.complete) {
                if (auto p = protocol::decode_parameter_status(body)) on_server_parameter(p->name, p->value);
            } else if (f.type == 'E' && f.complete && r.verdict == Verdict::Forward) {
                const bool had_error = error_since_ready_;
                error_since_ready_ = true;
                if (auto e = protocol::decode_error_fields(body)) {
                    metrics::Registry::instance().count_error("backend", e->sqlstate);
                    if (e->severity == "FATAL" || e->severity == "PANIC") {
                        s->broken = true;
                        if (carriable_) {
                            error_since_ready_ = had_error;  // the client never sees this one
                            // The server is ending this connection (shutdown,
                            // pg_terminate_backend, a timeout): that is pgrelay's
                            // business, not the client's, who keeps its
                            // connection (server_gone).
                            fatal = std::string(e->sqlstate) + " " + std::string(e->message);
                            out.append(reinterpret_cast<const char*>(buf.data() + copied), f.offset - copied);
                            copied = f.offset + f.wire_size();
                            break;
                        }
                    }
                }
            } else if (f.type == 'Z' && r.verdict == Verdict::Forward && status) {
                on_client_ready(*status);
            }
            if (r.verdict == Verdict::Drop && f.complete) {
                out.append(reinterpret_cast<const char*>(buf.data() + copied), f.offset - copied);
                copied = f.offset + f.wire_size();
            } else if (r.verdict == Verdict::RewriteAsParseComplete && f.complete) {
                buf[f.offset] = '1';  // CloseComplete and ParseComplete: the same empty body
            }
        }
        // Nothing dropped (the usual case): the bytes go out from the read
        // buffer itself, with no copy.
        const bool direct = copied == 0;
        if (!direct) out.append(reinterpret_cast<const char*>(buf.data() + copied), pos - copied);
        const asio::const_buffer chunk = direct ? asio::const_buffer(buf.data(), pos) : asio::buffer(out);
        if (chunk.size() > 0) {
            auto [wec, wn] = co_await client_.write(chunk);
            if (wec) {
                if (wn > 0) down_boundary_ = false;
                if (wec != asio::error::operation_aborted) client_closed_ = true;
                stop();
                break;
            }
            down_boundary_ = scanner.at_boundary();
        }
        if (!fatal.empty()) {
            co_await server_gone(s, "it said: " + fatal);
            break;
        }
        std::memmove(buf.data(), buf.data() + pos, len - pos);
        len -= pos;
        if (srv_.get() != s) break;
        // Back to the pool once nothing is outstanding outside a transaction.
        if (pc_.mode == PoolMode::Transaction && len == 0 && tracker_->idle() && unsynced_ == 0 &&
            tracker_->last_status() == protocol::TxStatus::Idle && scanner.at_boundary()) {
            release_server(!s->broken);
            break;
        }
        if (len == 0 && buf.size() > 4 * net::kRelayBuffer) std::vector<uint8_t>(net::kRelayBuffer).swap(buf);
    }
    gone_ = false;
    reader_running_ = false;
    reader_done_.cancel();
}

// A ReadyForQuery answering the client's Query, Sync or FunctionCall: a SET
// that succeeded outside a transaction block becomes part of its session.
void PooledSession::on_client_ready(protocol::TxStatus st) {
    if (pending_sets_.empty()) return;
    std::optional<protocol::pool::SetCommand> set = std::move(pending_sets_.front());
    pending_sets_.erase(pending_sets_.begin());
    const bool ok = !error_since_ready_;
    error_since_ready_ = false;
    if (!set || !ok || !srv_) return;
    if (st != protocol::TxStatus::Idle) {
        // A SET inside a transaction block: whether it sticks depends on how
        // the block ends. Not carried; the server is not lent again.
        if (pc_.mode == PoolMode::Transaction) srv_->broken = true;
        return;
    }
    if (set->reset_all) {
        unreported_.clear();
        srv_->unreported.clear();
        return;
    }
    // Parameters the server reports come back as ParameterStatus.
    for (const auto& [k, v] : reported_)
        if (lower(k) == set->name) return;
    if (set->reset) {
        unreported_.erase(set->name);
        srv_->unreported.erase(set->name);
    } else {
        unreported_[set->name] = set->value;
        srv_->unreported[set->name] = set->value;
    }
}

asio::awaitable<void> PooledSession::client_loop() {
    uint8_t idle[net::kIdleRead];
    for (;;) {
        if (stopping_) co_return;
        // Whole messages at the front of cin_, up to `upto`.
        size_t upto = 0;
        bool terminate = false;
        for (;;) {
            if (cin_.size() - upto < 5) break;
            const uint32_t len = protocol::read_u32(cin_.data() + upto + 1);
            if (len < 4 || len > cfg_->max_frame_size) {
                end_sqlstate_ = "08P01";
                end_message_ = std::string("pgrelay ") + role_name() + ": invalid message from client (type '" +
                               std::string(1, static_cast<char>(cin_[upto])) + "', length " + std::to_string(len) + ")";
                co_return;
            }
            if (cin_.size() - upto < size_t(len) + 1) break;
            if (cin_[upto] == 'X') {
                terminate = true;
                break;
            }
            upto += size_t(len) + 1;
        }
        if (upto > 0) {
            // A server that went away first answers what was in flight.
            while (gone_ && reader_running_) co_await reader_done_.async_wait(use_tuple);
            if (stopping_) co_return;
            std::string out;
            if (!srv_) {
                // After a server was lost in COPY FROM STDIN, the client's
                // CopyData/CopyDone/CopyFail are dropped, as PostgreSQL drops
                // them after a failed COPY.
                size_t at = 0;
                while (at < upto && (cin_[at] == 'd' || cin_[at] == 'c' || cin_[at] == 'f'))
                    at += size_t(protocol::read_u32(cin_.data() + at + 1)) + 1;
                if (at > 0) {
                    consume(at);
                    continue;
                }
            }
            if (!srv_ && lost_block_) {
                if (!co_await answer_lost_block(upto)) co_return;
                continue;
            }
            if (!srv_ && skip_until_sync_) {
                // pgrelay refused the start of this extended batch: like the
                // server, skip the rest of it up to its Sync.
                size_t at = 0, sync_end = 0;
                while (at < upto && !sync_end) {
                    const char type = static_cast<char>(cin_[at]);
                    at += size_t(protocol::read_u32(cin_.data() + at + 1)) + 1;
                    if (type == 'S') sync_end = at;
                }
                if (!sync_end) {
                    consume(upto);
                    continue;
                }
                consume(sync_end);
                skip_until_sync_ = false;
                protocol::pool::encode_ready_for_query(out, protocol::TxStatus::Idle);
                if (!co_await client_.write_bounded(out)) co_return;
                continue;
            }
            if (!srv_ && co_await answer_prepare_locally(upto)) continue;
            if (!srv_) {
                bool fatal = false;
                if (co_await attach(fatal)) {
                    start_relay(out);
                } else {
                    if (stopping_) co_return;
                    co_await refuse_batch(upto, attach_error_);
                    consume(upto);
                    continue;
                }
            }
            for (size_t at = 0; at < upto;) {
                const char type = static_cast<char>(cin_[at]);
                const uint32_t len = protocol::read_u32(cin_.data() + at + 1);
                const std::span<const uint8_t> raw(cin_.data() + at, size_t(len) + 1);
                transform(type, raw.subspan(5), raw, out);
                at += size_t(len) + 1;
            }
            consume(upto);
            ServerConn* s = srv_.get();
            auto [wec, wn] = co_await s->write(asio::buffer(out));
            // The server may have answered everything, and gone back to the
            // pool, before this write's completion ran: then `s` is not ours.
            if (wec && srv_.get() == s) {
                if (stopping_ || wec == asio::error::operation_aborted) co_return;
                // The server reader answers what was in flight (server_gone);
                // the shutdown makes sure it wakes up.
                s->broken = true;
                gone_ = true;
                boost::system::error_code ignored;
                s->socket().shutdown(tcp::socket::shutdown_both, ignored);
            }
            continue;
        }
        if (terminate) {
            client_closed_ = true;
            co_return;
        }
        // Read more. An idle client (nothing buffered) reads into a small
        // array of the frame, so it holds no buffer while it waits.
        if (cin_.empty()) {
            auto [ec, n] = co_await client_.read(asio::buffer(idle));
            if (ec) {
                if (ec != asio::error::operation_aborted) client_closed_ = true;
                co_return;
            }
            cin_.assign(idle, idle + n);
        } else {
            const size_t have = cin_.size();
            cin_.resize(have + net::kRelayBuffer);
            auto [ec, n] = co_await client_.read(asio::buffer(cin_.data() + have, net::kRelayBuffer));
            cin_.resize(have + (ec ? 0 : n));
            if (ec) {
                if (ec != asio::error::operation_aborted) client_closed_ = true;
                co_return;
            }
        }
    }
}

// The admin console: one answer per Query, nothing else accepted.
asio::awaitable<void> PooledSession::admin_loop() {
    for (;;) {
        char type = 0;
        std::span<const uint8_t> body;
        if (!co_await read_client_message(type, body, false)) co_return;
        const size_t n = body.size() + 5;
        if (type == 'X') {
            client_closed_ = true;
            co_return;
        }
        std::string out;
        if (type == 'Q') {
            std::string_view sql(reinterpret_cast<const char*>(body.data()), body.empty() ? 0 : body.size() - 1);
            if (admin_console_command(sql) == "PAUSE") {
                // Answers once the transactions running now have ended (at
                // most 5 minutes: then it says how many servers are still in use).
                pools_.pause();
                log::info("[{}] admin {}: PAUSE ({} server connections in use)", role_name(), client_.peer(),
                          pools_.servers_in_use());
                asio::steady_timer tick(client_.socket().get_executor());
                const auto until = steady_clock::now() + std::chrono::minutes(5);
                while (pools_.paused() && pools_.servers_in_use() > 0 && steady_clock::now() < until && !stopping_) {
                    tick.expires_after(std::chrono::milliseconds(20));
                    co_await tick.async_wait(use_tuple);
                }
            }
            out = admin_console_answer(sql, shared_);
        } else {
            protocol::encode_error_response(out, protocol::Severity::Error, "0A000",
                                            "pgrelay admin console: only simple queries (SHOW ...) are supported");
            if (type == 'S') protocol::pool::encode_ready_for_query(out, protocol::TxStatus::Idle);
        }
        consume(n);
        if (!co_await client_.write_bounded(out)) co_return;
    }
}

// The client is gone or the session ends: stop the server reader, then give
// the server back -- after server_reset_query in session mode -- when it is
// between transactions, else close it.
asio::awaitable<void> PooledSession::detach_at_end() {
    if (reader_running_) {
        boost::system::error_code ec;
        if (srv_) srv_->socket().cancel(ec);
        while (reader_running_) co_await reader_done_.async_wait(use_tuple);
    }
    if (!srv_) co_return;
    const bool clean = tracker_->idle() && unsynced_ == 0 && tracker_->last_status().value_or(protocol::TxStatus::Idle) ==
                                                                protocol::TxStatus::Idle && !srv_->broken;
    if (clean && pc_.mode == PoolMode::Session && !pc_.server_reset_query.empty()) {
        std::string err = co_await srv_->run_simple(pc_.server_reset_query, cfg_->connect_timeout);
        if (!err.empty()) {
            log::warn("[{}] server #{}: server_reset_query failed: {}; closing it", role_name(), srv_->id, err);
            srv_->broken = true;
        }
        // DISCARD ALL drops prepared statements and resets every parameter.
        srv_->statements.clear();
        srv_->unreported.clear();
    }
    release_server(clean && !srv_->broken);
}

asio::awaitable<void> PooledSession::run() {
    bool logged_in = false;
    {
        // In a block of its own: the startup packet is freed once logged in.
        std::string startup_bytes, pipelined;
        protocol::StartupPacket packet;
        if (!co_await client_.startup(startup_bytes, packet, pipelined)) co_return;
        cin_.assign(pipelined.begin(), pipelined.end());
        self_ = shared_.sessions.insert(shared_.sessions.end(), this);
        registered_ = true;
        logged_in = co_await login(packet);
    }
    if (logged_in) {
        try {
            if (admin_) co_await admin_loop();
            else co_await client_loop();
        } catch (const std::exception& e) {
            log::error("[{}] client={} pooled session ended by an unexpected error: {}", role_name(), client_.peer(), e.what());
        }
    }
    stop();
    co_await detach_at_end();
    const bool can_tell = !client_closed_ && down_boundary_;
    if (end_sqlstate_ && can_tell) {
        co_await client_.send_error(end_sqlstate_, end_message_);
    } else if (server_lost_ && can_tell) {
        co_await client_.send_error("08006", std::string("pgrelay ") + role_name() + ": lost the connection to the server",
                                    "The server may have crashed or restarted; reconnect.");
    }
    if (!client_closed_) {
        // stop() cancelled the client socket's operations; a fresh lingering
        // close still works on it.
        co_await client_.linger_close();
    }
    client_.close();
    log::info("[{}] client={} user={} db={} closed{}", role_name(), client_.peer(), log::printable(user_), log::printable(db_),
              end_sqlstate_ ? ": " + end_message_ : std::string());
}

}  // namespace

asio::awaitable<void> run_pooled_session(tcp::socket client, PortRole role, WorkerShared& shared) {
    try {
        PooledSession s(std::move(client), role, shared);
        co_await s.run();
    } catch (const std::exception& e) {
        log::error("[{}] pooled session ended by an unexpected error: {}", to_string(role), e.what());
    }
}

}  // namespace pgrelay
