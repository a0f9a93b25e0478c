/* luacow: the copy-on-write overlay, see overlay.h. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "blockmap.h"
#include "overlay.h"
#include "store.h"

/* A block's entry in the block map: the low two bits are the state, the
 * rest says where the data is.  Clean is 0 so untouched blocks cost
 * nothing; zero is the block map's fill value.
 */
enum { E_CLEAN = 0, E_ZERO = 1, TAG_STORE = 2, TAG_FILE = 3 };

static inline unsigned tag (uint64_t e) { return e & 3; }
static inline bool is_data (uint64_t e) { return tag (e) >= TAG_STORE; }
static inline uint64_t store_entry (uint64_t slot) { return slot << 2 | TAG_STORE; }
static inline uint64_t slot_of (uint64_t e) { return e >> 2; }
/* Reloaded qcow2 data offsets are multiples of 512, so the tag fits. */
static inline uint64_t file_entry (uint64_t off) { return off | TAG_FILE; }
static inline uint64_t file_offset_of (uint64_t e) { return e & ~(uint64_t) 3; }

#define MAX_BLOCK 4096
#define LOCK_STRIPES 256

struct overlay {
  uint64_t size;
  uint64_t nblocks;
  uint32_t bs;
  unsigned bits;
  struct blockmap *map;
  struct store *store;
  int file_fd;                /* reloaded qcow2, or -1 */
  pthread_mutex_t locks[LOCK_STRIPES];
  _Atomic uint64_t data_blocks;
  _Atomic uint64_t zero_blocks;
  _Atomic uint64_t written_bytes;
  _Atomic uint64_t zeroed_bytes;
};

static const char zero_block[MAX_BLOCK];

struct overlay *
overlay_new (uint64_t size, uint32_t block_size, const char *tmpdir)
{
  if (block_size < 512 || block_size > MAX_BLOCK || (block_size & (block_size - 1))) {
    nbdkit_error ("luacow: block size %u is not a power of two from 512 to %d",
                  block_size, MAX_BLOCK);
    return NULL;
  }
  struct overlay *ov = calloc (1, sizeof *ov);
  if (!ov) {
    nbdkit_error ("luacow: cannot allocate the overlay: %m");
    return NULL;
  }
  ov->size = size;
  ov->bs = block_size;
  ov->bits = (unsigned) __builtin_ctz (block_size);
  ov->nblocks = size / block_size + (size % block_size != 0);
  ov->file_fd = -1;
  for (unsigned i = 0; i < LOCK_STRIPES; ++i)
    pthread_mutex_init (&ov->locks[i], NULL);
  ov->map = blockmap_new (ov->nblocks, E_ZERO);
  if (!ov->map) {
    nbdkit_error ("luacow: cannot allocate the block map: %m");
    overlay_free (ov);
    return NULL;
  }
  ov->store = store_new (tmpdir, block_size);
  if (!ov->store) {
    overlay_free (ov);
    return NULL;
  }
  return ov;
}

void
overlay_free (struct overlay *ov)
{
  if (!ov)
    return;
  blockmap_free (ov->map);
  store_free (ov->store);
  for (unsigned i = 0; i < LOCK_STRIPES; ++i)
    pthread_mutex_destroy (&ov->locks[i]);
  free (ov);
}

uint64_t overlay_size (const struct overlay *ov) { return ov->size; }
uint32_t overlay_block_size (const struct overlay *ov) { return ov->bs; }

void
overlay_stats (const struct overlay *ov, struct ov_stats *s)
{
  s->data_blocks = atomic_load (&((struct overlay *) ov)->data_blocks);
  s->zero_blocks = atomic_load (&((struct overlay *) ov)->zero_blocks);
  s->written_bytes = atomic_load (&((struct overlay *) ov)->written_bytes);
  s->zeroed_bytes = atomic_load (&((struct overlay *) ov)->zeroed_bytes);
  s->memory_bytes = blockmap_bytes (ov->map) + sizeof *ov;
}

/* Byte offset of the end of block b, clipped to the export. */
static inline uint64_t
block_end (const struct overlay *ov, uint64_t b)
{
  uint64_t e = (b + 1) << ov->bits;
  return e < ov->size ? e : ov->size;
}

static inline uint64_t
min64 (uint64_t a, uint64_t b)
{
  return a < b ? a : b;
}

static int
pread_file (struct overlay *ov, void *buf, uint64_t count, uint64_t off, int *err)
{
  char *p = buf;
  while (count > 0) {
    ssize_t r = pread (ov->file_fd, p, count, (off_t) off);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0) {
      *err = r == 0 ? EIO : errno;
      nbdkit_error ("luacow: reading the reloaded qcow2 at %" PRIu64 ": %s",
                    off, r == 0 ? "unexpected end of file" : strerror (errno));
      return -1;
    }
    p += r; off += (uint64_t) r; count -= (uint64_t) r;
  }
  return 0;
}

/* The entry of block b changed from old to new: keep the counters exact
 * and give back the store space old held.
 */
static void
account (struct overlay *ov, uint64_t old, uint64_t new)
{
  if (old == new)
    return;
  if (old == E_ZERO)
    atomic_fetch_sub (&ov->zero_blocks, 1);
  else if (is_data (old))
    atomic_fetch_sub (&ov->data_blocks, 1);
  if (new == E_ZERO)
    atomic_fetch_add (&ov->zero_blocks, 1);
  else if (is_data (new))
    atomic_fetch_add (&ov->data_blocks, 1);
  if (tag (old) == TAG_STORE)
    store_release (ov->store, slot_of (old), 1);
}

static int
set_entry (struct overlay *ov, uint64_t b, uint64_t e, int *err)
{
  _Atomic uint64_t *cell = blockmap_cell (ov->map, b);
  if (!cell) {
    *err = ENOMEM;
    nbdkit_error ("luacow: out of memory growing the block map");
    return -1;
  }
  account (ov, atomic_exchange_explicit (cell, e, memory_order_acq_rel), e);
  return 0;
}

int
overlay_pread (struct overlay *ov, const struct ov_lower *lower,
               void *buf, uint32_t count, uint64_t offset, int *err)
{
  char *p = buf;
  uint64_t pos = offset, end = offset + count;

  /* Each pass serves one run of blocks in the same state with one call. */
  while (pos < end) {
    uint64_t b = pos >> ov->bits, nb;
    uint64_t e = blockmap_get (ov->map, b);
    uint64_t run_end;
    switch (tag (e)) {
    case E_CLEAN:
      nb = blockmap_next_other (ov->map, b + 1, ov->nblocks, E_CLEAN);
      run_end = min64 (end, nb << ov->bits);
      if (lower->pread (lower->handle, p, (uint32_t) (run_end - pos), pos, err) == -1)
        return -1;
      break;
    case E_ZERO:
      nb = blockmap_next_other (ov->map, b + 1, ov->nblocks, E_ZERO);
      run_end = min64 (end, nb << ov->bits);
      memset (p, 0, run_end - pos);
      break;
    case TAG_STORE:
      nb = b + 1;
      while ((nb << ov->bits) < end &&
             blockmap_get (ov->map, nb) == store_entry (slot_of (e) + (nb - b)))
        nb++;
      run_end = min64 (end, nb << ov->bits);
      if (store_read (ov->store, p, run_end - pos,
                      (slot_of (e) << ov->bits) + (pos - (b << ov->bits)), err) == -1)
        return -1;
      break;
    default: /* TAG_FILE */
      nb = b + 1;
      while ((nb << ov->bits) < end &&
             blockmap_get (ov->map, nb) == file_entry (file_offset_of (e) + ((nb - b) << ov->bits)))
        nb++;
      run_end = min64 (end, nb << ov->bits);
      if (pread_file (ov, p, run_end - pos,
                      file_offset_of (e) + (pos - (b << ov->bits)), err) == -1)
        return -1;
      break;
    }
    p += run_end - pos;
    pos = run_end;
  }
  return 0;
}

/* Write whole blocks [b, b_end) from src (the last block of the export
 * may be short).  Blocks already in the store are overwritten in place;
 * the others get fresh consecutive slots, published after the data is
 * written so that a reader never sees a slot before its data.
 */
static int
write_blocks (struct overlay *ov, uint64_t b, uint64_t b_end, const char *src, int *err)
{
  while (b < b_end) {
    uint64_t e = blockmap_get (ov->map, b);
    uint64_t k = 1;
    if (tag (e) == TAG_STORE) {
      while (b + k < b_end && blockmap_get (ov->map, b + k) == store_entry (slot_of (e) + k))
        k++;
    }
    else {
      while (b + k < b_end && tag (blockmap_get (ov->map, b + k)) != TAG_STORE)
        k++;
    }
    uint64_t bytes = block_end (ov, b + k - 1) - (b << ov->bits);
    if (tag (e) == TAG_STORE) {
      if (store_write (ov->store, src, bytes, slot_of (e) << ov->bits, err) == -1)
        return -1;
    }
    else {
      uint64_t slot = store_alloc (ov->store, k);
      if (store_write (ov->store, src, bytes, slot << ov->bits, err) == -1)
        return -1;
      for (uint64_t i = 0; i < k; ++i)
        if (set_entry (ov, b + i, store_entry (slot + i), err) == -1)
          return -1;
    }
    src += bytes;
    b += k;
  }
  return 0;
}

/* Write (src) or zero (src NULL) n bytes at offset `in` inside block b,
 * which the request covers only partly: read-modify-write under the
 * block's lock so that neighbouring partial writes never undo each other.
 */
static int
write_partial (struct overlay *ov, const struct ov_lower *lower, uint64_t b,
               uint64_t in, uint64_t n, const char *src, int *err)
{
  pthread_mutex_t *lock = &ov->locks[b % LOCK_STRIPES];
  int r = 0;
  pthread_mutex_lock (lock);
  uint64_t e = blockmap_get (ov->map, b);
  if (tag (e) == TAG_STORE)     /* already ours: patch in place */
    r = store_write (ov->store, src ? src : zero_block, n, (slot_of (e) << ov->bits) + in, err);
  else if (!(src == NULL && e == E_ZERO)) {
    char blk[MAX_BLOCK];
    uint64_t start = b << ov->bits, len = block_end (ov, b) - start;
    r = overlay_pread (ov, lower, blk, (uint32_t) len, start, err);
    if (r == 0) {
      if (src)
        memcpy (blk + in, src, n);
      else
        memset (blk + in, 0, n);
      r = write_blocks (ov, b, b + 1, blk, err);
    }
  }
  pthread_mutex_unlock (lock);
  return r;
}

struct release_run {
  struct overlay *ov;
  uint64_t slot, n;           /* pending run of store slots to give back */
  uint64_t data_gone;
};

static void
release_flush (struct release_run *rr)
{
  if (rr->n)
    store_release (rr->ov->store, rr->slot, rr->n);
  rr->n = 0;
}

static void
release_old (void *opaque, uint64_t block, uint64_t old)
{
  struct release_run *rr = opaque;
  (void) block;
  if (is_data (old))
    rr->data_gone++;
  if (tag (old) != TAG_STORE)
    return;
  if (rr->n && slot_of (old) == rr->slot + rr->n) {
    rr->n++;
    return;
  }
  release_flush (rr);
  rr->slot = slot_of (old);
  rr->n = 1;
}

/* Whole blocks [b, b_end) become zero: metadata only. */
static int
zero_blocks (struct overlay *ov, uint64_t b, uint64_t b_end, int *err)
{
  struct release_run rr = { .ov = ov };
  uint64_t changed = blockmap_fill (ov->map, b, b_end, release_old, &rr);
  release_flush (&rr);
  atomic_fetch_sub (&ov->data_blocks, rr.data_gone);
  if (changed == UINT64_MAX) {
    *err = ENOMEM;
    nbdkit_error ("luacow: out of memory growing the block map");
    return -1;
  }
  atomic_fetch_add (&ov->zero_blocks, changed);
  return 0;
}

/* Split [offset, offset+count) into a partial head block, whole blocks
 * and a partial tail block.
 */
static int
apply (struct overlay *ov, const struct ov_lower *lower, const char *src,
       uint64_t count, uint64_t offset, int *err)
{
  uint64_t pos = offset, end = offset + count;
  atomic_fetch_add_explicit (src ? &ov->written_bytes : &ov->zeroed_bytes, count,
                             memory_order_relaxed);
  while (pos < end) {
    uint64_t b = pos >> ov->bits;
    uint64_t in = pos - (b << ov->bits);
    uint64_t bend = block_end (ov, b);
    if (in != 0 || end < bend) {
      uint64_t n = min64 (end, bend) - pos;
      if (write_partial (ov, lower, b, in, n, src, err) == -1)
        return -1;
      pos += n;
      if (src)
        src += n;
      continue;
    }
    /* Whole blocks from b up to the last block the request covers fully. */
    uint64_t b_end = end >= ov->size ? ov->nblocks : end >> ov->bits;
    uint64_t stop = min64 (end, b_end << ov->bits);
    int r = src ? write_blocks (ov, b, b_end, src, err) : zero_blocks (ov, b, b_end, err);
    if (r == -1)
      return -1;
    if (src)
      src += stop - pos;
    pos = stop;
  }
  return 0;
}

int
overlay_pwrite (struct overlay *ov, const struct ov_lower *lower,
                const void *buf, uint32_t count, uint64_t offset, int *err)
{
  return apply (ov, lower, buf, count, offset, err);
}

int
overlay_zero (struct overlay *ov, const struct ov_lower *lower,
              uint64_t count, uint64_t offset, int *err)
{
  return apply (ov, lower, NULL, count, offset, err);
}

int
overlay_map (const struct overlay *ov, uint64_t offset, uint64_t count,
             ov_run_fn fn, void *opaque)
{
  uint64_t end = offset + count > ov->size || offset + count < offset
    ? ov->size : offset + count;
  uint64_t pos = offset;
  while (pos < end) {
    uint64_t b = pos >> ov->bits, nb;
    uint64_t e = blockmap_get (ov->map, b);
    enum ov_kind kind;
    if (e == E_CLEAN || e == E_ZERO) {
      kind = e == E_CLEAN ? OV_CLEAN : OV_ZERO;
      nb = blockmap_next_other (ov->map, b + 1, ov->nblocks, e);
    }
    else {
      kind = OV_DATA;
      nb = b + 1;
      while (nb < ov->nblocks && (nb << ov->bits) < end && is_data (blockmap_get (ov->map, nb)))
        nb++;
    }
    uint64_t run_end = min64 (end, nb << ov->bits);
    int r = fn (opaque, kind, pos, run_end - pos);
    if (r)
      return r;
    pos = run_end;
  }
  return 0;
}

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
  return set_entry (ov, block, file_entry (file_offset), &err);
}

int
overlay_set_zero_blocks (struct overlay *ov, uint64_t block, uint64_t n)
{
  int err;
  if (block >= ov->nblocks || n > ov->nblocks - block)
    return -1;
  return zero_blocks (ov, block, block + n, &err);
}

int
overlay_put_block (struct overlay *ov, uint64_t block, const void *buf, int *err)
{
  if (block >= ov->nblocks) {
    *err = EINVAL;
    return -1;
  }
  return write_blocks (ov, block, block + 1, buf, err);
}
