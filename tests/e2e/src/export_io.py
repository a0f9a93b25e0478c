#!/usr/bin/python3
# One connection to one export, some requests, checks.
#   export_io.py SOCK NAME-HEX OP...
# NAME-HEX: the export name's UTF-8 bytes in hex ("" for the default).
# OP: w:OFF:BYTE:LEN  write LEN bytes of BYTE at OFF
#     r:OFF:BYTE:LEN  read them back, expecting BYTE everywhere
#     f               flush
# Exit 0: all good; 1: a read differed (said on stderr); 2: the
# connection (or a request) failed.
import sys
import nbd

sock, name = sys.argv[1], bytes.fromhex(sys.argv[2]).decode("utf-8")
h = nbd.NBD()
h.set_export_name(name)
try:
    h.connect_unix(sock)
except nbd.Error as e:
    print("connect failed: %s" % e, file=sys.stderr)
    sys.exit(2)
status = 0
try:
    for op in sys.argv[3:]:
        parts = op.split(":")
        if parts[0] == "f":
            h.flush()
            continue
        off, byte, length = int(parts[1]), int(parts[2], 0), int(parts[3])
        if parts[0] == "w":
            h.pwrite(bytes([byte]) * length, off)
        else:
            got = h.pread(length, off)
            if got != bytes([byte]) * length:
                bad = next(i for i in range(length) if got[i] != byte)
                print("export %r offset %d: byte 0x%02x, expected 0x%02x"
                      % (name[:40], off + bad, got[bad], byte), file=sys.stderr)
                status = 1
except nbd.Error as e:
    print("request failed: %s" % e, file=sys.stderr)
    sys.exit(2)
h.shutdown()
sys.exit(status)
