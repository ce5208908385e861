"""Scenarios 1-5: throughput (+ CPU cost), connection rate, idle-connection
memory and bulk COPY. Failover (6) lives in failover.py.

Every scenario runs its targets interleaved, round after round (direct,
pgrelay, haproxy, pgbouncer, direct, pgrelay, ...), and records one entry per
(round, target) in its "runs" list; report.py turns them into medians and
ratios to direct. A run that could not complete (pgbench failed, no
transactions, wrong byte count, connections refused) is recorded with an
"error" and makes the harness exit non-zero; a slow run never does.
"""

import dataclasses
import fcntl
import os
import queue
import re
import resource
import subprocess
import threading
import time

from . import common, services
from .common import BenchError, say

PGBENCH = "/usr/bin/pgbench"
PSQL = "/usr/bin/psql"
F_SETPIPE_SZ = 1031

WORKLOADS = [
    # name, port role, pgbench arguments, title
    ("select_rw", "rw", ["-S"], "select-only, rw"),
    ("select_ro", "ro", ["-S"], "select-only, ro"),
    ("tpcb_rw", "rw", [], "tpcb-like, rw"),
]


def pg_env(ep):
    return common.clean_env({"PGPASSWORD": ep.password, "PGCONNECT_TIMEOUT": "10",
                             "PGSSLMODE": "disable", "PGAPPNAME": "pgrelay-bench"})


def conn_args(ep):
    return ["-h", ep.host, "-p", str(ep.port), "-U", ep.user]


# ---------------------------------------------------------------- pgbench

def parse_pgbench(out):
    def num(pattern, cast=float):
        m = re.search(pattern, out, re.M)
        return cast(m.group(1)) if m else None
    return {
        "tps": num(r"^tps = ([0-9.]+)"),
        "txns": num(r"^number of transactions actually processed: (\d+)", int),
        "failed": num(r"^number of failed transactions: (\d+)", int) or 0,
        "latency_ms": num(r"^latency average = ([0-9.]+) ms"),
        "conn_ms": num(r"^initial connection time = ([0-9.]+) ms"),
        "avg_conn_ms": num(r"^average connection time = ([0-9.]+) ms"),
    }


PROGRESS = re.compile(r"^progress: ([0-9.]+) s, ([0-9.]+) tps")
ABORTED = re.compile(r"client \d+ (script \d+ )?aborted")


def pgbench(ep, args, duration, proxy=None, clients=16, threads=2, extra_timeout=120):
    """One pgbench run. With proxy (a common.Proc), the proxy's CPU is read at
    every progress report (-P 1), so its cost per transaction can be taken
    over the steady state only: from the first report after every client has
    connected (pgbench's "initial connection time") to the last report. SCRAM
    logins would otherwise weigh on short runs, and unevenly: PgBouncer does
    SCRAM itself, twice per login, pgrelay and HAProxy none."""
    argv = [PGBENCH, "-n", "-c", str(clients), "-j", str(threads), "-T", str(duration), "-P", "1"]
    argv += args + conn_args(ep) + [ep.dbname]
    pid = proxy.pid if proxy else None
    proc = subprocess.Popen(argv, env=pg_env(ep), cwd="/", text=True, start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    killer = threading.Timer(duration + extra_timeout, lambda: os.killpg(proc.pid, 9))
    killer.start()
    samples, other = [], []

    def pump():
        for line in proc.stderr:
            m = PROGRESS.match(line)
            if m:
                cpu = cpu_or_none(pid)
                samples.append((float(m.group(1)), float(m.group(2)), cpu))
            else:
                other.append(line.rstrip())
    reader = threading.Thread(target=pump, daemon=True)
    cpu0 = cpu_or_none(pid)
    reader.start()
    try:
        out = proc.stdout.read()
        proc.wait()
        reader.join(10)
    except BaseException:
        os.killpg(proc.pid, 9)
        proc.wait()
        raise
    finally:
        killer.cancel()
        proc.stdout.close()
    cpu1 = cpu_or_none(pid)
    r = parse_pgbench(out)
    problems = []
    if proc.returncode != 0:
        problems.append("pgbench exit %d%s" % (proc.returncode, " (killed: timeout)"
                                                if proc.returncode == -9 else ""))
    if not r["txns"]:
        problems.append("no transaction completed")
    if r["failed"]:
        problems.append("%d failed transactions" % r["failed"])
    if r["tps"] is None:
        problems.append("no tps in the output")
    # What went wrong, for a run that is allowed to fail (PgBouncer's
    # -M prepared in transaction mode): pgbench's first error and how many
    # clients it aborted.
    errs = [l for l in other if "error" in l.lower()]
    if errs:
        r["first_error"] = errs[0][:500]
    aborted = sum(1 for l in other if ABORTED.search(l))
    if aborted:
        r["aborted_clients"] = aborted
    if problems:
        r["error"] = "%s: %s" % ("; ".join(problems), " | ".join(other[-3:])[:500])
    if pid and cpu0 is not None and cpu1 is not None:
        r["cpu_s"] = round(cpu1 - cpu0, 3)
        if r["txns"]:
            r["cpu_us_per_txn_whole_run"] = round((cpu1 - cpu0) * 1e6 / r["txns"], 3)
        steady_cpu_per_txn(r, samples)
    return r


def cpu_or_none(pid):
    if not pid:
        return None
    try:
        return common.cpu_seconds(pid)
    except OSError:
        return None


def steady_cpu_per_txn(r, samples):
    connected = (r.get("conn_ms") or 0) / 1000.0
    start = next((i for i, s in enumerate(samples) if s[0] >= connected), None)
    if start is None or len(samples) - start < 2 or samples[start][2] is None:
        r["cpu_window"] = "whole run"
        if "cpu_us_per_txn_whole_run" in r:
            r["cpu_us_per_txn"] = r["cpu_us_per_txn_whole_run"]
        return
    txns = sum(samples[i][1] * (samples[i][0] - samples[i - 1][0])
               for i in range(start + 1, len(samples)))
    cpu = samples[-1][2] - samples[start][2]
    r["cpu_window"] = "%.0f-%.0f s" % (samples[start][0], samples[-1][0])
    if txns > 0:
        r["cpu_us_per_txn"] = round(cpu * 1e6 / txns, 3)


def measured(target, fn):
    """Run fn() and add the wall time; a proxy that died meanwhile is an error."""
    t0 = time.monotonic()
    r = fn()
    r["wall_s"] = round(time.monotonic() - t0, 3)
    if target.proc and not target.proc.alive():
        r["error"] = "%s died during the run%s" % (target.name, target.proc.log_tail())
    return r


def record(runs, entry, errors):
    runs.append(entry)
    if entry.get("error"):
        errors.append("%s %s round %d %s: %s" % (
            entry.get("scenario"), entry.get("workload", ""), entry["round"],
            entry["target"], entry["error"]))
        say("  %s: ERROR %s" % (entry["target"], entry["error"]))


def endpoint(target, role):
    return target.rw if role == "rw" else target.ro


def throughput(bench):
    """Scenario 1 (and 2): pgbench -S and tpcb-like, -c 16 -j 2, the proxy's
    CPU read from /proc around each run."""
    o = bench.opts
    runs, errors = [], []
    for wl, role, args, title in WORKLOADS:
        if o.warmup:
            for t in bench.targets:
                pgbench(endpoint(t, role), args, o.warmup)
        for rnd in range(1, o.rounds + 1):
            for t in bench.targets:
                r = measured(t, lambda: pgbench(endpoint(t, role), args, o.duration, t.proc))
                r.update(scenario="throughput", workload=wl, round=rnd, target=t.name)
                say("  %s round %d %-9s %8.0f tps%s" % (
                    title, rnd, t.name, r.get("tps") or 0,
                    "  %.1f us CPU/txn" % r["cpu_us_per_txn"] if "cpu_us_per_txn" in r else ""))
                record(runs, r, errors)
    return {"config": {"duration_s": o.duration, "rounds": o.rounds, "clients": 16,
                       "threads": 2, "scale": o.scale, "warmup_s": o.warmup},
            "runs": runs, "errors": errors}


def connection_rate(bench):
    """Scenario 3: pgbench -C -S through rw: a new connection (md5 login) for
    every transaction."""
    o = bench.opts
    runs, errors = [], []
    for rnd in range(1, o.rounds + 1):
        for t in bench.targets:
            ep = dataclasses.replace(t.rw, user=services.MD5_USER, password=services.MD5_PASSWORD)
            r = measured(t, lambda: pgbench(ep, ["-C", "-S"], o.conn_duration, t.proc))
            r.update(scenario="connrate", round=rnd, target=t.name)
            if r.get("txns") and r.get("wall_s"):
                r["conn_per_s"] = r["tps"]
            say("  connection rate round %d %-9s %6.0f connections/s" % (
                rnd, t.name, r.get("tps") or 0))
            record(runs, r, errors)
    return {"config": {"duration_s": o.conn_duration, "rounds": o.rounds, "clients": 16,
                       "user": services.MD5_USER + " (md5)"},
            "runs": runs, "errors": errors}


# ---------------------------------------------------------------- bulk

def copy_once(ep, rows, timeout):
    """COPY (SELECT repeat('x', 1000) ...) TO STDOUT through psql; the output
    is counted (one read per MiB of pipe) and thrown away."""
    sql = ("COPY (SELECT repeat('x', 1000) FROM generate_series(1, %d)) TO STDOUT" % rows)
    argv = [PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1"] + conn_args(ep) + ["-d", ep.dbname,
                                                                         "-c", sql]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=pg_env(ep), cwd="/", stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        fcntl.fcntl(proc.stdout.fileno(), F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass
    total = 0
    fd = proc.stdout.fileno()
    deadline = t0 + timeout
    try:
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if time.monotonic() > deadline:
                raise BenchError("COPY did not finish within %ss" % timeout)
        proc.wait(max(1.0, deadline - time.monotonic()))
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.stdout.close()
    elapsed = time.monotonic() - t0
    err = proc.stderr.read().decode(errors="replace").strip()
    proc.stderr.close()
    r = {"bytes": total, "seconds": round(elapsed, 3),
         "mb_per_s": round(total / 1e6 / elapsed, 1) if elapsed > 0 else None}
    want = rows * 1001
    if proc.returncode != 0 or total != want:
        r["error"] = "psql exit %s, %d of %d bytes: %s" % (proc.returncode, total, want, err[:300])
    return r


COPY_IN_TABLE = "bench_copy_in"


def copy_in_once(ep, rows, timeout):
    """COPY bench_copy_in FROM STDIN through psql, fed the same 1,001-byte
    lines that copy_once reads, in 1 MB writes; psql's COPY tag
    must count every row."""
    sql = "COPY %s FROM STDIN" % COPY_IN_TABLE
    argv = [PSQL, "-X", "-v", "ON_ERROR_STOP=1"] + conn_args(ep) + ["-d", ep.dbname, "-c", sql]
    per_chunk = 1000
    chunk = (b"x" * 1000 + b"\n") * per_chunk
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=pg_env(ep), cwd="/", stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.PIPE,
                            start_new_session=True)
    # psql answers only at the end ("COPY n"), so its output pipes cannot
    # fill while this thread writes; a timer kills it at the deadline.
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    fed, feed_error = 0, None
    try:
        left = rows
        while left > 0:
            n = min(per_chunk, left)
            proc.stdin.write(chunk if n == per_chunk else chunk[:n * 1001])
            fed += n * 1001
            left -= n
    except (BrokenPipeError, ValueError, OSError) as e:
        feed_error = str(e)
    try:
        try:
            proc.stdin.close()
        except OSError:
            pass
        out = proc.stdout.read()     # both tiny: the tag, or an error
        err = proc.stderr.read()
        proc.wait()
    finally:
        killer.cancel()
        proc.stdout.close()
        proc.stderr.close()
    if time.monotonic() - t0 >= timeout:
        raise BenchError("COPY FROM STDIN did not finish within %ss" % timeout)
    elapsed = time.monotonic() - t0
    out = out.decode(errors="replace").strip()
    err = err.decode(errors="replace").strip()
    m = re.search(r"^COPY (\d+)$", out, re.M)
    copied = int(m.group(1)) if m else None
    r = {"bytes": fed, "rows": copied, "seconds": round(elapsed, 3),
         "mb_per_s": round(fed / 1e6 / elapsed, 1) if elapsed > 0 else None}
    if proc.returncode != 0 or copied != rows or feed_error:
        r["error"] = "psql exit %s, COPY tag %r for %d rows (writer: %s): %s" % (
            proc.returncode, out[-80:], rows, feed_error, err[:300])
    return r


def bulk(bench):
    """Scenario 5: one large COPY TO STDOUT, then one COPY FROM STDIN of the
    same size into an unlogged table (emptied before each, untimed), through
    rw, per target and round."""
    import psycopg2
    o = bench.opts
    rows = max(1, int(o.copy_mb * 1e6 / 1001))
    direct = next(t for t in bench.targets if t.name == "direct")
    admin = psycopg2.connect(direct.rw.dsn(connect_timeout=10, sslmode="disable"))
    admin.autocommit = True
    cur = admin.cursor()
    cur.execute("CREATE UNLOGGED TABLE IF NOT EXISTS %s (line text)" % COPY_IN_TABLE)
    runs, errors = [], []
    try:
        for rnd in range(1, o.rounds + 1):
            for direction in ("out", "in"):
                for t in bench.targets:
                    if direction == "in":
                        cur.execute("TRUNCATE %s" % COPY_IN_TABLE)
                        cur.execute("CHECKPOINT")
                    c0 = cpu_or_none(t.pid)
                    if direction == "out":
                        r = measured(t, lambda: copy_once(t.rw, rows, timeout=600))
                    else:
                        r = measured(t, lambda: copy_in_once(t.rw, rows, timeout=900))
                    c1 = cpu_or_none(t.pid)
                    if c0 is not None and c1 is not None:
                        r["cpu_s"] = round(c1 - c0, 3)
                    r.update(scenario="bulk", round=rnd, target=t.name, direction=direction)
                    say("  COPY %s %d MB round %d %-9s %7.1f MB/s" % (
                        "TO STDOUT" if direction == "out" else "FROM STDIN", o.copy_mb, rnd,
                        t.name, r.get("mb_per_s") or 0))
                    record(runs, r, errors)
        cur.execute("DROP TABLE IF EXISTS %s" % COPY_IN_TABLE)
    finally:
        admin.close()
    return {"config": {"rows": rows, "row_bytes": 1001, "megabytes": round(rows * 1001 / 1e6, 1),
                       "rounds": o.rounds, "copy_in_table": COPY_IN_TABLE + " (unlogged)"},
            "runs": runs, "errors": errors}


# ---------------------------------------------------------------- memory

class LineReader:
    """Lines from a child's stdout, readable with a timeout."""

    def __init__(self, stream):
        self.q = queue.Queue()
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream):
        try:
            for line in stream:
                self.q.put(line.rstrip("\n"))
        except (OSError, ValueError):
            pass
        self.q.put(None)

    def until(self, prefix, timeout):
        """Lines up to and including the first starting with prefix."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError("no '%s' line within %ss (got: %s)" % (prefix, timeout, seen[-5:]))
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise BenchError("stream ended before '%s' (got: %s)" % (prefix, seen[-5:]))
            seen.append(line)
            if line.startswith(prefix):
                return seen


def haproxy_maxconn(count):
    """HAProxy refuses to start when 2 x maxconn (+ a few) exceeds RLIMIT_NOFILE."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return min(count + 100, (nofile - 100) // 2)


def tls_pair(bench):
    """A self-signed P-256 certificate for 127.0.0.1 in the run's temp dir,
    readable by the server user (PgBouncer runs as postgres): (cert, key)."""
    cert = os.path.join(bench.workdir, "bench-tls.crt")
    key = os.path.join(bench.workdir, "bench-tls.key")
    if not os.path.exists(cert):
        common.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-keyout", key, "-out", cert], timeout=60)
        os.chmod(key, 0o600)
        for path in (cert, key):
            common.chown_server(path)
    return cert, key


def memory_proxy(bench, kind, backend_port, count, tls=False):
    """Start a fresh proxy of that kind in front of the fake backend; with
    tls, the proxy requires TLS from its clients (the backend side stays
    plaintext)."""
    reg, wd = bench.reg, bench.workdir
    port = common.free_ports(1)[0]
    name = "%s-mem%s" % (kind, "-tls" if tls else "")
    cert, key = tls_pair(bench) if tls else (None, None)
    if kind == "pgrelay":
        text = services.pgrelay_static_config(port, backend_port)
        if tls:
            text += '[tls]\ncert = "%s"\nkey = "%s"\nclient_tls = "require"\n' % (cert, key)
        proc = services.start_pgrelay(reg, bench.pgrelay, wd, name, text, port)
        ep = services.Endpoint(port)
    elif tls and kind == "pgbouncer":
        text = services.pgbouncer_config(
            wd, name, port, [(services.DBNAME, backend_port)], "trust",
            max_client_conn=count + 1000, pool_size=count + 1000)
        text += ("client_tls_sslmode = require\nclient_tls_cert_file = %s\n"
                 "client_tls_key_file = %s\n" % (cert, key))
        proc = services.start_pgbouncer(reg, wd, name, text, port)
        ep = services.Endpoint(port)
    elif kind == "haproxy":
        proc = services.start_haproxy(reg, wd, name, services.haproxy_static_config(
            wd, port, backend_port, maxconn=haproxy_maxconn(count)), port)
        ep = services.Endpoint(port)
    else:
        proc = services.start_pgbouncer(reg, wd, name, services.pgbouncer_config(
            wd, name, port, [(services.DBNAME, backend_port)], "trust",
            max_client_conn=count + 1000, pool_size=count + 1000), port)
        ep = services.Endpoint(port)
    return proc, ep


def memory(bench):
    """Scenario 4: N idle client connections (startup + one query, then held)
    through each proxy to the fake backend; the proxy's VmRSS before and after."""
    o = bench.opts
    n = o.connections
    reg, wd = bench.reg, bench.workdir
    # A proxy holds two descriptors per client (client and backend side);
    # without CAP_SYS_RESOURCE the hard RLIMIT_NOFILE caps what fits.
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    fits = (nofile - 300) // 2 // 100 * 100
    note = None
    if n > fits:
        note = ("%s idle connections instead of %s: RLIMIT_NOFILE is %d here and a proxy "
                "needs two descriptors per connection" % (format(fits, ","), format(n, ","), nofile))
        say("  " + note)
        n = fits
    fake_port = common.free_ports(1)[0]
    fake = reg.spawn("fakepg", [common.PYTHON, bench.fakepg, "serve", "--port", str(fake_port)],
                     os.path.join(wd, "fakepg.log"))
    common.wait_port(fake_port, 30, fake, "fake backend")
    runs, errors = [], []
    try:
        # Plaintext clients through all three, then TLS clients through
        # pgrelay and PgBouncer (HAProxy here is a TCP proxy: TLS would be
        # its own termination mode, not the one PostgreSQL clients use).
        variants = [(k, False) for k in ("pgrelay", "haproxy", "pgbouncer")]
        variants += [(k, True) for k in ("pgrelay", "pgbouncer")]
        for rnd in range(1, o.mem_rounds + 1):
            for kind, tls in variants:
                r = {"scenario": "memory", "round": rnd, "target": kind, "connections": n}
                if tls:
                    r["variant"] = "tls"
                try:
                    r.update(memory_once(bench, kind, fake, fake_port, n, tls=tls))
                except BenchError as e:
                    r["error"] = str(e)
                say("  %d idle %sconnections round %d %-9s %s" % (
                    n, "TLS " if tls else "", rnd, kind,
                    "%.2f KiB/connection (RSS %d -> %d KiB)" % (
                        r["kib_per_conn"], r["rss_before_kib"], r["rss_after_kib"])
                    if "kib_per_conn" in r else ""))
                record(runs, r, errors)
    finally:
        reg.stop(fake)
    return {"config": {"connections": n, "requested": o.connections, "limit_note": note,
                       "nofile": nofile, "rounds": o.mem_rounds, "batch": o.mem_batch,
                       "client": "startup + one 'SELECT 1' round trip, then idle"},
            "runs": runs, "errors": errors}


def memory_once(bench, kind, fake, fake_port, n, start=None, fds_per_conn=2, password=None,
                label=None, tls=False):
    """start: memory_proxy (passthrough) or the pooled rows' own; a pooler in
    transaction mode holds one descriptor per idle client (fds_per_conn=1).
    tls: the clients negotiate TLS (SSLRequest) before their startup."""
    reg, wd = bench.reg, bench.workdir
    label = label or (kind + ("-tls" if tls else ""))
    if tls:
        proc, ep = memory_proxy(bench, kind, fake_port, n, tls=True)
    else:
        proc, ep = (start or memory_proxy)(bench, kind, fake_port, n)
    holder = None
    try:
        time.sleep(1.0)   # let start-up allocations settle
        before = common.rss_kib(proc.pid)
        threads = common.thread_count(proc.pid)
        holder = reg.spawn("hold-%s" % label, [
            common.PYTHON, bench.fakepg, "hold", "--port", str(ep.port), "--count", str(n),
            "--batch", str(bench.opts.mem_batch), "--user", ep.user, "--dbname", ep.dbname,
            "--query", "--hold-max", "600"] + (["--password", password] if password else [])
            + (["--tls"] if tls else []),
            os.path.join(wd, "hold-%s.log" % label), stdin=True, stdout_pipe=True)
        lines = LineReader(holder.popen.stdout)
        seen = lines.until("ready", timeout=120 + n / 50)
        ready = seen[-1].split()
        held, open_s = int(ready[1]), float(ready[2])
        problems = [l for l in seen if l.startswith("error")]
        time.sleep(1.0)
        if not proc.alive():
            raise BenchError("%s died holding connections%s" % (kind, proc.log_tail()))
        after = common.rss_kib(proc.pid)
        fds = len(os.listdir("/proc/%d/fd" % proc.pid))
        hwm = common.status_kib(proc.pid, "VmHWM")
        fake_rss = common.rss_kib(fake.pid)
        r = {"rss_before_kib": before, "rss_after_kib": after, "rss_peak_kib": hwm,
             "held": held, "open_seconds": open_s, "threads": threads,
             "kib_per_conn": round((after - before) / max(held, 1), 3),
             "fake_backend_rss_kib": fake_rss, "proxy_fds": fds}
        if held != n or problems:
            r["error"] = "held %d of %d connections; %s" % (held, n, " ".join(problems)[:300])
        elif fds < fds_per_conn * n:
            r["error"] = ("%s has %d descriptors open for %d connections: %s" % (
                kind, fds, n, "not every client has a backend connection" if fds_per_conn > 1
                else "not every client is connected"))
        holder.popen.stdin.write("close\n")
        holder.popen.stdin.flush()
        lines.until("closed", timeout=60)
        holder.popen.wait(30)
        return r
    except (OSError, ValueError) as e:
        raise BenchError("%s: %s" % (kind, e))
    finally:
        if holder:
            reg.stop(holder)
        reg.stop(proc)
