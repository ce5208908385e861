// Test helper: scripted peers over real loopback sockets. A Script is a list of
// steps (write, expect_read, read_frames, expect_eof, close_socket, ...) that one
// coroutine plays against one socket; FakeBackend runs one script per accepted
// connection. Also builds and parses PostgreSQL v3 wire messages, independently
// of protocol/ (the code under test).
#pragma once

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgrelay::test {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// ---------------------------------------------------------------------------
// Wire builders (protocol-message-formats.html), big-endian throughout.

inline void put_u32(std::string& out, uint32_t v) {
    out.push_back(char(v >> 24));
    out.push_back(char(v >> 16));
    out.push_back(char(v >> 8));
    out.push_back(char(v));
}
inline void put_u16(std::string& out, uint16_t v) {
    out.push_back(char(v >> 8));
    out.push_back(char(v));
}
inline uint32_t get_u32(std::string_view s, size_t off) {
    return (uint32_t(uint8_t(s[off])) << 24) | (uint32_t(uint8_t(s[off + 1])) << 16) |
           (uint32_t(uint8_t(s[off + 2])) << 8) | uint32_t(uint8_t(s[off + 3]));
}

// Type byte + length word (counting itself) + body.
inline std::string frame(char type, std::string_view body) {
    std::string out(1, type);
    put_u32(out, uint32_t(body.size() + 4));
    out.append(body);
    return out;
}

// Untyped startup-phase packet: length word + code + payload.
inline std::string startup_packet(uint32_t code, std::string_view payload) {
    std::string out;
    put_u32(out, uint32_t(8 + payload.size()));
    put_u32(out, code);
    out.append(payload);
    return out;
}
inline std::string startup_message(const std::vector<std::pair<std::string, std::string>>& params,
                                   uint32_t version = 3u << 16) {
    std::string payload;
    for (const auto& [k, v] : params) {
        payload += k;
        payload.push_back('\0');
        payload += v;
        payload.push_back('\0');
    }
    payload.push_back('\0');
    return startup_packet(version, payload);
}
inline std::string ssl_request() { return startup_packet(80877103, {}); }
inline std::string gssenc_request() { return startup_packet(80877104, {}); }
inline std::string cancel_request(int32_t pid, int32_t secret) {
    std::string payload;
    put_u32(payload, uint32_t(pid));
    put_u32(payload, uint32_t(secret));
    return startup_packet(80877102, payload);
}
// Protocol 3.2's CancelRequest: a secret of any length.
inline std::string cancel_request(int32_t pid, std::string_view secret) {
    std::string payload;
    put_u32(payload, uint32_t(pid));
    payload.append(secret);
    return startup_packet(80877102, payload);
}

inline std::string query(std::string_view sql) {
    std::string body(sql);
    body.push_back('\0');
    return frame('Q', body);
}
inline std::string terminate() { return frame('X', {}); }

inline std::string auth_ok() {
    std::string body;
    put_u32(body, 0);
    return frame('R', body);
}
inline std::string backend_key_data(int32_t pid, int32_t secret) {
    std::string body;
    put_u32(body, uint32_t(pid));
    put_u32(body, uint32_t(secret));
    return frame('K', body);
}
// Protocol 3.2's BackendKeyData: a secret of any length.
inline std::string backend_key_data(int32_t pid, std::string_view secret) {
    std::string body;
    put_u32(body, uint32_t(pid));
    body.append(secret);
    return frame('K', body);
}
// A protocol 3.0 secret: 4 bytes, big-endian.
inline std::string secret4(int32_t secret) {
    std::string s;
    put_u32(s, uint32_t(secret));
    return s;
}
inline std::string parameter_status(std::string_view name, std::string_view value) {
    std::string body(name);
    body.push_back('\0');
    body.append(value);
    body.push_back('\0');
    return frame('S', body);
}
inline std::string ready_for_query(char status = 'I') { return frame('Z', std::string(1, status)); }
// RowDescription with one text column.
inline std::string row_description(std::string_view column) {
    std::string body;
    put_u16(body, 1);
    body.append(column);
    body.push_back('\0');
    put_u32(body, 0);           // table oid
    put_u16(body, 0);           // attribute number
    put_u32(body, 25);          // type oid: text
    put_u16(body, 0xffff);      // typlen -1
    put_u32(body, 0xffffffff);  // typmod -1
    put_u16(body, 0);           // text format
    return frame('T', body);
}
inline std::string data_row(const std::vector<std::string>& columns) {
    std::string body;
    put_u16(body, uint16_t(columns.size()));
    for (const auto& c : columns) {
        put_u32(body, uint32_t(c.size()));
        body.append(c);
    }
    return frame('D', body);
}
inline std::string command_complete(std::string_view tag) {
    std::string body(tag);
    body.push_back('\0');
    return frame('C', body);
}
inline std::string error_response(std::string_view sqlstate, std::string_view message) {
    std::string body = "SFATAL";
    body.push_back('\0');
    body += 'C';
    body.append(sqlstate);
    body.push_back('\0');
    body += 'M';
    body.append(message);
    body.push_back('\0');
    body.push_back('\0');
    return frame('E', body);
}

// ---------------------------------------------------------------------------
// Parsing what a client received.

struct WireFrame {
    char type = 0;
    std::string body;
    std::string wire() const { return frame(type, body); }
};

struct ParsedStream {
    std::vector<WireFrame> frames;
    size_t leftover = 0;   // trailing bytes that are not a complete frame
    std::string problem;   // first thing that is not a valid backend frame
    bool clean() const { return leftover == 0 && problem.empty(); }
};

inline bool is_backend_type(char t) {
    static constexpr std::string_view kTypes = "RK23CdcGHWDIEVvnNAtS1sZT";
    return kTypes.find(t) != std::string_view::npos;
}

// Splits `bytes` into backend frames; stops at the first invalid header.
inline ParsedStream parse_frames(std::string_view bytes) {
    ParsedStream out;
    size_t pos = 0;
    while (pos < bytes.size()) {
        if (bytes.size() - pos < 5) break;
        const char type = bytes[pos];
        const uint32_t len = get_u32(bytes, pos + 1);
        if (!is_backend_type(type) || len < 4) {
            out.problem = "invalid frame header at offset " + std::to_string(pos);
            break;
        }
        if (bytes.size() - pos < size_t(len) + 1) break;
        out.frames.push_back({type, std::string(bytes.substr(pos + 5, len - 4))});
        pos += size_t(len) + 1;
    }
    out.leftover = bytes.size() - pos;
    return out;
}

// Fields of an ErrorResponse/NoticeResponse body by code; empty when malformed.
inline std::map<char, std::string> error_fields(std::string_view body) {
    std::map<char, std::string> out;
    size_t pos = 0;
    while (pos < body.size()) {
        const char code = body[pos++];
        if (code == 0) return pos == body.size() ? out : std::map<char, std::string>{};
        const size_t nul = body.find('\0', pos);
        if (nul == std::string_view::npos) return {};
        out[code] = std::string(body.substr(pos, nul - pos));
        pos = nul + 1;
    }
    return {};
}

inline std::string hex(std::string_view s, size_t max = 48) {
    static constexpr char kDigits[] = "0123456789abcdef";
    std::string out;
    for (size_t i = 0; i < s.size() && i < max; ++i) {
        if (i) out.push_back(' ');
        out.push_back(kDigits[uint8_t(s[i]) >> 4]);
        out.push_back(kDigits[uint8_t(s[i]) & 15]);
    }
    if (s.size() > max) out += " ... (" + std::to_string(s.size()) + " bytes)";
    return out;
}

// ---------------------------------------------------------------------------
// Scripts.

// One-shot signal between scripts on the same io_context.
class Event {
public:
    explicit Event(asio::any_io_executor ex) : timer_(std::move(ex), asio::steady_timer::time_point::max()) {}
    void set() {
        set_ = true;
        timer_.cancel();
    }
    bool is_set() const noexcept { return set_; }
    asio::awaitable<bool> wait(milliseconds timeout) {
        using namespace asio::experimental::awaitable_operators;
        asio::steady_timer limit(timer_.get_executor(), timeout);
        while (!set_) {
            auto r = co_await (timer_.async_wait(asio::as_tuple(asio::use_awaitable)) ||
                               limit.async_wait(asio::as_tuple(asio::use_awaitable)));
            if (r.index() == 1) break;
        }
        co_return set_;
    }

private:
    bool set_ = false;
    asio::steady_timer timer_;
};

struct ScriptResult;

struct Step {
    enum class Kind {
        Write,          // write `bytes` in one write
        WriteBytewise,  // write `bytes` one byte per write, `gap` apart
        ExpectRead,     // read exactly bytes.size() bytes; they must equal `bytes`
        ReadBytes,      // read exactly `count` bytes, whatever they are
        ReadFrames,     // read `count` complete backend frames
        ExpectEof,      // the next read must see a clean EOF, no bytes
        ReadToEof,      // read everything until EOF/reset
        Sleep,          // wait `gap`
        Close,          // shutdown + close (FIN)
        Abort,          // SO_LINGER 0 + close (RST)
        Wait,           // wait until `event` is set
        Signal,         // set `event`
        Call,           // run `fn` (synchronously)
    };
    Kind kind = Kind::Write;
    std::string bytes;
    size_t count = 0;
    milliseconds gap{0};
    Event* event = nullptr;
    std::function<void(ScriptResult&)> fn;

    std::string describe() const;
};

inline Step make_step(Step::Kind kind, std::string bytes = {}, size_t count = 0) {
    Step s;
    s.kind = kind;
    s.bytes = std::move(bytes);
    s.count = count;
    return s;
}
inline Step write(std::string b) { return make_step(Step::Kind::Write, std::move(b)); }
inline Step write_bytewise(std::string b, milliseconds gap = milliseconds(1)) {
    Step s = make_step(Step::Kind::WriteBytewise, std::move(b));
    s.gap = gap;
    return s;
}
inline Step expect_read(std::string b) { return make_step(Step::Kind::ExpectRead, std::move(b)); }
inline Step read_bytes(size_t n) { return make_step(Step::Kind::ReadBytes, {}, n); }
inline Step read_frames(size_t n) { return make_step(Step::Kind::ReadFrames, {}, n); }
inline Step expect_eof() { return make_step(Step::Kind::ExpectEof); }
inline Step read_to_eof() { return make_step(Step::Kind::ReadToEof); }
inline Step sleep_for(milliseconds d) {
    Step s = make_step(Step::Kind::Sleep);
    s.gap = d;
    return s;
}
inline Step close_socket() { return make_step(Step::Kind::Close); }
inline Step reset_socket() { return make_step(Step::Kind::Abort); }
inline Step wait_for(Event& e) {
    Step s = make_step(Step::Kind::Wait);
    s.event = &e;
    return s;
}
inline Step set_event(Event& e) {
    Step s = make_step(Step::Kind::Signal);
    s.event = &e;
    return s;
}
inline Step call(std::function<void(ScriptResult&)> fn) {
    Step s = make_step(Step::Kind::Call);
    s.fn = std::move(fn);
    return s;
}

inline std::string Step::describe() const {
    switch (kind) {
        case Kind::Write: return "write " + std::to_string(bytes.size()) + " bytes";
        case Kind::WriteBytewise: return "write " + std::to_string(bytes.size()) + " bytes one at a time";
        case Kind::ExpectRead: return "expect_read " + std::to_string(bytes.size()) + " bytes";
        case Kind::ReadBytes: return "read " + std::to_string(count) + " bytes";
        case Kind::ReadFrames: return "read " + std::to_string(count) + " frames";
        case Kind::ExpectEof: return "expect_eof";
        case Kind::ReadToEof: return "read_to_eof";
        case Kind::Sleep: return "sleep";
        case Kind::Close: return "close";
        case Kind::Abort: return "abort";
        case Kind::Wait: return "wait";
        case Kind::Signal: return "signal";
        case Kind::Call: return "call";
    }
    return "?";
}

struct Script {
    std::vector<Step> steps;
    // After a failed step, keep reading until the peer closes (bounded), so
    // `received` holds everything the peer sent.
    bool drain_on_failure = false;
    milliseconds step_timeout{3000};
};

struct ScriptResult {
    bool finished = false;
    bool ok = false;         // every step succeeded
    size_t completed = 0;    // steps that succeeded
    std::string failure;     // "step N (what): why"
    std::string received;    // every byte read from the peer, in order
    boost::system::error_code end;  // error that ended the last read (eof, reset, ...)
    Clock::time_point started_at{}, finished_at{};
    std::vector<Clock::time_point> step_done_at;
};

namespace detail {

using namespace asio::experimental::awaitable_operators;
inline constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

inline boost::system::error_code timed_out() { return asio::error::timed_out; }

// One read_some bounded by `deadline`; everything read lands in r.received.
inline asio::awaitable<boost::system::error_code> read_chunk(tcp::socket& s, size_t max, Clock::time_point deadline,
                                                            ScriptResult& r, size_t& got) {
    std::string buf(max, '\0');
    asio::steady_timer t(s.get_executor(), deadline);
    auto res = co_await (s.async_read_some(asio::buffer(buf), use_tuple) || t.async_wait(use_tuple));
    if (res.index() == 1) {
        got = 0;
        co_return timed_out();
    }
    auto [ec, n] = std::get<0>(res);
    got = n;
    r.received.append(buf, 0, n);
    if (ec) r.end = ec;
    co_return ec;
}

// Reads exactly n bytes (fewer on error); returns them.
inline asio::awaitable<std::pair<boost::system::error_code, std::string>> read_exactly(tcp::socket& s, size_t n,
                                                                                      Clock::time_point deadline,
                                                                                      ScriptResult& r) {
    const size_t start = r.received.size();
    size_t have = 0;
    boost::system::error_code ec;
    while (have < n) {
        size_t got = 0;
        ec = co_await read_chunk(s, std::min<size_t>(n - have, 256 * 1024), deadline, r, got);
        have += got;
        if (ec) break;
    }
    co_return std::pair{have == n ? boost::system::error_code{} : ec, r.received.substr(start, have)};
}

inline asio::awaitable<boost::system::error_code> write_all(tcp::socket& s, std::string_view bytes,
                                                           Clock::time_point deadline) {
    asio::steady_timer t(s.get_executor(), deadline);
    auto res = co_await (asio::async_write(s, asio::buffer(bytes.data(), bytes.size()), use_tuple) ||
                         t.async_wait(use_tuple));
    if (res.index() == 1) co_return timed_out();
    co_return std::get<0>(std::get<0>(res));
}

inline std::string first_difference(std::string_view want, std::string_view got) {
    size_t i = 0;
    while (i < want.size() && i < got.size() && want[i] == got[i]) ++i;
    const size_t from = i > 8 ? i - 8 : 0;
    return "differs at offset " + std::to_string(i) + ": expected [" + hex(want.substr(from)) + "] got [" +
           hex(got.substr(from)) + "]";
}

inline asio::awaitable<boost::system::error_code> drain(tcp::socket& s, Clock::time_point deadline, ScriptResult& r) {
    for (;;) {
        size_t got = 0;
        auto ec = co_await read_chunk(s, 64 * 1024, deadline, r, got);
        if (ec) co_return ec;
    }
}

// Runs one step; returns an empty string on success, else what went wrong.
inline asio::awaitable<std::string> run_step(tcp::socket& s, const Step& step, ScriptResult& r, milliseconds timeout) {
    using K = Step::Kind;
    const auto deadline = Clock::now() + timeout;
    switch (step.kind) {
        case K::Write: {
            auto ec = co_await write_all(s, step.bytes, deadline);
            co_return ec ? "write failed: " + ec.message() : std::string();
        }
        case K::WriteBytewise: {
            for (size_t i = 0; i < step.bytes.size(); ++i) {
                auto ec = co_await write_all(s, std::string_view(step.bytes).substr(i, 1), deadline);
                if (ec) co_return "write of byte " + std::to_string(i) + " failed: " + ec.message();
                asio::steady_timer t(s.get_executor(), step.gap);
                co_await t.async_wait(use_tuple);
            }
            co_return std::string();
        }
        case K::ExpectRead: {
            auto [ec, got] = co_await read_exactly(s, step.bytes.size(), deadline, r);
            if (ec) co_return "read failed after " + std::to_string(got.size()) + " bytes: " + ec.message();
            if (got != step.bytes) co_return first_difference(step.bytes, got);
            co_return std::string();
        }
        case K::ReadBytes: {
            auto [ec, got] = co_await read_exactly(s, step.count, deadline, r);
            co_return ec ? "read failed after " + std::to_string(got.size()) + " bytes: " + ec.message() : std::string();
        }
        case K::ReadFrames: {
            for (size_t i = 0; i < step.count; ++i) {
                auto [ec, header] = co_await read_exactly(s, 5, deadline, r);
                if (ec) co_return "frame " + std::to_string(i) + ": header read failed: " + ec.message();
                const uint32_t len = get_u32(header, 1);
                if (!is_backend_type(header[0]) || len < 4)
                    co_return "frame " + std::to_string(i) + ": invalid header [" + hex(header) + "]";
                auto [bec, body] = co_await read_exactly(s, len - 4, deadline, r);
                if (bec) co_return "frame " + std::to_string(i) + ": body read failed: " + bec.message();
            }
            co_return std::string();
        }
        case K::ExpectEof: {
            size_t got = 0;
            auto ec = co_await read_chunk(s, 4096, deadline, r, got);
            if (got > 0) co_return "expected EOF, got " + std::to_string(got) + " bytes";
            if (ec != asio::error::eof) co_return "expected EOF, got: " + ec.message();
            co_return std::string();
        }
        case K::ReadToEof: {
            auto ec = co_await drain(s, deadline, r);
            if (ec == asio::error::eof || ec == asio::error::connection_reset) co_return std::string();
            co_return "read_to_eof ended by: " + ec.message();
        }
        case K::Sleep: {
            asio::steady_timer t(s.get_executor(), step.gap);
            co_await t.async_wait(use_tuple);
            co_return std::string();
        }
        case K::Close: {
            boost::system::error_code ec;
            s.shutdown(tcp::socket::shutdown_both, ec);
            s.close(ec);
            co_return std::string();
        }
        case K::Abort: {
            boost::system::error_code ec;
            s.set_option(asio::socket_base::linger(true, 0), ec);
            s.close(ec);
            co_return std::string();
        }
        case K::Wait: {
            const bool ok = co_await step.event->wait(timeout);
            co_return ok ? std::string() : std::string("event not signalled in time");
        }
        case K::Signal: step.event->set(); co_return std::string();
        case K::Call: step.fn(r); co_return std::string();
    }
    co_return std::string("unknown step");
}

}  // namespace detail

// Plays `script` against `sock`, recording into `r`. Never throws; closes the
// socket when done (unless a step already did).
inline asio::awaitable<void> run_script(tcp::socket sock, Script script, ScriptResult& r) {
    r.started_at = Clock::now();
    bool failed = false;
    try {
        for (size_t i = 0; i < script.steps.size(); ++i) {
            std::string err = co_await detail::run_step(sock, script.steps[i], r, script.step_timeout);
            if (!err.empty()) {
                r.failure = "step " + std::to_string(i) + " (" + script.steps[i].describe() + "): " + err;
                failed = true;
                break;
            }
            ++r.completed;
            r.step_done_at.push_back(Clock::now());
        }
        if (failed && script.drain_on_failure && sock.is_open() && r.end != asio::error::eof &&
            r.end != asio::error::connection_reset)
            co_await detail::drain(sock, Clock::now() + script.step_timeout, r);
    } catch (const std::exception& e) {
        failed = true;
        r.failure += std::string(" exception: ") + e.what();
    }
    r.ok = !failed;
    r.finished = true;
    r.finished_at = Clock::now();
}

// ---------------------------------------------------------------------------
// A fake PostgreSQL server: accepts on 127.0.0.1:<ephemeral> and plays the
// i-th expected script on the i-th connection. Connections beyond the scripts
// are recorded (result.failure = "unexpected connection") and closed.
class FakeBackend {
public:
    explicit FakeBackend(asio::io_context& ctx)
        : acc_(ctx, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)), port_(acc_.local_endpoint().port()) {}

    uint16_t port() const noexcept { return port_; }
    void expect_connection(Script s) { scripts_.push_back(std::move(s)); }

    void start() {
        serving_ = true;
        asio::co_spawn(acc_.get_executor(), serve(), [this](std::exception_ptr) { serving_ = false; });
    }

    size_t accepted() const noexcept { return results_.size(); }
    const ScriptResult& result(size_t i) const { return results_.at(i); }
    bool idle() const {
        for (const auto& r : results_)
            if (!r.finished) return false;
        return true;
    }
    bool serving() const noexcept { return serving_; }

    // Stops the accept loop (takes effect when the io_context runs).
    void stop_accepting() {
        boost::system::error_code ec;
        acc_.cancel(ec);
    }
    // After the accept loop has ended: connections the kernel completed but
    // nobody accepted. Closes the acceptor.
    size_t take_stray() {
        size_t n = 0;
        if (serving_ || !acc_.is_open()) return n;
        boost::system::error_code ec;
        acc_.non_blocking(true, ec);
        for (;;) {
            tcp::socket s(acc_.get_executor());
            acc_.accept(s, ec);
            if (ec) break;
            ++n;
        }
        acc_.close(ec);
        stray_ += n;
        return n;
    }
    size_t stray() const noexcept { return stray_; }

private:
    asio::awaitable<void> serve() {
        for (;;) {
            auto [ec, sock] = co_await acc_.async_accept(asio::as_tuple(asio::use_awaitable));
            if (ec) co_return;
            results_.emplace_back();
            ScriptResult& r = results_.back();
            const size_t i = results_.size() - 1;
            if (i >= scripts_.size()) {
                r.failure = "unexpected connection";
                r.finished = true;
                continue;  // sock closes here
            }
            asio::co_spawn(acc_.get_executor(), run_script(std::move(sock), scripts_[i], r), [](std::exception_ptr) {});
        }
    }

    tcp::acceptor acc_;
    uint16_t port_;
    bool serving_ = false;
    size_t stray_ = 0;
    std::vector<Script> scripts_;
    std::deque<ScriptResult> results_;  // deque: references stay valid
};

}  // namespace pgrelay::test
