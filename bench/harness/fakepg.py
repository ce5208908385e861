#!/usr/bin/python3
"""A minimal fake PostgreSQL server and an idle-connection holder.

For the memory scenario, where PostgreSQL itself cannot take 10,000
connections on this machine:

  fakepg.py serve --port P [--key-log FILE]
      answers SSLRequest/GSSENCRequest with 'N'; a StartupMessage with
      AuthenticationOk, a few ParameterStatus, BackendKeyData and
      ReadyForQuery 'I'; a simple Query with CommandComplete + ReadyForQuery;
      Sync with ReadyForQuery; Terminate (or a CancelRequest) by closing.
      Prints "listening PORT" once it accepts connections.
      Speaks protocol 3.0 and 3.2, as PostgreSQL 18 does: a client asking for
      3.2 gets a 32-byte cancel secret, one asking for more (or sending _pq_.
      options) a NegotiateProtocolVersion first. With --key-log, appends
      "key PID HEXSECRET" for every key it hands out and "cancel PID
      HEXSECRET" for every CancelRequest it receives.

  fakepg.py hold --port P --count N [--batch B] [--query]
      opens N client connections in batches of B, finishes each startup (and,
      with --query, one "SELECT 1" round trip, so that a pooler in session
      mode links a server connection to it), prints "ready N SECONDS", holds
      them until a line (or EOF) arrives on stdin, then sends Terminate on
      every connection and prints "closed N". Exits 1 if any connection failed.
      With --password PW it answers an md5 (or cleartext) password request,
      for a pooler that authenticates clients itself. With --tls each
      connection sends an SSLRequest and, on 'S', does its startup over TLS
      (any certificate is accepted).

Stdlib only (asyncio protocols: one object per connection, no task).
"""

import argparse
import asyncio
import hashlib
import os
import resource
import struct
import sys
import time

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
PROTOCOL_3 = 196608
PROTOCOL_3_2 = PROTOCOL_3 | 2
KEY_LOG = None  # --key-log


def msg(kind, payload=b""):
    return kind + struct.pack("!I", len(payload) + 4) + payload


def cstr(s):
    return s.encode() + b"\0"


PARAMETERS = [
    ("server_version", "15.0 (pgrelay bench fake)"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "postgres"),
    ("is_superuser", "off"),
    ("application_name", ""),
]
AUTH_OK = msg(b"R", struct.pack("!I", 0))
PARAMS = b"".join(msg(b"S", cstr(k) + cstr(v)) for k, v in PARAMETERS)
READY_IDLE = msg(b"Z", b"I")
COMMAND_COMPLETE = msg(b"C", cstr("SELECT 0"))


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------- server

class FakeBackend(asyncio.Protocol):
    next_pid = 1000

    def connection_made(self, transport):
        self.transport = transport
        self.buf = bytearray()
        self.started = False

    def data_received(self, data):
        self.buf += data
        while not self.transport.is_closing():
            if not self.step():
                return

    def step(self):
        """Handle one complete packet from the buffer; False if none is there."""
        buf = self.buf
        if not self.started:
            if len(buf) < 8:
                return False
            length, code = struct.unpack_from("!II", buf)
            if length < 8 or length > 10000:
                self.transport.close()
                return False
            if len(buf) < length:
                return False
            packet = bytes(buf[8:length])
            del buf[:length]
            if code in (SSL_REQUEST, GSSENC_REQUEST):
                self.transport.write(b"N")
            elif code >> 16 == 3:
                self.started = True
                FakeBackend.next_pid += 1
                pid = FakeBackend.next_pid
                version = min(code, PROTOCOL_3_2)
                options = [n for n in packet.split(b"\0")[0::2] if n.startswith(b"_pq_.")]
                out = b""
                if code > PROTOCOL_3_2 or options:
                    out += msg(b"v", struct.pack("!II", version, len(options)) + b"".join(o + b"\0" for o in options))
                secret = os.urandom(32) if version >= PROTOCOL_3_2 else struct.pack("!I", 12345)
                log_key("key", pid, secret)
                key = msg(b"K", struct.pack("!I", pid) + secret)
                self.transport.write(out + AUTH_OK + PARAMS + key + READY_IDLE)
            elif code == CANCEL_REQUEST and len(packet) >= 8:
                log_key("cancel", struct.unpack("!I", packet[:4])[0], packet[4:])
                self.transport.close()
                return False
            else:  # anything unknown
                self.transport.close()
                return False
            return True
        if len(buf) < 5:
            return False
        kind = buf[0:1]
        (length,) = struct.unpack_from("!I", buf, 1)
        if len(buf) < 1 + length:
            return False
        del buf[:1 + length]
        if kind == b"X":
            self.transport.close()
            return False
        if kind == b"Q":
            self.transport.write(COMMAND_COMPLETE + READY_IDLE)
        elif kind == b"S":
            self.transport.write(READY_IDLE)
        return True


def log_key(what, pid, secret):
    if KEY_LOG:
        with open(KEY_LOG, "a") as f:
            f.write("%s %d %s\n" % (what, pid, secret.hex()))


async def serve(args):
    global KEY_LOG
    KEY_LOG = args.key_log
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FakeBackend, args.host, args.port, backlog=4096,
                                      reuse_address=True)
    print("listening %d" % args.port, flush=True)
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------- clients

class HeldClient(asyncio.Protocol):
    def __init__(self, startup, query, done, user="", password=None):
        self.startup = startup
        self.query = query
        self.done = done
        self.user = user
        self.password = password
        self.buf = bytearray()
        self.ready_count = 0

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.startup)

    def data_received(self, data):
        self.buf += data
        while len(self.buf) >= 5:
            kind = self.buf[0:1]
            (length,) = struct.unpack_from("!I", self.buf, 1)
            if len(self.buf) < 1 + length:
                return
            body = bytes(self.buf[5:1 + length])
            del self.buf[:1 + length]
            if kind == b"E":
                self.fail("ErrorResponse: " + error_text(body))
                return
            if kind == b"R" and body[:4] != b"\0\0\0\0":
                code = struct.unpack("!I", body[:4])[0]
                if self.password is not None and code == 5:      # md5, salt follows
                    self.transport.write(msg(b"p", cstr(md5_response(
                        self.user, self.password, body[4:8]))))
                    continue
                if self.password is not None and code == 3:      # cleartext
                    self.transport.write(msg(b"p", cstr(self.password)))
                    continue
                self.fail("server asked for authentication (type %d)%s" % (
                    code, "" if self.password is None else ", which --password cannot answer"))
                return
            if kind == b"Z":
                self.ready_count += 1
                if self.ready_count == 1 and self.query:
                    self.transport.write(msg(b"Q", cstr("SELECT 1")))
                elif not self.done.done():
                    self.done.set_result(True)

    def fail(self, why):
        if not self.done.done():
            self.done.set_exception(RuntimeError(why))
        self.transport.close()

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_exception(RuntimeError("connection closed during startup: %s" % exc))

    def terminate(self):
        if not self.transport.is_closing():
            self.transport.write(msg(b"X"))
            self.transport.close()


def error_text(body):
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[part[:1]] = part[1:].decode(errors="replace")
    return "%s %s" % (fields.get(b"C", "?"), fields.get(b"M", ""))


def md5_response(user, password, salt):
    """PostgreSQL's md5 answer: "md5" + md5(md5(password + user) hex + salt)."""
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


def startup_packet(user, dbname):
    body = struct.pack("!I", PROTOCOL_3)
    body += cstr("user") + cstr(user) + cstr("database") + cstr(dbname)
    body += cstr("application_name") + cstr("pgrelay-bench") + b"\0"
    return struct.pack("!I", len(body) + 4) + body


class SslAnswer(asyncio.Protocol):
    """Sends SSLRequest and waits for the one-byte answer."""

    def __init__(self, answer):
        self.answer = answer

    def connection_made(self, transport):
        transport.write(struct.pack("!II", 8, SSL_REQUEST))

    def data_received(self, data):
        if not self.answer.done():
            self.answer.set_result(data)

    def connection_lost(self, exc):
        if not self.answer.done():
            self.answer.set_exception(RuntimeError("closed after SSLRequest: %s" % exc))


def client_tls_context():
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE    # the bench's throwaway self-signed certificate
    return ctx


async def open_one(loop, args, startup):
    done = loop.create_future()
    if args.tls:
        answer = loop.create_future()
        raw, _ = await asyncio.wait_for(
            loop.create_connection(lambda: SslAnswer(answer), args.host, args.port),
            args.timeout)
        try:
            if await asyncio.wait_for(answer, args.timeout) != b"S":
                raise RuntimeError("SSLRequest refused")
            proto = HeldClient(startup, args.query, done, args.user, args.password)
            transport = await asyncio.wait_for(
                loop.start_tls(raw, proto, args.tls_context), args.timeout)
        except BaseException:
            raw.close()
            raise
        proto.connection_made(transport)
    else:
        transport, proto = await asyncio.wait_for(
            loop.create_connection(lambda: HeldClient(startup, args.query, done, args.user,
                                                      args.password),
                                   args.host, args.port), args.timeout)
    try:
        await asyncio.wait_for(done, args.timeout)
    except BaseException:
        transport.close()
        raise
    return proto


async def hold(args):
    loop = asyncio.get_running_loop()
    startup = startup_packet(args.user, args.dbname)
    held, errors = [], []
    started = time.monotonic()
    while len(held) + len(errors) < args.count:
        n = min(args.batch, args.count - len(held) - len(errors))
        results = await asyncio.gather(*(open_one(loop, args, startup) for _ in range(n)),
                                       return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                errors.append("%s: %s" % (type(r).__name__, r))
            else:
                held.append(r)
        if errors and len(errors) >= args.max_errors:
            break
    elapsed = time.monotonic() - started
    # A pooler or proxy may close some connections after the startup (e.g. a
    # limit reached): count only the ones still open.
    await asyncio.sleep(0.2)
    alive = [p for p in held if not p.transport.is_closing()]
    print("ready %d %.2f" % (len(alive), elapsed), flush=True)
    for e in sorted(set(errors))[:5]:
        print("error %s (%d times)" % (e, errors.count(e)), flush=True)
    try:
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), args.hold_max)
    except asyncio.TimeoutError:
        print("hold timed out after %ss" % args.hold_max, flush=True)
    for p in held:
        p.terminate()
    await asyncio.sleep(0.2)
    print("closed %d" % len(held), flush=True)
    return 0 if not errors and len(alive) == args.count else 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--key-log", help="append every cancel key handed out and every CancelRequest received")
    h = sub.add_parser("hold")
    h.add_argument("--host", default="127.0.0.1")
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--count", type=int, required=True)
    h.add_argument("--batch", type=int, default=200)
    h.add_argument("--user", default="bench")
    h.add_argument("--dbname", default="postgres")
    h.add_argument("--query", action="store_true")
    h.add_argument("--password", help="answer md5 or cleartext password requests (a "
                                      "pooler that authenticates clients itself)")
    h.add_argument("--tls", action="store_true", help="SSLRequest, then TLS (no certificate "
                                                   "check), before the startup")
    h.add_argument("--timeout", type=float, default=30.0, help="per connection")
    h.add_argument("--hold-max", type=float, default=600.0)
    h.add_argument("--max-errors", type=int, default=50)
    args = p.parse_args(argv)
    raise_nofile()
    if args.command == "hold":
        args.tls_context = client_tls_context() if args.tls else None
    try:
        if args.command == "serve":
            asyncio.run(serve(args))
            return 0
        return asyncio.run(hold(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
