#!/usr/bin/env bash
# Installs everything pgrelay needs to build, test and run its demo, from Debian
# bookworm packages. Idempotent: skips apt-get when all packages are present.
set -euo pipefail

PACKAGES=(
  # toolchain; clang and its runtimes (libFuzzer, sanitizers) for .ci/fuzz.sh
  g++ cmake make pkg-config ccache clang-14 libclang-rt-14-dev
  # libraries
  libboost1.81-dev libboost-json1.81-dev libpq-dev libssl-dev libzookeeper-mt-dev libfmt-dev catch2
  libtomlplusplus-dev
  # real components for tests and the demo: PostgreSQL, ZooKeeper (Java), Patroni
  postgresql-15 postgresql-client-15 python3 zookeeper patroni python3-kazoo
  # etcd v3, the second DCS (patroni_cluster.py up --dcs etcd); Patroni's etcd3
  # DCS imports python3-etcd
  etcd-server etcd-client python3-etcd
  # promtool, to check /metrics output and the alert rules
  prometheus
  # the openssl CLI, used by tests; ip (network namespaces and veth pairs for
  # the fault campaign's real packet loss, tests/integration/fixtures.hpp)
  openssl iproute2
  # the benchmark harness (bench/run): the proxies pgrelay is compared with,
  # the failover write loop, the charts
  haproxy pgbouncer python3-psycopg2 python3-matplotlib
  # real application drivers for the pooling tests (tests/clients/): pgJDBC
  # run as a single-file Java program (needs a JDK, not a JRE)
  libpostgresql-jdbc-java default-jdk-headless
  # the Debian package (CPack's DEB generator; dpkg-shlibdeps declares its
  # dependencies) and `systemd-analyze verify` of its unit
  dpkg-dev systemd
  # the status page's test: headless Chromium, driven over the DevTools protocol
  chromium python3-websocket
)
# node-postgres comes from npm (tests/clients/setup_node.sh); node and npm
# from Debian, unless a node with its own npm is installed already (e.g.
# NodeSource's, which Debian's npm package conflicts with).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  PACKAGES+=(nodejs npm)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "deps: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
# bench/run starts its own HAProxy and PgBouncer on free ports, and the cluster
# fixture its own etcd; the packages' system services (PgBouncer's default port
# is 6432, the demo's rw port; etcd-server's postinst starts an etcd on
# 127.0.0.1:2379) must not run. Without systemd (containers, CI) they were never
# started.
if [[ -d /run/systemd/system ]]; then
  $SUDO systemctl disable --now pgbouncer.service haproxy.service etcd.service >/dev/null 2>&1 || true
fi
