// Catch checks shared by the black-box suites (test_pool.cpp, test_patroni.cpp).
#pragma once

#include <catch2/catch.hpp>

#include <string>

#include "fixtures.hpp"

namespace pgrelay::test {

// The query running on `who` ends with 57014 once `cancel` (a CancelRequest)
// is sent to host:port, and the canceller's connection gets no answer (as
// from PostgreSQL).
inline void expect_cancelled(RawLogin& who, const std::string& host, uint16_t port, const std::string& cancel) {
    std::string answer;
    const auto err = cancel_running_query(who, host, port, cancel, &answer);
    CHECK(answer.empty());
    REQUIRE(err);
    CHECK(err->sqlstate == "57014");
}

}  // namespace pgrelay::test
