// CancelRegistry (cancel_registry.hpp). Pids and secrets come from
// getrandom(2): the secret is what makes a cancel key unguessable, as
// pg_strong_random makes PostgreSQL's.
#include "proxy/cancel_registry.hpp"

#include <sys/random.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "protocol/crypto.hpp"

namespace pgrelay {

namespace {
void fill_random(void* out, size_t n) {
    auto* p = static_cast<uint8_t*>(out);
    while (n > 0) {
        const ssize_t got = getrandom(p, n, 0);
        if (got <= 0) {
            // getrandom only fails before the entropy pool is ready at early
            // boot (or under seccomp): OpenSSL's generator, else no key at all.
            if (!protocol::crypto::random_bytes(p, n)) throw std::runtime_error("no random bytes for a cancel key");
            return;
        }
        p += got;
        n -= static_cast<size_t>(got);
    }
}
}  // namespace

uint64_t CancelRegistry::slot(const protocol::CancelKey& key) noexcept {
    uint32_t head = 0;
    std::memcpy(&head, key.secret.data(), std::min(key.secret.size(), sizeof head));
    return static_cast<uint64_t>(static_cast<uint32_t>(key.pid)) << 32 | head;
}

CancelRegistry::Entry* CancelRegistry::match(Shard& s, const protocol::CancelKey& key, uint64_t slot) {
    auto it = s.by_slot.find(slot);
    if (it == s.by_slot.end() || it->second.secret.size() != key.secret.size()) return nullptr;
    if (!protocol::crypto::equal(it->second.secret.data(), key.secret.data(), key.secret.size())) return nullptr;
    return &it->second;
}

protocol::CancelKey CancelRegistry::add(CancelTarget target, size_t secret_len) {
    return add_entry(std::move(target), secret_len);
}

protocol::CancelKey CancelRegistry::add_entry(std::optional<CancelTarget> target, size_t secret_len) {
    secret_len = std::clamp(secret_len, protocol::kMinCancelSecret, protocol::kMaxCancelSecret);
    protocol::CancelKey key;
    key.secret.resize(secret_len);
    for (;;) {
        uint16_t low = 0;
        fill_random(&low, sizeof low);
        fill_random(key.secret.data(), key.secret.size());
        // A positive pid (bit 31 clear) looks like a real one to clients that print it.
        key.pid = static_cast<int32_t>(static_cast<uint32_t>(tag_) << 15 | (low & 0x7fffu));
        if (key.pid == 0) continue;
        const uint64_t sl = slot(key);
        Shard& s = shard(sl);
        std::lock_guard lock(s.mu);
        // 47 random bits: a clash with a live key is rare, and drawn again.
        if (s.by_slot.try_emplace(sl, Entry{key.secret, std::move(target)}).second) return key;
    }
}

std::optional<CancelTarget> CancelRegistry::find(const protocol::CancelKey& key) const {
    if (key.secret.size() < protocol::kMinCancelSecret) return std::nullopt;
    const uint64_t sl = slot(key);
    Shard& s = shard(sl);
    std::lock_guard lock(s.mu);
    const Entry* e = match(s, key, sl);
    if (!e) return std::nullopt;
    return e->target;
}

void CancelRegistry::retarget(const protocol::CancelKey& key, std::optional<CancelTarget> target) {
    const uint64_t sl = slot(key);
    Shard& s = shard(sl);
    std::lock_guard lock(s.mu);
    if (Entry* e = match(s, key, sl)) e->target = std::move(target);
}

void CancelRegistry::remove(const protocol::CancelKey& key) {
    const uint64_t sl = slot(key);
    Shard& s = shard(sl);
    std::lock_guard lock(s.mu);
    if (match(s, key, sl)) s.by_slot.erase(sl);
}

size_t CancelRegistry::size() const {
    size_t n = 0;
    for (const auto& s : shards_) {
        std::lock_guard lock(s.mu);
        n += s.by_slot.size();
    }
    return n;
}

}  // namespace pgrelay
