// The sans-I/O HTTP pieces (topology/http.hpp): the response parser on
// Content-Length, chunked and read-until-close bodies, fed whole, split at
// every byte and byte by byte; malformed responses are errors, never a crash or
// a hang; the JSON object splitter on etcd's watch stream; base64 on RFC 4648's
// test vectors; store URLs.
#include <catch2/catch.hpp>

#include <random>
#include <string>

#include "topology/http.hpp"

using namespace pgrelay::topology::http;

namespace {

struct Parsed {
    std::string error;
    int status = 0;
    std::string body;
    bool done = false;
    bool keep_alive = true;
};

// Feeds `bytes` in pieces cut at `cuts` (positions), then EOF if asked.
Parsed parse(const std::string& bytes, const std::vector<size_t>& cuts, bool eof) {
    ResponseParser p;
    Parsed out;
    size_t from = 0;
    auto feed_to = [&](size_t to) {
        p.feed(std::string_view(bytes).substr(from, to - from));
        out.body += p.take_body();
        from = to;
    };
    for (size_t c : cuts) feed_to(c);
    feed_to(bytes.size());
    if (eof) p.eof();
    out.body += p.take_body();
    out.error = p.error();
    out.status = p.status();
    out.done = p.done();
    out.keep_alive = p.keep_alive();
    return out;
}

// The same response fed whole, split in two at every byte, and byte by byte
// must parse to the same thing.
Parsed parse_every_split(const std::string& bytes, bool eof = false) {
    const Parsed whole = parse(bytes, {}, eof);
    for (size_t i = 1; i < bytes.size(); ++i) {
        const Parsed split = parse(bytes, {i}, eof);
        INFO("split at byte " << i);
        REQUIRE(split.error == whole.error);
        REQUIRE(split.body == whole.body);
        REQUIRE(split.done == whole.done);
        REQUIRE(split.status == whole.status);
    }
    std::vector<size_t> all;
    for (size_t i = 1; i < bytes.size(); ++i) all.push_back(i);
    const Parsed bytewise = parse(bytes, all, eof);
    REQUIRE(bytewise.error == whole.error);
    REQUIRE(bytewise.body == whole.body);
    REQUIRE(bytewise.done == whole.done);
    return whole;
}

}  // namespace

TEST_CASE("http: Content-Length body, whole and split at every byte", "[http]") {
    const std::string r =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 45\r\n\r\n"
        "{\"etcdserver\":\"3.4.23\",\"etcdcluster\":\"3.4.0\"}";
    const Parsed p = parse_every_split(r);
    CHECK(p.error.empty());
    CHECK(p.done);
    CHECK(p.status == 200);
    CHECK(p.keep_alive);
    CHECK(p.body == "{\"etcdserver\":\"3.4.23\",\"etcdcluster\":\"3.4.0\"}");
}

TEST_CASE("http: chunked body with extensions and trailers", "[http]") {
    const std::string r =
        "HTTP/1.1 401 Unauthorized\r\nTrailer: Grpc-Trailer-Content-Type\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5;ext=1\r\nhello\r\n"
        "A\r\n, world!!!\r\n"
        "0\r\nGrpc-Trailer-Content-Type: application/grpc\r\n\r\n";
    const Parsed p = parse_every_split(r);
    CHECK(p.error.empty());
    CHECK(p.done);
    CHECK(p.status == 401);
    CHECK(p.body == "hello, world!!!");
}

TEST_CASE("http: a body up to the connection's close (HTTP/1.0, as Patroni's REST API answers)", "[http]") {
    const std::string r = "HTTP/1.0 200 OK\r\nServer: BaseHTTP/0.6 Python/3.11.2\r\nContent-Type: application/json\r\n\r\n{\"members\": []}";
    const Parsed open = parse(r, {}, false);
    CHECK_FALSE(open.done);
    CHECK(open.error.empty());
    const Parsed p = parse_every_split(r, true);
    CHECK(p.done);
    CHECK_FALSE(p.keep_alive);
    CHECK(p.body == "{\"members\": []}");
}

TEST_CASE("http: interim 100 Continue, 204 and Connection: close", "[http]") {
    const Parsed a = parse_every_split("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    CHECK(a.status == 200);
    CHECK(a.body == "ok");
    const Parsed b = parse_every_split("HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    CHECK(b.done);
    CHECK(b.body.empty());
    CHECK_FALSE(b.keep_alive);
    const Parsed c = parse_every_split("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n");
    CHECK(c.done);
    CHECK(c.error.empty());
}

TEST_CASE("http: a chunked stream hands over each piece as it arrives", "[http]") {
    ResponseParser p;
    p.feed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8e\r\n{\"resu");
    CHECK(p.headers_done());
    CHECK(p.take_body() == "{\"resu");
    p.feed("lt\":{}}");
    CHECK(p.take_body() == "lt\":{}}");
    CHECK_FALSE(p.done());
    p.eof();
    CHECK_FALSE(p.error().empty());  // closed mid-chunk
}

TEST_CASE("http: malformed responses are errors", "[http][garbage]") {
    const std::vector<std::pair<std::string, std::string>> bad = {
        {"garbage\r\n\r\n", "status line"},
        {"HTTP/2 200 OK\r\n\r\n", "status line"},
        {"HTTP/1.1 2x0 OK\r\n\r\n", "status code"},
        {"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "header"},
        {"HTTP/1.1 200 OK\r\n folded: value\r\n\r\n", "header"},
        {"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "Content-Length"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "Transfer-Encoding"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", "chunk size"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n", "chunk size"},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX", "CRLF"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabc", "after the end"},
    };
    for (const auto& [bytes, what] : bad) {
        INFO(bytes);
        const Parsed p = parse_every_split(bytes);
        CHECK_THAT(p.error, Catch::Contains(what));
        CHECK_FALSE(p.done);
    }
}

TEST_CASE("http: limits bound what a peer can make the parser hold", "[http][garbage]") {
    ResponseParser p(1024);
    p.feed("HTTP/1.1 200 OK\r\n");
    for (int i = 0; i < 100 && p.error().empty(); ++i) p.feed("X-Filler: " + std::string(20, 'x') + "\r\n");
    CHECK_THAT(p.error(), Catch::Contains("too large"));
    ResponseParser q;
    q.feed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 10 && q.error().empty(); ++i) q.feed(std::string(1000, '1'));
    CHECK_THAT(q.error(), Catch::Contains("too long"));
}

TEST_CASE("http: random and mutated bytes never crash or hang the parser", "[http][garbage][fuzz]") {
    std::mt19937 rng(20261201);
    const std::string seed =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n4\r\nabcd\r\n0\r\n\r\n";
    for (int i = 0; i < 20000; ++i) {
        std::string s = seed;
        const int edits = 1 + int(rng() % 6);
        for (int e = 0; e < edits; ++e) {
            const size_t at = rng() % (s.size() + 1);
            switch (rng() % 3) {
                case 0: s.insert(at, 1, char(rng())); break;
                case 1: if (at < s.size()) s.erase(at, 1); break;
                default: if (at < s.size()) s[at] = char(rng()); break;
            }
        }
        ResponseParser p;
        size_t from = 0;
        while (from < s.size()) {
            const size_t n = 1 + rng() % 16;
            p.feed(std::string_view(s).substr(from, n));
            p.take_body();
            from += n;
        }
        p.eof();
        CHECK((p.done() || !p.error().empty()));
    }
}

TEST_CASE("json splitter: objects back to back, split at every byte", "[http][json]") {
    const std::string stream =
        "{\"result\":{\"created\":true}}\n"
        "{\"result\":{\"events\":[{\"kv\":{\"key\":\"a}\\\"{[\"}}]}}\n\n"
        "  {\"error\":{\"message\":\"x\\\\\"}}{}";
    const std::vector<std::string> want = {"{\"result\":{\"created\":true}}",
                                           "{\"result\":{\"events\":[{\"kv\":{\"key\":\"a}\\\"{[\"}}]}}",
                                           "{\"error\":{\"message\":\"x\\\\\"}}", "{}"};
    for (size_t cut = 0; cut <= stream.size(); ++cut) {
        for (bool bytewise : {false, true}) {
            JsonObjectSplitter s;
            std::vector<std::string> got;
            auto drain = [&] {
                while (auto o = s.next()) got.push_back(*o);
            };
            if (bytewise) {
                for (char c : stream) {
                    s.feed(std::string_view(&c, 1));
                    drain();
                }
            } else {
                s.feed(stream.substr(0, cut));
                drain();
                s.feed(stream.substr(cut));
                drain();
            }
            INFO("cut " << cut << (bytewise ? " bytewise" : ""));
            CHECK(s.error().empty());
            CHECK(got == want);
        }
    }
}

TEST_CASE("json splitter: what is not a stream of objects is an error", "[http][json][garbage]") {
    for (const std::string bad : {"[1,2]", "\"str\"", "42", "}{", "{\"a\":1}]", "{]", "{\"a\":[}]"}) {
        JsonObjectSplitter s;
        s.feed(bad);
        while (s.next()) {
        }
        INFO(bad);
        CHECK_FALSE(s.error().empty());
        CHECK_FALSE(s.next());  // stays failed
    }
    JsonObjectSplitter big(64);
    big.feed("{\"k\":\"" + std::string(100, 'x'));
    CHECK_FALSE(big.next());
    CHECK_THAT(big.error(), Catch::Contains("too large"));
    std::mt19937 rng(7);
    for (int i = 0; i < 5000; ++i) {
        JsonObjectSplitter s(4096);
        std::string junk(1 + rng() % 200, ' ');
        for (auto& c : junk) c = "{}[]\"\\ax:,\n"[rng() % 12];
        s.feed(junk);
        int n = 0;
        while (s.next() && n < 1000) ++n;
        CHECK(n < 1000);
    }
}

TEST_CASE("base64: RFC 4648 section 10 test vectors, both ways", "[http][base64]") {
    const std::pair<std::string, std::string> v[] = {{"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},
                                                      {"foo", "Zm9v"}, {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="},
                                                      {"foobar", "Zm9vYmFy"}};
    for (const auto& [plain, enc] : v) {
        CHECK(base64_encode(plain) == enc);
        CHECK(base64_decode(enc) == plain);
    }
    CHECK(base64_encode("/service/pgrelay/") == "L3NlcnZpY2UvcGdyZWxheS8=");
    const std::string bytes("\x00\xff\xfe\x80", 4);
    CHECK(base64_decode(base64_encode(bytes)) == bytes);
    for (const char* bad : {"Zg=", "Z===", "Zm9v!", "Zg==Zg==", "=Zg=", "Zm=v", "Zh==", "Zm9="}) {
        INFO(bad);
        CHECK_FALSE(base64_decode(bad));
    }
}

TEST_CASE("store URLs: scheme, host, port, defaults", "[http][url]") {
    auto u = parse_url("http://10.0.0.1:2379", false, 2379);
    REQUIRE(u);
    CHECK_FALSE(u->tls);
    CHECK(u->host == "10.0.0.1");
    CHECK(u->port == 2379);
    u = parse_url("https://etcd-1.example:2381/", false, 2379);
    REQUIRE(u);
    CHECK(u->tls);
    CHECK(u->port == 2381);
    CHECK(u->to_string() == "https://etcd-1.example:2381");
    u = parse_url("etcd1", true, 2379);
    REQUIRE(u);
    CHECK(u->tls);
    CHECK(u->port == 2379);
    u = parse_url("[::1]:8008", false, 8008);
    REQUIRE(u);
    CHECK(u->host == "::1");
    CHECK(u->to_string() == "http://[::1]:8008");
    u = parse_url("[::1]", false, 8008);
    REQUIRE(u);
    CHECK(u->port == 8008);
    for (const char* bad : {"", "ftp://h:1", "http://", "h:", "h:0", "h:65536", "h:1:2", "http://h:1/path",
                            "user@h:1", "[::1", "[::1]x", "h :1"}) {
        INFO(bad);
        CHECK_FALSE(parse_url(bad, false, 1));
    }
}
