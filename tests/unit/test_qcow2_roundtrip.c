/* qcow2 encoder -> decoder round trips on random cluster mixes, plus the
 * encoder's argument and ordering errors.  No qemu needed.
 */
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qcow2.h"
#include "tap.h"

enum want { W_NONE, W_ZERO, W_RANDOM, W_COMPRESSIBLE };

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd (void)
{
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static void fill (uint8_t *buf, size_t len, enum want w, uint64_t seed)
{
  uint64_t save = rng_state;
  rng_state = seed * 2654435761u + 1;
  if (w == W_RANDOM)
    for (size_t i = 0; i < len; i++) buf[i] = (uint8_t) rnd ();
  else {
    /* Runs of repeated bytes: compresses well but not trivially. */
    size_t i = 0;
    while (i < len) {
      size_t run = 1 + rnd () % 64;
      uint8_t v = (uint8_t) (rnd () % 4);
      while (run-- && i < len) buf[i++] = v;
    }
  }
  rng_state = save;
}

static int tmpfile_fd (char *path)
{
  strcpy (path, "/tmp/luacow-qcow2-rt.XXXXXX");
  return mkstemp (path);
}

struct check_ctx {
  struct qcow2_image *img;
  int fd;
  const enum want *want;
  uint64_t nclusters, virtual_size;
  uint32_t cs;
  uint64_t seen, bad, compressed, spanning;
  uint8_t *buf, *expect;
  bool compress_expected;
};

static int check_cluster (void *opaque, uint64_t g, const struct qcow2_cluster *c)
{
  struct check_ctx *x = opaque;
  struct qcow2_err err = { "" };
  enum want w;

  x->seen++;
  if (g >= x->nclusters) { x->bad++; return 0; }
  w = x->want[g];
  if (w == W_NONE) { x->bad++; return 0; }
  if (w == W_ZERO) {
    if (c->kind != QCOW2_ZERO || c->host_offset != 0) x->bad++;
    return 0;
  }
  fill (x->expect, x->cs, w, g);
  if (g == x->nclusters - 1 && x->virtual_size % x->cs)
    memset (x->expect + x->virtual_size % x->cs, 0,
            x->cs - x->virtual_size % x->cs);
  if (c->kind == QCOW2_DATA) {
    if (pread (x->fd, x->buf, x->cs, (off_t) c->host_offset) != (ssize_t) x->cs)
      x->bad++;
    else if (memcmp (x->buf, x->expect, x->cs)) x->bad++;
    if (x->compress_expected && w == W_COMPRESSIBLE && x->cs >= 4096) x->bad++;
  }
  else if (c->kind == QCOW2_COMPRESSED) {
    x->compressed++;
    if ((c->host_offset % x->cs) + c->compressed_size > x->cs) x->spanning++;
    if (qcow2_read_compressed (x->img, c, x->buf, &err) < 0) {
      printf ("# read_compressed: %s\n", err.msg);
      x->bad++;
    }
    else if (memcmp (x->buf, x->expect, x->cs)) x->bad++;
  }
  else x->bad++;
  return 0;
}

struct rt_case {
  uint32_t cs;
  uint64_t vsize;
  enum qcow2_compress comp;
  const char *backing, *format;
  unsigned density;             /* percent of clusters added */
};

static const char *comp_name (enum qcow2_compress c)
{
  return c == QCOW2_COMPRESS_NONE ? "none" :
         c == QCOW2_COMPRESS_DEFLATE ? "deflate" : "zstd";
}

static void roundtrip (const struct rt_case *t)
{
  char path[64];
  int fd = tmpfile_fd (path);
  struct qcow2_write_options o = {
    .virtual_size = t->vsize, .cluster_size = t->cs, .compress = t->comp,
    .backing_file = t->backing, .backing_format = t->format,
  };
  struct qcow2_err err = { "" };
  struct qcow2_write_stats st = { 0 };
  struct qcow2_writer *w = qcow2_writer_new (fd, &o, &err);
  uint64_t n = (t->vsize + t->cs - 1) / t->cs;
  uint64_t ndata = 0, nzero = 0;
  enum want *want = calloc (n ? n : 1, sizeof *want);
  uint8_t *buf = malloc (t->cs);
  struct check_ctx x = { 0 };
  struct qcow2_image *img = NULL;
  bool ok = w != NULL;
  char label[160];

  snprintf (label, sizeof label, "cs=%u size=%llu %s%s%s", t->cs,
            (unsigned long long) t->vsize, comp_name (t->comp),
            t->backing ? " backing=" : "", t->backing ? t->backing : "");
  if (!w) printf ("# writer_new: %s\n", err.msg);

  for (uint64_t g = 0; ok && g < n; g++) {
    /* Dense at the start and the end, sparse in between, so huge sparse
     * images stay fast.
     */
    bool edge = g < 300 || g + 300 >= n;
    if (!edge && rnd () % 100000 >= t->density) continue;
    if (rnd () % 100 >= t->density) continue;
    want[g] = (enum want) (1 + rnd () % 3);
    if (want[g] == W_ZERO) {
      ok = qcow2_writer_add_zero (w, g, &err) == 0;
      nzero++;
    }
    else {
      fill (buf, t->cs, want[g], g);
      if (g == n - 1 && t->vsize % t->cs)
        memset (buf + t->vsize % t->cs, 0, t->cs - t->vsize % t->cs);
      ok = qcow2_writer_add_data (w, g, buf, &err) == 0;
      ndata++;
    }
    if (!ok) printf ("# add: %s\n", err.msg);
  }
  if (ok && qcow2_writer_finish (w, &st, &err) < 0) {
    printf ("# finish: %s\n", err.msg);
    ok = false;
  }
  qcow2_writer_free (w);
  CHECK (ok, "encode %s", label);
  CHECK (st.data_clusters == ndata && st.zero_clusters == nzero &&
         st.file_bytes == (uint64_t) lseek (fd, 0, SEEK_END),
         "stats %s: %llu data (%llu compressed), %llu zero, %llu bytes", label,
         (unsigned long long) st.data_clusters,
         (unsigned long long) st.compressed_clusters,
         (unsigned long long) st.zero_clusters,
         (unsigned long long) st.file_bytes);

  img = qcow2_open (fd, &err);
  CHECK (img != NULL, "open %s%s%s", label, img ? "" : ": ", img ? "" : err.msg);
  if (img) {
    const char *b = qcow2_backing_file (img), *f = qcow2_backing_format (img);
    CHECK (qcow2_virtual_size (img) == t->vsize &&
           qcow2_cluster_size (img) == t->cs && qcow2_version (img) == 3 &&
           qcow2_compression (img) == (t->comp == QCOW2_COMPRESS_ZSTD ?
                                       QCOW2_COMPRESS_ZSTD :
                                       QCOW2_COMPRESS_DEFLATE) &&
           ((!b && !t->backing) || (b && t->backing && !strcmp (b, t->backing))) &&
           ((!f && !t->format) || (f && t->format && !strcmp (f, t->format))),
           "header fields %s", label);
    x.img = img;
    x.fd = fd;
    x.want = want;
    x.nclusters = n;
    x.virtual_size = t->vsize;
    x.cs = t->cs;
    x.buf = malloc (t->cs);
    x.expect = malloc (t->cs);
    x.compress_expected = t->comp != QCOW2_COMPRESS_NONE;
    if (qcow2_for_each_cluster (img, check_cluster, &x, &err) < 0) {
      printf ("# for_each: %s\n", err.msg);
      x.bad++;
    }
    CHECK (x.bad == 0 && x.seen == ndata + nzero,
           "decode %s: %llu clusters, %llu compressed (%llu spanning), %llu bad",
           label, (unsigned long long) x.seen,
           (unsigned long long) x.compressed, (unsigned long long) x.spanning,
           (unsigned long long) x.bad);
    if (t->comp != QCOW2_COMPRESS_NONE && ndata > 20 && t->cs >= 4096)
      CHECK (x.compressed > 0 && x.spanning > 0,
             "compressed clusters are packed across host clusters %s", label);
    free (x.buf);
    free (x.expect);
    qcow2_close (img);
  }
  free (want);
  free (buf);
  close (fd);
  unlink (path);
}

static struct qcow2_writer *new_writer (int fd, uint64_t size, uint32_t cs,
                                        const char *backing, const char *fmt,
                                        struct qcow2_err *err)
{
  struct qcow2_write_options o = {
    .virtual_size = size, .cluster_size = cs, .compress = QCOW2_COMPRESS_NONE,
    .backing_file = backing, .backing_format = fmt,
  };
  return qcow2_writer_new (fd, &o, err);
}

static void expect_new_fails (int fd, uint64_t size, uint32_t cs,
                              const char *backing, const char *fmt,
                              const char *what)
{
  struct qcow2_err err = { "" };
  struct qcow2_writer *w = new_writer (fd, size, cs, backing, fmt, &err);
  CHECK (w == NULL && err.msg[0] && !strchr (err.msg, '\n'),
         "writer_new rejects %s: %s", what, err.msg);
  qcow2_writer_free (w);
}

static void encoder_errors (void)
{
  char path[64], name[1100];
  int fd = tmpfile_fd (path);
  struct qcow2_err err = { "" };
  struct qcow2_writer *w;
  uint8_t *buf = calloc (1, 65536);

  expect_new_fails (fd, 1 << 20, 1000, NULL, NULL, "cluster size 1000");
  expect_new_fails (fd, 1 << 20, 256, NULL, NULL, "cluster size 256");
  expect_new_fails (fd, 1 << 20, 4u << 20, NULL, NULL, "cluster size 4 MiB");
  /* 512-byte clusters: L1 of 32 MiB covers 128 GiB. */
  expect_new_fails (fd, 129ull << 30, 512, NULL, NULL, "L1 over 32 MiB");
  memset (name, 'a', sizeof name);
  name[1024] = '\0';
  expect_new_fails (fd, 1 << 20, 65536, name, NULL, "1024-byte backing name");
  name[400] = '\0';
  expect_new_fails (fd, 1 << 20, 512, name, NULL,
                    "backing name too long for a 512-byte header cluster");
  expect_new_fails (fd, 1 << 20, 65536, NULL, "raw", "format without file");
  expect_new_fails (fd, 1 << 20, 65536, "", NULL, "empty backing name");

  w = new_writer (fd, 128ull << 30, 512, NULL, NULL, &err);
  CHECK (w != NULL, "128 GiB with 512-byte clusters is accepted");
  qcow2_writer_free (w);
  name[380] = '\0';
  w = new_writer (fd, 1 << 20, 512, name, NULL, &err);
  CHECK (w != NULL, "380-byte backing name fits a 512-byte header cluster");
  qcow2_writer_free (w);

  w = new_writer (fd, 100000, 4096, NULL, NULL, &err);
  CHECK (qcow2_writer_add_data (w, 3, buf, &err) == 0, "add cluster 3");
  CHECK (qcow2_writer_add_data (w, 3, buf, &err) < 0 && err.msg[0],
         "same cluster twice rejected: %s", err.msg);
  CHECK (qcow2_writer_add_zero (w, 2, &err) < 0, "going back rejected");
  CHECK (qcow2_writer_add_zero (w, 25, &err) < 0 && err.msg[0],
         "cluster past the end rejected: %s", err.msg);
  buf[4095] = 1;
  CHECK (qcow2_writer_add_data (w, 24, buf, &err) < 0 && err.msg[0],
         "non-zero data past the virtual size rejected: %s", err.msg);
  buf[4095] = 0;
  buf[100000 % 4096 - 1] = 1;
  CHECK (qcow2_writer_add_data (w, 24, buf, &err) == 0,
         "last partial cluster accepted");
  CHECK (qcow2_writer_finish (w, NULL, &err) == 0, "finish");
  CHECK (qcow2_writer_finish (w, NULL, &err) < 0, "second finish rejected");
  CHECK (qcow2_writer_add_zero (w, 0, &err) < 0, "add after finish rejected");
  qcow2_writer_free (w);

  /* A write error is reported with strerror and sticks. */
  {
    int rfd = open (path, O_RDONLY);
    w = new_writer (rfd, 1 << 20, 4096, NULL, NULL, &err);
    CHECK (w && qcow2_writer_add_data (w, 0, buf, &err) == 0 &&
           qcow2_writer_finish (w, NULL, &err) < 0 && strstr (err.msg, "Bad file"),
           "I/O error reported: %s", err.msg);
    qcow2_writer_free (w);
    close (rfd);
  }
  free (buf);
  close (fd);
  unlink (path);
}

/* The exact size extension only counts while it agrees with the header
 * (qemu-img resize keeps unknown extensions).
 */
static void exact_size (void)
{
  char path[64];
  int fd = tmpfile_fd (path);
  struct qcow2_err err = { "" };
  struct qcow2_writer *w = new_writer (fd, 130000, 4096, NULL, NULL, &err);
  struct qcow2_image *img;
  uint8_t be[8] = { 0, 0, 0, 0, 0, 2, 0, 0 };   /* 131072 */

  CHECK (w && qcow2_writer_finish (w, NULL, &err) == 0, "encode 130000 bytes");
  qcow2_writer_free (w);
  img = qcow2_open (fd, &err);
  CHECK (img && qcow2_virtual_size (img) == 130000,
         "exact odd size read back from the luacow extension");
  qcow2_close (img);
  CHECK (pwrite (fd, be, 8, 24) == 8, "resize the header as qemu-img would");
  img = qcow2_open (fd, &err);
  CHECK (img && qcow2_virtual_size (img) == 131072,
         "stale size extension ignored after a resize");
  qcow2_close (img);
  close (fd);
  unlink (path);
}

int main (void)
{
  static const struct rt_case cases[] = {
    { 512, 1 << 20, QCOW2_COMPRESS_NONE, NULL, NULL, 60 },
    { 512, 130000, QCOW2_COMPRESS_DEFLATE, NULL, NULL, 60 },
    { 512, 1 << 20, QCOW2_COMPRESS_ZSTD, "base.raw", "raw", 60 },
    { 1024, 300000, QCOW2_COMPRESS_DEFLATE, NULL, NULL, 80 },
    { 4096, 130000, QCOW2_COMPRESS_NONE, NULL, NULL, 70 },
    { 4096, 8 << 20, QCOW2_COMPRESS_DEFLATE, "b", NULL, 70 },
    { 4096, 8 << 20, QCOW2_COMPRESS_ZSTD, NULL, NULL, 70 },
    { 65536, 130000, QCOW2_COMPRESS_ZSTD, NULL, NULL, 100 },
    { 65536, 64 << 20, QCOW2_COMPRESS_NONE, "../base image.qcow2", "qcow2", 50 },
    { 65536, 64 << 20, QCOW2_COMPRESS_DEFLATE, NULL, NULL, 50 },
    { 65536, 64 << 20, QCOW2_COMPRESS_ZSTD, NULL, NULL, 50 },
    { 65536, 6ull << 30, QCOW2_COMPRESS_NONE, NULL, NULL, 20 },
    { 2u << 20, 20 << 20, QCOW2_COMPRESS_NONE, NULL, NULL, 80 },
    { 2u << 20, 20 << 20, QCOW2_COMPRESS_DEFLATE, NULL, NULL, 80 },
    { 2u << 20, (20 << 20) + 12345, QCOW2_COMPRESS_ZSTD, NULL, NULL, 80 },
    { 65536, 0, QCOW2_COMPRESS_NONE, NULL, NULL, 100 },
    { 512, 0, QCOW2_COMPRESS_ZSTD, NULL, NULL, 100 },
    { 512, 1, QCOW2_COMPRESS_NONE, NULL, NULL, 100 },
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    roundtrip (&cases[i]);
  encoder_errors ();
  exact_size ();
  return TAP_DONE ();
}
