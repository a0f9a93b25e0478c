/* luacow: reload a qcow2 into the overlay, see load.h. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "clock.h"
#include "fullio.h"
#include "load.h"
#include "qcow2.h"

#define MAX_SUB 8             /* 4 KiB block / 512 B clusters */

struct loader {
  struct overlay *ov;
  const struct ov_lower *lower;
  struct qcow2_image *img;
  int fd;
  uint64_t size;
  uint32_t bs, cs;
  char *cluster_buf;          /* one decompressed cluster */
  char *block_buf;
  /* Clusters smaller than a block: the sub-clusters of the pending block. */
  uint64_t pending;           /* block index, valid when npending > 0 */
  unsigned npending;
  struct { uint64_t index; struct qcow2_cluster c; } sub[MAX_SUB];
  struct load_result *res;
  uint64_t file_bytes;        /* for progress lines */
  char *err;
  double start, last_report;
};

/* "<what> <n>: <why>", e.g. "cluster 12: cannot record data blocks". */
static int
fail (struct loader *l, const char *what, uint64_t n, const char *why)
{
  snprintf (l->err, LOAD_ERRLEN, "%s %" PRIu64 ": %s", what, n, why);
  return -1;
}

/* Fill out (cs bytes) with guest cluster c's content from the file. */
static int
read_cluster (struct loader *l, const struct qcow2_cluster *c, char *out)
{
  struct qcow2_err qerr;
  if (c->kind == QCOW2_ZERO) {
    memset (out, 0, l->cs);
    return 0;
  }
  if (c->kind == QCOW2_DATA) {
    if (full_pread (l->fd, out, l->cs, c->host_offset) == -1)
      return fail (l, "reading data at", c->host_offset, strerror (errno));
    return 0;
  }
  if (qcow2_read_compressed (l->img, c, out, &qerr) == -1)
    return fail (l, "compressed cluster at", c->host_offset, qerr.msg);
  return 0;
}

/* Clusters at least as big as a block: each block of the cluster maps
 * directly.
 */
static int
load_big_cluster (struct loader *l, uint64_t guest, const struct qcow2_cluster *c)
{
  uint64_t off = guest * l->cs;
  uint64_t end = off + l->cs < l->size ? off + l->cs : l->size;
  uint64_t b0 = off / l->bs, nb = (end - off + l->bs - 1) / l->bs;
  int e = 0;
  switch (c->kind) {
  case QCOW2_ZERO:
    if (overlay_set_zero_blocks (l->ov, b0, nb) == -1)
      return fail (l, "cluster", guest, "cannot record zero blocks");
    return 0;
  case QCOW2_DATA:
    for (uint64_t i = 0; i < nb; ++i)
      if (overlay_set_file_block (l->ov, b0 + i, c->host_offset + i * l->bs) == -1)
        return fail (l, "cluster", guest, "cannot record data blocks");
    return 0;
  default:
    if (read_cluster (l, c, l->cluster_buf) == -1)
      return -1;
    for (uint64_t i = 0; i < nb; ++i)
      if (overlay_put_block (l->ov, b0 + i, l->cluster_buf + i * l->bs, &e) == -1)
        return fail (l, "storing cluster", guest, strerror (e));
    return 0;
  }
}

/* Clusters smaller than a block: decide the pending block from its
 * sub-clusters (missing ones are unallocated).
 */
static int
finish_block (struct loader *l)
{
  if (l->npending == 0)
    return 0;
  uint64_t b = l->pending, off = b * l->bs;
  uint64_t end = off + l->bs < l->size ? off + l->bs : l->size;
  unsigned want = (unsigned) ((end - off + l->cs - 1) / l->cs);
  unsigned n = l->npending;
  l->npending = 0;
  bool all_zero = n == want, contiguous = n == want;
  for (unsigned i = 0; i < n; ++i) {
    all_zero = all_zero && l->sub[i].c.kind == QCOW2_ZERO;
    contiguous = contiguous && l->sub[i].c.kind == QCOW2_DATA &&
      l->sub[i].c.host_offset == l->sub[0].c.host_offset + (uint64_t) i * l->cs;
  }
  if (all_zero)
    return overlay_set_zero_blocks (l->ov, b, 1) == -1
      ? fail (l, "block", b, "cannot record zero block") : 0;
  if (contiguous)
    return overlay_set_file_block (l->ov, b, l->sub[0].c.host_offset) == -1
      ? fail (l, "block", b, "cannot record data block") : 0;
  /* Mixed: build the block, reading unallocated parts from below. */
  int e = 0;
  if (l->lower->pread (l->lower->handle, l->block_buf, (uint32_t) (end - off), off, &e) == -1)
    return fail (l, "reading from the plugin: block", b, strerror (e ? e : EIO));
  for (unsigned i = 0; i < n; ++i) {
    uint64_t at = l->sub[i].index * l->cs - off;
    if (read_cluster (l, &l->sub[i].c, l->cluster_buf) == -1)
      return -1;
    memcpy (l->block_buf + at, l->cluster_buf, end - off - at < l->cs ? end - off - at : l->cs);
  }
  if (overlay_put_block (l->ov, b, l->block_buf, &e) == -1)
    return fail (l, "storing block", b, strerror (e));
  return 0;
}

static int
on_cluster (void *opaque, uint64_t guest, const struct qcow2_cluster *c)
{
  struct loader *l = opaque;
  int r;
  if (guest * (uint64_t) l->cs >= l->size)     /* past the export: nothing to hold it */
    return 0;
  if (c->kind == QCOW2_ZERO)
    l->res->zero_clusters++;
  else {
    l->res->data_clusters++;
    l->res->bytes += l->cs;
    if (c->kind == QCOW2_COMPRESSED)
      l->res->compressed_clusters++;
  }
  if (l->cs >= l->bs)
    r = load_big_cluster (l, guest, c);
  else {
    uint64_t b = guest * l->cs / l->bs;
    if (l->npending && l->pending != b && (r = finish_block (l)) != 0)
      return r;
    l->pending = b;
    l->sub[l->npending].index = guest;
    l->sub[l->npending].c = *c;
    l->npending++;
    r = 0;
  }
  double t = monotonic_seconds ();
  if (r == 0 && t - l->start > 2 && t - l->last_report >= 2) {
    nbdkit_debug ("luacow: reloading: %" PRIu64 " clusters, %" PRIu64 "/%" PRIu64
                  " MiB of the file, %.0f MiB/s",
                  l->res->data_clusters + l->res->zero_clusters,
                  l->res->bytes >> 20, l->file_bytes >> 20,
                  (double) l->res->bytes / (1 << 20) / (t - l->start));
    l->last_report = t;
  }
  return r;
}

int
load_overlay (struct overlay *ov, const struct ov_lower *lower, const char *path,
              struct load_result *res, char err[LOAD_ERRLEN])
{
  struct loader l = { .ov = ov, .lower = lower, .res = res, .err = err,
                      .size = overlay_size (ov), .bs = overlay_block_size (ov) };
  struct qcow2_err qerr;
  int r = -1;
  memset (res, 0, sizeof *res);
  res->fd = -1;
  l.start = l.last_report = monotonic_seconds ();
  err[0] = '\0';

  l.fd = open (path, O_RDONLY | O_CLOEXEC);
  if (l.fd == -1) {
    snprintf (err, LOAD_ERRLEN, "cannot open: %s", strerror (errno));
    return -1;
  }
  struct stat sb;
  if (fstat (l.fd, &sb) == 0)
    l.file_bytes = (uint64_t) sb.st_size;
  l.img = qcow2_open (l.fd, &qerr);
  if (!l.img) {
    snprintf (err, LOAD_ERRLEN, "%s", qerr.msg);
    goto out;
  }
  /* qemu keeps whole sectors only, so a file it wrote for an export of
   * odd size says the size rounded up to 512: that is the same disk.
   */
  uint64_t vsize = qcow2_virtual_size (l.img);
  if (vsize != l.size && !(l.size % 512 && vsize == (l.size | 511) + 1)) {
    snprintf (err, LOAD_ERRLEN, "virtual size %" PRIu64 " differs from the export size %" PRIu64,
              vsize, l.size);
    goto out;
  }
  l.cs = qcow2_cluster_size (l.img);
  res->cluster_size = l.cs;
  l.cluster_buf = malloc (l.cs);
  l.block_buf = malloc (l.bs);
  if (!l.cluster_buf || !l.block_buf) {
    snprintf (err, LOAD_ERRLEN, "out of memory");
    goto out;
  }
  overlay_attach_file (ov, l.fd);
  int fr = qcow2_for_each_cluster (l.img, on_cluster, &l, &qerr);
  if (fr == -1 && err[0] == '\0')
    snprintf (err, LOAD_ERRLEN, "%s", qerr.msg);
  if (fr != 0 || finish_block (&l) != 0)
    goto out;
  res->seconds = monotonic_seconds () - l.start;
  res->fd = l.fd;
  r = 0;
 out:
  if (l.img)
    qcow2_close (l.img);
  free (l.cluster_buf);
  free (l.block_buf);
  if (r == -1) {
    overlay_attach_file (ov, -1);   /* the overlay owns it only on success */
    close (l.fd);
  }
  return r;
}
