// SnapshotHub (source.hpp).
#include "topology/source.hpp"

namespace pgrelay::topology {

SnapshotHub::SnapshotHub() = default;

void SnapshotHub::publish(std::shared_ptr<Topology> t) {
    TopologyPtr before, after;
    std::vector<Listener> listeners;
    {
        std::lock_guard lock(mu_);
        t->version = version_.load(std::memory_order_relaxed) + 1;
        before = current_;
        current_ = std::move(t);
        after = current_;
        version_.store(after->version, std::memory_order_release);
        listeners = listeners_;
    }
    for (auto& l : listeners) l(before, after);
}

TopologyPtr SnapshotHub::latest() const {
    std::lock_guard lock(mu_);
    return current_;
}

void SnapshotHub::on_change(Listener l) {
    std::lock_guard lock(mu_);
    listeners_.push_back(std::move(l));
}

}  // namespace pgrelay::topology
