/* luacow: qcow2 decoder and validator (v2 and v3).
 *
 * The file is hostile.  Every offset is checked against the file size
 * (fstat at open) before any pread, every size is checked before it is
 * multiplied or allocated, and allocations are bounded both by qemu's
 * own limits and by the file size.  Metadata (header cluster, L1, L2
 * tables, refcount table and blocks, snapshot table, snapshot L1 tables,
 * bitmap directory) is collected into a sorted list of cluster ranges
 * that must not overlap each other, and that guest data must not touch.
 *
 * After open the image is never modified, so concurrent calls of
 * qcow2_for_each_cluster and qcow2_read_compressed are safe.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ZLIB_CONST           /* next_in is const: no cast away of const */
#include <zlib.h>
#include <zstd.h>

#include "fullio.h"
#include "qcow2.h"
#include "qcow2_common.h"

/* qemu decodes frames with zstd's default limit, windows up to 2^27
 * bytes; so do we (the window buffer is allocated as the frame declares;
 * only the part written, at most about a cluster, is ever touched).
 */
#define ZSTD_WINDOW_LOG_MAX 27

enum meta_kind {
  META_HEADER, META_L1, META_L2, META_REFTABLE, META_REFBLOCK,
  META_SNAPSHOT_TABLE, META_SNAPSHOT_L1, META_BITMAP_DIR,
};

static const char *const meta_names[] = {
  [META_HEADER] = "the header cluster",
  [META_L1] = "the L1 table",
  [META_L2] = "an L2 table",
  [META_REFTABLE] = "the refcount table",
  [META_REFBLOCK] = "a refcount block",
  [META_SNAPSHOT_TABLE] = "the snapshot table",
  [META_SNAPSHOT_L1] = "a snapshot L1 table",
  [META_BITMAP_DIR] = "the bitmap directory",
};

struct meta_range {
  uint64_t start, end;          /* bytes, cluster-aligned */
  enum meta_kind kind;
};

struct qcow2_image {
  int fd;
  uint64_t file_size;
  int version;
  unsigned cluster_bits;
  uint32_t cluster_size;
  uint64_t virtual_size;
  uint64_t guest_clusters;
  enum qcow2_compress compression;
  char *backing_file;
  char *backing_format;

  uint32_t l1_size;
  uint64_t *l1;                 /* host byte order, validated */

  struct meta_range *meta;      /* sorted by start, non-overlapping */
  size_t nmeta, meta_cap, meta_max;
};

/* -------------------------------------------------------------- helpers */

/* Read exactly len bytes at off; the caller has checked the range lies
 * within the file size seen at open, so EIO here means the file shrank.
 */
static int read_at (const struct qcow2_image *img, uint64_t off, void *buf,
                    size_t len, const char *what, struct qcow2_err *err)
{
  if (full_pread (img->fd, buf, len, off) == 0) return 0;
  qcow2_seterr (err, "qcow2: reading %s at offset %llu: %s", what,
                (unsigned long long) off,
                errno == EIO ? "unexpected end of file or I/O error" :
                strerror (errno));
  return -1;
}

/* True when [off, off + len) lies inside the file, without overflow. */
static bool in_file (const struct qcow2_image *img, uint64_t off, uint64_t len)
{
  return off <= img->file_size && len <= img->file_size - off;
}

static bool aligned (const struct qcow2_image *img, uint64_t off)
{
  return (off & (img->cluster_size - 1)) == 0;
}

static uint64_t round_up_cluster (const struct qcow2_image *img, uint64_t n)
{
  return div_round_up (n, img->cluster_size) << img->cluster_bits;
}

/* Check a table (L1, refcount table, snapshot L1...): cluster-aligned and
 * its len bytes inside the file.
 */
static int check_table (const struct qcow2_image *img, uint64_t off,
                        uint64_t len, const char *what, struct qcow2_err *err)
{
  if (!aligned (img, off)) {
    qcow2_seterr (err, "qcow2: %s offset %#llx is not cluster-aligned", what,
                  (unsigned long long) off);
    return -1;
  }
  if (!in_file (img, off, len)) {
    qcow2_seterr (err, "qcow2: %s (offset %#llx, %llu bytes) extends past "
                  "the end of the file", what, (unsigned long long) off,
                  (unsigned long long) len);
    return -1;
  }
  return 0;
}

static int meta_add (struct qcow2_image *img, uint64_t start, uint64_t len,
                     enum meta_kind kind, struct qcow2_err *err)
{
  if (len == 0) return 0;
  if (img->nmeta >= img->meta_max) {
    /* More metadata clusters than the file holds: they must overlap. */
    qcow2_seterr (err, "qcow2: more metadata clusters than the file holds "
                  "(overlapping metadata)");
    return -1;
  }
  if (img->nmeta == img->meta_cap) {
    size_t cap = img->meta_cap ? img->meta_cap * 2 : 64;
    struct meta_range *m;
    if (cap > img->meta_max) cap = img->meta_max;
    m = realloc (img->meta, cap * sizeof *m);
    if (!m) {
      qcow2_seterr (err, "qcow2: out of memory");
      return -1;
    }
    img->meta = m;
    img->meta_cap = cap;
  }
  img->meta[img->nmeta].start = start;
  img->meta[img->nmeta].end = start + round_up_cluster (img, len);
  img->meta[img->nmeta].kind = kind;
  img->nmeta++;
  return 0;
}

static int meta_cmp (const void *a, const void *b)
{
  const struct meta_range *x = a, *y = b;
  return x->start < y->start ? -1 : x->start > y->start;
}

static int meta_sort_check (struct qcow2_image *img, struct qcow2_err *err)
{
  if (img->nmeta > 1)
    qsort (img->meta, img->nmeta, sizeof *img->meta, meta_cmp);
  for (size_t i = 1; i < img->nmeta; i++) {
    const struct meta_range *a = &img->meta[i - 1], *b = &img->meta[i];
    if (b->start < a->end) {
      qcow2_seterr (err, "qcow2: %s at %#llx overlaps %s at %#llx",
                    meta_names[b->kind], (unsigned long long) b->start,
                    meta_names[a->kind], (unsigned long long) a->start);
      return -1;
    }
  }
  return 0;
}

/* The metadata range overlapping [off, off + len), or NULL. */
static const struct meta_range *meta_find (const struct qcow2_image *img,
                                           uint64_t off, uint64_t len)
{
  size_t lo = 0, hi = img->nmeta;
  uint64_t last = off + len - 1;
  /* Find the last range starting at or before the last byte. */
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (img->meta[mid].start <= last) lo = mid + 1;
    else hi = mid;
  }
  if (lo == 0) return NULL;
  return img->meta[lo - 1].end > off ? &img->meta[lo - 1] : NULL;
}

/* --------------------------------------------------------------- header */

struct header {
  uint64_t backing_offset;
  uint32_t backing_size;
  uint64_t size;
  uint32_t crypt_method;
  uint32_t l1_size;
  uint64_t l1_offset;
  uint64_t reftable_offset;
  uint32_t reftable_clusters;
  uint32_t nb_snapshots;
  uint64_t snapshots_offset;
  uint64_t incompat, compat, autoclear;
  uint32_t refcount_order;
  uint32_t header_length;
  uint8_t compression_type;
  /* from the bitmaps extension */
  bool seen_bitmaps;            /* the extension is there */
  bool has_bitmaps;             /* and valid (autoclear bit 0 set) */
  uint64_t bitmap_dir_offset, bitmap_dir_size;
};

static int parse_fixed_header (struct qcow2_image *img, const uint8_t *h,
                               struct header *hd, struct qcow2_err *err)
{
  uint64_t l1_needed, unknown;

  hd->backing_offset = get_be64 (h + HDR_BACKING_OFFSET);
  hd->backing_size = get_be32 (h + HDR_BACKING_SIZE);
  hd->size = get_be64 (h + HDR_SIZE);
  hd->crypt_method = get_be32 (h + HDR_CRYPT);
  hd->l1_size = get_be32 (h + HDR_L1_SIZE);
  hd->l1_offset = get_be64 (h + HDR_L1_OFFSET);
  hd->reftable_offset = get_be64 (h + HDR_REFTABLE_OFFSET);
  hd->reftable_clusters = get_be32 (h + HDR_REFTABLE_CLUSTERS);
  hd->nb_snapshots = get_be32 (h + HDR_NB_SNAPSHOTS);
  hd->snapshots_offset = get_be64 (h + HDR_SNAPSHOTS_OFFSET);

  if (img->version == 3) {
    hd->incompat = get_be64 (h + HDR_INCOMPAT);
    hd->compat = get_be64 (h + HDR_COMPAT);
    hd->autoclear = get_be64 (h + HDR_AUTOCLEAR);
    hd->refcount_order = get_be32 (h + HDR_REFCOUNT_ORDER);
    hd->header_length = get_be32 (h + HDR_HEADER_LENGTH);
    if (hd->header_length < QCOW2_V3_MIN_HEADER_LEN) {
      qcow2_seterr (err, "qcow2: header_length %u is shorter than 104",
                    hd->header_length);
      return -1;
    }
    if (hd->header_length % 8) {
      qcow2_seterr (err, "qcow2: header_length %u is not a multiple of 8",
                    hd->header_length);
      return -1;
    }
    if (hd->header_length > img->cluster_size) {
      qcow2_seterr (err, "qcow2: header_length %u exceeds the cluster size",
                    hd->header_length);
      return -1;
    }
    hd->compression_type = hd->header_length > HDR_COMPRESSION_TYPE ?
                           h[HDR_COMPRESSION_TYPE] : 0;
    /* The padding after compression_type must be zero (spec). */
    for (uint32_t i = HDR_COMPRESSION_TYPE + 1;
         i < hd->header_length && i < QCOW2_V3_HEADER_LEN; i++)
      if (h[i]) {
        qcow2_seterr (err, "qcow2: header padding byte %u is not zero", i);
        return -1;
      }
    if (hd->refcount_order > 6) {
      qcow2_seterr (err, "qcow2: refcount_order %u is larger than 6",
                    hd->refcount_order);
      return -1;
    }
  }
  else {
    hd->refcount_order = 4;
    hd->header_length = QCOW2_V2_HEADER_LEN;
  }

  if (hd->incompat & QCOW2_INCOMPAT_DIRTY) {
    qcow2_seterr (err, "qcow2: image is dirty (not closed cleanly); "
                  "repair it with qemu-img check -r all");
    return -1;
  }
  if (hd->incompat & QCOW2_INCOMPAT_CORRUPT) {
    qcow2_seterr (err, "qcow2: image is marked corrupt");
    return -1;
  }
  if (hd->incompat & QCOW2_INCOMPAT_DATA_FILE) {
    qcow2_seterr (err, "qcow2: external data files are not supported");
    return -1;
  }
  if (hd->incompat & QCOW2_INCOMPAT_EXTL2) {
    qcow2_seterr (err, "qcow2: extended L2 entries are not supported");
    return -1;
  }
  unknown = hd->incompat & ~(QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT |
                             QCOW2_INCOMPAT_DATA_FILE |
                             QCOW2_INCOMPAT_COMPRESSION | QCOW2_INCOMPAT_EXTL2);
  if (unknown) {
    qcow2_seterr (err, "qcow2: unknown incompatible feature bits %#llx",
                  (unsigned long long) unknown);
    return -1;
  }
  if (hd->compression_type == QCOW2_COMPRESSION_TYPE_ZLIB) {
    if (hd->incompat & QCOW2_INCOMPAT_COMPRESSION) {
      qcow2_seterr (err, "qcow2: compression type bit set with zlib "
                    "compression");
      return -1;
    }
    img->compression = QCOW2_COMPRESS_DEFLATE;
  }
  else if (hd->compression_type == QCOW2_COMPRESSION_TYPE_ZSTD) {
    if (!(hd->incompat & QCOW2_INCOMPAT_COMPRESSION)) {
      qcow2_seterr (err, "qcow2: zstd compression without the compression "
                    "type feature bit");
      return -1;
    }
    img->compression = QCOW2_COMPRESS_ZSTD;
  }
  else {
    qcow2_seterr (err, "qcow2: unknown compression type %u",
                  hd->compression_type);
    return -1;
  }

  if (hd->crypt_method != 0) {
    qcow2_seterr (err, "qcow2: encrypted images are not supported "
                  "(crypt_method %u)", hd->crypt_method);
    return -1;
  }

  if (hd->size > INT64_MAX) {
    qcow2_seterr (err, "qcow2: virtual size %llu is too large",
                  (unsigned long long) hd->size);
    return -1;
  }
  img->virtual_size = hd->size;
  img->guest_clusters = div_round_up (hd->size, img->cluster_size);

  if (hd->l1_size > QCOW2_MAX_L1_BYTES / 8) {
    qcow2_seterr (err, "qcow2: l1_size %u exceeds qemu's 32 MiB limit",
                  hd->l1_size);
    return -1;
  }
  l1_needed = div_round_up (img->guest_clusters, img->cluster_size / 8);
  if (hd->l1_size < l1_needed) {
    qcow2_seterr (err, "qcow2: l1_size %u is too small for the virtual size "
                  "(needs %llu)", hd->l1_size, (unsigned long long) l1_needed);
    return -1;
  }
  return 0;
}

/* Header extensions live between the header and the backing file name
 * (or the end of cluster 0).
 */
static int parse_extensions (struct qcow2_image *img, const uint8_t *h,
                             struct header *hd, struct qcow2_err *err)
{
  uint64_t off = hd->header_length;
  uint64_t end = hd->backing_offset ? hd->backing_offset : img->cluster_size;
  bool seen_format = false, seen_features = false, seen_size = false;

  if (hd->backing_offset &&
      (hd->backing_offset < hd->header_length ||
       hd->backing_offset >= img->cluster_size)) {
    qcow2_seterr (err, "qcow2: backing_file_offset %llu is outside the "
                  "header cluster", (unsigned long long) hd->backing_offset);
    return -1;
  }

  while (off < end) {
    uint32_t type, len;
    if (end - off < 8) {
      qcow2_seterr (err, "qcow2: truncated header extension at offset %llu",
                    (unsigned long long) off);
      return -1;
    }
    type = get_be32 (h + off);
    len = get_be32 (h + off + 4);
    off += 8;
    if (type == QCOW2_EXT_END) break;
    if (len > end - off) {
      qcow2_seterr (err, "qcow2: header extension %#x (%u bytes) overruns "
                    "the header area", type, len);
      return -1;
    }
    switch (type) {
    case QCOW2_EXT_BACKING_FORMAT:
      if (seen_format) {
        qcow2_seterr (err, "qcow2: duplicate backing format extension");
        return -1;
      }
      seen_format = true;
      if (len == 0 || memchr (h + off, 0, len)) {
        qcow2_seterr (err, "qcow2: invalid backing format name");
        return -1;
      }
      img->backing_format = strndup ((const char *) h + off, len);
      if (!img->backing_format) {
        qcow2_seterr (err, "qcow2: out of memory");
        return -1;
      }
      break;
    case QCOW2_EXT_FEATURE_TABLE:
      if (seen_features) {
        qcow2_seterr (err, "qcow2: duplicate feature name table extension");
        return -1;
      }
      seen_features = true;
      break;
    case QCOW2_EXT_BITMAPS: {
      const uint8_t *p = h + off;
      uint32_t nb;
      if (hd->seen_bitmaps) {
        qcow2_seterr (err, "qcow2: duplicate bitmaps extension");
        return -1;
      }
      if (len < 24) {
        qcow2_seterr (err, "qcow2: bitmaps extension too short (%u bytes)",
                      len);
        return -1;
      }
      hd->seen_bitmaps = true;
      /* Autoclear bit 0 clear (always in v2): a program without bitmap
       * support wrote the file after the bitmaps, so the spec says their
       * data is inconsistent; it is ignored, the directory's clusters may
       * since hold anything (qemu-img check -r frees them).
       */
      if (!(hd->autoclear & QCOW2_AUTOCLEAR_BITMAPS)) break;
      nb = get_be32 (p);
      hd->bitmap_dir_size = get_be64 (p + 8);
      hd->bitmap_dir_offset = get_be64 (p + 16);
      if (nb == 0 || nb > QCOW2_MAX_BITMAPS || get_be32 (p + 4) != 0 ||
          hd->bitmap_dir_size == 0 ||
          hd->bitmap_dir_size > QCOW2_MAX_BITMAP_DIR_BYTES) {
        qcow2_seterr (err, "qcow2: invalid bitmaps extension");
        return -1;
      }
      if (check_table (img, hd->bitmap_dir_offset, hd->bitmap_dir_size,
                       "bitmap directory", err) < 0)
        return -1;
      hd->has_bitmaps = true;
      break;
    }
    case QCOW2_EXT_LUACOW_SIZE: {
      uint64_t v;
      if (seen_size || len != 8) {
        qcow2_seterr (err, "qcow2: invalid luacow size extension");
        return -1;
      }
      seen_size = true;
      /* Only while it still agrees with the header (qemu-img resize
       * keeps unknown extensions but changes the size).
       */
      v = get_be64 (h + off);
      if (v < img->virtual_size && img->virtual_size - v < QCOW2_SECTOR &&
          img->virtual_size % QCOW2_SECTOR == 0)
        img->virtual_size = v;
      break;
    }
    case QCOW2_EXT_CRYPTO:
      qcow2_seterr (err, "qcow2: encryption header extension present");
      return -1;
    case QCOW2_EXT_DATA_FILE:
      qcow2_seterr (err, "qcow2: external data file extension present");
      return -1;
    default:
      break;                    /* unknown extensions may be ignored */
    }
    off += ((uint64_t) len + 7) & ~(uint64_t) 7;
  }
  return 0;
}

static int parse_backing (struct qcow2_image *img, const uint8_t *h,
                          const struct header *hd, struct qcow2_err *err)
{
  if (hd->backing_offset == 0) {
    if (hd->backing_size != 0) {
      qcow2_seterr (err, "qcow2: backing_file_size %u without a backing file "
                    "offset", hd->backing_size);
      return -1;
    }
    if (img->backing_format) {
      qcow2_seterr (err, "qcow2: backing format without a backing file");
      return -1;
    }
    return 0;
  }
  if (hd->backing_offset < hd->header_length ||
      hd->backing_offset >= img->cluster_size) {
    qcow2_seterr (err, "qcow2: backing_file_offset %llu is outside the "
                  "header cluster", (unsigned long long) hd->backing_offset);
    return -1;
  }
  if (hd->backing_size == 0 || hd->backing_size > QCOW2_MAX_BACKING_NAME ||
      hd->backing_size > img->cluster_size - hd->backing_offset) {
    qcow2_seterr (err, "qcow2: backing_file_size %u is invalid",
                  hd->backing_size);
    return -1;
  }
  if (memchr (h + hd->backing_offset, 0, hd->backing_size)) {
    qcow2_seterr (err, "qcow2: backing file name contains a NUL byte");
    return -1;
  }
  img->backing_file = strndup ((const char *) h + hd->backing_offset,
                               hd->backing_size);
  if (!img->backing_file) {
    qcow2_seterr (err, "qcow2: out of memory");
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------ refcount table */

static int parse_reftable (struct qcow2_image *img, const struct header *hd,
                           struct qcow2_err *err)
{
  uint64_t bytes, n;
  uint8_t *t;
  int ret = -1;

  if (hd->reftable_clusters == 0) {
    qcow2_seterr (err, "qcow2: refcount_table_clusters is 0");
    return -1;
  }
  if (hd->reftable_clusters > QCOW2_MAX_REFTABLE_BYTES / img->cluster_size) {
    qcow2_seterr (err, "qcow2: refcount table of %u clusters exceeds qemu's "
                  "8 MiB limit", hd->reftable_clusters);
    return -1;
  }
  bytes = (uint64_t) hd->reftable_clusters << img->cluster_bits;
  if (check_table (img, hd->reftable_offset, bytes, "refcount table", err) < 0 ||
      meta_add (img, hd->reftable_offset, bytes, META_REFTABLE, err) < 0)
    return -1;

  t = malloc (bytes);
  if (!t) {
    qcow2_seterr (err, "qcow2: out of memory");
    return -1;
  }
  if (read_at (img, hd->reftable_offset, t, bytes, "refcount table", err) < 0)
    goto out;
  n = bytes / 8;
  for (uint64_t i = 0; i < n; i++) {
    uint64_t e = get_be64 (t + i * 8);
    if (e == 0) continue;
    if (e & QCOW2_REFTE_RESERVED) {
      qcow2_seterr (err, "qcow2: refcount table entry %llu has reserved "
                    "bits set (%#llx)", (unsigned long long) i,
                    (unsigned long long) e);
      goto out;
    }
    if (!aligned (img, e)) {
      qcow2_seterr (err, "qcow2: refcount block %llu offset %#llx is not "
                    "cluster-aligned", (unsigned long long) i,
                    (unsigned long long) e);
      goto out;
    }
    if (!in_file (img, e, img->cluster_size)) {
      qcow2_seterr (err, "qcow2: refcount block %llu at %#llx is past the "
                    "end of the file", (unsigned long long) i,
                    (unsigned long long) e);
      goto out;
    }
    if (meta_add (img, e, img->cluster_size, META_REFBLOCK, err) < 0)
      goto out;
  }
  ret = 0;
 out:
  free (t);
  return ret;
}

/* ------------------------------------------------------------- L1 table */

static int parse_l1 (struct qcow2_image *img, const struct header *hd,
                     struct qcow2_err *err)
{
  uint64_t bytes = (uint64_t) hd->l1_size * 8;
  uint8_t *raw;

  img->l1_size = hd->l1_size;
  if (!aligned (img, hd->l1_offset)) {
    qcow2_seterr (err, "qcow2: L1 table offset %#llx is not cluster-aligned",
                  (unsigned long long) hd->l1_offset);
    return -1;
  }
  if (hd->l1_size == 0) return 0;
  if (check_table (img, hd->l1_offset, bytes, "L1 table", err) < 0 ||
      meta_add (img, hd->l1_offset, bytes, META_L1, err) < 0)
    return -1;

  raw = malloc (bytes);
  img->l1 = malloc (bytes);
  if (!raw || !img->l1) {
    free (raw);
    qcow2_seterr (err, "qcow2: out of memory");
    return -1;
  }
  if (read_at (img, hd->l1_offset, raw, bytes, "L1 table", err) < 0) {
    free (raw);
    return -1;
  }
  for (uint32_t i = 0; i < hd->l1_size; i++) {
    uint64_t e = get_be64 (raw + (uint64_t) i * 8);
    uint64_t off = e & QCOW2_OFFSET_MASK;
    img->l1[i] = off;
    if (e & QCOW2_L1E_RESERVED) {
      qcow2_seterr (err, "qcow2: L1 entry %u has reserved bits set (%#llx)",
                    i, (unsigned long long) e);
      goto fail;
    }
    if (off == 0) continue;
    if (!aligned (img, off)) {
      qcow2_seterr (err, "qcow2: L1 entry %u: L2 table offset %#llx is not "
                    "cluster-aligned", i, (unsigned long long) off);
      goto fail;
    }
    if (!in_file (img, off, img->cluster_size)) {
      qcow2_seterr (err, "qcow2: L1 entry %u: L2 table at %#llx is past the "
                    "end of the file", i, (unsigned long long) off);
      goto fail;
    }
    if (meta_add (img, off, img->cluster_size, META_L2, err) < 0) goto fail;
  }
  free (raw);
  return 0;
 fail:
  free (raw);
  return -1;
}

/* ------------------------------------------------------------ snapshots */

static int parse_snapshots (struct qcow2_image *img, const struct header *hd,
                            struct qcow2_err *err)
{
  uint64_t off = hd->snapshots_offset, total = 0;

  if (!aligned (img, off)) {
    qcow2_seterr (err, "qcow2: snapshot table offset %#llx is not "
                  "cluster-aligned", (unsigned long long) off);
    return -1;
  }
  if (hd->nb_snapshots == 0) return 0;
  if (hd->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
    qcow2_seterr (err, "qcow2: too many snapshots (%u)", hd->nb_snapshots);
    return -1;
  }

  for (uint32_t i = 0; i < hd->nb_snapshots; i++) {
    uint8_t e[40];
    uint64_t l1_off, entry_len;
    uint32_t l1_size, extra;
    uint16_t id_len, name_len;

    if (!in_file (img, off, total + sizeof e)) {
      qcow2_seterr (err, "qcow2: snapshot table entry %u is past the end of "
                    "the file", i);
      return -1;
    }
    if (read_at (img, off + total, e, sizeof e, "snapshot table", err) < 0)
      return -1;
    l1_off = get_be64 (e);
    l1_size = get_be32 (e + 8);
    id_len = get_be16 (e + 12);
    name_len = get_be16 (e + 14);
    extra = get_be32 (e + 36);
    /* qemu always names snapshots with an ID, and the spec demands the
     * VM state and disk size fields in v3.
     */
    if (id_len == 0) {
      qcow2_seterr (err, "qcow2: snapshot %u has an empty ID", i);
      return -1;
    }
    if (img->version >= 3 && extra < 16) {
      qcow2_seterr (err, "qcow2: snapshot %u has %u bytes of extra data "
                    "(v3 needs 16)", i, extra);
      return -1;
    }
    if (extra > QCOW2_MAX_SNAPSHOT_EXTRA) {
      qcow2_seterr (err, "qcow2: snapshot %u has %u bytes of extra data "
                    "(limit %u)", i, extra, QCOW2_MAX_SNAPSHOT_EXTRA);
      return -1;
    }
    entry_len = ((uint64_t) sizeof e + extra + id_len + name_len + 7) &
                ~(uint64_t) 7;
    total += entry_len;
    if (total > QCOW2_MAX_SNAPSHOT_TABLE_BYTES) {
      qcow2_seterr (err, "qcow2: snapshot table exceeds 64 MiB");
      return -1;
    }
    /* The unpadded entry must be in the file: padding of the last entry
     * may be missing.
     */
    if (!in_file (img, off, total - entry_len + sizeof e + extra + id_len +
                  name_len)) {
      qcow2_seterr (err, "qcow2: snapshot table entry %u is past the end of "
                    "the file", i);
      return -1;
    }
    if (l1_size > QCOW2_MAX_L1_BYTES / 8) {
      qcow2_seterr (err, "qcow2: snapshot %u L1 table too large (%u entries)",
                    i, l1_size);
      return -1;
    }
    if (l1_off >= QCOW2_MAX_HOST_OFFSET) {
      qcow2_seterr (err, "qcow2: snapshot %u L1 table offset %#llx is "
                    "invalid", i, (unsigned long long) l1_off);
      return -1;
    }
    if (check_table (img, l1_off, (uint64_t) l1_size * 8, "snapshot L1 table",
                     err) < 0 ||
        meta_add (img, l1_off, (uint64_t) l1_size * 8, META_SNAPSHOT_L1,
                  err) < 0)
      return -1;
  }
  return meta_add (img, off, total, META_SNAPSHOT_TABLE, err);
}

/* ----------------------------------------------------------------- open */

static int file_size (int fd, uint64_t *size, struct qcow2_err *err)
{
  struct stat st;
  if (fstat (fd, &st) < 0) {
    qcow2_seterr (err, "qcow2: fstat: %s", strerror (errno));
    return -1;
  }
  if (S_ISREG (st.st_mode)) {
    *size = (uint64_t) st.st_size;
    return 0;
  }
  if (S_ISBLK (st.st_mode)) {
    off_t end = lseek (fd, 0, SEEK_END);
    if (end < 0) {
      qcow2_seterr (err, "qcow2: lseek: %s", strerror (errno));
      return -1;
    }
    *size = (uint64_t) end;
    return 0;
  }
  qcow2_seterr (err, "qcow2: not a regular file or block device");
  return -1;
}

struct qcow2_image *qcow2_open (int fd, struct qcow2_err *err)
{
  struct qcow2_image *img;
  struct header hd = { 0 };
  uint8_t fixed[QCOW2_V2_HEADER_LEN];
  uint8_t *h = NULL;
  uint32_t magic, version, bits;

  img = calloc (1, sizeof *img);
  if (!img) {
    qcow2_seterr (err, "qcow2: out of memory");
    return NULL;
  }
  img->fd = fd;
  if (file_size (fd, &img->file_size, err) < 0) goto fail;

  if (img->file_size < sizeof fixed) {
    qcow2_seterr (err, "qcow2: file too small for a qcow2 header (%llu bytes)",
                  (unsigned long long) img->file_size);
    goto fail;
  }
  if (read_at (img, 0, fixed, sizeof fixed, "header", err) < 0) goto fail;
  magic = get_be32 (fixed + HDR_MAGIC);
  version = get_be32 (fixed + HDR_VERSION);
  bits = get_be32 (fixed + HDR_CLUSTER_BITS);
  if (magic != QCOW2_MAGIC) {
    qcow2_seterr (err, "qcow2: bad magic (not a qcow2 image)");
    goto fail;
  }
  if (version != 2 && version != 3) {
    qcow2_seterr (err, "qcow2: unsupported version %u", version);
    goto fail;
  }
  if (bits < QCOW2_MIN_CLUSTER_BITS || bits > QCOW2_MAX_CLUSTER_BITS) {
    qcow2_seterr (err, "qcow2: unsupported cluster_bits %u (9..21)", bits);
    goto fail;
  }
  img->version = (int) version;
  img->cluster_bits = bits;
  img->cluster_size = 1u << bits;
  /* Every valid image has at least the header and refcount clusters. */
  if (img->file_size < img->cluster_size) {
    qcow2_seterr (err, "qcow2: file is shorter than one cluster");
    goto fail;
  }
  img->meta_max = (size_t) (img->file_size >> bits) + 1;

  h = malloc (img->cluster_size);
  if (!h) {
    qcow2_seterr (err, "qcow2: out of memory");
    goto fail;
  }
  if (read_at (img, 0, h, img->cluster_size, "header cluster", err) < 0 ||
      parse_fixed_header (img, h, &hd, err) < 0 ||
      parse_extensions (img, h, &hd, err) < 0 ||
      parse_backing (img, h, &hd, err) < 0)
    goto fail;
  free (h);
  h = NULL;

  if (meta_add (img, 0, img->cluster_size, META_HEADER, err) < 0 ||
      parse_reftable (img, &hd, err) < 0 ||
      parse_l1 (img, &hd, err) < 0 ||
      parse_snapshots (img, &hd, err) < 0 ||
      (hd.has_bitmaps &&
       meta_add (img, hd.bitmap_dir_offset, hd.bitmap_dir_size,
                 META_BITMAP_DIR, err) < 0) ||
      meta_sort_check (img, err) < 0)
    goto fail;
  return img;

 fail:
  free (h);
  qcow2_close (img);
  return NULL;
}

uint64_t qcow2_virtual_size (const struct qcow2_image *img)
{
  return img->virtual_size;
}

uint32_t qcow2_cluster_size (const struct qcow2_image *img)
{
  return img->cluster_size;
}

int qcow2_version (const struct qcow2_image *img)
{
  return img->version;
}

enum qcow2_compress qcow2_compression (const struct qcow2_image *img)
{
  return img->compression;
}

const char *qcow2_backing_file (const struct qcow2_image *img)
{
  return img->backing_file;
}

const char *qcow2_backing_format (const struct qcow2_image *img)
{
  return img->backing_format;
}

void qcow2_close (struct qcow2_image *img)
{
  if (!img) return;
  free (img->l1);
  free (img->meta);
  free (img->backing_file);
  free (img->backing_format);
  free (img);
}

/* ------------------------------------------------------------ clusters */

static int check_host_cluster (const struct qcow2_image *img, uint64_t g,
                               uint64_t off, struct qcow2_err *err)
{
  const struct meta_range *m;
  if (!aligned (img, off)) {
    qcow2_seterr (err, "qcow2: guest cluster %llu: host offset %#llx is not "
                  "cluster-aligned", (unsigned long long) g,
                  (unsigned long long) off);
    return -1;
  }
  if (!in_file (img, off, img->cluster_size)) {
    qcow2_seterr (err, "qcow2: guest cluster %llu: host cluster %#llx is past "
                  "the end of the file", (unsigned long long) g,
                  (unsigned long long) off);
    return -1;
  }
  m = meta_find (img, off, img->cluster_size);
  if (m) {
    qcow2_seterr (err, "qcow2: guest cluster %llu: host cluster %#llx "
                  "overlaps %s", (unsigned long long) g,
                  (unsigned long long) off, meta_names[m->kind]);
    return -1;
  }
  return 0;
}

static int decode_compressed (const struct qcow2_image *img, uint64_t g,
                              uint64_t e, struct qcow2_cluster *c,
                              struct qcow2_err *err)
{
  unsigned shift = qcow2_csize_shift (img->cluster_bits);
  uint64_t off = e & qcow2_coffset_mask (img->cluster_bits);
  uint64_t sectors = ((e >> shift) & qcow2_csize_mask (img->cluster_bits)) + 1;
  uint64_t end = (off & ~(uint64_t) (QCOW2_SECTOR - 1)) + sectors * QCOW2_SECTOR;
  const struct meta_range *m;

  if (e & QCOW2_OFLAG_COPIED) {
    qcow2_seterr (err, "qcow2: guest cluster %llu: compressed entry has the "
                  "COPIED flag", (unsigned long long) g);
    return -1;
  }
  if (off >= QCOW2_MAX_HOST_OFFSET) {
    qcow2_seterr (err, "qcow2: guest cluster %llu: compressed offset %#llx "
                  "has reserved bits set", (unsigned long long) g,
                  (unsigned long long) off);
    return -1;
  }
  /* The data ends somewhere in its last sector: that sector must start
   * inside the file.  Reads are then clamped to the end of the file.
   */
  if (off >= img->file_size || end - QCOW2_SECTOR >= img->file_size) {
    qcow2_seterr (err, "qcow2: guest cluster %llu: compressed data at %#llx "
                  "(%llu sectors) is past the end of the file",
                  (unsigned long long) g, (unsigned long long) off,
                  (unsigned long long) sectors);
    return -1;
  }
  if (end > img->file_size) end = img->file_size;
  m = meta_find (img, off, end - off);
  if (m) {
    qcow2_seterr (err, "qcow2: guest cluster %llu: compressed data at %#llx "
                  "overlaps %s", (unsigned long long) g,
                  (unsigned long long) off, meta_names[m->kind]);
    return -1;
  }
  c->kind = QCOW2_COMPRESSED;
  c->host_offset = off;
  c->compressed_size = end - off;
  return 0;
}

static int decode_entry (const struct qcow2_image *img, uint64_t g, uint64_t e,
                         struct qcow2_cluster *c, struct qcow2_err *err)
{
  uint64_t off, reserved;

  c->kind = QCOW2_UNALLOCATED;
  c->host_offset = 0;
  c->compressed_size = 0;
  if (e & QCOW2_OFLAG_COMPRESSED) return decode_compressed (img, g, e, c, err);

  reserved = QCOW2_L2E_STD_RESERVED;
  if (img->version < 3) reserved |= QCOW2_OFLAG_ZERO;
  if (e & reserved) {
    qcow2_seterr (err, "qcow2: guest cluster %llu: L2 entry has reserved "
                  "bits set (%#llx)", (unsigned long long) g,
                  (unsigned long long) e);
    return -1;
  }
  off = e & QCOW2_OFFSET_MASK;
  if (e & QCOW2_OFLAG_ZERO) {
    /* A preallocated host cluster is not read, but must still be sane. */
    if (off && check_host_cluster (img, g, off, err) < 0) return -1;
    c->kind = QCOW2_ZERO;
    c->host_offset = off;
    return 0;
  }
  if (off == 0) {
    if (e & QCOW2_OFLAG_COPIED) {
      qcow2_seterr (err, "qcow2: guest cluster %llu: host offset 0 with the "
                    "COPIED flag", (unsigned long long) g);
      return -1;
    }
    return 0;
  }
  if (check_host_cluster (img, g, off, err) < 0) return -1;
  c->kind = QCOW2_DATA;
  c->host_offset = off;
  return 0;
}

int qcow2_for_each_cluster (struct qcow2_image *img, qcow2_cluster_fn fn,
                            void *opaque, struct qcow2_err *err)
{
  uint64_t l2_entries = img->cluster_size / 8;
  uint8_t *l2;
  int ret = 0;

  if (img->guest_clusters == 0) return 0;
  l2 = malloc (img->cluster_size);
  if (!l2) {
    qcow2_seterr (err, "qcow2: out of memory");
    return -1;
  }
  for (uint64_t i = 0; i * l2_entries < img->guest_clusters; i++) {
    uint64_t first = i * l2_entries;
    uint64_t n = img->guest_clusters - first;
    if (n > l2_entries) n = l2_entries;
    if (img->l1[i] == 0) continue;
    /* Offsets were validated at open. */
    if (read_at (img, img->l1[i], l2, img->cluster_size, "L2 table", err) < 0) {
      ret = -1;
      break;
    }
    for (uint64_t j = 0; j < n; j++) {
      struct qcow2_cluster c;
      if (decode_entry (img, first + j, get_be64 (l2 + j * 8), &c, err) < 0) {
        ret = -1;
        goto out;
      }
      if (c.kind == QCOW2_UNALLOCATED) continue;
      ret = fn (opaque, first + j, &c);
      if (ret != 0) goto out;
    }
  }
 out:
  free (l2);
  return ret;
}

/* ---------------------------------------------------------- decompress */

/* As qemu and the spec: raw deflate, decompressed until the cluster is
 * full.  What the stream holds after that is never looked at, so it may
 * go on or be cut short; a stream that ends, breaks or runs out of input
 * before the cluster is full is refused.  One call with Z_FINISH, as qemu,
 * so both see the same bytes and agree on every stream.
 */
static int inflate_cluster (const uint8_t *src, size_t len, uint8_t *out,
                            size_t out_len, struct qcow2_err *err)
{
  z_stream zs = { 0 };
  int r;
  if (inflateInit2 (&zs, -12) != Z_OK) {
    qcow2_seterr (err, "qcow2: inflateInit2 failed");
    return -1;
  }
  zs.next_in = (const Bytef *) src;
  zs.avail_in = (uInt) len;
  zs.next_out = out;
  zs.avail_out = (uInt) out_len;
  r = inflate (&zs, Z_FINISH);
  inflateEnd (&zs);
  /* Z_BUF_ERROR: the output is full (or the input ran out, caught by
   * avail_out).
   */
  if ((r != Z_STREAM_END && r != Z_BUF_ERROR) || zs.avail_out != 0) {
    qcow2_seterr (err, "qcow2: corrupt deflate data (%s)",
                  r == Z_STREAM_END ? "less than a cluster" :
                  r == Z_BUF_ERROR ? "truncated before a cluster" : "invalid");
    return -1;
  }
  return 0;
}

/* As qemu: stream frames until the cluster is full; the last frame must
 * end exactly there.
 */
static int unzstd_cluster (const uint8_t *src, size_t len, uint8_t *out,
                           size_t out_len, struct qcow2_err *err)
{
  ZSTD_inBuffer in = { src, len, 0 };
  ZSTD_outBuffer ob = { out, out_len, 0 };
  ZSTD_DCtx *dc = ZSTD_createDCtx ();
  size_t r = 0;
  int ret = 0;

  if (!dc) {
    qcow2_seterr (err, "qcow2: out of memory for zstd");
    return -1;
  }
  r = ZSTD_DCtx_setParameter (dc, ZSTD_d_windowLogMax, ZSTD_WINDOW_LOG_MAX);
  while (!ZSTD_isError (r) && ob.pos < ob.size) {
    size_t in_pos = in.pos, out_pos = ob.pos;
    r = ZSTD_decompressStream (dc, &ob, &in);
    if (!ZSTD_isError (r) && in.pos == in_pos && ob.pos == out_pos) {
      ret = -1;                 /* no progress: truncated stream */
      break;
    }
  }
  if (ZSTD_isError (r)) {
    qcow2_seterr (err, "qcow2: corrupt zstd data (%s)", ZSTD_getErrorName (r));
    ret = -1;
  }
  else if (ret < 0 || r != 0 || ob.pos != ob.size) {
    qcow2_seterr (err, "qcow2: corrupt zstd data (%s)",
                  ob.pos != ob.size ? "less than a cluster" :
                  "frame longer than a cluster");
    ret = -1;
  }
  ZSTD_freeDCtx (dc);
  return ret;
}

int qcow2_read_compressed (struct qcow2_image *img, const struct qcow2_cluster *c,
                           void *out, struct qcow2_err *err)
{
  uint8_t *buf;
  int ret;

  if (!c || c->kind != QCOW2_COMPRESSED || c->compressed_size == 0 ||
      c->compressed_size > 2ull * img->cluster_size ||
      !in_file (img, c->host_offset, c->compressed_size)) {
    qcow2_seterr (err, "qcow2: invalid compressed cluster descriptor");
    return -1;
  }
  buf = malloc (c->compressed_size);
  if (!buf) {
    qcow2_seterr (err, "qcow2: out of memory");
    return -1;
  }
  ret = read_at (img, c->host_offset, buf, c->compressed_size,
                 "compressed cluster", err);
  if (ret == 0) {
    if (img->compression == QCOW2_COMPRESS_ZSTD)
      ret = unzstd_cluster (buf, c->compressed_size, out, img->cluster_size,
                            err);
    else
      ret = inflate_cluster (buf, c->compressed_size, out, img->cluster_size,
                             err);
  }
  free (buf);
  return ret;
}
