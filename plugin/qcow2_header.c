/* luacow: the qcow2 header cluster (decoder side): the fixed header,
 * feature bits, compression type, sizes, header extensions and the
 * backing file name.  The cluster is read whole and every field is
 * checked against it before use.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"
#include "qcow2_common.h"
#include "qcow2_image.h"

/* ------------------------------------------------------- fixed header */

/* Magic, version and cluster size, from the first 72 bytes. */
static int parse_start (struct qcow2_image *img, struct qcow2_err *err)
{
  uint8_t fixed[QCOW2_V2_HEADER_LEN];
  uint32_t magic, version, bits;

  if (img->file_size < sizeof fixed) {
    qcow2_seterr (err, "qcow2: file too small for a qcow2 header (%llu bytes)",
                  (unsigned long long) img->file_size);
    return -1;
  }
  if (qcow2_read_at (img, 0, fixed, sizeof fixed, "header", err) < 0)
    return -1;
  magic = get_be32 (fixed + HDR_MAGIC);
  version = get_be32 (fixed + HDR_VERSION);
  bits = get_be32 (fixed + HDR_CLUSTER_BITS);
  if (magic != QCOW2_MAGIC) {
    qcow2_seterr (err, "qcow2: bad magic (not a qcow2 image)");
    return -1;
  }
  if (version != 2 && version != 3) {
    qcow2_seterr (err, "qcow2: unsupported version %u", version);
    return -1;
  }
  if (bits < QCOW2_MIN_CLUSTER_BITS || bits > QCOW2_MAX_CLUSTER_BITS) {
    qcow2_seterr (err, "qcow2: unsupported cluster_bits %u (9..21)", bits);
    return -1;
  }
  img->version = (int) version;
  img->cluster_bits = bits;
  img->cluster_size = 1u << bits;
  /* Every valid image has at least the header and refcount clusters. */
  if (img->file_size < img->cluster_size) {
    qcow2_seterr (err, "qcow2: file is shorter than one cluster");
    return -1;
  }
  return 0;
}

static void read_fields (const struct qcow2_image *img, const uint8_t *h,
                         struct qcow2_header *hd)
{
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
  }
  else {
    hd->refcount_order = 4;
    hd->header_length = QCOW2_V2_HEADER_LEN;
  }
}

/* v3: header length, compression type byte and its padding, refcount width. */
static int check_v3_fields (const struct qcow2_image *img, const uint8_t *h,
                            struct qcow2_header *hd, struct qcow2_err *err)
{
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
  return 0;
}

/* Incompatible feature bits we cannot read. */
static int check_features (const struct qcow2_header *hd, struct qcow2_err *err)
{
  uint64_t unknown;
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
  return 0;
}

/* The compression type byte must agree with its feature bit. */
static int set_compression (struct qcow2_image *img,
                            const struct qcow2_header *hd,
                            struct qcow2_err *err)
{
  bool bit = (hd->incompat & QCOW2_INCOMPAT_COMPRESSION) != 0;
  if (hd->compression_type == QCOW2_COMPRESSION_TYPE_ZLIB) {
    if (bit) {
      qcow2_seterr (err, "qcow2: compression type bit set with zlib "
                    "compression");
      return -1;
    }
    img->compression = QCOW2_COMPRESS_DEFLATE;
    return 0;
  }
  if (hd->compression_type == QCOW2_COMPRESSION_TYPE_ZSTD) {
    if (!bit) {
      qcow2_seterr (err, "qcow2: zstd compression without the compression "
                    "type feature bit");
      return -1;
    }
    img->compression = QCOW2_COMPRESS_ZSTD;
    return 0;
  }
  qcow2_seterr (err, "qcow2: unknown compression type %u",
                hd->compression_type);
  return -1;
}

static int check_crypt (const struct qcow2_header *hd, struct qcow2_err *err)
{
  if (hd->crypt_method == 0) return 0;
  qcow2_seterr (err, "qcow2: encrypted images are not supported "
                "(crypt_method %u)", hd->crypt_method);
  return -1;
}

/* Virtual size, and an L1 table that covers it within qemu's limit. */
static int set_sizes (struct qcow2_image *img, const struct qcow2_header *hd,
                      struct qcow2_err *err)
{
  uint64_t l1_needed;
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

/* ---------------------------------------------------------- extensions */

struct ext_seen { bool format, features, size; };

static int ext_backing_format (struct qcow2_image *img, const uint8_t *p,
                               uint32_t len, struct ext_seen *seen,
                               struct qcow2_err *err)
{
  if (seen->format) {
    qcow2_seterr (err, "qcow2: duplicate backing format extension");
    return -1;
  }
  seen->format = true;
  if (len == 0 || memchr (p, 0, len)) {
    qcow2_seterr (err, "qcow2: invalid backing format name");
    return -1;
  }
  img->backing_format = strndup ((const char *) p, len);
  if (!img->backing_format) {
    qcow2_seterr (err, "qcow2: out of memory");
    return -1;
  }
  return 0;
}

static int ext_bitmaps (const struct qcow2_image *img, const uint8_t *p,
                        uint32_t len, struct qcow2_header *hd,
                        struct qcow2_err *err)
{
  uint32_t nb;
  if (hd->seen_bitmaps) {
    qcow2_seterr (err, "qcow2: duplicate bitmaps extension");
    return -1;
  }
  if (len < 24) {
    qcow2_seterr (err, "qcow2: bitmaps extension too short (%u bytes)", len);
    return -1;
  }
  hd->seen_bitmaps = true;
  /* Autoclear bit 0 clear (always in v2): a program without bitmap
   * support wrote the file after the bitmaps, so the spec says their data
   * is inconsistent; it is ignored, the directory's clusters may since
   * hold anything (qemu-img check -r frees them).
   */
  if (!(hd->autoclear & QCOW2_AUTOCLEAR_BITMAPS)) return 0;
  nb = get_be32 (p);
  hd->bitmap_dir_size = get_be64 (p + 8);
  hd->bitmap_dir_offset = get_be64 (p + 16);
  if (nb == 0 || nb > QCOW2_MAX_BITMAPS || get_be32 (p + 4) != 0 ||
      hd->bitmap_dir_size == 0 ||
      hd->bitmap_dir_size > QCOW2_MAX_BITMAP_DIR_BYTES) {
    qcow2_seterr (err, "qcow2: invalid bitmaps extension");
    return -1;
  }
  if (qcow2_check_table (img, hd->bitmap_dir_offset, hd->bitmap_dir_size,
                         "bitmap directory", err) < 0)
    return -1;
  hd->has_bitmaps = true;
  return 0;
}

static int ext_luacow_size (struct qcow2_image *img, const uint8_t *p,
                            uint32_t len, struct ext_seen *seen,
                            struct qcow2_err *err)
{
  uint64_t v;
  if (seen->size || len != 8) {
    qcow2_seterr (err, "qcow2: invalid luacow size extension");
    return -1;
  }
  seen->size = true;
  /* Only while it still agrees with the header (qemu-img resize keeps
   * unknown extensions but changes the size).
   */
  v = get_be64 (p);
  if (v < img->virtual_size && img->virtual_size - v < QCOW2_SECTOR &&
      img->virtual_size % QCOW2_SECTOR == 0)
    img->virtual_size = v;
  return 0;
}

static int parse_extension (struct qcow2_image *img, uint32_t type,
                            const uint8_t *p, uint32_t len,
                            struct qcow2_header *hd, struct ext_seen *seen,
                            struct qcow2_err *err)
{
  switch (type) {
  case QCOW2_EXT_BACKING_FORMAT:
    return ext_backing_format (img, p, len, seen, err);
  case QCOW2_EXT_FEATURE_TABLE:
    if (seen->features) {
      qcow2_seterr (err, "qcow2: duplicate feature name table extension");
      return -1;
    }
    seen->features = true;
    return 0;
  case QCOW2_EXT_BITMAPS:
    return ext_bitmaps (img, p, len, hd, err);
  case QCOW2_EXT_LUACOW_SIZE:
    return ext_luacow_size (img, p, len, seen, err);
  case QCOW2_EXT_CRYPTO:
    qcow2_seterr (err, "qcow2: encryption header extension present");
    return -1;
  case QCOW2_EXT_DATA_FILE:
    qcow2_seterr (err, "qcow2: external data file extension present");
    return -1;
  default:
    return 0;                   /* unknown extensions may be ignored */
  }
}

/* Header extensions live between the header and the backing file name
 * (or the end of cluster 0).
 */
static int parse_extensions (struct qcow2_image *img, const uint8_t *h,
                             struct qcow2_header *hd, struct qcow2_err *err)
{
  uint64_t off = hd->header_length;
  uint64_t end = hd->backing_offset ? hd->backing_offset : img->cluster_size;
  struct ext_seen seen = { false, false, false };

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
    if (parse_extension (img, type, h + off, len, hd, &seen, err) < 0)
      return -1;
    off += ((uint64_t) len + 7) & ~(uint64_t) 7;
  }
  return 0;
}

/* ------------------------------------------------------------- backing */

static int parse_backing (struct qcow2_image *img, const uint8_t *h,
                          const struct qcow2_header *hd, struct qcow2_err *err)
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

/* -------------------------------------------------------------- entry */

int qcow2_parse_header (struct qcow2_image *img, struct qcow2_header *hd,
                        struct qcow2_err *err)
{
  uint8_t *h;
  int r = -1;

  if (parse_start (img, err) < 0) return -1;
  h = malloc (img->cluster_size);
  if (!h) {
    qcow2_seterr (err, "qcow2: out of memory");
    return -1;
  }
  if (qcow2_read_at (img, 0, h, img->cluster_size, "header cluster", err) < 0)
    goto out;
  read_fields (img, h, hd);
  if ((img->version == 3 && check_v3_fields (img, h, hd, err) < 0) ||
      check_features (hd, err) < 0 ||
      set_compression (img, hd, err) < 0 ||
      check_crypt (hd, err) < 0 ||
      set_sizes (img, hd, err) < 0 ||
      parse_extensions (img, h, hd, err) < 0 ||
      parse_backing (img, h, hd, err) < 0)
    goto out;
  r = 0;
 out:
  free (h);
  return r;
}
