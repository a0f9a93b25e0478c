/* luacow: save the overlay as qcow2, see save.h. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "clock.h"
#include "save.h"
#include "savefile.h"

enum cluster_class { CL_NONE, CL_ZERO, CL_DATA };
typedef int (*cluster_fn) (void *opaque, uint64_t cluster, enum cluster_class cls);

/* Classifies clusters from the overlay's runs: a cluster holding any data,
 * or zero and clean blocks mixed, must be written whole (clean parts
 * completed from below); all-zero clusters become zero clusters; all-clean
 * ones stay unallocated and are skipped without a visit.
 */
struct walk {
  uint64_t size;
  uint32_t cs;
  uint64_t cur;
  bool active, has_clean, has_zero, has_data;
  cluster_fn fn;
  void *opaque;
};

static int
finish_cluster (struct walk *w)
{
  if (!w->active)
    return 0;
  enum cluster_class c = w->has_data || (w->has_zero && w->has_clean) ? CL_DATA
    : w->has_zero ? CL_ZERO : CL_NONE;
  w->active = w->has_clean = w->has_zero = w->has_data = false;
  return c == CL_NONE ? 0 : w->fn (w->opaque, w->cur, c);
}

static int
walk_run (void *opaque, enum ov_kind kind, uint64_t off, uint64_t len)
{
  struct walk *w = opaque;
  uint64_t end = off + len;
  while (off < end) {
    uint64_t c = off / w->cs;
    uint64_t cend = (c + 1) * w->cs < w->size ? (c + 1) * w->cs : w->size;
    int r;
    if (w->active && w->cur != c && (r = finish_cluster (w)) != 0)
      return r;
    w->active = true;
    w->cur = c;
    w->has_clean |= kind == OV_CLEAN;
    w->has_zero |= kind == OV_ZERO;
    w->has_data |= kind == OV_DATA;
    if (end < cend)
      break;                  /* the cluster goes on in the next run */
    if ((r = finish_cluster (w)) != 0)
      return r;
    off = cend;
    if (kind == OV_CLEAN && end / w->cs * w->cs > off)
      off = end / w->cs * w->cs;   /* whole clean clusters: nothing to do */
  }
  return 0;
}

/* The clusters from off (a multiple of cs) for len bytes. */
static int
walk_range (const struct overlay *ov, uint32_t cs, uint64_t off, uint64_t len,
            cluster_fn fn, void *opaque)
{
  struct walk w = { .size = overlay_size (ov), .cs = cs, .fn = fn, .opaque = opaque };
  int r = overlay_map (ov, off, len, walk_run, &w);
  return r ? r : finish_cluster (&w);
}

static int
walk_clusters (const struct overlay *ov, uint32_t cs, cluster_fn fn, void *opaque)
{
  return walk_range (ov, cs, 0, overlay_size (ov), fn, opaque);
}

struct counts { uint64_t data, zero; };

static int
count_cluster (void *opaque, uint64_t cluster, enum cluster_class cls)
{
  struct counts *n = opaque;
  (void) cluster;
  if (cls == CL_DATA) n->data++;
  else n->zero++;
  return 0;
}

void
save_count (const struct overlay *ov, uint32_t cs, uint64_t *data, uint64_t *zero)
{
  struct counts n = { 0, 0 };
  walk_clusters (ov, cs, count_cluster, &n);
  *data = n.data;
  *zero = n.zero;
}

struct job {
  struct overlay *ov;
  const struct ov_lower *lower;
  struct qcow2_writer *w;
  const struct save_request *req;
  char *buf;
  char *err;
  uint64_t done, total;       /* data clusters, for progress lines */
  double start, last_report;
};

static int
save_cluster (void *opaque, uint64_t cluster, enum cluster_class cls)
{
  struct job *j = opaque;
  struct qcow2_err qerr;
  if (cls == CL_ZERO) {
    if (qcow2_writer_add_zero (j->w, cluster, &qerr) == -1)
      goto qfail;
    return 0;
  }
  uint64_t cs = j->req->cluster_size, off = cluster * cs;
  uint64_t size = overlay_size (j->ov);
  uint64_t len = size - off < cs ? size - off : cs;
  int e = 0;
  if (overlay_pread (j->ov, j->lower, j->buf, (uint32_t) len, off, &e) == -1) {
    snprintf (j->err, SAVE_ERRLEN, "reading cluster %" PRIu64 " (offset %" PRIu64 ") failed: %s",
              cluster, off, strerror (e ? e : EIO));
    return -1;
  }
  memset (j->buf + len, 0, cs - len);
  if (qcow2_writer_add_data (j->w, cluster, j->buf, &qerr) == -1)
    goto qfail;
  j->done++;
  double t = monotonic_seconds ();
  if (t - j->start > 2 && t - j->last_report >= 2) {
    double mib = (double) (j->done * cs) / (1 << 20);
    nbdkit_debug ("luacow: saving %s: %" PRIu64 "/%" PRIu64 " clusters, %.0f MiB/s",
                  j->req->path, j->done, j->total, mib / (t - j->start));
    j->last_report = t;
  }
  return 0;
 qfail:
  snprintf (j->err, SAVE_ERRLEN, "%s", qerr.msg);
  return -1;
}

int
save_overlay (struct overlay *ov, const struct ov_lower *lower,
              const struct save_request *req, struct save_result *res,
              char err[SAVE_ERRLEN])
{
  double start = monotonic_seconds ();
  int r = -1;
  struct savefile f;
  struct qcow2_write_stats stats = { 0 };
  struct job j = { .ov = ov, .lower = lower, .req = req, .err = err,
                   .start = start, .last_report = start };
  struct qcow2_write_options opts = {
    .virtual_size = overlay_size (ov), .cluster_size = req->cluster_size,
    .compress = req->compress,
    .backing_file = req->backing_embed ? req->backing_file : NULL,
    .backing_format = req->backing_embed ? req->backing_format : NULL,
  };
  struct qcow2_err qerr;

  err[0] = '\0';
  res->path = NULL;
  if (savefile_open (&f, req->path, req->unique, err, SAVE_ERRLEN) == -1)
    return -1;
  j.w = qcow2_writer_new (f.fd, &opts, &qerr);
  if (!j.w) {
    snprintf (err, SAVE_ERRLEN, "%s", qerr.msg);
    goto out;
  }
  j.buf = malloc (req->cluster_size);
  if (!j.buf) {
    snprintf (err, SAVE_ERRLEN, "out of memory");
    goto out;
  }
  struct ov_stats ost;
  overlay_stats (ov, &ost);
  j.total = ost.data_blocks * overlay_block_size (ov) / req->cluster_size;
  if (walk_clusters (ov, req->cluster_size, save_cluster, &j) != 0)
    goto out;
  if (qcow2_writer_finish (j.w, &stats, &qerr) == -1) {
    snprintf (err, SAVE_ERRLEN, "%s", qerr.msg);
    goto out;
  }
  if (savefile_commit (&f, err, SAVE_ERRLEN) == -1)
    goto out;
  if (req->unique && (res->path = savefile_path (&f)) == NULL) {
    snprintf (err, SAVE_ERRLEN, "out of memory");
    goto out;
  }
  res->data_clusters = stats.data_clusters;
  res->zero_clusters = stats.zero_clusters;
  res->bytes = stats.file_bytes;
  res->seconds = monotonic_seconds () - start;
  r = 0;
 out:
  qcow2_writer_free (j.w);
  free (j.buf);
  savefile_close (&f);
  if (r == -1 && err[0] == '\0')
    snprintf (err, SAVE_ERRLEN, "save failed");
  return r;
}

/* ------------------------------------------------------------ settle */

#define SETTLE_BATCH 4096     /* clusters listed per pass over the map */

struct settle {
  uint64_t clusters[SETTLE_BATCH];
  size_t n;
};

static int
list_cluster (void *opaque, uint64_t cluster, enum cluster_class cls)
{
  struct settle *st = opaque;
  if (cls == CL_DATA)
    st->clusters[st->n++] = cluster;
  return 0;
}

/* The blocks of one cluster that are clean, copied from below. */
static int
settle_cluster (struct overlay *ov, const struct ov_lower *lower, uint64_t off, uint64_t end,
                char *buf, int *err)
{
  uint32_t bs = overlay_block_size (ov);
  for (uint64_t b = off; b < end; b += bs) {
    uint32_t n = end - b < bs ? (uint32_t) (end - b) : bs;
    if (!overlay_block_clean (ov, b))
      continue;
    if (lower->pread (lower->handle, buf, n, b, err) == -1)
      return -1;
    overlay_populate (ov, buf, n, b);
  }
  return 0;
}

int
save_settle (struct overlay *ov, const struct ov_lower *lower, uint32_t cs, int *err)
{
  struct settle *st = malloc (sizeof *st);
  char *buf = malloc (overlay_block_size (ov));
  uint64_t size = overlay_size (ov), span = (uint64_t) SETTLE_BATCH * cs;
  int r = st && buf ? 0 : -1;
  if (r == -1)
    *err = ENOMEM;
  for (uint64_t off = 0; r == 0 && off < size; off += span) {
    st->n = 0;
    uint64_t len = size - off < span ? size - off : span;
    r = walk_range (ov, cs, off, len, list_cluster, st) ? -1 : 0;
    for (size_t i = 0; r == 0 && i < st->n; ++i) {
      uint64_t c = st->clusters[i] * cs, end = c + cs < size ? c + cs : size;
      r = settle_cluster (ov, lower, c, end, buf, err);
    }
  }
  free (st);
  free (buf);
  return r;
}

/* ------------------------------------------------------ the log line */

/* 'it'\''s' style quoting for the logged command. */
static char *
shell_quote (const char *s)
{
  size_t n = 3;
  for (const char *p = s; *p; ++p)
    n += *p == '\'' ? 4 : 1;
  char *q = malloc (n), *o = q;
  if (!q)
    return NULL;
  *o++ = '\'';
  for (const char *p = s; *p; ++p) {
    if (*p == '\'') { memcpy (o, "'\\''", 4); o += 4; }
    else *o++ = *p;
  }
  *o++ = '\'';
  *o = '\0';
  return q;
}

char *
save_rebase_command (const char *path, const char *base, const char *format)
{
  char *qp = shell_quote (path), *qb = base ? shell_quote (base) : NULL, *cmd = NULL;
  if (qp && (qb || !base) &&
      asprintf (&cmd, "qemu-img rebase -u -b %s -F %s %s", qb ? qb : "BASE-IMAGE",
                format ? format : "raw", qp) == -1)
    cmd = NULL;
  free (qp);
  free (qb);
  return cmd;
}
