#!/usr/bin/env python3
"""tests/shell/streamtool.py - take keel send streams apart for the tests
(replicate/STREAM-FORMAT.md §2): every record is a 32-byte header whose first
4 bytes are the body length, then the body.

  streamtool.py list S                        one line per record: index offset type seq length
  streamtool.py flip S OUT I [AT]             flip one bit of record I (AT bytes into its body)
  streamtool.py drop S OUT I                  without record I
  streamtool.py swap S OUT I J                records I and J exchanged
  streamtool.py dup S OUT I                   record I twice (a replay)
  streamtool.py truncate S OUT N              the first N bytes
  streamtool.py splice S T OUT I              S with its record I replaced by T's record I
  streamtool.py concat S T OUT                S, then all of T
  streamtool.py findrec S TYPE                index of the first record of TYPE (2 = data)
"""
import struct
import sys

TYPES = {1: 'header', 2: 'data', 3: 'zero', 4: 'ref', 5: 'mark', 6: 'trailer'}


def records(data):
    out, off = [], 0
    while off + 32 <= len(data):
        blen, typ, _flags, seq = struct.unpack_from('<IHHQ', data, off)
        out.append((off, 32 + blen, typ, seq))
        off += 32 + blen
    return out


def load(p):
    with open(p, 'rb') as f:
        return f.read()


def save(p, b):
    with open(p, 'wb') as f:
        f.write(b)


def main(a):
    cmd = a[0]
    s = load(a[1])
    r = records(s)
    parts = [s[o:o + n] for o, n, _, _ in r]
    if cmd == 'list':
        for i, (o, n, t, q) in enumerate(r):
            print(i, o, TYPES.get(t, t), q, n)
    elif cmd == 'flip':
        i = int(a[3])
        o, n, _, _ = r[i]
        at = int(a[4]) if len(a) > 4 else n // 2
        b = bytearray(s)
        b[o + 32 + at if len(a) > 4 else o + at] ^= 0x04
        save(a[2], bytes(b))
    elif cmd == 'drop':
        i = int(a[3])
        save(a[2], b''.join(parts[:i] + parts[i + 1:]))
    elif cmd == 'swap':
        i, j = int(a[3]), int(a[4])
        parts[i], parts[j] = parts[j], parts[i]
        save(a[2], b''.join(parts))
    elif cmd == 'dup':
        i = int(a[3])
        save(a[2], b''.join(parts[:i + 1] + parts[i:]))
    elif cmd == 'truncate':
        save(a[2], s[:int(a[3])])
    elif cmd == 'splice':
        t = load(a[2])
        tr = records(t)
        i = int(a[4])
        o, n, _, _ = tr[i]
        parts[i] = t[o:o + n]
        save(a[3], b''.join(parts))
    elif cmd == 'concat':
        save(a[3], s + load(a[2]))
    elif cmd == 'findrec':
        want = int(a[2])
        print(next(i for i, x in enumerate(r) if x[2] == want))
    else:
        sys.exit('unknown command ' + cmd)


if __name__ == '__main__':
    main(sys.argv[1:])
