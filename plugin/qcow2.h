/* luacow: the qcow2 format alone (encode, decode, validate).
 *
 * No nbdkit or Lua types here, so the format is unit-tested and fuzzed on
 * its own.  Reference: qemu's docs/interop/qcow2.txt.
 *
 * Errors are reported as one line of text (no trailing newline, no file
 * name: the caller prefixes the path) in a caller-provided buffer.
 */
#ifndef LUACOW_QCOW2_H
#define LUACOW_QCOW2_H

#include <stddef.h>
#include <stdint.h>

#define QCOW2_MIN_CLUSTER_BITS 9   /* 512 B */
#define QCOW2_MAX_CLUSTER_BITS 21  /* 2 MiB */
#define QCOW2_ERRLEN 256

struct qcow2_err { char msg[QCOW2_ERRLEN]; };

enum qcow2_compress {
  QCOW2_COMPRESS_NONE = 0,
  QCOW2_COMPRESS_DEFLATE,   /* raw deflate, window bits -12, as qemu-img convert -c */
  QCOW2_COMPRESS_ZSTD,      /* compression type 1 */
};

/* ---------------------------------------------------------------- encoder */

struct qcow2_write_options {
  uint64_t virtual_size;
  uint32_t cluster_size;          /* power of two, 512 .. 2 MiB */
  enum qcow2_compress compress;
  const char *backing_file;       /* NULL: no backing file in the header */
  const char *backing_format;     /* NULL or e.g. "raw"; only with backing_file */
};

struct qcow2_write_stats {
  uint64_t data_clusters;         /* allocated guest clusters (incl. compressed) */
  uint64_t compressed_clusters;   /* of which stored compressed */
  uint64_t zero_clusters;
  uint64_t file_bytes;            /* final file size */
};

struct qcow2_writer;

/* Start writing a new image to fd (an empty regular file opened O_RDWR).
 * Returns NULL and fills err on failure (bad options, export too large for
 * the cluster size, backing name too long for the header cluster...).
 */
struct qcow2_writer *qcow2_writer_new (int fd,
                                       const struct qcow2_write_options *opts,
                                       struct qcow2_err *err);

/* Add guest clusters in strictly increasing guest cluster index order.
 * add_data takes exactly cluster_size bytes (the tail of the last cluster
 * past virtual_size must be zero).  Clusters never added stay unallocated.
 * Return 0 or -1 with err filled (I/O errors include strerror).
 */
int qcow2_writer_add_data (struct qcow2_writer *w, uint64_t guest_cluster,
                           const void *buf, struct qcow2_err *err);
int qcow2_writer_add_zero (struct qcow2_writer *w, uint64_t guest_cluster,
                           struct qcow2_err *err);

/* Write remaining L2 tables, L1, refcount structures and the header.
 * Does not fsync: the caller owns durability and renaming.
 */
int qcow2_writer_finish (struct qcow2_writer *w, struct qcow2_write_stats *stats,
                         struct qcow2_err *err);

void qcow2_writer_free (struct qcow2_writer *w);

/* ---------------------------------------------------------------- decoder */

enum qcow2_kind {
  QCOW2_UNALLOCATED = 0,  /* reads through to the backing (the plugin below) */
  QCOW2_ZERO,             /* reads as zeroes (v3 zero flag, with or without host cluster) */
  QCOW2_DATA,             /* cluster_size bytes at host_offset */
  QCOW2_COMPRESSED,       /* compressed_size bytes at host_offset; see qcow2_read_compressed */
};

struct qcow2_cluster {
  enum qcow2_kind kind;
  uint64_t host_offset;
  uint64_t compressed_size;  /* bytes to read, already clamped to the file end */
};

struct qcow2_image;

/* Validate header, extensions, L1, refcount table, refcount blocks,
 * snapshot table of the image in fd.  The file is hostile: every offset is
 * bounds-checked; on any problem returns NULL with a one-line reason.
 * The fd stays owned by the caller and must outlive the image.
 */
struct qcow2_image *qcow2_open (int fd, struct qcow2_err *err);

/* Files we write store the header size rounded up to 512 bytes (qemu
 * only sees whole sectors) and the exact size in a private header
 * extension: for them this returns opts.virtual_size exactly.
 */
uint64_t qcow2_virtual_size (const struct qcow2_image *img);
uint32_t qcow2_cluster_size (const struct qcow2_image *img);
int qcow2_version (const struct qcow2_image *img);        /* 2 or 3 */
enum qcow2_compress qcow2_compression (const struct qcow2_image *img);
const char *qcow2_backing_file (const struct qcow2_image *img); /* NULL if none */
const char *qcow2_backing_format (const struct qcow2_image *img); /* NULL if none */

/* Call fn once for every guest cluster that is not unallocated, in
 * increasing guest order, validating each L2 table and entry first
 * (alignment, reserved bits, inside the file, not overlapping metadata).
 * Stops and returns -1 with err filled on the first bad entry, or returns
 * fn's non-zero value if fn asks to stop.  Returns 0 when done.
 */
typedef int (*qcow2_cluster_fn) (void *opaque, uint64_t guest_cluster,
                                 const struct qcow2_cluster *c);
int qcow2_for_each_cluster (struct qcow2_image *img, qcow2_cluster_fn fn,
                            void *opaque, struct qcow2_err *err);

/* Inflate one compressed cluster into out (cluster_size bytes). Fails
 * cleanly on corrupt streams or output that is not exactly cluster_size.
 */
int qcow2_read_compressed (struct qcow2_image *img, const struct qcow2_cluster *c,
                           void *out, struct qcow2_err *err);

void qcow2_close (struct qcow2_image *img);

#endif /* LUACOW_QCOW2_H */
