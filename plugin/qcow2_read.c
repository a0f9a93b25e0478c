/* luacow: qcow2 decoder and validator (v2 and v3): open, the refcount,
 * L1 and snapshot tables, and the walk over guest clusters.  The header
 * cluster is parsed in qcow2_header.c, metadata ranges are kept in
 * qcow2_meta.c, compressed streams decoded in qcow2_codec.c.
 *
 * The file is hostile.  Every offset is checked against the file size
 * (fstat at open) before any pread, every size is checked before it is
 * multiplied or allocated, and allocations are bounded both by qemu's
 * own limits and by the file size.  Metadata (header cluster, L1, L2
 * tables, refcount table and blocks, snapshot table, snapshot L1 tables,
 * bitmap directory) must not overlap, and guest data must not touch it.
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

#include "fullio.h"
#include "qcow2.h"
#include "qcow2_codec.h"
#include "qcow2_common.h"
#include "qcow2_image.h"

/* -------------------------------------------------------------- helpers */

/* Read exactly len bytes at off; the caller has checked the range lies
 * within the file size seen at open, so EIO here means the file shrank.
 */
int qcow2_read_at (const struct qcow2_image *img, uint64_t off, void *buf,
                   size_t len, const char *what, struct qcow2_err *err)
{
  if (full_pread (img->fd, buf, len, off) == 0) return 0;
  qcow2_seterr (err, "qcow2: reading %s at offset %llu: %s", what,
                (unsigned long long) off,
                errno == EIO ? "unexpected end of file or I/O error" :
                strerror (errno));
  return -1;
}

/* Check a table (L1, refcount table, snapshot L1...): cluster-aligned and
 * its len bytes inside the file.
 */
int qcow2_check_table (const struct qcow2_image *img, uint64_t off,
                       uint64_t len, const char *what, struct qcow2_err *err)
{
  if (!qcow2_aligned (img, off)) {
    qcow2_seterr (err, "qcow2: %s offset %#llx is not cluster-aligned", what,
                  (unsigned long long) off);
    return -1;
  }
  if (!qcow2_in_file (img, off, len)) {
    qcow2_seterr (err, "qcow2: %s (offset %#llx, %llu bytes) extends past "
                  "the end of the file", what, (unsigned long long) off,
                  (unsigned long long) len);
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------ refcount table */

static int parse_reftable (struct qcow2_image *img,
                           const struct qcow2_header *hd,
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
  if (qcow2_check_table (img, hd->reftable_offset, bytes, "refcount table",
                         err) < 0 ||
      qcow2_meta_add (&img->meta, hd->reftable_offset, bytes, META_REFTABLE,
                      err) < 0)
    return -1;

  t = malloc (bytes);
  if (!t) {
    qcow2_seterr (err, "qcow2: out of memory");
    return -1;
  }
  if (qcow2_read_at (img, hd->reftable_offset, t, bytes, "refcount table",
                     err) < 0)
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
    if (!qcow2_aligned (img, e)) {
      qcow2_seterr (err, "qcow2: refcount block %llu offset %#llx is not "
                    "cluster-aligned", (unsigned long long) i,
                    (unsigned long long) e);
      goto out;
    }
    if (!qcow2_in_file (img, e, img->cluster_size)) {
      qcow2_seterr (err, "qcow2: refcount block %llu at %#llx is past the "
                    "end of the file", (unsigned long long) i,
                    (unsigned long long) e);
      goto out;
    }
    if (qcow2_meta_add (&img->meta, e, img->cluster_size, META_REFBLOCK,
                        err) < 0)
      goto out;
  }
  ret = 0;
 out:
  free (t);
  return ret;
}

/* ------------------------------------------------------------- L1 table */

static int parse_l1 (struct qcow2_image *img, const struct qcow2_header *hd,
                     struct qcow2_err *err)
{
  uint64_t bytes = (uint64_t) hd->l1_size * 8;
  uint8_t *raw;

  img->l1_size = hd->l1_size;
  if (!qcow2_aligned (img, hd->l1_offset)) {
    qcow2_seterr (err, "qcow2: L1 table offset %#llx is not cluster-aligned",
                  (unsigned long long) hd->l1_offset);
    return -1;
  }
  if (hd->l1_size == 0) return 0;
  if (qcow2_check_table (img, hd->l1_offset, bytes, "L1 table", err) < 0 ||
      qcow2_meta_add (&img->meta, hd->l1_offset, bytes, META_L1, err) < 0)
    return -1;

  raw = malloc (bytes);
  img->l1 = malloc (bytes);
  if (!raw || !img->l1) {
    free (raw);
    qcow2_seterr (err, "qcow2: out of memory");
    return -1;
  }
  if (qcow2_read_at (img, hd->l1_offset, raw, bytes, "L1 table", err) < 0) {
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
    if (!qcow2_aligned (img, off)) {
      qcow2_seterr (err, "qcow2: L1 entry %u: L2 table offset %#llx is not "
                    "cluster-aligned", i, (unsigned long long) off);
      goto fail;
    }
    if (!qcow2_in_file (img, off, img->cluster_size)) {
      qcow2_seterr (err, "qcow2: L1 entry %u: L2 table at %#llx is past the "
                    "end of the file", i, (unsigned long long) off);
      goto fail;
    }
    if (qcow2_meta_add (&img->meta, off, img->cluster_size, META_L2, err) < 0)
      goto fail;
  }
  free (raw);
  return 0;
 fail:
  free (raw);
  return -1;
}

/* ------------------------------------------------------------ snapshots */

/* Snapshot entry i at off + *total: check it, add its L1 table to the
 * metadata and advance *total past it.
 */
static int parse_snapshot (struct qcow2_image *img, uint64_t off,
                           uint64_t *total, uint32_t i, struct qcow2_err *err)
{
  uint8_t e[40];
  uint64_t l1_off, entry_len;
  uint32_t l1_size, extra;
  uint16_t id_len, name_len;

  if (!qcow2_in_file (img, off, *total + sizeof e)) {
    qcow2_seterr (err, "qcow2: snapshot table entry %u is past the end of "
                  "the file", i);
    return -1;
  }
  if (qcow2_read_at (img, off + *total, e, sizeof e, "snapshot table",
                     err) < 0)
    return -1;
  l1_off = get_be64 (e);
  l1_size = get_be32 (e + 8);
  id_len = get_be16 (e + 12);
  name_len = get_be16 (e + 14);
  extra = get_be32 (e + 36);
  /* qemu always names snapshots with an ID, and the spec demands the VM
   * state and disk size fields in v3.
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
  *total += entry_len;
  if (*total > QCOW2_MAX_SNAPSHOT_TABLE_BYTES) {
    qcow2_seterr (err, "qcow2: snapshot table exceeds 64 MiB");
    return -1;
  }
  /* The unpadded entry must be in the file: padding of the last entry
   * may be missing.
   */
  if (!qcow2_in_file (img, off, *total - entry_len + sizeof e + extra +
                      id_len + name_len)) {
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
  if (qcow2_check_table (img, l1_off, (uint64_t) l1_size * 8,
                         "snapshot L1 table", err) < 0)
    return -1;
  return qcow2_meta_add (&img->meta, l1_off, (uint64_t) l1_size * 8,
                         META_SNAPSHOT_L1, err);
}

static int parse_snapshots (struct qcow2_image *img,
                            const struct qcow2_header *hd,
                            struct qcow2_err *err)
{
  uint64_t off = hd->snapshots_offset, total = 0;

  if (!qcow2_aligned (img, off)) {
    qcow2_seterr (err, "qcow2: snapshot table offset %#llx is not "
                  "cluster-aligned", (unsigned long long) off);
    return -1;
  }
  if (hd->nb_snapshots == 0) return 0;
  if (hd->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
    qcow2_seterr (err, "qcow2: too many snapshots (%u)", hd->nb_snapshots);
    return -1;
  }
  for (uint32_t i = 0; i < hd->nb_snapshots; i++)
    if (parse_snapshot (img, off, &total, i, err) < 0) return -1;
  return qcow2_meta_add (&img->meta, off, total, META_SNAPSHOT_TABLE, err);
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
  struct qcow2_header hd = { 0 };

  img = calloc (1, sizeof *img);
  if (!img) {
    qcow2_seterr (err, "qcow2: out of memory");
    return NULL;
  }
  img->fd = fd;
  if (file_size (fd, &img->file_size, err) < 0 ||
      qcow2_parse_header (img, &hd, err) < 0)
    goto fail;
  qcow2_meta_init (&img->meta, img->cluster_bits, img->file_size);
  if (qcow2_meta_add (&img->meta, 0, img->cluster_size, META_HEADER, err) < 0 ||
      parse_reftable (img, &hd, err) < 0 ||
      parse_l1 (img, &hd, err) < 0 ||
      parse_snapshots (img, &hd, err) < 0 ||
      (hd.has_bitmaps &&
       qcow2_meta_add (&img->meta, hd.bitmap_dir_offset, hd.bitmap_dir_size,
                       META_BITMAP_DIR, err) < 0) ||
      qcow2_meta_sort (&img->meta, err) < 0)
    goto fail;
  return img;

 fail:
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
  qcow2_meta_free (&img->meta);
  free (img->backing_file);
  free (img->backing_format);
  free (img);
}

/* ------------------------------------------------------------ clusters */

static int check_host_cluster (const struct qcow2_image *img, uint64_t g,
                               uint64_t off, struct qcow2_err *err)
{
  const struct qcow2_meta_range *m;
  if (!qcow2_aligned (img, off)) {
    qcow2_seterr (err, "qcow2: guest cluster %llu: host offset %#llx is not "
                  "cluster-aligned", (unsigned long long) g,
                  (unsigned long long) off);
    return -1;
  }
  if (!qcow2_in_file (img, off, img->cluster_size)) {
    qcow2_seterr (err, "qcow2: guest cluster %llu: host cluster %#llx is past "
                  "the end of the file", (unsigned long long) g,
                  (unsigned long long) off);
    return -1;
  }
  m = qcow2_meta_find (&img->meta, off, img->cluster_size);
  if (m) {
    qcow2_seterr (err, "qcow2: guest cluster %llu: host cluster %#llx "
                  "overlaps %s", (unsigned long long) g,
                  (unsigned long long) off, qcow2_meta_name (m->kind));
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
  const struct qcow2_meta_range *m;

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
  m = qcow2_meta_find (&img->meta, off, end - off);
  if (m) {
    qcow2_seterr (err, "qcow2: guest cluster %llu: compressed data at %#llx "
                  "overlaps %s", (unsigned long long) g,
                  (unsigned long long) off, qcow2_meta_name (m->kind));
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
    if (qcow2_read_at (img, img->l1[i], l2, img->cluster_size, "L2 table",
                       err) < 0) {
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

int qcow2_read_compressed (struct qcow2_image *img, const struct qcow2_cluster *c,
                           void *out, struct qcow2_err *err)
{
  uint8_t *buf;
  int ret;

  if (!c || c->kind != QCOW2_COMPRESSED || c->compressed_size == 0 ||
      c->compressed_size > qcow2_compressed_max (img->cluster_size) ||
      !qcow2_in_file (img, c->host_offset, c->compressed_size)) {
    qcow2_seterr (err, "qcow2: invalid compressed cluster descriptor");
    return -1;
  }
  buf = malloc (c->compressed_size);
  if (!buf) {
    qcow2_seterr (err, "qcow2: out of memory");
    return -1;
  }
  ret = qcow2_read_at (img, c->host_offset, buf, c->compressed_size,
                       "compressed cluster", err);
  if (ret == 0)
    ret = qcow2_decompress (img->compression, buf, c->compressed_size, out,
                            img->cluster_size, err);
  free (buf);
  return ret;
}
