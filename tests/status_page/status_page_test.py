#!/usr/bin/python3
"""The status page at / in a real browser, on a live Patroni cluster.

Starts a 3-node Patroni cluster (tests/fixtures/patroni_cluster.py), the built
pgrelay following it through ZooKeeper, and headless Chromium driven over the
DevTools protocol. Checks that the page shows the current leader, that the
SAME loaded page (no reload) shows the new leader within a bounded time after
a switchover, that it loaded nothing from elsewhere and threw no JS errors,
and saves a screenshot.

  tests/status_page/status_page_test.py --pgrelay build/proxy/pgrelay [--screenshot docs/status-page.png]

Runs with Debian's /usr/bin/python3 (python3-websocket); chromium from apt.
"""

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import websocket  # python3-websocket

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "patroni_cluster.py")
HOST = "127.0.0.1"
PYTHON = "/usr/bin/python3"  # Debian's, as bench/run: the fixture needs its modules, not pyenv's
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
VIEWPORT = (1280, 900)

CLUSTER_UP_TIMEOUT = 150
PGRELAY_READY_TIMEOUT = 30
CHROMIUM_READY_TIMEOUT = 30
PAGE_LEADER_TIMEOUT = 15
SWITCHOVER_TIMEOUT = 60
PAGE_FOLLOWS_TIMEOUT = 20   # from the switchover's end to the page showing the new leader
CDP_TIMEOUT = 15


class TestFailure(Exception):
    pass


def say(msg):
    print("status_page_test: %s" % msg, flush=True)


def free_port(taken):
    for _ in range(100):
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in taken and port not in (5432, 8080, 2181, 2379, 2380):
            taken.add(port)
            return port
    raise TestFailure("no free port")


def wait_for(what, timeout, probe, interval=0.2):
    """Calls probe() until it returns something truthy; fails after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - any error means "not yet"
            last = e
        if time.monotonic() >= deadline:
            raise TestFailure("%s: not within %ss%s" % (what, timeout, " (last error: %s)" % last if last else ""))
        time.sleep(interval)


def http_get(port, path, timeout=3.0):
    with urllib.request.urlopen("http://%s:%d%s" % (HOST, port, path), timeout=timeout) as r:
        return r.status, dict(r.headers.items()), r.read().decode()


# ---------------------------------------------------------------- cluster

class Cluster:
    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "cluster")
        self.started = False
        self.zk_hosts = self.scope = None
        self.namespace = "service"
        self.nodes = []

    def cli(self, *args, timeout=120, check=True):
        res = subprocess.run([PYTHON, FIXTURE] + list(args) + ["--dir", self.dir],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise TestFailure("patroni_cluster.py %s failed:\n%s%s" % (args[0], res.stdout, res.stderr))
        return res

    def up(self, nodes=3):
        self.started = True  # 'down' cleans up a half-built one too
        out = self.cli("up", "--nodes", str(nodes), timeout=CLUSTER_UP_TIMEOUT).stdout
        for line in out.splitlines():
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "zookeeper":
                self.zk_hosts = parts[1]
            elif parts[0] == "scope":
                self.scope = parts[1]
            elif parts[0] == "namespace":
                self.namespace = parts[1].strip("/")
            elif parts[0] == "node":
                self.nodes.append(parts[1])
        if not (self.zk_hosts and self.scope and len(self.nodes) == nodes):
            raise TestFailure("unexpected output from patroni_cluster.py up:\n%s" % out)

    def leader(self):
        return self.cli("leader", "--wait", "30", timeout=60).stdout.strip()

    def switchover(self):
        """patronictl switchover --force to the sync standby (synchronous_mode
        allows no other), through the fixture; returns (old, new)."""
        out = self.cli("switchover", timeout=SWITCHOVER_TIMEOUT + 30).stdout.split()
        if len(out) != 4 or out[0] != "switchover":
            raise TestFailure("unexpected switchover output: %s" % " ".join(out))
        return out[1], out[2]

    def down(self):
        if self.started:
            res = self.cli("down", timeout=180, check=False)
            if res.returncode != 0:
                say("cluster teardown: %s" % (res.stderr or res.stdout).strip())
            self.started = False


# ---------------------------------------------------------------- pgrelay

def pgrelay_config(rw, ro, admin, cluster):
    return """\
# Written by tests/status_page/status_page_test.py.
[server]
threads = 1
log_level = "info"
[listen]
rw = "{h}:{rw}"
ro = "{h}:{ro}"
[admin]
listen = "{h}:{admin}"
[topology]
source = "zookeeper"
[topology.zookeeper]
hosts = "{zk}"
namespace = "{ns}"
scope = "{scope}"
[topology.probe]
user = "pgrelay"
password = "pgrelay"
""".format(h=HOST, rw=rw, ro=ro, admin=admin, ns=cluster.namespace, scope=cluster.scope, zk=cluster.zk_hosts)


class Process:
    """A child in its own process group, stopped with SIGTERM then SIGKILL."""

    def __init__(self, argv, log_path):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=10):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=timeout)
        self.log.close()

    def tail(self, lines=30):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


# ---------------------------------------------------------------- DevTools

class Cdp:
    """One DevTools websocket to a page target: commands and buffered events."""

    def __init__(self, ws_url):
        self.ws = websocket.create_connection(ws_url, timeout=CDP_TIMEOUT, suppress_origin=True)
        self.next_id = 0
        self.events = []

    def close(self):
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001
            pass

    def call(self, method, timeout=CDP_TIMEOUT, **params):
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TestFailure("DevTools %s: no answer within %ss" % (method, timeout))
            self.ws.settimeout(left)
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise TestFailure("DevTools %s: %s" % (method, msg["error"]))
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def pump(self, seconds):
        """Collects events for up to `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.ws.settimeout(left)
            try:
                msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                return
            if "method" in msg:
                self.events.append(msg)

    def evaluate(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise TestFailure("evaluating %s: %s" % (expression, r["exceptionDetails"]))
        return r.get("result", {}).get("value")


def start_chromium(workdir, logdir):
    port = free_port(set())
    profile = tempfile.mkdtemp(prefix="chromium-", dir=workdir)
    argv = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
            "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
            "--remote-debugging-address=%s" % HOST, "--remote-debugging-port=%d" % port,
            "--user-data-dir=%s" % profile, "--window-size=%d,%d" % VIEWPORT, "about:blank"]
    proc = Process(argv, os.path.join(logdir, "chromium.log"))

    def page_target():
        if not proc.alive():
            raise TestFailure("chromium exited:\n%s" % proc.tail())
        _, _, body = http_get(port, "/json/list")
        for t in json.loads(body):
            if t.get("type") == "page" and t.get("webSocketDebuggerUrl"):
                return t["webSocketDebuggerUrl"]
        return None

    ws_url = wait_for("chromium's DevTools page target", CHROMIUM_READY_TIMEOUT, page_target)
    return proc, ws_url


def open_sessions(rw, ro, logdir):
    """One idle psql session through each port (for the screenshot)."""
    psql = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"
    out = []
    for name, port in (("rw", rw), ("ro", ro)):
        conninfo = "host=%s port=%d user=scramuser password=scrampass dbname=postgres" % (HOST, port)
        out.append(Process([psql, conninfo, "-c", "SELECT pg_sleep(60)"], os.path.join(logdir, "psql-%s.log" % name)))
    return out


# ---------------------------------------------------------------- the test

LEADER_JS = "(function(){var e=document.getElementById('leader');return e?e.textContent:null;})()"


def page_leader(cdp):
    return cdp.evaluate(LEADER_JS)


def screenshot_dir(args):
    if args.screenshot_dir:
        return args.screenshot_dir
    if os.environ.get("PGRELAY_TEST_LOG_DIR"):
        return os.environ["PGRELAY_TEST_LOG_DIR"]
    return None


def run(args, workdir):
    logdir = screenshot_dir(args) or workdir
    os.makedirs(logdir, exist_ok=True)
    cluster = Cluster(workdir)
    pgrelay = chromium = cdp = None
    sessions = []
    try:
        t0 = time.monotonic()
        cluster.up(3)
        say("cluster up in %.1fs: %s" % (time.monotonic() - t0, " ".join(cluster.nodes)))

        taken = set()
        rw, ro, admin = free_port(taken), free_port(taken), free_port(taken)
        cfg = os.path.join(workdir, "pgrelay.toml")
        with open(cfg, "w") as f:
            f.write(pgrelay_config(rw, ro, admin, cluster))
        pgrelay = Process([args.pgrelay, "--config", cfg], os.path.join(logdir, "pgrelay.log"))
        leader = cluster.leader()

        def routed():
            if not pgrelay.alive():
                raise TestFailure("pgrelay exited:\n%s" % pgrelay.tail())
            status, _, body = http_get(admin, "/health")
            return status == 200 and leader in body
        wait_for("pgrelay routing rw to %s" % leader, PGRELAY_READY_TIMEOUT, routed)

        # The document and its headers, as a browser gets them.
        status, headers, body = http_get(admin, "/")
        headers = {k.lower(): v for k, v in headers.items()}
        if status != 200 or headers.get("content-type") != "text/html; charset=utf-8":
            raise TestFailure("GET / answered %s %s" % (status, headers.get("content-type")))
        csp = headers.get("content-security-policy", "")
        if not csp.startswith("default-src 'none'") or "connect-src 'self'" not in csp:
            raise TestFailure("GET /: weak or missing Content-Security-Policy: %r" % csp)
        if 'id="leader"' not in body:
            raise TestFailure("GET /: no element with id=\"leader\"")

        chromium, ws_url = start_chromium(workdir, logdir)
        cdp = Cdp(ws_url)
        cdp.call("Emulation.setDeviceMetricsOverride", width=VIEWPORT[0], height=VIEWPORT[1],
                 deviceScaleFactor=1, mobile=False)
        for domain in ("Page", "Runtime", "Network", "Log"):
            cdp.call(domain + ".enable")
        origin = "http://%s:%d" % (HOST, admin)
        cdp.call("Page.navigate", url=origin + "/")
        wait_for("the page showing leader %s" % leader, PAGE_LEADER_TIMEOUT, lambda: page_leader(cdp) == leader)
        say("page shows leader %s" % leader)
        loads_before = cdp.evaluate("performance.getEntriesByType('navigation').length")
        time_origin = cdp.evaluate("performance.timeOrigin")

        t1 = time.monotonic()
        old, new = cluster.switchover()
        switched = time.monotonic()
        say("switchover %s -> %s took %.1fs" % (old, new, switched - t1))
        if old != leader or new == leader or new not in cluster.nodes:
            raise TestFailure("switchover went %s -> %s, expected away from %s" % (old, new, leader))

        def follows():
            cdp.pump(0.1)
            return page_leader(cdp) == new
        wait_for("the same page showing the new leader %s" % new, PAGE_FOLLOWS_TIMEOUT, follows, interval=0.1)
        say("page showed new leader %s %.1fs after the switchover ended" % (new, time.monotonic() - switched))
        # The same document: no navigation happened in between.
        if cdp.evaluate("performance.timeOrigin") != time_origin or \
                cdp.evaluate("performance.getEntriesByType('navigation').length") != loads_before:
            raise TestFailure("the page was reloaded")

        # The change list shows the reroute to the new leader with its time.
        def reroute_row():
            cdp.pump(0.1)
            text = cdp.evaluate("document.getElementById('changes').textContent")
            return text if ("\u2192 " + new) in text and " ms" in text else None
        changes = wait_for("the changes table showing the reroute to %s" % new, 10, reroute_row)
        _, _, topo = http_get(admin, "/topology")
        topo = json.loads(topo)
        rerouted = [c for c in topo.get("changes", []) if c.get("primary") == new and c.get("reroute_seconds")]
        if not rerouted:
            raise TestFailure("/topology changes have no reroute to %s: %s" % (new, topo.get("changes")))
        say("reroute to %s: %.1f ms" % (new, rerouted[0]["reroute_seconds"] * 1000))

        # Let a few more refreshes run, then check what the page loaded and threw.
        cdp.pump(2.5)
        refreshes = int(cdp.evaluate("document.body.dataset.refreshes || '0'"))
        if refreshes < 5:
            raise TestFailure("only %d refreshes ran" % refreshes)
        resources = cdp.evaluate("performance.getEntriesByType('resource').map(function(e){return e.name;})") or []
        requested = [e["params"]["request"]["url"] for e in cdp.events if e.get("method") == "Network.requestWillBeSent"]
        foreign = [u for u in resources + requested if not u.startswith(origin + "/")]
        if foreign:
            raise TestFailure("the page loaded resources from elsewhere: %s" % sorted(set(foreign)))
        fetched = {urllib.parse.urlparse(u).path for u in resources + requested}
        if not {"/", "/topology", "/pools"} <= fetched:
            raise TestFailure("the page did not fetch /topology and /pools: %s" % sorted(fetched))
        errors = [e["params"] for e in cdp.events if e.get("method") == "Runtime.exceptionThrown"]
        errors += [e["params"]["entry"] for e in cdp.events
                   if e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error"]
        if errors:
            raise TestFailure("JS errors or console errors (e.g. CSP violations): %s" % json.dumps(errors)[:2000])
        state = cdp.evaluate("document.getElementById('state').textContent")
        if not state.startswith("live"):
            raise TestFailure("the page says %r" % state)

        if args.screenshot:
            # The README's picture: the cluster settled again (the old leader
            # back as a replica) and a client on each port.
            sessions.extend(open_sessions(rw, ro, logdir))
            def settled():
                t = json.loads(http_get(admin, "/topology")[2])
                members = t.get("members", [])
                conns = t.get("connections", {})
                return (len(members) == 3 and all(m.get("state") == "running" for m in members)
                        and sum(1 for m in members if m.get("ro_eligible")) == 2
                        and conns.get("rw", {}).get("clients", 0) >= 1 and conns.get("ro", {}).get("clients", 0) >= 1)
            wait_for("the cluster settling after the switchover", 45, settled, interval=0.5)
            cdp.pump(1.5)
        shot = cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        data = base64.b64decode(shot["data"])
        paths = []
        if args.screenshot:
            paths.append(args.screenshot)
        if screenshot_dir(args):
            paths.append(os.path.join(logdir, "status-page.png"))
        if not paths:
            paths.append(os.path.join(tempfile.gettempdir(), "pgrelay-status-page.png"))
        for p in paths:
            os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
            with open(p, "wb") as f:
                f.write(data)
            say("screenshot: %s (%d bytes)" % (p, len(data)))
        say("ok: %d refreshes, %d requests, all same-origin; changes: %s" %
            (refreshes, len(requested), " | ".join(changes.split("\n"))[:200]))
    except BaseException:
        if pgrelay is not None:
            say("pgrelay log tail:\n%s" % pgrelay.tail())
        raise
    finally:
        if cdp is not None:
            cdp.close()
        for proc in sessions:
            proc.stop()
        if chromium is not None:
            chromium.stop()
        if pgrelay is not None:
            pgrelay.stop()
        cluster.down()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pgrelay", required=True, help="the pgrelay binary")
    p.add_argument("--screenshot-dir", help="where status-page.png and the logs go "
                   "(default $PGRELAY_TEST_LOG_DIR, else a temp dir)")
    p.add_argument("--screenshot", help="also write the screenshot here, e.g. docs/status-page.png")
    args = p.parse_args()
    if not os.path.exists(CHROMIUM):
        say("chromium not found (apt-get install -y chromium)")
        return 1
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(128 + s))  # ctest's timeout: still clean up
    workdir = tempfile.mkdtemp(prefix="pgrelay-status-page-")
    os.chmod(workdir, 0o755)  # the cluster runs as postgres and must reach its directory
    started = time.monotonic()
    try:
        run(args, workdir)
    except TestFailure as e:
        say("FAILED: %s" % e)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        say("took %.1fs" % (time.monotonic() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
