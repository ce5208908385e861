#!/usr/bin/env bash
# Builds the libFuzzer targets with clang-14 in build-fuzz and runs each:
#  - fuzz_codec (the protocol codec), FUZZ_SECONDS (default 60), on a copy of
#    the committed corpus, so the tree is left untouched;
#  - fuzz_http (the etcd / Patroni REST reader), FUZZ_HTTP_SECONDS (30);
#  - fuzz_auth (SCRAM, md5, auth_file), FUZZ_AUTH_SECONDS (30). Fails on any crash, failed
# invariant, sanitizer report, leak or hang; the input that triggered it is
# kept in build-fuzz/fuzz-artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${FUZZ_BUILD_DIR:-build-fuzz}
cmake -S . -B "$BUILD_DIR" -DPGRELAY_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)"

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
# fuzz NAME SECONDS MAX_LEN CORPUS_DIR: runs build-fuzz/tests/fuzz/NAME; a
# finding fails the script with the input kept in $ARTIFACTS.
fuzz() {
  local name=$1 seconds=$2 max_len=$3 corpus=$4 bin=$PWD/$BUILD_DIR/tests/fuzz/$1
  echo "fuzz: running $name for $seconds s on $(ls "$corpus" | wc -l) seeds"
  if ! "$bin" -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -print_final_stats=1 \
      -artifact_prefix="$ARTIFACTS/" "$corpus" >"$WORK/$name.log" 2>&1; then
    tail -n 80 "$WORK/$name.log"
    echo "fuzz: $name FAILED; the input is in $ARTIFACTS/, replay it with: $bin $ARTIFACTS/<file>"
    exit 1
  fi
  grep -E "^(#[0-9]+[[:space:]]+DONE|Done|stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added)" \
    "$WORK/$name.log"
  echo "fuzz: $name: no finding; corpus grew to $(ls "$corpus" | wc -l) inputs"
}

fuzz fuzz_codec "${FUZZ_SECONDS:-60}" 12288 "$WORK/corpus"

# The HTTP/JSON reader of the etcd and Patroni REST sources, seeded with the
# recorded etcd answers (two leading bytes: no cuts, no EOF; the fuzzer varies them).
mkdir -p "$WORK/http-corpus"
for f in tests/topology/data/etcd/*.http; do
  { printf '\000\000'; cat "$f"; } >"$WORK/http-corpus/$(basename "$f")"
done
fuzz fuzz_http "${FUZZ_HTTP_SECONDS:-30}" 16384 "$WORK/http-corpus"

# The SCRAM/md5 exchanges and auth_file, seeded with RFC 7677's messages.
mkdir -p "$WORK/auth-corpus"
printf '\000n,,n=user,r=rOprNGfwEbeRWgbNEkqO\000c=biws,r=rOprNGfwEbeRWgbNEkqO%%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=' >"$WORK/auth-corpus/server"
printf '\001r=rOprNGfwEbeRWgbNEkqO%%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096\000v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=' >"$WORK/auth-corpus/client"
printf '\002"u" "md57541d4e65fae11bd07f18dc6fe2b02bc"\n; c\n"v" "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$3DlBySc+s/2KNH8X3yoh92ql+jqyBg4S9YC4wzI+Q1U=:mlXrwpSGXno0AZW8UnEHc7+u1VKgJixbuj89yD/bTtY="\n' >"$WORK/auth-corpus/userlist"
printf '\003md57541d4e65fae11bd07f18dc6fe2b02bc\000md5aaaa' >"$WORK/auth-corpus/md5"
printf '\004\062SCRAM-SHA-256\000\000\000\000\040n,,n=user,r=rOprNGfwEbeRWgbNEkqOc=biws,r=rOprNGfwEbeRWgbNEkqO%%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=' >"$WORK/auth-corpus/frontend"
fuzz fuzz_auth "${FUZZ_AUTH_SECONDS:-30}" 4096 "$WORK/auth-corpus"
