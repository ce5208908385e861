// Instance entries and the peer directory (peers.hpp).
#include "topology/peers.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>
#include <algorithm>
#include <charconv>
#include <set>

#include "proxy/log.hpp"

namespace pgrelay::topology {

namespace json = boost::json;

uint16_t instance_tag(std::string_view id) noexcept {
    uint32_t h = 2166136261u;
    for (unsigned char c : id) {
        h ^= c;
        h *= 16777619u;
    }
    return static_cast<uint16_t>(h ^ (h >> 16));
}

std::string instance_json(const InstanceInfo& i) {
    json::object o;
    o["id"] = i.id;
    o["peer_address"] = i.peer_address;
    o["version"] = i.version;
    o["started"] = i.started;
    return json::serialize(o);
}

std::optional<InstanceInfo> parse_instance_json(std::string_view body) {
    boost::system::error_code ec;
    json::value v = json::parse(body, ec);
    if (ec || !v.is_object()) return std::nullopt;
    const json::object& o = v.get_object();
    auto str = [&](const char* k) -> std::optional<std::string> {
        const json::value* f = o.if_contains(k);
        if (!f || !f->is_string()) return std::nullopt;
        return std::string(f->get_string());
    };
    InstanceInfo i;
    auto id = str("id");
    auto addr = str("peer_address");
    if (!id || id->empty() || !addr || !parse_host_port(*addr)) return std::nullopt;
    i.id = std::move(*id);
    i.peer_address = std::move(*addr);
    i.version = str("version").value_or("");
    if (const json::value* s = o.if_contains("started"); s && s->is_int64()) i.started = s->get_int64();
    return i;
}

std::optional<HostPort> parse_host_port(std::string_view s) {
    HostPort hp;
    std::string_view port;
    if (!s.empty() && s.front() == '[') {
        const size_t close = s.find(']');
        if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':') return std::nullopt;
        hp.host = std::string(s.substr(1, close - 1));
        port = s.substr(close + 2);
    } else {
        const size_t colon = s.rfind(':');
        if (colon == std::string_view::npos || s.find(':') != colon) return std::nullopt;
        hp.host = std::string(s.substr(0, colon));
        port = s.substr(colon + 1);
    }
    unsigned v = 0;
    auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), v);
    if (hp.host.empty() || ec != std::errc() || p != port.data() + port.size() || v == 0 || v > 65535) return std::nullopt;
    hp.port = static_cast<uint16_t>(v);
    return hp;
}

void PeerDirectory::set_self(InstanceInfo self) {
    std::lock_guard lock(mu_);
    self_tag_ = instance_tag(self.id);
    self_ = std::move(self);
}

InstanceInfo PeerDirectory::self() const {
    std::lock_guard lock(mu_);
    return self_;
}

void PeerDirectory::set_static(std::vector<InstanceInfo> list) {
    std::lock_guard lock(mu_);
    static_ = std::move(list);
    apply("[instance] peers");
}

void PeerDirectory::update(std::vector<InstanceInfo> all, std::string_view from) {
    std::lock_guard lock(mu_);
    dynamic_ = std::move(all);
    apply(from);
}

void PeerDirectory::apply(std::string_view from) {
    std::vector<InstanceInfo> all;
    std::set<std::string> ids;
    for (const auto* list : {&dynamic_, &static_})  // the DCS's entry wins over a static one
        for (const auto& i : *list)
            if (i.id != self_.id && ids.insert(i.id).second) all.push_back(i);
    std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
    if (all == peers_) return;
    const auto now = std::chrono::steady_clock::now();
    std::erase_if(departed_, [&](const auto& d) { return now - d.second > kDepartedGrace || ids.count(d.first.id); });
    for (const auto& p : all) {
        if (std::any_of(peers_.begin(), peers_.end(), [&](const auto& q) { return q.id == p.id; })) continue;
        log::info("peers: instance {} at {} (pgrelay {}) joined ({})", log::printable(p.id), log::printable(p.peer_address),
                  log::printable(p.version), from);
        if (instance_tag(p.id) == self_tag_)
            log::error("peers: instance {} has this instance's cancel tag {} (ids {} and {} collide); cancels "
                       "between the two cannot be forwarded: give one of them another [instance] id",
                       log::printable(p.id), self_tag_, log::printable(p.id), log::printable(self_.id));
        if (p.peer_address == self_.peer_address)
            log::error("peers: instance {} has this instance's peer_address {}: cancels for its sessions cannot reach "
                       "it; set [instance] peer_address to an address the others can reach",
                       log::printable(p.id), log::printable(p.peer_address));
    }
    for (const auto& p : peers_)
        if (!ids.count(p.id)) {
            log::info("peers: instance {} at {} left ({})", log::printable(p.id), log::printable(p.peer_address), from);
            departed_.emplace_back(p, now);
        }
    peers_ = std::move(all);
    changes_.fetch_add(1, std::memory_order_relaxed);
}

std::vector<InstanceInfo> PeerDirectory::peers() const {
    std::lock_guard lock(mu_);
    return peers_;
}

std::vector<InstanceInfo> PeerDirectory::peers_for_tag(uint16_t tag) const {
    std::lock_guard lock(mu_);
    std::vector<InstanceInfo> out;
    if (tag == self_tag_) return out;
    auto take = [&](const InstanceInfo& p) {
        if (instance_tag(p.id) == tag && p.peer_address != self_.peer_address) out.push_back(p);
    };
    for (const auto& p : peers_) take(p);
    const auto now = std::chrono::steady_clock::now();
    for (const auto& [p, left] : departed_)
        if (now - left <= kDepartedGrace) take(p);
    return out;
}

size_t PeerDirectory::tag_conflicts() const {
    std::lock_guard lock(mu_);
    return static_cast<size_t>(
        std::count_if(peers_.begin(), peers_.end(), [&](const auto& p) { return instance_tag(p.id) == self_tag_; }));
}

}  // namespace pgrelay::topology
