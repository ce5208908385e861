// The admin HTTP listener: /metrics (Prometheus text), /health (200 while rw
// can route to a primary), /health/ro (200 while ro can route somewhere) and
// /topology (the current snapshot as JSON). Runs on the control thread; the
// Beast headers stay in admin.cpp.
#pragma once

#include <boost/asio/io_context.hpp>
#include <functional>
#include <memory>
#include <string>

#include "proxy/config.hpp"
#include "topology/peers.hpp"
#include "topology/source.hpp"

namespace pgrelay {

// Flow: construct (binds, throws if the address is taken), start() begins
// accepting on `ctx`, stop() closes the listener. `routing` returns the
// routing options in force (they change on reload).
class AdminServer {
public:
    AdminServer(boost::asio::io_context& ctx, const std::string& host, uint16_t port, const topology::SnapshotHub& hub,
                std::function<topology::RoutingOptions()> routing);
    ~AdminServer();
    void start();
    void stop();
    // This instance and its peers, for /topology (null: not shown).
    void set_peers(const topology::PeerDirectory* peers);
    // SIGTERM: /health and /health/ro answer 503 from now on, so outer
    // balancers move new connections elsewhere while sessions drain.
    void set_draining();

    // Exposed for tests: the body and status for a path.
    struct Reply {
        int status;
        std::string content_type;
        std::string body;
    };
    Reply handle(const std::string& target) const;

private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

// The snapshot as /topology renders it, with this instance and its live
// peers when `peers` is set.
std::string topology_json(const topology::Topology* t, const topology::RoutingOptions& routing,
                          const topology::PeerDirectory* peers = nullptr);

}  // namespace pgrelay
