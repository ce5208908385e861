#!/usr/bin/env bash
# Builds pgrelay's Debian package in BUILD_DIR (cpack -G DEB), installs it with
# `apt-get install ./pgrelay_*.deb` on this machine, checks what an operator
# gets, and purges it again:
#  - dependencies declared from the linked libraries; the conffile;
#  - /usr/bin/pgrelay --check-config /etc/pgrelay/pgrelay.toml passes, as root
#    and as the system user pgrelay the postinst created;
#  - systemd-analyze verify accepts the unit;
#  - man pgrelay / man pgrelay.toml; the dashboard and alert rules;
#  - a local edit of the conffile survives a reinstall;
#  - the installed binary runs as pgrelay and serves /health.
# Needs root (apt-get); exits 77 (skipped) without it.
# Usage: tests/package/check_deb.sh BUILD_DIR
set -euo pipefail
BUILD=$(cd "${1:?usage: check_deb.sh BUILD_DIR}" && pwd)
if [[ $(id -u) -ne 0 ]]; then
  echo "check_deb: needs root (apt-get install); skipped"
  exit 77
fi
if dpkg-query -W -f='${Status}' pgrelay 2>/dev/null | grep -q "install ok installed"; then
  echo "check_deb: a pgrelay package is installed already; not touching it"
  exit 77
fi

fail() { echo "check_deb: FAIL: $*" >&2; exit 1; }
ok() { echo "check_deb: ok: $*"; }

TMP=$(mktemp -d)
PID=""
cleanup() {
  [[ -n $PID ]] && kill "$PID" 2>/dev/null || true
  DEBIAN_FRONTEND=noninteractive apt-get purge -y -q pgrelay >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT

cd "$BUILD"
rm -f pgrelay_*.deb
cmake --build . --target pgrelay man_gz >/dev/null
cpack -G DEB >"$TMP/cpack.log" 2>&1 || { cat "$TMP/cpack.log"; fail "cpack -G DEB"; }
debs=(pgrelay_*.deb)
[[ ${#debs[@]} -eq 1 && -f ${debs[0]} ]] || fail "cpack wrote no single pgrelay_*.deb"
DEB=${debs[0]}
ok "built $DEB ($(du -k "$DEB" | cut -f1) KiB)"

# Control data: dependencies from dpkg-shlibdeps, the conffile, the scripts.
depends=$(dpkg-deb -f "$DEB" Depends)
echo "check_deb: Depends: $depends"
for lib in libc6 libssl3 libpq5 libzookeeper-mt2 libfmt9 libstdc++6; do
  grep -q "$lib" <<<"$depends" || fail "Depends lacks $lib (shlibs)"
done
grep -q adduser <<<"$depends" || fail "Depends lacks adduser (postinst)"
mkdir "$TMP/ctrl"
dpkg-deb -e "$DEB" "$TMP/ctrl"
grep -qx /etc/pgrelay/pgrelay.toml "$TMP/ctrl/conffiles" || fail "pgrelay.toml is not a conffile"
for s in postinst prerm postrm; do [[ -x $TMP/ctrl/$s ]] || fail "no executable $s"; done
contents=$(dpkg-deb -c "$DEB")
for f in ./usr/bin/pgrelay ./lib/systemd/system/pgrelay.service ./etc/pgrelay/pgrelay.toml \
         ./usr/share/man/man1/pgrelay.1.gz ./usr/share/man/man5/pgrelay.toml.5.gz \
         ./usr/share/pgrelay/grafana-dashboard.json ./usr/share/pgrelay/pgrelay-alerts.yml \
         ./usr/share/doc/pgrelay/copyright; do
  grep -q " $f\$" <<<"$contents" || fail "the package lacks $f"
done
ok "control data and contents"

# Install the way the README says.
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "./$DEB" >"$TMP/apt.log" 2>&1 || { cat "$TMP/apt.log"; fail "apt-get install ./$DEB"; }
ok "apt-get install ./$DEB"
dpkg-query -W -f='${Conffiles}\n' pgrelay | grep -q /etc/pgrelay/pgrelay.toml || fail "dpkg does not list the conffile"

version=$(/usr/bin/pgrelay --version)
[[ $version == "pgrelay $(dpkg-deb -f "$DEB" Version)" ]] || fail "pgrelay --version says '$version'"
/usr/bin/pgrelay --check-config /etc/pgrelay/pgrelay.toml || fail "--check-config of the installed config"
getent passwd pgrelay >/dev/null || fail "no system user pgrelay"
[[ $(stat -c '%U:%G %a' /etc/pgrelay/pgrelay.toml) == "root:pgrelay 640" ]] ||
  fail "pgrelay.toml is $(stat -c '%U:%G %a' /etc/pgrelay/pgrelay.toml), not root:pgrelay 640"
runuser -u pgrelay -- /usr/bin/pgrelay --check-config /etc/pgrelay/pgrelay.toml >/dev/null ||
  fail "the pgrelay user cannot read its config"
if runuser -u nobody -- cat /etc/pgrelay/pgrelay.toml >/dev/null 2>&1; then fail "other users can read the config"; fi
ok "--check-config /etc/pgrelay/pgrelay.toml, as root and as pgrelay"

systemd-analyze verify /lib/systemd/system/pgrelay.service 2>"$TMP/verify.log" || {
  cat "$TMP/verify.log"; fail "systemd-analyze verify"; }
if grep -i pgrelay "$TMP/verify.log"; then fail "systemd-analyze verify complains about the unit"; fi
grep -q '^ExecStart=/usr/bin/pgrelay --config /etc/pgrelay/pgrelay.toml$' /lib/systemd/system/pgrelay.service ||
  fail "the unit does not run /usr/bin/pgrelay"
grep -q '^User=pgrelay$' /lib/systemd/system/pgrelay.service || fail "the unit does not run as pgrelay"
ok "systemd-analyze verify pgrelay.service"

for page in "1 pgrelay" "5 pgrelay.toml"; do
  # shellcheck disable=SC2086
  man -w $page >/dev/null || fail "man $page not found"
done
MANWIDTH=100 man 5 pgrelay.toml 2>/dev/null | grep -q 'hold_timeout = "30s"' || fail "man 5 pgrelay.toml lacks hold_timeout"
MANWIDTH=100 man 1 pgrelay 2>/dev/null | grep -q -- '--check-config' || fail "man 1 pgrelay lacks --check-config"
promtool check rules /usr/share/pgrelay/pgrelay-alerts.yml >/dev/null || fail "installed alert rules"
python3 -c 'import json,sys; json.load(open(sys.argv[1]))' /usr/share/pgrelay/grafana-dashboard.json ||
  fail "installed dashboard is not JSON"
ok "man pages, dashboard, alert rules"

# A local edit of the conffile survives a reinstall of the same package.
echo "# local edit by check_deb.sh" >>/etc/pgrelay/pgrelay.toml
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall "./$DEB" >"$TMP/apt2.log" 2>&1 || {
  cat "$TMP/apt2.log"; fail "reinstall"; }
grep -q "local edit by check_deb.sh" /etc/pgrelay/pgrelay.toml || fail "reinstall overwrote the edited conffile"
ok "the conffile keeps a local edit across a reinstall"

# The installed binary runs as pgrelay: the shipped config with free loopback
# ports (its example static members are not running, so /health says 503).
read -r RW RO ADMIN < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
chmod 0755 "$TMP"
install -d -o pgrelay -g pgrelay "$TMP/run"
sed -e "s|^rw = \"127.0.0.1:6432\"|rw = \"127.0.0.1:$RW\"|" -e "s|^ro = \"127.0.0.1:6433\"|ro = \"127.0.0.1:$RO\"|" \
    -e "s|^listen = \"127.0.0.1:9187\"|listen = \"127.0.0.1:$ADMIN\"|" /etc/pgrelay/pgrelay.toml >"$TMP/run/pgrelay.toml"
grep -q "127.0.0.1:$ADMIN" "$TMP/run/pgrelay.toml" || fail "could not set the admin port in the copy"
chown pgrelay "$TMP/run/pgrelay.toml"
# setpriv execs pgrelay itself (runuser would stay its parent), so $! is pgrelay.
setpriv --reuid=pgrelay --regid=pgrelay --init-groups /usr/bin/pgrelay --config "$TMP/run/pgrelay.toml" >"$TMP/run/log" 2>&1 &
PID=$!
code=""
for _ in $(seq 50); do
  code=$(python3 -c '
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=1).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("")' "http://127.0.0.1:$ADMIN/health")
  [[ -n $code ]] && break
  kill -0 "$PID" 2>/dev/null || break
  sleep 0.2
done
[[ $code == 503 || $code == 200 ]] || { cat "$TMP/run/log"; fail "the installed pgrelay did not answer /health"; }
[[ $(ps -o user= -p "$PID") == pgrelay ]] || fail "pgrelay does not run as pgrelay"
kill "$PID"
wait "$PID" || true
PID=""
ok "the installed pgrelay runs as pgrelay and answers /health ($code)"

DEBIAN_FRONTEND=noninteractive apt-get purge -y -q pgrelay >/dev/null 2>&1 || fail "apt-get purge pgrelay"
[[ ! -e /usr/bin/pgrelay && ! -e /etc/pgrelay ]] || fail "purge left /usr/bin/pgrelay or /etc/pgrelay"
ok "purged"
echo "check_deb: all checks passed"
