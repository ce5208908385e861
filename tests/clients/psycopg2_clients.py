#!/usr/bin/python3
"""Concurrent psycopg2 clients against a PostgreSQL endpoint (e.g. pgrelay's
transaction-pooling port).

Each of CLIENTS threads opens its own connection (autocommit off, its own
application_name sent as a startup parameter) and runs ITERATIONS
transactions. Every transaction checks query results, that the backend does
not change inside a transaction, that SHOW application_name returns the
client's own value (catches session state leaking between clients that share
server connections), that SET LOCAL is visible inside and gone afterwards, and
that rows it inserted and committed (and only those) are visible; every fifth
transaction is rolled back and must leave no trace, and every seventh
iteration adds a transaction that fails (22012, then 25P02) and is rolled back.

Usage: psycopg2_clients.py HOST PORT USER PASSWORD DBNAME
           [--clients 20] [--iterations 50] [--timeout 120]
           [--appname-via startup|options]
       psycopg2_clients.py HOST PORT USER PASSWORD DBNAME --steady SECONDS

--steady: one connection for SECONDS, across whatever happens meanwhile (a
switchover): SET TimeZone once, then every 0.2 s a query that checks the
setting is still there and notes the server port. Errors a failover may
cause (08007, 40001, 57P03) are counted; a lost connection, a lost setting,
or (with --expect-move) never reaching a second server fails.
Exit status: 0 all checks passed, 1 a check or query failed, 2 usage,
3 total timeout exceeded.

Needs the Debian package python3-psycopg2 (run with /usr/bin/python3 when
another python3, e.g. pyenv's, comes first on PATH).
"""

import argparse
import os
import random
import sys
import threading
import time

try:
    import psycopg2
except ImportError as e:  # pragma: no cover - environment problem
    sys.stderr.write("psycopg2_clients: cannot import psycopg2 (%s); install the "
                     "Debian package python3-psycopg2 and run with /usr/bin/python3 "
                     "(this is %s)\n" % (e, sys.executable))
    sys.exit(1)

PROG = "psycopg2_clients"
CONNECT_TIMEOUT = 10
STOP = threading.Event()  # set by the first client that fails: the others stop early


class CheckError(Exception):
    pass


def check(cond, what):
    if not cond:
        raise CheckError(what)


def log(msg):
    sys.stderr.write("%s: %s\n" % (PROG, msg))
    sys.stderr.flush()


def parse_args():
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("user")
    p.add_argument("password")
    p.add_argument("dbname")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--timeout", type=float, default=120.0,
                   help="total time limit in seconds (default 120)")
    p.add_argument("--appname-via", choices=("startup", "options"), default="startup",
                   help="send application_name as its own startup parameter "
                        "(default) or inside the 'options' startup parameter "
                        "(-c application_name=...)")
    p.add_argument("--steady", type=float, default=0.0)
    p.add_argument("--expect-move", action="store_true")
    a = p.parse_args()
    if a.clients < 1 or a.iterations < 1 or a.timeout <= 0:
        p.error("--clients, --iterations and --timeout must be positive")
    return a


def connect(args, appname=None):
    kw = dict(host=args.host, port=args.port, user=args.user, password=args.password,
              dbname=args.dbname, connect_timeout=CONNECT_TIMEOUT, sslmode="disable")
    if appname is not None:
        if args.appname_via == "startup":
            kw["application_name"] = appname
        else:
            kw["options"] = "-c application_name=%s" % appname
    return psycopg2.connect(**kw)


class Client(threading.Thread):
    def __init__(self, n, args, table, barrier):
        super().__init__(name="client-%d" % n, daemon=True)
        self.n = n
        self.args = args
        self.table = table
        self.barrier = barrier
        self.appname = "%s_c%d" % (table, n)
        self.error = None
        self.pids = set()
        self.done = 0

    def run(self):
        conn = None
        where = "connect"
        try:
            try:
                conn = connect(self.args, self.appname)
            except Exception:
                self.barrier.abort()
                raise
            conn.autocommit = False
            where = "waiting for the other clients"
            try:
                self.barrier.wait(timeout=max(self.args.timeout, 1))
            except threading.BrokenBarrierError:
                raise CheckError("another client failed to connect")
            committed = 0  # rows of this client committed so far
            for it in range(self.args.iterations):
                if STOP.is_set():
                    break
                where = "iteration %d" % it
                committed = self.iteration(conn, it, committed)
                self.done += 1
        except Exception as e:  # psycopg2.Error, CheckError, ...
            self.error = "client %d (%s) %s: %s: %s" % (
                self.n, self.appname, where, type(e).__name__, str(e).strip())
            STOP.set()
        finally:
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass

    def iteration(self, conn, it, committed):
        t = self.table
        rollback = it % 5 == 4
        payload = "c%d-i%d-%08x" % (self.n, it, random.getrandbits(32))
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
            self.pids.add(pid)

            x = self.n * 100000 + it
            cur.execute("SELECT %s::int + 1 AS v, %s::text AS s", (x, payload))
            row = cur.fetchone()
            check(row == (x + 1, payload), "SELECT %%s::int + 1, %%s::text returned %r, "
                  "expected %r" % (row, (x + 1, payload)))

            cur.execute("SHOW application_name")
            got = cur.fetchone()[0]
            check(got == self.appname, "SHOW application_name returned %r, expected "
                  "this client's own %r (session state leaked between clients?)"
                  % (got, self.appname))

            cur.execute("SHOW work_mem")
            before = cur.fetchone()[0]
            check(before != "7777kB", "work_mem is %r at transaction start: a SET LOCAL "
                  "from an earlier transaction leaked" % before)
            cur.execute("SET LOCAL work_mem = '7777kB'")
            cur.execute("SHOW work_mem")
            got = cur.fetchone()[0]
            check(got == "7777kB", "SET LOCAL work_mem not visible: SHOW returned %r" % got)

            cur.execute("INSERT INTO " + t + " (client, iter, payload) VALUES (%s, %s, %s) "
                        "RETURNING id", (self.n, it, payload))
            new_id = cur.fetchone()[0]
            cur.execute("SELECT client, iter, payload FROM " + t + " WHERE id = %s",
                        (new_id,))
            row = cur.fetchone()
            check(row == (self.n, it, payload), "read back of inserted row id %s "
                  "returned %r, expected %r" % (new_id, row, (self.n, it, payload)))

            cur.execute("SELECT count(*) FROM " + t + " WHERE client = %s", (self.n,))
            cnt = cur.fetchone()[0]
            check(cnt == committed + 1, "client sees %d of its rows inside the "
                  "transaction, expected %d (%d committed + 1 new)"
                  % (cnt, committed + 1, committed))

            cur.execute("SELECT pg_backend_pid(), txid_current()")
            pid2, _ = cur.fetchone()
            check(pid2 == pid, "backend pid changed inside one transaction: %d then %d"
                  % (pid, pid2))
        if rollback:
            conn.rollback()
        else:
            conn.commit()
            committed += 1
        # After the transaction: work_mem is back, the row is there or not.
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), current_setting('work_mem') FROM " + t +
                        " WHERE client = %s AND payload = %s", (self.n, payload))
            cnt, wm = cur.fetchone()
            want = 0 if rollback else 1
            check(cnt == want, "after %s the row %r is present %d times, expected %d"
                  % ("ROLLBACK" if rollback else "COMMIT", payload, cnt, want))
            check(wm != "7777kB", "SET LOCAL work_mem survived the end of its transaction")
        conn.commit()
        if it % 7 == 3:
            self.failed_transaction(conn)
        return committed

    def failed_transaction(self, conn):
        """An error inside a transaction: the transaction is aborted until
        ROLLBACK, then the connection works again."""
        with conn.cursor() as cur:
            try:
                cur.execute("SELECT 1 / %s::int", (0,))
                raise CheckError("SELECT 1 / 0 did not fail")
            except psycopg2.Error as e:
                check(e.pgcode == "22012", "SELECT 1 / 0 failed with SQLSTATE %s, expected "
                      "22012: %s" % (e.pgcode, str(e).strip()))
            try:
                cur.execute("SELECT %s::int + 1", (1,))
                raise CheckError("query in an aborted transaction did not fail")
            except psycopg2.Error as e:
                check(e.pgcode == "25P02", "query in an aborted transaction failed with "
                      "SQLSTATE %s, expected 25P02: %s" % (e.pgcode, str(e).strip()))
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("SELECT 1 / %s::int", (2,))
            got = cur.fetchone()[0]
            check(got == 0, "SELECT 1 / 2 returned %r after ROLLBACK" % got)
        conn.commit()


def steady(args):
    deadline = time.monotonic() + args.steady
    conn = connect(args, "steady_py")
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SET TimeZone = 'Asia/Tokyo'")
    ok = errors = 0
    ports = []
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            cur.execute("SELECT current_setting('TimeZone'), inet_server_port()")
            tz, port = cur.fetchone()
        except psycopg2.Error as e:
            if conn.closed:
                log("FAIL: the connection was lost: %s" % str(e).strip())
                return 1
            if e.pgcode in ("08007", "40001", "57P03"):
                errors += 1
                continue
            log("FAIL: %s %s" % (e.pgcode, str(e).strip()))
            return 1
        if tz != "Asia/Tokyo":
            log("FAIL: TimeZone is %r on server port %s, not Asia/Tokyo" % (tz, port))
            return 1
        ok += 1
        if not ports or ports[-1] != port:
            ports.append(port)
    print("steady: %d queries, %d errors, server ports %s" % (ok, errors, ports))
    if ok == 0 or (args.expect_move and len(ports) < 2):
        log("FAIL: %d queries, server ports %s" % (ok, ports))
        return 1
    return 0


def main():
    args = parse_args()
    if args.steady > 0:
        return steady(args)
    start = time.monotonic()
    deadline = start + args.timeout

    def watchdog():
        time.sleep(args.timeout)
        log("FAIL: total timeout of %gs exceeded (hung endpoint?)" % args.timeout)
        os._exit(3)
    threading.Thread(target=watchdog, daemon=True).start()

    table = "pgrelay_clients_py_%d_%08x" % (os.getpid(), random.getrandbits(32))
    try:
        admin = connect(args)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("CREATE TABLE " + table + " (id bigserial PRIMARY KEY, "
                        "client int NOT NULL, iter int NOT NULL, payload text NOT NULL)")
    except psycopg2.Error as e:
        log("FAIL: setup (connect %s:%d as %s, CREATE TABLE %s): %s"
            % (args.host, args.port, args.user, table, str(e).strip()))
        return 1

    barrier = threading.Barrier(args.clients)
    clients = [Client(i, args, table, barrier) for i in range(args.clients)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(max(0.0, deadline - time.monotonic()))

    errors = [c.error for c in clients if c.error]
    hung = [c.n for c in clients if c.is_alive()]
    if hung:  # no cleanup: DROP TABLE would wait for the hung clients' locks
        for e in errors:
            log("FAIL: " + e)
        log("FAIL: clients %s did not finish within %gs" % (hung, args.timeout))
        os._exit(3)
    try:
        with admin.cursor() as cur:
            expected = sum(c.done - c.done // 5 for c in clients)  # iter%5==4 rolled back
            cur.execute("SELECT count(*) FROM " + table)
            total = cur.fetchone()[0]
            if not errors and total != expected:
                errors.append("table holds %d rows after the run, expected %d"
                              % (total, expected))
            cur.execute("DROP TABLE " + table)
        admin.close()
    except psycopg2.Error as e:
        errors.append("cleanup (DROP TABLE %s): %s" % (table, str(e).strip()))

    for e in errors:
        log("FAIL: " + e)
    if errors:
        log("FAIL: %d of %d clients failed" % (sum(1 for c in clients if c.error),
                                               args.clients))
        return 1
    pids = set().union(*(c.pids for c in clients))
    print("%s: OK: %d clients x %d transactions in %.1fs, %d distinct backend pids seen"
          % (PROG, args.clients, args.iterations, time.monotonic() - start, len(pids)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
