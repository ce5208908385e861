// Maps the cancel keys pgrelay hands to clients onto the real backend and its
// BackendKeyData. Shared by every thread and both ports, so a CancelRequest that
// lands on any thread or port finds its session. Touched once per session start,
// end and cancel (and, for pooled clients, once per server they take), never
// per message.
//
// A key pgrelay issues: the pid's bits 15..30 are this instance's tag (see
// topology/peers.hpp), bits 0..14 random; the secret is random, as long as
// the client's protocol calls for (4 bytes in 3.0, 32 in 3.2 as PostgreSQL
// 18 sends, or as long as the backend's own in passthrough). A key is found
// by its pid and secret together, the secret compared in constant time.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "protocol/messages.hpp"
#include "topology/peers.hpp"

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
    explicit CancelRegistry(uint16_t instance_tag = 0) : tag_(instance_tag) {}
    uint16_t tag() const noexcept { return tag_; }
    // Where keys with another instance's tag go (null: nowhere, they are dropped).
    void set_peers(const topology::PeerDirectory* peers) noexcept { peers_ = peers; }
    const topology::PeerDirectory* peers() const noexcept { return peers_; }
    // The tag of the instance that issued `key`.
    static uint16_t tag_of(const protocol::CancelKey& key) noexcept {
        return static_cast<uint16_t>(static_cast<uint32_t>(key.pid) >> 15);
    }

    // Throws std::runtime_error when no random bytes can be had.
    protocol::CancelKey add(CancelTarget target, size_t secret_len = protocol::kMinCancelSecret);
    // A pooled client's key: its target is the server it holds now, set with
    // retarget() when it gets one and cleared when it gives it back. A cancel
    // for a key without a target is dropped (the client runs nothing).
    protocol::CancelKey add_pooled(size_t secret_len = protocol::kMinCancelSecret) {
        return add_entry(std::nullopt, secret_len);
    }
    void retarget(const protocol::CancelKey& key, std::optional<CancelTarget> target);
    std::optional<CancelTarget> find(const protocol::CancelKey& key) const;
    void remove(const protocol::CancelKey& key);
    size_t size() const;

private:
    static constexpr size_t kShards = 16;
    protocol::CancelKey add_entry(std::optional<CancelTarget> target, size_t secret_len);
    struct Entry {
        std::string secret;
        std::optional<CancelTarget> target;
    };
    // The pid and the secret's first 4 bytes: unique among live keys.
    static uint64_t slot(const protocol::CancelKey& key) noexcept;
    struct Shard {
        mutable std::mutex mu;
        std::unordered_map<uint64_t, Entry> by_slot;
    };
    Shard& shard(uint64_t slot) const { return shards_[(slot ^ (slot >> 32)) % kShards]; }
    // The live entry for `key`, or null; the shard's lock must be held.
    static Entry* match(Shard& s, const protocol::CancelKey& key, uint64_t slot);

    uint16_t tag_;
    const topology::PeerDirectory* peers_ = nullptr;
    mutable std::array<Shard, kShards> shards_;
};

}  // namespace pgrelay
