// Logger implementation (log.hpp).
#include "proxy/log.hpp"

#include <sys/time.h>
#include <unistd.h>

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

std::string printable(std::string_view s) {
    std::string out;
    for (char c : s.substr(0, 64)) out.push_back(static_cast<unsigned char>(c) < 0x20 || c == 0x7f ? '?' : c);
    if (s.size() > 64) out += "...";
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
