/* luacow: the decoder's image state, shared by its files (internal; the
 * contract is qcow2.h).
 *
 *   qcow2_header.c   header cluster: fields, features, extensions, backing
 *   qcow2_read.c     open, refcount/L1/snapshot tables, cluster walk
 *   qcow2_meta.c     the metadata ranges that must not overlap
 *   qcow2_codec.c    compressed cluster streams (shared with the encoder)
 */
#ifndef LUACOW_QCOW2_IMAGE_H
#define LUACOW_QCOW2_IMAGE_H

#include <stdbool.h>
#include <stdint.h>

#include "qcow2.h"
#include "qcow2_meta.h"

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

  struct qcow2_meta meta;
};

/* What the header cluster says, for the table parsers. */
struct qcow2_header {
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

/* img->fd and img->file_size are set: read and check the header cluster,
 * filling img (version, cluster size, sizes, compression, backing) and hd.
 */
int qcow2_parse_header (struct qcow2_image *img, struct qcow2_header *hd,
                        struct qcow2_err *err);

/* Read exactly len bytes at off (checked to lie inside the file). */
int qcow2_read_at (const struct qcow2_image *img, uint64_t off, void *buf,
                   size_t len, const char *what, struct qcow2_err *err);

/* A table (L1, refcount table, bitmap directory...): cluster-aligned and
 * its len bytes inside the file.
 */
int qcow2_check_table (const struct qcow2_image *img, uint64_t off,
                       uint64_t len, const char *what, struct qcow2_err *err);

/* True when [off, off + len) lies inside the file, without overflow. */
static inline bool qcow2_in_file (const struct qcow2_image *img, uint64_t off,
                                  uint64_t len)
{
  return off <= img->file_size && len <= img->file_size - off;
}

static inline bool qcow2_aligned (const struct qcow2_image *img, uint64_t off)
{
  return (off & (img->cluster_size - 1)) == 0;
}

#endif /* LUACOW_QCOW2_IMAGE_H */
