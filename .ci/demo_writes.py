#!/usr/bin/python3
"""The demo's write loop: CLIENTS long-lived connections through pgrelay's rw
port (transaction pool mode in the demo), each writing a row every 0.3-1.2 s
and keeping its connection unless the connection itself is gone, as an
application's connection pool would. After each switchover (the first write
acknowledged by a new primary, plus 3 s for stragglers) it prints what the
clients saw since the last one: writes, errors by SQLSTATE, reconnects, and
the slowest write.

Usage: demo_writes.py DSN [--clients 20]
Needs python3-psycopg2 (Debian). Stops on SIGINT/SIGTERM.
"""
import argparse
import random
import signal
import sys
import threading
import time

import psycopg2

STOP = threading.Event()
LOCK = threading.Lock()
STATS = {"writes": 0, "errors": {}, "reconnects": 0, "slowest": 0.0}
PORTS = {"current": None, "moved_at": None, "to": None}


def say(msg):
    sys.stdout.write("demo writes: %s\n" % msg)
    sys.stdout.flush()


def client(i, dsn):
    rng = random.Random(i)
    conn, ever = None, False
    while not STOP.is_set():
        STOP.wait(rng.uniform(0.3, 1.2))
        if STOP.is_set():
            break
        try:
            if conn is None or conn.closed:
                if ever:
                    with LOCK:
                        STATS["reconnects"] += 1
                conn = psycopg2.connect(dsn)
                conn.autocommit = True
                ever = True
            cur = conn.cursor()
            t0 = time.monotonic()
            cur.execute("INSERT INTO demo_writes (client) VALUES (%s) RETURNING inet_server_port()", (i,))
            port = cur.fetchone()[0]
            took = time.monotonic() - t0
            with LOCK:
                STATS["writes"] += 1
                STATS["slowest"] = max(STATS["slowest"], took)
                if PORTS["current"] is None:
                    PORTS["current"] = port
                elif port != PORTS["current"] and PORTS["to"] != port:
                    PORTS["to"], PORTS["moved_at"] = port, time.monotonic()
        except psycopg2.Error as e:
            with LOCK:
                code = e.pgcode or "connection"
                STATS["errors"][code] = STATS["errors"].get(code, 0) + 1


def report(ports_note):
    with LOCK:
        s = dict(STATS)
        errors = ", ".join("%s x %d" % kv for kv in sorted(s["errors"].items())) or "none"
        STATS.update(writes=0, errors={}, reconnects=0, slowest=0.0)
    say("%s: %d writes, errors: %s, %d reconnects, slowest write %.0f ms"
        % (ports_note, s["writes"], errors, s["reconnects"], s["slowest"] * 1000))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dsn")
    p.add_argument("--clients", type=int, default=20)
    a = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())
    for attempt in range(60):
        try:
            c = psycopg2.connect(a.dsn)
            c.autocommit = True
            c.cursor().execute("CREATE TABLE IF NOT EXISTS demo_writes (id bigserial PRIMARY KEY, "
                               "client int, port int DEFAULT inet_server_port(), "
                               "at timestamptz DEFAULT clock_timestamp())")
            c.close()
            break
        except psycopg2.Error as e:
            if attempt == 59:
                say("cannot create the table: %s" % str(e).strip())
                return 1
            time.sleep(1)
    threads = [threading.Thread(target=client, args=(i, a.dsn), daemon=True) for i in range(a.clients)]
    for t in threads:
        t.start()
    say("%d connections through rw, each writing every 0.3-1.2 s; a line after each switchover"
        % a.clients)
    try:
        while not STOP.is_set():
            STOP.wait(0.5)
            with LOCK:
                moved = PORTS["moved_at"] is not None and time.monotonic() - PORTS["moved_at"] > 3
                note = "primary moved from port %s to %s" % (PORTS["current"], PORTS["to"])
                if moved:
                    PORTS["current"], PORTS["to"], PORTS["moved_at"] = PORTS["to"], None, None
            if moved:
                report(note)
    except KeyboardInterrupt:
        STOP.set()
    report("until the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
