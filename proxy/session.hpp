// One client connection, from accept to close: startup (SSL/GSS answers,
// CancelRequest, StartupMessage), routing, backend connect, then two half-duplex
// relay loops joined with ||. Runs as a coroutine on one worker thread.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <memory>

#include "proxy/cancel_registry.hpp"
#include "proxy/config.hpp"
#include "proxy/router.hpp"
#include "topology/source.hpp"

namespace pgrelay {

// What every session on one worker thread shares. Owned by the worker.
struct WorkerShared {
    std::shared_ptr<const Config> config;
    topology::SnapshotHub::Reader topology;
    Router* router;
    CancelRegistry* cancels;
};

// Accepted socket in, returns when the connection is over. Never throws.
boost::asio::awaitable<void> run_session(boost::asio::ip::tcp::socket client, PortRole role, WorkerShared& shared);

}  // namespace pgrelay
