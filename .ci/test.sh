#!/usr/bin/env bash
# The test command: install dependencies, build, run the whole suite (unit and
# integration tests against real PostgreSQL and Patroni on ZooKeeper and etcd,
# the fault campaign and a 6-round soak on each DCS) with ctest; then the same
# suite under ASan+UBSan (.ci/sanitize.sh), except the benchmark smoke run (it
# exercises the harness, which the first pass already did, and costs two
# minutes under ASan), the soak, and on etcd the cases that do not depend on
# the DCS (tests/CMakeLists.txt), and the operator-facing checks that test
# files rather than code paths (docs_check, package: the package is the
# release build's); then the protocol fuzzer (.ci/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/deps.sh
bash .ci/build.sh
(cd "${BUILD_DIR:-build}" && ctest --output-on-failure --timeout 1500)
bash .ci/sanitize.sh -E '^(bench_smoke|docs_check|package|alert_rules)$'
bash .ci/fuzz.sh
