#!/usr/bin/env bash
# Checks the operations files in conf/: the Prometheus alerting rules pass
# promtool, the Grafana dashboard is valid JSON titled "pgrelay", both use only
# metric names pgrelay exports, the systemd unit is there, and what
# `pgrelay --convert-pgbouncer` makes of PgBouncer configurations (Debian's own
# /etc/pgbouncer/pgbouncer.ini and a richer one written here) passes
# `pgrelay --check-config`, with what it cannot carry over on stderr.
# Usage (ctest runs it from the repo root):
#   bash tests/conf/check_conf.sh <repo-root> [<pgrelay binary>]
# The binary defaults to $PGRELAY_BIN, else <repo-root>/${BUILD_DIR:-build}/proxy/pgrelay.
set -euo pipefail

root="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
pgrelay_bin="${2:-${PGRELAY_BIN:-$root/${BUILD_DIR:-build}/proxy/pgrelay}}"
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

# 5. pgrelay --convert-pgbouncer: the result passes --check-config, and stderr
# names what could not be carried over (one line each).
[[ -x "$pgrelay_bin" ]] || fail "no pgrelay binary at $pgrelay_bin (build it, or pass it as the second argument)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# convert NAME INI: converts into $tmp/NAME.toml and $tmp/NAME.err, then checks
# the result with --check-config.
convert() {
    local name=$1 ini=$2 rc=0
    "$pgrelay_bin" --convert-pgbouncer "$ini" >"$tmp/$name.toml" 2>"$tmp/$name.err" || rc=$?
    if ((rc != 0)); then
        cat "$tmp/$name.err" >&2
        fail "pgrelay --convert-pgbouncer $ini exited $rc"
    fi
    head -1 "$tmp/$name.toml" | grep -qx '# pgrelay configuration converted from the PgBouncer configuration' ||
        fail "$name: the output does not start with the conversion header"
    grep -qF "# $ini by" "$tmp/$name.toml" || fail "$name: the header does not name $ini"
    if ! out=$("$pgrelay_bin" --check-config "$tmp/$name.toml" 2>&1); then
        echo "$out" >&2
        cat "$tmp/$name.toml" >&2
        fail "pgrelay --check-config rejects the conversion of $ini"
    fi
}
# expect_note NAME TEXT...: stderr has a line containing each TEXT.
expect_note() {
    local name=$1 key
    shift
    for key in "$@"; do
        grep -qF -- "$key" "$tmp/$name.err" || {
            cat "$tmp/$name.err" >&2
            fail "$name: stderr does not report $key"
        }
    done
}

# Debian's example (package pgbouncer): uncommented, it sets logfile, pidfile
# and unix_socket_dir (none of which pgrelay has), listen_addr = localhost,
# listen_port, auth_type = md5 and auth_file, and lists no database.
debian_ini=/etc/pgbouncer/pgbouncer.ini
if [[ -r $debian_ini && -r /etc/pgbouncer/userlist.txt ]]; then
    convert debian "$debian_ini"
    expect_note debian "[pgbouncer] logfile = /var/log/postgresql/pgbouncer.log:" \
        "[pgbouncer] pidfile = /var/run/postgresql/pgbouncer.pid:" \
        "[pgbouncer] unix_socket_dir = /var/run/postgresql:" "[databases]: no database entries"
    grep -qx 'rw = "127.0.0.1:6432"' "$tmp/debian.toml" || fail "debian: listen_addr = localhost is not rw 127.0.0.1:6432"
    grep -qx 'auth_file = "/etc/pgbouncer/userlist.txt"  # auth_file' "$tmp/debian.toml" ||
        fail "debian: auth_file not carried over"
    grep -q '^pool_mode = "session"' "$tmp/debian.toml" || fail "debian: not session mode (PgBouncer's default)"
    ok "Debian's $debian_ini converts and passes --check-config ($(wc -l <"$tmp/debian.err") notes)"
else
    echo "skip: $debian_ini or /etc/pgbouncer/userlist.txt not readable (package pgbouncer; run as root)"
fi
minimal_ini=/usr/share/doc/pgbouncer/pgbouncer-minimal.ini
if [[ -r $minimal_ini ]]; then
    convert minimal "$minimal_ini"
    # Everything in it is commented out: no listen_addr (Unix socket only), no auth.
    expect_note minimal "[pgbouncer] listen_addr: not set" "[pgbouncer] pool_mode = session: pgrelay authenticates"
    ok "Debian's $minimal_ini converts and passes --check-config"
fi

# A richer configuration, with an %include, as PgBouncer's documentation spells it.
printf '"alice" "md5e8b1c1d5e4bd7fb7d0f3b8e3d1b1a6d2"\n' >"$tmp/userlist.txt"
printf '%s\n' '[databases]' '* = host=10.0.0.10,10.0.0.11 port=5432' \
    'appdb = host=10.0.0.10 dbname=app_production user=app password=pw4app0nly pool_size=40' >"$tmp/databases.ini"
printf '%s\n' ';; PgBouncer configuration' "%include $tmp/databases.ini" '' \
    '[users]' 'alice = pool_mode=session' '' \
    '[pgbouncer]' \
    'logfile = /var/log/pgbouncer/pgbouncer.log' 'pidfile = /var/run/pgbouncer/pgbouncer.pid' \
    'listen_addr = *' 'listen_port = 6543' 'unix_socket_dir = /var/run/postgresql' \
    'auth_type = hba' 'auth_hba_file = /etc/pgbouncer/pg_hba.conf' "auth_file = $tmp/userlist.txt" \
    'admin_users = postgres' 'stats_users = stats, monitor' \
    'pool_mode = statement' 'default_pool_size = 25' 'min_pool_size = 5' 'reserve_pool_size = 5' \
    'max_client_conn = 1000' 'max_db_connections = 50' 'max_user_connections = 20' \
    'server_reset_query = DISCARD ALL' 'server_lifetime = 1800' 'server_idle_timeout = 300' \
    'server_connect_timeout = 5' 'query_wait_timeout = 60' 'client_idle_timeout = 0' 'client_login_timeout = 30' \
    'idle_transaction_timeout = 120' 'so_reuseport = 1' 'application_name_add_host = 1' 'dns_max_ttl = 30' \
    'max_prepared_statements = 100' 'tcp_keepalive = 1' 'tcp_keepidle = 60' 'tcp_keepintvl = 10' 'tcp_keepcnt = 5' \
    'server_tls_sslmode = require' >"$tmp/rich.ini"
convert rich "$tmp/rich.ini"
expect_note rich "[pgbouncer] logfile" "[pgbouncer] pidfile" "[pgbouncer] unix_socket_dir" "[pgbouncer] auth_type = hba" \
    "[pgbouncer] auth_hba_file" "[pgbouncer] stats_users" "[pgbouncer] pool_mode = statement" \
    "[pgbouncer] reserve_pool_size" "[pgbouncer] max_user_connections" "[pgbouncer] idle_transaction_timeout" \
    "[pgbouncer] so_reuseport" "[pgbouncer] application_name_add_host" "[pgbouncer] dns_max_ttl" \
    "[pgbouncer] max_prepared_statements" "[pgbouncer] listen_addr = *" "[users] alice" \
    "[databases] * = host=10.0.0.10,10.0.0.11" "[databases] appdb = dbname=app_production" \
    "[databases] appdb = user=app" "[databases] appdb = password=***" "[databases] appdb = pool_size=40" \
    "$tmp/databases.ini:3:"
if grep -q pw4app0nly "$tmp/rich.err"; then fail "rich: a password reached stderr"; fi
for want in 'rw = "0.0.0.0:6543"' 'ro = ""' 'pool_mode = "transaction"' 'pool_size = 25' 'min_pool_size = 5' \
    'max_client_connections = 1000' 'max_db_connections = 50' 'server_lifetime = "30m"' 'server_idle_timeout = "5m"' \
    'connect_timeout = "5s"' 'query_wait_timeout = "1m"' 'startup_timeout = "30s"' 'tcp_keepalive_count = 5' \
    'backend_tls = "require"' 'admin_users = ["postgres"]' 'host = "10.0.0.11"'; do
    grep -qF -- "$want" "$tmp/rich.toml" || fail "rich: the output lacks $want"
done
# What it carries over is not reported, nor PgBouncer's defaults
# (client_idle_timeout = 0, tcp_keepalive = 1).
for key in max_client_conn default_pool_size server_lifetime client_idle_timeout tcp_keepalive tcp_keepidle; do
    if grep -qF "[pgbouncer] $key " "$tmp/rich.err"; then fail "rich: $key is carried over, yet reported"; fi
done
ok "a richer PgBouncer file converts, passes --check-config, and stderr lists its $(wc -l <"$tmp/rich.err") leftovers"

# Unusable input: exit 2, nothing on stdout, the line on stderr.
printf '[databases]\nthis line is no setting\n' >"$tmp/bad.ini"
rc=0
"$pgrelay_bin" --convert-pgbouncer "$tmp/bad.ini" >"$tmp/bad.toml" 2>"$tmp/bad.err" || rc=$?
((rc == 2)) || fail "a bad line: exit $rc, expected 2"
[[ ! -s "$tmp/bad.toml" ]] || fail "a bad line: output on stdout"
grep -qF "$tmp/bad.ini:2: error:" "$tmp/bad.err" || fail "a bad line: stderr does not name line 2"
rc=0
"$pgrelay_bin" --convert-pgbouncer "$tmp/missing.ini" >/dev/null 2>&1 || rc=$?
((rc == 2)) || fail "a missing file: exit $rc, expected 2"
ok "unparseable or missing PgBouncer files exit 2"

echo "conf: $passed checks passed"
