/* luacow: the copy-on-write overlay, see overlay.h.
 *
 * Design note.
 *
 * Block states.  Each block of the export has one 64-bit entry in a
 * lock-free radix tree (blockmap.c): clean (read the plugin), zero, data
 * in store slot N, or data at offset N of the reloaded qcow2 file (read in
 * place).  Blocks are 512 bytes to 4 KiB (the cluster size, capped).
 *
 * Slot ownership (slots.h).  A slot is written only by the request that
 * owns it: one that took it fresh, or, holding the block's stripe, one
 * writing over a slot in place.  In place is allowed without a journal,
 * and with one only for a slot that no commit names yet (marked FRESH in
 * its entry, with the parity of the epoch it was first written in); never
 * while a save's frozen view is alive.  Every other write takes fresh
 * slots, writes them, and only then publishes them by exchanging the
 * entries under the stripe locks of its blocks (stripes of 64 blocks; a
 * request takes its stripes in ascending order), which also orders its
 * journal records exactly as the exchanges.  The writer that replaced an
 * entry retires the old slot into the limbo of the current epoch.  A
 * retired slot is reused only when (1) no request that could have looked
 * it up is still running and (2) with a journal, the record that
 * unreferenced it is durable, and (3) no frozen view (a save) is alive.
 * So a reader never sees a slot rewritten under it by another block's
 * data, a durable state never references a slot that was written again,
 * and a failed write gives its untouched slots back.
 *
 * Epochs.  A request enters the current epoch (a counter per epoch
 * parity) and leaves it when done.  A commit advances the epoch and waits
 * for the requests of the old one to leave.  Records and retirements are
 * filed under the epoch read while holding the stripe locks, so when
 * commit(x) has drained x, the records of x are complete and the slots
 * retired in x are unreachable: commit(x) writes x's records (each with
 * its slot's hash as of then: a FRESH slot may have been written over in
 * place since), syncs, clears the FRESH marks of x, and reclaims x's
 * limbo.  A writer of epoch x+1 never writes over a slot of x in place
 * (the parity differs), so nothing a commit names changes after it.
 * Nothing in a request waits for a commit.
 *
 * Flush ordering.  A flush notes the epoch e current when it arrives;
 * every write acknowledged before it filed its records under an epoch
 * <= e.  It returns once commit(e) (or a later one) has synced: data was
 * written before its records, and one fdatasync makes both durable.  A
 * FUA write is a write followed by such a flush.  While flushes come, the
 * store asks the kernel to start writing data back early (write-behind,
 * store.h), so that the commit's sync has less to wait for; that orders
 * nothing: only the sync makes anything durable.  Without a journal the
 * same commits run (every second, in the background) only to reclaim.
 *
 * Recovery invariant.  The journal's durable commits name, for every
 * block they touch, a slot (or zero, or a range of the base file) whose
 * content is what a write put there: slots named by a durable commit are
 * never written again until a later durable commit unreferences them.
 * So after a crash each block holds the data of the last completed flush
 * or of a later write that reached the disk whole (the last commit is
 * kept only when every slot it names hashes to what was written).  A
 * compaction names slots without hashes, FRESH ones of the open epoch
 * too: it clears their mark first (under the block's stripe), so none of
 * them is written over in place once that log is durable.
 *
 * Saves.  overlay_freeze copies the block map with writers held off (all
 * stripes) for the copy only, and pins the slots: the save reads a
 * point-in-time image while writers carry on into fresh slots.
 */
#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nbdkit-filter.h>
#include <xxhash.h>

#include "fullio.h"
#include "overlay_impl.h"

/* Retired slots (or journal records) of one epoch that wake the committer
 * early, so that rewrites reuse space instead of growing the store.
 */
#define NUDGE_EVERY 4096
/* Journal records of one epoch that wake the committer (32 MiB of them):
 * rewrites in place add none, so this is about fresh data.
 */
#define RECORDS_NUDGE ((uint64_t) 1 << 20)

/* ---------------------------------------------------------------- epochs */

uint64_t
ov_enter (struct overlay *ov)
{
  for (;;) {
    uint64_t e = atomic_load (&ov->epoch);
    atomic_fetch_add (&ov->active[e & 1], 1);
    if (atomic_load (&ov->epoch) == e)
      return e;
    atomic_fetch_sub (&ov->active[e & 1], 1);   /* raced an advance: again */
  }
}

void
ov_exit (struct overlay *ov, uint64_t e)
{
  atomic_fetch_sub (&ov->active[e & 1], 1);
}

/* ---------------------------------------------------------------- basics */

uint64_t overlay_size (const struct overlay *ov) { return ov->size; }
uint32_t overlay_block_size (const struct overlay *ov) { return ov->bs; }
bool overlay_has_journal (const struct overlay *ov) { return ov->journal != NULL; }

void
overlay_stats (const struct overlay *ov, struct ov_stats *s)
{
  struct overlay *m = (struct overlay *) ov;
  s->data_blocks = atomic_load (&m->data_blocks);
  s->zero_blocks = atomic_load (&m->zero_blocks);
  s->written_bytes = atomic_load (&m->written_bytes);
  s->zeroed_bytes = atomic_load (&m->zeroed_bytes);
  s->memory_bytes = blockmap_bytes (ov->map) + sizeof *ov;
  s->store_slots = slots_end ((ov->live ? ov->live : ov)->slots);
}

#define block_end ov_block_end

static int
pread_file (struct overlay *ov, void *buf, uint64_t count, uint64_t off, int *err)
{
  if (full_pread (ov->file_fd, buf, count, off) == -1) {
    *err = errno;
    nbdkit_error ("luacow: reading the reloaded qcow2 at %" PRIu64 ": %s", off,
                  errno == EIO ? "unexpected end of file or I/O error" : strerror (errno));
    return -1;
  }
  return 0;
}

void
ov_account (struct overlay *ov, uint64_t old, uint64_t new)
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
}

/* ----------------------------------------------------------------- reads */

/* Blocks from b on (before end) whose entries continue e's run. */
static uint64_t
run_end_of (const struct overlay *ov, uint64_t b, uint64_t e, uint64_t end)
{
  uint64_t nb = b + 1;
  if (tag (e) == TAG_STORE)
    while ((nb << ov->bits) < end && is_slot (blockmap_get (ov->map, nb), slot_of (e) + (nb - b)))
      nb++;
  else
    while ((nb << ov->bits) < end &&
           blockmap_get (ov->map, nb) == file_entry (file_offset_of (e) + ((nb - b) << ov->bits)))
      nb++;
  return min64 (end, nb << ov->bits);
}

int
overlay_pread (struct overlay *ov, const struct ov_lower *lower,
               void *buf, uint32_t count, uint64_t offset, int *err)
{
  char *p = buf;
  uint64_t pos = offset, end = offset + count;
  bool live = ov->live == NULL;   /* a frozen view's slots are pinned */

  /* Each pass serves one run of blocks in the same state with one call. */
  while (pos < end) {
    uint64_t b = pos >> ov->bits, nb, run_end;
    uint64_t ep = live ? ov_enter (ov) : 0;
    uint64_t e = blockmap_get (ov->map, b);
    int r = 0;
    switch (tag (e)) {
    case E_CLEAN:
      if (live) ov_exit (ov, ep);
      nb = blockmap_next_other (ov->map, b + 1, ov->nblocks, E_CLEAN);
      run_end = min64 (end, nb << ov->bits);
      r = lower->pread (lower->handle, p, (uint32_t) (run_end - pos), pos, err);
      break;
    case E_ZERO:
      if (live) ov_exit (ov, ep);
      nb = blockmap_next_other (ov->map, b + 1, ov->nblocks, E_ZERO);
      run_end = min64 (end, nb << ov->bits);
      memset (p, 0, run_end - pos);
      break;
    case TAG_STORE:             /* the slot stays ours until we leave */
      run_end = run_end_of (ov, b, e, end);
      r = store_read (ov->store, p, run_end - pos,
                      (slot_of (e) << ov->bits) + (pos - (b << ov->bits)), err);
      if (live) ov_exit (ov, ep);
      break;
    default: /* TAG_FILE */
      if (live) ov_exit (ov, ep);
      run_end = run_end_of (ov, b, e, end);
      r = pread_file (ov, p, run_end - pos, file_offset_of (e) + (pos - (b << ov->bits)), err);
      break;
    }
    if (r == -1)
      return -1;
    p += run_end - pos;
    pos = run_end;
  }
  return 0;
}

/* ---------------------------------------------------------------- stripes */

void
ov_stripes_of (struct stripe_set *s, uint64_t b, uint64_t b_end)
{
  memset (s, 0, sizeof *s);
  uint64_t g0 = b >> STRIPE_SHIFT, g1 = (b_end - 1) >> STRIPE_SHIFT;
  if (g1 - g0 + 1 >= STRIPES) {
    memset (s->bits, 0xff, sizeof s->bits);
    return;
  }
  for (uint64_t g = g0; g <= g1; ++g)
    s->bits[(g % STRIPES) / 64] |= (uint64_t) 1 << (g % 64);
}

void
ov_stripes_lock (struct overlay *ov, const struct stripe_set *s)
{
  for (unsigned i = 0; i < STRIPES; ++i)       /* ascending: no deadlock */
    if (s->bits[i / 64] >> (i % 64) & 1)
      pthread_mutex_lock (&ov->stripes[i]);
}

void
ov_stripes_unlock (struct overlay *ov, const struct stripe_set *s)
{
  for (unsigned i = 0; i < STRIPES; ++i)
    if (s->bits[i / 64] >> (i % 64) & 1)
      pthread_mutex_unlock (&ov->stripes[i]);
}

/* ---------------------------------------------------------------- writes */

/* File a journal record under epoch parity p (journal only).  0 or -1. */
int
ov_add_record (struct overlay *ov, unsigned p, const struct jrec *r, int *err)
{
  if (!ov->journal)
    return 0;
  struct jrec *slot = avec_push (&ov->recs[p]);
  if (!slot) {
    *err = ENOMEM;
    nbdkit_error ("luacow: out of memory for journal records");
    return -1;
  }
  *slot = *r;
  return 0;
}

/* Publish fresh slots s[0..k) for blocks [b, b+k) while holding their
 * stripes: the records, then the exchanges, so records and entries change
 * in the same order for every block.
 */
static int
publish_locked (struct overlay *ov, uint64_t b, uint64_t k, const uint64_t *s, int *err)
{
  _Atomic uint64_t *cells[SLOTS_MAX_TAKE];
  for (uint64_t i = 0; i < k; ++i)
    if (!(cells[i] = blockmap_cell (ov->map, b + i))) {
      *err = ENOMEM;
      nbdkit_error ("luacow: out of memory growing the block map");
      return -1;
    }
  unsigned p = atomic_load (&ov->epoch) & 1;
  /* One record per block, so that a commit can drop the ones it replaces;
   * the commit hashes the slot's data as it then is.
   */
  for (uint64_t i = 0; i < k && ov->journal; ++i) {
    struct jrec rec = { .kind = REC_STORE, .count = 1, .block = b + i, .value = s[i] };
    if (ov_add_record (ov, p, &rec, err) == -1)
      return -1;
  }
  bool nudge = false;
  for (uint64_t i = 0; i < k; ++i) {
    uint64_t e = ov->journal ? fresh_entry (s[i], p) : store_entry (s[i]);
    uint64_t old = atomic_exchange (cells[i], e);
    ov_account (ov, old, e);
    if (tag (old) == TAG_STORE) {
      slots_retire (ov->slots, p, slot_of (old), false);
      nudge |= slots_retired (ov->slots, p) % NUDGE_EVERY == 0;
    }
  }
  if (nudge || (ov->journal && avec_len (&ov->recs[p]) % RECORDS_NUDGE < k))
    ov_nudge (ov);
  return 0;
}

/* Whether entry e's slot may be written over in place now (the caller
 * holds its stripe; p is the epoch parity read under it).  Never while a
 * save's view is alive (it reads the slots as they were).  With a
 * journal, only a slot no commit names yet: one first written in this
 * very epoch, whose commit (after this request drains) records it with
 * its last hash.
 */
static bool
in_place (const struct overlay *ov, uint64_t e, unsigned p)
{
  if (tag (e) != TAG_STORE || is_copy (e) || atomic_load (&((struct overlay *) ov)->pins) != 0)
    return false;
  return !ov->journal || ((e & E_FRESH) && !!(e & E_PARITY) == p);
}

/* Whole blocks [b, b+k) written over in place, if every one may be.
 * 1: done, 0: not possible (write fresh slots instead), -1: error.
 */
static int
write_in_place (struct overlay *ov, uint64_t b, uint64_t k, const char *src,
                uint64_t bytes, int *err)
{
  struct stripe_set set;
  ov_stripes_of (&set, b, b + k);
  ov_stripes_lock (ov, &set);
  unsigned p = atomic_load (&ov->epoch) & 1;
  int r = 1;
  for (uint64_t i = 0; i < k && r == 1; ++i)
    if (!in_place (ov, blockmap_get (ov->map, b + i), p))
      r = 0;
  for (uint64_t i = 0; i < k && r == 1;) {
    uint64_t s = slot_of (blockmap_get (ov->map, b + i)), n = 1;
    while (i + n < k && is_slot (blockmap_get (ov->map, b + i + n), s + n))
      n++;
    uint64_t off = i << ov->bits, len = min64 (bytes, (i + n) << ov->bits) - off;
    if (store_write (ov->store, src + off, len, s << ov->bits, err) == -1)
      r = -1;
    i += n;
  }
  ov_stripes_unlock (ov, &set);
  return r;
}

/* Block b's entry for the compacted log.  A FRESH slot (of the open
 * epoch, no commit names it yet) loses its mark under b's stripe, where
 * no in-place write to it is in flight: the log about to become durable
 * names it without a hash, so it must never be written over in place
 * again (a torn in-place write would leave bytes of two writes in it).
 */
uint64_t
ov_entry_for_log (struct overlay *ov, uint64_t b)
{
  uint64_t e = blockmap_get (ov->map, b);
  if (tag (e) != TAG_STORE || is_copy (e) || !(e & E_FRESH))
    return e;
  struct stripe_set set;
  ov_stripes_of (&set, b, b + 1);
  ov_stripes_lock (ov, &set);
  _Atomic uint64_t *cell = blockmap_cell (ov->map, b);   /* exists: b has data */
  e = cell ? atomic_load (cell) : E_CLEAN;
  if (tag (e) == TAG_STORE && (e & E_FRESH) &&
      atomic_compare_exchange_strong (cell, &e, e & ~(uint64_t) (E_FRESH | E_PARITY)))
    e &= ~(uint64_t) (E_FRESH | E_PARITY);
  ov_stripes_unlock (ov, &set);
  return e;
}

static int
publish (struct overlay *ov, uint64_t b, uint64_t k, const uint64_t *s, int *err)
{
  struct stripe_set set;
  ov_stripes_of (&set, b, b + k);
  ov_stripes_lock (ov, &set);
  int r = publish_locked (ov, b, k, s, err);
  ov_stripes_unlock (ov, &set);
  return r;
}

int
ov_write_slots (struct overlay *ov, const uint64_t *s, uint64_t k, const char *src,
                uint64_t bytes, int *err)
{
  for (uint64_t i = 0; i < k;) {
    uint64_t n = 1;
    while (i + n < k && s[i + n] == s[i] + n)
      n++;
    uint64_t off = i << ov->bits, len = min64 (bytes, (i + n) << ov->bits) - off;
    if (store_write (ov->store, src + off, len, s[i] << ov->bits, err) == -1)
      return -1;
    i += n;
  }
  return 0;
}

/* Write whole blocks [b, b_end) from src (the last block of the export
 * may be short), up to SLOTS_MAX_TAKE blocks at a time.
 */
int
ov_write_blocks (struct overlay *ov, uint64_t b, uint64_t b_end, const char *src, int *err)
{
  while (b < b_end) {
    uint64_t k = min64 (b_end - b, SLOTS_MAX_TAKE), s[SLOTS_MAX_TAKE];
    uint64_t bytes = block_end (ov, b + k - 1) - (b << ov->bits);
    int done = write_in_place (ov, b, k, src, bytes, err);
    if (done == -1)
      return -1;
    if (done == 1) {
      src += bytes;
      b += k;
      continue;
    }
    if (slots_take (ov->slots, k, s) == -1) {
      *err = errno == EFBIG ? ENOSPC : errno;
      nbdkit_error ("luacow: the overlay store cannot grow: %s", strerror (errno));
      return -1;
    }
    int r = ov_write_slots (ov, s, k, src, bytes, err);
    if (r == 0)
      r = publish (ov, b, k, s, err);
    if (r == -1) {            /* nobody saw these slots: give them back */
      unsigned p = atomic_load (&ov->epoch) & 1;
      for (uint64_t i = 0; i < k; ++i)
        slots_retire (ov->slots, p, s[i], true);
      return -1;
    }
    src += bytes;
    b += k;
  }
  return 0;
}

/* The current content of block b into blk (len bytes); the caller holds
 * b's stripe, so the entry and its slot cannot change.
 */
static int
read_block_locked (struct overlay *ov, const struct ov_lower *lower, uint64_t b,
                   char *blk, uint64_t len, int *err)
{
  uint64_t e = blockmap_get (ov->map, b);
  switch (tag (e)) {
  case E_CLEAN: return lower->pread (lower->handle, blk, (uint32_t) len, b << ov->bits, err);
  case E_ZERO: memset (blk, 0, len); return 0;
  case TAG_STORE: return store_read (ov->store, blk, len, slot_of (e) << ov->bits, err);
  default: return pread_file (ov, blk, len, file_offset_of (e), err);
  }
}

/* Write (src) or zero (src NULL) n bytes at offset `in` inside block b,
 * which the request covers only partly: read-modify-write under the
 * block's stripe so that neighbouring partial writes never undo each
 * other.  A clean block's data is read from below before locking, so a
 * slow plugin holds up no one else.
 */
static int
write_partial (struct overlay *ov, const struct ov_lower *lower, uint64_t b,
               uint64_t in, uint64_t n, const char *src, int *err)
{
  char blk[MAX_BLOCK], below[MAX_BLOCK];
  uint64_t start = b << ov->bits, len = block_end (ov, b) - start;
  bool have_below = false;
  if (blockmap_get (ov->map, b) == E_CLEAN) {
    if (lower->pread (lower->handle, below, (uint32_t) len, start, err) == -1)
      return -1;
    have_below = true;
  }
  struct stripe_set set;
  ov_stripes_of (&set, b, b + 1);
  uint64_t ep = ov_enter (ov);
  ov_stripes_lock (ov, &set);
  uint64_t e = blockmap_get (ov->map, b);
  int r = 0;
  if (src == NULL && e == E_ZERO)
    goto out;                   /* already zero */
  if (e == E_CLEAN && have_below)
    memcpy (blk, below, len);
  else if ((r = read_block_locked (ov, lower, b, blk, len, err)) == -1)
    goto out;
  if (src)
    memcpy (blk + in, src, n);
  else
    memset (blk + in, 0, n);
  if (in_place (ov, e, atomic_load (&ov->epoch) & 1)) {
    r = store_write (ov->store, blk, len, slot_of (e) << ov->bits, err);
    goto out;
  }
  uint64_t s;
  if (slots_take (ov->slots, 1, &s) == -1) {
    *err = errno == EFBIG ? ENOSPC : errno;
    nbdkit_error ("luacow: the overlay store cannot grow: %s", strerror (errno));
    r = -1;
    goto out;
  }
  r = store_write (ov->store, blk, len, s << ov->bits, err);
  if (r == 0)
    r = publish_locked (ov, b, 1, &s, err);
  if (r == -1)
    slots_retire (ov->slots, atomic_load (&ov->epoch) & 1, s, true);
 out:
  ov_stripes_unlock (ov, &set);
  ov_exit (ov, ep);
  return r;
}

struct retire_job {
  struct overlay *ov;
  unsigned p;
  uint64_t data_gone;
};

static void
retire_old (void *opaque, uint64_t block, uint64_t old)
{
  struct retire_job *j = opaque;
  (void) block;
  if (is_data (old))
    j->data_gone++;
  if (tag (old) == TAG_STORE)
    slots_retire (j->ov->slots, j->p, slot_of (old), true);
}

/* Whole blocks [b, b_end) become zero: metadata only. */
int
ov_zero_blocks (struct overlay *ov, uint64_t b, uint64_t b_end, int *err)
{
  struct stripe_set set;
  ov_stripes_of (&set, b, b_end);
  ov_stripes_lock (ov, &set);
  struct retire_job j = { .ov = ov, .p = atomic_load (&ov->epoch) & 1 };
  int r = 0;
  for (uint64_t x = b; x < b_end && r == 0;) {  /* counts are 32-bit on disk */
    uint64_t n = min64 (b_end - x, UINT32_MAX);
    struct jrec rec = { .kind = REC_ZERO, .count = (uint32_t) n, .block = x };
    r = ov_add_record (ov, j.p, &rec, err);
    x += n;
  }
  uint64_t changed = r == 0 ? blockmap_fill (ov->map, b, b_end, retire_old, &j) : 0;
  ov_stripes_unlock (ov, &set);
  if (slots_retired (ov->slots, j.p) >= NUDGE_EVERY)
    ov_nudge (ov);
  atomic_fetch_sub (&ov->data_blocks, j.data_gone);
  if (r == -1)
    return -1;
  if (changed == UINT64_MAX) {
    *err = ENOMEM;
    nbdkit_error ("luacow: out of memory growing the block map");
    return -1;
  }
  atomic_fetch_add (&ov->zero_blocks, changed);
  return 0;
}

/* A write request is one point in time for a save: overlay_freeze waits
 * for those in flight and holds new ones off while it copies the map.
 */
static void
writer_begin (struct overlay *ov)
{
  for (;;) {
    atomic_fetch_add (&ov->writers, 1);
    if (!atomic_load (&ov->freezing))
      return;
    atomic_fetch_sub (&ov->writers, 1);
    pthread_mutex_lock (&ov->freeze_lock);   /* held by the freeze throughout */
    pthread_mutex_unlock (&ov->freeze_lock);
  }
}

static void
writer_end (struct overlay *ov)
{
  atomic_fetch_sub (&ov->writers, 1);
}

/* Split [offset, offset+count) into a partial head block, whole blocks
 * and a partial tail block.
 */
static int
apply_pieces (struct overlay *ov, const struct ov_lower *lower, const char *src,
              uint64_t count, uint64_t offset, int *err)
{
  uint64_t pos = offset, end = offset + count;
  atomic_fetch_add_explicit (src ? &ov->written_bytes : &ov->zeroed_bytes, count,
                             memory_order_relaxed);
  bool retried = false;
  while (pos < end) {
    uint64_t b = pos >> ov->bits;
    uint64_t in = pos - (b << ov->bits);
    uint64_t bend = block_end (ov, b);
    uint64_t stop;
    int r;
    if (in != 0 || end < bend) {
      stop = min64 (end, bend);
      r = write_partial (ov, lower, b, in, stop - pos, src, err);
    }
    else {
      /* Whole blocks from b up to the last block the request covers fully. */
      uint64_t b_end = end >= ov->size ? ov->nblocks : end >> ov->bits;
      stop = min64 (end, b_end << ov->bits);
      uint64_t ep = ov_enter (ov);
      r = src ? ov_write_blocks (ov, b, b_end, src, err) : ov_zero_blocks (ov, b, b_end, err);
      ov_exit (ov, ep);
    }
    if (r == -1 && *err == ENOSPC && !retried) {
      /* Space freed by trims may still wait for the next commit: commit
       * now (outside any epoch) and try this piece once more.
       */
      int e2;
      retried = true;
      overlay_tick (ov, &e2);
      continue;
    }
    if (r == -1)
      return -1;
    if (src)
      src += stop - pos;
    pos = stop;
  }
  return 0;
}

static int
apply (struct overlay *ov, const struct ov_lower *lower, const char *src,
       uint64_t count, uint64_t offset, int *err)
{
  writer_begin (ov);
  int r = apply_pieces (ov, lower, src, count, offset, err);
  writer_end (ov);
  return r;
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
overlay_flush (struct overlay *ov, int *err)
{
  if (!ov->journal)
    return 0;
  ov_flushing (ov);
  uint64_t target = atomic_load (&ov->epoch);
  if (atomic_load (&ov->committed) > target) {
    int e = atomic_load (&ov->journal_errno);
    if (e) {
      *err = e;
      return -1;
    }
    return 0;                 /* a commit that started after us covered it */
  }
  pthread_mutex_lock (&ov->commit_lock);
  int r = 0;
  if (atomic_load (&ov->committed) <= target)
    r = ov_commit (ov, false, err);
  else if (atomic_load (&ov->journal_errno)) {
    *err = atomic_load (&ov->journal_errno);
    r = -1;
  }
  pthread_mutex_unlock (&ov->commit_lock);
  return r;
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
    if (is_clean (e)) {         /* copies of the plugin's data are clean too */
      kind = OV_CLEAN;
      nb = b + 1;
      for (;;) {
        nb = blockmap_next_other (ov->map, nb, ov->nblocks, E_CLEAN);
        if (nb >= ov->nblocks || (nb << ov->bits) >= end || !is_copy (blockmap_get (ov->map, nb)))
          break;
        nb++;
      }
    }
    else if (e == E_ZERO) {
      kind = OV_ZERO;
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

/* ----------------------------------------------------------------- views */

struct overlay *
overlay_freeze (struct overlay *ov)
{
  struct overlay *v = malloc (sizeof *v);
  if (!v)
    return NULL;
  /* One freeze at a time; requests in flight finish, new ones wait.  The
   * loaders (overlay_put_block...) run before any client, outside this.
   */
  pthread_mutex_lock (&ov->freeze_lock);
  atomic_store (&ov->freezing, 1);
  for (unsigned spins = 0; atomic_load (&ov->writers) != 0; ++spins) {
    if (spins < 64)
      sched_yield ();
    else {
      struct timespec ts = { 0, 50000 };
      nanosleep (&ts, NULL);
    }
  }
  atomic_fetch_add (&ov->pins, 1);   /* before any later retirement or overwrite */
  struct blockmap *copy = blockmap_clone (ov->map);
  uint64_t data = atomic_load (&ov->data_blocks), zero = atomic_load (&ov->zero_blocks);
  uint64_t written = atomic_load (&ov->written_bytes), zeroed = atomic_load (&ov->zeroed_bytes);
  atomic_store (&ov->freezing, 0);
  pthread_mutex_unlock (&ov->freeze_lock);
  if (!copy) {
    atomic_fetch_sub (&ov->pins, 1);
    free (v);
    return NULL;
  }
  /* Only the fields reads and maps use; the view never writes. */
  memset (v, 0, sizeof *v);
  v->size = ov->size;
  v->nblocks = ov->nblocks;
  v->bs = ov->bs;
  v->bits = ov->bits;
  v->map = copy;
  v->store = ov->store;
  v->file_fd = ov->file_fd;
  v->live = ov;
  atomic_init (&v->data_blocks, data);
  atomic_init (&v->zero_blocks, zero);
  atomic_init (&v->written_bytes, written);
  atomic_init (&v->zeroed_bytes, zeroed);
  return v;
}

