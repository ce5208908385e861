"""Scenario 6: Patroni switchovers under a write loop through each target.

An independent ZooKeeper client (kazoo) watches Patroni's leader znode and
timestamps its deletion and creation (watch arrival, and the new znode's
ctime as ZooKeeper recorded it). One write loop per target runs all the time,
concurrently, so every target lives through the very same switchovers: each
loop INSERTs a row (autocommit) and records the wall-clock time the commit came
back and inet_server_port(), i.e. which member took it. On any error it drops
the connection and reconnects after ~10 ms.

Per switchover and target:
  reroute = first commit on the new primary - new leader znode's ctime
  outage  = first commit on the new primary - last commit on the old one
and Patroni's own leaderless window = leader znode deleted -> created (both
as seen by the watch).
"""

import array
import bisect
import threading
import time

from . import common, services
from .common import BenchError, say

WRITE_SQL = "INSERT INTO bench_failover (target) VALUES (%s) RETURNING inet_server_port()"
SETUP_SQL = """\
CREATE TABLE IF NOT EXISTS bench_failover (
    id bigserial PRIMARY KEY,
    target text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp())"""
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


def write_dsns(bench):
    """rw DSN per failover target. direct is libpq's own client-side failover:
    every member listed, target_session_attrs=read-write. PgBouncer points at a
    fixed host and cannot follow a switchover, so it is not measured."""
    opts = dict(connect_timeout=10, application_name="pgrelay-bench-failover",
                keepalives=1, keepalives_idle=5, keepalives_interval=1, keepalives_count=3,
                options="'-c statement_timeout=5000'", sslmode="disable")
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
    the ZooKeeper event to rw routing to the new primary, as pgrelay sees it."""
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
    runs, errors, switchovers = [], [], []
    watch = LeaderWatch(cluster.zk_hosts, cluster.leader_path)
    deadline = time.monotonic() + o.switchovers * 240 + 120
    loops = {name: WriteLoop(name, dsn, deadline) for name, dsn in dsns.items()}
    for lp in loops.values():
        lp.start()
    try:
        time.sleep(2.0)
        for name, lp in loops.items():
            if not lp.times:
                raise BenchError("the %s write loop committed nothing in 2 s: %s"
                                 % (name, lp.errors[-1:] or "no error"))
        for i in range(1, o.switchovers + 1):
            started = time.time()
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
            if created:
                sw["watch_delay_ms"] = ms(created["seen"] - created["ctime"])
            if created and deleted and deleted["seen"]:
                # Both ends as the watch saw them (same delivery delay).
                sw["leaderless_ms"] = ms(created["seen"] - deleted["seen"])
                sw["leaderless_ctime_ms"] = ms(created["ctime"] - deleted["seen"])
            switchovers.append(sw)
            if created is None:
                errors.append("switchover %d: the ZooKeeper watch saw no new leader znode for %s"
                              % (i, new))
            elif deleted is None:
                errors.append("switchover %d: the ZooKeeper watch saw no deletion of the leader "
                              "znode" % i)
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
                        r["reroute_ms"] = ms(first_new - created["ctime"])
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
    finally:
        for lp in loops.values():
            lp.stopping.set()
        for lp in loops.values():
            lp.join(30)
        watch.stop()
    totals = {name: {"writes": len(lp.times), "errors": lp.error_count}
              for name, lp in loops.items()}
    return {"config": {"switchovers": o.switchovers, "targets": list(dsns),
                       "excluded": {"pgbouncer": "its [databases] entry names one fixed host, "
                                                 "so it keeps sending writes to the old primary"}},
            "switchovers": switchovers, "runs": runs, "writes": totals, "errors": errors}


def record_failover(runs, r, errors):
    runs.append(r)
    if r.get("error"):
        errors.append("failover switchover %d %s: %s" % (r["round"], r["target"], r["error"]))
        say("  %s: ERROR %s" % (r["target"], r["error"]))


def ms(seconds):
    return round(seconds * 1000.0, 1)
