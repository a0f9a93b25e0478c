# Run under nbdsh (handle h connected): writes around the given offsets
# and reads windows around them back, compared with the base plus every
# write so far.  Prints PASS/FAIL lines.
#
# Environment:
#   SIZES_BASE     a file path, "pattern" (nbdkit pattern plugin: each
#                  8-byte word is its big-endian offset) or "zero"
#   SIZES_POINTS   space-separated offsets; negative ones count from the end
#   SIZES_SEED     random seed
#   SIZES_MODE     "write": write, then check; "verify": the same writes
#                  (data comes from the seed) are only recorded, then
#                  checked (after a reload); "read": the 64 TiB run's reads
#                  only (the bare plugin's run, for the memory comparison)
#   SIZES_64T      set: the 64 TiB run (64 MiB in 1 MiB and 4 KiB pieces at
#                  random offsets, and at 4 GiB, 16 TiB, the end)
import os
import random

size = h.get_size()
base_kind = os.environ["SIZES_BASE"]
rng = random.Random(int(os.environ.get("SIZES_SEED", "1")))
writes = []            # (offset, bytes), in order
buckets = {}           # offset >> 20 -> indexes into writes


def base_read(off, n):
    if n <= 0:
        return b""
    if base_kind == "zero":
        return bytes(n)
    if base_kind == "pattern":
        a = off & ~7
        words = b"".join((a + 8 * i).to_bytes(8, "big") for i in range((off + n - a + 7) // 8))
        return words[off - a:off - a + n]
    with open(base_kind, "rb") as f:
        f.seek(off)
        return f.read(n)


def expected(off, n):
    buf = bytearray(base_read(off, n))
    idx = set()
    for b in range(off >> 20, ((off + n - 1) >> 20) + 1):
        idx.update(buckets.get(b, ()))
    for w_off, data in (writes[i] for i in sorted(idx)):
        lo, hi = max(off, w_off), min(off + n, w_off + len(data))
        if lo < hi:
            buf[lo - off:hi - off] = data[lo - w_off:hi - w_off]
    return bytes(buf)


def res(good, what):
    print(("PASS " if good else "FAIL ") + what)
    return good


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def check_window(off, n, what):
    off, end = max(0, off), min(size, off + n)
    if end <= off:
        return True
    got = h.pread(end - off, off)
    want = expected(off, end - off)
    if got != want:
        i = first_diff(got, want)
        print("  %s: [%d, %d) differs first at %d (got %s, want %s)" %
              (what, off, end, off + i, got[i:i + 8].hex(), want[i:i + 8].hex()))
        return False
    return True


mode = os.environ.get("SIZES_MODE", "write")


def write(off, n):
    data = rng.randbytes(n)
    if mode == "write":
        h.pwrite(data, off)
    for b in range(off >> 20, ((off + n - 1) >> 20) + 1):
        buckets.setdefault(b, []).append(len(writes))
    writes.append((off, data))


if os.environ.get("SIZES_64T") is None:
    good = True
    points = [int(p) if int(p) >= 0 else size + int(p) for p in os.environ["SIZES_POINTS"].split()]
    for p in points:
        if size == 0:
            break
        p = min(max(p, 0), size - 1)
        # Three writes: one ending at p, one starting at p, one straddling
        # it, of random unaligned lengths, each clipped to the export.
        for start, n in [(p - rng.randint(1, 9000), None), (p, rng.randint(1, 9000)),
                         (p - rng.randint(1, 5000), rng.randint(5001, 12000))]:
            if n is None:
                n = p - start
            start2, end2 = max(0, start), min(size, start + n)
            if end2 > start2:
                write(start2, end2 - start2)
        if mode == "write":           # later writes may overlap this window
            good &= check_window(p - 20000, 40000, "around %d" % p)
    good &= all(check_window(p - 20000, 40000, "around %d" % p) for p in points)
    res(good, "%s: writes at and around %d points read back exactly, neighbours keep the base"
        % (mode, len(points)))
    # Everything written, read back once more at the end.
    good = all(check_window(o, len(d), "write at %d" % o) for o, d in writes)
    res(good, "%s: all %d writes read back at the end" % (mode, len(writes)))
else:
    M = 1024 * 1024
    pieces = []
    for i in range(48):                       # 48 x 1 MiB at random unaligned offsets
        pieces.append((rng.randrange(0, size - M), M))
    for i in range(4096):                     # 4096 x 4 KiB, half aligned
        o = rng.randrange(0, size - 4096)
        pieces.append((o & ~4095 if i % 2 else o, 4096))
    # Writes near the boundaries, then the random ones.
    special = [(2**32 - 2048, 4096), (2**44 - 2048, 4096), (2**44, 4096), (size - 4096, 4096),
               (2**44 - M // 2, M)]
    clean = [(rng.randrange(0, size - M), M) for _ in range(16)]
    if mode != "read":
        for o, n in special + pieces:
            write(o, n)
        total = sum(n for _, n in special + pieces)
        res(True, "%s: %d writes, %.1f MiB (1 MiB and 4 KiB pieces, at 4G and 16T)"
            % (mode, len(special + pieces), total / M))
        good = all(check_window(o, n, "write at %d" % o) for o, n in special + pieces)
        res(good, "%s: every write reads back exactly (pattern plugin below: offsets are right)" % mode)
        good = all(check_window(o - 8192, 16384, "edge at %d" % o) for o, n in special)
        res(good, "%s: around 4 GiB, 16 TiB and the end, neighbours read the base pattern" % mode)
        good = all(check_window(o, n, "clean at %d" % o) for o, n in clean)
        res(good, "%s: 16 random clean 1 MiB ranges read the base pattern" % mode)
    else:
        for o, n in special + pieces + clean:
            h.pread(n, o)
        res(True, "the same %d reads on the bare plugin" % len(special + pieces + clean))
