#!/usr/bin/env python3
"""tests/shell/cutproxy.py - a TCP proxy that cuts connections, for the
keel replicate fault test.

  cutproxy.py PORTFILE TARGET_PORT CUTS SEED MIN MAX STATFILE

Listens on 127.0.0.1 (port written to PORTFILE) and forwards every
connection to 127.0.0.1:TARGET_PORT. Each of the first CUTS connections
that carries more than MIN bytes from the client is cut after a random
number of client bytes in [MIN, MAX] (random.Random(SEED)): both sockets
are reset (SO_LINGER 0), as a broken link would. Later connections pass
untouched. STATFILE gets the number of cuts made so far.
"""
import random
import socket
import struct
import sys
import threading

portfile, tport, cuts, seed, lo, hi, statfile = sys.argv[1:8]
tport, cuts, lo, hi = int(tport), int(cuts), int(lo), int(hi)
rnd = random.Random(int(seed))
lock = threading.Lock()
made = 0


def reset(s):
    # shutdown first: a close() alone does not reach a socket another thread is reading
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


def record_cut():
    global made
    with lock:
        made += 1
        with open(statfile, 'w') as f:
            f.write('%d\n' % made)


def handle(c, limit):
    s = socket.create_connection(('127.0.0.1', tport))
    done = threading.Event()

    def back():
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                c.sendall(b)
        except OSError:
            pass
        done.set()

    threading.Thread(target=back, daemon=True).start()
    sent = 0
    try:
        while True:
            b = c.recv(65536)
            if not b:
                break
            if limit is not None and sent + len(b) >= limit:
                s.sendall(b[:limit - sent])
                record_cut()
                reset(s)
                reset(c)
                return
            s.sendall(b)
            sent += len(b)
        s.shutdown(socket.SHUT_WR)
        done.wait()
    except OSError:
        pass
    reset(s)
    reset(c)


def main():
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(('127.0.0.1', 0))
    ls.listen(16)
    with open(portfile + '.tmp', 'w') as f:
        f.write('%d\n' % ls.getsockname()[1])
    import os
    os.rename(portfile + '.tmp', portfile)
    with open(statfile, 'w') as f:
        f.write('0\n')
    planned = 0
    while True:
        c, _ = ls.accept()
        limit = None
        if planned < cuts:
            limit = rnd.randint(lo, hi)
            planned += 1
        threading.Thread(target=handle, args=(c, limit), daemon=True).start()


main()
