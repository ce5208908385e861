// HTTP response parsing and JSON stream splitting (http.hpp).
#include "topology/http.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>

namespace pgrelay::topology::http {

namespace {

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
           });
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

bool contains_token(std::string_view list, std::string_view token) {
    while (!list.empty()) {
        const size_t comma = list.find(',');
        if (iequals(trim(list.substr(0, comma)), token)) return true;
        if (comma == std::string_view::npos) break;
        list.remove_prefix(comma + 1);
    }
    return false;
}

constexpr size_t kMaxChunkLine = 4096;
constexpr uint64_t kMaxChunk = uint64_t(1) << 40;

}  // namespace

void ResponseParser::fail(std::string why) {
    stage_ = Stage::Failed;
    error_ = std::move(why);
    buf_.clear();
}

std::optional<std::string> ResponseParser::header(std::string_view name) const {
    for (const auto& [k, v] : headers_)
        if (iequals(k, name)) return v;
    return std::nullopt;
}

std::string ResponseParser::take_body() {
    std::string out;
    out.swap(body_);
    return out;
}

void ResponseParser::feed(std::string_view bytes) {
    if (stage_ == Stage::Failed || bytes.empty()) return;
    if (stage_ == Stage::Done) {
        fail("unexpected bytes after the end of the response");
        return;
    }
    buf_.append(bytes);
    step();
}

void ResponseParser::eof() {
    if (stage_ == Stage::UntilClose) {
        stage_ = Stage::Done;
    } else if (stage_ != Stage::Done && stage_ != Stage::Failed) {
        fail(stage_ == Stage::Headers ? "connection closed before the response headers"
                                      : "connection closed in the middle of the response body");
    }
}

bool ResponseParser::parse_headers() {
    const size_t end = buf_.find("\r\n\r\n");
    std::string_view block(buf_.data(), end);
    const size_t eol = block.find("\r\n");
    std::string_view status_line = block.substr(0, eol);
    // "HTTP/1.1 200 OK" (RFC 9112 section 4); the reason phrase may be empty.
    if (status_line.size() < 12 || status_line.substr(0, 7) != "HTTP/1." || status_line[8] != ' ') {
        fail("not an HTTP/1.x status line");
        return false;
    }
    const bool http10 = status_line[7] == '0';
    int code = 0;
    auto [p, ec] = std::from_chars(status_line.data() + 9, status_line.data() + 12, code);
    if (ec != std::errc() || p != status_line.data() + 12 || code < 100 || code > 999 ||
        (status_line.size() > 12 && status_line[12] != ' ')) {
        fail("bad HTTP status code");
        return false;
    }
    status_ = code;
    headers_.clear();
    std::string_view rest = eol == std::string_view::npos ? std::string_view() : block.substr(eol + 2);
    while (!rest.empty()) {
        const size_t e = rest.find("\r\n");
        std::string_view line = rest.substr(0, e);
        rest = e == std::string_view::npos ? std::string_view() : rest.substr(e + 2);
        const size_t colon = line.find(':');
        if (colon == std::string_view::npos || colon == 0 || line[0] == ' ' || line[0] == '\t') {
            fail("malformed HTTP header line");
            return false;
        }
        headers_.emplace_back(std::string(line.substr(0, colon)), std::string(trim(line.substr(colon + 1))));
    }
    buf_.erase(0, end + 4);

    if (code >= 100 && code < 200) {  // interim (100 Continue): the real response follows
        stage_ = Stage::Headers;
        return true;
    }
    const auto conn = header("Connection");
    keep_alive_ = http10 ? (conn && contains_token(*conn, "keep-alive")) : !(conn && contains_token(*conn, "close"));
    const auto te = header("Transfer-Encoding");
    const auto cl = header("Content-Length");
    if (code == 204 || code == 304) {
        stage_ = Stage::Done;
    } else if (te) {
        if (!contains_token(*te, "chunked")) {
            fail("unsupported Transfer-Encoding '" + *te + "'");
            return false;
        }
        stage_ = Stage::ChunkSize;
    } else if (cl) {
        uint64_t n = 0;
        auto [q, e2] = std::from_chars(cl->data(), cl->data() + cl->size(), n);
        if (e2 != std::errc() || q != cl->data() + cl->size() || cl->empty()) {
            fail("bad Content-Length");
            return false;
        }
        for (const auto& [k, v] : headers_)
            if (iequals(k, "Content-Length") && v != *cl) {
                fail("conflicting Content-Length headers");
                return false;
            }
        remaining_ = n;
        stage_ = n == 0 ? Stage::Done : Stage::Body;
    } else {
        keep_alive_ = false;
        stage_ = Stage::UntilClose;
    }
    return true;
}

void ResponseParser::step() {
    size_t pos = 0;  // consumed bytes of buf_
    // A line (without its CRLF) longer than kMaxChunkLine, or one that can
    // no longer end within it.
    auto line_too_long = [&](size_t crlf, size_t from) {
        return crlf == std::string::npos ? buf_.size() - from > kMaxChunkLine + 1 : crlf - from > kMaxChunkLine;
    };
    auto take = [&](uint64_t max) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(max, buf_.size() - pos));
        body_.append(buf_, pos, n);
        pos += n;
        return n;
    };
    for (;;) {
        switch (stage_) {
            case Stage::Headers: {
                buf_.erase(0, pos);
                pos = 0;
                // The limit holds however the bytes arrive: a block that
                // cannot end within it fails before its end is in.
                const size_t end = buf_.find("\r\n\r\n");
                if ((end == std::string::npos && buf_.size() >= max_header_) ||
                    (end != std::string::npos && end + 4 > max_header_)) {
                    fail("HTTP response headers too large");
                    return;
                }
                if (end == std::string::npos) return;
                if (!parse_headers()) return;
                continue;
            }
            case Stage::Body:
                remaining_ -= take(remaining_);
                if (remaining_ == 0) stage_ = Stage::Done;
                else break;
                continue;
            case Stage::ChunkSize: {
                const size_t e = buf_.find("\r\n", pos);
                if (line_too_long(e, pos)) {
                    fail("HTTP chunk size line too long");
                    return;
                }
                if (e == std::string::npos) break;
                std::string_view line(buf_.data() + pos, e - pos);
                line = trim(line.substr(0, line.find(';')));  // chunk extensions are ignored
                uint64_t n = 0;
                auto [q, ec] = std::from_chars(line.data(), line.data() + line.size(), n, 16);
                if (line.empty() || ec != std::errc() || q != line.data() + line.size() || n > kMaxChunk) {
                    fail("bad HTTP chunk size");
                    return;
                }
                pos = e + 2;
                remaining_ = n;
                stage_ = n == 0 ? Stage::Trailers : Stage::ChunkData;
                continue;
            }
            case Stage::ChunkData:
                remaining_ -= take(remaining_);
                if (remaining_ == 0) stage_ = Stage::ChunkDataEnd;
                else break;
                continue;
            case Stage::ChunkDataEnd:
                if (buf_.size() - pos < 2) break;
                if (buf_.compare(pos, 2, "\r\n") != 0) {
                    fail("HTTP chunk not followed by CRLF");
                    return;
                }
                pos += 2;
                stage_ = Stage::ChunkSize;
                continue;
            case Stage::Trailers: {
                const size_t e = buf_.find("\r\n", pos);
                if (line_too_long(e, pos)) {
                    fail("HTTP trailer line too long");
                    return;
                }
                if (e == std::string::npos) break;
                const bool last = e == pos;
                pos = e + 2;
                if (last) stage_ = Stage::Done;
                continue;
            }
            case Stage::UntilClose:
                take(buf_.size() - pos);
                break;
            case Stage::Done:
                if (pos < buf_.size()) {
                    fail("unexpected bytes after the end of the response");
                    return;
                }
                break;
            case Stage::Failed:
                return;
        }
        break;
    }
    buf_.erase(0, pos);
}

void JsonObjectSplitter::feed(std::string_view bytes) {
    if (!error_.empty()) return;
    buf_.append(bytes);
}

std::optional<std::string> JsonObjectSplitter::next() {
    if (!error_.empty()) return std::nullopt;
    if (!started_) {
        size_t ws = 0;
        while (ws < buf_.size() && (buf_[ws] == ' ' || buf_[ws] == '\n' || buf_[ws] == '\r' || buf_[ws] == '\t')) ++ws;
        buf_.erase(0, ws);
        if (buf_.empty()) return std::nullopt;
        if (buf_[0] != '{') {
            error_ = "the stream holds something other than a JSON object";
            buf_.clear();
            return std::nullopt;
        }
        started_ = true;
        scanned_ = 0;
        open_.clear();
        in_string_ = escape_ = false;
    }
    bool mismatched = false;
    // Never look past max_ bytes of one object: what lies beyond must not
    // change the verdict (too large), however the bytes were cut.
    for (; scanned_ < buf_.size() && scanned_ < max_; ++scanned_) {
        const char c = buf_[scanned_];
        if (in_string_) {
            if (escape_) escape_ = false;
            else if (c == '\\') escape_ = true;
            else if (c == '"') in_string_ = false;
            continue;
        }
        if (c == '"') {
            in_string_ = true;
        } else if (c == '{' || c == '[') {
            open_.push_back(c);
        } else if (c == '}' || c == ']') {
            if (open_.empty() || open_.back() != (c == '}' ? '{' : '[')) {
                mismatched = true;
                break;
            }
            open_.pop_back();
            if (open_.empty()) {
                std::string obj = buf_.substr(0, scanned_ + 1);
                buf_.erase(0, scanned_ + 1);
                started_ = false;
                return obj;
            }
        }
    }
    if (mismatched || scanned_ >= max_) {
        error_ = mismatched ? "unbalanced JSON in the stream" : "a JSON object in the stream is too large";
        buf_.clear();
    }
    return std::nullopt;
}

std::string Url::to_string() const {
    const bool v6 = host.find(':') != std::string::npos;
    return std::string(tls ? "https://" : "http://") + (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::optional<Url> parse_url(std::string_view text, bool default_tls, uint16_t default_port) {
    Url u;
    u.tls = default_tls;
    if (text.substr(0, 7) == "http://") {
        u.tls = false;
        text.remove_prefix(7);
    } else if (text.substr(0, 8) == "https://") {
        u.tls = true;
        text.remove_prefix(8);
    } else if (text.find("://") != std::string_view::npos) {
        return std::nullopt;
    }
    while (!text.empty() && text.back() == '/') text.remove_suffix(1);
    if (text.find_first_of("/?#@ ") != std::string_view::npos) return std::nullopt;
    std::string_view port;
    bool has_port = false;
    if (!text.empty() && text[0] == '[') {
        const size_t close = text.find(']');
        if (close == std::string_view::npos) return std::nullopt;
        u.host = std::string(text.substr(1, close - 1));
        std::string_view rest = text.substr(close + 1);
        if (!rest.empty()) {
            if (rest[0] != ':') return std::nullopt;
            port = rest.substr(1);
            has_port = true;
        }
    } else {
        const size_t colon = text.find(':');
        u.host = std::string(text.substr(0, colon));
        if (colon != std::string_view::npos) {
            port = text.substr(colon + 1);
            has_port = true;
        }
    }
    if (u.host.empty()) return std::nullopt;
    unsigned p = default_port;
    if (has_port) {
        auto [e, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
        if (port.empty() || ec != std::errc() || e != port.data() + port.size() || p == 0 || p > 65535)
            return std::nullopt;
    }
    u.port = static_cast<uint16_t>(p);
    return u;
}

}  // namespace pgrelay::topology::http
