#!/usr/bin/env bash
# Builds the protocol codec fuzzer (tests/fuzz/fuzz_codec.cpp), then the HTTP
# reader's (fuzz_http.cpp, FUZZ_HTTP_SECONDS, default 30), with clang-14 in
# build-fuzz and runs it for FUZZ_SECONDS (default 60) on a copy of the
# committed corpus, so the tree is left untouched. Fails on any crash, failed
# invariant, sanitizer report, leak or hang; the input that triggered it is
# kept in build-fuzz/fuzz-artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${FUZZ_BUILD_DIR:-build-fuzz}
cmake -S . -B "$BUILD_DIR" -DPGRELAY_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)"
FUZZER=$PWD/$BUILD_DIR/tests/fuzz/fuzz_codec

WORK=$(mktemp -d /tmp/pgrelay-fuzz-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# The committed seeds must be exactly what their generator writes.
python3 tests/fuzz/gen_corpus.py "$WORK/seeds" >/dev/null
if ! diff -r tests/fuzz/corpus "$WORK/seeds" >/dev/null; then
  echo "fuzz: tests/fuzz/corpus differs from tests/fuzz/gen_corpus.py's output: rerun it and commit"
  exit 1
fi
cp -r tests/fuzz/corpus "$WORK/corpus"
ARTIFACTS=$PWD/$BUILD_DIR/fuzz-artifacts
rm -rf "$ARTIFACTS"
mkdir -p "$ARTIFACTS"

export UBSAN_OPTIONS=print_stacktrace=1
echo "fuzz: running fuzz_codec for ${FUZZ_SECONDS:-60} s on $(ls "$WORK/corpus" | wc -l) seeds"
if ! "$FUZZER" -max_total_time="${FUZZ_SECONDS:-60}" -max_len=12288 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$ARTIFACTS/" "$WORK/corpus" >"$WORK/log" 2>&1; then
  tail -n 80 "$WORK/log"
  echo "fuzz: FAILED; the input is in $ARTIFACTS/, replay it with: $FUZZER $ARTIFACTS/<file>"
  exit 1
fi
grep -E "^(#[0-9]+[[:space:]]+DONE|Done|stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added)" "$WORK/log"
echo "fuzz: no finding; corpus grew to $(ls "$WORK/corpus" | wc -l) inputs"

# The HTTP/JSON reader of the etcd and Patroni REST sources, seeded with the
# recorded etcd answers (two leading bytes: no cuts, no EOF; the fuzzer varies them).
HTTP_FUZZER=$PWD/$BUILD_DIR/tests/fuzz/fuzz_http
mkdir -p "$WORK/http-corpus"
for f in tests/topology/data/etcd/*.http; do
  { printf '\000\000'; cat "$f"; } >"$WORK/http-corpus/$(basename "$f")"
done
echo "fuzz: running fuzz_http for ${FUZZ_HTTP_SECONDS:-30} s"
if ! "$HTTP_FUZZER" -max_total_time="${FUZZ_HTTP_SECONDS:-30}" -max_len=16384 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$ARTIFACTS/" "$WORK/http-corpus" >"$WORK/http-log" 2>&1; then
  tail -n 80 "$WORK/http-log"
  echo "fuzz: fuzz_http FAILED; the input is in $ARTIFACTS/, replay it with: $HTTP_FUZZER $ARTIFACTS/<file>"
  exit 1
fi
grep -E "^(Done|stat::number_of_executed_units|stat::new_units_added)" "$WORK/http-log"
echo "fuzz: fuzz_http: no finding"
