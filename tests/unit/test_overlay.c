/* Model-based test of the overlay: random unaligned writes, zeroes and
 * reads against a plain byte array, several block sizes and odd export
 * sizes, then concurrent writers on disjoint ranges, then scale (a 64 TiB
 * export with sparse writes and a whole-disk zero stays small).
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "overlay.h"
#include "ovtest.h"
#include "tap.h"

/* The layer below: a deterministic pattern, counting the bytes it serves. */
static uint64_t lower_bytes;
static uint8_t pattern (uint64_t off) { return (uint8_t) (off * 2654435761u >> 13); }
static int
lower_pread (void *h, void *buf, uint32_t count, uint64_t off, int *err)
{
  (void) h; (void) err;
  uint8_t *p = buf;
  __atomic_add_fetch (&lower_bytes, count, __ATOMIC_RELAXED);
  for (uint32_t i = 0; i < count; ++i)
    p[i] = pattern (off + i);
  return 0;
}
static const struct ov_lower lower = { lower_pread, NULL };

static uint64_t rng = 88172645463325252ull;
static uint64_t
rnd (void)
{
  rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
  return rng;
}

static bool
model_run (uint64_t size, uint32_t bs, int ops)
{
  struct overlay *ov = overlay_new (size, bs, "/tmp");
  if (!ov) return false;
  uint8_t *model = malloc (size + 1), *buf = malloc (size + 1);
  for (uint64_t i = 0; i < size; ++i) model[i] = pattern (i);
  bool ok = true;
  int err;
  for (int i = 0; i < ops && ok && size > 0; ++i) {
    uint64_t off = rnd () % size;
    uint64_t len = 1 + rnd () % (size - off < 3 * bs ? size - off : 3 * bs);
    if (rnd () % 4 == 0) len = size - off;       /* sometimes to the end */
    switch (rnd () % 3) {
    case 0:
      for (uint64_t j = 0; j < len; ++j) buf[j] = (uint8_t) rnd ();
      ok = overlay_pwrite (ov, &lower, buf, (uint32_t) len, off, &err) == 0;
      memcpy (model + off, buf, len);
      break;
    case 1:
      ok = overlay_zero (ov, &lower, len, off, &err) == 0;
      memset (model + off, 0, len);
      break;
    default:
      ok = overlay_pread (ov, &lower, buf, (uint32_t) len, off, &err) == 0
        && memcmp (buf, model + off, len) == 0;
    }
  }
  if (ok && size > 0) {
    ok = overlay_pread (ov, &lower, buf, (uint32_t) size, 0, &err) == 0
      && memcmp (buf, model, size) == 0;
  }
  overlay_free (ov);
  free (model); free (buf);
  return ok;
}

struct thread_arg { struct overlay *ov; uint64_t base, len; int id; bool ok; };

static void *
writer (void *p)
{
  struct thread_arg *a = p;
  uint8_t buf[9000], chk[9000];
  int err;
  a->ok = true;
  /* Unaligned writes into a private range: neighbours share blocks at the
   * range edges, so a lost partial update would show.
   */
  for (uint64_t off = a->base; off < a->base + a->len; off += 997) {
    uint64_t n = a->base + a->len - off < 997 ? a->base + a->len - off : 997;
    memset (buf, a->id + 1, n);
    if (overlay_pwrite (a->ov, &lower, buf, (uint32_t) n, off, &err) == -1) a->ok = false;
  }
  if (overlay_pread (a->ov, &lower, chk, (uint32_t) a->len, a->base, &err) == -1) a->ok = false;
  for (uint64_t i = 0; i < a->len; ++i)
    if (chk[i] != a->id + 1) a->ok = false;
  return NULL;
}

static int
count_runs (void *opaque, enum ov_kind kind, uint64_t off, uint64_t len)
{
  uint64_t *counts = opaque;
  (void) off;
  counts[kind] += len;
  return 0;
}

int
main (void)
{
  static const uint64_t sizes[] = { 0, 1, 511, 4096, 130000, 1 << 20 };
  static const uint32_t bss[] = { 512, 4096 };
  for (size_t s = 0; s < sizeof sizes / sizeof *sizes; ++s)
    for (size_t b = 0; b < 2; ++b)
      CHECK (model_run (sizes[s], bss[b], 3000),
             "model: size %lu, block %u, 3000 random ops", (unsigned long) sizes[s], bss[b]);

  /* Concurrent unaligned writers on neighbouring ranges. */
  struct overlay *ov = overlay_new (8 * 9000, 4096, "/tmp");
  pthread_t th[8];
  struct thread_arg args[8];
  for (int i = 0; i < 8; ++i) {
    args[i] = (struct thread_arg) { ov, (uint64_t) i * 9000, 9000, i, false };
    pthread_create (&th[i], NULL, writer, &args[i]);
  }
  bool all = true;
  for (int i = 0; i < 8; ++i) { pthread_join (th[i], NULL); all = all && args[i].ok; }
  CHECK (all, "8 concurrent unaligned writers sharing edge blocks lose nothing");
  overlay_free (ov);

  /* An aligned 4 KiB write never reads the layer below; a clean read asks
   * exactly the bytes requested.
   */
  ov = overlay_new (1 << 20, 4096, "/tmp");
  int err;
  uint8_t buf[8192];
  memset (buf, 7, sizeof buf);
  lower_bytes = 0;
  overlay_pwrite (ov, &lower, buf, 4096, 8192, &err);
  CHECK (lower_bytes == 0, "aligned 4 KiB write reads nothing below (%lu bytes)", (unsigned long) lower_bytes);
  overlay_pread (ov, &lower, buf, 100, 65536 + 7, &err);
  CHECK (lower_bytes == 100, "clean read of 100 bytes reads exactly 100 below (%lu)", (unsigned long) lower_bytes);
  overlay_pwrite (ov, &lower, buf, 10, 70000, &err);
  CHECK (lower_bytes == 100 + 4096, "unaligned write reads one block below");
  overlay_free (ov);

  /* Scale: 64 TiB export, scattered writes, then zero everything. */
  uint64_t big = (uint64_t) 64 << 40;
  ov = overlay_new (big, 4096, "/tmp");
  struct ov_stats st;
  for (int i = 0; i < 1000; ++i) {
    uint64_t off = (rnd () % (big / 4096)) * 4096;
    overlay_pwrite (ov, &lower, buf, 4096, off, &err);
  }
  overlay_stats (ov, &st);
  CHECK (st.data_blocks == 1000, "64 TiB: 1000 scattered blocks counted (%lu)", (unsigned long) st.data_blocks);
  CHECK (st.memory_bytes < 8 << 20, "64 TiB: block map after 1000 scattered writes is %lu bytes", (unsigned long) st.memory_bytes);
  CHECK (overlay_zero (ov, &lower, big, 0, &err) == 0, "64 TiB: zero the whole export");
  overlay_stats (ov, &st);
  CHECK (st.data_blocks == 0 && st.zero_blocks == big / 4096,
         "64 TiB: all blocks zero after zeroing (%lu data, %lu zero)",
         (unsigned long) st.data_blocks, (unsigned long) st.zero_blocks);
  CHECK (st.memory_bytes < 8 << 20, "64 TiB: whole-disk zero costs no memory (%lu bytes)", (unsigned long) st.memory_bytes);
  uint64_t runs[3] = { 0, 0, 0 };
  overlay_map (ov, 0, big, count_runs, runs);
  CHECK (runs[OV_ZERO] == big && runs[OV_CLEAN] == 0, "64 TiB: map reports one zero run");
  memset (buf, 7, 10);
  overlay_pwrite (ov, &lower, buf, 10, big - 5000, &err);
  overlay_pread (ov, &lower, buf + 100, 5000, big - 5000, &err);
  bool tail_ok = buf[100] == 7 && buf[109] == 7 && buf[110] == 0 && buf[5099] == 0;
  CHECK (tail_ok, "64 TiB: partial write into a zeroed area reads back over zeroes");
  overlay_free (ov);

  return TAP_DONE ();
}
