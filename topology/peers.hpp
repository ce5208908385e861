// The pgrelay instances that stand behind one name ("replicated appliances"):
// each registers itself in the DCS it follows (or is listed statically), and
// every instance keeps the live list here. Cancel keys carry the tag of the
// instance that issued them, so a CancelRequest that reaches another instance
// is forwarded to the right peer.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgrelay::topology {

// What an instance publishes about itself: the DCS entry's content.
struct InstanceInfo {
    std::string id;
    std::string peer_address;  // host:port where the other instances reach this one (its rw listener)
    std::string version;
    int64_t started = 0;       // Unix seconds
    friend bool operator==(const InstanceInfo&, const InstanceInfo&) = default;
};

// The 16 bits of a cancel key that name its instance: FNV-1a of the id,
// folded. Two ids can share a tag; PeerDirectory reports it.
uint16_t instance_tag(std::string_view id) noexcept;

// The DCS entry: {"id":..,"peer_address":..,"version":..,"started":..}.
std::string instance_json(const InstanceInfo& i);
std::optional<InstanceInfo> parse_instance_json(std::string_view body);

// host:port, with an IPv6 host in brackets; nullopt when malformed.
struct HostPort {
    std::string host;
    uint16_t port = 0;
};
std::optional<HostPort> parse_host_port(std::string_view s);

// The live instances other than this one. Written by the topology source on
// the control thread, read by cancel forwarding (any worker) and the admin
// listener; a mutex is enough: both are rare.
class PeerDirectory {
public:
    void set_self(InstanceInfo self);
    InstanceInfo self() const;
    // Peers listed in the configuration: always in the list, unless the
    // DCS has an entry with the same id (which then wins).
    void set_static(std::vector<InstanceInfo> list);
    // The whole list as the DCS has it now, self included or not. Logs
    // joins, departures and tag conflicts.
    void update(std::vector<InstanceInfo> all, std::string_view from);
    std::vector<InstanceInfo> peers() const;
    // Where to forward a cancel key carrying `tag`: every peer with that tag
    // (one, unless two ids collide), including one that left in the last
    // kDepartedGrace (a draining instance still answers cancels for its
    // sessions); never this instance (its tag, or its own peer_address).
    std::vector<InstanceInfo> peers_for_tag(uint16_t tag) const;
    static constexpr std::chrono::seconds kDepartedGrace{120};
    // Peers whose tag equals this instance's: their cancels cannot be told
    // apart from ours and are not forwarded.
    size_t tag_conflicts() const;
    uint64_t changes() const noexcept { return changes_.load(std::memory_order_relaxed); }

private:
    mutable std::mutex mu_;
    InstanceInfo self_;
    uint16_t self_tag_ = 0;
    void apply(std::string_view from);  // merges static_ and dynamic_ into peers_; mu_ held
    std::vector<InstanceInfo> static_, dynamic_;
    std::vector<InstanceInfo> peers_;
    std::vector<std::pair<InstanceInfo, std::chrono::steady_clock::time_point>> departed_;
    std::atomic<uint64_t> changes_{0};
};

}  // namespace pgrelay::topology
