#!/usr/bin/env bash
# The man pages and the README say the same as their sources and the binary:
#  - README.md's "Running pgrelay" section is docs/man/pgrelay.1.md (mkman.py);
#  - both generated pages render without a groff or man warning;
#  - every option `pgrelay --help` lists is in pgrelay(1), and the reverse;
#  - pgrelay.toml(5) has every [table] of conf/pgrelay.toml.
# (That pgrelay.toml(5) documents every key the parser accepts, with its reload
# behaviour, is tests/proxy/test_config_docs.cpp.)
# Usage: tests/docs/check_docs.sh SOURCE_DIR MAN_DIR PGRELAY_BINARY
set -euo pipefail
SRC=$1 MAN=$2 BIN=$3
fail() { echo "check_docs: FAIL: $*" >&2; exit 1; }

python3 "$SRC/docs/man/mkman.py" --check-readme || fail "README.md and docs/man/pgrelay.1.md differ"

for page in pgrelay.1 pgrelay.toml.5; do
  [[ -s $MAN/$page ]] || fail "$MAN/$page missing"
  warnings=$(MANWIDTH=80 man --warnings=w -l "$MAN/$page" 2>&1 >/dev/null || true)
  [[ -z $warnings ]] || fail "$page: $warnings"
done

rendered=$(MANWIDTH=200 man -l "$MAN/pgrelay.1" 2>/dev/null)
help_opts=$("$BIN" --help | grep -oE -- '(^|[ ,])--?[a-zA-Z][a-zA-Z-]*' | tr -d ' ,' | sort -u)
[[ -n $help_opts ]] || fail "no options in pgrelay --help"
for o in $help_opts; do
  grep -qE -- "(^|[ ,])$o([ ,=]|$)" <<<"$rendered" || fail "pgrelay --help lists $o, pgrelay(1) does not"
done
man_opts=$(sed -n '/^OPTIONS/,/^[A-Z]/p' <<<"$rendered" | grep -oE -- '^ {7}--?[a-zA-Z][a-zA-Z-]*(, --[a-zA-Z-]+)?' |
           tr ',' '\n' | tr -d ' ' | sort -u)
[[ -n $man_opts ]] || fail "no options in pgrelay(1)"
for o in $man_opts; do
  grep -qE -- "(^|[ ,])$o([ ,=]|$)" <<<"$("$BIN" --help)" || fail "pgrelay(1) documents $o, pgrelay --help does not"
done

tables=$(grep -oE '^#? ?\[\[?[a-z_.]+\]\]?' "$SRC/conf/pgrelay.toml" | sed -E 's/^# ?//' | sort -u)
page5=$(MANWIDTH=200 man -l "$MAN/pgrelay.toml.5" 2>/dev/null)
for t in $tables; do
  grep -qF -- "$t" <<<"$page5" || fail "pgrelay.toml(5) lacks $t"
done
echo "check_docs: README, pgrelay(1), pgrelay.toml(5) and --help agree ($(wc -w <<<"$help_opts") options, $(wc -w <<<"$tables") tables)"
