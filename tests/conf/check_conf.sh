#!/usr/bin/env bash
# Checks the operations files in conf/: the Prometheus alerting rules pass
# promtool, the Grafana dashboard is valid JSON titled "pgrelay", both use only
# metric names pgrelay exports, and the systemd unit is there.
# Usage (ctest runs it from the repo root): bash tests/conf/check_conf.sh <repo-root>
set -euo pipefail

root="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
alerts="$root/conf/pgrelay-alerts.yml"
dashboard="$root/conf/grafana-dashboard.json"
service="$root/conf/pgrelay.service"

passed=0
ok() {
    passed=$((passed + 1))
    echo "ok: $*"
}
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# Every metric family /metrics exposes (proxy/metrics.cpp), with the series
# names of its histograms. Keep in step with that file.
known_metrics=(
    pgrelay_client_connections
    pgrelay_client_connections_total
    pgrelay_held_connections
    pgrelay_held_connections_total
    pgrelay_hold_seconds_bucket
    pgrelay_hold_seconds_sum
    pgrelay_hold_seconds_count
    pgrelay_query_seconds_bucket
    pgrelay_query_seconds_sum
    pgrelay_query_seconds_count
    pgrelay_sessions_terminated_total
    pgrelay_client_tls_total
    pgrelay_backend_connections
    pgrelay_backend_connections_total
    pgrelay_client_bytes_received_total
    pgrelay_client_bytes_sent_total
    pgrelay_queries_total
    pgrelay_transactions_total
    pgrelay_errors_total
    pgrelay_cancel_requests_total
    pgrelay_topology_changes_total
    pgrelay_primary_changes_total
    pgrelay_reroute_seconds_bucket
    pgrelay_reroute_seconds_sum
    pgrelay_reroute_seconds_count
    pgrelay_dcs_connected
    pgrelay_dcs_reconnects_total
    pgrelay_dcs_resyncs_total
    pgrelay_dcs_endpoint_failures_total
    pgrelay_zookeeper_connected
    pgrelay_zookeeper_reconnects_total
    pgrelay_zookeeper_session_expiries_total
    pgrelay_primary_available
    pgrelay_member_is_primary
    pgrelay_member_up
    pgrelay_member_ro_eligible
    pgrelay_member_lag_bytes
    pgrelay_pool_clients_waiting
    pgrelay_pool_servers_active
    pgrelay_pool_servers_idle
    pgrelay_pool_wait_seconds_bucket
    pgrelay_client_tls_direct_total
    pgrelay_instance_info
    pgrelay_peers
    pgrelay_peer_info
    pgrelay_peer_tag_conflicts
)

for f in "$alerts" "$dashboard"; do
    [[ -f "$f" ]] || fail "missing $f"
done

# 1. Alerting rules.
command -v promtool >/dev/null || fail "promtool not found (install prometheus, or the Debian package prometheus)"
if ! out=$(promtool check rules "$alerts" 2>&1); then
    echo "$out" >&2
    fail "promtool check rules $alerts"
fi
ok "promtool check rules: $(echo "$out" | grep -o 'SUCCESS.*' || echo SUCCESS)"

expected_alerts=(PgrelayDown PgrelayNoPrimary PgrelayReplicaLagging PgrelayNoReadReplica
    PgrelayDcsConnectionLost PgrelayConnectionsHeld PgrelayFrequentPrimaryChanges PgrelayBackendErrors
    PgrelayPoolExhausted PgrelayPeerMissing PgrelayCancelTagConflict)
for a in "${expected_alerts[@]}"; do
    grep -Eq "^[[:space:]]*-[[:space:]]*alert:[[:space:]]*${a}[[:space:]]*$" "$alerts" || fail "alert $a not in $alerts"
done
ok "all ${#expected_alerts[@]} expected alerts defined"

# 2. Dashboard.
python3 - "$dashboard" <<'EOF' || fail "dashboard $dashboard"
import json, sys

try:
    with open(sys.argv[1]) as f:
        d = json.load(f)
except ValueError as e:
    sys.exit(f"not valid JSON: {e}")
if d.get("title") != "pgrelay":
    sys.exit(f'title is {d.get("title")!r}, expected "pgrelay"')
if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
    sys.exit(f'schemaVersion {d.get("schemaVersion")!r} < 36')
variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
ds = variables.get("datasource")
if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
    sys.exit('no "datasource" template variable of type datasource/prometheus')
if "instance" not in variables:
    sys.exit('no "instance" template variable')
if not any(p.get("targets") for p in d.get("panels", [])):
    sys.exit("no panel with queries")
EOF
ok "dashboard is valid JSON titled \"pgrelay\" (schemaVersion >= 36, datasource and instance variables)"

# 3. Metric names: nothing the proxy does not export (a typo gives an empty
# panel or an alert that never fires, silently).
unknown=$(grep -ohE 'pgrelay_[a-z_]+' "$alerts" "$dashboard" | sort -u |
    grep -vxF -f <(printf '%s\n' "${known_metrics[@]}") || true)
if [[ -n "$unknown" ]]; then
    echo "unknown metric names in $alerts / $dashboard:" >&2
    while read -r m; do echo "  $m"; done <<<"$unknown" >&2
    exit 1
fi
used=$(grep -ohE 'pgrelay_[a-z_]+' "$alerts" "$dashboard" | sort -u | wc -l)
ok "all $used metric names used are exported by pgrelay"

# 4. systemd unit (only that it is there: systemd-analyze may be missing, and
# it would fail on the unit's absent binary and user anyway).
[[ -f "$service" ]] || fail "missing $service"
grep -q '^ExecStart=' "$service" || fail "$service has no ExecStart="
ok "conf/pgrelay.service exists"

echo "conf: $passed checks passed"
