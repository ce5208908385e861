#!/usr/bin/env python3
"""Live check of conf/pgrelay-alerts.yml: real Prometheus, real pgrelay, real Patroni.

Starts a Patroni cluster (tests/fixtures/patroni_cluster.py, ZooKeeper by
default), a pgrelay following it and Debian's prometheus scraping pgrelay's
/metrics every second with the alert rules loaded and evaluated every second.
Then:

  1. healthy: every rule evaluates without error and no alert is pending or
     firing;
  2. a held leaderless window: Patroni maintenance mode (so nothing fails
     over) and the leader's postmaster killed (so Patroni drops the leader
     key and does not restart it). pgrelay reports no primary; an rw client
     connecting now is held (pgrelay_held_connections{port="rw"} = 1), and
     Prometheus' HTTP API shows PgrelayNoPrimary and PgrelayConnectionsHeld
     pending, with the exact labels and annotations;
  3. maintenance mode off: a primary is back, the held client's query
     completes on it, and both alerts go back to inactive.

Usage: prometheus_live.py --pgrelay BUILD/proxy/pgrelay [--dcs etcd] [--firing] [--rules FILE]
  --firing  keep the window open until PgrelayNoPrimary fires (its for: is
            30s, so this adds about half a minute).
Every wait has a deadline; prometheus, pgrelay and the cluster are stopped and
the temp dir removed on exit, whatever happens. Exit 0 on success, 1 on failure.
"""

import argparse
import atexit
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "patroni_cluster.py")
RULES = os.path.join(ROOT, "conf", "pgrelay-alerts.yml")
PROMETHEUS = os.environ.get("PROMETHEUS", "/usr/bin/prometheus")
PSQL = shutil.which("psql") or "/usr/bin/psql"
HOST = "127.0.0.1"
# The cluster's login for clients (tests/fixtures/patroni_cluster.py USERS).
CLIENT_USER, CLIENT_PASSWORD = "scramuser", "scrampass"
HARD_LIMIT = 240  # seconds for the whole run, whatever happens

T0 = time.monotonic()


class Failure(Exception):
    pass


def log(msg):
    print("[%6.1fs] %s" % (time.monotonic() - T0, msg), flush=True)


def wait_for(what, probe, timeout, interval=0.25):
    """Polls probe() until it returns something truthy; Failure after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            got = probe()
            if got:
                return got
            last = got
        except (OSError, ValueError, KeyError) as e:
            last = e
        if time.monotonic() >= deadline:
            raise Failure("%s: not within %ss (last: %r)" % (what, timeout, last))
        time.sleep(interval)


def free_ports(count):
    """Free ports on 127.0.0.1 below the ephemeral range (as the fixture does:
    an outgoing connection cannot grab one before its server binds it)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_lo = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_lo = 32768
    ports = []
    for _ in range(count * 200):
        port = random.randint(20000, max(ephemeral_lo - 1, 25000))
        if port in ports:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            continue
        finally:
            s.close()
        ports.append(port)
        if len(ports) == count:
            return ports
    raise Failure("no %d free ports" % count)


def http_get(port, path, timeout=2.0):
    """(status, body) of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen("http://%s:%d%s" % (HOST, port, path), timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def tail(path, lines=40):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return "(%s)" % e


# ---------------------------------------------------------------- cleanup

class Cleanup:
    """Things to undo, last first; runs once (finally, atexit or a signal)."""

    def __init__(self):
        self.steps = []

    def add(self, what, fn):
        self.steps.append((what, fn))

    def run(self):
        while self.steps:
            what, fn = self.steps.pop()
            try:
                fn()
            except Exception as e:  # keep cleaning up
                print("cleanup: %s: %s" % (what, e), file=sys.stderr, flush=True)


CLEANUP = Cleanup()
atexit.register(CLEANUP.run)


def on_signal(signum, frame):
    print("FAIL: %s (hard limit %ss, or stopped)" % (signal.Signals(signum).name, HARD_LIMIT),
          file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)  # unwinds through finally, then atexit


def stop_process(proc, name, grace=10.0):
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        print("cleanup: %s ignored SIGTERM, killing" % name, file=sys.stderr)
        proc.kill()
        proc.wait(timeout=10)


def spawn(name, argv, log_path):
    logf = open(log_path, "wb")
    proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    logf.close()
    CLEANUP.add("stop " + name, lambda: stop_process(proc, name))
    return proc


# ---------------------------------------------------------------- cluster

class Cluster:
    def __init__(self, cdir, dcs, nodes):
        self.dir, self.dcs, self.nodes = cdir, dcs, nodes
        self.info = {}
        self.pg_ports = {}

    def run(self, *args, timeout=60):
        argv = [sys.executable, FIXTURE, args[0], "--dir", self.dir, *args[1:]]
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failure("patroni_cluster %s: no answer within %ss" % (" ".join(args), timeout))
        if res.returncode != 0:
            raise Failure("patroni_cluster %s failed:\n%s%s" % (" ".join(args), res.stdout, res.stderr))
        return res.stdout

    def up(self):
        # Registered first: 'down' also cleans up a half-built cluster.
        CLEANUP.add("cluster down", lambda: self.run("down", timeout=120))
        extra = ["--dcs", "etcd"] if self.dcs == "etcd" else []
        out = self.run("up", "--nodes", str(self.nodes), *extra, timeout=240)
        for line in out.splitlines():
            words = line.split()
            if not words:
                continue
            if words[0] == "node":
                self.pg_ports[words[1]] = int(words[2])
            else:
                self.info[words[0]] = words[1:]
        if len(self.pg_ports) != self.nodes or "scope" not in self.info or self.dcs not in self.info:
            raise Failure("unexpected output of patroni_cluster up:\n" + out)

    def leader(self, wait=0, not_=None):
        args = ["leader", "--wait", str(wait)] + (["--not", not_] if not_ else [])
        return self.run(*args, timeout=wait + 30).strip()

    def source_toml(self):
        namespace = self.info.get("namespace", ["/service"])[0].strip("/")
        scope = self.info["scope"][0]
        if self.dcs == "etcd":
            return ('source = "etcd"\n[topology.etcd]\nendpoints = ["%s"]\nnamespace = "%s"\nscope = "%s"\n'
                    % (self.info["etcd"][0], namespace, scope))
        return ('source = "zookeeper"\n[topology.zookeeper]\nhosts = "%s"\nnamespace = "%s"\nscope = "%s"\n'
                'session_timeout = "10s"\n' % (self.info["zookeeper"][0], namespace, scope))


# ---------------------------------------------------------------- pgrelay

class Pgrelay:
    def __init__(self, binary, workdir, cluster):
        self.binary, self.dir = binary, workdir
        self.rw, self.ro, self.admin = free_ports(3)
        self.config = os.path.join(workdir, "pgrelay.toml")
        self.log = os.path.join(workdir, "pgrelay.log")
        with open(self.config, "w") as f:
            f.write('[server]\nthreads = 1\nlog_level = "debug"\n'
                    '[listen]\nrw = "%s:%d"\nro = "%s:%d"\n[admin]\nlisten = "%s:%d"\n'
                    # Long enough for the whole leaderless window (incl. --firing).
                    '[routing]\nhold_timeout = "90s"\n'
                    '[topology]\n%s'
                    '[topology.probe]\nuser = "pgrelay"\npassword = "pgrelay"\ndbname = "postgres"\n'
                    'interval = "500ms"\n'
                    % (HOST, self.rw, HOST, self.ro, HOST, self.admin, cluster.source_toml()))
        self.proc = None

    def start(self):
        res = subprocess.run([self.binary, "--check-config", self.config], capture_output=True, text=True,
                             timeout=30)
        if res.returncode != 0:
            raise Failure("pgrelay --check-config %s:\n%s%s" % (self.config, res.stdout, res.stderr))
        self.proc = spawn("pgrelay", [self.binary, "--config", self.config], self.log)

    def metric(self, series):
        """Value of the sample named exactly `series` (with its labels), or None."""
        status, body = http_get(self.admin, "/metrics")
        if status != 200:
            return None
        for line in body.splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def alive(self):
        if self.proc.poll() is not None:
            raise Failure("pgrelay exited (%s):\n%s" % (self.proc.returncode, tail(self.log)))
        return True


def client_argv(port, sql):
    conninfo = ("host=%s port=%d user=%s dbname=postgres connect_timeout=100 sslmode=disable"
                % (HOST, port, CLIENT_USER))
    return [PSQL, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql]


def client_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=CLIENT_PASSWORD, LC_ALL="C")
    return env


def query_rw(port, sql, timeout=20):
    res = subprocess.run(client_argv(port, sql), capture_output=True, text=True, timeout=timeout, env=client_env())
    if res.returncode != 0:
        raise Failure("psql via rw: %s" % res.stderr.strip())
    return res.stdout.strip()


# ---------------------------------------------------------------- prometheus

class Prometheus:
    def __init__(self, workdir, target_port, rules):
        self.dir = workdir
        (self.port,) = free_ports(1)
        self.config = os.path.join(workdir, "prometheus.yml")
        self.log = os.path.join(workdir, "prometheus.log")
        with open(self.config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
                    "rule_files:\n  - %s\n"
                    "scrape_configs:\n  - job_name: pgrelay\n    static_configs:\n"
                    "      - targets: ['%s:%d']\n" % (json.dumps(rules), HOST, target_port))
        self.proc = None

    def start(self):
        self.proc = spawn("prometheus", [
            PROMETHEUS, "--config.file=" + self.config,
            "--storage.tsdb.path=" + os.path.join(self.dir, "data"),
            "--web.listen-address=%s:%d" % (HOST, self.port),
            "--log.level=info"], self.log)

    def alive(self):
        if self.proc.poll() is not None:
            raise Failure("prometheus exited (%s):\n%s" % (self.proc.returncode, tail(self.log)))
        return True

    def api(self, path, **params):
        self.alive()
        qs = ("?" + urllib.parse.urlencode(params)) if params else ""
        status, body = http_get(self.port, "/api/v1/" + path + qs)
        doc = json.loads(body)
        if status != 200 or doc.get("status") != "success":
            raise Failure("prometheus /api/v1/%s: HTTP %s %s" % (path, status, body[:300]))
        return doc["data"]

    def alerts(self, name=None):
        return [a for a in self.api("alerts")["alerts"] if name is None or a["labels"]["alertname"] == name]

    def rules(self):
        return {r["name"]: r for g in self.api("rules", type="alert")["groups"] for r in g["rules"]}

    def query(self, expr):
        return self.api("query", query=expr)["result"]


def check_alert(alert, labels, summary, state):
    """The one alert from /api/v1/alerts has exactly these labels, summary and state."""
    if alert["labels"] != labels:
        raise Failure("alert labels %r, expected %r" % (alert["labels"], labels))
    if alert["annotations"].get("summary") != summary:
        raise Failure("alert summary %r, expected %r" % (alert["annotations"].get("summary"), summary))
    if alert["state"] != state:
        raise Failure("alert state %r, expected %r" % (alert["state"], state))


# ---------------------------------------------------------------- the test

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pgrelay", default=os.path.join(ROOT, "build", "proxy", "pgrelay"),
                   help="the pgrelay binary (default build/proxy/pgrelay)")
    p.add_argument("--dcs", choices=("zookeeper", "etcd"), default="zookeeper")
    p.add_argument("--nodes", type=int, default=2, help="Patroni members (default 2)")
    p.add_argument("--firing", action="store_true",
                   help="hold the leaderless window until PgrelayNoPrimary fires (about +30s)")
    p.add_argument("--rules", default=RULES, help="the alert rules (default conf/pgrelay-alerts.yml)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs) on success")
    args = p.parse_args()
    if args.nodes < 2:
        p.error("--nodes must be at least 2 (a replica takes over after the window)")

    for path in (PROMETHEUS, PSQL, args.pgrelay, FIXTURE, args.rules):
        if not os.path.exists(path):
            print("FAIL: missing %s" % path, file=sys.stderr)
            return 1

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    signal.alarm(HARD_LIMIT)  # a last resort: every wait below has its own deadline

    tmp = tempfile.mkdtemp(prefix="pgrelay-alerts-")
    os.chmod(tmp, 0o755)  # the cluster runs as postgres and must reach its dir
    result = {"ok": False}

    def remove_tmp():
        if args.keep or not result["ok"]:
            print("logs kept in %s" % tmp, file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    CLEANUP.add("remove " + tmp, remove_tmp)
    relay = prom = None
    try:
        # -------------------------------------------------- setup
        cluster = Cluster(os.path.join(tmp, "cluster"), args.dcs, args.nodes)
        log("starting a %d-node Patroni cluster on %s" % (args.nodes, args.dcs))
        cluster.up()
        leader = cluster.leader(wait=30)
        log("cluster up, leader %s (port %d)" % (leader, cluster.pg_ports[leader]))

        os.makedirs(os.path.join(tmp, "pgrelay"))
        relay = Pgrelay(os.path.abspath(args.pgrelay), os.path.join(tmp, "pgrelay"), cluster)
        relay.start()
        wait_for("pgrelay /health 200", lambda: relay.alive() and http_get(relay.admin, "/health")[0] == 200, 30)
        got = wait_for("rw query via pgrelay", lambda: query_rw(relay.rw, "SELECT pg_is_in_recovery(), inet_server_port()"), 20)
        if got != "f|%d" % cluster.pg_ports[leader]:
            raise Failure("rw via pgrelay reached %r, expected the leader f|%d" % (got, cluster.pg_ports[leader]))
        log("pgrelay up (rw %d, admin %d), rw reaches %s" % (relay.rw, relay.admin, leader))

        os.makedirs(os.path.join(tmp, "prometheus"))
        prom = Prometheus(os.path.join(tmp, "prometheus"), relay.admin, os.path.abspath(args.rules))
        prom.start()
        wait_for("prometheus ready", lambda: prom.alive() and http_get(prom.port, "/-/ready")[0] == 200, 30)
        instance = "%s:%d" % (HOST, relay.admin)
        wait_for("pgrelay scraped (up == 1, pgrelay_primary_available == 1)",
                 lambda: [s for s in prom.query('up{job="pgrelay"} == 1 and on(instance) pgrelay_primary_available == 1')
                          if s["metric"]["instance"] == instance], 20)

        # -------------------------------------------------- 1. healthy
        rules = prom.rules()
        if "PgrelayNoPrimary" not in rules or "PgrelayConnectionsHeld" not in rules:
            raise Failure("rules not loaded: %s" % sorted(rules))
        # Every rule evaluated on pgrelay's real series without an error.
        wait_for("every rule evaluated, health ok",
                 lambda: all(r["health"] == "ok" for r in prom.rules().values()), 10)
        wait_for("no alert pending or firing on the healthy cluster", lambda: prom.alerts() == [], 15)
        if rules["PgrelayNoPrimary"]["state"] != "inactive":
            raise Failure("PgrelayNoPrimary %s before the window" % rules["PgrelayNoPrimary"]["state"])
        log("healthy: %d rules ok, no alerts" % len(rules))

        # -------------------------------------------------- 2. leaderless, held
        cluster.run("maintenance", "on")
        window_start = time.monotonic()
        cluster.run("kill-postgres", leader)
        log("maintenance on, postgres of %s killed" % leader)
        wait_for("pgrelay_primary_available 0",
                 lambda: relay.alive() and relay.metric("pgrelay_primary_available") == 0, 30)
        status = http_get(relay.admin, "/health")[0]
        if status != 503:
            raise Failure("/health %s while there is no primary, expected 503" % status)
        log("pgrelay: no primary (after %.1fs), /health 503" % (time.monotonic() - window_start))

        held = subprocess.Popen(client_argv(relay.rw, "SELECT pg_is_in_recovery(), inet_server_port()"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=client_env())
        CLEANUP.add("held client", lambda: stop_process(held, "psql", grace=2))
        wait_for('pgrelay_held_connections{port="rw"} 1',
                 lambda: relay.metric('pgrelay_held_connections{port="rw"}') == 1, 15)
        if held.poll() is not None:
            raise Failure("the rw client was not held: %s" % held.communicate()[1].strip())
        log("rw client held")

        alert = wait_for("PgrelayNoPrimary pending in /api/v1/alerts",
                         lambda: [a for a in prom.alerts("PgrelayNoPrimary") if a["state"] == "pending"], 20)
        check_alert(alert[0], {"alertname": "PgrelayNoPrimary", "instance": instance, "job": "pgrelay",
                               "severity": "critical"},
                    "pgrelay %s has no primary to route rw to" % instance, "pending")
        if float(alert[0]["value"]) != 0:
            raise Failure("PgrelayNoPrimary value %s, expected 0" % alert[0]["value"])
        state = prom.rules()["PgrelayNoPrimary"]["state"]
        if state != "pending":
            raise Failure("/api/v1/rules: PgrelayNoPrimary %s, expected pending" % state)
        log("PgrelayNoPrimary pending %.1fs into the window: %s" % (time.monotonic() - window_start, alert[0]["labels"]))

        alert = wait_for("PgrelayConnectionsHeld pending",
                         lambda: [a for a in prom.alerts("PgrelayConnectionsHeld") if a["state"] == "pending"], 15)
        check_alert(alert[0], {"alertname": "PgrelayConnectionsHeld", "instance": instance, "job": "pgrelay",
                               "port": "rw", "severity": "warning"},
                    "pgrelay %s is holding rw connections" % instance, "pending")
        if float(alert[0]["value"]) != 1:
            raise Failure("PgrelayConnectionsHeld value %s, expected 1" % alert[0]["value"])
        # Prometheus itself stored the held gauge.
        wait_for("Prometheus has pgrelay_held_connections{port=\"rw\"} 1",
                 lambda: [s for s in prom.query('pgrelay_held_connections{port="rw"}')
                          if s["value"][1] == "1"], 10)
        log("PgrelayConnectionsHeld pending, value 1")

        if args.firing:
            alert = wait_for("PgrelayNoPrimary firing",
                             lambda: [a for a in prom.alerts("PgrelayNoPrimary") if a["state"] == "firing"], 45)
            elapsed = time.monotonic() - window_start
            if elapsed < 30:
                raise Failure("PgrelayNoPrimary fired %.1fs into the window, before its for: 30s" % elapsed)
            check_alert(alert[0], {"alertname": "PgrelayNoPrimary", "instance": instance, "job": "pgrelay",
                                   "severity": "critical"},
                        "pgrelay %s has no primary to route rw to" % instance, "firing")
            log("PgrelayNoPrimary firing %.1fs into the window" % elapsed)
        if held.poll() is not None:
            raise Failure("the held rw client ended during the window: %s" % held.communicate()[1].strip())

        # -------------------------------------------------- 3. primary back
        cluster.run("maintenance", "off")
        log("maintenance off (window held %.1fs)" % (time.monotonic() - window_start))
        new_leader = cluster.leader(wait=60)
        try:
            out, err = held.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            raise Failure("the held rw client did not complete within 60s of maintenance off")
        if held.returncode != 0:
            raise Failure("the held rw client failed: %s" % err.strip())
        new_port = int(out.strip().split("|")[1])
        if out.strip().split("|")[0] != "f" or new_port not in cluster.pg_ports.values():
            raise Failure("the held rw client got %r, expected a primary" % out.strip())
        log("held client completed on port %d (leader now %s)" % (new_port, new_leader))
        wait_for("pgrelay_primary_available 1, nothing held",
                 lambda: relay.metric("pgrelay_primary_available") == 1
                 and relay.metric('pgrelay_held_connections{port="rw"}') == 0, 30)
        for series in ('pgrelay_held_connections_total{port="rw"}', 'pgrelay_hold_seconds_count{port="rw"}'):
            if (relay.metric(series) or 0) < 1:
                raise Failure("%s is %s after a held connection, expected >= 1" % (series, relay.metric(series)))

        def resolved():
            rules = prom.rules()
            return (rules["PgrelayNoPrimary"]["state"] == "inactive"
                    and rules["PgrelayConnectionsHeld"]["state"] == "inactive"
                    and not prom.alerts("PgrelayNoPrimary") and not prom.alerts("PgrelayConnectionsHeld"))
        wait_for("PgrelayNoPrimary and PgrelayConnectionsHeld inactive", resolved, 20)
        log("both alerts inactive again")
        result["ok"] = True
    except Failure as e:
        print("FAIL: %s" % e, file=sys.stderr, flush=True)
        for name, obj in (("pgrelay", relay), ("prometheus", prom)):
            if obj is not None:
                print("---- %s log (tail)\n%s" % (name, tail(obj.log, 30)), file=sys.stderr)
        if prom is not None:
            try:
                print("---- /api/v1/alerts\n%s" % json.dumps(prom.alerts(), indent=1), file=sys.stderr)
            except Exception as e2:
                print("(alerts: %s)" % e2, file=sys.stderr)
    finally:
        signal.alarm(0)
        CLEANUP.run()
    log("PASS" if result["ok"] else "FAILED")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
