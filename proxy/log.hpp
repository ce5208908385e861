// Logging: one line per event on stderr, "<UTC time> <LEVEL> <message>", written
// with a single write(2) so lines from different threads never interleave.
// The level is global and can change at run time (config reload).
#pragma once

#include <fmt/core.h>

#include <atomic>
#include <string>
#include <string_view>

namespace pgrelay::log {

enum class Level { Debug = 0, Info = 1, Warning = 2, Error = 3 };

bool parse_level(std::string_view s, Level& out) noexcept;
// Client-supplied text (user names, ...) with control characters and bytes
// that are not well-formed UTF-8 replaced by '?', so a client can neither
// forge log lines nor break JSON logs; at most 64 bytes, then "...".
std::string printable(std::string_view s);
void set_level(Level l) noexcept;
// One JSON object per line ({"ts","level","msg"}) instead of plain text.
void set_json(bool json) noexcept;
bool enabled(Level l) noexcept;
void write(Level l, std::string_view message) noexcept;

template <class... A>
void debug(fmt::format_string<A...> f, A&&... a) {
    if (enabled(Level::Debug)) write(Level::Debug, fmt::format(f, std::forward<A>(a)...));
}
template <class... A>
void info(fmt::format_string<A...> f, A&&... a) {
    if (enabled(Level::Info)) write(Level::Info, fmt::format(f, std::forward<A>(a)...));
}
template <class... A>
void warn(fmt::format_string<A...> f, A&&... a) {
    if (enabled(Level::Warning)) write(Level::Warning, fmt::format(f, std::forward<A>(a)...));
}
template <class... A>
void error(fmt::format_string<A...> f, A&&... a) {
    if (enabled(Level::Error)) write(Level::Error, fmt::format(f, std::forward<A>(a)...));
}

}  // namespace pgrelay::log
