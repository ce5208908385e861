#!/usr/bin/env python3
"""Writes the seed corpus of tests/fuzz/fuzz_codec.cpp.

    python3 tests/fuzz/gen_corpus.py [OUTDIR]     (default: tests/fuzz/corpus)

Every seed is the fuzzer's 6-byte header (flags, small max_frame, max_watched,
relay slack, watched-type mask, number of chunk sizes), the chunk sizes, then a
byte stream: a client's startup phase and frames, or a backend's frames.
Deterministic: .ci/fuzz.sh checks that the committed corpus matches this output.
"""
import os
import struct
import sys

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
PEER_CANCEL_REQUEST = 80882345  # pgrelay's own, between instances
V3 = 3 << 16

# Bits of the watched-type mask: "KZESRDCN"[i].
W_K, W_Z, W_E, W_S, W_R, W_D, W_C, W_N = (1 << i for i in range(8))


def u32(v):
    return struct.pack(">I", v & 0xFFFFFFFF)


def i32(v):
    return struct.pack(">i", v)


def header(flags=0, small=252, watched=255, slack=0, mask=W_K | W_Z | W_E, sizes=()):
    """small: max_frame = 4 + small; watched: max_watched = 12 + watched;
    sizes: chunk sizes (byte b = b + 1 bytes, 255 = the rest)."""
    assert len(sizes) <= 16
    return bytes([flags, small, watched, slack, mask, len(sizes)]) + bytes(sizes)


# ---- startup phase -----------------------------------------------------------

def packet(code, payload=b""):
    return u32(8 + len(payload)) + u32(code) + payload


def startup(params, version=V3, terminator=True):
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params)
    if terminator:
        body += b"\0"
    return packet(version, body)


def cancel(pid, secret):
    return packet(CANCEL_REQUEST, i32(pid) + i32(secret))


# ---- regular phase -----------------------------------------------------------

def frame(t, body=b""):
    return t.encode() + u32(len(body) + 4) + body


def cstr(s):
    return s.encode() + b"\0"


def auth(code, extra=b""):
    return frame("R", u32(code) + extra)


def param_status(name, value):
    return frame("S", cstr(name) + cstr(value))


def key_data(pid, secret):
    return frame("K", i32(pid) + i32(secret))


def ready(status="I"):
    return frame("Z", status.encode())


def fields(t, pairs):
    return frame(t, b"".join(c.encode() + cstr(v) for c, v in pairs) + b"\0")


def row_description(names):
    body = struct.pack(">H", len(names))
    for n in names:
        body += cstr(n) + u32(0) + struct.pack(">H", 0) + u32(23) + struct.pack(">hiH", 4, -1, 0)
    return frame("T", body)


def data_row(values):
    body = struct.pack(">H", len(values))
    for v in values:
        body += i32(-1) if v is None else u32(len(v)) + v.encode()
    return frame("D", body)


LOGIN = (auth(0) + param_status("server_version", "15.4") + param_status("client_encoding", "UTF8")
         + key_data(4242, -123456789) + ready("I"))
ERROR = fields("E", [("S", "ERROR"), ("V", "ERROR"), ("C", "42P01"), ("M", 'relation "t" does not exist'),
                     ("P", "15"), ("F", "parse_relation.c"), ("L", "1392"), ("R", "parserOpenTable")])
USER = [("user", "alice"), ("database", "app"), ("application_name", "psql")]

SEEDS = {
    # Startup phase (also read as backend frames, where they are mostly errors).
    "startup-user-db": header() + startup(USER),
    "startup-bytewise": header(sizes=[0]) + startup(USER),
    "startup-minor-version-pq-option": header(sizes=[2, 6]) + startup([("user", "bob"), ("_pq_.x", "1")], V3 | 2),
    "startup-repeated-user": header() + startup([("user", "a"), ("database", "d"), ("user", "b")]),
    "startup-no-user": header() + startup([("database", "app")]),
    "startup-empty-values": header(sizes=[4]) + startup([("user", "u"), ("options", ""), ("x", "")]),
    "startup-no-terminator": header() + startup(USER, terminator=False),
    "startup-length-7": header() + u32(7) + u32(V3),
    "startup-length-10001": header() + u32(10001) + u32(V3) + b"user\0x\0\0",
    "startup-protocol-2": header() + startup(USER, version=2 << 16),
    "startup-truncated": header() + startup(USER)[:20],
    "startup-near-max-length": header(sizes=[255]) + startup([("user", "u"), ("options", "x" * 9970)]),
    "ssl-then-startup": header() + packet(SSL_REQUEST) + startup(USER),
    "ssl-alone-then-startup": header(sizes=[7, 255]) + packet(SSL_REQUEST) + startup(USER),
    "ssl-only": header() + packet(SSL_REQUEST),
    "ssl-twice": header(sizes=[7]) + packet(SSL_REQUEST) + packet(SSL_REQUEST) + startup(USER),
    "ssl-bad-length": header() + u32(12) + u32(SSL_REQUEST) + u32(0),
    "gssenc-ssl-startup": header(sizes=[7, 7, 255]) + packet(GSSENC_REQUEST) + packet(SSL_REQUEST) + startup(USER),
    "gssenc-twice": header() + packet(GSSENC_REQUEST) + packet(GSSENC_REQUEST),
    "ssl-alone-then-gssenc": header(sizes=[7, 7, 255]) + packet(SSL_REQUEST) + packet(GSSENC_REQUEST) + startup(USER),
    "cancel": header() + cancel(4242, -123456789),
    "cancel-split": header(sizes=[0, 2, 4]) + cancel(-1, 0x7FFFFFFF) + b"trailing",
    "cancel-bad-length": header() + u32(12) + u32(CANCEL_REQUEST) + i32(1),
    "ssl-then-cancel": header(sizes=[7, 255]) + packet(SSL_REQUEST) + cancel(1, 2),
    # Protocol 3.2 (PostgreSQL 18): long cancel secrets, up to 256 bytes.
    "cancel-3.2-long": header(sizes=[5, 255]) + packet(CANCEL_REQUEST, i32(7) + bytes(range(32))),
    "cancel-3.2-longest": header() + packet(CANCEL_REQUEST, i32(8) + b"\x01" * 256),
    "cancel-3.2-too-long": header() + packet(CANCEL_REQUEST, i32(9) + b"\x01" * 257),
    "cancel-from-peer": header() + packet(PEER_CANCEL_REQUEST, i32(10) + bytes(32)),
    "startup-3.2": header() + startup(USER, V3 | 2),
    # Direct TLS (PostgreSQL 17): a first byte 0x16, then the stream inside TLS.
    "direct-tls-startup": header() + b"\x16" + startup(USER),
    "direct-tls-then-ssl": header(sizes=[0, 7]) + b"\x16" + packet(SSL_REQUEST) + startup(USER),
    "direct-tls-then-cancel": header() + b"\x16" + packet(CANCEL_REQUEST, i32(3) + bytes(32)),
    # Startup, then the client's frames pipelined behind it.
    "startup-pipelined-query": header(small=60) + startup(USER) + frame("Q", cstr("select 1")) + frame("X"),
    "startup-pipelined-extended": header(small=40, sizes=[10, 3, 255])
    + startup(USER) + frame("P", cstr("") + cstr("select $1") + b"\0\0") + frame("B", b"\0\0\0\0\0\0\0\0\0\0")
    + frame("D", b"P\0") + frame("E", b"\0" + u32(0)) + frame("S") + frame("Q", cstr("x" * 64)),
    "startup-pipelined-bad-length": header(flags=1) + startup(USER) + b"Q" + u32(3),
    "startup-password-split": header(sizes=[30, 1, 0]) + startup(USER) + frame("p", cstr("secret")) + frame("S"),
    # Backend streams.
    "backend-login": header() + LOGIN,
    "backend-login-bytewise": header(sizes=[0]) + LOGIN,
    "backend-login-tight-buffer": header(watched=0, slack=0, mask=0xFF, sizes=[16, 5, 255]) + LOGIN,
    "backend-sasl": header(sizes=[40, 12])
    + auth(10, cstr("SCRAM-SHA-256") + b"\0") + auth(11, b"r=abc,s=c2FsdA==,i=4096")
    + auth(12, b"v=c2lnbmF0dXJl") + auth(0) + key_data(1, 2) + ready(),
    "backend-sasl-plus": header(sizes=[30])
    + auth(10, cstr("SCRAM-SHA-256-PLUS") + cstr("SCRAM-SHA-256") + b"\0") + auth(10, cstr("SCRAM-SHA-256-PLUS") + b"\0")
    + auth(10, cstr("SCRAM-SHA-256-PLUS")) + auth(0),
    "backend-query": header(mask=W_Z | W_C | W_D | W_K)
    + row_description(["a", "b"]) + data_row(["1", None]) + data_row(["22", "x"]) + frame("C", cstr("SELECT 2"))
    + ready("T"),
    "backend-error": header(sizes=[9]) + ERROR + ready("E"),
    "backend-notice": header(mask=W_N | W_Z) + fields("N", [("S", "NOTICE"), ("C", "00000"), ("M", "hi")]) + ready(),
    "backend-57P03": header() + fields("E", [("S", "FATAL"), ("V", "FATAL"), ("C", "57P03"),
                                              ("M", "the database system is starting up")]),
    "backend-error-localized-only": header() + fields("E", [("S", "FEHLER"), ("C", "XX000"), ("M", "m")]),
    "backend-copy-out": header(watched=20, slack=3, mask=W_Z | W_E, sizes=[100, 255])
    + frame("H", b"\0\0\x01\0\0") + frame("d", b"x" * 3000) + frame("c") + frame("C", cstr("COPY 1")) + ready(),
    "backend-big-error-streamed": header(watched=30, mask=W_E) + fields("E", [("S", "ERROR"), ("M", "m" * 400)]),
    "backend-negotiate-version": header() + frame("v", u32(V3) + u32(1) + cstr("_pq_.x")) + auth(0),
    "backend-key-truncated": header() + auth(0) + b"K" + u32(12) + b"\0\0\0",
    "backend-key-bad-length": header() + frame("K", b"\0" * 7) + ready(),
    "backend-key-3.2": header() + auth(0) + frame("K", i32(77) + bytes(range(32))) + ready(),
    "backend-key-too-long": header() + frame("K", i32(78) + b"\x02" * 257) + ready(),
    # A 3.2 key longer than max_watched: streamed (whole in the buffer by
    # chance), never rewritten (the fuzzer's first finding on long keys).
    "backend-key-3.2-streamed": header(watched=0, slack=255) + frame("R", u32(0))
    + frame("K", i32(77) + bytes(range(32))) + ready(),
    "backend-ready-bad-status": header() + frame("Z", b"X") + frame("Z", b"II") + frame("Z"),
    "backend-error-unterminated": header() + frame("E", b"SERROR\0CXX000\0Mm\0") + frame("E", b"Sx"),
    "backend-param-status-bad": header(mask=W_S) + frame("S", b"a\0b\0c\0") + frame("S", b"a\0b") + frame("S"),
    "backend-length-3": header() + auth(0) + b"Z" + u32(3) + b"I",
    "backend-length-huge-small-max": header(small=20) + ready() + b"D" + u32(0xFFFFFFF0) + b"abc",
    "backend-length-huge-streamed": header(flags=2) + b"D" + u32(0x7FFFFFF0) + b"abcdef" * 20,
    "backend-partial-header": header() + ready() + b"Z\0\0",
    "backend-empty": header(),
    "frontend-raw": header(mask=0xFF, sizes=[3, 1, 7]) + frame("Q", cstr("begin")) + frame("P", b"\0q\0\0\0")
    + frame("H") + frame("X"),
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):
        if name.endswith(".seed"):
            os.remove(os.path.join(out, name))
    for name, data in sorted(SEEDS.items()):
        with open(os.path.join(out, name + ".seed"), "wb") as f:
            f.write(data)
    print(f"{len(SEEDS)} seeds in {out}")


if __name__ == "__main__":
    main()
