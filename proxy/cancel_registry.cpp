// CancelRegistry (cancel_registry.hpp). Proxy pids come from a counter (unique
// while in use), secrets from getrandom(2): the secret is what makes a cancel
// key unguessable, as pg_strong_random makes PostgreSQL's.
#include "proxy/cancel_registry.hpp"

#include <sys/random.h>

namespace pgrelay {

namespace {
uint32_t random_u32() {
    uint32_t v = 0;
    if (getrandom(&v, sizeof v, 0) != sizeof v) {
        // getrandom only fails before the entropy pool is ready at early boot.
        v = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(&v)) ^ 0x9e3779b9u;
    }
    return v;
}
}  // namespace

CancelRegistry::CancelRegistry() : next_pid_(random_u32() & 0x3fffffff) {}

protocol::CancelKey CancelRegistry::add(CancelTarget target) { return add_entry(std::move(target)); }

protocol::CancelKey CancelRegistry::add_entry(std::optional<CancelTarget> target) {
    const int32_t secret = static_cast<int32_t>(random_u32());
    for (;;) {
        // Positive pids look like real ones to clients that print them.
        const int32_t pid = static_cast<int32_t>((next_pid_.fetch_add(1, std::memory_order_relaxed) & 0x7fffffff) | 1u << 16);
        Shard& s = shard(pid);
        std::lock_guard lock(s.mu);
        if (s.by_pid.try_emplace(pid, Entry{secret, std::move(target)}).second) return {pid, secret};
    }
}

std::optional<CancelTarget> CancelRegistry::find(protocol::CancelKey key) const {
    const Shard& s = shard(key.pid);
    std::lock_guard lock(s.mu);
    auto it = s.by_pid.find(key.pid);
    if (it == s.by_pid.end() || it->second.secret != key.secret) return std::nullopt;
    return it->second.target;
}

void CancelRegistry::retarget(protocol::CancelKey key, std::optional<CancelTarget> target) {
    Shard& s = shard(key.pid);
    std::lock_guard lock(s.mu);
    auto it = s.by_pid.find(key.pid);
    if (it != s.by_pid.end() && it->second.secret == key.secret) it->second.target = std::move(target);
}

void CancelRegistry::remove(protocol::CancelKey key) {
    Shard& s = shard(key.pid);
    std::lock_guard lock(s.mu);
    auto it = s.by_pid.find(key.pid);
    if (it != s.by_pid.end() && it->second.secret == key.secret) s.by_pid.erase(it);
}

size_t CancelRegistry::size() const {
    size_t n = 0;
    for (const auto& s : shards_) {
        std::lock_guard lock(s.mu);
        n += s.by_pid.size();
    }
    return n;
}

}  // namespace pgrelay
