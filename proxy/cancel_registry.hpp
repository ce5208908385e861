// Maps the cancel keys pgrelay hands to clients onto the real backend and its
// BackendKeyData. Shared by every thread and both ports, so a CancelRequest that
// lands on any thread or port finds its session. Touched once per session start,
// end and cancel, never per message.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "protocol/messages.hpp"

namespace pgrelay {

struct CancelTarget {
    std::string member;  // for logs
    std::string host;
    uint16_t port = 0;
    protocol::CancelKey backend_key;
};

// Flow: add() when a backend sends BackendKeyData -> the key to give the client;
// find() for an incoming CancelRequest; remove() when the session ends.
class CancelRegistry {
public:
    CancelRegistry();
    protocol::CancelKey add(CancelTarget target);
    // A pooled client's key: its target is the server it holds now, set with
    // retarget() when it gets one and cleared when it gives it back. A cancel
    // for a key without a target is dropped (the client runs nothing).
    protocol::CancelKey add_pooled() { return add_entry(std::nullopt); }
    void retarget(protocol::CancelKey key, std::optional<CancelTarget> target);
    std::optional<CancelTarget> find(protocol::CancelKey key) const;
    void remove(protocol::CancelKey key);
    size_t size() const;

private:
    static constexpr size_t kShards = 16;
    protocol::CancelKey add_entry(std::optional<CancelTarget> target);
    struct Entry {
        int32_t secret;
        std::optional<CancelTarget> target;
    };
    struct Shard {
        mutable std::mutex mu;
        std::unordered_map<int32_t, Entry> by_pid;
    };
    Shard& shard(int32_t pid) const { return shards_[static_cast<uint32_t>(pid) % kShards]; }

    mutable std::array<Shard, kShards> shards_;
    std::atomic<uint32_t> next_pid_;
};

}  // namespace pgrelay
