/* luacow: qcow2 v3 encoder.
 *
 * Layout of the files we write (all offsets cluster-aligned except
 * compressed data):
 *
 *   cluster 0        header, header extensions, backing file name
 *   clusters 1..     for each L2 range in guest order: its uncompressed
 *                    data clusters, then its compressed clusters packed
 *                    byte-wise (spanning host clusters), then its L2 table
 *   then             L1 table, refcount blocks, refcount table
 *
 * Compressed clusters are staged in memory (up to STAGE_BYTES, and never
 * past their L2 range) and placed together, so normal clusters allocated
 * in between do not break the packing.  The header is written last, so an
 * interrupted save never looks like a valid image.  Memory use: the L1
 * table, one L2 table, a 16-bit refcount per host cluster, the output
 * buffer and the compressed stage.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fullio.h"
#include "qcow2.h"
#include "qcow2_codec.h"
#include "qcow2_common.h"

/* Every memcpy/memset below has a size checked against its buffer; the
 * Annex K replacements clang-tidy suggests do not exist in glibc.
 */
/* NOLINTBEGIN(clang-analyzer-security.insecureAPI.DeprecatedOrUnsafeBufferHandling) */

#define OUTBUF_BYTES ((uint64_t) 8 << 20)
#define STAGE_BYTES ((uint64_t) 4 << 20)
#define REFCOUNT_MAX 0xffffu        /* refcount_order 4 */

/* Fields ordered by size (8-byte, then 4-byte, then flags) to avoid
 * padding.
 */
struct qcow2_writer {
  uint64_t virtual_size;
  uint64_t guest_clusters;
  char *backing_file;
  char *backing_format;
  uint64_t *l1;                     /* host byte order */

  uint8_t *l2;                      /* the current L2 table, big-endian */
  uint64_t l2_index;                /* its L1 index */
  uint64_t next_guest;              /* smallest guest cluster still allowed */

  uint64_t end;                     /* next free host cluster offset */
  uint64_t cfree;                   /* free byte in the partly filled
                                       compressed cluster, 0 if none */
  uint16_t *refcounts;              /* per host cluster */
  uint64_t refcounts_cap;
  uint64_t max_host_clusters;

  uint8_t *obuf;                    /* file bytes [obase, obase + olen) */
  uint64_t obase;
  size_t olen;

  struct qcow2_compressor *comp;    /* NULL: no compression */
  uint8_t *stage;                   /* compressed clusters not yet placed */
  size_t stage_len, stage_cap;
  struct staged { uint32_t slot, len; } *staged;  /* by L2 slot */

  struct qcow2_write_stats stats;

  int fd;
  unsigned cluster_bits;
  uint32_t cluster_size;
  uint32_t l2_entries;
  enum qcow2_compress compress;
  uint32_t l1_size;
  uint32_t nstaged;
  bool failed;                      /* after any error, refuse more calls */
  bool l2_used;
};

/* ------------------------------------------------------------ output */

/* At most 256 KiB per pwrite call: on Linux 6.18 ext4, 8 MiB calls into
 * a new file cost about 3x the kernel CPU of the same bytes in 256 KiB
 * calls (a 256 MiB exit save: 2.2-2.6 s against 0.6-1.0 s).
 */
#define PWRITE_MAX ((size_t) 256 * 1024)

static int pwrite_all (int fd, const void *buf, size_t len, uint64_t off,
                       struct qcow2_err *err)
{
  const uint8_t *p = buf;
  while (len > 0) {
    size_t n = len > PWRITE_MAX ? PWRITE_MAX : len;
    if (full_pwrite (fd, p, n, off) < 0) {
      qcow2_seterr (err, "qcow2: write at offset %llu: %s",
                    (unsigned long long) off, strerror (errno));
      return -1;
    }
    p += n;
    len -= n;
    off += n;
  }
  return 0;
}

static int out_flush (struct qcow2_writer *w, struct qcow2_err *err)
{
  if (w->olen == 0) return 0;
  if (pwrite_all (w->fd, w->obuf, w->olen, w->obase, err) < 0) return -1;
  w->olen = 0;
  return 0;
}

/* Buffered pwrite.  The buffer only ever holds bytes really written, in
 * one contiguous run: gaps (unused tails of compressed clusters) stay
 * holes in the file instead of being overwritten by stale zeroes.
 */
static int out_write (struct qcow2_writer *w, uint64_t off, const void *data,
                      size_t len, struct qcow2_err *err)
{
  if (w->olen > 0 && off >= w->obase && off - w->obase <= w->olen &&
      off - w->obase + len <= OUTBUF_BYTES) {
    size_t at = (size_t) (off - w->obase);
    memcpy (w->obuf + at, data, len);
    if (at + len > w->olen) w->olen = at + len;
    return 0;
  }
  if (out_flush (w, err) < 0) return -1;
  if (len > OUTBUF_BYTES) return pwrite_all (w->fd, data, len, off, err);
  memcpy (w->obuf, data, len);
  w->obase = off;
  w->olen = len;
  return 0;
}

/* -------------------------------------------------------- allocation */

static int grow_refcounts (struct qcow2_writer *w, uint64_t clusters,
                           struct qcow2_err *err)
{
  uint64_t cap;
  uint16_t *p;

  if (clusters > w->max_host_clusters) {
    qcow2_seterr (err, "qcow2: image file would need more than %llu clusters "
                  "(qemu's 8 MiB refcount table limit); use a larger cluster size",
                  (unsigned long long) w->max_host_clusters);
    return -1;
  }
  if (clusters <= w->refcounts_cap) return 0;
  cap = w->refcounts_cap ? w->refcounts_cap : 1024;
  while (cap < clusters) cap *= 2;
  if (cap > SIZE_MAX / sizeof *p) {
    qcow2_seterr (err, "qcow2: refcount array too large");
    return -1;
  }
  p = realloc (w->refcounts, (size_t) cap * sizeof *p);
  if (!p) {
    qcow2_seterr (err, "qcow2: out of memory for refcounts");
    return -1;
  }
  memset (p + w->refcounts_cap, 0,
          (size_t) (cap - w->refcounts_cap) * sizeof *p);
  w->refcounts = p;
  w->refcounts_cap = cap;
  return 0;
}

/* Allocate n fresh host clusters at the end of the file, refcount 1. */
static int alloc_clusters (struct qcow2_writer *w, uint64_t n, uint64_t *off,
                           struct qcow2_err *err)
{
  uint64_t first = w->end >> w->cluster_bits;
  if (grow_refcounts (w, first + n, err) < 0) return -1;
  for (uint64_t i = 0; i < n; i++) w->refcounts[first + i] = 1;
  *off = w->end;
  w->end += n << w->cluster_bits;
  return 0;
}

/* Find room for len bytes of compressed data.  Pack into the partly
 * filled compressed cluster when it fits, or spill over into the next
 * clusters when nothing else was allocated after it.
 */
static int place_compressed (struct qcow2_writer *w, size_t len,
                             uint64_t *off, struct qcow2_err *err)
{
  uint64_t cs = w->cluster_size, tmp;

  if (w->cfree) {
    uint64_t ci = w->cfree >> w->cluster_bits;
    uint64_t cl_end = (ci + 1) << w->cluster_bits;
    if (w->refcounts[ci] < REFCOUNT_MAX) {
      if (w->cfree + len <= cl_end) {
        *off = w->cfree;
        w->refcounts[ci]++;
        w->cfree += len;
        if (w->cfree == cl_end) w->cfree = 0;
        return 0;
      }
      if (cl_end == w->end) {
        *off = w->cfree;
        if (alloc_clusters (w, div_round_up (w->cfree + len - cl_end, cs),
                            &tmp, err) < 0)
          return -1;
        w->refcounts[ci]++;
        w->cfree = (*off + len) & (cs - 1) ? *off + len : 0;
        return 0;
      }
    }
  }
  if (alloc_clusters (w, div_round_up (len, cs), off, err) < 0) return -1;
  w->cfree = (*off + len) & (cs - 1) ? *off + len : 0;
  return 0;
}

/* ------------------------------------------------------------- tables */

/* Place the staged compressed clusters one after the other and fill in
 * their L2 entries (all in the current L2 table).
 */
static int flush_stage (struct qcow2_writer *w, struct qcow2_err *err)
{
  const uint8_t *p = w->stage;
  for (uint32_t i = 0; i < w->nstaged; i++) {
    const struct staged *s = &w->staged[i];
    uint64_t off, nsect;
    if (place_compressed (w, s->len, &off, err) < 0) return -1;
    if (off + s->len - 1 > qcow2_coffset_mask (w->cluster_bits) ||
        off + s->len > QCOW2_MAX_HOST_OFFSET) {
      qcow2_seterr (err, "qcow2: compressed data beyond the maximum host "
                    "offset for this cluster size");
      return -1;
    }
    if (out_write (w, off, p, s->len, err) < 0) return -1;
    p += s->len;
    nsect = ((off + s->len - 1) >> 9) - (off >> 9);
    put_be64 (w->l2 + (uint64_t) s->slot * 8,
              QCOW2_OFLAG_COMPRESSED |
              nsect << qcow2_csize_shift (w->cluster_bits) | off);
  }
  w->nstaged = 0;
  w->stage_len = 0;
  return 0;
}

static int flush_l2 (struct qcow2_writer *w, struct qcow2_err *err)
{
  uint64_t off;
  if (flush_stage (w, err) < 0) return -1;
  if (!w->l2_used) return 0;
  if (alloc_clusters (w, 1, &off, err) < 0) return -1;
  if (out_write (w, off, w->l2, w->cluster_size, err) < 0) return -1;
  w->l1[w->l2_index] = off | QCOW2_OFLAG_COPIED;
  memset (w->l2, 0, w->cluster_size);
  w->l2_used = false;
  return 0;
}

static int check_add (struct qcow2_writer *w, uint64_t g, struct qcow2_err *err)
{
  if (w->failed) {
    qcow2_seterr (err, "qcow2: writer already failed");
    return -1;
  }
  if (g >= w->guest_clusters) {
    qcow2_seterr (err, "qcow2: guest cluster %llu is past the virtual size",
                  (unsigned long long) g);
    return -1;
  }
  if (g < w->next_guest) {
    qcow2_seterr (err, "qcow2: guest cluster %llu added out of order",
                  (unsigned long long) g);
    return -1;
  }
  if (w->l2_used && g / w->l2_entries != w->l2_index &&
      flush_l2 (w, err) < 0) {
    w->failed = true;
    return -1;
  }
  w->l2_index = g / w->l2_entries;
  return 0;
}

static void set_l2 (struct qcow2_writer *w, uint64_t g, uint64_t entry)
{
  put_be64 (w->l2 + (g % w->l2_entries) * 8, entry);
  w->l2_used = true;
  w->next_guest = g + 1;
}

int qcow2_writer_add_data (struct qcow2_writer *w, uint64_t guest_cluster,
                           const void *buf, struct qcow2_err *err)
{
  uint64_t off, entry;
  const uint8_t *cdata = NULL;
  size_t clen = 0;
  int r = 0;

  if (check_add (w, guest_cluster, err) < 0) return -1;

  /* Bytes past the virtual size are invisible to qemu: demand zeroes so
   * every reader sees the same image.
   */
  if (guest_cluster == w->guest_clusters - 1) {
    size_t used = (size_t) (w->virtual_size & (w->cluster_size - 1));
    const uint8_t *p = buf;
    for (size_t i = used ? used : w->cluster_size; i < w->cluster_size; i++)
      if (p[i]) {
        qcow2_seterr (err, "qcow2: data past the virtual size must be zero");
        return -1;
      }
  }

  if (w->comp) {
    r = qcow2_compress (w->comp, buf, &cdata, &clen, err);
    if (r < 0) goto fail;
  }
  if (r == 1) {
    if (w->stage_len + clen > w->stage_cap && flush_stage (w, err) < 0)
      goto fail;
    memcpy (w->stage + w->stage_len, cdata, clen);
    w->stage_len += clen;
    w->staged[w->nstaged].slot = (uint32_t) (guest_cluster % w->l2_entries);
    w->staged[w->nstaged].len = (uint32_t) clen;
    w->nstaged++;
    entry = 0;                  /* filled in by flush_stage */
    w->stats.compressed_clusters++;
  }
  else {
    if (alloc_clusters (w, 1, &off, err) < 0) goto fail;
    if (out_write (w, off, buf, w->cluster_size, err) < 0) goto fail;
    entry = off | QCOW2_OFLAG_COPIED;
  }
  set_l2 (w, guest_cluster, entry);
  w->stats.data_clusters++;
  return 0;

 fail:
  w->failed = true;
  return -1;
}

int qcow2_writer_add_zero (struct qcow2_writer *w, uint64_t guest_cluster,
                           struct qcow2_err *err)
{
  if (check_add (w, guest_cluster, err) < 0) return -1;
  set_l2 (w, guest_cluster, QCOW2_OFLAG_ZERO);
  w->stats.zero_clusters++;
  return 0;
}

/* ------------------------------------------------------------- create */

static size_t round8 (size_t n) { return (n + 7) & ~(size_t) 7; }

/* Bytes used in cluster 0 before the backing file name. */
static size_t header_bytes (const struct qcow2_writer *w)
{
  size_t n = QCOW2_V3_HEADER_LEN;
  if (w->virtual_size % QCOW2_SECTOR) n += 16;
  if (w->backing_format) n += 8 + round8 (strlen (w->backing_format));
  return n + 8;                 /* end-of-extensions marker */
}

static char *dup_opt (const char *s, struct qcow2_err *err)
{
  char *d = strdup (s);
  if (!d) qcow2_seterr (err, "qcow2: out of memory");
  return d;
}

static int check_options (const struct qcow2_write_options *o,
                          unsigned *cluster_bits, struct qcow2_err *err)
{
  unsigned bits = 0;
  while (bits < 32 && (1ull << bits) < o->cluster_size) bits++;
  if ((1ull << bits) != o->cluster_size || bits < QCOW2_MIN_CLUSTER_BITS ||
      bits > QCOW2_MAX_CLUSTER_BITS) {
    qcow2_seterr (err, "qcow2: cluster size %u is not a power of two "
                  "between 512 and 2097152", o->cluster_size);
    return -1;
  }
  *cluster_bits = bits;
  if (o->compress != QCOW2_COMPRESS_NONE &&
      o->compress != QCOW2_COMPRESS_DEFLATE &&
      o->compress != QCOW2_COMPRESS_ZSTD) {
    qcow2_seterr (err, "qcow2: unknown compression %d", (int) o->compress);
    return -1;
  }
  if (o->backing_format && !o->backing_file) {
    qcow2_seterr (err, "qcow2: backing format given without a backing file");
    return -1;
  }
  if (o->backing_file) {
    size_t n = strlen (o->backing_file);
    if (n == 0) {
      qcow2_seterr (err, "qcow2: empty backing file name");
      return -1;
    }
    if (n > QCOW2_MAX_BACKING_NAME) {
      qcow2_seterr (err, "qcow2: backing file name longer than %u bytes",
                    QCOW2_MAX_BACKING_NAME);
      return -1;
    }
  }
  if (o->backing_format && o->backing_format[0] == '\0') {
    qcow2_seterr (err, "qcow2: empty backing format");
    return -1;
  }
  return 0;
}

/* The compressor and the stage of compressed clusters not yet placed. */
static int setup_compression (struct qcow2_writer *w, struct qcow2_err *err)
{
  size_t limit = qcow2_compress_limit (w->cluster_size);
  w->comp = qcow2_compressor_new (w->compress, w->cluster_size, err);
  if (!w->comp) return -1;
  w->stage_cap = STAGE_BYTES > 2 * limit ? STAGE_BYTES : 2 * limit;
  w->stage = malloc (w->stage_cap);
  w->staged = malloc (w->l2_entries * sizeof *w->staged);
  if (!w->stage || !w->staged) {
    qcow2_seterr (err, "qcow2: out of memory");
    return -1;
  }
  return 0;
}

struct qcow2_writer *qcow2_writer_new (int fd,
                                       const struct qcow2_write_options *opts,
                                       struct qcow2_err *err)
{
  struct qcow2_writer *w;
  unsigned bits;
  uint64_t l1_size, off;

  if (!opts || fd < 0) {
    qcow2_seterr (err, "qcow2: bad writer arguments");
    return NULL;
  }
  if (check_options (opts, &bits, err) < 0) return NULL;

  w = calloc (1, sizeof *w);
  if (!w) {
    qcow2_seterr (err, "qcow2: out of memory");
    return NULL;
  }
  w->fd = fd;
  w->cluster_bits = bits;
  w->cluster_size = opts->cluster_size;
  w->l2_entries = opts->cluster_size / 8;
  w->virtual_size = opts->virtual_size;
  w->guest_clusters = div_round_up (opts->virtual_size, opts->cluster_size);
  w->compress = opts->compress;

  l1_size = div_round_up (w->guest_clusters, w->l2_entries);
  if (l1_size > QCOW2_MAX_L1_BYTES / 8) {
    qcow2_seterr (err, "qcow2: virtual size %llu needs an L1 table over "
                  "32 MiB (qemu's limit) with %u-byte clusters; use a larger "
                  "cluster size", (unsigned long long) opts->virtual_size,
                  opts->cluster_size);
    goto fail;
  }
  w->l1_size = (uint32_t) l1_size;

  /* qemu's refcount table limit and the 56-bit host offset field. */
  w->max_host_clusters = (uint64_t) (QCOW2_MAX_REFTABLE_BYTES / 8) *
                         (opts->cluster_size / 2);
  if (w->max_host_clusters > QCOW2_MAX_HOST_OFFSET >> bits)
    w->max_host_clusters = QCOW2_MAX_HOST_OFFSET >> bits;

  if (opts->backing_file &&
      !(w->backing_file = dup_opt (opts->backing_file, err)))
    goto fail;
  if (opts->backing_format &&
      !(w->backing_format = dup_opt (opts->backing_format, err)))
    goto fail;
  if (w->backing_file &&
      header_bytes (w) + strlen (w->backing_file) > w->cluster_size) {
    qcow2_seterr (err, "qcow2: backing file name does not fit in the "
                  "%u-byte header cluster", w->cluster_size);
    goto fail;
  }

  w->l1 = calloc (w->l1_size ? w->l1_size : 1, sizeof *w->l1);
  w->l2 = calloc (1, w->cluster_size);
  w->obuf = malloc (OUTBUF_BYTES);
  if (!w->l1 || !w->l2 || !w->obuf) {
    qcow2_seterr (err, "qcow2: out of memory");
    goto fail;
  }

  if (w->compress != QCOW2_COMPRESS_NONE && setup_compression (w, err) < 0)
    goto fail;

  /* Cluster 0 is the header, written by finish. */
  if (alloc_clusters (w, 1, &off, err) < 0) goto fail;
  return w;

 fail:
  qcow2_writer_free (w);
  return NULL;
}

/* ------------------------------------------------------------- finish */

static void build_header (const struct qcow2_writer *w, uint8_t *h,
                          uint64_t l1_offset, uint64_t reftable_offset,
                          uint64_t reftable_clusters)
{
  size_t p = QCOW2_V3_HEADER_LEN;
  bool zstd = w->compress == QCOW2_COMPRESS_ZSTD;

  memset (h, 0, w->cluster_size);
  put_be32 (h + HDR_MAGIC, QCOW2_MAGIC);
  put_be32 (h + HDR_VERSION, 3);
  put_be32 (h + HDR_CLUSTER_BITS, w->cluster_bits);
  /* qemu sees whole sectors only (it truncates the size): round up, as
   * qemu-img create does, so no byte of the export is hidden from qemu;
   * the exact size goes in our own extension.
   */
  put_be64 (h + HDR_SIZE, (w->virtual_size + QCOW2_SECTOR - 1) &
                          ~(uint64_t) (QCOW2_SECTOR - 1));
  put_be32 (h + HDR_L1_SIZE, w->l1_size);
  put_be64 (h + HDR_L1_OFFSET, l1_offset);
  put_be64 (h + HDR_REFTABLE_OFFSET, reftable_offset);
  put_be32 (h + HDR_REFTABLE_CLUSTERS, (uint32_t) reftable_clusters);
  put_be64 (h + HDR_INCOMPAT, zstd ? QCOW2_INCOMPAT_COMPRESSION : 0);
  put_be32 (h + HDR_REFCOUNT_ORDER, 4);
  put_be32 (h + HDR_HEADER_LENGTH, QCOW2_V3_HEADER_LEN);
  h[HDR_COMPRESSION_TYPE] = zstd ? QCOW2_COMPRESSION_TYPE_ZSTD
                                 : QCOW2_COMPRESSION_TYPE_ZLIB;
  if (w->virtual_size % QCOW2_SECTOR) {
    put_be32 (h + p, QCOW2_EXT_LUACOW_SIZE);
    put_be32 (h + p + 4, 8);
    put_be64 (h + p + 8, w->virtual_size);
    p += 16;
  }
  if (w->backing_format) {
    size_t n = strlen (w->backing_format);
    put_be32 (h + p, QCOW2_EXT_BACKING_FORMAT);
    put_be32 (h + p + 4, (uint32_t) n);
    memcpy (h + p + 8, w->backing_format, n);
    p += 8 + round8 (n);
  }
  p += 8;                       /* end marker: already zero */
  if (w->backing_file) {
    size_t n = strlen (w->backing_file);
    put_be64 (h + HDR_BACKING_OFFSET, p);
    put_be32 (h + HDR_BACKING_SIZE, (uint32_t) n);
    memcpy (h + p, w->backing_file, n);
  }
}

/* Refcount blocks must count themselves and the refcount table: iterate
 * until the sizes stop changing (they only grow, so this terminates).
 */
static void size_refcount_structures (uint64_t clusters, uint64_t per_block,
                                      uint64_t cluster_size, uint64_t *blocks,
                                      uint64_t *table_clusters)
{
  uint64_t rb = 0, rt = 0;
  for (;;) {
    uint64_t total = clusters + rb + rt;
    uint64_t nrb = div_round_up (total, per_block);
    uint64_t nrt = div_round_up (nrb * 8, cluster_size);
    if (nrb == rb && nrt == rt) break;
    rb = nrb;
    rt = nrt;
  }
  *blocks = rb;
  *table_clusters = rt;
}

/* The L1 table, big-endian, one cluster (buf) at a time. */
static int write_l1 (struct qcow2_writer *w, uint8_t *buf, uint64_t l1_off,
                     uint64_t l1_clusters, struct qcow2_err *err)
{
  uint64_t cs = w->cluster_size;
  for (uint64_t c = 0; c < l1_clusters; c++) {
    memset (buf, 0, cs);
    for (uint64_t i = 0; i < cs / 8; i++) {
      uint64_t k = c * (cs / 8) + i;
      if (k >= w->l1_size) break;
      put_be64 (buf + i * 8, w->l1[k]);
    }
    if (out_write (w, l1_off + c * cs, buf, cs, err) < 0) return -1;
  }
  return 0;
}

/* rb refcount blocks at rb_off (16-bit counts of every cluster up to
 * w->end, which includes them), then the rtc-cluster table at rt_off.
 */
static int write_refcounts (struct qcow2_writer *w, uint8_t *buf,
                            uint64_t rb_off, uint64_t rb, uint64_t rt_off,
                            uint64_t rtc, struct qcow2_err *err)
{
  uint64_t cs = w->cluster_size, per_block = cs / 2;
  uint64_t total = w->end >> w->cluster_bits;
  for (uint64_t b = 0; b < rb; b++) {
    memset (buf, 0, cs);
    for (uint64_t i = 0; i < per_block; i++) {
      uint64_t k = b * per_block + i;
      if (k >= total) break;
      put_be16 (buf + i * 2, w->refcounts[k]);
    }
    if (out_write (w, rb_off + b * cs, buf, cs, err) < 0) return -1;
  }
  for (uint64_t c = 0; c < rtc; c++) {
    memset (buf, 0, cs);
    for (uint64_t i = 0; i < cs / 8; i++) {
      uint64_t k = c * (cs / 8) + i;
      if (k >= rb) break;
      put_be64 (buf + i * 8, rb_off + k * cs);
    }
    if (out_write (w, rt_off + c * cs, buf, cs, err) < 0) return -1;
  }
  return 0;
}

int qcow2_writer_finish (struct qcow2_writer *w, struct qcow2_write_stats *stats,
                         struct qcow2_err *err)
{
  uint64_t cs, per_block, l1_clusters, rb, rtc, l1_off = 0, rb_off, rt_off;
  uint8_t *buf = NULL;

  if (!w || w->failed) {
    qcow2_seterr (err, "qcow2: writer already failed");
    return -1;
  }
  cs = w->cluster_size;
  per_block = cs / 2;
  if (flush_l2 (w, err) < 0) goto fail;

  l1_clusters = div_round_up ((uint64_t) w->l1_size * 8, cs);
  size_refcount_structures ((w->end >> w->cluster_bits) + l1_clusters,
                            per_block, cs, &rb, &rtc);
  if (rtc * cs > QCOW2_MAX_REFTABLE_BYTES) {
    qcow2_seterr (err, "qcow2: refcount table would exceed 8 MiB (qemu's "
                  "limit); use a larger cluster size");
    goto fail;
  }

  buf = malloc (cs);
  if (!buf) {
    qcow2_seterr (err, "qcow2: out of memory");
    goto fail;
  }

  if (l1_clusters && alloc_clusters (w, l1_clusters, &l1_off, err) < 0)
    goto fail;
  if (alloc_clusters (w, rb, &rb_off, err) < 0 ||
      alloc_clusters (w, rtc, &rt_off, err) < 0)
    goto fail;

  if (write_l1 (w, buf, l1_off, l1_clusters, err) < 0 ||
      write_refcounts (w, buf, rb_off, rb, rt_off, rtc, err) < 0)
    goto fail;

  if (out_flush (w, err) < 0) goto fail;
  build_header (w, buf, l1_off, rt_off, rtc);
  if (pwrite_all (w->fd, buf, cs, 0, err) < 0) goto fail;
  /* The file is complete up to w->end; make its size exact. */
  if (ftruncate (w->fd, (off_t) w->end) < 0) {
    qcow2_seterr (err, "qcow2: truncate: %s", strerror (errno));
    goto fail;
  }

  free (buf);
  w->stats.file_bytes = w->end;
  if (stats) *stats = w->stats;
  w->failed = true;             /* finished: no more adds */
  return 0;

 fail:
  free (buf);
  w->failed = true;
  return -1;
}

void qcow2_writer_free (struct qcow2_writer *w)
{
  if (!w) return;
  qcow2_compressor_free (w->comp);
  free (w->stage);
  free (w->staged);
  free (w->obuf);
  free (w->refcounts);
  free (w->l2);
  free (w->l1);
  free (w->backing_file);
  free (w->backing_format);
  free (w);
}

/* NOLINTEND(clang-analyzer-security.insecureAPI.DeprecatedOrUnsafeBufferHandling) */
