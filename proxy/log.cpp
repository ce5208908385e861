// Logger implementation (log.hpp).
#include "proxy/log.hpp"

#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <string>

namespace pgrelay::log {

namespace {
std::atomic<int> g_level{static_cast<int>(Level::Info)};
std::atomic<bool> g_json{false};

void json_escape(std::string& out, std::string_view s) {
    for (char c : s) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\t': out += "\\t"; break;
            default:
                if (static_cast<unsigned char>(c) < 0x20) {
                    char b[8];
                    snprintf(b, sizeof b, "\\u%04x", c);
                    out += b;
                } else {
                    out.push_back(c);
                }
        }
    }
}
constexpr std::string_view kNames[] = {"DEBUG", "INFO", "WARN", "ERROR"};
}  // namespace

bool parse_level(std::string_view s, Level& out) noexcept {
    if (s == "debug") out = Level::Debug;
    else if (s == "info") out = Level::Info;
    else if (s == "warning" || s == "warn") out = Level::Warning;
    else if (s == "error") out = Level::Error;
    else return false;
    return true;
}

namespace {

// Length of the well-formed UTF-8 sequence at the start of `s` (RFC 3629: no
// overlong forms, no surrogates, at most U+10FFFF), or 0.
size_t utf8_sequence(std::string_view s) {
    const auto b = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
    const unsigned char c = b(0);
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf;  // allowed range of the second byte
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) n = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else {
        return 0;
    }
    if (s.size() < n || b(1) < lo || b(1) > hi) return 0;
    for (size_t i = 2; i < n; ++i)
        if ((b(i) & 0xc0) != 0x80) return 0;
    return n;
}

}  // namespace

std::string printable(std::string_view s) {
    constexpr size_t kMax = 64;
    std::string out;
    size_t i = 0;
    while (i < s.size() && i < kMax) {
        const auto c = static_cast<unsigned char>(s[i]);
        const size_t n = utf8_sequence(s.substr(i, std::min(s.size(), kMax) - i));
        if (n == 0 || c < 0x20 || c == 0x7f) {
            out.push_back('?');  // control byte, or not UTF-8 (or cut by the limit)
            ++i;
            continue;
        }
        out.append(s.substr(i, n));
        i += n;
    }
    if (s.size() > kMax) out += "...";
    return out;
}

void set_json(bool json) noexcept { g_json.store(json, std::memory_order_relaxed); }

void set_level(Level l) noexcept { g_level.store(static_cast<int>(l), std::memory_order_relaxed); }

bool enabled(Level l) noexcept { return static_cast<int>(l) >= g_level.load(std::memory_order_relaxed); }

void write(Level l, std::string_view message) noexcept {
    try {
        timeval tv{};
        gettimeofday(&tv, nullptr);
        tm utc{};
        gmtime_r(&tv.tv_sec, &utc);
        char stamp[40];
        const size_t n = strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &utc);
        std::string line;
        line.reserve(message.size() + 64);
        char ms[8];
        snprintf(ms, sizeof ms, ".%03dZ", static_cast<int>(tv.tv_usec / 1000));
        if (g_json.load(std::memory_order_relaxed)) {
            line += "{\"ts\":\"";
            line.append(stamp, n);
            line += ms;
            line += "\",\"level\":\"";
            line += kNames[static_cast<int>(l)];
            line += "\",\"msg\":\"";
            json_escape(line, message);
            line += "\"}\n";
        } else {
            line.append(stamp, n);
            line += ms;
            line.push_back(' ');
            line.append(kNames[static_cast<int>(l)]);
            line.push_back(' ');
            line.append(message);
            line.push_back('\n');
        }
        const char* p = line.data();
        size_t left = line.size();
        while (left > 0) {
            const ssize_t w = ::write(2, p, left);
            if (w <= 0) break;
            p += w;
            left -= size_t(w);
        }
    } catch (...) {
        // Logging must never take the proxy down (e.g. bad_alloc).
    }
}

}  // namespace pgrelay::log
