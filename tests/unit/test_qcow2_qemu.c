/* Encoder output checked by qemu 7.x itself: qemu-img check (no errors,
 * no leaks), qemu-img map (exactly the data and zero clusters we wrote),
 * qemu-img compare against the expected raw content, and again after
 * qemu-img rebase -u onto a non-zero raw base.  A missing qemu-img is a
 * failure.
 */
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qcow2.h"
#include "shell.h"
#include "tap.h"

enum want { W_NONE, W_ZERO, W_RANDOM, W_COMPRESSIBLE };

static char dir[64];
static char out[1 << 16];       /* output of the last command */

static uint64_t rng_state = 0x243f6a8885a308d3ull;
static uint64_t rnd (void)
{
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static void fill (uint8_t *buf, size_t len, enum want w, uint64_t seed)
{
  uint64_t s = seed * 0x9e3779b97f4a7c15ull + 7;
  for (size_t i = 0; i < len;) {
    s ^= s << 13; s ^= s >> 7; s ^= s << 17;
    if (w == W_RANDOM) buf[i++] = (uint8_t) s;
    else {
      size_t run = 1 + s % 64;
      while (run-- && i < len) buf[i++] = (uint8_t) ((s >> 8) % 4);
    }
  }
}

#define run(...) shell_run (dir, out, sizeof out, false, __VA_ARGS__)

/* Per-cluster state from qemu-img map --output=json. */
struct mapped { bool present, zero, data; int depth; };

static bool json_bool (const char *obj, const char *key)
{
  const char *p = strstr (obj, key);
  return p && !strncmp (p + strlen (key), " true", 5);
}

static long long json_num (const char *obj, const char *key)
{
  const char *p = strstr (obj, key);
  return p ? atoll (p + strlen (key)) : -1;
}

static bool parse_map (struct mapped *m, uint64_t n, uint32_t cs)
{
  const char *p = out;
  uint64_t covered = 0;
  if (n == 0) return strstr (out, "\"length\": 0,") != NULL;
  while ((p = strchr (p, '{'))) {
    char obj[512];
    const char *e = strchr (p, '}');
    size_t len;
    long long start, length;
    if (!e) return false;
    len = (size_t) (e - p) < sizeof obj - 1 ? (size_t) (e - p) : sizeof obj - 1;
    memcpy (obj, p, len);
    obj[len] = '\0';
    start = json_num (obj, "\"start\":");
    length = json_num (obj, "\"length\":");
    if (start < 0 || length <= 0) return false;
    /* A cluster takes the state of the extent holding its first byte
     * (qemu reports the sub-cluster tail of a raw backing file apart).
     */
    for (uint64_t c = ((uint64_t) start + cs - 1) / cs;
         c < n && c * cs < (uint64_t) (start + length); c++) {
      m[c].present = json_bool (obj, "\"present\":");
      m[c].zero = json_bool (obj, "\"zero\":");
      m[c].data = json_bool (obj, "\"data\":");
      m[c].depth = (int) json_num (obj, "\"depth\":");
      covered++;
    }
    p = e;
  }
  return covered == n;
}

struct qcase {
  uint32_t cs;
  uint64_t vsize;
  enum qcow2_compress comp;
  bool backing;
  unsigned density;             /* percent of clusters added */
};

static const char *comp_name (enum qcow2_compress c)
{
  return c == QCOW2_COMPRESS_NONE ? "none" :
         c == QCOW2_COMPRESS_DEFLATE ? "deflate" : "zstd";
}

/* Base image content: non-zero everywhere, so zero clusters show. */
static void base_fill (uint8_t *buf, uint32_t cs, uint64_t g)
{
  for (uint32_t i = 0; i < cs; i++) buf[i] = (uint8_t) (0x80 | ((g + i) & 0x7f));
}

static int write_raw (const char *name, uint64_t size)
{
  char path[128];
  int fd;
  snprintf (path, sizeof path, "%s/%s", dir, name);
  fd = open (path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0 && ftruncate (fd, (off_t) size) < 0) {
    close (fd);
    return -1;
  }
  return fd;
}

static bool pwrite_part (int fd, const uint8_t *buf, uint32_t cs, uint64_t g,
                         uint64_t vsize)
{
  uint64_t off = g * cs;
  size_t len = vsize - off < cs ? (size_t) (vsize - off) : cs;
  return pwrite (fd, buf, len, (off_t) off) == (ssize_t) len;
}

static void one_case (const struct qcase *t)
{
  uint64_t n = (t->vsize + t->cs - 1) / t->cs;
  enum want *want = calloc (n ? n : 1, sizeof *want);
  struct mapped *map = calloc (n ? n : 1, sizeof *map);
  uint8_t *buf = malloc (t->cs), *bbuf = malloc (t->cs);
  char label[128], img[160];
  struct qcow2_err err = { "" };
  struct qcow2_write_options o = {
    .virtual_size = t->vsize, .cluster_size = t->cs, .compress = t->comp,
    .backing_file = t->backing ? "base.raw" : NULL,
    .backing_format = t->backing ? "raw" : NULL,
  };
  struct qcow2_writer *w;
  struct qcow2_write_stats st = { 0 };
  int fd, efd, rfd, bfd;
  bool ok = true, map_ok = true;
  uint64_t bad_map = 0;

  snprintf (label, sizeof label, "cs=%u size=%llu %s%s", t->cs,
            (unsigned long long) t->vsize, comp_name (t->comp),
            t->backing ? " with backing" : "");
  snprintf (img, sizeof img, "%s/out.qcow2", dir);
  fd = open (img, O_RDWR | O_CREAT | O_TRUNC, 0644);
  efd = write_raw ("expect.raw", t->vsize);    /* as seen with the backing */
  rfd = write_raw ("rebased.raw", t->vsize);   /* after rebase onto base */
  bfd = write_raw ("base.raw", t->vsize);
  w = qcow2_writer_new (fd, &o, &err);
  if (!w) printf ("# %s\n", err.msg);
  ok = w && efd >= 0 && rfd >= 0 && bfd >= 0;

  for (uint64_t g = 0; ok && g < n; g++) {
    bool edge = g < 200 || g + 200 >= n;
    if (edge ? rnd () % 100 < t->density : rnd () % 20000 == 0)
      want[g] = (enum want) (1 + rnd () % 3);
    /* The base has data wherever the test looks; elsewhere it stays a
     * hole so huge sparse images stay cheap.
     */
    if (!edge && want[g] == W_NONE) continue;
    base_fill (bbuf, t->cs, g);
    ok = pwrite_part (bfd, bbuf, t->cs, g, t->vsize);
    switch (want[g]) {
    case W_NONE:
      ok = ok && pwrite_part (rfd, bbuf, t->cs, g, t->vsize);
      if (t->backing) ok = ok && pwrite_part (efd, bbuf, t->cs, g, t->vsize);
      break;
    case W_ZERO:
      ok = ok && qcow2_writer_add_zero (w, g, &err) == 0;
      break;
    default:
      fill (buf, t->cs, want[g], g);
      if (g == n - 1 && t->vsize % t->cs)
        memset (buf + t->vsize % t->cs, 0, t->cs - t->vsize % t->cs);
      ok = ok && qcow2_writer_add_data (w, g, buf, &err) == 0 &&
           pwrite_part (efd, buf, t->cs, g, t->vsize) &&
           pwrite_part (rfd, buf, t->cs, g, t->vsize);
    }
  }
  if (ok && qcow2_writer_finish (w, &st, &err) < 0) ok = false;
  if (!ok) printf ("# %s\n", err.msg);
  qcow2_writer_free (w);
  close (fd);
  close (efd);
  close (rfd);
  close (bfd);
  CHECK (ok, "encode %s: %llu data (%llu compressed), %llu zero, %llu bytes",
         label, (unsigned long long) st.data_clusters,
         (unsigned long long) st.compressed_clusters,
         (unsigned long long) st.zero_clusters,
         (unsigned long long) st.file_bytes);

  ok = run ("qemu-img check out.qcow2") == 0 &&
       strstr (out, "No errors were found on the image.") &&
       !strstr (out, "leaked");
  CHECK (ok, "qemu-img check %s", label);
  if (!ok) printf ("# %s", out);

  if (run ("qemu-img map --output=json out.qcow2") != 0 ||
      !parse_map (map, n, t->cs))
    map_ok = false;
  for (uint64_t g = 0; map_ok && g < n; g++) {
    const struct mapped *m = &map[g];
    bool good;
    switch (want[g]) {
    case W_NONE: good = t->backing ? m->depth == 1 : !m->present; break;
    case W_ZERO: good = m->depth == 0 && m->present && m->zero && !m->data; break;
    default: good = m->depth == 0 && m->present && m->data && !m->zero;
    }
    if (!good && bad_map++ < 3)
      printf ("# cluster %llu: want %d, got depth %d present %d zero %d data %d\n",
              (unsigned long long) g, want[g], m->depth, m->present, m->zero,
              m->data);
  }
  CHECK (map_ok && bad_map == 0, "qemu-img map %s", label);
  if (!map_ok) printf ("# %.2000s", out);

  ok = run ("qemu-img compare -f qcow2 -F raw out.qcow2 expect.raw") == 0 &&
       strstr (out, "Images are identical.");
  CHECK (ok, "qemu-img compare %s", label);
  if (!ok) printf ("# %s", out);

  if (!t->backing) {
    ok = run ("qemu-img rebase -u -b base.raw -F raw out.qcow2") == 0 &&
         run ("qemu-img compare -f qcow2 -F raw out.qcow2 rebased.raw") == 0 &&
         strstr (out, "Images are identical.");
    CHECK (ok, "after rebase -u onto a non-zero base, zero clusters stay zero %s",
           label);
    if (!ok) printf ("# %s", out);
  }
  run ("rm -f out.qcow2 expect.raw rebased.raw base.raw");
  free (want);
  free (map);
  free (buf);
  free (bbuf);
}

int main (void)
{
  static const struct qcase cases[] = {
    { 512, 1 << 20, QCOW2_COMPRESS_NONE, false, 60 },
    { 512, 1 << 20, QCOW2_COMPRESS_DEFLATE, true, 60 },
    { 512, 130000, QCOW2_COMPRESS_ZSTD, false, 60 },
    { 4096, 130000, QCOW2_COMPRESS_NONE, true, 70 },
    { 4096, 8 << 20, QCOW2_COMPRESS_DEFLATE, false, 70 },
    { 4096, 8 << 20, QCOW2_COMPRESS_ZSTD, true, 70 },
    { 65536, 130000, QCOW2_COMPRESS_NONE, false, 100 },
    { 65536, 130000, QCOW2_COMPRESS_DEFLATE, true, 100 },
    { 65536, 32 << 20, QCOW2_COMPRESS_ZSTD, false, 50 },
    { 65536, 32 << 20, QCOW2_COMPRESS_DEFLATE, false, 50 },
    { 65536, 6ull << 30, QCOW2_COMPRESS_NONE, false, 30 },
    { 65536, (5ull << 30) + 130000, QCOW2_COMPRESS_ZSTD, true, 30 },
    { 2u << 20, 24 << 20, QCOW2_COMPRESS_NONE, true, 70 },
    { 2u << 20, 24 << 20, QCOW2_COMPRESS_DEFLATE, false, 70 },
    { 2u << 20, (24 << 20) + 130000, QCOW2_COMPRESS_ZSTD, false, 70 },
    { 2u << 20, 5ull << 30, QCOW2_COMPRESS_NONE, false, 20 },
    { 65536, 0, QCOW2_COMPRESS_NONE, false, 100 },
    { 512, 0, QCOW2_COMPRESS_ZSTD, true, 100 },
  };

  if (shell_setup (dir, "qcow2-qemu", false) == -1)
    return 1;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    one_case (&cases[i]);
  rmdir (dir);
  return TAP_DONE ();
}
