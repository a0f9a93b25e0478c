/* luacow: qcow2 on-disk constants and helpers shared by the encoder and
 * the decoder (internal; not part of the qcow2.h contract).
 * Reference: qemu's docs/interop/qcow2.txt.
 */
#ifndef LUACOW_QCOW2_COMMON_H
#define LUACOW_QCOW2_COMMON_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

#include "qcow2.h"

#define QCOW2_MAGIC 0x514649fbu            /* "QFI\xfb" */
#define QCOW2_V2_HEADER_LEN 72u
#define QCOW2_V3_MIN_HEADER_LEN 104u
#define QCOW2_V3_HEADER_LEN 112u           /* with compression_type + padding */
#define QCOW2_MAX_BACKING_NAME 1023u

/* Header field offsets. */
enum {
  HDR_MAGIC = 0, HDR_VERSION = 4, HDR_BACKING_OFFSET = 8, HDR_BACKING_SIZE = 16,
  HDR_CLUSTER_BITS = 20, HDR_SIZE = 24, HDR_CRYPT = 32, HDR_L1_SIZE = 36,
  HDR_L1_OFFSET = 40, HDR_REFTABLE_OFFSET = 48, HDR_REFTABLE_CLUSTERS = 56,
  HDR_NB_SNAPSHOTS = 60, HDR_SNAPSHOTS_OFFSET = 64, HDR_INCOMPAT = 72,
  HDR_COMPAT = 80, HDR_AUTOCLEAR = 88, HDR_REFCOUNT_ORDER = 96,
  HDR_HEADER_LENGTH = 100, HDR_COMPRESSION_TYPE = 104,
};

/* Header extension types. */
#define QCOW2_EXT_END 0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE 0x6803f857u
#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_CRYPTO 0x0537be77u
#define QCOW2_EXT_DATA_FILE 0x44415441u
/* luacow's own extension: the exact virtual size (8 bytes, big-endian)
 * when it is not a whole number of sectors.  qemu ignores unknown
 * extensions and sees the header size, rounded up to 512 bytes.
 */
#define QCOW2_EXT_LUACOW_SIZE 0x6c636f77u   /* "lcow" */

/* Incompatible feature bits. */
#define QCOW2_INCOMPAT_DIRTY (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2 (1ull << 4)

/* Autoclear feature bits. */
#define QCOW2_AUTOCLEAR_BITMAPS (1ull << 0)

#define QCOW2_COMPRESSION_TYPE_ZLIB 0
#define QCOW2_COMPRESSION_TYPE_ZSTD 1

/* L1/L2/refcount table entry bits. */
#define QCOW2_OFLAG_COPIED (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO (1ull << 0)
#define QCOW2_OFFSET_MASK 0x00fffffffffffe00ull      /* bits 9..55 */
#define QCOW2_L1E_RESERVED 0x7f000000000001ffull     /* bits 0..8, 56..62 */
#define QCOW2_L2E_STD_RESERVED 0x3f000000000001feull /* bits 1..8, 56..61 */
#define QCOW2_REFTE_RESERVED 0x1ffull                /* bits 0..8 */
#define QCOW2_MAX_HOST_OFFSET (1ull << 56)

/* qemu implementation limits, which we share so qemu opens what we write
 * and so a hostile file cannot make us allocate more than qemu would.
 */
#define QCOW2_MAX_L1_BYTES (32u * 1024 * 1024)
#define QCOW2_MAX_REFTABLE_BYTES ((uint64_t) 8 << 20)
#define QCOW2_MAX_SNAPSHOTS 65536u
#define QCOW2_MAX_SNAPSHOT_TABLE_BYTES ((uint64_t) 1024 * 65536)
#define QCOW2_MAX_SNAPSHOT_EXTRA 1024u
#define QCOW2_MAX_BITMAPS 65535u
#define QCOW2_MAX_BITMAP_DIR_BYTES ((uint64_t) 1024 * 65535)

#define QCOW2_SECTOR 512u

/* Compressed cluster descriptor layout for a given cluster size. */
static inline unsigned qcow2_csize_shift (unsigned cluster_bits)
{
  return 62 - (cluster_bits - 8);
}
static inline uint64_t qcow2_coffset_mask (unsigned cluster_bits)
{
  return (1ull << qcow2_csize_shift (cluster_bits)) - 1;
}
static inline uint64_t qcow2_csize_mask (unsigned cluster_bits)
{
  return (1ull << (cluster_bits - 8)) - 1;
}

static inline uint16_t get_be16 (const uint8_t *p)
{
  return (uint16_t) ((unsigned) p[0] << 8 | p[1]);
}
static inline uint32_t get_be32 (const uint8_t *p)
{
  return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 |
         (uint32_t) p[2] << 8 | p[3];
}
static inline uint64_t get_be64 (const uint8_t *p)
{
  return (uint64_t) get_be32 (p) << 32 | get_be32 (p + 4);
}
static inline void put_be16 (uint8_t *p, uint16_t v)
{
  p[0] = (uint8_t) (v >> 8);
  p[1] = (uint8_t) v;
}
static inline void put_be32 (uint8_t *p, uint32_t v)
{
  p[0] = (uint8_t) (v >> 24);
  p[1] = (uint8_t) (v >> 16);
  p[2] = (uint8_t) (v >> 8);
  p[3] = (uint8_t) v;
}
static inline void put_be64 (uint8_t *p, uint64_t v)
{
  put_be32 (p, (uint32_t) (v >> 32));
  put_be32 (p + 4, (uint32_t) v);
}

static inline uint64_t div_round_up (uint64_t a, uint64_t b)
{
  return a / b + (a % b != 0);
}

/* One-line error message; err may be NULL. */
static inline void qcow2_seterr (struct qcow2_err *err, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
static inline void qcow2_seterr (struct qcow2_err *err, const char *fmt, ...)
{
  va_list ap;
  if (!err) return;
  va_start (ap, fmt);
  vsnprintf (err->msg, sizeof err->msg, fmt, ap);
  va_end (ap);
}

#endif /* LUACOW_QCOW2_COMMON_H */
