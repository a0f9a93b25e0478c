/* luacow: the overlay filled from elsewhere than its clients: a reloaded
 * qcow2 (load.c, before anyone is served) and copies of the plugin's own
 * data (cow-on-read, cow-on-cache).  See the design note in overlay.c.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "overlay_impl.h"

#define block_end ov_block_end

/* ---------------------------------------------------------------- copies */

/* Keep copies of the plugin's data: the whole blocks of [offset,
 * offset+count) that are still clean get buf's bytes in fresh slots,
 * marked as copies.  A block a client wrote meanwhile keeps the client's
 * data (its entry is no longer clean when the copy is published).  Best
 * effort: a copy that cannot be made is simply not made.
 */
void
overlay_populate (struct overlay *ov, const void *buf, uint64_t count, uint64_t offset)
{
  const char *src = buf;
  uint64_t b = (offset + ov->bs - 1) >> ov->bits;
  uint64_t b_end = offset + count >= ov->size ? ov->nblocks : (offset + count) >> ov->bits;
  uint64_t ep = ov_enter (ov);
  for (; b < b_end;) {
    if (blockmap_get (ov->map, b) != E_CLEAN) {
      b++;
      continue;
    }
    uint64_t k = 1, s[SLOTS_MAX_TAKE];
    while (k < SLOTS_MAX_TAKE && b + k < b_end && blockmap_get (ov->map, b + k) == E_CLEAN)
      k++;
    uint64_t bytes = block_end (ov, b + k - 1) - (b << ov->bits);
    const char *p = src + ((b << ov->bits) - offset);
    int err;
    if (slots_take (ov->slots, k, s) == -1)
      break;
    int r = ov_write_slots (ov, s, k, p, bytes, &err);
    struct stripe_set set;
    ov_stripes_of (&set, b, b + k);
    ov_stripes_lock (ov, &set);
    unsigned par = atomic_load (&ov->epoch) & 1;
    for (uint64_t i = 0; i < k; ++i) {
      _Atomic uint64_t *cell = r == 0 ? blockmap_cell (ov->map, b + i) : NULL;
      uint64_t want = E_CLEAN;
      if (!cell || !atomic_compare_exchange_strong (cell, &want, store_entry (s[i]) | E_COPY))
        slots_retire (ov->slots, par, s[i], false);   /* never seen */
    }
    ov_stripes_unlock (ov, &set);
    b += k;
  }
  ov_exit (ov, ep);
}

bool
overlay_block_clean (const struct overlay *ov, uint64_t offset)
{
  return offset < ov->size && blockmap_get (ov->map, offset >> ov->bits) == E_CLEAN;
}

/* ------------------------------------------------------------- reloading */

void
overlay_attach_file (struct overlay *ov, int fd)
{
  ov->file_fd = fd;
}

int
overlay_set_file_block (struct overlay *ov, uint64_t block, uint64_t file_offset)
{
  int err;
  if (block >= ov->nblocks || (file_offset & 3) || ov->file_fd < 0)
    return -1;
  _Atomic uint64_t *cell = blockmap_cell (ov->map, block);
  if (!cell)
    return -1;
  struct jrec rec = { .kind = REC_FILE, .count = 1, .block = block, .value = file_offset };
  if (ov_add_record (ov, atomic_load (&ov->epoch) & 1, &rec, &err) == -1)
    return -1;
  uint64_t old = atomic_exchange (cell, file_entry (file_offset));
  ov_account (ov, old, file_entry (file_offset));
  if (tag (old) == TAG_STORE)
    slots_retire (ov->slots, atomic_load (&ov->epoch) & 1, slot_of (old), true);
  return 0;
}

int
overlay_set_zero_blocks (struct overlay *ov, uint64_t block, uint64_t n)
{
  int err;
  if (block >= ov->nblocks || n > ov->nblocks - block)
    return -1;
  return ov_zero_blocks (ov, block, block + n, &err);
}

int
overlay_put_block (struct overlay *ov, uint64_t block, const void *buf, int *err)
{
  if (block >= ov->nblocks) {
    *err = EINVAL;
    return -1;
  }
  return ov_write_blocks (ov, block, block + 1, buf, err);
}
