"""The pooled rows: pgrelay's transaction and session pool modes against
PgBouncer's, each pair measured interleaved in the same run, with
--pool-clients clients (quick/full 500, smoke 30) on POOL_SIZE (20) server
connections.

  pool-throughput  transaction mode: pgbench -S, tpcb-like and -S -M prepared,
                   TPS and the proxy's CPU per transaction (as scenario 2).
                   PgBouncer 1.18 cannot carry protocol-level prepared
                   statements in transaction mode: its -M prepared run is
                   expected to fail, and what happened is reported as the
                   row's value instead of failing the harness. Every other
                   failed run (pgrelay's -M prepared too) is an error.
  pool-connrate    session mode: pgbench -C -S (a new connection, md5 login,
                   for every transaction) through pgrelay and PgBouncer, and
                   direct.
  pool-memory      transaction mode: idle clients (startup, md5 login, one
                   SELECT 1, then held) through a fresh pgrelay and PgBouncer
                   in front of the fake backend; RSS per client.

The pooled proxies are their own processes (a second pgrelay, two more
PgBouncers), started for the scenario and stopped after it, so the
passthrough rows' processes and configuration are untouched.
"""

import os
import re
import resource
import time

from . import common, scenarios, services
from .common import BenchError, say
from .services import POOL_SIZE

POOL_WORKLOADS = [
    # name, pgbench arguments, title; -M prepared last: PgBouncer's run leaves
    # prepared statements behind on its server connections.
    ("select", ["-S"], "select-only (-S)"),
    ("tpcb", [], "tpcb-like"),
    ("prepared", ["-S", "-M", "prepared"], "select-only -M prepared"),
]
# The PgBouncer run that may fail without failing the harness.
EXPECTED_FAILURE = ("pgbouncer", "prepared")


# ---------------------------------------------------------------- targets

def check_primary(target, timeout=60):
    """The pooled port must reach the primary (and log in: the auth_file
    works) before anything is measured through it."""
    import psycopg2
    deadline = time.monotonic() + timeout
    while True:
        try:
            c = psycopg2.connect(target.rw.dsn(connect_timeout=10, sslmode="disable"))
            cur = c.cursor()
            cur.execute("SELECT pg_is_in_recovery()")
            in_recovery = cur.fetchone()[0]
            c.close()
            if not in_recovery:
                return
            why = "it reached a replica"
        except psycopg2.Error as e:
            why = str(e).strip()
        if target.proc and not target.proc.alive():
            raise BenchError("%s exited%s" % (target.notes["process"], target.proc.log_tail()))
        if time.monotonic() > deadline:
            raise BenchError("%s (%s mode) rw: %s" % (target.notes["process"],
                                                      target.notes["mode"], why))
        time.sleep(0.5)


def start_pgrelay_pooled(bench, mode):
    name = "pgrelay-%s" % mode
    rw, admin = common.free_ports(2)
    auth = services.pgrelay_userlist(bench.workdir, name)
    proc = services.start_pgrelay(
        bench.reg, bench.pgrelay, bench.workdir, name,
        services.pgrelay_pooled_config(rw, admin, bench.cluster, mode, auth), rw,
        admin_port=admin, health=("/health",))
    t = services.Target("pgrelay", services.Endpoint(rw), None, proc,
                        notes={"process": name, "mode": mode, "admin": admin,
                               "pool_size": POOL_SIZE})
    check_primary(t)
    return t


def start_pgbouncer_pooled(bench, mode, clients):
    name = "pgbouncer-%s" % mode
    port = common.free_ports(1)[0]
    leader_port = bench.targets[0].rw.port   # direct's rw: the leader (failover runs last)
    proc = services.start_pgbouncer(bench.reg, bench.workdir, name, services.pgbouncer_config(
        bench.workdir, name, port, [(services.DBNAME, leader_port)], "hba",
        max_client_conn=max(1000, clients + 100), pool_size=POOL_SIZE, pool_mode=mode), port)
    t = services.Target("pgbouncer", services.Endpoint(port), None, proc,
                        notes={"process": name, "mode": mode, "pool_size": POOL_SIZE})
    check_primary(t)
    return t


def start_pair(bench, mode):
    started = []
    try:
        started.append(start_pgrelay_pooled(bench, mode))
        started.append(start_pgbouncer_pooled(bench, mode, bench.opts.pool_clients))
    except BaseException:
        stop_all(bench, started)
        raise
    say("  %s mode: %s" % (mode, ", ".join("%s port %d (pid %d)" % (
        t.notes["process"], t.rw.port, t.pid) for t in started)))
    return started


def stop_all(bench, targets):
    for t in targets:
        if t.proc:
            bench.reg.stop(t.proc)


def died(target):
    return target.proc is not None and not target.proc.alive()


# ---------------------------------------------------------------- throughput

def pgbench_error_text(r):
    """'ERROR: prepared statement "P0_1" already exists' out of pgbench's
    first error line; the whole line if it has no ERROR."""
    line = r.get("first_error") or r.get("expected_failure") or "?"
    m = re.search(r"(ERROR|FATAL):\s+(.*)$", line)
    return ("%s: %s" % (m.group(1), m.group(2)) if m else line).strip()


def pool_throughput(bench):
    """Transaction mode: pgbench -c N -j 2 -S, tpcb-like, -S -M prepared,
    pgrelay and PgBouncer interleaved, the proxy's CPU per transaction."""
    o = bench.opts
    n = o.pool_clients
    runs, errors = [], []
    targets = start_pair(bench, "transaction")
    try:
        for wl, args, title in POOL_WORKLOADS:
            if o.warmup and wl != "prepared":
                # Opens the pools' server connections and warms the caches;
                # the measured runs then start on a full pool.
                for t in targets:
                    scenarios.pgbench(t.rw, args, o.warmup, clients=min(n, 2 * POOL_SIZE))
            for rnd in range(1, o.rounds + 1):
                for t in targets:
                    r = scenarios.measured(t, lambda: scenarios.pgbench(
                        t.rw, args, o.pool_duration, t.proc, clients=n, threads=2,
                        extra_timeout=180 + n // 2))
                    r.update(scenario="pool-throughput", workload=wl, round=rnd,
                             target=t.name, mode="transaction", clients=n)
                    if (t.name, wl) == EXPECTED_FAILURE and r.get("error") and not died(t):
                        r["expected_failure"] = r.pop("error")
                        r["failure"] = pgbench_error_text(r)
                        aborted = r.get("aborted_clients")
                        r["outcome"] = "fails: %s%s" % (r["failure"], (
                            " (%d of %d clients aborted)" % (aborted, n)) if aborted else "")
                        say("  %s round %d %-9s %s (expected: PgBouncer %s)" % (
                            title, rnd, t.name, r["outcome"], "1.18 in transaction mode"))
                    elif (t.name, wl) == EXPECTED_FAILURE:
                        r["outcome"] = "runs"
                    if "outcome" not in r or r["outcome"] == "runs":
                        say("  %s round %d %-9s %8.0f tps%s" % (
                            title, rnd, t.name, r.get("tps") or 0,
                            "  %.1f us CPU/txn" % r["cpu_us_per_txn"]
                            if "cpu_us_per_txn" in r else ""))
                    scenarios.record(runs, r, errors)
    finally:
        stop_all(bench, targets)
    return {"config": {"mode": "transaction", "clients": n, "threads": 2,
                       "pool_size": POOL_SIZE, "duration_s": o.pool_duration,
                       "rounds": o.rounds, "scale": o.scale, "warmup_s": o.warmup,
                       "user": services.BENCH_USER + " (SCRAM)",
                       "processes": {t.name: t.notes["process"] for t in targets}},
            "runs": runs, "errors": errors}


# ---------------------------------------------------------------- connection rate

# pgbench -C keeps every client's connection open while its query is out, so
# -c 500 means up to 500 backends at once for direct: more than the cluster's
# max_connections (200). Direct runs only at client counts up to this.
DIRECT_MAX_CLIENTS = 150
CONNRATE_CLIENTS = 16   # the passthrough connrate scenario's count


def pool_connrate(bench):
    """Session mode: pgbench -C -S through pgrelay and PgBouncer, md5 logins,
    at --pool-clients clients (direct too when the cluster can take that many)
    and at the connrate scenario's 16, with direct."""
    import dataclasses
    o = bench.opts
    n = o.pool_clients
    counts = [n] + ([CONNRATE_CLIENTS] if n != CONNRATE_CLIENTS else [])
    runs, errors = [], []
    pooled = start_pair(bench, "session")
    direct = bench.targets[0]
    try:
        for rnd in range(1, o.rounds + 1):
            for clients in counts:
                # direct first, as everywhere
                targets = ([direct] if clients <= DIRECT_MAX_CLIENTS else []) + pooled
                for t in targets:
                    ep = dataclasses.replace(t.rw, user=services.MD5_USER,
                                             password=services.MD5_PASSWORD)
                    r = scenarios.measured(t, lambda: scenarios.pgbench(
                        ep, ["-C", "-S"], o.conn_duration, t.proc, clients=clients, threads=2))
                    r.update(scenario="pool-connrate", workload="c%d" % clients, round=rnd,
                             target=t.name, clients=clients,
                             mode="session" if t.proc else "direct")
                    say("  connection rate (session mode) -c %d round %d %-9s %6.0f "
                        "connections/s" % (clients, rnd, t.name, r.get("tps") or 0))
                    scenarios.record(runs, r, errors)
    finally:
        stop_all(bench, pooled)
    return {"config": {"mode": "session", "clients": n, "client_counts": counts, "threads": 2,
                       "pool_size": POOL_SIZE, "duration_s": o.conn_duration,
                       "rounds": o.rounds, "direct_max_clients": DIRECT_MAX_CLIENTS,
                       "user": services.MD5_USER + " (md5)",
                       "processes": {t.name: t.notes["process"] for t in pooled}},
            "runs": runs, "errors": errors}


# ---------------------------------------------------------------- memory

def pooled_memory_proxy(bench, kind, backend_port, count):
    """A fresh proxy in transaction mode in front of the fake backend; both
    ask the client for md5 (the same userlist: scramuser's md5 hash)."""
    reg, wd = bench.reg, bench.workdir
    port = common.free_ports(1)[0]
    name = "%s-pool-mem" % kind
    users = '"%s" "%s"\n' % (services.BENCH_USER,
                             services.md5_secret(services.BENCH_USER, services.BENCH_PASSWORD))
    if kind == "pgrelay":
        auth = os.path.join(wd, "%s.userlist.txt" % name)
        with open(auth, "w") as f:
            f.write(users)
        proc = services.start_pgrelay(reg, bench.pgrelay, wd, name,
                                      services.pgrelay_pooled_static_config(
                                          port, backend_port, "transaction", auth), port)
    else:
        proc = services.start_pgbouncer(reg, wd, name, services.pgbouncer_config(
            wd, name, port, [(services.DBNAME, backend_port)], "md5",
            max_client_conn=count + 1000, pool_size=POOL_SIZE, pool_mode="transaction"),
            port, users_text=users)
    return proc, services.Endpoint(port)


def pool_memory(bench):
    """Idle pooled clients (transaction mode): the proxy's VmRSS before and
    after, per client. Same connection count as the memory scenario."""
    o = bench.opts
    n = o.connections
    reg, wd = bench.reg, bench.workdir
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    fits = (nofile - 300) // 2 // 100 * 100   # as the memory scenario, for the same count
    note = None
    if n > fits:
        note = ("%s idle clients instead of %s (RLIMIT_NOFILE %d, as the memory scenario)"
                % (format(fits, ","), format(n, ","), nofile))
        say("  " + note)
        n = fits
    fake_port = common.free_ports(1)[0]
    fake = reg.spawn("fakepg-pool", [common.PYTHON, bench.fakepg, "serve", "--port",
                                     str(fake_port)], os.path.join(wd, "fakepg-pool.log"))
    common.wait_port(fake_port, 30, fake, "fake backend")
    runs, errors = [], []
    try:
        for rnd in range(1, o.mem_rounds + 1):
            for kind in ("pgrelay", "pgbouncer"):
                r = {"scenario": "pool-memory", "round": rnd, "target": kind,
                     "connections": n, "mode": "transaction"}
                try:
                    r.update(scenarios.memory_once(
                        bench, kind, fake, fake_port, n, start=pooled_memory_proxy,
                        fds_per_conn=1, password=services.BENCH_PASSWORD,
                        label="%s-pool" % kind))
                except BenchError as e:
                    r["error"] = str(e)
                say("  %d idle pooled clients round %d %-9s %s" % (
                    n, rnd, kind, "%.2f KiB/client (RSS %d -> %d KiB)" % (
                        r["kib_per_conn"], r["rss_before_kib"], r["rss_after_kib"])
                    if "kib_per_conn" in r else ""))
                scenarios.record(runs, r, errors)
    finally:
        reg.stop(fake)
    return {"config": {"mode": "transaction", "connections": n, "requested": o.connections,
                       "limit_note": note, "pool_size": POOL_SIZE, "rounds": o.mem_rounds,
                       "batch": o.mem_batch,
                       "client": "startup, md5 login, one 'SELECT 1' round trip, then idle"},
            "runs": runs, "errors": errors}
