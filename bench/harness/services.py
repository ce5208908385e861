"""The systems under test: the Patroni cluster, pgrelay, HAProxy, PgBouncer.

Each start_* function writes a config into the run's temp dir, starts the
process through the Registry (so it is stopped on any exit) and waits until it
serves. A Target is what the scenarios talk to: a name, the process whose CPU
and memory are read from /proc (None for direct), and the rw / ro endpoints.
"""

import json
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from . import common
from .common import HOST, BenchError, say

BENCH_USER = "scramuser"
BENCH_PASSWORD = "scrampass"
# The connection-rate scenario logs in with md5: SCRAM's 4096 PBKDF2
# iterations on both ends of every login would hide what the proxies cost.
MD5_USER, MD5_PASSWORD = "md5user", "md5pass"
PROBE_USER, PROBE_PASSWORD = "pgrelay", "pgrelay"
DBNAME = "postgres"
PG_BINDIR = "/usr/lib/postgresql/15/bin"


@dataclass
class Endpoint:
    port: int
    dbname: str = DBNAME
    host: str = HOST
    user: str = BENCH_USER
    password: str = BENCH_PASSWORD

    def dsn(self, **extra):
        parts = dict(host=self.host, port=self.port, dbname=self.dbname,
                     user=self.user, password=self.password)
        parts.update(extra)
        return " ".join("%s=%s" % kv for kv in parts.items())


@dataclass
class Target:
    name: str
    rw: Endpoint
    ro: Endpoint = None
    proc: object = None          # common.Proc of the proxy; None for direct
    notes: dict = field(default_factory=dict)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None


# ---------------------------------------------------------------- cluster

class Cluster:
    """ZooKeeper (or etcd) + Patroni through tests/fixtures/patroni_cluster.py."""

    def __init__(self, root, workdir, dcs="zookeeper"):
        self.fixture = os.path.join(root, "tests", "fixtures", "patroni_cluster.py")
        self.dir = os.path.join(workdir, "cluster")
        self.dcs = dcs    # "zookeeper" or "etcd"
        self.nodes = {}   # name -> {"pg_port", "rest_port"}
        self.zk_hosts = None
        self.etcd_url = None   # "http://127.0.0.1:PORT" (--dcs etcd, no auth)
        self.scope = None
        self.namespace = "service"
        self.started = False

    def cli(self, *args, timeout=120, check=True):
        return common.run([common.PYTHON, self.fixture] + list(args) + ["--dir", self.dir],
                          timeout=timeout, check=check)

    def up(self, nodes=3):
        self.started = True   # 'down' cleans up a half-built cluster too
        extra = ["--dcs", "etcd"] if self.dcs == "etcd" else []
        res = self.cli("up", "--nodes", str(nodes), *extra, timeout=600)
        kind = None
        for line in res.stdout.splitlines():
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "dcs" and len(parts) > 1:
                kind = parts[1]
            elif parts[0] == "zookeeper":
                self.zk_hosts = parts[1]
            elif parts[0] == "etcd":
                self.etcd_url = parts[1]
            elif parts[0] == "scope":
                self.scope = parts[1]
            elif parts[0] == "namespace":
                self.namespace = parts[1].strip("/")
            elif parts[0] == "node":
                self.nodes[parts[1]] = {"pg_port": int(parts[2]), "rest_port": int(parts[3])}
        if self.dcs == "etcd":
            have_dcs = kind == "etcd" and self.etcd_url
        else:
            have_dcs = self.zk_hosts
        if not (have_dcs and self.scope and len(self.nodes) == nodes):
            raise BenchError("unexpected output from patroni_cluster.py up:\n%s" % res.stdout)

    def down(self):
        if self.started:
            res = self.cli("down", timeout=180, check=False)
            if res.returncode != 0:
                say("cluster teardown: %s" % (res.stderr or res.stdout).strip())
            self.started = False

    def leader(self):
        return self.cli("leader", "--wait", "30", timeout=60).stdout.strip()

    def replicas(self, leader=None):
        leader = leader or self.leader()
        return sorted(n for n in self.nodes if n != leader)

    def switchover(self):
        """Switch over to the sync standby; returns (old, new, seconds)."""
        out = self.cli("switchover", timeout=240).stdout.split()
        if len(out) != 4 or out[0] != "switchover":
            raise BenchError("unexpected switchover output: %s" % " ".join(out))
        return out[1], out[2], float(out[3])

    def wait_healthy(self, timeout=120):
        self.cli("wait", "--timeout", str(timeout), timeout=timeout + 30)

    def port_to_name(self):
        return {v["pg_port"]: k for k, v in self.nodes.items()}

    @property
    def leader_path(self):
        return "/%s/%s/leader" % (self.namespace, self.scope)


# ---------------------------------------------------------------- pgrelay

def pgrelay_config(rw, ro, admin, cluster, api_interval_ms=None):
    """pgrelay following the cluster through its DCS (ZooKeeper or etcd), or
    with api_interval_ms by polling Patroni's REST API (source =
    "patroni_api"): the failover scenario's pgrelay-api target, for how far a
    poll lags a watch."""
    if api_interval_ms is not None:
        urls = ", ".join('"http://%s:%d"' % (HOST, v["rest_port"])
                         for _, v in sorted(cluster.nodes.items()))
        name, store = "its REST API", ('source = "patroni_api"\n[topology.patroni_api]\nurls = [%s]\n'
                                       'interval = "%dms"' % (urls, api_interval_ms))
    else:
        if cluster.dcs == "etcd":
            name, store = "etcd", 'source = "etcd"\n[topology.etcd]\nendpoints = ["%s"]' % cluster.etcd_url
        else:
            name, store = "ZooKeeper", 'source = "zookeeper"\n[topology.zookeeper]\nhosts = "%s"' % cluster.zk_hosts
        store += '\nnamespace = "%s"\nscope = "%s"' % (cluster.namespace, cluster.scope)
    return """\
# Written by bench/run: pgrelay following the Patroni cluster through {name}.
[server]
threads = 0
log_level = "warning"
[listen]
rw = "{h}:{rw}"
ro = "{h}:{ro}"
[admin]
listen = "{h}:{admin}"
[topology]
{store}
[topology.probe]
user = "{pu}"
password = "{pp}"
""".format(name=name, store=store, h=HOST, rw=rw, ro=ro, admin=admin, pu=PROBE_USER, pp=PROBE_PASSWORD)


def pgrelay_static_config(rw, backend_port):
    return """\
# Written by bench/run: pgrelay in front of the fake backend (memory scenario).
[server]
threads = 0
log_level = "warning"
[listen]
rw = "{h}:{rw}"
ro = ""
[admin]
listen = ""
[topology]
source = "static"
[[topology.members]]
name = "fake"
host = "{h}"
port = {port}
role = "primary"
""".format(h=HOST, rw=rw, port=backend_port)


POOL_SIZE = 20   # server connections per pool, pgrelay and PgBouncer alike


def md5_secret(user, password):
    """pg_authid's md5 form: "md5" + md5(password + user)."""
    import hashlib
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def pgrelay_userlist(workdir, name):
    """pgrelay's auth_file for the pooled rows (PgBouncer's userlist.txt
    format). scramuser with its plain password: pgrelay runs SCRAM with the
    client (as PgBouncer does for it) and logs in to PostgreSQL with the
    password; md5user with its md5 hash, so that pgrelay asks the client for
    md5, as PgBouncer's auth_type = hba does for it (the connection-rate
    rows' user)."""
    path = os.path.join(workdir, "%s.userlist.txt" % name)
    with open(path, "w") as f:
        f.write('"%s" "%s"\n"%s" "%s"\n' % (BENCH_USER, BENCH_PASSWORD, MD5_USER,
                                           md5_secret(MD5_USER, MD5_PASSWORD)))
    os.chmod(path, 0o600)
    return path


def pool_section(mode, auth_file, pool_size=POOL_SIZE):
    return """\
[pool]
pool_mode = "{mode}"
pool_size = {size}
auth_file = "{auth}"
""".format(mode=mode, size=pool_size, auth=auth_file)


def pgrelay_pooled_config(rw, admin, cluster, mode, auth_file, pool_size=POOL_SIZE):
    """A second pgrelay process for the pooled rows: the same topology
    configuration as the passthrough one, rw only, pooled."""
    text = pgrelay_config(rw, 0, admin, cluster).replace(
        'ro = "%s:0"' % HOST, 'ro = ""').replace(
        "the Patroni cluster", "the Patroni cluster, %s pooling on rw," % mode)
    return text + pool_section(mode, auth_file, pool_size)


def pgrelay_pooled_static_config(rw, backend_port, mode, auth_file, pool_size=POOL_SIZE):
    return pgrelay_static_config(rw, backend_port).replace(
        "(memory scenario)", "(pooled memory scenario, %s mode)" % mode) + \
        pool_section(mode, auth_file, pool_size)


def http_status(port, path, timeout=2.0):
    try:
        with urllib.request.urlopen("http://%s:%d%s" % (HOST, port, path), timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (OSError, ValueError):
        return None, ""


def start_pgrelay(reg, binary, workdir, name, config_text, rw_port, admin_port=None,
                  timeout=60, health=("/health", "/health/ro")):
    cfg = os.path.join(workdir, "%s.toml" % name)
    with open(cfg, "w") as f:
        f.write(config_text)
    proc = reg.spawn(name, [binary, "--config", cfg], os.path.join(workdir, "%s.log" % name))
    common.wait_port(rw_port, timeout, proc, name)
    if admin_port:
        deadline = time.monotonic() + timeout
        while True:
            rw, body = http_status(admin_port, "/health")
            ro, body_ro = (http_status(admin_port, "/health/ro") if "/health/ro" in health
                           else (200, ""))
            if rw == 200 and ro == 200:
                break
            if not proc.alive():
                raise BenchError("%s exited%s" % (name, proc.log_tail()))
            if time.monotonic() > deadline:
                raise BenchError("%s not healthy after %ss: /health %s %s, /health/ro %s %s"
                                 % (name, timeout, rw, body.strip(), ro, body_ro.strip()))
            time.sleep(0.1)
    return proc


# ---------------------------------------------------------------- HAProxy

HAPROXY_CHECKED = """\
    option httpchk OPTIONS {path}
    http-check expect status 200
    default-server inter 3s fall 3 rise 2 on-marked-down shutdown-sessions
"""


def haproxy_patroni_config(workdir, rw, ro, cluster):
    """Patroni's documented HAProxy setup: TCP mode, each member checked on
    its REST API (200 from /primary on the leader, /replica on replicas)."""
    servers = "".join("    server %s %s:%d maxconn 1000 check port %d\n"
                      % (n, HOST, v["pg_port"], v["rest_port"])
                      for n, v in sorted(cluster.nodes.items()))
    return """\
# Written by bench/run, after Patroni's documentation (haproxy.cfg).
global
    maxconn 4096
    stats socket {sock} mode 600 level admin

defaults
    mode tcp
    retries 2
    timeout client 30m
    timeout connect 4s
    timeout server 30m
    timeout check 5s

listen primary
    bind {h}:{rw}
{chk_p}{servers}
listen replicas
    bind {h}:{ro}
    balance roundrobin
{chk_r}{servers}""".format(sock=os.path.join(workdir, "haproxy.sock"), h=HOST, rw=rw, ro=ro,
                           servers=servers, chk_p=HAPROXY_CHECKED.format(path="/primary"),
                           chk_r=HAPROXY_CHECKED.format(path="/replica"))


def haproxy_static_config(workdir, port, backend_port, maxconn):
    return """\
# Written by bench/run: HAProxy in front of the fake backend (memory scenario).
global
    maxconn {mc}
    stats socket {sock} mode 600 level admin

defaults
    mode tcp
    timeout client 30m
    timeout connect 4s
    timeout server 30m

listen fake
    bind {h}:{port}
    server fake {h}:{bp} maxconn {mc}
""".format(mc=maxconn, sock=os.path.join(workdir, "haproxy-mem.sock"), h=HOST, port=port,
           bp=backend_port)


def start_haproxy(reg, workdir, name, config_text, port, timeout=30):
    cfg = os.path.join(workdir, "%s.cfg" % name)
    with open(cfg, "w") as f:
        f.write(config_text)
    log = os.path.join(workdir, "%s.log" % name)
    check = common.run(["haproxy", "-c", "-q", "-f", cfg], timeout=30, check=False)
    if check.returncode != 0:
        raise BenchError("haproxy rejects %s:\n%s" % (cfg, check.stderr or check.stdout))
    # -db: stay in the foreground, one process (its threads: nbthread = cores).
    proc = reg.spawn(name, ["haproxy", "-db", "-f", cfg], log)
    common.wait_port(port, timeout, proc, name)
    return proc


def haproxy_stat(sock_path):
    """{(proxy, server): status} from the stats socket ('show stat')."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(sock_path)
        s.sendall(b"show stat\n")
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    finally:
        s.close()
    lines = b"".join(chunks).decode(errors="replace").splitlines()
    if not lines or not lines[0].startswith("# "):
        return {}
    header = lines[0][2:].split(",")
    col = {name: i for i, name in enumerate(header)}
    out = {}
    for line in lines[1:]:
        f = line.split(",")
        if len(f) > col["status"]:
            out[(f[col["pxname"]], f[col["svname"]])] = f[col["status"]]
    return out


def wait_haproxy_view(workdir, cluster, leader, timeout=60):
    """HAProxy starts every server UP and needs fall x inter (9 s) to mark the
    wrong ones down: wait until primary has only the leader and replicas only
    the replicas."""
    sock = os.path.join(workdir, "haproxy.sock")
    deadline = time.monotonic() + timeout
    while True:
        stat = haproxy_stat(sock)
        want = {}
        for n in cluster.nodes:
            want[("primary", n)] = "UP" if n == leader else "DOWN"
            want[("replicas", n)] = "DOWN" if n == leader else "UP"
        have = {k: stat.get(k, "?") for k in want}
        if have == want:
            return
        if time.monotonic() > deadline:
            raise BenchError("HAProxy's view did not settle in %ss: %s" % (timeout, have))
        time.sleep(0.5)


# ---------------------------------------------------------------- PgBouncer

def pgbouncer_config(workdir, name, port, databases, auth_type, max_client_conn, pool_size,
                     pool_mode="session"):
    dbs = "".join("%s = host=%s port=%d dbname=%s\n" % (alias, HOST, p, DBNAME)
                  for alias, p in databases)
    return """\
; Written by bench/run: PgBouncer in {mode} mode.
[databases]
{dbs}
[pgbouncer]
listen_addr = {h}
listen_port = {port}
unix_socket_dir =
auth_type = {auth}
auth_file = {userlist}
auth_hba_file = {hba}
pool_mode = {mode}
max_client_conn = {mcc}
default_pool_size = {pool}
max_db_connections = 0
server_reset_query = DISCARD ALL
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
stats_period = 60
ignore_startup_parameters = extra_float_digits
""".format(dbs=dbs, h=HOST, port=port, auth=auth_type,
           userlist=os.path.join(workdir, "%s.users" % name),
           hba=os.path.join(workdir, "%s.hba" % name), mcc=max_client_conn,
           pool=pool_size, mode=pool_mode)


def start_pgbouncer(reg, workdir, name, config_text, port, timeout=30, users_text=None):
    cfg = os.path.join(workdir, "%s.ini" % name)
    users = os.path.join(workdir, "%s.users" % name)
    # Plain-text password: PgBouncer runs SCRAM with the client itself and
    # needs the password (or a SCRAM secret) to log in to PostgreSQL.
    with open(users, "w") as f:
        f.write(users_text or '"%s" "%s"\n"%s" "%s"\n' % (BENCH_USER, BENCH_PASSWORD,
                                                           MD5_USER, MD5_PASSWORD))
    os.chmod(users, 0o600)
    common.chown_server(users)
    # auth_type = hba: each user logs in to PgBouncer the way it logs in to
    # PostgreSQL (the cluster's pg_hba: md5 for md5user, SCRAM for the rest).
    with open(os.path.join(workdir, "%s.hba" % name), "w") as f:
        f.write("host all %s 127.0.0.1/32 md5\nhost all all 127.0.0.1/32 scram-sha-256\n"
                % MD5_USER)
    with open(cfg, "w") as f:
        f.write(config_text)
    os.chmod(cfg, 0o644)
    proc = reg.spawn(name, ["pgbouncer", cfg], os.path.join(workdir, "%s.log" % name),
                     as_server_user=True)
    common.wait_port(port, timeout, proc, name)
    return proc


# ---------------------------------------------------------------- versions

def versions(pgrelay_binary):
    def first_line(argv):
        try:
            res = common.run(argv, timeout=30, check=False)
        except (BenchError, OSError):
            return None
        text = (res.stdout or res.stderr).strip().splitlines()
        return text[0] if text else None
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "pgrelay": first_line([pgrelay_binary, "--version"]),
        "haproxy": first_line(["haproxy", "-v"]),
        "pgbouncer": first_line(["pgbouncer", "--version"]),
        "postgresql": first_line([os.path.join(PG_BINDIR, "postgres"), "--version"]),
        "pgbench": first_line(["pgbench", "--version"]),
        "patroni": first_line(["/usr/bin/patroni", "--version"]),
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
    }


def dump_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
