"""Process bookkeeping, ports and /proc readings shared by the harness."""

import os
import pwd
import random
import signal
import socket
import subprocess
import sys
import time

HOST = "127.0.0.1"
RESERVED_PORTS = {5432, 6432, 6433, 8008, 8080, 2181, 5000, 5001, 7000, 9187}
SERVER_USER = "postgres"
PYTHON = "/usr/bin/python3"
CLK_TCK = os.sysconf("SC_CLK_TCK")

VERBOSE = False


class BenchError(Exception):
    """A scenario (or the set-up) could not run: the harness exits non-zero."""


def say(text):
    print("bench: %s" % text, file=sys.stderr, flush=True)


def debug(text):
    if VERBOSE:
        say(text)


# ---------------------------------------------------------------- ports

_handed_out = set()


# The bind test the cluster fixture uses (SO_REUSEADDR, as the servers bind).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures"))
from patroni_cluster import port_is_free  # noqa: E402


def free_ports(count):
    """Random free ports below the ephemeral range (as the cluster fixture
    does: an ephemeral port could be taken by an outgoing connection before a
    server binds it), never one handed out before in this run."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_lo = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_lo = 32768
    lo, hi = 20000, max(ephemeral_lo - 1, 25000)
    ports = []
    for _ in range(count * 200):
        port = random.randint(lo, hi)
        if port in RESERVED_PORTS or port in _handed_out or port in ports:
            continue
        if port_is_free(port):
            ports.append(port)
            if len(ports) == count:
                _handed_out.update(ports)
                return ports
    raise BenchError("could not find %d free ports in %d..%d" % (count, lo, hi))


def wait_port(port, timeout, proc=None, what="server"):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise BenchError("%s exited (code %s) before listening on %d%s"
                             % (what, proc.returncode, port, proc.log_tail()))
        if time.monotonic() > deadline:
            raise BenchError("%s does not listen on %d after %ss" % (what, port, timeout))
        time.sleep(0.05)


# ---------------------------------------------------------------- /proc

def cpu_seconds(pid):
    """User + system CPU of the whole process (every thread, live or exited)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError("no %s in /proc/%d/status" % (key, pid))


def rss_kib(pid):
    return status_kib(pid, "VmRSS")


def thread_count(pid):
    return status_kib(pid, "Threads")


# ---------------------------------------------------------------- processes

def server_user_kwargs():
    """Popen arguments that drop root to the postgres user (PostgreSQL tools
    and PgBouncer refuse root); the pid stays the real program's, unlike with
    runuser, so /proc readings and signals reach it."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam(SERVER_USER)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def chown_server(path):
    if os.geteuid() == 0:
        pw = pwd.getpwnam(SERVER_USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def clean_env(extra=None):
    drop = ("PG", "PATRONI_", "PYTHONPATH", "PYTHONHOME", "PYENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["LC_ALL"] = "C"
    env.update(extra or {})
    return env


class Proc:
    """A long-running child in its own session, with its output in a log file."""

    def __init__(self, name, argv, log, as_server_user=False, env=None, cwd=None,
                 stdin=False, stdout_pipe=False):
        self.name, self.argv, self.log = name, argv, log
        with open(log, "ab") as out:
            if as_server_user:
                chown_server(log)
            self.popen = subprocess.Popen(
                argv, cwd=cwd or "/", env=env or clean_env(), start_new_session=True,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else out, stderr=out,
                text=True if (stdin or stdout_pipe) else None, close_fds=True,
                **(server_user_kwargs() if as_server_user else {}))
        self.pid = self.popen.pid
        debug("started %s (pid %d): %s" % (name, self.pid, " ".join(argv)))

    def poll(self):
        return self.popen.poll()

    @property
    def returncode(self):
        return self.popen.returncode

    def alive(self):
        return self.popen.poll() is None

    def log_tail(self, lines=15):
        try:
            with open(self.log, errors="replace") as f:
                text = f.read().splitlines()[-lines:]
        except OSError:
            return ""
        return "\n--- tail of %s ---\n%s" % (self.log, "\n".join(text))

    def signal_group(self, sig):
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, timeout=10.0):
        """SIGTERM the process group, SIGKILL what is left after timeout."""
        if self.popen.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.popen.wait(10)
        else:
            # The leader is gone; children in its group may not be.
            self.signal_group(signal.SIGKILL)
        for f in (self.popen.stdin, self.popen.stdout):
            if f:
                try:
                    f.close()
                except OSError:
                    pass
        return self.popen.returncode


class Registry:
    """Every process the harness started, stopped in reverse order at exit."""

    def __init__(self):
        self.procs = []

    def spawn(self, *args, **kwargs):
        p = Proc(*args, **kwargs)
        self.procs.append(p)
        return p

    def stop(self, proc, timeout=10.0):
        code = proc.stop(timeout)
        if proc in self.procs:
            self.procs.remove(proc)
        return code

    def stop_all(self):
        for p in reversed(self.procs):
            try:
                p.stop(5.0)
            except Exception as e:  # keep cleaning up
                say("could not stop %s (pid %d): %s" % (p.name, p.pid, e))
        self.procs = []


def run(argv, timeout, env=None, check=True, as_server_user=False, stdout=None,
        input_text=None):
    """Run argv to completion in its own session; the group dies on timeout."""
    proc = subprocess.Popen(
        argv, cwd="/", env=env or clean_env(), text=True, start_new_session=True,
        stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.PIPE, **(server_user_kwargs() if as_server_user else {}))
    try:
        out, err = proc.communicate(input_text, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise BenchError("timed out after %ss: %s" % (timeout, " ".join(argv)))
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        raise
    res = subprocess.CompletedProcess(argv, proc.returncode, out or "", err or "")
    if check and proc.returncode != 0:
        raise BenchError("command failed (exit %d): %s\n%s" % (
            proc.returncode, " ".join(argv), (res.stderr or res.stdout).strip()[-2000:]))
    return res


# ---------------------------------------------------------------- stats

def median(values):
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    n = len(vals)
    mid = n // 2
    return vals[mid] if n % 2 else (vals[mid - 1] + vals[mid]) / 2.0


def percentile(values, pct):
    """Nearest-rank percentile (p99 of 10 samples is the largest)."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    rank = max(1, -(-len(vals) * pct // 100))
    return vals[int(rank) - 1]
