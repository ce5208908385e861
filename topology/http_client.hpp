// A small HTTP/1.1 client (plain or TLS) for the control thread, used to read
// etcd's JSON gateway and Patroni's REST API: one connection, one request at
// a time, every step bounded by a deadline, and a streamed mode for etcd's
// watch. The parsing lives in http.hpp; this file only moves bytes.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "topology/http.hpp"

namespace boost::asio::ssl {
class context;
}

namespace pgrelay::topology::http {

// TLS settings towards a store (etcd, Patroni REST): the CA to verify the
// server with (the system's when empty) and an optional client certificate.
struct TlsFiles {
    std::string ca, cert, key;
};
// Throws std::runtime_error naming the file that could not be used.
std::shared_ptr<boost::asio::ssl::context> make_client_tls(const TlsFiles& files);

struct Response {
    std::string error;  // transport or HTTP framing failure; empty when a response came
    int status = 0;
    std::string body;
};

// Flow: Client c(executor, url, tls); co_await c.request(...) as often as
// needed (it connects, and reconnects when the server closed the previous
// connection); or co_await c.open_stream(...) then c.read_stream() until it
// fails. close() ends whatever is in flight (it fails with an error).
class Client {
public:
    Client(boost::asio::any_io_executor ex, Url url, std::shared_ptr<boost::asio::ssl::context> tls);
    ~Client();
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    const Url& url() const noexcept { return url_; }
    // The whole exchange (connect if needed, send, read the whole response)
    // within `timeout`. `auth` goes in the Authorization header when set.
    boost::asio::awaitable<Response> request(std::string_view method, std::string_view target,
                                             std::string_view body, std::string_view auth,
                                             std::chrono::milliseconds timeout);
    // Connects, sends, and waits (within `timeout`) for the response headers;
    // the body then comes through read_stream(), with no deadline (a watch
    // can be silent for long: TCP keepalive notices a dead peer).
    boost::asio::awaitable<Response> open_stream(std::string_view method, std::string_view target,
                                                 std::string_view body, std::string_view auth,
                                                 std::chrono::milliseconds timeout);
    // The next decoded body bytes; error set when the stream ended or failed
    // ("end of stream" when the server finished the response).
    boost::asio::awaitable<Response> read_stream();
    // Ends the connection and whatever is in flight on it (which then fails
    // with an error); the next request connects again.
    void close();

    struct Conn;  // the socket; public only for the deadline timers in the .cpp

private:
    boost::asio::awaitable<std::string> connect(std::chrono::steady_clock::time_point deadline);
    boost::asio::awaitable<Response> exchange(std::string_view method, std::string_view target, std::string_view body,
                                              std::string_view auth, std::chrono::milliseconds timeout, bool stream);

    boost::asio::any_io_executor ex_;
    Url url_;
    std::shared_ptr<boost::asio::ssl::context> tls_;
    std::shared_ptr<Conn> conn_;
    std::unique_ptr<ResponseParser> parser_;  // of the streamed response
    uint64_t closes_ = 0;                     // close() calls, so an exchange it interrupted is not retried
};

}  // namespace pgrelay::topology::http
