// Static topology source: members listed in the config, checked by TCP connect
// every `interval`. Members that refuse connections become State::Stopped and
// stop receiving ro connections; the declared primary stays the write target
// (a static list has no authority to promote anyone).
#pragma once

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <memory>
#include <vector>

#include "topology/source.hpp"

namespace pgrelay::topology {

struct StaticSourceOptions {
    std::vector<Member> members;  // role Primary (at most one) or Replica; state ignored
    std::chrono::milliseconds interval{1000};
    std::chrono::milliseconds timeout{1000};
};

// Flow: construct on the control io_context, start(); every check round that
// changes some member's state publishes a new snapshot. stop() cancels the loop.
class StaticSource final : public Source {
public:
    StaticSource(boost::asio::io_context& ctx, SnapshotHub& hub, StaticSourceOptions opts);
    ~StaticSource() override;
    void start() override;
    void stop() override;
    void set_member_options(const std::map<std::string, uint32_t>& weights, const std::vector<std::string>& exclude,
                            bool allow_standby_leader) override;

    // The snapshot as configured, before any health check (all members Running).
    static std::shared_ptr<Topology> initial_snapshot(const std::vector<Member>& members);

private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

}  // namespace pgrelay::topology
