// The running proxy: N worker threads (one io_context each) accepting on the rw
// and ro ports with SO_REUSEPORT, so the kernel spreads connections over threads
// without a shared accept queue, plus a control thread for the topology source
// and signals.
#pragma once

#include <memory>

#include "proxy/config.hpp"
#include "proxy/tls.hpp"

namespace pgrelay {

// Flow: Server s(config, make_tls_contexts(config)); s.run() blocks until SIGINT/SIGTERM; returns the
// process exit code. Throws on setup failure (e.g. a port already in use).
class Server {
public:
    Server(Config config, std::shared_ptr<const TlsContexts> tls);
    ~Server();
    int run();

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace pgrelay
