"""Scenario 6: Patroni switchovers under a write loop through each target.

An independent ZooKeeper client (kazoo) watches Patroni's leader znode and
timestamps its deletion and creation (watch arrival, and the new znode's
ctime as ZooKeeper recorded it). On etcd (--dcs etcd) an independent etcd
watch (EtcdLeaderWatch: stdlib HTTP against etcd's JSON gateway) does the same
for the leader key; etcd keeps no creation time, so there the new key's
"ctime" is None and its PUT's arrival at the watch stands in for it.

One write loop per target runs all the time, concurrently, so every target
lives through the very same switchovers: each loop INSERTs a row (autocommit)
and records the wall-clock time the commit came back and inet_server_port(),
i.e. which member took it. On any error it drops the connection and
reconnects after ~10 ms.

Per switchover and target:
  reroute = first commit on the new primary - new leader znode's ctime
            (etcd: - arrival of the new leader key's PUT at the watch)
  outage  = first commit on the new primary - last commit on the old one
and Patroni's own leaderless window = leader znode deleted -> created (both
as seen by the watch).

Beside each write loop, a crowd (--crowd, quick/full 40, smoke 5) of
long-lived, mostly idle connections, as an application's connection pool
holds them: each writes a row every 0.3-1.2 s and keeps its connection
unless the connection itself is gone. Per target: client errors per
switchover, connections that had to reconnect, and the slowest single write.
Two more targets take part here only, each a pgrelay started for this
scenario: pgrelay-tx, whose rw port pools in transaction mode, and
pgrelay-api, which follows Patroni by polling its REST API (source =
"patroni_api", every 250 ms) instead of watching the DCS. Per switchover,
pgrelay-api's reroute minus pgrelay's is what a poll costs against a watch,
measured on the very same switchover.
"""

import array
import base64
import bisect
import json
import random
import socket
import threading
import time
import urllib.parse

from . import common, pooled, services
from .common import BenchError, say

WRITE_SQL = "INSERT INTO bench_failover (target) VALUES (%s) RETURNING inet_server_port()"
SETUP_SQL = """\
CREATE TABLE IF NOT EXISTS bench_failover (
    id bigserial PRIMARY KEY,
    target text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp())"""
DSN_OPTS = dict(connect_timeout=10, application_name="pgrelay-bench-failover",
                keepalives=1, keepalives_idle=5, keepalives_interval=1, keepalives_count=3,
                options="'-c statement_timeout=5000'", sslmode="disable")
API_INTERVAL_MS = 250   # pgrelay-api's poll interval (the patroni_api default)
REROUTE_WAIT = 90        # a target that has not written to the new primary by then failed
SUCCESS_PAUSE = 0.001    # between writes, to leave CPU to the cluster
ERROR_PAUSE = 0.01


class LeaderWatch:
    """Raw exists-watches on the leader znode, re-armed after every event, so
    a deletion is seen even when the new leader creates the znode again
    before a re-read could look (a DataWatch would coalesce the two)."""

    def __init__(self, hosts, path):
        from kazoo.client import KazooClient
        import logging
        logging.getLogger("kazoo").setLevel(logging.CRITICAL)
        self.path = path
        self.lock = threading.Lock()
        self.events = []           # dicts: kind, seen (wall), ctime (wall), czxid
        self.czxid = None
        self.created_seen = None   # arrival of the last CREATED event
        self.zk = KazooClient(hosts=hosts, timeout=10.0)
        self.zk.start(timeout=20)
        self._arm()

    def _arm(self):
        try:
            self.zk.exists_async(self.path, watch=self._event).rawlink(self._armed)
        except Exception:
            pass   # the client is closing

    def _event(self, event):
        now = time.time()
        with self.lock:
            if event.type == "DELETED":
                if self.czxid is not None:
                    self.events.append({"kind": "deleted", "seen": now})
                self.czxid = None
            elif event.type == "CREATED":
                self.created_seen = now
        self._arm()

    def _armed(self, result):
        now = time.time()
        try:
            stat = result.get()
        except Exception:
            return
        with self.lock:
            if stat is not None and stat.czxid != self.czxid:
                if self.czxid is not None:
                    # Deleted and created again between two looks: the
                    # deletion event was lost with a connection hiccup.
                    self.events.append({"kind": "deleted", "seen": None})
                self.events.append({"kind": "created", "czxid": stat.czxid,
                                    "seen": self.created_seen or now,
                                    "ctime": stat.ctime / 1000.0})
                self.czxid = stat.czxid
            self.created_seen = None

    def leader_name(self):
        try:
            data, _ = self.zk.get(self.path)
            return data.decode(errors="replace")
        except Exception:
            return None

    def since(self, t):
        with self.lock:
            return [e for e in self.events if (e["seen"] or t) >= t]

    def stop(self):
        try:
            self.zk.stop()
            self.zk.close()
        except Exception:
            pass


def b64(text):
    return base64.b64encode(text.encode()).decode()


def unb64(text):
    return base64.b64decode(text or "").decode(errors="replace")


class EtcdStreamEnded(Exception):
    """The watch stream closed, broke or was cancelled: re-watch."""


class EtcdLeaderWatch:
    """An independent etcd v3 watch on Patroni's leader key, with the stdlib
    only, through etcd's JSON gateway (POST /v3/kv/range, POST /v3/watch).

    Gives the same event dicts as LeaderWatch: {"kind": "deleted", "seen"}
    and {"kind": "created", "seen", "ctime", ...}; seen is the wall-clock
    arrival at this watch. etcd has no creation time, so ctime is None and
    the scenario times the reroute from the PUT's arrival instead. A new key
    (not a rewrite of the old one, e.g. a lease change) is told by its
    create_revision, as LeaderWatch tells a new znode by its czxid.

    The watch runs in a thread over a raw socket (HTTP/1.1, chunked answer),
    resumes from the last revision it saw whenever the stream drops (etcd
    replays what happened meanwhile; those events are marked "replayed", as
    their arrival is late), and stops within a second of stop()."""

    CONNECT_TIMEOUT = 5.0
    POLL = 0.5           # socket timeout: how often the thread checks stopping
    RETRY_PAUSE = 0.2    # between re-watch attempts

    def __init__(self, url, key):
        u = urllib.parse.urlsplit(url)
        if u.scheme != "http" or not u.hostname:
            raise BenchError("etcd watch: want an http://HOST:PORT URL, not %r" % url)
        self.host, self.port = u.hostname, u.port or 2379
        self.key = key
        self.lock = threading.Lock()
        self.events = []           # dicts: kind, seen (wall), ctime (None), create_revision
        self.create_rev = None     # create_revision of the key as last seen; None: absent
        self.rev = 0               # the last store revision taken into account
        self.watches = 0           # watch streams opened
        self.drops = []            # (wall time, why) for every stream that ended
        self.stopping = threading.Event()
        self.sock = None
        rev, kv = self._range()
        self.rev = rev
        if kv is not None:
            self.create_rev = int(kv.get("create_revision", 0))
        self.thread = threading.Thread(target=self._run, name="etcd-leader-watch", daemon=True)
        self.thread.start()

    # ---------------------------------------------------------- requests

    def _post(self, path, body, timeout=10.0):
        """One request on its own connection; returns the JSON answer."""
        import http.client
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("POST", path, body=json.dumps(body),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise BenchError("etcd %s: HTTP %d %s" % (path, resp.status,
                                                          data[:300].decode(errors="replace")))
            return json.loads(data)
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise BenchError("etcd %s at %s:%d: %s: %s" % (path, self.host, self.port,
                                                           type(e).__name__, e))
        finally:
            conn.close()

    def _range(self):
        """(store revision, the leader key's kv or None)."""
        ans = self._post("/v3/kv/range", {"key": b64(self.key)})
        kvs = ans.get("kvs") or []
        return int(ans.get("header", {}).get("revision", 0)), (kvs[0] if kvs else None)

    # ---------------------------------------------------------- the stream

    def _run(self):
        while not self.stopping.is_set():
            try:
                self._watch_once()
                why = "stream ended"
            except EtcdStreamEnded as e:
                why = str(e)
            except (OSError, ValueError) as e:
                why = "%s: %s" % (type(e).__name__, e)
            except BenchError as e:
                why = str(e)
            self._close()
            if self.stopping.is_set():
                break
            with self.lock:
                if len(self.drops) < 1000:
                    self.drops.append((time.time(), why))
            self.stopping.wait(self.RETRY_PAUSE)

    def _watch_once(self):
        with self.lock:
            start = self.rev + 1
        body = json.dumps({"create_request": {"key": b64(self.key),
                                              "start_revision": str(start)}}).encode()
        sock = socket.create_connection((self.host, self.port), timeout=self.CONNECT_TIMEOUT)
        self.sock = sock
        if self.stopping.is_set():
            return
        sock.settimeout(self.POLL)
        # The whole body with a Content-Length: the gateway does not answer
        # a request whose body is still open.
        sock.sendall(b"POST /v3/watch HTTP/1.1\r\nHost: %s:%d\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                     % (self.host.encode(), self.port, len(body)) + body)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += self._recv(sock)
            if len(buf) > 65536:
                raise EtcdStreamEnded("no end of the HTTP headers in 64 KiB")
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.decode(errors="replace").split("\r\n")
        status = lines[0].split()
        if len(status) < 2 or status[1] != "200":
            raise EtcdStreamEnded("watch answered %s" % lines[0])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (ln.partition(":") for ln in lines[1:])}
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        decoder = json.JSONDecoder()
        text = ""       # de-chunked body not parsed yet
        pending = b""   # a UTF-8 sequence cut by a chunk boundary
        created = None  # the store revision when the watch was created
        while not self.stopping.is_set():
            if chunked:
                data, buf, done = self._dechunk(sock, buf)
            else:
                data, buf, done = buf or self._recv(sock), b"", False
            pending += data
            try:
                text += pending.decode()
                pending = b""
            except UnicodeDecodeError:
                pass    # wait for the rest of the sequence
            while True:
                text = text.lstrip()
                if not text:
                    break
                try:
                    obj, end = decoder.raw_decode(text)
                except ValueError:
                    break   # incomplete: wait for more
                text = text[end:]
                created = self._handle(obj, created)
            if done:
                raise EtcdStreamEnded("stream ended (last chunk)")

    def _recv(self, sock):
        """Some bytes; b"" never (EOF raises); wakes up every POLL to check stopping."""
        while True:
            if self.stopping.is_set():
                raise EtcdStreamEnded("stopping")
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise EtcdStreamEnded("connection closed by etcd")
            return data

    def _dechunk(self, sock, buf):
        """Next chunk's payload: (data, rest of buf, last chunk seen)."""
        while b"\r\n" not in buf:
            buf += self._recv(sock)
        line, rest = buf.split(b"\r\n", 1)
        try:
            size = int(line.split(b";", 1)[0].strip() or b"x", 16)
        except ValueError:
            raise EtcdStreamEnded("bad chunk size line %r" % line[:80])
        if size == 0:
            return b"", b"", True
        while len(rest) < size + 2:
            rest += self._recv(sock)
        return rest[:size], rest[size + 2:], False

    def _handle(self, obj, created):
        """One watch response; returns the revision at the watch's creation."""
        now = time.time()
        res = obj.get("result")
        if res is None:
            raise EtcdStreamEnded("watch error: %s" % json.dumps(obj)[:300])
        header = res.get("header") or {}
        if res.get("created"):
            created = int(header.get("revision", 0))
            with self.lock:
                self.watches += 1
        if res.get("canceled"):
            compacted = int(res.get("compact_revision", 0))
            if compacted:
                # History before compacted is gone: re-read the key and go on
                # from the present, like LeaderWatch after a lost event.
                self._resync(now)
            raise EtcdStreamEnded("watch cancelled%s: %s" % (
                " (compacted at %d)" % compacted if compacted else "",
                res.get("cancel_reason", "")))
        with self.lock:
            for ev in res.get("events") or []:
                kv = ev.get("kv") or {}
                mod = int(kv.get("mod_revision", 0))
                if mod and mod <= self.rev:
                    continue    # already seen before a reconnect
                replayed = created is not None and mod <= created
                # A PUT event has no "type" field (PUT is the enum's 0).
                if ev.get("type", "PUT") == "DELETE":
                    if self.create_rev is not None:
                        e = {"kind": "deleted", "seen": now, "mod_revision": mod}
                        if replayed:
                            e["replayed"] = True
                        self.events.append(e)
                    self.create_rev = None
                else:
                    cr = int(kv.get("create_revision", 0))
                    if cr != self.create_rev:
                        if self.create_rev is not None:
                            # Replaced without a DELETE between: not from a
                            # revision-ordered watch, but keep the shape.
                            self.events.append({"kind": "deleted", "seen": None})
                        e = {"kind": "created", "seen": now, "ctime": None,
                             "create_revision": cr, "mod_revision": mod,
                             "leader": unb64(kv.get("value"))}
                        if replayed:
                            e["replayed"] = True
                        self.events.append(e)
                        self.create_rev = cr
                self.rev = max(self.rev, mod)
        return created

    def _resync(self, now):
        rev, kv = self._range()
        cr = int(kv.get("create_revision", 0)) if kv is not None else None
        with self.lock:
            if cr != self.create_rev:
                if self.create_rev is not None:
                    self.events.append({"kind": "deleted", "seen": None})
                if cr is not None:
                    self.events.append({"kind": "created", "seen": now, "ctime": None,
                                        "create_revision": cr, "replayed": True,
                                        "leader": unb64(kv.get("value"))})
                self.create_rev = cr
            self.rev = max(self.rev, rev)

    def _close(self):
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    # ---------------------------------------------------------- as LeaderWatch

    def leader_name(self):
        try:
            _, kv = self._range()
        except BenchError:
            return None
        return unb64(kv.get("value")) if kv is not None else None

    def since(self, t):
        with self.lock:
            return [e for e in self.events if (e["seen"] or t) >= t]

    def stop(self):
        self.stopping.set()
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)   # wakes a blocked recv
            except OSError:
                pass
        self.thread.join(self.POLL * 4 + self.CONNECT_TIMEOUT)
        self._close()

    def stats(self):
        with self.lock:
            return {"watches": self.watches, "drops": len(self.drops),
                    "last_drops": [{"at": t, "why": w} for t, w in self.drops[-5:]]}


class WriteLoop(threading.Thread):
    def __init__(self, name, dsn, deadline):
        super().__init__(name="write-%s" % name, daemon=True)
        self.target, self.dsn, self.deadline = name, dsn, deadline
        self.times = array.array("d")
        self.ports = array.array("i")
        self.errors = []            # (wall time, first line of the error)
        self.error_count = 0
        self.stopping = threading.Event()

    def run(self):
        import psycopg2
        conn = cur = None
        while not self.stopping.is_set() and time.monotonic() < self.deadline:
            try:
                if conn is None:
                    conn = psycopg2.connect(self.dsn)
                    conn.autocommit = True
                    cur = conn.cursor()
                cur.execute(WRITE_SQL, (self.target,))
                port = cur.fetchone()[0]
                self.times.append(time.time())
                self.ports.append(int(port))
                time.sleep(SUCCESS_PAUSE)
            except psycopg2.Error as e:
                self.error_count += 1
                if len(self.errors) < 5000:
                    self.errors.append((time.time(), (str(e).strip().splitlines() or ["?"])[0]))
                if conn is not None:
                    try:
                        conn.close()
                    except psycopg2.Error:
                        pass
                conn = cur = None
                time.sleep(ERROR_PAUSE)
        if conn is not None:
            conn.close()

    def first_on(self, port, after):
        n = len(self.times)
        for i in range(bisect.bisect_left(self.times, after, 0, n), n):
            if self.ports[i] == port:
                return self.times[i]
        return None

    def last_on_before(self, port, before):
        for i in range(bisect.bisect_left(self.times, before) - 1, -1, -1):
            if self.ports[i] == port:
                return self.times[i]
        return None

    def errors_between(self, a, b):
        msgs = {}
        for t, m in self.errors:
            if a <= t <= b:
                msgs[m] = msgs.get(m, 0) + 1
        return msgs


class Crowd:
    """n long-lived connections to one target, each writing a row every
    0.3-1.2 s and reconnecting only when its connection is gone."""

    def __init__(self, name, dsn, n, deadline):
        self.target, self.dsn, self.deadline = name, dsn, deadline
        self.lock = threading.Lock()
        self.errors = []          # (wall time, SQLSTATE or first line)
        self.reconnects = 0
        self.writes = 0
        self.slowest = 0.0
        self.failed_connects = 0
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True,
                                         name="crowd-%s-%d" % (name, i)) for i in range(n)]

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(30)

    def _run(self, i):
        import psycopg2
        rng = random.Random(i * 7919 + 1)
        conn = None
        ever = False
        while not self.stopping.is_set() and time.monotonic() < self.deadline:
            time.sleep(rng.uniform(0.3, 1.2))
            try:
                if conn is None or conn.closed:
                    if ever:
                        with self.lock:
                            self.reconnects += 1
                    conn = psycopg2.connect(self.dsn)
                    conn.autocommit = True
                    ever = True
                cur = conn.cursor()
                t0 = time.monotonic()
                cur.execute(WRITE_SQL, (self.target + "-crowd",))
                cur.fetchone()
                took = time.monotonic() - t0
                with self.lock:
                    self.writes += 1
                    self.slowest = max(self.slowest, took)
            except psycopg2.Error as e:
                what = e.pgcode or (str(e).strip().splitlines() or ["?"])[0][:60]
                with self.lock:
                    self.errors.append((time.time(), what))
                if conn is None:
                    with self.lock:
                        self.failed_connects += 1
        if conn is not None and not conn.closed:
            conn.close()

    def summary(self, switch_times):
        """Errors per switchover: those from one switchover's start to the
        next one's (the last to the end)."""
        with self.lock:
            errors = list(self.errors)
            out = {"clients": len(self.threads), "writes": self.writes,
                   "reconnects": self.reconnects, "slowest_write_ms": ms(self.slowest)}
        per = [0] * len(switch_times)
        kinds = {}
        for t, what in errors:
            k = bisect.bisect_right(switch_times, t) - 1
            if k >= 0:
                per[k] += 1
            kinds[what] = kinds.get(what, 0) + 1
        out["errors_per_switchover"] = per
        out["errors"] = kinds
        return out


def write_dsns(bench):
    """rw DSN per failover target. direct is libpq's own client-side failover:
    every member listed, target_session_attrs=read-write. PgBouncer points at a
    fixed host and cannot follow a switchover, so it is not measured."""
    opts = DSN_OPTS
    dsns = {}
    for t in bench.targets:
        if t.name == "pgbouncer":
            continue
        if t.name == "direct":
            nodes = sorted(bench.cluster.nodes.values(), key=lambda v: v["pg_port"])
            dsns["direct"] = t.rw.dsn(host=",".join(common.HOST for _ in nodes),
                                      port=",".join(str(v["pg_port"]) for v in nodes),
                                      target_session_attrs="read-write", **opts)
        else:
            dsns[t.name] = t.rw.dsn(**opts)
    return dsns


def reroute_metric(admin_port):
    """(sum, count) of pgrelay's own pgrelay_reroute_seconds histogram: from
    the leader znode (or etcd key) event to rw routing to the new primary, as
    pgrelay sees it."""
    if not admin_port:
        return None
    status, body = services.http_status(admin_port, "/metrics")
    if status != 200:
        return None
    vals = {}
    for line in body.splitlines():
        for key in ("pgrelay_reroute_seconds_sum", "pgrelay_reroute_seconds_count"):
            if line.startswith(key + " "):
                vals[key] = float(line.split()[1])
    if len(vals) != 2:
        return None
    return vals["pgrelay_reroute_seconds_sum"], vals["pgrelay_reroute_seconds_count"]


def failover(bench):
    o = bench.opts
    relay = next((t for t in bench.targets if t.name == "pgrelay"), None)
    admin = relay.notes.get("admin") if relay else None
    cluster = bench.cluster
    port_of = {n: v["pg_port"] for n, v in cluster.nodes.items()}
    dsns = write_dsns(bench)
    started = [pooled.start_pgrelay_pooled(bench, "transaction")]
    try:
        started.append(start_pgrelay_api(bench))
        dsns["pgrelay-tx"] = started[0].rw.dsn(**DSN_OPTS)
        dsns["pgrelay-api"] = started[1].rw.dsn(**DSN_OPTS)
        return run_failover(bench, o, admin, cluster, port_of, dsns)
    finally:
        pooled.stop_all(bench, started)


def start_pgrelay_api(bench):
    rw, admin = common.free_ports(2)
    name = "pgrelay-api"
    proc = services.start_pgrelay(bench.reg, bench.pgrelay, bench.workdir, name,
                                  services.pgrelay_config(rw, 0, admin, bench.cluster, API_INTERVAL_MS).replace(
                                      'ro = "%s:0"' % services.HOST, 'ro = ""'),
                                  rw, admin_port=admin, health=("/health",))
    t = services.Target("pgrelay", services.Endpoint(rw), None, proc,
                        notes={"process": name, "admin": admin})
    pooled.check_primary(t)
    return t


def run_failover(bench, o, admin, cluster, port_of, dsns):
    runs, errors, switchovers = [], [], []
    etcd = getattr(cluster, "dcs", "zookeeper") == "etcd"
    if etcd:
        watch = EtcdLeaderWatch(cluster.etcd_url, cluster.leader_path)
        saw_no = ("the etcd watch saw no new leader key for %s",
                  "the etcd watch saw no deletion of the leader key")
    else:
        watch = LeaderWatch(cluster.zk_hosts, cluster.leader_path)
        saw_no = ("the ZooKeeper watch saw no new leader znode for %s",
                  "the ZooKeeper watch saw no deletion of the leader znode")
    deadline = time.monotonic() + o.switchovers * 240 + 120
    loops = {name: WriteLoop(name, dsn, deadline) for name, dsn in dsns.items()}
    crowds = {name: Crowd(name, dsn, o.crowd, deadline) for name, dsn in dsns.items()}
    switch_times = []
    for lp in loops.values():
        lp.start()
    for c in crowds.values():
        c.start()
    try:
        time.sleep(2.0)
        for name, lp in loops.items():
            if not lp.times:
                raise BenchError("the %s write loop committed nothing in 2 s: %s"
                                 % (name, lp.errors[-1:] or "no error"))
        for i in range(1, o.switchovers + 1):
            started = time.time()
            switch_times.append(started)
            metric0 = reroute_metric(admin)
            old, new, secs = cluster.switchover()
            old_port, new_port = port_of[old], port_of[new]
            wait_until = time.monotonic() + REROUTE_WAIT
            while time.monotonic() < wait_until:
                if all(lp.first_on(new_port, started) for lp in loops.values()):
                    break
                time.sleep(0.1)
            time.sleep(0.5)
            events = watch.since(started - 1.0)
            created = next((e for e in events if e["kind"] == "created"), None)
            deleted = next((e for e in events if e["kind"] == "deleted"
                            and (created is None or (e["seen"] or 0) <= created["seen"])), None)
            sw = {"index": i, "old": old, "new": new, "switchover_cli_s": secs, "leaderless_ms": None}
            metric1 = reroute_metric(admin)
            if metric0 and metric1 and metric1[1] > metric0[1]:
                sw["pgrelay_own_reroute_ms"] = ms((metric1[0] - metric0[0]) / (metric1[1] - metric0[1]))
            # The cluster's own write gap: the last commit any loop got from the
            # old primary to the first any loop got from the new one.
            firsts = [lp.first_on(new_port, started) for lp in loops.values()]
            firsts = [f for f in firsts if f]
            if firsts:
                lasts = [lp.last_on_before(old_port, min(firsts)) for lp in loops.values()]
                lasts = [l for l in lasts if l]
                if lasts:
                    sw["cluster_write_gap_ms"] = ms(min(firsts) - max(lasts))
            # When the new leader key came to be: the znode's ctime on
            # ZooKeeper; etcd keeps none, so the PUT's arrival at the watch.
            born = None
            if created:
                born = created["seen"] if created.get("ctime") is None else created["ctime"]
            if created and created.get("ctime") is not None:
                sw["watch_delay_ms"] = ms(created["seen"] - created["ctime"])
            if created and deleted and deleted["seen"]:
                # Both ends as the watch saw them (same delivery delay).
                sw["leaderless_ms"] = ms(created["seen"] - deleted["seen"])
                if created.get("ctime") is not None:
                    sw["leaderless_ctime_ms"] = ms(created["ctime"] - deleted["seen"])
            if etcd and any(e.get("replayed") for e in (created, deleted) if e):
                # Replayed after the watch stream dropped: arrival is late.
                sw["watch_replayed"] = True
            switchovers.append(sw)
            if created is None:
                errors.append("switchover %d: %s" % (i, saw_no[0] % new))
            elif deleted is None:
                errors.append("switchover %d: %s" % (i, saw_no[1]))
            line = []
            for name, lp in loops.items():
                first_new = lp.first_on(new_port, started)
                r = {"scenario": "failover", "round": i, "target": name, "old": old, "new": new}
                if first_new is None:
                    r["error"] = "no write committed on the new primary %s within %ss" % (
                        new, REROUTE_WAIT)
                else:
                    last_old = lp.last_on_before(old_port, first_new)
                    if created:
                        r["reroute_ms"] = ms(first_new - born)
                    if last_old is not None:
                        r["outage_ms"] = ms(first_new - last_old)
                        if sw["leaderless_ms"] is not None:
                            r["outage_minus_leaderless_ms"] = round(
                                r["outage_ms"] - sw["leaderless_ms"], 1)
                    r["errors"] = lp.errors_between(last_old or started, first_new)
                    line.append("%s reroute %s ms outage %s ms" % (
                        name, r.get("reroute_ms"), r.get("outage_ms")))
                record_failover(runs, r, errors)
            say("  switchover %d %s -> %s: leaderless %s ms; %s" % (
                i, old, new, sw["leaderless_ms"], "; ".join(line)))
        time.sleep(3.0)  # the crowds' writes after the last switchover
    finally:
        for lp in loops.values():
            lp.stopping.set()
        for c in crowds.values():
            c.stopping.set()
        for lp in loops.values():
            lp.join(30)
        for c in crowds.values():
            c.stop()
        watch.stop()
    crowd = {name: c.summary(switch_times) for name, c in crowds.items()}
    for name, c in crowd.items():
        say("  crowd of %d through %s: errors per switchover %s, %d reconnects, slowest write %s ms"
            % (c["clients"], name, c["errors_per_switchover"], c["reconnects"], c["slowest_write_ms"]))
    totals = {name: {"writes": len(lp.times), "errors": lp.error_count}
              for name, lp in loops.items()}
    config = {"switchovers": o.switchovers, "targets": list(dsns),
              "excluded": {"pgbouncer": "its [databases] entry names one fixed host, "
                                        "so it keeps sending writes to the old primary"}}
    config["crowd"] = o.crowd
    config["pgrelay-tx"] = "a second pgrelay, rw in transaction pool mode (pool_size %d)" % services.POOL_SIZE
    config["pgrelay-api"] = ("a third pgrelay, rw only, source = \"patroni_api\" polling GET /cluster "
                             "every %d ms" % API_INTERVAL_MS)
    out = {"config": config, "switchovers": switchovers, "runs": runs, "writes": totals,
           "errors": errors, "crowd": crowd}
    if etcd:
        config["dcs"] = "etcd"
        config["leader_watch"] = ("independent etcd watch (JSON gateway) on %s; reroute from "
                                  "the new leader key's PUT arrival (etcd has no ctime)"
                                  % cluster.leader_path)
        out["leader_watch"] = watch.stats()
    return out


def record_failover(runs, r, errors):
    runs.append(r)
    if r.get("error"):
        errors.append("failover switchover %d %s: %s" % (r["round"], r["target"], r["error"]))
        say("  %s: ERROR %s" % (r["target"], r["error"]))


def ms(seconds):
    return round(seconds * 1000.0, 1)
