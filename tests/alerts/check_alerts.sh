#!/usr/bin/env bash
# Unit tests of the alert rules (conf/pgrelay-alerts.yml) with promtool, no
# server needed: the ctest alert_rules.
#   1. the rules pass `promtool check rules`;
#   2. every alert has tests in tests/alerts/pgrelay-alerts.test.yml, and the
#      tests name no alert the rules lack;
#   3. rules and tests use only metric names proxy/metrics.cpp renders;
#   4. `promtool test rules` passes;
#   5. the tests catch broken rules: they must fail on mutants of the rules,
#      one per alert with a `for:` (that one removed: the alert's own tests
#      must notice), and one whose annotations render another label.
# Usage: bash tests/alerts/check_alerts.sh [repo-root]
set -euo pipefail

root="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
rules="$root/conf/pgrelay-alerts.yml"
tests="$root/tests/alerts/pgrelay-alerts.test.yml"
metrics_src="$root/proxy/metrics.cpp"

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
command -v promtool >/dev/null || fail "promtool not found (Debian package prometheus)"
for f in "$rules" "$tests" "$metrics_src"; do [[ -f "$f" ]] || fail "missing $f"; done

# 1.
out=$(promtool check rules "$rules" 2>&1) || { echo "$out" >&2; fail "promtool check rules $rules"; }
echo "ok: promtool check rules ($(grep -o 'SUCCESS.*' <<<"$out"))"

# 2.
defined=$(sed -nE 's/^[[:space:]]*-[[:space:]]*alert:[[:space:]]*([A-Za-z0-9_]+)[[:space:]]*$/\1/p' "$rules" | sort -u)
tested=$(sed -nE 's/^[[:space:]]*alertname:[[:space:]]*([A-Za-z0-9_]+)[[:space:]]*$/\1/p' "$tests" | sort -u)
[[ -n "$defined" ]] || fail "no alert found in $rules"
untested=$(comm -23 <(echo "$defined") <(echo "$tested"))
[[ -z "$untested" ]] || fail "alerts without tests in $tests: $(echo $untested)"
unknown=$(comm -13 <(echo "$defined") <(echo "$tested"))
[[ -z "$unknown" ]] || fail "$tests tests alerts $rules does not define: $(echo $unknown)"
echo "ok: all $(wc -l <<<"$defined") alerts have tests"

# 3. Names as rendered: a histogram family also gives _bucket, _sum, _count.
exported=$(grep -oE '"pgrelay_[a-z_]+' "$metrics_src" | tr -d '"' | sort -u |
    sed -E 'p; s/$/_bucket/p; s/_bucket$/_sum/p; s/_sum$/_count/' | sort -u)
used=$(grep -ohE 'pgrelay_[a-z_]+' "$rules" "$tests" | sort -u)
missing=$(comm -23 <(echo "$used") <(echo "$exported"))
[[ -z "$missing" ]] || fail "metric names not in $metrics_src: $(echo $missing)"
echo "ok: the $(wc -l <<<"$used") metric names used are rendered by proxy/metrics.cpp"

# 4.
out=$(promtool test rules "$tests" 2>&1) || { echo "$out" >&2; fail "promtool test rules $tests"; }
echo "ok: promtool test rules $(basename "$tests")"

# 5. The test file names its rules as ../../conf/pgrelay-alerts.yml: mutants
# go into the same layout in a temp dir.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/conf" "$tmp/tests/alerts"
cp "$tests" "$tmp/tests/alerts/"
mutant() {  # mutant WHAT FILE: promtool test rules must fail on the mutated rules in FILE
    cmp -s "$rules" "$2" && fail "mutant '$1' changed nothing"
    if promtool test rules "$tmp/tests/alerts/$(basename "$tests")" >"$tmp/out" 2>&1; then
        fail "the tests pass on rules with $1"
    fi
}
mutated="$tmp/conf/pgrelay-alerts.yml"
sed -E 's/\$labels\.instance/$labels.job/g' "$rules" >"$mutated"
mutant 'annotations rendering $labels.job instead of $labels.instance' "$mutated"
echo "ok: the tests fail when the annotations render another label"
# Each alert's for: on its own: that alert's own tests must notice.
with_for=$(awk '/^[[:space:]]*-[[:space:]]*alert:/ {cur = $3} /^[[:space:]]*for:/ {print cur}' "$rules")
for a in $with_for; do
    awk -v a="$a" '/^[[:space:]]*-[[:space:]]*alert:/ {cur = $3} !(cur == a && /^[[:space:]]*for:/)' "$rules" >"$mutated"
    mutant "no for: on $a" "$mutated"
    grep -q "name: $a," "$tmp/out" || { cat "$tmp/out" >&2; fail "removing the for: of $a is not caught by its own tests"; }
done
echo "ok: removing the for: of any of the $(wc -w <<<"$with_for") alerts that have one fails that alert's tests"
echo "alert rules: all checks passed"
