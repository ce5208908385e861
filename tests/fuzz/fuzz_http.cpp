// libFuzzer target for the sans-I/O HTTP pieces pgrelay reads etcd and
// Patroni's REST API with (topology/http.hpp). Invariants checked on every
// input: the response parser ends in the same state (status, body, done,
// error) whether the bytes come whole or in pieces the input chooses; it
// never holds more than the limits; the JSON splitter yields the same objects
// either way, each one balanced; base64 round-trips.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "topology/http.hpp"

using namespace pgrelay::topology::http;

namespace {

[[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "fuzz_http invariant failed: %s\n", what);
    std::abort();
}

struct Outcome {
    int status = 0;
    std::string body, error;
    bool done = false;
    std::vector<std::string> objects;
    std::string split_error;
};

// Feeds `s` to a parser (and its body to a splitter) in pieces of the sizes
// `cuts` cycles through (0: whole).
Outcome run(std::string_view s, std::string_view cuts, bool eof) {
    ResponseParser p(4096);
    JsonObjectSplitter j(4096);
    Outcome o;
    size_t at = 0, k = 0;
    auto drain = [&] {
        std::string b = p.take_body();
        o.body += b;
        j.feed(b);
        while (auto obj = j.next()) o.objects.push_back(*obj);
    };
    while (at < s.size()) {
        size_t n = cuts.empty() ? s.size() : 1 + static_cast<uint8_t>(cuts[k++ % cuts.size()]) % 64;
        n = std::min(n, s.size() - at);
        p.feed(s.substr(at, n));
        drain();
        at += n;
    }
    if (eof) p.eof();
    drain();
    o.status = p.status();
    o.error = p.error();
    o.done = p.done();
    o.split_error = j.error();
    return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 2) return 0;
    const size_t ncuts = data[0] % 16;
    const bool eof = data[1] & 1;
    if (size < 2 + ncuts) return 0;
    const std::string_view cuts(reinterpret_cast<const char*>(data) + 2, ncuts);
    const std::string_view s(reinterpret_cast<const char*>(data) + 2 + ncuts, size - 2 - ncuts);

    const Outcome whole = run(s, {}, eof);
    const Outcome pieces = run(s, cuts, eof);
    if (whole.error != pieces.error || whole.body != pieces.body || whole.done != pieces.done ||
        whole.status != pieces.status)
        fail("the parser depends on how the bytes were cut");
    if (whole.objects != pieces.objects || whole.split_error != pieces.split_error)
        fail("the splitter depends on how the bytes were cut");
    if (whole.done && !whole.error.empty()) fail("done and failed at once");
    for (const auto& obj : whole.objects) {
        if (obj.size() < 2 || obj.front() != '{' || obj.back() != '}') fail("an object that is not {...}");
        if (obj.size() > 4096) fail("an object beyond the limit");
    }

    // base64 both ways, and the decoder on arbitrary text.
    const std::string enc = base64_encode(s);
    const auto dec = base64_decode(enc);
    if (!dec || *dec != s) fail("base64 does not round-trip");
    if (auto d = base64_decode(s)) {
        if (base64_encode(*d) != s) fail("base64 accepted a non-canonical encoding");
    }
    // URLs: whatever parses prints back to something that parses the same.
    if (auto u = parse_url(s, data[1] & 2, 2379)) {
        auto again = parse_url(u->to_string(), false, 1);
        if (!again || again->host != u->host || again->port != u->port || again->tls != u->tls)
            fail("a parsed URL does not survive to_string");
    }
    return 0;
}
