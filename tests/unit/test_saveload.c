/* Save and reload through the real code paths (overlay -> save.c ->
 * qcow2 encoder -> file -> decoder -> load.c -> overlay) without nbdkit:
 * random writes, zeroes and trims on odd-sized exports, every cluster
 * size class, every compression, and files with clusters smaller than the
 * overlay's block.  The reloaded overlay must read exactly like the saved
 * one, and the counts in the result must match the overlay.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "load.h"
#include "overlay.h"
#include "ovtest.h"
#include "save.h"
#include "tap.h"

static uint8_t pattern (uint64_t off) { return (uint8_t) (off * 2654435761u >> 11) | 1; }
static int
lower_pread (void *h, void *buf, uint32_t count, uint64_t off, int *err)
{
  (void) h; (void) err;
  uint8_t *p = buf;
  for (uint32_t i = 0; i < count; ++i)
    p[i] = pattern (off + i);
  return 0;
}
static const struct ov_lower lower = { lower_pread, NULL };

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t
rnd (void)
{
  rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
  return rng;
}

static char dir[] = "/tmp/luacow-unit-XXXXXX";

static bool
same_content (struct overlay *a, struct overlay *b, uint64_t size)
{
  static uint8_t x[1 << 20], y[1 << 20];
  int err;
  for (uint64_t off = 0; off < size; off += sizeof x) {
    uint32_t n = (uint32_t) (size - off < sizeof x ? size - off : sizeof x);
    if (overlay_pread (a, &lower, x, n, off, &err) || overlay_pread (b, &lower, y, n, off, &err)
        || memcmp (x, y, n) != 0)
      return false;
  }
  return true;
}

static void
roundtrip (uint64_t size, uint32_t cs, enum qcow2_compress comp, uint32_t reload_bs)
{
  char path[128];
  snprintf (path, sizeof path, "%s/t.qcow2", dir);
  uint32_t bs = cs < 4096 ? cs : 4096;
  struct overlay *ov = overlay_new (size, bs, dir);
  int err;
  static uint8_t buf[300000];
  for (int i = 0; i < 300 && size > 0; ++i) {
    uint64_t off = rnd () % size;
    uint64_t len = 1 + rnd () % (size - off < 200000 ? size - off : 200000);
    if (rnd () % 3) {
      for (uint64_t j = 0; j < len; ++j) buf[j] = (uint8_t) rnd ();
      overlay_pwrite (ov, &lower, buf, (uint32_t) len, off, &err);
    }
    else
      overlay_zero (ov, &lower, len, off, &err);
  }
  struct save_request req = { .path = path, .cluster_size = cs, .compress = comp };
  struct save_result res;
  char serr[SAVE_ERRLEN];
  int r = save_overlay (ov, &lower, &req, &res, serr);
  uint64_t data, zero;
  save_count (ov, cs, &data, &zero);
  CHECK (r == 0 && res.data_clusters == data && res.zero_clusters == zero,
         "save size %lu cluster %u compress %d: %s (%lu data, %lu zero clusters)",
         (unsigned long) size, cs, comp, r ? serr : "ok",
         (unsigned long) res.data_clusters, (unsigned long) res.zero_clusters);

  struct overlay *back = overlay_new (size, reload_bs, dir);
  struct load_result lres;
  char lerr[LOAD_ERRLEN];
  r = load_overlay (back, &lower, path, &lres, lerr);
  CHECK (r == 0, "reload (block %u): %s", reload_bs, r ? lerr : "ok");
  CHECK (r == 0 && same_content (ov, back, size), "reloaded content equals the saved overlay");
  if (r == 0)
    close (lres.fd);
  overlay_free (back);
  overlay_free (ov);
}

int
main (void)
{
  if (!mkdtemp (dir))
    return 1;
  roundtrip (130000, 65536, QCOW2_COMPRESS_NONE, 4096);
  roundtrip (130000 * 41, 512, QCOW2_COMPRESS_NONE, 512);
  roundtrip (130000 * 41, 512, QCOW2_COMPRESS_NONE, 4096);   /* 512 B clusters into 4 KiB blocks */
  roundtrip (130000 * 41, 4096, QCOW2_COMPRESS_DEFLATE, 4096);
  roundtrip (130000 * 41, 65536, QCOW2_COMPRESS_ZSTD, 4096);
  roundtrip ((uint64_t) 5 << 20, 2 << 20, QCOW2_COMPRESS_NONE, 4096);
  roundtrip (1, 65536, QCOW2_COMPRESS_NONE, 4096);

  /* A save to a path whose directory is missing fails and leaves nothing. */
  struct overlay *ov = overlay_new (65536, 4096, dir);
  struct save_request req = { .path = "/nonexistent-luacow-dir/x.qcow2", .cluster_size = 65536 };
  struct save_result res;
  char serr[SAVE_ERRLEN];
  CHECK (save_overlay (ov, &lower, &req, &res, serr) == -1 && strstr (serr, "nonexistent"),
         "save into a missing directory fails with a reason: %s", serr);
  overlay_free (ov);

  /* Saved files are private, a replaced file keeps its mode, and nothing
   * but the target is left in the directory.
   */
  char path[128];
  snprintf (path, sizeof path, "%s/t.qcow2", dir);
  unlink (path);
  ov = overlay_new (65536, 4096, dir);
  int err;
  overlay_pwrite (ov, &lower, "x", 1, 0, &err);
  req = (struct save_request) { .path = path, .cluster_size = 65536 };
  struct stat st;
  CHECK (save_overlay (ov, &lower, &req, &res, serr) == 0 && stat (path, &st) == 0
         && (st.st_mode & 0777) == 0600, "new save is mode 0600");
  chmod (path, 0640);
  CHECK (save_overlay (ov, &lower, &req, &res, serr) == 0 && stat (path, &st) == 0
         && (st.st_mode & 0777) == 0640, "replacing save keeps mode 0640");
  char cmd[256];
  snprintf (cmd, sizeof cmd, "test $(ls -A %s | wc -l) -eq 1", dir);
  CHECK (system (cmd) == 0, "only the target file is in the directory");
  overlay_free (ov);

  snprintf (cmd, sizeof cmd, "rm -rf %s", dir);
  if (system (cmd) != 0)
    return 1;
  return TAP_DONE ();
}
