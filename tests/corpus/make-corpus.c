/* Corpus generator, run by make-corpus.sh: make-corpus WORKDIR OUTDIR.
 *
 * WORKDIR holds small qemu-made images; this program adds images from
 * luacow's encoder, copies all of them to OUTDIR/good/ and writes damaged
 * copies to OUTDIR/bad/, one per broken field, named after it; and to
 * OUTDIR/good/ a few patched copies that are unusual but valid (qemu
 * reads them the same).  Offsets
 * are found by parsing each base, so the damage lands on the intended
 * structure whatever qemu's layout.
 */
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zlib.h>
#define ZSTD_STATIC_LINKING_ONLY    /* ZSTD_getFrameHeader */
#include <zstd.h>

#include "qcow2.h"

static const char *workdir, *outdir;
static int nbad;

struct img { uint8_t *p; size_t len; };

static void die (const char *fmt, ...) __attribute__ ((format (printf, 1, 2), noreturn));
static void die (const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  fputs ("make-corpus: ", stderr);
  vfprintf (stderr, fmt, ap);
  fputc ('\n', stderr);
  va_end (ap);
  exit (1);
}

static struct img load (const char *name)
{
  char path[512];
  struct img m;
  FILE *f;
  snprintf (path, sizeof path, "%s/%s", workdir, name);
  f = fopen (path, "rb");
  if (!f) die ("%s: cannot open", path);
  fseek (f, 0, SEEK_END);
  m.len = (size_t) ftell (f);
  fseek (f, 0, SEEK_SET);
  m.p = malloc (m.len + 4096);          /* room to grow a little */
  if (!m.p || fread (m.p, 1, m.len, f) != m.len) die ("%s: read", path);
  fclose (f);
  return m;
}

static struct img clone (struct img b)
{
  struct img m = { malloc (b.len + 4096), b.len };
  if (!m.p) die ("out of memory");
  memcpy (m.p, b.p, b.len);
  return m;
}

static void save_to (const char *sub, const char *name, struct img m)
{
  char path[512];
  FILE *f;
  snprintf (path, sizeof path, "%s/%s/%s.qcow2", outdir, sub, name);
  f = fopen (path, "wb");
  if (!f || fwrite (m.p, 1, m.len, f) != m.len || fclose (f) != 0)
    die ("%s: write", path);
}

/* Save a damaged copy and free it. */
static void bad (const char *name, struct img m)
{
  save_to ("bad", name, m);
  free (m.p);
  nbad++;
}

/* Save a patched copy that must still decode, and free it. */
static void good (const char *name, struct img m)
{
  save_to ("good", name, m);
  free (m.p);
}

static uint32_t g32 (struct img m, uint64_t o)
{
  if (o + 4 > m.len) die ("g32 past end at %llu", (unsigned long long) o);
  return (uint32_t) m.p[o] << 24 | (uint32_t) m.p[o + 1] << 16 |
         (uint32_t) m.p[o + 2] << 8 | m.p[o + 3];
}
static uint64_t g64 (struct img m, uint64_t o)
{
  return (uint64_t) g32 (m, o) << 32 | g32 (m, o + 4);
}
static void s32 (struct img m, uint64_t o, uint32_t v)
{
  if (o + 4 > m.len) die ("s32 past end at %llu", (unsigned long long) o);
  for (int i = 0; i < 4; i++) m.p[o + i] = (uint8_t) (v >> (24 - 8 * i));
}
static void s64 (struct img m, uint64_t o, uint64_t v)
{
  s32 (m, o, (uint32_t) (v >> 32));
  s32 (m, o + 4, (uint32_t) v);
}
static void s16 (struct img m, uint64_t o, uint16_t v)
{
  m.p[o] = (uint8_t) (v >> 8);
  m.p[o + 1] = (uint8_t) v;
}

#define OFFMASK 0x00fffffffffffe00ull

static uint32_t cbits (struct img m) { return g32 (m, 20); }
static uint64_t csz (struct img m) { return 1ull << cbits (m); }
static uint64_t l1off (struct img m) { return g64 (m, 40); }
static uint64_t rtoff (struct img m) { return g64 (m, 48); }
static uint64_t first_l2 (struct img m)
{
  for (uint32_t i = 0; i < g32 (m, 36); i++)
    if (g64 (m, l1off (m) + 8 * i) & OFFMASK)
      return g64 (m, l1off (m) + 8 * i) & OFFMASK;
  die ("no L2 table");
}

enum ekind { E_DATA, E_ZERO_PLAIN, E_ZERO_ALLOC, E_COMPRESSED };

/* File offset of the n-th L2 entry of a kind, across all L2 tables. */
static uint64_t find_entry (struct img m, enum ekind k, int n)
{
  for (uint32_t i = 0; i < g32 (m, 36); i++) {
    uint64_t l2 = g64 (m, l1off (m) + 8 * i) & OFFMASK;
    if (!l2) continue;
    for (uint64_t j = 0; j < csz (m) / 8; j++) {
      uint64_t e = g64 (m, l2 + 8 * j);
      enum ekind got;
      if (e & (1ull << 62)) got = E_COMPRESSED;
      else if (e & 1) got = e & OFFMASK ? E_ZERO_ALLOC : E_ZERO_PLAIN;
      else if (e & OFFMASK) got = E_DATA;
      else continue;
      if (got == k && n-- == 0) return l2 + 8 * j;
    }
  }
  die ("no L2 entry of kind %d", (int) k);
}

/* Offset and sector range of a compressed descriptor. */
static void compressed_at (struct img m, uint64_t entry_off, uint64_t *off,
                           uint64_t *bytes)
{
  unsigned x = 62 - (cbits (m) - 8);
  uint64_t e = g64 (m, entry_off);
  uint64_t sect = ((e >> x) & ((1ull << (cbits (m) - 8)) - 1)) + 1;
  *off = e & ((1ull << x) - 1);
  *bytes = sect * 512 - (*off & 511);
  if (*off + *bytes > m.len) *bytes = m.len - *off;
}

static uint64_t compressed_entry (struct img m, uint64_t off, uint64_t nsect)
{
  unsigned x = 62 - (cbits (m) - 8);
  return 1ull << 62 | nsect << x | off;
}

/* L2 entry offset of the compressed cluster stored last in the file. */
static uint64_t last_compressed (struct img m)
{
  uint64_t best = 0, best_off = 0;
  for (uint32_t i = 0; i < g32 (m, 36); i++) {
    uint64_t l2 = g64 (m, l1off (m) + 8 * i) & OFFMASK;
    if (!l2) continue;
    for (uint64_t j = 0; j < csz (m) / 8; j++) {
      uint64_t off, bytes;
      if (!(g64 (m, l2 + 8 * j) & (1ull << 62))) continue;
      compressed_at (m, l2 + 8 * j, &off, &bytes);
      if (off >= best_off) {
        best_off = off;
        best = l2 + 8 * j;
      }
    }
  }
  if (!best) die ("no compressed cluster");
  return best;
}

/* Offset of header extension `type`, or 0. */
static uint64_t find_ext (struct img m, uint32_t type)
{
  uint64_t o = g32 (m, 4) == 3 ? g32 (m, 100) : 72;
  while (o + 8 <= csz (m)) {
    uint32_t t = g32 (m, o), len = g32 (m, o + 4);
    if (t == 0) return 0;
    if (t == type) return o;
    o += 8 + ((len + 7) & ~7u);
  }
  return 0;
}

/* End of the header extension area (just past the end marker). */
static uint64_t ext_end (struct img m)
{
  uint64_t o = g32 (m, 4) == 3 ? g32 (m, 100) : 72;
  while (g32 (m, o) != 0) o += 8 + ((g32 (m, o + 4) + 7) & ~7u);
  return o + 8;
}

/* Write a compressed stream over the data of a compressed cluster. */
static void put_stream (struct img m, uint64_t entry_off, const void *s, size_t n)
{
  uint64_t off, bytes;
  compressed_at (m, entry_off, &off, &bytes);
  if (n > bytes) die ("stream of %zu bytes does not fit in %llu", n,
                      (unsigned long long) bytes);
  memset (m.p + off, 0, bytes);
  memcpy (m.p + off, s, n);
}

/* Bytes of compressed cluster entry_off's stream before the next stream
 * (qemu packs them byte-wise) or the end of its sectors.
 */
static uint64_t stream_room (struct img m, uint64_t entry_off)
{
  uint64_t off, bytes, end;
  compressed_at (m, entry_off, &off, &bytes);
  end = off + bytes;
  for (uint32_t i = 0; i < g32 (m, 36); i++) {
    uint64_t l2 = g64 (m, l1off (m) + 8 * i) & OFFMASK;
    if (!l2) continue;
    for (uint64_t j = 0; j < csz (m) / 8; j++) {
      uint64_t o, b;
      if (!(g64 (m, l2 + 8 * j) & (1ull << 62))) continue;
      compressed_at (m, l2 + 8 * j, &o, &b);
      if (o > off && o < end) end = o;
    }
  }
  return end - off;
}

/* Write a stream over compressed cluster entry_off's own bytes only, so
 * the clusters packed after it stay intact.
 */
static void put_own_stream (struct img m, uint64_t entry_off, const void *s,
                            size_t n)
{
  uint64_t off, bytes, room = stream_room (m, entry_off);
  compressed_at (m, entry_off, &off, &bytes);
  if (n > room) die ("stream of %zu bytes does not fit in %llu", n,
                     (unsigned long long) room);
  memset (m.p + off, 0, room);
  memcpy (m.p + off, s, n);
}

/* A zstd frame of n bytes of src whose header declares a window of
 * 2^window_log bytes (no content size, so the descriptor byte is there).
 */
static size_t zstd_window_frame (uint8_t *dst, size_t cap, const uint8_t *src,
                                 size_t n, unsigned window_log)
{
  ZSTD_CCtx *c = ZSTD_createCCtx ();
  ZSTD_inBuffer in = { src, n, 0 };
  ZSTD_outBuffer ob = { dst, cap, 0 };
  ZSTD_frameHeader fh;
  size_t r;
  ZSTD_CCtx_setParameter (c, ZSTD_c_contentSizeFlag, 0);
  r = ZSTD_compressStream2 (c, &ob, &in, ZSTD_e_continue);
  if (!ZSTD_isError (r)) r = ZSTD_compressStream2 (c, &ob, &in, ZSTD_e_end);
  ZSTD_freeCCtx (c);
  if (ZSTD_isError (r) || r != 0 || ob.pos < 6 || (dst[4] & 0x20))
    die ("zstd frame");
  dst[5] = (uint8_t) ((window_log - 10) << 3);
  if (ZSTD_getFrameHeader (&fh, dst, ob.pos) != 0 ||
      fh.windowSize != 1ull << window_log)
    die ("zstd frame header");
  return ob.pos;
}

static size_t raw_deflate (uint8_t *dst, size_t cap, const uint8_t *src, size_t n)
{
  z_stream z;
  memset (&z, 0, sizeof z);
  deflateInit2 (&z, 9, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY);
  z.next_in = (Bytef *) (uintptr_t) src;
  z.avail_in = (uInt) n;
  z.next_out = dst;
  z.avail_out = (uInt) cap;
  if (deflate (&z, Z_FINISH) != Z_STREAM_END) die ("deflate");
  deflateEnd (&z);
  return cap - z.avail_out;
}

/* ------------------------------------------------------ encoder seeds */

static void encode (const char *name, uint32_t cs, uint64_t size,
                    enum qcow2_compress comp, const char *backing,
                    const char *fmt)
{
  char path[512];
  struct qcow2_write_options o = {
    .virtual_size = size, .cluster_size = cs, .compress = comp,
    .backing_file = backing, .backing_format = fmt,
  };
  struct qcow2_err err = { "" };
  struct qcow2_writer *w;
  uint8_t *buf = malloc (cs);
  uint64_t n = (size + cs - 1) / cs;
  int fd;

  snprintf (path, sizeof path, "%s/%s", workdir, name);
  fd = open (path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  w = qcow2_writer_new (fd, &o, &err);
  if (!w) die ("%s: %s", name, err.msg);
  for (uint64_t g = 0; g < n; g++) {
    int r = 0;
    if (g % 16 == 5 || g % 16 == 6) r = qcow2_writer_add_zero (w, g, &err);
    else if (g % 16 < 4 || g % 16 == 9) {
      for (uint32_t i = 0; i < cs; i++)
        buf[i] = g % 3 ? (uint8_t) ((i / 37 + g) % 5) : (uint8_t) (i * 131 + g * 7 + (i >> 3) * (i >> 5));
      if (g == n - 1 && size % cs) memset (buf + size % cs, 0, cs - size % cs);
      r = qcow2_writer_add_data (w, g, buf, &err);
    }
    if (r < 0) die ("%s: %s", name, err.msg);
  }
  if (qcow2_writer_finish (w, NULL, &err) < 0) die ("%s: %s", name, err.msg);
  qcow2_writer_free (w);
  close (fd);
  free (buf);
}

static const char *const goods[] = {
  "q-v3", "q-v2", "q-deflate", "q-zstd", "q-deflate-4k", "q-snap",
  "q-bitmap", "q-backing", "q-4k",
  "enc-512", "enc-512-deflate", "enc-512-zstd-backing", "enc-1k-odd-deflate",
  "enc-4k-zstd", "enc-empty", "enc-4k",
};

/* ------------------------------------------------------------ damage */

static void header_fields (void)
{
  struct img b = load ("enc-512.qcow2"), m;
  struct img q = load ("q-v3.qcow2");
  struct img back = load ("enc-512-zstd-backing.qcow2");
  uint64_t cs = csz (b);

  m = clone (b); m.p[0] ^= 0xff; bad ("magic-wrong", m);
  m = clone (b); s32 (m, 4, 1); bad ("version-1", m);
  m = clone (b); s32 (m, 4, 4); bad ("version-4", m);

  m = clone (back); s64 (m, 8, cs + 8); bad ("backing_file_offset-past-cluster", m);
  m = clone (back); s64 (m, 8, 40); bad ("backing_file_offset-inside-header", m);
  m = clone (back); s64 (m, 8, ext_end (back) - 4);
  bad ("backing_file_offset-splits-extension", m);
  m = clone (b); s32 (m, 16, 5); bad ("backing_file_size-without-offset", m);
  m = clone (back); s32 (m, 16, 1024); bad ("backing_file_size-over-1023", m);
  m = clone (back); s32 (m, 16, 0); bad ("backing_file_size-zero", m);
  m = clone (back); s32 (m, 16, (uint32_t) (cs - g64 (back, 8) + 1));
  bad ("backing_file_size-past-cluster", m);
  m = clone (back); m.p[g64 (back, 8) + 2] = 0; bad ("backing_file-name-nul", m);

  m = clone (b); s32 (m, 20, 8); bad ("cluster_bits-8", m);
  m = clone (b); s32 (m, 20, 22); bad ("cluster_bits-22", m);
  m = clone (b); s32 (m, 20, 0xffffffff); bad ("cluster_bits-huge", m);
  m = clone (b); s32 (m, 20, 16); bad ("cluster_bits-larger-than-file", m);

  m = clone (b); s64 (m, 24, 1ull << 63); bad ("size-over-int64", m);
  m = clone (b); s64 (m, 24, g64 (b, 24) * 4); bad ("size-needs-bigger-l1", m);

  m = clone (b); s32 (m, 32, 1); bad ("crypt_method-aes", m);
  m = clone (b); s32 (m, 32, 2); bad ("crypt_method-luks", m);
  m = clone (b); s32 (m, 32, 7); bad ("crypt_method-unknown", m);

  m = clone (b); s32 (m, 36, 0); bad ("l1_size-zero", m);
  m = clone (b); s32 (m, 36, g32 (b, 36) - 1); bad ("l1_size-too-small", m);
  m = clone (b); s32 (m, 36, 4 * 1024 * 1024 + 1); bad ("l1_size-over-32MiB", m);
  m = clone (b); s32 (m, 36, 3000); bad ("l1_size-past-eof", m);

  m = clone (b); s64 (m, 40, l1off (b) + 8); bad ("l1_table_offset-unaligned", m);
  m = clone (b); s64 (m, 40, b.len + cs); bad ("l1_table_offset-past-eof", m);
  m = clone (b); s64 (m, 40, 0); bad ("l1_table_offset-on-header", m);
  m = clone (b); s64 (m, 40, rtoff (b)); bad ("l1_table_offset-on-refcount-table", m);
  m = clone (b); s64 (m, 40, 1ull << 62); bad ("l1_table_offset-huge", m);

  m = clone (b); s64 (m, 48, rtoff (b) + 16); bad ("refcount_table_offset-unaligned", m);
  m = clone (b); s64 (m, 48, b.len + cs); bad ("refcount_table_offset-past-eof", m);
  m = clone (b); s64 (m, 48, 0); bad ("refcount_table_offset-on-header", m);
  m = clone (b); s64 (m, 48, l1off (b)); bad ("refcount_table_offset-on-l1", m);
  m = clone (b); s64 (m, 48, UINT64_MAX - 511); bad ("refcount_table_offset-overflow", m);

  m = clone (b); s32 (m, 56, 0); bad ("refcount_table_clusters-zero", m);
  m = clone (b); s32 (m, 56, 0x10000000); bad ("refcount_table_clusters-over-8MiB", m);
  m = clone (b); s32 (m, 56, 40); bad ("refcount_table_clusters-past-eof", m);

  m = clone (b); s32 (m, 60, 70000); bad ("nb_snapshots-over-65536", m);
  m = clone (b); s32 (m, 60, 1); bad ("nb_snapshots-table-on-header", m);
  m = clone (b); s32 (m, 60, 1); s64 (m, 64, b.len + cs);
  bad ("snapshots_offset-past-eof", m);
  m = clone (b); s64 (m, 64, 100); bad ("snapshots_offset-unaligned", m);

  m = clone (b); m.p[79] |= 1; bad ("incompatible-dirty", m);
  m = clone (b); m.p[79] |= 2; bad ("incompatible-corrupt", m);
  m = clone (b); m.p[79] |= 4; bad ("incompatible-external-data-file", m);
  m = clone (b); m.p[79] |= 8; bad ("incompatible-compression-bit-with-zlib", m);
  m = clone (b); m.p[79] |= 16; bad ("incompatible-extended-l2", m);
  m = clone (b); m.p[79] |= 32; bad ("incompatible-unknown-bit5", m);
  m = clone (b); m.p[72] |= 0x80; bad ("incompatible-unknown-bit63", m);

  m = clone (b); s32 (m, 96, 7); bad ("refcount_order-7", m);
  m = clone (b); s32 (m, 100, 100); bad ("header_length-under-104", m);
  m = clone (b); s32 (m, 100, 108); bad ("header_length-not-multiple-of-8", m);
  m = clone (b); s32 (m, 100, (uint32_t) cs + 8); bad ("header_length-over-cluster", m);
  m = clone (b); m.p[104] = 2; bad ("compression_type-unknown", m);
  m = clone (back); m.p[79] &= (uint8_t) ~8; bad ("compression_type-zstd-without-bit", m);
  m = clone (b); m.p[107] = 1; bad ("header-padding-nonzero", m);
  m = clone (back); s32 (m, 100, 104); bad ("header_length-104-hides-zstd-type", m);
  free (b.p);
  free (q.p);
  free (back.p);
}

static void extensions (void)
{
  struct img b = load ("enc-512.qcow2"), m;
  struct img back = load ("enc-512-zstd-backing.qcow2");
  struct img bm = load ("q-bitmap.qcow2");
  uint64_t fmt = find_ext (back, 0xe2792aca), bmx = find_ext (bm, 0x23852875);
  if (!fmt || !bmx) die ("extensions not found");

  m = clone (b); s32 (m, 112, 0x12345678); s32 (m, 116, 0xffff0000);
  bad ("ext-length-overruns-cluster", m);
  m = clone (back); s32 (m, fmt + 4, (uint32_t) (g64 (back, 8) - fmt));
  bad ("ext-length-overruns-backing-name", m);
  m = clone (b); s32 (m, 112, 0xe2792aca); s32 (m, 116, 3); memcpy (m.p + 120, "raw", 3);
  bad ("ext-backing-format-without-backing", m);
  m = clone (back); s32 (m, fmt + 4, 0); bad ("ext-backing-format-empty", m);
  m = clone (back); m.p[fmt + 9] = 0; bad ("ext-backing-format-nul", m);
  m = clone (b);
  for (int i = 0; i < 2; i++) {
    s32 (m, 112 + 16 * i, 0xe2792aca); s32 (m, 116 + 16 * i, 3);
    memcpy (m.p + 120 + 16 * i, "raw", 3);
  }
  bad ("ext-backing-format-duplicate", m);
  m = clone (b); s32 (m, 112, 0x0537be77); s32 (m, 116, 16);
  s64 (m, 120, 0); s64 (m, 128, 0);
  bad ("ext-encryption-header", m);
  m = clone (b); s32 (m, 112, 0x44415441); s32 (m, 116, 4); memcpy (m.p + 120, "data", 4);
  bad ("ext-external-data-file-name", m);

  {
    struct img odd = load ("enc-1k-odd-deflate.qcow2");
    uint64_t x = find_ext (odd, 0x6c636f77);
    if (!x) die ("luacow size extension not found");
    m = clone (odd); s32 (m, x + 4, 4); bad ("ext-luacow-size-wrong-length", m);
    m = clone (odd); memmove (m.p + x + 16, m.p + x, 16);
    bad ("ext-luacow-size-duplicate", m);
    free (odd.p);
  }
  m = clone (bm); s32 (m, bmx + 4, 16); bad ("ext-bitmaps-too-short", m);
  m = clone (bm); s32 (m, bmx + 8, 0); bad ("ext-bitmaps-zero-count", m);
  m = clone (bm); s32 (m, bmx + 12, 1); bad ("ext-bitmaps-reserved-nonzero", m);
  m = clone (bm); s64 (m, bmx + 24, g64 (bm, bmx + 24) + 8);
  bad ("ext-bitmaps-directory-unaligned", m);
  m = clone (bm); s64 (m, bmx + 24, ((bm.len + 511) & ~511ull) + 512);
  bad ("ext-bitmaps-directory-past-eof", m);
  m = clone (bm); s64 (m, bmx + 24, l1off (bm)); bad ("ext-bitmaps-directory-on-l1", m);
  m = clone (bm); s64 (m, bmx + 16, 0x10000000); bad ("ext-bitmaps-directory-huge", m);
  m = clone (bm); s64 (m, find_entry (bm, E_DATA, 0), g64 (bm, bmx + 24) | 1ull << 63);
  bad ("l2-entry-data-on-bitmap-directory", m);
  /* Autoclear bit 0 clear: the bitmaps are stale, the extension's data
   * is ignored (spec), whatever it says.
   */
  m = clone (bm); m.p[95] &= (uint8_t) ~1; s32 (m, bmx + 8, 0);
  good ("q-bitmap-stale-zero-count", m);
  m = clone (bm); m.p[95] &= (uint8_t) ~1;
  s64 (m, bmx + 24, g64 (bm, find_entry (bm, E_DATA, 0)) & OFFMASK);
  good ("q-bitmap-stale-directory-on-data", m);
  free (b.p);
  free (back.p);
  free (bm.p);
}

static void l1_l2 (void)
{
  struct img b = load ("enc-512.qcow2"), m;
  struct img k = load ("enc-4k.qcow2");
  struct img q = load ("q-v3.qcow2");
  struct img v2 = load ("q-v2.qcow2");
  uint64_t l1 = l1off (b), l2 = first_l2 (b), cs = csz (b);
  uint64_t d = find_entry (b, E_DATA, 0), z = find_entry (b, E_ZERO_PLAIN, 0);
  uint64_t kd = find_entry (k, E_DATA, 0), kz = find_entry (k, E_ZERO_PLAIN, 0);

  m = clone (b); m.p[l1 + 7] |= 1; bad ("l1-entry-reserved-bit0", m);
  m = clone (b); m.p[l1] |= 1; bad ("l1-entry-reserved-bit56", m);
  m = clone (b); m.p[l1] |= 0x40; bad ("l1-entry-reserved-bit62", m);
  m = clone (k); s64 (m, l1off (k), g64 (k, l1off (k)) + 512);
  bad ("l1-entry-unaligned", m);
  m = clone (b); s64 (m, l1, (b.len + cs) | 1ull << 63); bad ("l1-entry-past-eof", m);
  m = clone (b); s64 (m, l1, l1 | 1ull << 63); bad ("l1-entry-l2-on-l1", m);
  m = clone (b); s64 (m, l1, rtoff (b) | 1ull << 63); bad ("l1-entry-l2-on-refcount-table", m);
  m = clone (b); s64 (m, l1 + 8, g64 (b, l1)); bad ("l1-entry-l2-shared-twice", m);
  m = clone (b); s64 (m, l1, b.len - 100); bad ("l1-entry-l2-truncated", m);

  m = clone (b); m.p[d + 7] |= 2; bad ("l2-entry-reserved-bit1", m);
  m = clone (b); m.p[d + 7] |= 0x80; m.p[d + 6] |= 1; bad ("l2-entry-reserved-bit8", m);
  m = clone (b); m.p[d] |= 1; bad ("l2-entry-reserved-bit56", m);
  m = clone (b); m.p[d] |= 0x20; bad ("l2-entry-reserved-bit61", m);
  m = clone (k); s64 (m, kd, g64 (k, kd) + 512); bad ("l2-entry-unaligned", m);
  m = clone (b); s64 (m, d, (b.len + cs) | 1ull << 63); bad ("l2-entry-past-eof", m);
  m = clone (b); s64 (m, d, (b.len - cs + 512) | 1ull << 63);
  bad ("l2-entry-data-straddles-eof", m);
  m = clone (b); s64 (m, d, l1 | 1ull << 63); bad ("l2-entry-data-on-l1", m);
  m = clone (b); s64 (m, d, l2 | 1ull << 63); bad ("l2-entry-data-on-l2", m);
  m = clone (b); s64 (m, d, rtoff (b) | 1ull << 63); bad ("l2-entry-data-on-refcount-table", m);
  m = clone (b); s64 (m, d, g64 (b, rtoff (b)) | 1ull << 63);
  bad ("l2-entry-data-on-refcount-block", m);
  m = clone (b); s64 (m, d, 1ull << 63); bad ("l2-entry-copied-offset-zero", m);
  m = clone (b); s64 (m, z, (b.len + cs) | 1); bad ("l2-entry-zero-alloc-past-eof", m);
  m = clone (k); s64 (m, kz, (g64 (k, kd) + 512) | 1); bad ("l2-entry-zero-alloc-unaligned", m);
  m = clone (b); s64 (m, z, l1 | 1); bad ("l2-entry-zero-alloc-on-l1", m);
  m = clone (q); s64 (m, find_entry (q, E_ZERO_ALLOC, 0), (q.len + 512) | 1);
  bad ("l2-entry-qemu-zero-alloc-past-eof", m);
  m = clone (v2); m.p[find_entry (v2, E_DATA, 0) + 7] |= 1; bad ("l2-entry-v2-zero-flag", m);
  m = clone (b); m.len = first_l2 (b) + 100; bad ("truncated-in-l2-table", m);
  free (b.p);
  free (k.p);
  free (q.p);
  free (v2.p);
}

static void refcounts (void)
{
  struct img b = load ("enc-512.qcow2"), m;
  struct img k = load ("enc-4k.qcow2");
  uint64_t rt = rtoff (b), cs = csz (b);

  m = clone (b); m.p[rt + 7] |= 1; bad ("refcount-table-entry-reserved-bit0", m);
  m = clone (k); s64 (m, rtoff (k), g64 (k, rtoff (k)) + 512);
  bad ("refcount-table-entry-unaligned", m);
  m = clone (b); s64 (m, rt, b.len + cs); bad ("refcount-table-entry-past-eof", m);
  m = clone (b); s64 (m, rt, l1off (b)); bad ("refcount-block-on-l1", m);
  m = clone (b); s64 (m, rt, first_l2 (b)); bad ("refcount-block-on-l2", m);
  m = clone (b); s64 (m, rt, rt); bad ("refcount-block-on-refcount-table", m);
  m = clone (b); s64 (m, rt + 8, g64 (b, rt)); bad ("refcount-block-shared-twice", m);
  m = clone (b); s64 (m, rt, 1ull << 63); bad ("refcount-table-entry-huge", m);
  m = clone (b); m.len = rt + 8; bad ("truncated-in-refcount-table", m);
  free (b.p);
  free (k.p);
}

static void snapshots (void)
{
  struct img s = load ("q-snap.qcow2"), m;
  uint64_t st = g64 (s, 64), cs = csz (s);
  uint64_t sl1 = g64 (s, st);

  if (g32 (s, 60) != 2) die ("q-snap: expected 2 snapshots");
  m = clone (s); s64 (m, st, sl1 + 8); bad ("snapshot-l1-offset-unaligned", m);
  m = clone (s); s64 (m, st, s.len + cs); bad ("snapshot-l1-offset-past-eof", m);
  m = clone (s); s64 (m, st, 1ull << 60); bad ("snapshot-l1-offset-huge", m);
  m = clone (s); s32 (m, st + 8, 0x00500000); bad ("snapshot-l1-size-over-32MiB", m);
  m = clone (s); s32 (m, st + 8, 5000); bad ("snapshot-l1-size-past-eof", m);
  m = clone (s); s64 (m, st, l1off (s)); bad ("snapshot-l1-on-active-l1", m);
  m = clone (s); s64 (m, st, rtoff (s)); bad ("snapshot-l1-on-refcount-table", m);
  m = clone (s); s64 (m, st, first_l2 (s)); bad ("snapshot-l1-on-active-l2", m);
  m = clone (s); s32 (m, st + 36, 2000); bad ("snapshot-extra-data-over-1024", m);
  m = clone (s); s16 (m, st + 12, 0xffff); s16 (m, st + 14, 0xffff);
  bad ("snapshot-id-and-name-past-eof", m);
  m = clone (s); s32 (m, 60, 3); bad ("snapshot-count-past-table", m);
  m = clone (s); s64 (m, 64, l1off (s)); bad ("snapshot-table-on-l1", m);
  m = clone (s); s64 (m, 64, first_l2 (s)); bad ("snapshot-table-on-l2", m);
  m = clone (s); m.len = st + 20; bad ("truncated-in-snapshot-table", m);
  m = clone (s); s16 (m, st + 12, 0); bad ("snapshot-id-empty", m);
  m = clone (s); s32 (m, st + 36, 8); bad ("snapshot-extra-data-under-16-in-v3", m);
  m = clone (s); s64 (m, find_entry (s, E_DATA, 0), st | 1ull << 63);
  bad ("l2-entry-data-on-snapshot-table", m);
  m = clone (s); s64 (m, find_entry (s, E_DATA, 0), sl1 | 1ull << 63);
  bad ("l2-entry-data-on-snapshot-l1", m);
  free (s.p);
}

static void compressed (void)
{
  struct img d = load ("q-deflate.qcow2"), z = load ("q-zstd.qcow2"), m;
  struct img d4 = load ("q-deflate-4k.qcow2");
  uint64_t cd = find_entry (d, E_COMPRESSED, 3), cz = find_entry (z, E_COMPRESSED, 3);
  uint64_t off, bytes, cs = csz (d);
  uint8_t src[2048], stream[1024];
  size_t n;

  compressed_at (d, cd, &off, &bytes);
  m = clone (d); s64 (m, cd, compressed_entry (d, d.len + 10, 0));
  bad ("compressed-offset-past-eof", m);
  m = clone (d); s64 (m, cd, compressed_entry (d, (d.len & ~511ull) - 1, 1));
  bad ("compressed-sectors-past-eof", m);
  m = clone (d); s64 (m, cd, g64 (d, cd) | 1ull << 63); bad ("compressed-copied-flag", m);
  m = clone (d); s64 (m, cd, compressed_entry (d, l1off (d) + 3, 0));
  bad ("compressed-data-on-l1", m);
  m = clone (d); s64 (m, cd, compressed_entry (d, rtoff (d) + cs - 10, 1));
  bad ("compressed-data-spans-into-metadata", m);
  m = clone (d); s64 (m, cd, compressed_entry (d, 10, 0)); bad ("compressed-data-on-header", m);
  m = clone (d); s64 (m, cd, compressed_entry (d, 1ull << 58, 0));
  bad ("compressed-offset-over-56-bits", m);
  m = clone (d4); s64 (m, find_entry (d4, E_COMPRESSED, 0),
                      compressed_entry (d4, d4.len - 600, 7));
  bad ("compressed-4k-sectors-past-eof", m);

  m = clone (d); memset (m.p + off, 0xff, bytes); bad ("compressed-deflate-garbage", m);
  memset (src, 'a', sizeof src);
  n = raw_deflate (stream, sizeof stream, src, 100);
  m = clone (d); put_stream (m, cd, stream, n); bad ("compressed-deflate-short-output", m);
  /* Valid: decompression stops once the cluster is full (qemu too). */
  n = raw_deflate (stream, sizeof stream, src, 2 * cs);
  m = clone (d); put_own_stream (m, cd, stream, n);
  good ("q-deflate-stream-past-cluster", m);
  n = raw_deflate (stream, sizeof stream, src, cs);
  m = clone (d); put_stream (m, cd, stream, n / 2); bad ("compressed-deflate-truncated", m);
  m = clone (d);
  compressed_at (d, last_compressed (d), &off, &bytes);
  m.len = off + 5;
  bad ("truncated-in-last-compressed-cluster", m);

  compressed_at (z, cz, &off, &bytes);
  m = clone (z); memset (m.p + off, 0xff, bytes); bad ("compressed-zstd-garbage", m);
  n = ZSTD_compress (stream, sizeof stream, src, 100, 3);
  m = clone (z); put_stream (m, cz, stream, n); bad ("compressed-zstd-short-output", m);
  n = ZSTD_compress (stream, sizeof stream, src, 2 * cs, 3);
  m = clone (z); put_stream (m, cz, stream, n); bad ("compressed-zstd-oversized", m);
  n = ZSTD_compress (stream, sizeof stream, src, cs, 3);
  m = clone (z); put_stream (m, cz, stream, n - 3); bad ("compressed-zstd-truncated", m);
  m = clone (z); memset (m.p + off, 0, bytes); bad ("compressed-zstd-zeroes", m);
  {
    /* A frame asking for a 2 GiB window. */
    static const uint8_t big_window[] = { 0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xf8,
                                          0x01, 0x00, 0x00 };
    m = clone (z); put_stream (m, cz, big_window, sizeof big_window);
    bad ("compressed-zstd-huge-window", m);
  }
  /* qemu decodes windows up to 2^27 bytes (zstd's default limit). */
  n = zstd_window_frame (stream, sizeof stream, src, cs, 27);
  m = clone (z); put_own_stream (m, cz, stream, n); good ("q-zstd-window-2p27", m);
  n = zstd_window_frame (stream, sizeof stream, src, cs, 28);
  m = clone (z); put_own_stream (m, cz, stream, n); bad ("compressed-zstd-window-2p28", m);
  free (d.p);
  free (z.p);
  free (d4.p);
}

static void truncations (void)
{
  struct img b = load ("enc-512.qcow2"), q = load ("q-v3.qcow2"), m;
  m = clone (b); m.len = 50; bad ("truncated-header-50-bytes", m);
  m = clone (b); m.len = 300; bad ("truncated-header-cluster", m);
  m = clone (b); m.len = l1off (b) + 4; bad ("truncated-in-l1-table", m);
  m = clone (q); m.len = q.len - 700; bad ("truncated-qemu-image", m);
  m = clone (q); m.len = (g64 (q, find_entry (q, E_DATA, 2)) & OFFMASK) + 100;
  bad ("truncated-in-data-cluster", m);
  m = clone (b); m.len = 0; bad ("empty-file", m);
  free (b.p);
  free (q.p);
}

int main (int argc, char **argv)
{
  if (argc != 3) die ("usage: make-corpus WORKDIR OUTDIR");
  workdir = argv[1];
  outdir = argv[2];

  encode ("enc-512.qcow2", 512, 40000, QCOW2_COMPRESS_NONE, NULL, NULL);
  encode ("enc-512-deflate.qcow2", 512, 65536, QCOW2_COMPRESS_DEFLATE, NULL, NULL);
  encode ("enc-512-zstd-backing.qcow2", 512, 65536, QCOW2_COMPRESS_ZSTD,
          "base.raw", "raw");
  encode ("enc-1k-odd-deflate.qcow2", 1024, 130000, QCOW2_COMPRESS_DEFLATE,
          NULL, NULL);
  encode ("enc-4k-zstd.qcow2", 4096, 200000, QCOW2_COMPRESS_ZSTD, NULL, NULL);
  encode ("enc-empty.qcow2", 512, 0, QCOW2_COMPRESS_NONE, NULL, NULL);
  encode ("enc-4k.qcow2", 4096, 28000, QCOW2_COMPRESS_NONE, NULL, NULL);

  for (size_t i = 0; i < sizeof goods / sizeof goods[0]; i++) {
    char name[64];
    snprintf (name, sizeof name, "%s.qcow2", goods[i]);
    struct img g = load (name);
    save_to ("good", goods[i], g);
    free (g.p);
  }

  header_fields ();
  extensions ();
  l1_l2 ();
  refcounts ();
  snapshots ();
  compressed ();
  truncations ();
  printf ("make-corpus: %d bad files\n", nbad);
  return 0;
}
