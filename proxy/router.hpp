// Router: turns the current topology snapshot and the routing options into the
// ordered list of backends a new connection should try, per port role.
#pragma once

#include <atomic>
#include <mutex>
#include <string>
#include <unordered_map>
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
    bool primary_last = false;       // ro: the last candidate is the primary (fallback)
    const char* sqlstate = "";
    std::string message;
};

// Flow: route() per new connection; opened()/closed() around every backend
// connection of the ro port, which least_conn balances on. Thread-safe; the
// counters take a mutex once per connection, never per message.
class Router {
public:
    explicit Router(topology::RoutingOptions opts) : opts_(opts) {}
    RouteDecision route(PortRole role, const topology::Topology* t);
    // Config reload: new connections use the new options at once.
    void set_options(const topology::RoutingOptions& opts);
    topology::RoutingOptions options() const;
    void opened(const std::string& member);
    void closed(const std::string& member);
    uint32_t open_count(const std::string& member) const;

private:
    topology::RoutingOptions opts_;
    std::atomic<uint64_t> ro_rr_{0};
    mutable std::mutex mu_;
    std::unordered_map<std::string, uint32_t> open_;  // ro backend connections by member
};

}  // namespace pgrelay
