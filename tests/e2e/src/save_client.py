#!/usr/bin/python3
"""NBD client and checker for the luacow save/policy/fault e2e tests.

  save_client.py ops URI --base FILE --cs N [--state F] [--seen OUT]
                 [--expmap OUT] [--verify all|touched|none] OP...
      Runs OPs against the export, keeping a model of what the disk must
      read as (the base file plus every op) and of the overlay's block
      states.  Then reads back (the whole disk, or the clusters the ops
      touched when --verify touched) and compares with the model.
      --state F carries the model across nbdkit runs (a reload): it is
      read if it exists and written at the end.  --seen writes what the
      client read (the whole disk) as a raw file; --expmap writes the
      expected qcow2 cluster map as JSON {cluster: "data"|"zero"}.
      OPs:  w:OFF:LEN:SEED  write pseudo-random bytes
            p:OFF:LEN:BYTE  write one repeated byte
            z:OFF:LEN       zero        t:OFF:LEN   trim
            f               flush       x:OFF:LEN   expect: read and compare
            F               a flush that must fail with EIO
            e               every --exists PATH exists (still connected)
            s:MS            sleep
      OFF and LEN are Python expressions over size, cs, K, M, G.

  save_client.py mapcheck MAP.json EXPMAP.json CS
      Compares `qemu-img map --output=json` with the expected cluster map:
      exactly the expected clusters are data/zero, every other cluster is
      unallocated.

  save_client.py info INFO.json KEY=VALUE...
      Checks fields of `qemu-img info --output=json` (dotted keys).

  save_client.py readall URI OUT     the whole export into a raw file
  save_client.py flush URI           one flush, exit status is its result
  save_client.py hdr FILE            print qcow2 header fields as JSON
  save_client.py exportsize FILE...  the export size FILE was made for
                                     ("SIZE FILE" lines for several)
"""
import json
import os
import random
import sys

K, M, G = 1 << 10, 1 << 20, 1 << 30
CHUNK = 4 * M


def connect(uri):
    """EXPORT_NAME in the environment: ask for that export name (any
    bytes a client may send) over the URI's Unix socket."""
    import nbd
    from urllib.parse import parse_qs, urlparse
    h = nbd.NBD()
    name = os.environ.get("EXPORT_NAME")
    if name is None:
        h.connect_uri(uri)
    else:
        h.set_export_name(name)
        h.connect_unix(parse_qs(urlparse(uri).query)["socket"][0])
    return h


def pattern(seed, n):
    return random.Random(seed).randbytes(n)


class Model:
    """Expected content (base + ops) and overlay block states."""

    def __init__(self, base, size, cs, state=None):
        self.base, self.size, self.cs = base, size, cs
        self.bs = min(cs, 4096)
        self.ops = []                  # (off, len, bytes or None for zero)
        self.blocks = {}               # block -> "z" | "d" (absent: clean)
        if state:
            self.ops = [(o, n, None if d is None else bytes.fromhex(d))
                        for o, n, d in state["ops"]]
            self.blocks = {int(b): s for b, s in state["blocks"].items()}

    def dump(self):
        return {"ops": [(o, n, None if d is None else d.hex()) for o, n, d in self.ops],
                "blocks": {str(b): s for b, s in self.blocks.items()}}

    def block_end(self, b):
        return min((b + 1) * self.bs, self.size)

    def apply(self, off, n, data):
        """data None: zero or trim.  Mirrors overlay.c: partial blocks are
        read-modify-written (data) unless zeroing a block already zero."""
        self.ops.append((off, n, data))
        b, end = off // self.bs, off + n
        while b * self.bs < end:
            start, bend = b * self.bs, self.block_end(b)
            whole = off <= start and end >= bend
            if data is not None:
                self.blocks[b] = "d"
            elif whole:
                self.blocks[b] = "z"
            elif self.blocks.get(b) != "z":
                self.blocks[b] = "d"
            b += 1

    def expected(self, off, n):
        with open(self.base, "rb") as f:
            f.seek(off)
            buf = bytearray(f.read(n))
        buf.extend(bytes(n - len(buf)))
        for o, ln, d in self.ops:
            lo, hi = max(o, off), min(o + ln, off + n)
            if lo < hi:
                buf[lo - off:hi - off] = bytes(hi - lo) if d is None else d[lo - o:hi - o]
        return bytes(buf)

    def cluster_map(self):
        """What save.c writes: any data block, or zero and clean mixed ->
        data; all zero -> zero; all clean -> nothing."""
        per = {}
        for b, s in self.blocks.items():
            per.setdefault(b * self.bs // self.cs, set()).add(s)
        out = {}
        for c, kinds in per.items():
            first = c * self.cs // self.bs
            last = (min((c + 1) * self.cs, self.size) - 1) // self.bs
            nset = sum(1 for b in range(first, last + 1) if b in self.blocks)
            out[c] = "data" if "d" in kinds or nset < last - first + 1 else "zero"
        return out


def parse_ops(args, size, cs):
    env = {"size": size, "cs": cs, "K": K, "M": M, "G": G}
    ops = []
    for a in args:
        parts = a.split(":")
        ops.append((parts[0], [int(eval(x, {}, env)) for x in parts[1:]]))
    return ops


def cmd_ops(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="save_client.py ops")
    ap.add_argument("uri")
    ap.add_argument("--base", required=True)
    ap.add_argument("--cs", type=int, required=True)
    ap.add_argument("--state")
    ap.add_argument("--seen")
    ap.add_argument("--expmap")
    ap.add_argument("--verify", default="all", choices=["all", "touched", "none"])
    ap.add_argument("--exists", action="append", default=[],
                    help="files op e checks (while still connected)")
    ap.add_argument("ops", nargs="*")
    a = ap.parse_intermixed_args(argv)
    h = connect(a.uri)
    size = h.get_size()
    state = None
    if a.state and os.path.exists(a.state):
        with open(a.state) as f:
            state = json.load(f)
    m = Model(a.base, size, a.cs, state)
    checks = []
    for kind, nums in parse_ops(a.ops, size, a.cs):
        if kind in ("w", "p"):
            off, n, seed = nums
            data = pattern(seed, n) if kind == "w" else bytes([seed & 255]) * n
            h.pwrite(data, off)
            m.apply(off, n, data)
        elif kind == "z":
            h.zero(nums[1], nums[0])
            m.apply(nums[0], nums[1], None)
        elif kind == "t":
            h.trim(nums[1], nums[0])
            m.apply(nums[0], nums[1], None)
        elif kind == "f":
            h.flush()
        elif kind == "F":
            import errno
            import nbd
            try:
                h.flush()
            except nbd.Error as e:
                if e.errnum != errno.EIO:
                    print("# flush failed with %s, not EIO" % e)
                    return 1
                print("# flush failed as expected: %s" % e)
            else:
                print("# flush succeeded, expected EIO")
                return 1
        elif kind == "x":
            checks.append((nums[0], nums[1]))
        elif kind == "e":
            missing = [p for p in a.exists if not os.path.exists(p)]
            if missing:
                print("# missing while connected: %s" % " ".join(missing))
                return 1
        elif kind == "s":
            import time
            time.sleep(nums[0] / 1000)
        else:
            sys.exit("unknown op " + kind)

    bad = 0
    if a.verify == "all" or a.seen:
        out = open(a.seen, "wb") if a.seen else None
        off = 0
        while off < size:
            n = min(CHUNK, size - off)
            got = h.pread(n, off)
            if a.verify == "all":
                exp = m.expected(off, n)
                if got != exp:
                    i = next(i for i in range(n) if got[i] != exp[i])
                    print("# mismatch at %d: got %r expected %r"
                          % (off + i, got[i:i + 8], exp[i:i + 8]))
                    bad += 1
            if out:
                out.write(got)
            off += n
        if out:
            out.close()
    if a.verify == "touched":
        clusters = set()
        for o, n in checks + [(o, n) for o, n, _ in m.ops]:
            clusters.update(range(o // a.cs, (o + max(n, 1) - 1) // a.cs + 1))
        for c in sorted(clusters):
            off = c * a.cs
            n = min(a.cs, size - off)
            if h.pread(n, off) != m.expected(off, n):
                print("# mismatch in cluster %d" % c)
                bad += 1
    h.shutdown()
    if a.state:
        with open(a.state, "w") as f:
            json.dump(m.dump(), f)
    if a.expmap:
        with open(a.expmap, "w") as f:
            json.dump({str(k): v for k, v in sorted(m.cluster_map().items())}, f)
    return 1 if bad else 0


def qemu_clusters(mapfile, cs):
    with open(mapfile) as f:
        entries = json.load(f)
    got = {}
    for e in entries:
        if not e.get("present", True) or e["depth"] != 0:
            continue
        kind = "data" if e["data"] else ("zero" if e["zero"] else "?")
        start, end = e["start"], e["start"] + e["length"]
        if start % cs:
            print("# map entry not cluster aligned: %r" % e)
            got[start // cs] = "?"
        for c in range(start // cs, (end + cs - 1) // cs):
            got[c] = kind
    return got


def cmd_mapcheck(argv):
    mapfile, expfile, cs = argv[0], argv[1], int(argv[2])
    got = qemu_clusters(mapfile, cs)
    with open(expfile) as f:
        exp = {int(k): v for k, v in json.load(f).items()}
    bad = 0
    for c in sorted(set(got) | set(exp)):
        if got.get(c, "unallocated") != exp.get(c, "unallocated"):
            print("# cluster %d: qemu-img map says %s, expected %s"
                  % (c, got.get(c, "unallocated"), exp.get(c, "unallocated")))
            bad += 1
            if bad > 20:
                break
    return 1 if bad else 0


def cmd_info(argv):
    with open(argv[0]) as f:
        info = json.load(f)
    bad = 0
    for kv in argv[1:]:
        k, v = kv.split("=", 1)
        cur = info
        for part in k.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if str(cur).lower() != v.lower():
            print("# qemu-img info: %s is %r, expected %s" % (k, cur, v))
            bad += 1
    return 1 if bad else 0


def cmd_readall(argv):
    h = connect(argv[0])
    size = h.get_size()
    with open(argv[1], "wb") as out:
        off = 0
        while off < size:
            n = min(CHUNK, size - off)
            out.write(h.pread(n, off))
            off += n
    h.shutdown()
    return 0


def cmd_flush(argv):
    h = connect(argv[0])
    try:
        h.flush()
    except Exception as e:          # nbd.Error
        print("# flush failed: %s" % e)
        return 1
    finally:
        try:
            h.shutdown()
        except Exception:
            pass
    return 0


def cmd_hdr(argv):
    import struct
    with open(argv[0], "rb") as f:
        hdr = f.read(104)
    names = ["magic", "version", "backing_file_offset", "backing_file_size",
             "cluster_bits", "size", "crypt_method", "l1_size", "l1_table_offset",
             "refcount_table_offset", "refcount_table_clusters", "nb_snapshots",
             "snapshots_offset"]
    vals = struct.unpack(">IIQIIQIIQQIIQ", hdr[:72])
    d = dict(zip(names, vals))
    if d["version"] >= 3:
        ext = struct.unpack(">QQQII", hdr[72:104])
        d.update(dict(zip(["incompatible_features", "compatible_features",
                           "autoclear_features", "refcount_order", "header_length"], ext)))
    print(json.dumps(d))
    return 0


def cmd_exportsize(argv):
    for path in argv:
        export_size(path)
    return 0


def export_size(path):
    """The export size a qcow2 file was made for: luacow's exact-size
    extension when present, else the header's size; 65536 when the
    header is unreadable or the size absurd (the file is then rejected
    for that anyway)."""
    import struct
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 16)
        magic, version = struct.unpack(">II", data[:8])
        size = struct.unpack(">Q", data[24:32])[0]
        pos = 72
        if version >= 3:
            pos = struct.unpack(">I", data[100:104])[0]
        while pos + 8 <= len(data):
            typ, ln = struct.unpack(">II", data[pos:pos + 8])
            if typ == 0:
                break
            if typ == 0x6c636f77 and ln == 8:
                size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
                break
            pos += 8 + (ln + 7) // 8 * 8
    except Exception:
        size = 65536
    if not 0 < size < (1 << 62):
        size = 65536
    print(size, path) if len(sys.argv) > 3 else print(size)


def main():
    cmd, argv = sys.argv[1], sys.argv[2:]
    fn = {"ops": cmd_ops, "mapcheck": cmd_mapcheck, "info": cmd_info,
          "readall": cmd_readall, "flush": cmd_flush, "hdr": cmd_hdr,
          "exportsize": cmd_exportsize}[cmd]
    sys.exit(fn(argv))


if __name__ == "__main__":
    main()
