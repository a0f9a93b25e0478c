/* Spec-valid qcow2 files that qemu reads, made from qemu-made images and
 * patched here: a deflate stream longer than a cluster, a zstd frame
 * declaring a 2^27 window, a stale bitmaps extension (autoclear bit 0
 * clear: its data is ignored).  Each must open and serve exactly what
 * `qemu-img convert -O raw` serves.  Their near misses (a stream short of
 * a cluster or corrupt before one, a 2^28 window, the same bitmaps damage
 * with the autoclear bit set) must be refused.  A missing qemu-img or
 * qemu-io is a failure.
 */
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>
#define ZSTD_STATIC_LINKING_ONLY    /* ZSTD_getFrameHeader */
#include <zstd.h>

#include "qcow2.h"
#include "shell.h"
#include "tap.h"

#define CS 65536u               /* cluster size of every image here */
#define VSIZE (4u * CS)

static char dir[64];
static char out[1 << 14];

#define run(...) shell_run (dir, out, sizeof out, false, __VA_ARGS__)

static void path_of (char *path, size_t len, const char *name)
{
  snprintf (path, len, "%s/%s", dir, name);
}

/* ------------------------------------------------------- image bytes */

struct img { uint8_t *p; size_t len; };

static uint64_t g64 (const uint8_t *p)
{
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = v << 8 | p[i];
  return v;
}
static uint32_t g32 (const uint8_t *p)
{
  return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 | (uint32_t) p[2] << 8 | p[3];
}
static void s64 (uint8_t *p, uint64_t v)
{
  for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (uint8_t) v;
}
static void s32 (uint8_t *p, uint32_t v)
{
  for (int i = 3; i >= 0; i--, v >>= 8) p[i] = (uint8_t) v;
}

static bool load (const char *name, struct img *m)
{
  char path[256];
  struct stat st;
  int fd;
  path_of (path, sizeof path, name);
  fd = open (path, O_RDONLY);
  if (fd < 0 || fstat (fd, &st) < 0) return false;
  m->len = (size_t) st.st_size;
  m->p = malloc (m->len);
  if (!m->p || pread (fd, m->p, m->len, 0) != (ssize_t) m->len) return false;
  close (fd);
  return true;
}

static bool save (const char *name, const struct img *m)
{
  char path[256];
  int fd;
  bool ok;
  path_of (path, sizeof path, name);
  fd = open (path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ok = fd >= 0 && write (fd, m->p, m->len) == (ssize_t) m->len;
  if (fd >= 0) close (fd);
  return ok;
}

/* The L2 entry of guest cluster g (the images here have one L2 table). */
static uint8_t *l2_entry (const struct img *m, uint64_t g)
{
  uint64_t l1 = g64 (m->p + 40), l2 = g64 (m->p + l1) & 0x00fffffffffffe00ull;
  if (l2 == 0 || l2 + CS > m->len) return NULL;
  return m->p + l2 + g * 8;
}

/* Where compressed guest cluster g's stream starts, and how many bytes
 * up to the end of its host cluster (free in these images: one
 * compressed cluster each).
 */
static bool stream_room (const struct img *m, uint64_t g, uint64_t *off,
                         size_t *room)
{
  uint8_t *e = l2_entry (m, g);
  if (!e || !(g64 (e) & (1ull << 62))) return false;
  *off = g64 (e) & ((1ull << 54) - 1);           /* 62 - (16 - 8) bits */
  *room = CS - (size_t) (*off % CS);
  return *off + *room <= m->len;
}

/* Replace compressed guest cluster g's stream; its sector count follows. */
static bool put_stream (struct img *m, uint64_t g, const uint8_t *s, size_t n)
{
  uint64_t off, sectors;
  size_t room;
  if (!stream_room (m, g, &off, &room) || n == 0 || n > room) return false;
  memset (m->p + off, 0, room);
  memcpy (m->p + off, s, n);
  sectors = ((off + n - 1) >> 9) - (off >> 9);
  s64 (l2_entry (m, g), 1ull << 62 | sectors << 54 | off);
  return true;
}

/* Offset of header extension `type`'s data, or 0. */
static size_t find_ext (const struct img *m, uint32_t type)
{
  size_t o = g32 (m->p + 100);
  while (o + 8 <= CS) {
    uint32_t t = g32 (m->p + o), len = g32 (m->p + o + 4);
    if (t == 0) return 0;
    if (t == type) return o + 8;
    o += 8 + ((len + 7) & ~7u);
  }
  return 0;
}

/* ------------------------------------------------------- differential */

/* Guest content as we decode it (unallocated reads as zeroes: no base). */
struct walk {
  struct qcow2_image *img;
  int fd;
  uint8_t *disk;
  bool bad;
  struct qcow2_err err;
};

static int visit (void *opaque, uint64_t g, const struct qcow2_cluster *c)
{
  struct walk *x = opaque;
  uint8_t *dst = x->disk + g * CS;
  if (g >= VSIZE / CS) return 0;
  if (c->kind == QCOW2_DATA)
    x->bad |= pread (x->fd, dst, CS, (off_t) c->host_offset) != (ssize_t) CS;
  else if (c->kind == QCOW2_COMPRESSED &&
           qcow2_read_compressed (x->img, c, dst, &x->err) < 0) {
    x->bad = true;
    return 1;
  }
  return 0;
}

/* Decode `name` completely: true when accepted, disk filled; reason in why. */
static bool decode (const char *name, uint8_t *disk, char *why, size_t whylen)
{
  char path[256];
  struct walk x = { .disk = disk };
  path_of (path, sizeof path, name);
  memset (disk, 0, VSIZE);
  x.fd = open (path, O_RDONLY);
  x.img = qcow2_open (x.fd, &x.err);
  if (x.img && qcow2_for_each_cluster (x.img, visit, &x, &x.err) < 0)
    x.bad = true;
  snprintf (why, whylen, "%s", x.img && !x.bad ? "" : x.err.msg);
  if (!x.img) x.bad = true;
  qcow2_close (x.img);
  close (x.fd);
  return !x.bad;
}

/* Both accept and serve the same bytes; cluster 0 is `want` (the patch
 * took effect).
 */
static void check_accepted (const char *label, const char *name,
                            const uint8_t *want)
{
  static uint8_t ours[VSIZE], theirs[VSIZE];
  char why[QCOW2_ERRLEN], path[256];
  bool qemu_ok, ok;
  int fd;

  qemu_ok = run ("rm -f ref.raw && qemu-img convert -O raw %s ref.raw", name) == 0;
  if (!qemu_ok) printf ("# qemu-img convert: %s", out);
  path_of (path, sizeof path, "ref.raw");
  fd = open (path, O_RDONLY);
  qemu_ok = qemu_ok && fd >= 0 && pread (fd, theirs, VSIZE, 0) == VSIZE;
  if (fd >= 0) close (fd);
  ok = decode (name, ours, why, sizeof why);
  if (!ok) printf ("# luacow: %s\n", why);
  CHECK (qemu_ok && ok && memcmp (ours, theirs, VSIZE) == 0 &&
         (!want || memcmp (theirs, want, CS) == 0),
         "%s: accepted, same %u bytes as qemu-img convert", label, VSIZE);
}

/* We refuse with a one-line reason; qemu_too: qemu-img convert fails too. */
static void check_refused (const char *label, const char *name, bool qemu_too)
{
  static uint8_t ours[VSIZE];
  char why[QCOW2_ERRLEN];
  bool ok = decode (name, ours, why, sizeof why);
  bool qemu_ok = run ("qemu-img convert -O raw %s ref.raw", name) == 0;
  CHECK (!ok && why[0] && !strchr (why, '\n') && (!qemu_too || !qemu_ok),
         "%s: refused (%s)%s", label, why,
         qemu_too ? (qemu_ok ? ", but qemu reads it" : ", as by qemu") : "");
}

/* ------------------------------------------------------------ cases */

static void pattern (uint8_t *p, size_t n, unsigned seed)
{
  for (size_t i = 0; i < n; i++)
    p[i] = (uint8_t) ("luacow qcow2 "[(i / 7 + seed) % 13] + (i % 977 == 0));
}

/* Source: a compressible cluster, then random ones (stored as is). */
static bool make_compressed (const char *name, const char *type)
{
  return run ("{ yes 'luacow accept 0123456789' | head -c %u; "
              "head -c %u /dev/urandom; } > src.raw && "
              "qemu-img convert -c -O qcow2 -o cluster_size=%u,compression_type=%s "
              "src.raw %s && rm -f src.raw", CS, VSIZE - CS, CS, type, name) == 0;
}

/* Raw deflate of n bytes at src, window 4 KiB as qemu; flush Z_FINISH or
 * Z_SYNC_FLUSH (then the stream does not end).
 */
static size_t raw_deflate (uint8_t *dst, size_t cap, const uint8_t *src,
                           size_t n, int flush)
{
  z_stream z;
  memset (&z, 0, sizeof z);
  if (deflateInit2 (&z, 9, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
    return 0;
  z.next_in = (Bytef *) (uintptr_t) src;
  z.avail_in = (uInt) n;
  z.next_out = dst;
  z.avail_out = (uInt) cap;
  deflate (&z, flush);
  n = z.avail_in == 0 ? cap - z.avail_out : 0;
  deflateEnd (&z);
  return n;
}

static void deflate_cases (void)
{
  static uint8_t src[2 * CS], stream[CS];
  struct img base, m;
  size_t n;

  if (!make_compressed ("d.qcow2", "zlib") || !load ("d.qcow2", &base)) {
    CHECK (0, "deflate: qemu-img convert -c: %s", out);
    return;
  }
  pattern (src, CS, 1);
  pattern (src + CS, CS, 5);
  m.len = base.len;
  m.p = malloc (m.len);

  /* The stream goes on for a second cluster: qemu stops after the first. */
  n = raw_deflate (stream, sizeof stream, src, 2 * CS, Z_FINISH);
  memcpy (m.p, base.p, m.len);
  CHECK (n && put_stream (&m, 0, stream, n) && save ("d-long.qcow2", &m),
         "deflate: wrote a %zu-byte stream of 2 clusters", n);
  check_accepted ("deflate stream of two clusters", "d-long.qcow2", src);

  /* ... and is cut short in the second cluster: still a full first one. */
  memcpy (m.p, base.p, m.len);
  CHECK (n > 40 && put_stream (&m, 0, stream, n - 20) && save ("d-cut.qcow2", &m),
         "deflate: wrote it without its last 20 bytes");
  check_accepted ("deflate stream of 2 clusters, cut in the second",
                  "d-cut.qcow2", src);

  /* A cluster less one byte, the stream ending there: refused. */
  n = raw_deflate (stream, sizeof stream, src, CS - 1, Z_FINISH);
  memcpy (m.p, base.p, m.len);
  CHECK (n && put_stream (&m, 0, stream, n) && save ("d-short.qcow2", &m),
         "deflate: wrote a stream of a cluster less one byte");
  check_refused ("deflate stream short of a cluster", "d-short.qcow2", true);

  /* Half a cluster, then an invalid block type (0xff): corrupt before a
   * cluster was produced.
   */
  n = raw_deflate (stream, sizeof stream, src, CS / 2, Z_SYNC_FLUSH);
  memcpy (m.p, base.p, m.len);
  if (n) memset (stream + n, 0xff, 64);
  CHECK (n && put_stream (&m, 0, stream, n + 64) && save ("d-bad.qcow2", &m),
         "deflate: wrote half a cluster then garbage");
  check_refused ("deflate stream corrupt before a cluster", "d-bad.qcow2", true);
  free (m.p);
  free (base.p);
}

/* A zstd frame of one cluster with window descriptor byte wd (no single
 * segment flag, so the descriptor is the byte after the frame header
 * descriptor).
 */
static size_t zstd_frame (uint8_t *dst, size_t cap, const uint8_t *src,
                          uint8_t wd)
{
  ZSTD_CCtx *c = ZSTD_createCCtx ();
  ZSTD_inBuffer in = { src, CS, 0 };
  ZSTD_outBuffer ob = { dst, cap, 0 };
  ZSTD_frameHeader fh;
  size_t r;

  ZSTD_CCtx_setParameter (c, ZSTD_c_contentSizeFlag, 0);
  ZSTD_CCtx_setParameter (c, ZSTD_c_windowLog, 20);
  r = ZSTD_compressStream2 (c, &ob, &in, ZSTD_e_continue);
  if (!ZSTD_isError (r)) r = ZSTD_compressStream2 (c, &ob, &in, ZSTD_e_end);
  ZSTD_freeCCtx (c);
  if (ZSTD_isError (r) || r != 0 || ob.pos < 6 || (dst[4] & 0x20)) return 0;
  dst[5] = wd;
  if (ZSTD_getFrameHeader (&fh, dst, ob.pos) != 0) return 0;
  printf ("# zstd frame of %zu bytes declares a window of %llu bytes\n",
          ob.pos, (unsigned long long) fh.windowSize);
  return ob.pos;
}

static void zstd_cases (void)
{
  static uint8_t src[CS], stream[CS];
  struct img base, m;
  size_t n;

  if (!make_compressed ("z.qcow2", "zstd") || !load ("z.qcow2", &base)) {
    CHECK (0, "zstd: qemu-img convert -c: %s", out);
    return;
  }
  pattern (src, CS, 3);
  m.len = base.len;
  m.p = malloc (m.len);

  /* Window descriptor: exponent in the top 5 bits, 2^(10 + exponent). */
  n = zstd_frame (stream, sizeof stream, src, 17 << 3);
  memcpy (m.p, base.p, m.len);
  CHECK (n && put_stream (&m, 0, stream, n) && save ("z-27.qcow2", &m),
         "zstd: wrote a frame declaring a 2^27-byte window");
  check_accepted ("zstd frame with a 2^27 window", "z-27.qcow2", src);

  n = zstd_frame (stream, sizeof stream, src, 18 << 3);
  memcpy (m.p, base.p, m.len);
  CHECK (n && put_stream (&m, 0, stream, n) && save ("z-28.qcow2", &m),
         "zstd: wrote a frame declaring a 2^28-byte window");
  check_refused ("zstd frame with a 2^28 window", "z-28.qcow2", true);
  free (m.p);
  free (base.p);
}

#define EXT_BITMAPS 0x23852875u

static void bitmap_cases (void)
{
  struct img base, m;
  size_t x;
  uint8_t *e;
  uint64_t data_off;

  if (run ("qemu-img create -q -f qcow2 -o cluster_size=%u b.qcow2 %u && "
           "qemu-img bitmap --add b.qcow2 b0 && "
           "qemu-io -f qcow2 -c 'write -P 0x5a 0 %u' b.qcow2 >/dev/null",
           CS, VSIZE, 2 * CS) != 0 || !load ("b.qcow2", &base)) {
    CHECK (0, "bitmaps: qemu-img bitmap --add / qemu-io: %s", out);
    return;
  }
  x = find_ext (&base, EXT_BITMAPS);
  e = l2_entry (&base, 1);
  if (!x || !(base.p[95] & 1) || !e) {
    CHECK (0, "bitmaps: qemu made a bitmaps extension, autoclear bit 0 set");
    free (base.p);
    return;
  }
  data_off = g64 (e) & 0x00fffffffffffe00ull;
  m.len = base.len;
  m.p = malloc (m.len);

  /* A program without bitmap support cleared the bit; nb_bitmaps 0. */
  memcpy (m.p, base.p, m.len);
  m.p[95] &= (uint8_t) ~1;
  s32 (m.p + x, 0);
  CHECK (save ("b-stale-zero.qcow2", &m), "bitmaps: stale, nb_bitmaps 0");
  check_accepted ("stale bitmaps extension with no bitmaps",
                  "b-stale-zero.qcow2", NULL);
  m.p[95] |= 1;
  CHECK (save ("b-zero.qcow2", &m), "bitmaps: bit set, nb_bitmaps 0");
  check_refused ("bitmaps extension (bit set) with no bitmaps", "b-zero.qcow2",
                 false);

  /* The directory's cluster reused for guest data, as after
   * qemu-img check -r.
   */
  memcpy (m.p, base.p, m.len);
  m.p[95] &= (uint8_t) ~1;
  s64 (m.p + x + 16, data_off);
  CHECK (save ("b-stale-reused.qcow2", &m),
         "bitmaps: stale, directory on the data cluster at %#llx",
         (unsigned long long) data_off);
  check_accepted ("stale bitmaps directory on a data cluster",
                  "b-stale-reused.qcow2", NULL);
  m.p[95] |= 1;
  CHECK (save ("b-reused.qcow2", &m), "bitmaps: bit set, same directory");
  check_refused ("bitmaps directory (bit set) on a data cluster",
                 "b-reused.qcow2", false);
  free (m.p);
  free (base.p);
}

int main (void)
{
  if (shell_setup (dir, "qcow2-accept", true) == -1)
    return 1;
  deflate_cases ();
  zstd_cases ();
  bitmap_cases ();
  run ("rm -f *.qcow2 ref.raw");
  rmdir (dir);
  return TAP_DONE ();
}
