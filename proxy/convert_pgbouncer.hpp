// `pgrelay --convert-pgbouncer FILE`: turns a PgBouncer pgbouncer.ini into an
// equivalent pgrelay.toml, and lists what it cannot carry over. Pure text in,
// text out (convert_pgbouncer); convert_pgbouncer_file reads the file and the
// files it %includes.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgrelay {

// One thing the converter did not (or not exactly) carry over, or an error.
struct ConvertNote {
    std::string file;   // the ini file it comes from
    int line = 0;       // 1-based; 0 = the file as a whole
    std::string key;    // e.g. "[pgbouncer] logfile", "[databases] mydb"
    std::string value;  // as written (secrets masked)
    std::string why;
    bool error = false;  // the input is unusable (see ConvertResult::ok)
    // "FILE:LINE: KEY = VALUE: WHY" (one line, for standard error).
    std::string describe() const;
};

struct ConvertResult {
    // false when a file could not be read or a line could not be parsed; then
    // `toml` is empty and the notes with `error` say why.
    bool ok = false;
    std::string toml;
    std::vector<ConvertNote> notes;
};

// Returns the text of an %include'd file, or nullopt when it cannot be read.
using IncludeReader = std::function<std::optional<std::string>(const std::string& path)>;

// `source` names the text in the output's header and in the notes. Without a
// reader, every %include is an error.
ConvertResult convert_pgbouncer(std::string_view ini_text, std::string_view source = "pgbouncer.ini",
                                const IncludeReader& read_include = {});

// Reads `path` (and its %includes, relative to the working directory as in
// PgBouncer) and converts it.
ConvertResult convert_pgbouncer_file(const std::string& path);

}  // namespace pgrelay
