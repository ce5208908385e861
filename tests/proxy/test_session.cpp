// Session-level tests of run_session over real loopback sockets: a scripted client
// and a scripted fake backend around one session (relay, startup negotiation,
// refusals, timeouts, oversize frames, cancel forwarding, a fault at every step).
#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "proxy/cancel_registry.hpp"
#include "proxy/config.hpp"
#include "proxy/log.hpp"
#include "proxy/router.hpp"
#include "proxy/metrics.hpp"
#include "proxy/session.hpp"
#include "tests/proxy/script.hpp"
#include "topology/source.hpp"
#include "topology/static_source.hpp"

using namespace std::chrono_literals;
using namespace pgrelay::test;
using Catch::Matchers::Contains;
using pgrelay::CancelRegistry;
using pgrelay::CancelTarget;
using pgrelay::Config;
using pgrelay::PortRole;
using pgrelay::Router;
using pgrelay::WorkerShared;
using pgrelay::protocol::CancelKey;
namespace topology = pgrelay::topology;

namespace {

constexpr int32_t kPid = 4242;
constexpr int32_t kSecret = 777;

const std::string kStartup = startup_message({{"user", "u"}, {"database", "d"}});
const std::string kQuery = query("select 1");
const std::string kTerminate = terminate();

std::string login(int32_t pid, std::string_view secret) {
    return auth_ok() + backend_key_data(pid, secret) + parameter_status("server_version", "15.4") +
           ready_for_query('I');
}
std::string login(int32_t pid = kPid, int32_t secret = kSecret) { return login(pid, secret4(secret)); }
const std::string kResult =
    row_description("?column?") + data_row({"1"}) + command_complete("SELECT 1") + ready_for_query('I');

// The cancel key in the first BackendKeyData of a client's stream.
std::optional<CancelKey> client_key(const std::string& received) {
    for (const auto& f : parse_frames(received).frames)
        if (f.type == 'K' && f.body.size() >= 8) return CancelKey{int32_t(get_u32(f.body, 0)), f.body.substr(4)};
    return std::nullopt;
}

topology::Member member(std::string name, uint16_t port, topology::Role role) {
    topology::Member m;
    m.name = std::move(name);
    m.host = "127.0.0.1";
    m.port = port;
    m.role = role;
    return m;
}
topology::Member primary(std::string name, uint16_t port) { return member(std::move(name), port, topology::Role::Primary); }
topology::Member replica(std::string name, uint16_t port) { return member(std::move(name), port, topology::Role::Replica); }

// Silences the session's logging for the duration of a test.
class QuietLog {
public:
    QuietLog() {
        using pgrelay::log::Level;
        for (Level l : {Level::Debug, Level::Info, Level::Warning, Level::Error})
            if (pgrelay::log::enabled(l)) {
                saved_ = l;
                break;
            }
        pgrelay::log::set_level(Level::Error);
    }
    ~QuietLog() { pgrelay::log::set_level(saved_); }

private:
    pgrelay::log::Level saved_ = pgrelay::log::Level::Info;
};

struct HarnessOptions {
    topology::RoutingOptions routing{};
    std::chrono::milliseconds connect_timeout{500};
    std::chrono::milliseconds startup_timeout{500};
    uint32_t max_frame_size = 1u << 30;
    std::chrono::milliseconds hold_timeout{0};  // refuse at once unless a test holds
};

// One worker's world on a single-threaded io_context: shared state as the
// server builds it, a listener standing in for the proxy port (each client
// connection becomes one co_spawned run_session), and a fake backend.
// Member order matters: the registry and router outlive the io_context, whose
// destruction may destroy unfinished sessions.
struct Harness {
    struct SessionState {
        bool done = false;
    };

    QuietLog quiet;
    std::deque<ScriptResult> clients;
    std::deque<SessionState> sessions;
    CancelRegistry cancels;
    Router router;
    topology::SnapshotHub hub;
    // Held connections (pgrelay counts them in its metrics registry).
    static int held() { return static_cast<int>(pgrelay::metrics::Registry::instance().held_now()); }
    std::shared_ptr<Config> cfg;
    WorkerShared shared;
    asio::io_context ctx;
    tcp::acceptor listener;
    FakeBackend backend;
    std::deque<Event> events;

    explicit Harness(HarnessOptions o = {})
        : router(o.routing),
          cfg(make_config(o)),
          shared{.config = cfg,
                 .tls = std::make_shared<const pgrelay::TlsContexts>(),
                 .topology = topology::SnapshotHub::Reader(hub),
                 .router = &router,
                 .cancels = &cancels,
                 .sessions = {},
                 .topology_changed = nullptr},
          listener(ctx, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)),
          backend(ctx) {
        shared.topology_changed = std::make_unique<asio::steady_timer>(ctx, asio::steady_timer::time_point::max());
    }
    // The timer goes before the io_context; `shared` itself outlives it, since
    // destroying unfinished sessions touches shared.sessions.
    ~Harness() { shared.topology_changed.reset(); }
    Harness(const Harness&) = delete;
    Harness& operator=(const Harness&) = delete;

    static std::shared_ptr<Config> make_config(const HarnessOptions& o) {
        auto c = std::make_shared<Config>();
        c->connect_timeout = o.connect_timeout;
        c->startup_timeout = o.startup_timeout;
        c->max_frame_size = o.max_frame_size;
        c->hold_timeout = o.hold_timeout;
        c->routing = o.routing;
        return c;
    }

    void publish(const std::vector<topology::Member>& members,
                 const std::function<void(topology::Topology&)>& tweak = {}) {
        auto t = topology::StaticSource::initial_snapshot(members);
        if (tweak) tweak(*t);
        hub.publish(std::move(t));
    }

    // A port on which nothing listens (connect is refused).
    uint16_t closed_port() {
        tcp::acceptor a(ctx, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
        const uint16_t p = a.local_endpoint().port();
        a.close();
        return p;
    }

    Event& event() { return events.emplace_back(ctx.get_executor()); }

    // Connects a client to the proxy port, starts its session and its script.
    ScriptResult& client(Script s, PortRole role = PortRole::ReadWrite) {
        tcp::socket c(ctx);
        c.connect(listener.local_endpoint());
        tcp::socket server = listener.accept();
        SessionState& st = sessions.emplace_back();
        asio::co_spawn(ctx, pgrelay::run_session(std::move(server), role, shared),
                       [&st](std::exception_ptr) { st.done = true; });
        ScriptResult& r = clients.emplace_back();
        asio::co_spawn(ctx, run_script(std::move(c), std::move(s), r), [](std::exception_ptr) {});
        return r;
    }

    bool sessions_done() const {
        for (const auto& s : sessions)
            if (!s.done) return false;
        return true;
    }
    bool clients_done() const {
        for (const auto& c : clients)
            if (!c.finished) return false;
        return true;
    }

    // Runs the io_context until `pred` holds; false if `limit` passes first or
    // nothing is left to run.
    bool run_until(const std::function<bool()>& pred, std::chrono::milliseconds limit) {
        const auto deadline = Clock::now() + limit;
        while (!pred()) {
            const auto now = Clock::now();
            if (now >= deadline) return false;
            if (ctx.stopped()) ctx.restart();
            if (ctx.run_one_for(deadline - now) == 0 && ctx.stopped()) {
                ctx.restart();
                return pred();
            }
        }
        return true;
    }

    // Every session, client script and backend script has finished.
    bool run(std::chrono::milliseconds limit = 3000ms) {
        return run_until([&] { return sessions_done() && clients_done() && backend.idle(); }, limit);
    }

    // Stops accepting, lets everything wind down and reports whether the
    // io_context ran out of work (nothing left pending). Records connections
    // that reached the backend port but were never accepted.
    bool finish(std::chrono::milliseconds limit = 1000ms) {
        backend.stop_accepting();
        boost::system::error_code ec;
        listener.close(ec);
        if (ctx.stopped()) ctx.restart();
        ctx.run_for(limit);
        backend.take_stray();
        return ctx.stopped();
    }

    uint32_t open_total() const { return router.open_count("pg1") + router.open_count("pg2"); }
};

// The backend half of a full login + query + terminate conversation.
Script backend_happy() {
    return {{expect_read(kStartup), write(login()), expect_read(kQuery), write(kResult), expect_read(kTerminate),
             expect_eof()}};
}

// Checks a client stream that ends with exactly one pgrelay ErrorResponse,
// after `prefix`.
void check_error_only(const ScriptResult& c, const std::string& prefix, const std::string& sqlstate,
                      const std::string& message_part) {
    INFO("client: " << c.failure << " received [" << hex(c.received, 200) << "]");
    REQUIRE(c.received.size() >= prefix.size());
    CHECK(c.received.substr(0, prefix.size()) == prefix);
    const auto parsed = parse_frames(std::string_view(c.received).substr(prefix.size()));
    CHECK(parsed.clean());
    REQUIRE(parsed.frames.size() == 1);
    CHECK(parsed.frames[0].type == 'E');
    auto fields = error_fields(parsed.frames[0].body);
    CHECK(fields['C'] == sqlstate);
    CHECK_THAT(fields['M'], Contains(message_part));
    CHECK(fields['S'] == "FATAL");
}

}  // namespace

// ---------------------------------------------------------------------------

TEST_CASE("session: login, query and terminate relay unchanged; cancel key is mapped and released", "[session]") {
    const PortRole role = GENERATE(PortRole::ReadWrite, PortRole::ReadOnly);
    CAPTURE(pgrelay::to_string(role));
    Harness h;
    const bool ro = role == PortRole::ReadOnly;
    const std::string name = ro ? "pg2" : "pg1";
    if (ro)
        h.publish({primary("pg1", h.closed_port()), replica("pg2", h.backend.port())});
    else
        h.publish({primary("pg1", h.backend.port()), replica("pg2", h.closed_port())});
    h.backend.expect_connection(backend_happy());
    h.backend.start();

    std::optional<CancelKey> key;
    std::optional<CancelTarget> target;
    size_t registered = 0;
    uint32_t open_during = 0;
    ScriptResult& c = h.client({{write(kStartup), read_frames(4), call([&](ScriptResult& r) {
                                     key = client_key(r.received);
                                     if (key) target = h.cancels.find(*key);
                                     registered = h.cancels.size();
                                     open_during = h.router.open_count(name);
                                 }),
                                 write(kQuery), expect_read(kResult), write(kTerminate), expect_eof()}},
                               role);
    REQUIRE(h.run());
    REQUIRE(h.finish());

    INFO("client: " << c.failure);
    CHECK(c.ok);
    REQUIRE(h.backend.accepted() == 1);
    const ScriptResult& b = h.backend.result(0);
    INFO("backend: " << b.failure);
    CHECK(b.ok);
    CHECK(b.received == kStartup + kQuery + kTerminate);
    CHECK(h.backend.stray() == 0);

    REQUIRE(key);
    CHECK(key->pid != kPid);
    CHECK(key->secret != secret4(kSecret));
    CHECK(c.received == login(key->pid, key->secret) + kResult);
    REQUIRE(target);
    CHECK(target->backend_key == CancelKey{kPid, secret4(kSecret)});
    CHECK(target->host == "127.0.0.1");
    CHECK(target->port == h.backend.port());
    CHECK(target->member == name);
    CHECK(registered == 1);
    CHECK(open_during == (ro ? 1u : 0u));

    CHECK(h.cancels.size() == 0);
    CHECK(h.router.open_count("pg1") == 0);
    CHECK(h.router.open_count("pg2") == 0);
}

TEST_CASE("session: pipelined client bytes reach the backend in order", "[session]") {
    // The backend answers the StartupMessage before reading on, as PostgreSQL
    // does; whatever the client sent behind it must follow, in order.
    Harness h;
    h.publish({primary("pg1", h.backend.port())});

    SECTION("StartupMessage and Query in one write") {
        h.backend.expect_connection(backend_happy());
        h.backend.start();
        ScriptResult& c =
            h.client({{write(kStartup + kQuery), read_frames(4), expect_read(kResult), write(kTerminate), expect_eof()}});
        REQUIRE(h.run());
        REQUIRE(h.finish());
        INFO("client: " << c.failure << " / backend: " << h.backend.result(0).failure);
        CHECK(c.ok);
        CHECK(h.backend.result(0).ok);
        CHECK(h.backend.result(0).received == kStartup + kQuery + kTerminate);
    }
    SECTION("StartupMessage and a 5000-byte Query in one write (more than the first read)") {
        const std::string big = query(std::string(5000, 'x'));
        h.backend.expect_connection({{expect_read(kStartup), write(login()), expect_read(big), write(kResult),
                                      expect_read(kTerminate), expect_eof()}});
        h.backend.start();
        ScriptResult& c =
            h.client({{write(kStartup + big), read_frames(4), expect_read(kResult), write(kTerminate), expect_eof()}});
        REQUIRE(h.run());
        REQUIRE(h.finish());
        INFO("client: " << c.failure << " / backend: " << h.backend.result(0).failure);
        CHECK(c.ok);
        CHECK(h.backend.result(0).ok);
        CHECK(h.backend.result(0).received == kStartup + big + kTerminate);
    }
    SECTION("StartupMessage, Query and Terminate in one write") {
        h.backend.expect_connection(
            {{expect_read(kStartup), write(login()), expect_read(kQuery), expect_read(kTerminate), expect_eof()}});
        h.backend.start();
        ScriptResult& c = h.client({{write(kStartup + kQuery + kTerminate), read_to_eof()}});
        REQUIRE(h.run());
        REQUIRE(h.finish());
        INFO("client: " << c.failure << " / backend: " << h.backend.result(0).failure);
        CHECK(c.ok);
        CHECK(h.backend.result(0).ok);
        // The client said goodbye: whatever it got before the close is whole frames.
        CHECK(parse_frames(c.received).clean());
    }
    CHECK(h.cancels.size() == 0);
}

TEST_CASE("session: messages split into 1-byte writes arrive intact", "[session]") {
    Harness h;
    h.publish({primary("pg1", h.backend.port())});

    SECTION("client writes one byte at a time") {
        h.backend.expect_connection(backend_happy());
        h.backend.start();
        ScriptResult& c = h.client({{write_bytewise(kStartup + kQuery), read_frames(4), expect_read(kResult),
                                     write_bytewise(kTerminate), expect_eof()}});
        REQUIRE(h.run());
        REQUIRE(h.finish());
        INFO("client: " << c.failure << " / backend: " << h.backend.result(0).failure);
        CHECK(c.ok);
        CHECK(h.backend.result(0).ok);
        CHECK(h.backend.result(0).received == kStartup + kQuery + kTerminate);
    }
    SECTION("backend writes the login (and its BackendKeyData) one byte at a time") {
        h.backend.expect_connection({{expect_read(kStartup), write_bytewise(login()), expect_read(kQuery),
                                      write_bytewise(kResult), expect_read(kTerminate), expect_eof()}});
        h.backend.start();
        std::optional<CancelTarget> target;
        ScriptResult& c = h.client({{write(kStartup), read_frames(4), call([&](ScriptResult& r) {
                                         if (auto k = client_key(r.received)) target = h.cancels.find(*k);
                                     }),
                                     write(kQuery), expect_read(kResult), write(kTerminate), expect_eof()}});
        REQUIRE(h.run());
        REQUIRE(h.finish());
        INFO("client: " << c.failure << " / backend: " << h.backend.result(0).failure);
        CHECK(c.ok);
        CHECK(h.backend.result(0).ok);
        auto key = client_key(c.received);
        REQUIRE(key);
        CHECK(key->pid != kPid);
        CHECK(c.received == login(key->pid, key->secret) + kResult);
        REQUIRE(target);
        CHECK(target->backend_key == CancelKey{kPid, secret4(kSecret)});
    }
    CHECK(h.cancels.size() == 0);
}

TEST_CASE("session: large messages stream through unchanged", "[session]") {
    Harness h;
    h.publish({primary("pg1", h.backend.port())});
    std::string cell(1u << 20, '\0');
    for (size_t i = 0; i < cell.size(); ++i) cell[i] = char((i * 2654435761u) >> 13);
    const std::string rows = row_description("blob") + data_row({cell}) + command_complete("SELECT 1") +
                             ready_for_query('I');
    const std::string big_query = query("select '" + std::string(300 * 1024, 'q') + "'");

    h.backend.expect_connection({{expect_read(kStartup), write(login()), expect_read(kQuery), write(rows),
                                  expect_read(big_query), write(kResult), expect_read(kTerminate), expect_eof()}});
    h.backend.start();
    ScriptResult& c = h.client({{write(kStartup), read_frames(4), write(kQuery), expect_read(rows), write(big_query),
                                 expect_read(kResult), write(kTerminate), expect_eof()}});
    REQUIRE(h.run(5000ms));
    REQUIRE(h.finish());
    INFO("client: " << c.failure << " / backend: " << h.backend.result(0).failure);
    CHECK(c.ok);
    CHECK(h.backend.result(0).ok);
    CHECK(h.backend.result(0).received == kStartup + kQuery + big_query + kTerminate);
}

TEST_CASE("session: SSLRequest and GSSENCRequest are answered 'N', then the startup proceeds", "[session]") {
    Harness h;
    h.publish({primary("pg1", h.backend.port())});
    h.backend.expect_connection({{expect_read(kStartup), write(login()), expect_read(kTerminate), expect_eof()}});
    h.backend.start();

    std::vector<Step> opening;
    std::string answers;
    SECTION("SSLRequest (libpq sslmode=prefer)") {
        opening = {write(ssl_request()), expect_read("N"), write(kStartup)};
        answers = "N";
    }
    SECTION("GSSENCRequest then SSLRequest (pgjdbc)") {
        opening = {write(gssenc_request()), expect_read("N"), write(ssl_request()), expect_read("N"), write(kStartup)};
        answers = "NN";
    }
    SECTION("SSLRequest pipelined with the StartupMessage") {
        opening = {write(ssl_request() + kStartup), expect_read("N")};
        answers = "N";
    }
    Script s{opening};
    for (auto step : {read_frames(4), write(kTerminate), expect_eof()}) s.steps.push_back(step);
    ScriptResult& c = h.client(s);
    REQUIRE(h.run());
    REQUIRE(h.finish());
    INFO("client: " << c.failure << " / backend: " << h.backend.result(0).failure);
    CHECK(c.ok);
    CHECK(h.backend.result(0).ok);
    CHECK(h.backend.result(0).received == kStartup + kTerminate);
    REQUIRE(c.received.size() > answers.size());
    CHECK(c.received.substr(0, answers.size()) == answers);
    const std::string rest = c.received.substr(answers.size());
    const auto key = client_key(rest);
    REQUIRE(key);
    CHECK(key->pid != kPid);
    CHECK(rest == login(key->pid, key->secret));
    CHECK(h.cancels.size() == 0);
}

TEST_CASE("session: malformed startup packets get an ErrorResponse, the backend is never contacted", "[session]") {
    struct Case {
        const char* name;
        std::string bytes;
        std::string answer_prefix;
        const char* sqlstate;
        const char* message_part;
    };
    std::string len20000;
    put_u32(len20000, 20000);
    put_u32(len20000, 3u << 16);
    const Case k = GENERATE_COPY(values<Case>({
        {"length 4", std::string("\0\0\0\x04", 4), "", "08P01", "invalid length of startup packet"},
        {"length 20000", len20000, "", "08P01", "invalid length of startup packet"},
        {"protocol 2.0", startup_message({{"user", "u"}}, 2u << 16), "", "08P01", "unsupported frontend protocol"},
        {"no user", startup_message({{"database", "d"}}), "", "28000", "no PostgreSQL user name"},
        {"SSLRequest of 12 bytes", startup_packet(80877103, "abcd"), "", "08P01", "SSLRequest"},
        {"duplicate SSLRequest", ssl_request() + ssl_request(), "N", "08P01", "duplicate SSLRequest"},
    }));
    CAPTURE(k.name);
    Harness h;
    h.publish({primary("pg1", h.backend.port())});
    h.backend.start();
    ScriptResult& c = h.client({{write(k.bytes), read_to_eof()}});
    REQUIRE(h.run());
    REQUIRE(h.finish());
    CHECK(c.ok);
    CHECK(c.end == asio::error::eof);
    check_error_only(c, k.answer_prefix, k.sqlstate, k.message_part);
    CHECK(h.backend.accepted() == 0);
    CHECK(h.backend.stray() == 0);
}

TEST_CASE("session: an incomplete startup is cut off after startup_timeout", "[session]") {
    // connect_timeout differs so that using the wrong timeout shows.
    Harness h({.connect_timeout = 900ms, .startup_timeout = 300ms});
    h.publish({primary("pg1", h.backend.port())});
    h.backend.start();
    std::chrono::milliseconds upper{};
    Script s;
    SECTION("2 bytes, then silence") {
        s.steps = {write(std::string("\0\0", 2)), read_to_eof()};
        upper = 650ms;
    }
    SECTION("a byte every 60 ms: the deadline covers the whole phase, not each read") {
        s.steps = {write_bytewise(kStartup.substr(0, 5), 60ms), read_to_eof()};
        upper = 480ms;  // a per-read timer would fire at ~240 + 300 ms
    }
    ScriptResult& c = h.client(s);
    REQUIRE(h.run());
    REQUIRE(h.finish());
    CHECK(c.ok);
    CHECK(c.end == asio::error::eof);
    check_error_only(c, "", "08P01", "startup packet not received in time");
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(c.finished_at - c.started_at);
    CAPTURE(took.count());
    CHECK(took >= 270ms);
    CHECK(took <= upper);
    CHECK(h.backend.accepted() == 0);
}

TEST_CASE("session: routing refusals and unreachable backends", "[session]") {
    topology::RoutingOptions routing;
    PortRole role = PortRole::ReadWrite;
    std::string sqlstate, message_part;
    std::function<void(Harness&)> setup;

    SECTION("rw without a primary -> 57P03") {
        setup = [](Harness& h) { h.publish({replica("pg2", h.backend.port())}); };
        sqlstate = "57P03";
        message_part = "no primary available";
    }
    SECTION("rw before any topology is published -> 57P03") {
        setup = [](Harness&) {};
        sqlstate = "57P03";
        message_part = "no primary available";
    }
    SECTION("ro without an eligible replica, fallback off -> 57P03") {
        routing.ro_fallback_to_primary = false;
        role = PortRole::ReadOnly;
        setup = [](Harness& h) {
            h.publish({primary("pg1", h.backend.port()), replica("pg2", h.backend.port())},
                      [](topology::Topology& t) { t.members[1].state = topology::State::Stopped; });
        };
        sqlstate = "57P03";
        message_part = "ro_fallback_to_primary is off";
    }
    SECTION("rw primary refuses connections -> 08006") {
        setup = [&](Harness& h) {
            const uint16_t dead = h.closed_port();
            message_part = "pg1 (127.0.0.1:" + std::to_string(dead) + ")";
            h.publish({primary("pg1", dead)});
        };
        sqlstate = "08006";
    }
    SECTION("ro: replica and fallback primary both refuse -> 08006 naming both") {
        role = PortRole::ReadOnly;
        setup = [&](Harness& h) {
            const uint16_t d1 = h.closed_port(), d2 = h.closed_port();
            message_part = "pg2 (127.0.0.1:" + std::to_string(d2) + "): Connection refused; pg1 (127.0.0.1:" +
                           std::to_string(d1) + ")";
            h.publish({primary("pg1", d1), replica("pg2", d2)});
        };
        sqlstate = "08006";
    }
    Harness h({.routing = routing});
    setup(h);
    h.backend.start();
    ScriptResult& c = h.client({{write(kStartup), read_to_eof()}}, role);
    REQUIRE(h.run());
    REQUIRE(h.finish());
    CHECK(c.ok);
    CHECK(c.end == asio::error::eof);
    check_error_only(c, "", sqlstate, message_part);
    CHECK(h.backend.accepted() == 0);
    CHECK(h.backend.stray() == 0);
    CHECK(h.open_total() == 0);
}

TEST_CASE("session: a backend that refuses the startup (57P03) or never answers it is routed around", "[session]") {
    const std::string starting_up = error_response("57P03", "the database system is starting up");

    SECTION("rw primary answers 57P03: the client gets pgrelay's 57P03, not a half-open session") {
        Harness h;
        h.publish({primary("pg1", h.backend.port())});
        h.backend.expect_connection({{expect_read(kStartup), write(starting_up), close_socket()}});
        h.backend.start();
        ScriptResult& c = h.client({{write(kStartup), read_to_eof()}});
        REQUIRE(h.run());
        REQUIRE(h.finish());
        CHECK(c.ok);
        CHECK(c.end == asio::error::eof);
        // pgrelay's own error naming the member, not the backend's passed through.
        check_error_only(c, "", "57P03", "could not connect to primary pg1");
        CHECK_THAT(error_fields(parse_frames(c.received).frames.at(0).body)['M'],
                   Contains("the database system is starting up"));
        CHECK(h.backend.accepted() == 1);
        CHECK(h.backend.result(0).ok);
    }
    SECTION("ro replica answers 57P03: the same StartupMessage goes to the fallback primary") {
        Harness h;
        // Both members live on the fake backend: connection 0 is the replica, 1 the primary.
        h.publish({primary("pg1", h.backend.port()), replica("pg2", h.backend.port())});
        h.backend.expect_connection({{expect_read(kStartup), write(starting_up), close_socket()}});
        h.backend.expect_connection(backend_happy());
        h.backend.start();
        std::optional<CancelTarget> target;
        uint32_t open_pg1 = 0, open_pg2 = 0;
        ScriptResult& c = h.client({{write(kStartup + kQuery), read_frames(4), call([&](ScriptResult& r) {
                                         if (auto k = client_key(r.received)) target = h.cancels.find(*k);
                                         open_pg1 = h.router.open_count("pg1");
                                         open_pg2 = h.router.open_count("pg2");
                                     }),
                                     expect_read(kResult), write(kTerminate), expect_eof()}},
                                   PortRole::ReadOnly);
        REQUIRE(h.run());
        REQUIRE(h.finish());
        INFO("client: " << c.failure << " / backend 1: " << h.backend.result(1).failure);
        CHECK(c.ok);
        REQUIRE(h.backend.accepted() == 2);
        CHECK(h.backend.result(0).ok);
        CHECK(h.backend.result(1).ok);
        CHECK(h.backend.result(1).received == kStartup + kQuery + kTerminate);  // pipelined Query kept
        REQUIRE(target);
        CHECK(target->member == "pg1");
        CHECK(open_pg1 == 1);
        CHECK(open_pg2 == 0);
        CHECK(h.open_total() == 0);
        CHECK(h.cancels.size() == 0);
    }
    SECTION("rw primary accepts but never answers: 08006 after connect_timeout") {
        Harness h({.connect_timeout = 300ms, .startup_timeout = 2000ms});
        h.publish({primary("pg1", h.backend.port())});
        h.backend.expect_connection({{expect_read(kStartup), expect_eof()}});
        h.backend.start();
        ScriptResult& c = h.client({{write(kStartup), read_to_eof()}});
        REQUIRE(h.run());
        REQUIRE(h.finish());
        CHECK(c.ok);
        check_error_only(c, "", "08006", "no answer to the startup message within connect_timeout");
        const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(c.finished_at - c.started_at);
        CAPTURE(took.count());
        CHECK(took >= 270ms);
        CHECK(took <= 800ms);
        CHECK(h.backend.result(0).ok);  // the session closed its side
    }
}

TEST_CASE("session: backend connect is bounded by connect_timeout", "[session]") {
    Harness h({.connect_timeout = 300ms, .startup_timeout = 2000ms});
    // A listener with backlog 0 and one queued connection drops further SYNs:
    // connecting to it hangs.
    tcp::acceptor full(h.ctx);
    full.open(tcp::v4());
    full.bind(tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    full.listen(0);
    tcp::socket filler(h.ctx);
    filler.connect(full.local_endpoint());
    h.publish({primary("pg1", full.local_endpoint().port())});
    ScriptResult& c = h.client({{write(kStartup), read_to_eof()}});
    REQUIRE(h.run());
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(c.finished_at - c.started_at);
    CAPTURE(took.count());
    CHECK(took >= 270ms);
    CHECK(took <= 800ms);
    check_error_only(c, "", "08006", "could not connect to primary pg1");
    CHECK(c.end == asio::error::eof);
    filler.close();
    full.close();
    REQUIRE(h.finish());
}

TEST_CASE("session: ro skips a refusing replica and falls back to the primary", "[session]") {
    Harness h;
    h.publish({primary("pg1", h.backend.port()), replica("pg2", h.closed_port())});
    h.backend.expect_connection(backend_happy());
    h.backend.start();
    std::optional<CancelTarget> target;
    uint32_t open_pg1 = 0, open_pg2 = 0;
    ScriptResult& c = h.client({{write(kStartup), read_frames(4), call([&](ScriptResult& r) {
                                     if (auto k = client_key(r.received)) target = h.cancels.find(*k);
                                     open_pg1 = h.router.open_count("pg1");
                                     open_pg2 = h.router.open_count("pg2");
                                 }),
                                 write(kQuery), expect_read(kResult), write(kTerminate), expect_eof()}},
                               PortRole::ReadOnly);
    REQUIRE(h.run());
    REQUIRE(h.finish());
    INFO("client: " << c.failure);
    CHECK(c.ok);
    CHECK(h.backend.result(0).ok);
    REQUIRE(target);
    CHECK(target->member == "pg1");
    CHECK(open_pg1 == 1);
    CHECK(open_pg2 == 0);
    CHECK(h.open_total() == 0);
    CHECK(h.cancels.size() == 0);
}

TEST_CASE("session: a client frame over max_frame_size ends the session with 08P01", "[session]") {
    struct Case {
        const char* name;
        uint32_t max_frame_size;
        std::string bytes;
        std::string limit_text;
    };
    std::string huge("Q");
    put_u32(huge, 0x7fffffff);
    std::string tiny("Q");
    put_u32(tiny, 3);
    const Case k = GENERATE_COPY(values<Case>({
        {"length word 0x7fffffff", 1u << 30, huge, "max_frame_size 1073741824"},
        {"length word 3", 1u << 30, tiny, "length 3"},
        {"2000-byte Query, max_frame_size 1000", 1000, query(std::string(1995, 'x')), "max_frame_size 1000"},
    }));
    CAPTURE(k.name);
    Harness h({.max_frame_size = k.max_frame_size});
    h.publish({primary("pg1", h.backend.port())});
    h.backend.expect_connection({{expect_read(kStartup), write(login()), expect_eof()}});
    h.backend.start();
    ScriptResult& c = h.client({{write(kStartup), read_frames(4), write(k.bytes), read_to_eof()}});
    REQUIRE(h.run());
    REQUIRE(h.finish());
    CHECK(c.ok);
    CHECK(c.end == asio::error::eof);
    const auto key = client_key(c.received);
    REQUIRE(key);
    check_error_only(c, login(key->pid, key->secret), "08P01", "invalid message from client");
    const auto err = parse_frames(std::string_view(c.received).substr(login().size()));
    REQUIRE(err.frames.size() == 1);
    CHECK_THAT(error_fields(err.frames[0].body)['M'], Contains(k.limit_text));
    INFO("backend: " << h.backend.result(0).failure);
    CHECK(h.backend.result(0).ok);
    CHECK(h.backend.result(0).received == kStartup);
    CHECK(h.cancels.size() == 0);
}

TEST_CASE("session: pgrelay never writes an ErrorResponse into a half-relayed backend message", "[session]") {
    Harness h;
    h.publish({primary("pg1", h.backend.port())});
    std::string partial("D");
    put_u32(partial, 1000);  // a DataRow of 1001 bytes on the wire, of which 105 are sent
    partial += std::string(100, 'r');
    h.backend.expect_connection({{expect_read(kStartup), write(login()), write(partial), expect_eof()}});
    h.backend.start();
    std::string huge("Q");
    put_u32(huge, 0x7fffffff);
    ScriptResult& c =
        h.client({{write(kStartup), read_frames(4), read_bytes(partial.size()), write(huge), read_to_eof()}});
    REQUIRE(h.run());
    REQUIRE(h.finish());
    INFO("client: " << c.failure << " / backend: " << h.backend.result(0).failure);
    CHECK(c.ok);
    CHECK(h.backend.result(0).ok);
    const auto key = client_key(c.received);
    REQUIRE(key);
    CHECK(c.received == login(key->pid, key->secret) + partial);  // nothing after the cut
    CHECK(c.end == asio::error::eof);
    CHECK(h.cancels.size() == 0);
}

TEST_CASE("session: the backend's own ErrorResponse reaches the client as is, with nothing added", "[session]") {
    Harness h;
    h.publish({primary("pg1", h.backend.port())});
    const std::string denied = error_response("28P01", "password authentication failed for user \"u\"");
    h.backend.expect_connection({{expect_read(kStartup), write(denied), close_socket()}});
    h.backend.start();
    ScriptResult& c = h.client({{write(kStartup), expect_read(denied), expect_eof()}});
    REQUIRE(h.run());
    REQUIRE(h.finish());
    INFO("client: " << c.failure << " received [" << hex(c.received) << "]");
    CHECK(c.ok);
    CHECK(c.received == denied);
    CHECK(h.backend.result(0).ok);
    CHECK(h.cancels.size() == 0);
}

TEST_CASE("session: rw connections are held while there is no primary", "[session][hold]") {
    Harness h({.hold_timeout = 250ms});
    h.publish({replica("pg2", h.backend.port())});  // no primary yet
    h.backend.start();
    int held_during = -1;

    SECTION("nobody becomes primary: 57P03 after hold_timeout") {
        ScriptResult& c = h.client({{write(kStartup), sleep_for(100ms), call([&](ScriptResult&) { held_during = h.held(); }),
                                     read_to_eof()}});
        REQUIRE(h.run());
        REQUIRE(h.finish());
        CHECK(c.ok);
        check_error_only(c, "", "57P03", "hold_timeout reached");
        const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(c.finished_at - c.started_at);
        CAPTURE(took.count());
        CHECK(took >= 240ms);
        CHECK(took <= 700ms);
        CHECK(h.backend.accepted() == 0);
    }
    SECTION("the client gives up while held: the session ends at once and never reaches a backend") {
        int held_after = -1;
        ScriptResult& c = h.client({{write(kStartup), sleep_for(100ms), call([&](ScriptResult&) { held_during = h.held(); }),
                                     close_socket()}});
        ScriptResult& watcher = h.client({{sleep_for(200ms), call([&](ScriptResult&) { held_after = h.held(); })}});
        REQUIRE(h.run());
        REQUIRE(h.finish());
        CHECK(c.ok);
        CHECK(watcher.ok);
        CHECK(held_after == 0);  // 100 ms after the close, long before hold_timeout
        CHECK(h.backend.accepted() == 0);
    }
    SECTION("a primary appears: the held connection goes through") {
        h.backend.expect_connection(backend_happy());
        ScriptResult& c = h.client({{write(kStartup), sleep_for(100ms), call([&](ScriptResult&) {
                                         held_during = h.held();
                                         h.publish({primary("pg1", h.backend.port()), replica("pg2", h.closed_port())});
                                         pgrelay::apply_topology_change(h.shared, *h.hub.latest());
                                     }),
                                     read_frames(4), write(kQuery), expect_read(kResult), write(kTerminate),
                                     expect_eof()}});
        REQUIRE(h.run());
        REQUIRE(h.finish());
        INFO("client: " << c.failure);
        CHECK(c.ok);
        REQUIRE(h.backend.accepted() == 1);
        CHECK(h.backend.result(0).ok);
        const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(c.step_done_at.at(3) - c.started_at);
        CHECK(took < 240ms);  // released by the change, not by hold_timeout
    }
    CHECK(held_during == 1);
    CHECK(h.held() == 0);
    CHECK(h.shared.sessions.empty());
    CHECK(h.cancels.size() == 0);
}

TEST_CASE("session: a topology change that moves the primary ends live rw sessions with 57P01", "[session][hold]") {
    Harness h;
    h.publish({primary("pg1", h.backend.port()), replica("pg3", h.closed_port())});
    h.backend.expect_connection({{expect_read(kStartup), write(login()), expect_eof()}});
    h.backend.start();
    size_t registered = 0;
    ScriptResult& c = h.client({{write(kStartup), read_frames(4), call([&](ScriptResult&) {
                                     registered = h.shared.sessions.size();
                                     auto t = topology::StaticSource::initial_snapshot(
                                         {replica("pg1", h.backend.port()), primary("pg3", h.closed_port())});
                                     h.hub.publish(t);
                                     pgrelay::apply_topology_change(h.shared, *t);
                                 }),
                                 read_to_eof()}});
    REQUIRE(h.run());
    REQUIRE(h.finish());
    INFO("client: " << c.failure << " / backend: " << h.backend.result(0).failure);
    CHECK(c.ok);
    CHECK(h.backend.result(0).ok);
    CHECK(h.backend.result(0).received == kStartup);
    const auto key = client_key(c.received);
    REQUIRE(key);
    check_error_only(c, login(key->pid, key->secret), "57P01", "primary moved from pg1 to pg3");
    CHECK(c.end == asio::error::eof);
    CHECK(registered == 1);
    CHECK(h.shared.sessions.empty());
    CHECK(h.cancels.size() == 0);
}

TEST_CASE("session: CancelRequest is forwarded with the backend's key, unknown keys are dropped", "[session][cancel]") {
    Harness h;
    h.publish({primary("pg1", h.backend.port())});
    Event& cancel_done = h.event();
    h.backend.expect_connection({{expect_read(kStartup), write(login()), expect_read(kTerminate), expect_eof()}});

    enum class Which { Known, WrongSecret, UnknownPid };
    Which which = Which::Known;
    SECTION("known key") {
        which = Which::Known;
        // The backend closes only after a pause: the canceller's connection
        // must stay open until the backend has taken the request.
        h.backend.expect_connection({{expect_read(cancel_request(kPid, kSecret)), sleep_for(50ms), close_socket()}});
    }
    SECTION("right pid, wrong secret") { which = Which::WrongSecret; }
    SECTION("pid never handed out") { which = Which::UnknownPid; }
    h.backend.start();

    ScriptResult* canceller = nullptr;
    std::optional<CancelKey> key;
    ScriptResult& c = h.client({{write(kStartup), read_frames(4), call([&](ScriptResult& r) {
                                     key = client_key(r.received);
                                     if (!key) return;  // shows below as REQUIRE(key)
                                     CancelKey k = *key;
                                     if (which == Which::WrongSecret) k.secret[1] ^= 0x5a;
                                     if (which == Which::UnknownPid) k.pid ^= 0x10;  // this instance's tag, another pid
                                     canceller = &h.client({{write(cancel_request(k.pid, k.secret)), read_to_eof(),
                                                             set_event(cancel_done)}});
                                 }),
                                 wait_for(cancel_done), write(kTerminate), expect_eof()}});
    REQUIRE(h.run());
    REQUIRE(h.finish());
    INFO("client: " << c.failure);
    CHECK(c.ok);
    REQUIRE(key);
    REQUIRE(canceller);
    INFO("canceller: " << canceller->failure);
    CHECK(canceller->ok);
    CHECK(canceller->received.empty());
    CHECK(canceller->end == asio::error::eof);
    CHECK(h.backend.result(0).ok);
    CHECK(h.backend.stray() == 0);
    if (which == Which::Known) {
        REQUIRE(h.backend.accepted() == 2);
        const ScriptResult& fwd = h.backend.result(1);
        INFO("cancel connection: " << fwd.failure);
        CHECK(fwd.ok);
        CHECK(fwd.received == cancel_request(kPid, kSecret));
        CHECK(canceller->finished_at >= fwd.finished_at);
    } else {
        CHECK(h.backend.accepted() == 1);
    }
    CHECK(h.cancels.size() == 0);
}

// check_network_errors style: the happy-path conversation as one ordered list of
// steps; run i makes step i's owner close its socket (FIN or RST) instead.
TEST_CASE("session: a peer closing at any step ends the session cleanly", "[session][faults]") {
    enum Party { Client, Backend };
    struct Planned {
        Party who;
        Step step;
    };
    const std::vector<Planned> plan = {
        {Client, write(kStartup)},      {Backend, expect_read(kStartup)}, {Backend, write(login())},
        {Client, read_frames(4)},       {Client, write(kQuery)},          {Backend, expect_read(kQuery)},
        {Backend, write(kResult)},      {Client, expect_read(kResult)},   {Client, write(kTerminate)},
        {Backend, expect_read(kTerminate)}, {Backend, expect_eof()},      {Client, expect_eof()},
    };
    const size_t fault = GENERATE(range(size_t(0), size_t(13)));  // 12 = no fault
    const bool reset = GENERATE(false, true);
    const PortRole role = GENERATE(PortRole::ReadWrite, PortRole::ReadOnly);
    if (fault == plan.size() && reset) return;  // the no-fault run needs no mode
    CAPTURE(fault, reset, pgrelay::to_string(role));

    Harness h;
    if (role == PortRole::ReadOnly)
        h.publish({primary("pg1", h.closed_port()), replica("pg2", h.backend.port())});
    else
        h.publish({primary("pg1", h.backend.port())});
    Script cs, bs;
    cs.drain_on_failure = true;
    bool stopped[2] = {false, false};
    for (size_t i = 0; i < plan.size(); ++i) {
        Script& s = plan[i].who == Client ? cs : bs;
        if (stopped[plan[i].who]) continue;
        if (i == fault) {
            s.steps.push_back(reset ? reset_socket() : close_socket());
            stopped[plan[i].who] = true;
        } else {
            s.steps.push_back(plan[i].step);
        }
    }
    const bool client_faulted = stopped[Client], backend_faulted = stopped[Backend];
    h.backend.expect_connection(bs);
    h.backend.start();
    ScriptResult& c = h.client(cs, role);

    REQUIRE(h.run(1500ms));  // the session coroutine completed, both peers are done
    REQUIRE(h.finish());
    CHECK(h.cancels.size() == 0);
    CHECK(h.router.open_count("pg1") == 0);
    CHECK(h.router.open_count("pg2") == 0);
    CHECK(h.backend.stray() == 0);

    INFO("client: " << c.failure << " received [" << hex(c.received, 120) << "]");
    if (fault == plan.size()) {
        CHECK(c.ok);
        REQUIRE(h.backend.accepted() == 1);
        CHECK(h.backend.result(0).ok);
    }

    // What the client got: complete frames, a prefix of the conversation,
    // optionally ended by one pgrelay ErrorResponse with a connection-class code.
    const auto got = parse_frames(c.received);
    CHECK(got.clean());
    const auto want = parse_frames(login() + kResult).frames;
    size_t n = got.frames.size();
    std::string error_code;
    if (n > 0 && got.frames[n - 1].type == 'E') {
        error_code = error_fields(got.frames[n - 1].body)['C'];
        CHECK(error_code.substr(0, 2) == "08");
        --n;
    }
    REQUIRE(n <= want.size());
    for (size_t i = 0; i < n; ++i) {
        CAPTURE(i);
        CHECK(got.frames[i].type == want[i].type);
        if (want[i].type == 'K') {
            CHECK(got.frames[i].body.size() == 8);
            CHECK(got.frames[i].body != want[i].body);
        } else {
            CHECK(got.frames[i].body == want[i].body);
        }
    }
    // Unless the client itself hung up, its stream ends with a clean EOF.
    if (!client_faulted) CHECK(c.end == asio::error::eof);
    // The backend goes away while the client still expects an answer: the
    // client hears why (08006) at a message boundary. Before the login that is
    // the whole stream; after it, the login comes first.
    if (backend_faulted && (fault == 1 || fault == 2)) {
        CHECK(n == 0);
        CHECK(error_code == "08006");
    }
    if (backend_faulted && (fault == 5 || fault == 6)) {
        CHECK(n == 4);
        CHECK(error_code == "08006");
    }

    // What the backend got: a prefix of the client's messages, nothing else.
    const std::string up = kStartup + kQuery + kTerminate;
    if (fault == 0) CHECK(h.backend.accepted() == 0);  // no startup, no backend
    for (size_t i = 0; i < h.backend.accepted(); ++i) {
        const std::string& r = h.backend.result(i).received;
        CHECK(r == up.substr(0, r.size()));
    }
    CHECK(h.backend.accepted() <= 1);
}
