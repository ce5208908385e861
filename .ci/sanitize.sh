#!/usr/bin/env bash
# Builds the whole suite with AddressSanitizer (LeakSanitizer included) and
# UndefinedBehaviorSanitizer (PGRELAY_SANITIZE=ON, Debug) in build-asan and runs
# every ctest test there (extra arguments go to ctest, e.g. -R unit_tests),
# including the integration tests, whose pgrelay processes are instrumented
# too. A pgrelay's stderr goes to a log in a temporary directory, so:
#  - ASan/LSan reports of every process go to files in
#    build-asan/sanitizer-reports/ (log_path);
#  - UBSan reports (gcc's separate UBSan runtime ignores log_path) are found in
#    the pgrelay logs the fixtures keep in build-asan/sanitizer-reports/pgrelay-logs/.
# Either kind of report fails the run, even if every test passed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD_DIR=${ASAN_BUILD_DIR:-build-asan}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=${ASAN_BUILD_TYPE:-Debug} -DPGRELAY_SANITIZE=ON
cmake --build "$BUILD_DIR" -j "$(nproc)"

REPORTS=$ROOT/$BUILD_DIR/sanitizer-reports
rm -rf "$REPORTS"
mkdir -p "$REPORTS/pgrelay-logs"
export PGRELAY_TEST_LOG_DIR=$REPORTS/pgrelay-logs
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:check_initialization_order=1:strict_init_order=1:log_path=$REPORTS/asan"
export LSAN_OPTIONS="suppressions=$ROOT/.ci/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

status=0
(cd "$BUILD_DIR" && ctest --output-on-failure --timeout 2400 "$@") || status=$?

found=0
for f in "$REPORTS"/asan.*; do
  [[ -e $f ]] || continue
  echo "==== sanitizer report $f"
  cat "$f"
  found=1
done
for f in "$REPORTS"/pgrelay-logs/*.log; do
  [[ -e $f ]] || continue
  if grep -qE "runtime error:|ERROR: (Address|Leak)Sanitizer" "$f"; then
    echo "==== sanitizer report in pgrelay log $f"
    grep -E -A 30 "runtime error:|ERROR: (Address|Leak)Sanitizer" "$f"
    found=1
  fi
done
if ((found)); then
  echo "sanitize: FAILED: sanitizer reports (in $REPORTS)"
  exit 1
fi
if ((status != 0)); then
  echo "sanitize: FAILED: ctest exited with $status"
  exit "$status"
fi
echo "sanitize: all tests passed under ASan+UBSan, no sanitizer reports"
