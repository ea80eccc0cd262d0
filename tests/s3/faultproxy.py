#!/usr/bin/env python3
"""tests/s3/faultproxy.py - a small fault-injecting HTTP proxy for the S3 tests.

Forwards each request to UPSTREAM (host:port) byte for byte (the SigV4
signature covers Host, so the Host header is left alone) and, depending on
the request's number n (1, 2, ...), injects a fault instead:

  --fail-every K   n % K == 0: answer 503 SlowDown without forwarding
  --drop-every K   n % K == 0: close the connection without any answer
  --cut-every K    n % K == 0: forward, then send only half the answer and close
  --fail-after N   n > N: answer 503 to everything (a store that went down)
  --fail-puts-after N  once N PUTs went through, answer 503 to everything
  --hold-puts-after N --hold-file F
                   PUTs after the Nth wait (unanswered) until file F exists:
                   freezes a client at a known point, deterministically

One request per client connection (the answer carries Connection: close),
which keeps the relaying trivial. Prints the port it listens on (127.0.0.1
only), then serves until killed. Stdlib only.
"""
import argparse
import os
import socket
import time
import sys
import threading

lock = threading.Lock()
counter = [0]
puts = [0]
down = [False]
faults = {"pass": 0, "503": 0, "drop": 0, "cut": 0}


def read_head(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None, b""
        buf += chunk
        if len(buf) > 1 << 20:
            return None, b""
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head + b"\r\n\r\n", rest


def header(head, name):
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name:
            return v.strip()
    return None


def answer_503(c):
    body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b"<Message>injected by faultproxy</Message></Error>")
    c.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
              b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)


def pump_body(src, dst, rest, left):
    try:
        if rest:
            dst.sendall(rest)
        while left > 0:
            d = src.recv(min(65536, left))
            if not d:
                break
            dst.sendall(d)
            left -= len(d)
    except OSError:
        pass


def handle(c, args):
    try:
        c.settimeout(60)
        head, rest = read_head(c)
        if head is None:
            return
        with lock:
            counter[0] += 1
            n = counter[0]
            if args.fail_puts_after is not None and puts[0] >= args.fail_puts_after:
                down[0] = True
            if head.startswith(b"PUT "):
                puts[0] += 1
            nput = puts[0] if head.startswith(b"PUT ") else 0
        if args.hold_puts_after is not None and nput > args.hold_puts_after:
            if args.log:
                with open(args.log, "a") as f:
                    f.write("%d hold %s\n" % (n, head.split(b"\r\n", 1)[0].decode("latin-1")))
            while not os.path.exists(args.hold_file):
                time.sleep(0.05)
        kind = "pass"
        if down[0] or (args.fail_after is not None and n > args.fail_after):
            kind = "503"
        elif args.fail_every and n % args.fail_every == 0:
            kind = "503"
        elif args.drop_every and n % args.drop_every == 0:
            kind = "drop"
        elif args.cut_every and n % args.cut_every == 0:
            kind = "cut"
        with lock:
            faults[kind] += 1
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        if args.log:
            with open(args.log, "a") as f:
                f.write("%d %s %s\n" % (n, kind, line))
        if kind == "drop":
            return
        if kind == "503":
            answer_503(c)
            return
        length = int(header(head, b"content-length") or b"0")
        up = socket.create_connection((args.host, args.port), timeout=60)
        # one request per upstream connection: ask it to close afterwards
        lines = head[:-4].split(b"\r\n")
        lines = [l for l in lines if not l.lower().startswith(b"connection:")]
        up.sendall(b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n")
        t = threading.Thread(target=pump_body, args=(c, up, rest, length - len(rest)))
        t.daemon = True
        t.start()
        resp = b""
        while True:
            d = up.recv(65536)
            if not d:
                break
            if kind == "cut":
                resp += d
            else:
                c.sendall(d)
        if kind == "cut":
            # head and half of the body, then hang up
            h, _, b = resp.partition(b"\r\n\r\n")
            c.sendall(h + b"\r\n\r\n" + b[: len(b) // 2])
        up.close()
    except OSError:
        pass
    finally:
        try:
            c.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("upstream")
    ap.add_argument("--fail-every", type=int, default=0)
    ap.add_argument("--drop-every", type=int, default=0)
    ap.add_argument("--cut-every", type=int, default=0)
    ap.add_argument("--fail-after", type=int, default=None)
    ap.add_argument("--fail-puts-after", type=int, default=None)
    ap.add_argument("--hold-puts-after", type=int, default=None)
    ap.add_argument("--hold-file")
    ap.add_argument("--log")
    args = ap.parse_args()
    host, _, port = args.upstream.rpartition(":")
    args.host, args.port = host or "127.0.0.1", int(port)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    print(s.getsockname()[1], flush=True)
    while True:
        c, _ = s.accept()
        threading.Thread(target=handle, args=(c, args), daemon=True).start()


if __name__ == "__main__":
    main()
