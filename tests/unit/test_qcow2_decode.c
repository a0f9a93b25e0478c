/* The decoder on images made by qemu-img / qemu-io 7.x: every guest
 * cluster must match `qemu-img convert -O raw`.  Covers v2 and v3, cluster
 * sizes, deflate and zstd compression, snapshots, zero clusters with and
 * without a host cluster, backing files, odd and >4 GiB sizes, refcount
 * widths, bitmaps; and the features we refuse (extended L2, external data
 * file, encryption).  A missing qemu-img or qemu-io is a failure.
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

static char dir[64];
static char out[1 << 14];

#define run(...) shell_run (dir, out, sizeof out, true, __VA_ARGS__)

static int open_in_dir (const char *name, int flags)
{
  char path[256];
  snprintf (path, sizeof path, "%s/%s", dir, name);
  return open (path, flags);
}

struct result {
  uint64_t data, compressed, zero, zero_alloc, bad;
};

struct walk {
  struct qcow2_image *img;
  int fd, ref, base;            /* image, qemu's raw conversion, raw base */
  uint32_t cs;
  uint64_t vsize;
  uint8_t *ours, *theirs;
  uint8_t *seen;                /* per guest cluster: reported by us */
  struct result r;
};

/* Compare our view of guest cluster g (in x->ours) with qemu's. */
static void compare (struct walk *x, uint64_t g)
{
  uint64_t off = g * x->cs;
  size_t len = x->vsize - off < x->cs ? (size_t) (x->vsize - off) : x->cs;
  if (pread (x->ref, x->theirs, len, (off_t) off) != (ssize_t) len ||
      memcmp (x->ours, x->theirs, len)) {
    if (x->r.bad++ < 3)
      printf ("# guest cluster %llu differs from qemu-img convert\n",
              (unsigned long long) g);
  }
}

static int visit (void *opaque, uint64_t g, const struct qcow2_cluster *c)
{
  struct walk *x = opaque;
  struct qcow2_err err = { "" };

  x->seen[g] = 1;
  switch (c->kind) {
  case QCOW2_ZERO:
    x->r.zero++;
    if (c->host_offset) x->r.zero_alloc++;
    memset (x->ours, 0, x->cs);
    break;
  case QCOW2_DATA:
    x->r.data++;
    if (pread (x->fd, x->ours, x->cs, (off_t) c->host_offset) != (ssize_t) x->cs)
      x->r.bad++;
    break;
  case QCOW2_COMPRESSED:
    x->r.compressed++;
    if (qcow2_read_compressed (x->img, c, x->ours, &err) < 0) {
      printf ("# %s\n", err.msg);
      x->r.bad++;
    }
    break;
  default:
    x->r.bad++;
  }
  compare (x, g);
  return 0;
}

/* Unallocated clusters read from the base (or zeroes): check those qemu's
 * conversion has data in, walking its data extents so huge sparse images
 * stay fast.
 */
static void check_unallocated (struct walk *x, uint64_t n)
{
  off_t pos = 0, end;
  while ((pos = lseek (x->ref, pos, SEEK_DATA)) >= 0) {
    end = lseek (x->ref, pos, SEEK_HOLE);
    if (end < 0) break;
    for (uint64_t g = (uint64_t) pos / x->cs;
         g < n && g * x->cs < (uint64_t) end; g++) {
      uint64_t off = g * x->cs;
      size_t len = x->vsize - off < x->cs ? (size_t) (x->vsize - off) : x->cs;
      if (x->seen[g]) continue;
      memset (x->ours, 0, x->cs);
      if (x->base >= 0 && pread (x->base, x->ours, len, (off_t) off) < 0)
        x->r.bad++;
      compare (x, g);
    }
    pos = end;
  }
}

/* Decode `name` and compare it with qemu-img convert -O raw. */
static bool verify (const char *name, const char *base, struct result *res,
                    struct qcow2_image **keep)
{
  struct qcow2_err err = { "" };
  struct walk x = { .fd = -1, .ref = -1, .base = -1 };
  uint64_t n;
  bool ok = false;

  memset (res, 0, sizeof *res);
  if (run ("qemu-img convert -O raw %s ref.raw", name) != 0) return false;
  x.fd = open_in_dir (name, O_RDONLY);
  x.ref = open_in_dir ("ref.raw", O_RDONLY);
  if (base) x.base = open_in_dir (base, O_RDONLY);
  x.img = qcow2_open (x.fd, &err);
  if (!x.img) {
    printf ("# %s: %s\n", name, err.msg);
    goto out;
  }
  x.cs = qcow2_cluster_size (x.img);
  x.vsize = qcow2_virtual_size (x.img);
  n = (x.vsize + x.cs - 1) / x.cs;
  x.ours = malloc (x.cs);
  x.theirs = malloc (x.cs);
  x.seen = calloc (n ? n : 1, 1);
  if (qcow2_for_each_cluster (x.img, visit, &x, &err) < 0) {
    printf ("# %s: %s\n", name, err.msg);
    x.r.bad++;
  }
  check_unallocated (&x, n);
  ok = x.r.bad == 0;
  *res = x.r;
  free (x.ours);
  free (x.theirs);
  free (x.seen);
 out:
  if (keep && x.img) *keep = x.img;
  else qcow2_close (x.img);
  if (x.fd >= 0) close (x.fd);
  close (x.ref);
  if (x.base >= 0) close (x.base);
  {
    char path[256];
    snprintf (path, sizeof path, "%s/ref.raw", dir);
    unlink (path);
  }
  return ok;
}

static void check_image (const char *label, const char *name, const char *base)
{
  struct result r = { 0 };
  bool ok = verify (name, base, &r, NULL);
  CHECK (ok, "%s: %llu data, %llu compressed, %llu zero (%llu preallocated)",
         label, (unsigned long long) r.data, (unsigned long long) r.compressed,
         (unsigned long long) r.zero, (unsigned long long) r.zero_alloc);
}

/* Open must fail with a one-line message containing `want`. */
static void check_rejected (const char *label, const char *name, const char *want)
{
  struct qcow2_err err = { "" };
  int fd = open_in_dir (name, O_RDONLY);
  struct qcow2_image *img = qcow2_open (fd, &err);
  CHECK (fd >= 0 && !img && strstr (err.msg, want) && !strchr (err.msg, '\n'),
         "%s rejected: %s", label, err.msg);
  qcow2_close (img);
  if (fd >= 0) close (fd);
}

/* Guest writes of several patterns, partial clusters included. */
static const char *const writes =
  "-c 'write -P 0x11 0 5000' -c 'write -P 0x22 70000 300000' "
  "-c 'write -P 0x33 1000000 512' -c 'write -P 0x44 3000000 1234567' "
  "-c 'write -z 3100000 70000' -c 'write -P 0x55 8000000 388608'";

static void plain_images (void)
{
  static const unsigned sizes[] = { 512, 4096, 65536, 2u << 20 };
  for (size_t i = 0; i < 4; i++) {
    char label[64];
    snprintf (label, sizeof label, "v3 cluster_size=%u", sizes[i]);
    if (run ("qemu-img create -q -f qcow2 -o cluster_size=%u a.qcow2 8M && "
             "qemu-io -f qcow2 %s a.qcow2 >/dev/null", sizes[i], writes) == 0)
      check_image (label, "a.qcow2", NULL);
    else CHECK (0, "%s: qemu-io", label);
    snprintf (label, sizeof label, "v2 cluster_size=%u", sizes[i]);
    if (run ("qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=%u "
             "b.qcow2 8M && qemu-io -f qcow2 %s b.qcow2 >/dev/null",
             sizes[i], writes) == 0) {
      struct qcow2_err err = { "" };
      int fd = open_in_dir ("b.qcow2", O_RDONLY);
      struct qcow2_image *img = qcow2_open (fd, &err);
      CHECK (img && qcow2_version (img) == 2, "%s: version 2", label);
      qcow2_close (img);
      close (fd);
      check_image (label, "b.qcow2", NULL);
    }
    else CHECK (0, "%s: qemu-io", label);
  }
  run ("rm -f a.qcow2 b.qcow2");
}

/* Raw source mixing random, compressible, zero and partly-zero clusters. */
static bool make_mixed_raw (const char *name, uint64_t size)
{
  return run ("head -c %llu /dev/urandom > r1 && "
              "yes 'luacow compressible line of text 0123456789' | "
              "head -c %llu > r2 && "
              "{ cat r1; head -c 300000 /dev/zero; cat r2; head -c 5000 r1; "
              "cat r2 r1; } | head -c %llu > %s && truncate -s %llu %s && "
              "rm -f r1 r2",
              (unsigned long long) size / 4, (unsigned long long) size / 3,
              (unsigned long long) size, name, (unsigned long long) size,
              name) == 0;
}

static void compressed_images (void)
{
  static const unsigned sizes[] = { 512, 4096, 65536, 2u << 20 };
  if (!make_mixed_raw ("mixed.raw", 12000000)) {
    CHECK (0, "make mixed raw source");
    return;
  }
  for (size_t i = 0; i < 4; i++) {
    char label[80];
    struct result r = { 0 };
    struct qcow2_image *img = NULL;
    bool ok;

    snprintf (label, sizeof label, "convert -c deflate cluster_size=%u",
              sizes[i]);
    ok = run ("qemu-img convert -c -O qcow2 -o cluster_size=%u mixed.raw "
              "c.qcow2", sizes[i]) == 0 && verify ("c.qcow2", NULL, &r, &img);
    CHECK (ok && r.compressed > 0 && qcow2_compression (img) ==
           QCOW2_COMPRESS_DEFLATE,
           "%s: %llu compressed, %llu data", label,
           (unsigned long long) r.compressed, (unsigned long long) r.data);
    qcow2_close (img);
    img = NULL;

    snprintf (label, sizeof label, "convert -c zstd cluster_size=%u", sizes[i]);
    ok = run ("qemu-img convert -c -O qcow2 -o cluster_size=%u,"
              "compression_type=zstd mixed.raw z.qcow2", sizes[i]) == 0 &&
         verify ("z.qcow2", NULL, &r, &img);
    CHECK (ok && r.compressed > 0 && qcow2_compression (img) ==
           QCOW2_COMPRESS_ZSTD,
           "%s: %llu compressed, %llu data", label,
           (unsigned long long) r.compressed, (unsigned long long) r.data);
    qcow2_close (img);
  }
  /* v2 with compression, and compressed clusters later overwritten. */
  if (run ("qemu-img convert -c -O qcow2 -o compat=0.10 mixed.raw v2c.qcow2 && "
           "qemu-io -f qcow2 -c 'write -P 0x66 65536 4096' "
           "-c 'write -z 655360 131072' v2c.qcow2 >/dev/null") == 0)
    check_image ("v2 compressed, partly rewritten", "v2c.qcow2", NULL);
  else CHECK (0, "v2 compressed, partly rewritten: qemu-img/qemu-io");
  run ("rm -f c.qcow2 z.qcow2 v2c.qcow2 mixed.raw");
}

static void snapshot_images (void)
{
  struct result r = { 0 };
  bool ok = run ("qemu-img create -q -f qcow2 -o cluster_size=4096 s.qcow2 4M && "
                 "qemu-io -f qcow2 -c 'write -P 1 0 1M' s.qcow2 >/dev/null && "
                 "qemu-img snapshot -c one s.qcow2 && "
                 "qemu-io -f qcow2 -c 'write -P 2 512k 1M' s.qcow2 >/dev/null && "
                 "qemu-img snapshot -c two s.qcow2 && "
                 "qemu-io -f qcow2 -c 'write -P 3 1M 4096' -c 'write -z 0 8192' "
                 "s.qcow2 >/dev/null") == 0;
  CHECK (ok && verify ("s.qcow2", NULL, &r, NULL),
         "two internal snapshots: active L1 decoded (%llu data)",
         (unsigned long long) r.data);
  ok = run ("qemu-img snapshot -d one s.qcow2 && qemu-img snapshot -a two s.qcow2") == 0;
  CHECK (ok && verify ("s.qcow2", NULL, &r, NULL),
         "after deleting one snapshot and applying another");
  ok = run ("qemu-img convert -c -O qcow2 -o compat=0.10 s.qcow2 s2.qcow2 && "
            "qemu-img snapshot -c x s2.qcow2") == 0;
  CHECK (ok && verify ("s2.qcow2", NULL, &r, NULL),
         "v2 compressed image with a snapshot");
  run ("rm -f s.qcow2 s2.qcow2");
}

static void zero_images (void)
{
  struct result r = { 0 };
  bool ok = run ("qemu-img create -q -f qcow2 -o cluster_size=65536 z.qcow2 4M && "
                 "qemu-io -f qcow2 -c 'write -P 7 0 1M' -c 'write -z 0 128k' "
                 "-c 'write -z -u 256k 128k' -c 'write -z 2M 256k' "
                 "z.qcow2 >/dev/null") == 0 && verify ("z.qcow2", NULL, &r, NULL);
  CHECK (ok && r.zero_alloc >= 2 && r.zero > r.zero_alloc,
         "v3 zero clusters: %llu preallocated (write -z on data), %llu plain",
         (unsigned long long) r.zero_alloc,
         (unsigned long long) (r.zero - r.zero_alloc));
  ok = run ("qemu-img create -q -f qcow2 -o preallocation=metadata,"
            "cluster_size=4096 p.qcow2 1M && "
            "qemu-io -f qcow2 -c 'write -P 9 8192 12288' p.qcow2 >/dev/null") == 0 &&
       verify ("p.qcow2", NULL, &r, NULL);
  CHECK (ok && r.zero_alloc + r.data == 256,
         "preallocation=metadata: %llu data, %llu zero with host clusters",
         (unsigned long long) r.data, (unsigned long long) r.zero_alloc);
  ok = run ("qemu-img create -q -f qcow2 -o preallocation=falloc,"
            "cluster_size=65536 f.qcow2 1M && "
            "qemu-io -f qcow2 -c 'write -P 9 8192 12288' f.qcow2 >/dev/null") == 0 &&
       verify ("f.qcow2", NULL, &r, NULL);
  CHECK (ok, "preallocation=falloc: %llu data, %llu zero",
         (unsigned long long) r.data, (unsigned long long) r.zero);
  ok = run ("qemu-img create -q -f qcow2 -o compat=0.10 v2z.qcow2 1M && "
            "qemu-io -f qcow2 -c 'write -P 7 0 256k' -c 'write -z 0 128k' "
            "v2z.qcow2 >/dev/null") == 0 && verify ("v2z.qcow2", NULL, &r, NULL);
  CHECK (ok && r.zero == 0, "v2 write -z (no zero flag in v2)");
  run ("rm -f z.qcow2 p.qcow2 f.qcow2 v2z.qcow2");
}

static void backing_images (void)
{
  struct result r = { 0 };
  struct qcow2_image *img = NULL;
  bool ok = run ("head -c 3000000 /dev/urandom > base.raw && "
                 "qemu-img create -q -f qcow2 -b base.raw -F raw o.qcow2 && "
                 "qemu-io -f qcow2 -c 'write -P 5 4096 100000' "
                 "-c 'write -z 1M 200000' o.qcow2 >/dev/null") == 0 &&
            verify ("o.qcow2", "base.raw", &r, &img);
  CHECK (ok && img && qcow2_backing_file (img) &&
         !strcmp (qcow2_backing_file (img), "base.raw") &&
         qcow2_backing_format (img) && !strcmp (qcow2_backing_format (img), "raw"),
         "backing file name and format recorded, unallocated reads the base");
  qcow2_close (img);
  img = NULL;
  ok = run ("qemu-img create -q -f qcow2 -o compat=0.10 -b base.raw -F raw "
            "o2.qcow2 && qemu-io -f qcow2 -c 'write -P 5 4096 100000' "
            "o2.qcow2 >/dev/null") == 0 && verify ("o2.qcow2", "base.raw", &r, &img);
  CHECK (ok && img && qcow2_backing_file (img) && qcow2_version (img) == 2,
         "v2 image with a backing file");
  qcow2_close (img);
  run ("rm -f base.raw o.qcow2 o2.qcow2");
}

static void size_images (void)
{
  struct result r = { 0 };
  bool ok;

  ok = run ("head -c 130000 /dev/urandom > odd.raw && "
            "qemu-img convert -O qcow2 odd.raw odd.qcow2") == 0 &&
       verify ("odd.qcow2", NULL, &r, NULL);
  CHECK (ok, "130000-byte raw converted (qemu rounds to 130048)");
  ok = run ("qemu-img create -q -f qcow2 big.qcow2 6G && "
            "qemu-io -f qcow2 -c 'write -P 1 0 64k' -c 'write -P 2 4294967000 100000' "
            "-c 'write -P 3 6442385408 65536' big.qcow2 >/dev/null") == 0 &&
       verify ("big.qcow2", NULL, &r, NULL);
  CHECK (ok && r.data >= 4, "6 GiB sparse image, data past 4 GiB (%llu clusters)",
         (unsigned long long) r.data);
  ok = run ("qemu-img create -q -f qcow2 empty.qcow2 0") == 0 &&
       verify ("empty.qcow2", NULL, &r, NULL);
  CHECK (ok && r.data + r.zero == 0, "0-byte image");
  ok = run ("qemu-img create -q -f qcow2 -o cluster_size=512 t.qcow2 100G && "
            "qemu-io -f qcow2 -c 'write -P 1 0 4k' -c 'write -P 2 99G 4k' "
            "t.qcow2 >/dev/null") == 0 && verify ("t.qcow2", NULL, &r, NULL);
  CHECK (ok && r.data == 16, "100 GiB with 512-byte clusters (12.5 MiB L1)");
  run ("rm -f odd.raw odd.qcow2 big.qcow2 empty.qcow2 t.qcow2");
}

static void feature_images (void)
{
  static const unsigned bits[] = { 1, 2, 8, 64 };
  for (size_t i = 0; i < 4; i++) {
    char label[64];
    snprintf (label, sizeof label, "refcount_bits=%u", bits[i]);
    if (run ("qemu-img create -q -f qcow2 -o refcount_bits=%u r.qcow2 2M && "
             "qemu-io -f qcow2 -c 'write -P 3 1000 100000' r.qcow2 >/dev/null",
             bits[i]) == 0)
      check_image (label, "r.qcow2", NULL);
    else CHECK (0, "%s", label);
  }
  if (run ("qemu-img create -q -f qcow2 -o lazy_refcounts=on l.qcow2 2M && "
           "qemu-io -f qcow2 -c 'write -P 3 1000 100000' l.qcow2 >/dev/null") == 0)
    check_image ("lazy_refcounts=on, closed cleanly", "l.qcow2", NULL);
  else CHECK (0, "lazy_refcounts=on: qemu-img/qemu-io");
  if (run ("qemu-img create -q -f qcow2 bm.qcow2 2M && "
           "qemu-img bitmap --add bm.qcow2 b0 && "
           "qemu-io -f qcow2 -c 'write -P 3 1000 100000' bm.qcow2 >/dev/null") == 0)
    check_image ("persistent dirty bitmap", "bm.qcow2", NULL);
  else CHECK (0, "persistent dirty bitmap: qemu-img/qemu-io");

  if (run ("qemu-img create -q -f qcow2 -o extended_l2=on x.qcow2 2M") == 0)
    check_rejected ("extended_l2=on", "x.qcow2", "extended L2");
  else CHECK (0, "extended_l2=on: qemu-img create");
  if (run ("qemu-img create -q -f qcow2 -o data_file=x.data d.qcow2 2M") == 0)
    check_rejected ("external data file", "d.qcow2", "external data");
  else CHECK (0, "external data file: qemu-img create");
  /* qemu's PBKDF benchmark fails now and then on a busy machine ("Unable
   * to get accurate CPU usage"): up to 20 tries, a longer benchmark each.
   */
  if (run ("for i in $(seq 1 20); do qemu-img create -q -f qcow2 "
           "--object secret,id=s0,data=pw -o encrypt.format=luks,"
           "encrypt.key-secret=s0,encrypt.iter-time=100 e.qcow2 2M 2>/dev/null && "
           "exit 0; sleep 0.2; done; exit 1") == 0)
    check_rejected ("LUKS encryption", "e.qcow2", "encrypt");
  else CHECK (0, "LUKS encryption: qemu-img create");
  run ("rm -f r.qcow2 l.qcow2 bm.qcow2 x.qcow2 x.data d.qcow2 e.qcow2");
}

int main (void)
{
  if (shell_setup (dir, "qcow2-decode", true) == -1)
    return 1;
  plain_images ();
  compressed_images ();
  snapshot_images ();
  zero_images ();
  backing_images ();
  size_images ();
  feature_images ();
  rmdir (dir);
  return TAP_DONE ();
}
