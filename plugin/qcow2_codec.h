/* luacow: compressed qcow2 clusters, both directions (internal).
 *
 * One place for the limits the encoder and the decoder share: raw
 * deflate with a 4 KiB window (as qemu), zstd windows up to 2^27 bytes
 * (qemu's limit), the largest stream a compressed cluster descriptor can
 * describe, and how small a compressed cluster must be to be stored
 * compressed.  Cluster sizes: QCOW2_MIN/MAX_CLUSTER_BITS in qcow2.h.
 */
#ifndef LUACOW_QCOW2_CODEC_H
#define LUACOW_QCOW2_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "qcow2.h"

#define QCOW2_DEFLATE_WINDOW_BITS (-12)   /* raw deflate, 4 KiB window */
#define QCOW2_ZSTD_WINDOW_LOG_MAX 27      /* zstd's default, as qemu */

/* A descriptor counts up to 2^(cluster_bits - 8) sectors: two clusters. */
static inline uint64_t qcow2_compressed_max (uint32_t cluster_size)
{
  return 2 * (uint64_t) cluster_size;
}

/* The encoder stores a cluster compressed only in at most this many bytes. */
size_t qcow2_compress_limit (uint32_t cluster_size);

struct qcow2_compressor;

/* compress is QCOW2_COMPRESS_DEFLATE or QCOW2_COMPRESS_ZSTD. */
struct qcow2_compressor *qcow2_compressor_new (enum qcow2_compress compress,
                                               uint32_t cluster_size,
                                               struct qcow2_err *err);

/* Compress one cluster.  Returns 1 with the stream in *out (valid until
 * the next call) and its size in *len, 0 when it does not fit in
 * qcow2_compress_limit bytes (store it as is), -1 on error.
 */
int qcow2_compress (struct qcow2_compressor *c, const void *cluster,
                    const uint8_t **out, size_t *len, struct qcow2_err *err);

void qcow2_compressor_free (struct qcow2_compressor *c);

/* Decompress one cluster (cluster_size bytes into out) from len bytes at
 * src, as qemu does: the cluster must be filled; what follows in the
 * stream is not looked at.  Returns 0 or -1 with a one-line reason.
 */
int qcow2_decompress (enum qcow2_compress compress, const uint8_t *src,
                      size_t len, uint8_t *out, uint32_t cluster_size,
                      struct qcow2_err *err);

#endif /* LUACOW_QCOW2_CODEC_H */
