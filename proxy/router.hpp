// Router: turns the current topology snapshot and the routing options into the
// ordered list of backends a new connection should try, per port role.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "proxy/config.hpp"
#include "topology/routing.hpp"
#include "topology/topology.hpp"

namespace pgrelay {

struct Target {
    std::string member;
    std::string host;
    uint16_t port = 0;
    std::string address() const;
};

struct RouteDecision {
    std::vector<Target> candidates;  // try in order; empty -> refuse with sqlstate/message
    const char* sqlstate = "";
    std::string message;
};

class Router {
public:
    explicit Router(topology::RoutingOptions opts) : opts_(opts) {}
    RouteDecision route(PortRole role, const topology::Topology* t);

private:
    topology::RoutingOptions opts_;
    std::atomic<uint64_t> ro_rr_{0};
};

}  // namespace pgrelay
