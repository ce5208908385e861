// log::printable: what a client can put into pgrelay's log through a user or
// database name.
#include <catch2/catch.hpp>

#include <string>

#include "proxy/log.hpp"

using pgrelay::log::printable;
using namespace std::string_literals;

TEST_CASE("printable keeps UTF-8 text and replaces control bytes and invalid UTF-8", "[log]") {
    CHECK(printable("alice") == "alice");
    CHECK(printable("Jürgen_日本_🐘") == "Jürgen_日本_🐘");
    CHECK(printable("a\nb\rc\x1b[31m\x7f") == "a?b?c?[31m?");
    CHECK(printable("nul\0x"s) == "nul?x");
    // Lone continuation bytes, truncated sequences, overlong forms, UTF-16
    // surrogates and code points above U+10FFFF are not UTF-8.
    CHECK(printable("\x80x") == "?x");
    CHECK(printable("\xc3") == "?");
    CHECK(printable("\xe6\x97x") == "??x");
    CHECK(printable("\xc0\xaf") == "??");
    CHECK(printable("\xe0\x80\xaf") == "???");
    CHECK(printable("\xed\xa0\x80") == "???");
    CHECK(printable("\xf4\x90\x80\x80") == "????");
    CHECK(printable("\xff\xfe") == "??");
}

TEST_CASE("printable cuts at 64 bytes without splitting a character", "[log]") {
    CHECK(printable(std::string(64, 'a')) == std::string(64, 'a'));
    CHECK(printable(std::string(65, 'a')) == std::string(64, 'a') + "...");
    // 63 ASCII bytes then a 2-byte character: it would end past byte 64.
    CHECK(printable(std::string(63, 'a') + "é") == std::string(63, 'a') + "?...");
    CHECK(printable(std::string(62, 'a') + "é") == std::string(62, 'a') + "é");
}
