// pgrelay entry point: command line, config loading, and the top-level catch.
// Exit codes: 0 ok, 1 runtime failure (e.g. port in use), 2 bad config or usage.
#include <cstdio>
#include <cstring>
#include <string>

#include "proxy/config.hpp"
#include "proxy/convert_pgbouncer.hpp"
#include "proxy/tls.hpp"
#include "proxy/log.hpp"
#include "proxy/server.hpp"

#ifndef PGRELAY_VERSION
#define PGRELAY_VERSION "0.0.0"
#endif

namespace {

void usage(FILE* out) {
    std::fputs(
        "Usage: pgrelay --config FILE [--check-config]\n"
        "       pgrelay --check-config FILE\n"
        "       pgrelay --convert-pgbouncer PGBOUNCER.INI\n"
        "       pgrelay --version | --help\n"
        "\n"
        "PostgreSQL-aware proxy: a read-write port that reaches the primary and a\n"
        "read-only port that balances over the replicas.\n"
        "\n"
        "  -c, --config FILE   TOML configuration (see conf/pgrelay.toml)\n"
        "      --check-config [FILE]\n"
        "                      validate the configuration and exit (0 valid, 2 invalid)\n"
        "      --convert-pgbouncer PGBOUNCER.INI\n"
        "                      print an equivalent pgrelay.toml on standard output and\n"
        "                      one line per setting it cannot carry over on standard\n"
        "                      error, and exit 0; exit 2, printing nothing on standard\n"
        "                      output, when the file (or an %include) cannot be read\n"
        "                      or has a line that does not parse\n"
        "  -V, --version       print the version and exit\n"
        "  -h, --help          print this help and exit\n",
        out);
}

}  // namespace

int main(int argc, char** argv) {
    std::string config_path;
    std::string pgbouncer_path;
    bool convert = false;
    bool check_only = false;
    bool two_files = false;
    auto set_path = [&](std::string p) {
        two_files = two_files || !config_path.empty();
        config_path = std::move(p);
    };
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "-h" || a == "--help") {
            usage(stdout);
            return 0;
        } else if (a == "-V" || a == "--version") {
            std::printf("pgrelay %s\n", PGRELAY_VERSION);
            return 0;
        } else if (a == "--check-config") {
            check_only = true;
            // `pgrelay --check-config FILE`, as well as `--config FILE --check-config`.
            if (i + 1 < argc && argv[i + 1][0] != '-') set_path(argv[++i]);
        } else if (a == "--convert-pgbouncer" && i + 1 < argc && !convert) {
            convert = true;
            pgbouncer_path = argv[++i];
        } else if ((a == "-c" || a == "--config") && i + 1 < argc) {
            set_path(argv[++i]);
        } else if (a.rfind("--config=", 0) == 0) {
            set_path(a.substr(9));
        } else {
            std::fprintf(stderr, "pgrelay: unknown argument '%s'\n\n", a.c_str());
            usage(stderr);
            return 2;
        }
    }
    if (convert) {
        if (check_only || !config_path.empty()) {
            std::fprintf(stderr, "pgrelay: --convert-pgbouncer takes no other option\n\n");
            usage(stderr);
            return 2;
        }
        const pgrelay::ConvertResult r = pgrelay::convert_pgbouncer_file(pgbouncer_path);
        for (const auto& n : r.notes) std::fprintf(stderr, "pgrelay: %s\n", n.describe().c_str());
        if (!r.ok) {
            std::fprintf(stderr, "pgrelay: cannot convert %s\n", pgbouncer_path.c_str());
            return 2;
        }
        std::fwrite(r.toml.data(), 1, r.toml.size(), stdout);
        return std::fflush(stdout) == 0 ? 0 : 1;
    }
    if (two_files) {
        std::fprintf(stderr, "pgrelay: more than one configuration file given\n\n");
        usage(stderr);
        return 2;
    }
    if (config_path.empty()) {
        std::fprintf(stderr, "pgrelay: --config FILE is required\n\n");
        usage(stderr);
        return 2;
    }

    pgrelay::Config config;
    std::shared_ptr<const pgrelay::TlsContexts> tls;
    try {
        config = pgrelay::load_config(config_path);
        tls = pgrelay::make_tls_contexts(config);  // certificate and key files are part of the configuration
    } catch (const pgrelay::ConfigError& e) {
        std::fprintf(stderr, "pgrelay: invalid configuration: %s\n", e.describe().c_str());
        return 2;
    }
    if (check_only) {
        std::printf("pgrelay: configuration %s is valid\n", config_path.c_str());
        return 0;
    }
    pgrelay::log::set_level(config.log_level);
    pgrelay::log::set_json(config.log_json);
    try {
        pgrelay::log::info("pgrelay {} starting with {}", PGRELAY_VERSION, config_path);
        pgrelay::Server server(std::move(config), std::move(tls));
        return server.run();
    } catch (const std::exception& e) {
        pgrelay::log::error("fatal: {}", e.what());
        return 1;
    }
}
