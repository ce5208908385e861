"""bench/run: start everything on loopback, run the scenarios, report."""

import argparse
import datetime
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from types import SimpleNamespace

from . import common, failover, pooled, report, scenarios, services
from .common import BenchError, say

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH_DIR = os.path.join(ROOT, "bench")
ALL_SCENARIOS = ["throughput", "connrate", "memory", "bulk", "pool-throughput", "pool-connrate",
                 "pool-memory", "failover"]
# --scenarios pooled: the three pooled ones.
SCENARIO_GROUPS = {"pooled": ["pool-throughput", "pool-connrate", "pool-memory"]}
DCS_KINDS = ["zookeeper", "etcd"]
DCS_LABELS = {"zookeeper": "ZooKeeper", "etcd": "etcd"}
NOFILE = 100000
TIME_LIMITS = {"smoke": 540, "quick": 1200, "full": 7200}


class TimeLimit(BaseException):
    """SIGALRM at --time-limit: unwinds like Ctrl-C, so everything is cleaned up."""

MODES = {
    # rounds: throughput/connrate/bulk and the pooled ones; mem_rounds: memory
    # and pool-memory. pool_clients: the pooled rows' pgbench clients (on 20
    # server connections); pool_duration: their throughput runs' -T (500 SCRAM
    # logins take a few seconds of it, left out of TPS and CPU).
    "smoke": dict(rounds=1, duration=3, conn_duration=2, warmup=0, scale=1,
                  connections=200, mem_rounds=1, mem_batch=100, copy_mb=10, switchovers=1,
                  pool_clients=30, pool_duration=2, crowd=5),
    "quick": dict(rounds=2, duration=6, conn_duration=4, warmup=2, scale=10,
                  connections=2000, mem_rounds=1, mem_batch=200, copy_mb=200, switchovers=3,
                  pool_clients=500, pool_duration=15, crowd=40),
    "full": dict(rounds=3, duration=20, conn_duration=10, warmup=3, scale=10,
                 connections=10000, mem_rounds=3, mem_batch=250, copy_mb=1000, switchovers=10,
                 pool_clients=500, pool_duration=20, crowd=40),
}


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="bench/run",
        description="pgrelay against direct, HAProxy and PgBouncer on a throwaway "
                    "ZooKeeper (or etcd) + Patroni cluster on loopback (see bench/README.md).")
    p.add_argument("mode", choices=list(MODES) + ["report"],
                   help="report: re-render the table and charts of RESULTS.json (after "
                        "a change to the report, say) without measuring anything")
    p.add_argument("json", nargs="?", metavar="RESULTS.json", help="for report")
    p.add_argument("--pgrelay", help="pgrelay binary (default: BUILD_DIR/proxy/pgrelay, "
                                     "built with .ci/build.sh if missing)")
    p.add_argument("--build-dir", default=os.environ.get("BUILD_DIR", "build"),
                   help="where .ci/build.sh builds (default: build, or $BUILD_DIR)")
    p.add_argument("--out", help="results directory (default: bench/results; smoke: a temp "
                                 "dir, removed at exit unless --keep)")
    p.add_argument("--name", help="results file name (default: the mode; with --dcs etcd: "
                                  "MODE-etcd)")
    p.add_argument("--dcs", choices=DCS_KINDS, default="zookeeper",
                   help="Patroni's DCS, which pgrelay and the failover scenario's leader "
                        "watch follow (default zookeeper)")
    p.add_argument("--scenarios", default=",".join(ALL_SCENARIOS),
                   help="comma-separated subset of %s; 'pooled' stands for the three "
                        "pool-* ones" % ",".join(ALL_SCENARIOS))
    for key, typ in (("rounds", int), ("duration", int), ("conn-duration", int),
                     ("warmup", int), ("scale", int), ("connections", int),
                     ("mem-rounds", int), ("copy-mb", int), ("switchovers", int),
                     ("pool-clients", int), ("pool-duration", int), ("crowd", int)):
        p.add_argument("--" + key, type=typ, help="override the mode's %s" % key)
    p.add_argument("--time-limit", type=int,
                   help="stop (and clean up) after this many seconds; default: smoke 540, "
                        "quick 1200, full 7200")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.mode == "report":
        if not args.json:
            p.error("report needs a RESULTS.json")
        return args
    opts = dict(MODES[args.mode])
    for key in opts:
        val = getattr(args, key, None)
        if val is not None:
            opts[key] = val
    args.opts = SimpleNamespace(**opts)
    args.scenario_list = []
    for s in (s.strip() for s in args.scenarios.split(",")):
        for one in SCENARIO_GROUPS.get(s, [s] if s else []):
            if one not in args.scenario_list:
                args.scenario_list.append(one)
    bad = [s for s in args.scenario_list if s not in ALL_SCENARIOS]
    if bad:
        p.error("unknown scenario(s) %s" % ", ".join(bad))
    return args


def raise_nofile():
    """10,000 held connections are 20,000 descriptors in a proxy; children
    (pgrelay, HAProxy, PgBouncer, the fake backend) inherit this limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return
        except (ValueError, OSError):
            want = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))


def find_pgrelay(args):
    if args.pgrelay:
        path = os.path.abspath(args.pgrelay)
        if not os.access(path, os.X_OK):
            raise BenchError("--pgrelay %s is not an executable" % path)
        return path
    build = args.build_dir if os.path.isabs(args.build_dir) else os.path.join(ROOT, args.build_dir)
    path = os.path.join(build, "proxy", "pgrelay")
    if not os.access(path, os.X_OK):
        say("no %s: building it with .ci/build.sh" % path)
        env = common.clean_env({"BUILD_DIR": build})
        common.run(["bash", os.path.join(ROOT, ".ci", "build.sh")], timeout=3600, env=env)
    if not os.access(path, os.X_OK):
        raise BenchError("the build did not produce %s" % path)
    return path


def check_tools(dcs="zookeeper"):
    needed = ["/usr/bin/pgbench", "/usr/bin/psql", "/usr/sbin/haproxy", "/usr/sbin/pgbouncer",
              "/usr/bin/patroni", "/usr/bin/patronictl", common.PYTHON]
    # kazoo: the failover scenario's ZooKeeper watch; on etcd the watch is
    # plain HTTP (stdlib), and the cluster fixture checks etcd's own needs.
    modules = ("psycopg2", "kazoo", "matplotlib")
    if dcs == "etcd":
        needed += ["/usr/bin/etcd", "/usr/bin/etcdctl"]
        modules = ("psycopg2", "matplotlib")
    missing = [p for p in needed if not os.path.exists(p)]
    for mod in modules:
        res = common.run([common.PYTHON, "-c", "import %s" % mod], timeout=60, check=False)
        if res.returncode != 0:
            missing.append("python3 module %s" % mod)
    if missing:
        raise BenchError("missing %s (bash .ci/deps.sh installs them)" % ", ".join(missing))


class Bench:
    def __init__(self, args, workdir):
        self.args = args
        self.opts = args.opts
        self.workdir = workdir
        self.reg = common.Registry()
        self.cluster = None
        self.targets = []
        self.pgrelay = None
        self.fakepg = os.path.join(BENCH_DIR, "harness", "fakepg.py")

    # ------------------------------------------------------------ set-up

    def start_cluster(self):
        dcs = self.args.dcs
        self.cluster = services.Cluster(ROOT, self.workdir, dcs)
        t0 = time.monotonic()
        say("starting %s + 3 Patroni nodes (PostgreSQL 15)" % DCS_LABELS[dcs])
        self.cluster.up(3)
        leader = self.cluster.leader()
        say("cluster up in %.0f s: leader %s, %s" % (
            time.monotonic() - t0, leader, ", ".join(
                "%s pg %d rest %d" % (n, v["pg_port"], v["rest_port"])
                for n, v in sorted(self.cluster.nodes.items()))))
        return leader

    def prepare_database(self, leader):
        import psycopg2
        primary = services.Endpoint(self.cluster.nodes[leader]["pg_port"])
        say("pgbench -i -s %d on %s" % (self.opts.scale, leader))
        common.run(["/usr/bin/pgbench", "-i", "-q", "-s", str(self.opts.scale)]
                   + scenarios.conn_args(primary) + [primary.dbname],
                   timeout=900, env=scenarios.pg_env(primary))
        conn = psycopg2.connect(primary.dsn(connect_timeout=10))
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute(failover.SETUP_SQL)
        cur.execute("SELECT pg_current_wal_lsn()")
        lsn = cur.fetchone()[0]
        conn.close()
        # Replicas must have the tables before anything reads them through ro.
        for name in self.cluster.replicas(leader):
            ep = services.Endpoint(self.cluster.nodes[name]["pg_port"])
            deadline = time.monotonic() + 120
            while True:
                c = psycopg2.connect(ep.dsn(connect_timeout=10))
                cur = c.cursor()
                cur.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))
                caught_up = cur.fetchone()[0]
                c.close()
                if caught_up:
                    break
                if time.monotonic() > deadline:
                    raise BenchError("replica %s did not replay pgbench -i in 120 s" % name)
                time.sleep(0.2)

    def start_targets(self, leader):
        wd, cl = self.workdir, self.cluster
        replicas = cl.replicas(leader)
        primary_port = cl.nodes[leader]["pg_port"]
        replica_port = cl.nodes[replicas[0]]["pg_port"]
        direct = services.Target("direct", services.Endpoint(primary_port),
                                 services.Endpoint(replica_port),
                                 notes={"rw": leader, "ro": replicas[0]})

        rw, ro, admin = common.free_ports(3)
        proc = services.start_pgrelay(self.reg, self.pgrelay, wd, "pgrelay",
                                      services.pgrelay_config(rw, ro, admin, cl), rw,
                                      admin_port=admin)
        relay = services.Target("pgrelay", services.Endpoint(rw), services.Endpoint(ro), proc,
                                notes={"admin": admin})

        hrw, hro = common.free_ports(2)
        proc = services.start_haproxy(self.reg, wd, "haproxy",
                                      services.haproxy_patroni_config(wd, hrw, hro, cl), hrw)
        haproxy = services.Target("haproxy", services.Endpoint(hrw), services.Endpoint(hro), proc)

        bport = common.free_ports(1)[0]
        proc = services.start_pgbouncer(self.reg, wd, "pgbouncer", services.pgbouncer_config(
            wd, "pgbouncer", bport, [("postgres", primary_port), ("postgres_ro", replica_port)],
            "hba", max_client_conn=1000, pool_size=40), bport)
        bouncer = services.Target("pgbouncer", services.Endpoint(bport),
                                  services.Endpoint(bport, dbname="postgres_ro"), proc,
                                  notes={"rw": leader, "ro": replicas[0]})
        say("waiting for HAProxy's health checks to settle (fall 3 x inter 3s)")
        services.wait_haproxy_view(wd, cl, leader)
        self.targets = [direct, relay, haproxy, bouncer]
        self.check_routing()
        say("targets: " + ", ".join("%s rw %d ro %d%s" % (
            t.name, t.rw.port, t.ro.port, "" if not t.pid else " (pid %d)" % t.pid)
            for t in self.targets))


    def check_routing(self):
        """Every target's rw must reach the primary and ro a replica, or the
        numbers would compare different things."""
        import psycopg2
        names = self.cluster.port_to_name()
        for t in self.targets:
            for role, ep, want in (("rw", t.rw, False), ("ro", t.ro, True)):
                try:
                    c = psycopg2.connect(ep.dsn(connect_timeout=10, sslmode="disable"))
                    cur = c.cursor()
                    cur.execute("SELECT pg_is_in_recovery(), inet_server_port()")
                    in_recovery, port = cur.fetchone()
                    c.close()
                except psycopg2.Error as e:
                    raise BenchError("%s %s: %s" % (t.name, role, str(e).strip()))
                if in_recovery != want:
                    raise BenchError("%s %s reached %s, a %s" % (
                        t.name, role, names.get(port, port), "replica" if in_recovery else "primary"))


def run_scenario(results, name, fn, bench):
    say("scenario %s" % name)
    t0 = time.monotonic()
    try:
        res = fn(bench)
    except BenchError as e:
        results["errors"].append("%s: %s" % (name, e))
        say("scenario %s failed: %s" % (name, e))
        return
    res["seconds"] = round(time.monotonic() - t0, 1)
    results["scenarios"][name] = res
    results["errors"] += res.get("errors", [])
    say("scenario %s done in %.0f s" % (name, res["seconds"]))


def write_outputs(results, outdir, name):
    os.makedirs(outdir, exist_ok=True)
    rows = report.summarize(results)
    try:
        results["charts"] = report.charts(results, rows, outdir, name)
    except Exception as e:  # a chart must not hide the numbers
        results["errors"].append("charts: %s: %s" % (type(e).__name__, e))
        results["charts"] = []
    results["summary"] = [{k: v for k, v in r.items() if k != "fmt"} for r in rows]
    md = report.markdown(results, rows)
    with open(os.path.join(outdir, "%s.md" % name), "w") as f:
        f.write(md)
    services.dump_json(os.path.join(outdir, "%s.json" % name), results)
    return md


def rerender(args):
    import json
    with open(args.json) as f:
        results = json.load(f)
    outdir = os.path.abspath(args.out or os.path.dirname(os.path.abspath(args.json)))
    name = args.name or results["name"]
    results["errors"] = [e for e in results["errors"] if not e.startswith("charts:")]
    print(write_outputs(results, outdir, name))
    say("re-rendered %s/%s.{json,md} from %s" % (outdir, name, args.json))
    return 1 if results["errors"] else 0


def main(argv=None):
    args = parse_args(argv)
    if args.mode == "report":
        return rerender(args)
    common.VERBOSE = args.verbose
    name = args.name or (args.mode if args.dcs == "zookeeper" else "%s-%s" % (args.mode, args.dcs))

    def on_signal(signum, frame):
        raise KeyboardInterrupt()

    def on_alarm(signum, frame):
        raise TimeLimit()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    limit = args.time_limit or TIME_LIMITS[args.mode]
    signal.alarm(limit)

    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="pgrelay-bench-", dir="/tmp")
    os.chmod(workdir, 0o755)   # the postgres user runs Patroni and PgBouncer in here
    if args.out:
        outdir = os.path.abspath(args.out)
    elif args.mode == "smoke":
        outdir = os.path.join(workdir, "results")
    else:
        outdir = os.path.join(BENCH_DIR, "results")
    results = {"name": name, "mode": args.mode, "dcs": args.dcs,
               "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
               "options": vars(args.opts), "scenarios": {}, "errors": []}
    bench = Bench(args, workdir)
    code = 0
    try:
        raise_nofile()
        check_tools(args.dcs)
        bench.pgrelay = find_pgrelay(args)
        results["host"] = services.versions(bench.pgrelay)
        results["host"]["nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        say("mode %s%s, scenarios %s, work dir %s, results in %s" % (
            args.mode, "" if args.dcs == "zookeeper" else " on %s" % DCS_LABELS[args.dcs],
            ",".join(args.scenario_list), workdir, outdir))
        # The memory scenarios need no cluster (a fake backend): first.
        if "memory" in args.scenario_list:
            run_scenario(results, "memory", scenarios.memory, bench)
        if "pool-memory" in args.scenario_list:
            run_scenario(results, "pool-memory", pooled.pool_memory, bench)
        cluster_scenarios = [s for s in args.scenario_list if s not in ("memory", "pool-memory")]
        if cluster_scenarios:
            leader = bench.start_cluster()
            bench.prepare_database(leader)
            bench.start_targets(leader)
            results["topology"] = {t.name: {"rw": t.rw.port, "ro": t.ro.port, **t.notes}
                                   for t in bench.targets}
            results["topology"]["leader"] = leader
            fns = {"throughput": scenarios.throughput, "connrate": scenarios.connection_rate,
                   "bulk": scenarios.bulk, "pool-throughput": pooled.pool_throughput,
                   "pool-connrate": pooled.pool_connrate, "failover": failover.failover}
            # failover last: afterwards the primary has moved and PgBouncer
            # points at a replica.
            for s in ("throughput", "connrate", "bulk", "pool-throughput", "pool-connrate",
                      "failover"):
                if s in cluster_scenarios:
                    run_scenario(results, s, fns[s], bench)
    except BenchError as e:
        results["errors"].append("setup: %s" % e)
        say("FAILED: %s" % e)
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
        code = 130
    except TimeLimit:
        results["errors"].append("stopped at the time limit (%d s)" % limit)
        say("time limit of %d s reached; cleaning up" % limit)
    finally:
        signal.alarm(0)
        for t in bench.targets:
            if t.proc and not t.proc.alive():
                results["errors"].append("%s exited during the run (code %s)%s" % (
                    t.name, t.proc.returncode, t.proc.log_tail()))
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # finish cleaning up
        bench.reg.stop_all()
        if bench.cluster:
            bench.cluster.down()
    results["seconds"] = round(time.monotonic() - started, 1)
    try:
        if code == 0:
            md = write_outputs(results, outdir, name)
            print(md)
            say("results: %s/%s.{json,md}%s; %.0f s in all" % (
                outdir, name, " + %d PNG" % len(results.get("charts", [])), results["seconds"]))
    finally:
        if args.keep:
            say("kept %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if code:
        return code
    if results["errors"]:
        say("%d error(s): a scenario did not run cleanly (timings never fail the run)"
            % len(results["errors"]))
        return 1
    return 0
