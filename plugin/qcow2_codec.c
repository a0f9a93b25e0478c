/* luacow: compressed qcow2 clusters, see qcow2_codec.h. */
#include <stdbool.h>
#include <stdlib.h>

#define ZLIB_CONST           /* next_in is const: no cast away of const */
#include <zlib.h>
#include <zstd.h>

#include "qcow2_codec.h"
#include "qcow2_common.h"

/* ------------------------------------------------------------ encoder */

struct qcow2_compressor {
  enum qcow2_compress compress;
  uint32_t cluster_size;
  size_t limit;                 /* qcow2_compress_limit */
  uint8_t *buf;                 /* limit bytes */
  z_stream zs;
  bool zs_ready;
  ZSTD_CCtx *zc;
};

/* Store compressed only if it saves at least a sector (an eighth of tiny
 * clusters): decompressing costs more than reading.
 */
size_t qcow2_compress_limit (uint32_t cluster_size)
{
  size_t save = cluster_size / 8 < QCOW2_SECTOR ? cluster_size / 8
                                                : QCOW2_SECTOR;
  return cluster_size - save;
}

struct qcow2_compressor *qcow2_compressor_new (enum qcow2_compress compress,
                                               uint32_t cluster_size,
                                               struct qcow2_err *err)
{
  struct qcow2_compressor *c = calloc (1, sizeof *c);
  if (!c) goto oom;
  c->compress = compress;
  c->cluster_size = cluster_size;
  c->limit = qcow2_compress_limit (cluster_size);
  c->buf = malloc (c->limit);
  if (!c->buf) goto oom;
  if (compress == QCOW2_COMPRESS_DEFLATE) {
    /* As qemu-img convert -c. */
    if (deflateInit2 (&c->zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED,
                      QCOW2_DEFLATE_WINDOW_BITS, 9,
                      Z_DEFAULT_STRATEGY) != Z_OK) {
      qcow2_seterr (err, "qcow2: deflateInit2 failed");
      qcow2_compressor_free (c);
      return NULL;
    }
    c->zs_ready = true;
  }
  else if (compress == QCOW2_COMPRESS_ZSTD) {
    c->zc = ZSTD_createCCtx ();
    if (!c->zc) goto oom;
  }
  else {
    qcow2_seterr (err, "qcow2: unknown compression %d", (int) compress);
    qcow2_compressor_free (c);
    return NULL;
  }
  return c;
 oom:
  qcow2_seterr (err, "qcow2: out of memory for the compressor");
  qcow2_compressor_free (c);
  return NULL;
}

static int deflate_cluster (struct qcow2_compressor *c, const void *cluster,
                            size_t *len, struct qcow2_err *err)
{
  int r;
  if (deflateReset (&c->zs) != Z_OK) {
    qcow2_seterr (err, "qcow2: deflateReset failed");
    return -1;
  }
  c->zs.next_in = (const Bytef *) cluster;
  c->zs.avail_in = c->cluster_size;
  c->zs.next_out = c->buf;
  c->zs.avail_out = (uInt) c->limit;
  r = deflate (&c->zs, Z_FINISH);
  if (r == Z_STREAM_END) {
    *len = c->limit - c->zs.avail_out;
    return 1;
  }
  if (r == Z_OK || r == Z_BUF_ERROR) return 0;  /* did not fit */
  qcow2_seterr (err, "qcow2: deflate failed (%d)", r);
  return -1;
}

static int zstd_cluster (struct qcow2_compressor *c, const void *cluster,
                         size_t *len, struct qcow2_err *err)
{
  ZSTD_inBuffer in = { cluster, c->cluster_size, 0 };
  ZSTD_outBuffer out = { c->buf, c->limit, 0 };
  size_t r = ZSTD_CCtx_reset (c->zc, ZSTD_reset_session_only);
  if (!ZSTD_isError (r))
    r = ZSTD_compressStream2 (c->zc, &out, &in, ZSTD_e_end);
  if (ZSTD_isError (r)) {
    qcow2_seterr (err, "qcow2: zstd: %s", ZSTD_getErrorName (r));
    return -1;
  }
  if (r != 0) return 0;         /* output did not fit */
  *len = out.pos;
  return 1;
}

int qcow2_compress (struct qcow2_compressor *c, const void *cluster,
                    const uint8_t **out, size_t *len, struct qcow2_err *err)
{
  int r = c->compress == QCOW2_COMPRESS_DEFLATE
          ? deflate_cluster (c, cluster, len, err)
          : zstd_cluster (c, cluster, len, err);
  if (r == 1) *out = c->buf;
  return r;
}

void qcow2_compressor_free (struct qcow2_compressor *c)
{
  if (!c) return;
  if (c->zs_ready) deflateEnd (&c->zs);
  ZSTD_freeCCtx (c->zc);
  free (c->buf);
  free (c);
}

/* ------------------------------------------------------------ decoder */

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
  if (inflateInit2 (&zs, QCOW2_DEFLATE_WINDOW_BITS) != Z_OK) {
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
 * end exactly there.  zstd allocates the window a frame declares (at
 * most 2^27 bytes); only the part written, about a cluster, is touched.
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
  r = ZSTD_DCtx_setParameter (dc, ZSTD_d_windowLogMax,
                              QCOW2_ZSTD_WINDOW_LOG_MAX);
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

int qcow2_decompress (enum qcow2_compress compress, const uint8_t *src,
                      size_t len, uint8_t *out, uint32_t cluster_size,
                      struct qcow2_err *err)
{
  if (len == 0 || len > qcow2_compressed_max (cluster_size)) {
    qcow2_seterr (err, "qcow2: invalid compressed cluster size %zu", len);
    return -1;
  }
  if (compress == QCOW2_COMPRESS_ZSTD)
    return unzstd_cluster (src, len, out, cluster_size, err);
  return inflate_cluster (src, len, out, cluster_size, err);
}
