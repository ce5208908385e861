// Sans-I/O pieces of the HTTP/1.1 client that talks to etcd's JSON gateway
// and to Patroni's REST API: a response parser fed bytes as they arrive
// (Content-Length, chunked, or until close), a splitter that cuts a stream of
// concatenated JSON objects (etcd's watch stream) into whole objects, and
// base64. No sockets here; unit-tested on recorded traffic split at every byte.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/base64.hpp"

namespace pgrelay::topology::http {

// Flow: feed() every byte read from the socket (the parser never needs them
// again); after each feed, check error(), headers_done() and take_body()
// for the body bytes decoded so far (de-chunked). done() once the whole
// response is in; a response delimited by the connection's close is done
// after eof(). The limits bound what a misbehaving peer can make us hold.
class ResponseParser {
public:
    explicit ResponseParser(size_t max_header_bytes = 64 * 1024) : max_header_(max_header_bytes) {}

    void feed(std::string_view bytes);
    void eof();

    bool headers_done() const noexcept { return stage_ > Stage::Headers; }
    bool done() const noexcept { return stage_ == Stage::Done; }
    const std::string& error() const noexcept { return error_; }
    int status() const noexcept { return status_; }
    // Header value by case-insensitive name; the first one if repeated.
    std::optional<std::string> header(std::string_view name) const;
    // Body bytes decoded since the last call.
    std::string take_body();
    // The connection can carry another request after this response.
    bool keep_alive() const noexcept { return keep_alive_; }

private:
    enum class Stage { Headers, Body, ChunkSize, ChunkData, ChunkDataEnd, Trailers, UntilClose, Done, Failed };
    void fail(std::string why);
    bool parse_headers();  // on a complete header block in buf_
    void step();

    size_t max_header_;
    Stage stage_ = Stage::Headers;
    std::string buf_;   // bytes not yet consumed (headers, chunk lines)
    std::string body_;  // decoded body not yet taken
    std::string error_;
    int status_ = 0;
    bool keep_alive_ = true;
    uint64_t remaining_ = 0;  // of the Content-Length body or the current chunk
    std::vector<std::pair<std::string, std::string>> headers_;
};

// Cuts a byte stream of JSON values written back to back (optionally
// separated by whitespace), as etcd's gateway streams watch responses, into
// whole top-level objects. Only objects are accepted at the top level;
// anything else, or an object larger than `max_object`, is an error.
class JsonObjectSplitter {
public:
    explicit JsonObjectSplitter(size_t max_object = 64u << 20) : max_(max_object) {}
    void feed(std::string_view bytes);
    // The next complete object, if one is in; nullopt otherwise (or on error).
    std::optional<std::string> next();
    const std::string& error() const noexcept { return error_; }

private:
    size_t max_;
    std::string buf_;
    size_t scanned_ = 0;  // bytes of buf_ already scanned for the current object
    std::string open_;    // the brackets open at scanned_, innermost last
    bool in_string_ = false, escape_ = false, started_ = false;
    std::string error_;
};

using protocol::base64_decode;  // keys and values in etcd's JSON gateway
using protocol::base64_encode;

// "http://host:port", "https://host:port" or "host:port" ([v6]:port too);
// the scheme defaults to `default_tls`. Fails on anything else.
struct Url {
    bool tls = false;
    std::string host;
    uint16_t port = 0;
    std::string to_string() const;
};
std::optional<Url> parse_url(std::string_view text, bool default_tls, uint16_t default_port);

}  // namespace pgrelay::topology::http
