/* luacow: the overlay's life and durability: open (and recover), commits,
 * the background committer, compaction, and the journal's end.  The
 * request paths and the design note are in overlay.c, recovery in
 * overlay_recover.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include <nbdkit-filter.h>
#include <xxhash.h>

#include "clock.h"
#include "fullio.h"
#include "overlay_impl.h"

/* Seconds between background commits: without a journal they only
 * reclaim space (no I/O); with one they sync, so as rarely as the
 * kernel's own writeback of dirty data (30 s by default) unless space or
 * records pile up (overlay.c's nudges).
 */
#define COMMIT_EVERY 1
#define COMMIT_EVERY_JOURNAL 30
#define COMPACT_MIN ((uint64_t) 64 << 20)   /* log bytes before compacting */
#define COMPACT_RATIO 4                /* ... and this many times the live map */
/* Write-behind (store.h): a kick per this many bytes written, while a
 * flush came within the last WRITE_BEHIND_ARMED seconds.  In `make
 * bench`'s durable jobs, 64 KiB beat 16 and 32 KiB at iodepth 1 (each kick
 * costs CPU) and came within 5% of them at iodepth 16 (3 runs each).
 */
#define WRITE_BEHIND_KICK ((uint64_t) 64 << 10)
#define WRITE_BEHIND_ARMED 1.0

/* --------------------------------------------------------------- commits */

/* Advance the epoch and wait until no request of the old one runs. */
static uint64_t
advance (struct overlay *ov)
{
  uint64_t x = atomic_fetch_add (&ov->epoch, 1);
  for (unsigned spins = 0; atomic_load (&ov->active[x & 1]) != 0; ++spins) {
    if (spins < 64)
      sched_yield ();
    else {
      struct timespec ts = { 0, 50000 };
      nanosleep (&ts, NULL);
    }
  }
  return x;
}

/* Each STORE record hashes its slot's data as it is now, after the drain:
 * a slot written over in place within the epoch is named with its last
 * content, and nothing writes it again before the next commit.  Runs of
 * consecutive blocks and slots are read with one call.  Hashing here, not
 * in the request path, costs the commit what changed since the last one.
 */
#define HASH_READ ((uint64_t) 1 << 20)

static int
take_hashes (struct overlay *ov, unsigned p)
{
  if (!ov->hash_buf && !(ov->hash_buf = malloc (HASH_READ)))
    return -1;
  char *buf = ov->hash_buf;
  uint64_t n = avec_len (&ov->recs[p]);
  for (uint64_t i = 0; i < n;) {
    struct jrec *r = avec_at (&ov->recs[p], i);
    if (!r || r->kind != REC_STORE) {
      i++;
      continue;
    }
    /* The run of records i.. naming blocks b.. in slots s.. */
    uint64_t k = 1;
    while (i + k < n && ((k + 1) << ov->bits) <= HASH_READ) {
      struct jrec *x = avec_at (&ov->recs[p], i + k);
      if (!x || x->kind != REC_STORE || x->block != r->block + k || x->value != r->value + k)
        break;
      k++;
    }
    uint64_t bytes = min64 ((r->block + k) << ov->bits, ov->size) - (r->block << ov->bits);
    int e;
    if (store_read (ov->store, buf, bytes, r->value << ov->bits, &e) == -1) {
      errno = e;
      return -1;
    }
    for (uint64_t x = 0; x < k; ++x) {
      struct jrec *y = avec_at (&ov->recs[p], i + x);
      uint64_t off = x << ov->bits;
      y->hash = XXH3_64bits (buf + off, min64 (bytes, off + ov->bs) - off);
    }
    i += k;
  }
  return 0;
}

/* The slots of a durable commit may no longer be written over in place:
 * drop their FRESH mark (an entry replaced meanwhile is left alone).
 */
static void
settle (struct overlay *ov, unsigned p)
{
  uint64_t n = avec_len (&ov->recs[p]);
  for (uint64_t i = 0; i < n; ++i) {
    struct jrec *r = avec_at (&ov->recs[p], i);
    if (!r || r->kind != REC_STORE)
      continue;
    _Atomic uint64_t *cell = blockmap_cell (ov->map, r->block);
    uint64_t want = fresh_entry (r->value, p);
    if (cell)
      atomic_compare_exchange_strong (cell, &want, store_entry (r->value));
  }
}

/* Caller holds commit_lock. */
int
ov_commit (struct overlay *ov, bool may_compact, int *err)
{
  uint64_t x = advance (ov);
  unsigned p = x & 1;
  int r = 0;
  if (ov->journal && !atomic_load (&ov->journal_errno)) {
    uint64_t now_us = (uint64_t) (epoch_seconds () * 1e6);
    if (take_hashes (ov, p) == -1 ||
        journal_commit (ov->journal, &ov->recs[p], now_us) == -1) {
      int e = errno;
      atomic_store (&ov->journal_errno, e);
      nbdkit_error ("luacow: journal %s: commit failed: %s; flushes fail from now on, "
                    "the overlay is still saved at exit", ov->journal_path, strerror (e));
    }
    else
      settle (ov, p);
  }
  avec_clear (&ov->recs[p]);
  int jerr = atomic_load (&ov->journal_errno);
  /* A broken journal's durable state may still name retired slots: then
   * they are never reused.
   */
  if (atomic_load (&ov->pins) == 0 && !jerr)
    slots_reclaim (ov->slots, p);
  atomic_store (&ov->committed, x + 1);
  if (jerr) {
    *err = jerr;
    r = -1;
  }
  else if (may_compact && ov->journal) {
    uint64_t live = atomic_load (&ov->data_blocks) + 1;
    if (journal_log_bytes (ov->journal) > ov->compact_min + (uint64_t) COMPACT_RATIO * RECORD_SIZE * live &&
        ov_compact (ov) == -1) {
      *err = atomic_load (&ov->journal_errno);
      r = -1;
    }
  }
  return r;
}

int
overlay_commit (struct overlay *ov, int *err)
{
  pthread_mutex_lock (&ov->commit_lock);
  int r = ov_commit (ov, false, err);
  pthread_mutex_unlock (&ov->commit_lock);
  return r;
}

int
overlay_tick (struct overlay *ov, int *err)
{
  pthread_mutex_lock (&ov->commit_lock);
  int r = ov_commit (ov, true, err);
  pthread_mutex_unlock (&ov->commit_lock);
  return r;
}

void
ov_nudge (struct overlay *ov)
{
  if (ov->committer_running)
    pthread_cond_signal (&ov->committer_cond);
}

static void *
committer_main (void *arg)
{
  struct overlay *ov = arg;
  pthread_mutex_lock (&ov->committer_lock);
  while (!ov->committer_stop) {
    struct timespec until;
    clock_gettime (CLOCK_MONOTONIC, &until);
    until.tv_sec += ov->journal ? COMMIT_EVERY_JOURNAL : COMMIT_EVERY;
    pthread_cond_timedwait (&ov->committer_cond, &ov->committer_lock, &until);
    if (ov->committer_stop)
      break;
    pthread_mutex_unlock (&ov->committer_lock);
    int err;
    overlay_tick (ov, &err);
    pthread_mutex_lock (&ov->committer_lock);
  }
  pthread_mutex_unlock (&ov->committer_lock);
  return NULL;
}

/* ------------------------------------------------------------ compaction */

/* Emit the whole map as records (a fuzzy walk is fine: every change made
 * meanwhile is also in a later commit, and its data was written before
 * the entry changed, so the compaction's sync covers it).
 */
static int
emit_state (struct overlay *ov)
{
  uint64_t b = blockmap_next_other (ov->map, 0, ov->nblocks, E_CLEAN);
  while (b < ov->nblocks) {
    uint64_t e = ov_entry_for_log (ov, b), nb = b + 1;
    struct jrec r = { .block = b };
    if (is_clean (e)) {         /* copies of the plugin's data are not kept */
      b = is_copy (e) ? b + 1 : blockmap_next_other (ov->map, b, ov->nblocks, E_CLEAN);
      continue;
    }
    if (e == E_ZERO) {
      nb = min64 (blockmap_next_other (ov->map, b + 1, ov->nblocks, E_ZERO), b + UINT32_MAX);
      r.kind = REC_ZERO;
    }
    else if (tag (e) == TAG_STORE) {
      while (nb < ov->nblocks && nb - b < UINT32_MAX &&
             is_slot (ov_entry_for_log (ov, nb), slot_of (e) + (nb - b)))
        nb++;
      r.kind = REC_SYNCED;
      r.value = slot_of (e);
    }
    else {
      while (nb < ov->nblocks && nb - b < UINT32_MAX &&
             blockmap_get (ov->map, nb) == file_entry (file_offset_of (e) + ((nb - b) << ov->bits)))
        nb++;
      r.kind = REC_FILE;
      r.value = file_offset_of (e);
    }
    r.count = (uint32_t) (nb - b);
    if (journal_compact_add (ov->journal, &r) == -1)
      return -1;
    b = nb;
  }
  return 0;
}

/* Caller holds commit_lock. */
int
ov_compact (struct overlay *ov)
{
  double t = monotonic_seconds ();
  uint64_t before = journal_log_bytes (ov->journal);
  if (journal_compact_begin (ov->journal) == -1 || emit_state (ov) == -1 ||
      journal_compact_end (ov->journal, (uint64_t) (epoch_seconds () * 1e6)) == -1) {
    int e = errno ? errno : EIO;
    atomic_store (&ov->journal_errno, e);
    nbdkit_error ("luacow: journal %s: compaction failed: %s; flushes fail from now on",
                  ov->journal_path, strerror (e));
    return -1;
  }
  nbdkit_debug ("luacow: journal %s compacted: %" PRIu64 " -> %" PRIu64 " log bytes, %.3f s",
                ov->journal_path, before, journal_log_bytes (ov->journal),
                monotonic_seconds () - t);
  return 0;
}

/* ----------------------------------------------------------- open, free */

static int
sync_parent (const char *path)
{
  const char *slash = strrchr (path, '/');
  char *dir = slash == path ? strdup ("/") : strndup (path, (size_t) (slash - path));
  if (!dir)
    return -1;
  int fd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  free (dir);
  if (fd == -1)
    return -1;
  int r = fsync (fd);
  close (fd);
  return r;
}

/* A new journal's header: identify the base by a link of our own beside
 * the journal (saves may replace the base's own name), else by its path.
 */
static int
fresh_journal (struct overlay *ov, const char *base, char err[OV_ERRLEN])
{
  struct jheader h = { 0 };
  char jerr[JOURNAL_ERRLEN];
  if (base) {
    int fd = open (base, O_RDONLY | O_CLOEXEC);
    if (fd == -1 || ov_file_identity (fd, &h.base_size, &h.base_crc) == -1) {
      snprintf (err, OV_ERRLEN, "cannot read %.300s: %s", base, strerror (errno));
      if (fd >= 0)
        close (fd);
      return -1;
    }
    close (fd);
    h.has_base = 1;
    unlink (ov->base_link);     /* ours: a leftover of a journal that ended */
    const char *name = linkat (AT_FDCWD, base, AT_FDCWD, ov->base_link, AT_SYMLINK_FOLLOW) == 0
      ? ov->base_link : base;
    if (name == base)
      nbdkit_debug ("luacow: cannot link %s to %s (%m): the journal names it directly",
                    ov->base_link, base);
    if (strlen (name) > JOURNAL_BASE_PATH_MAX) {
      snprintf (err, OV_ERRLEN, "the path of %.300s is too long for the journal", name);
      return -1;
    }
    snprintf (h.base_path, sizeof h.base_path, "%s", name);
  }
  ov->journal = journal_create (ov->store, ov->slots, ov->size, base ? &h : NULL, jerr);
  if (!ov->journal) {
    snprintf (err, OV_ERRLEN, "%.500s", jerr);
    return -1;
  }
  if (sync_parent (ov->journal_path) == -1) {
    snprintf (err, OV_ERRLEN, "cannot sync the journal's directory: %s", strerror (errno));
    return -1;
  }
  return 0;
}

static int
open_journal_file (const char *path, struct jio *io, char err[OV_ERRLEN])
{
  int fd = open (path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd == -1) {
    snprintf (err, OV_ERRLEN, "cannot open: %s", strerror (errno));
    return -1;
  }
  if (flock (fd, LOCK_EX | LOCK_NB) == -1) {
    snprintf (err, OV_ERRLEN, "in use by another process (%s)", strerror (errno));
    close (fd);
    return -1;
  }
  if (jio_from_fd (io, fd) == -1) {
    snprintf (err, OV_ERRLEN, "out of memory");
    close (fd);
    return -1;
  }
  return 0;
}

static int
open_store (struct overlay *ov, const struct ov_options *o, char err[OV_ERRLEN])
{
  struct jio io;
  if (o->io)
    io = *o->io;
  else if (o->journal) {
    if (open_journal_file (o->journal, &io, err) == -1)
      return -1;
  }
  else {
    int fd = store_tmpfile (o->tmpdir);
    if (fd == -1) {
      snprintf (err, OV_ERRLEN, "cannot create the overlay store in %s: %s "
                "(set TMPDIR to a writable directory)", o->tmpdir, strerror (errno));
      return -1;
    }
    if (jio_from_fd (&io, fd) == -1) {
      snprintf (err, OV_ERRLEN, "out of memory");
      close (fd);
      return -1;
    }
  }
  ov->store = store_new (&io, ov->bs, o->journal ? JOURNAL_DATA_OFFSET : 0);
  if (!ov->store || !(ov->slots = slots_new (ov->store))) {
    if (!ov->store)
      io.close (io.h);
    snprintf (err, OV_ERRLEN, "out of memory");
    return -1;
  }
  return 0;
}

struct overlay *
overlay_open (const struct ov_options *o, struct ov_recovery *rec, char err[OV_ERRLEN])
{
  uint32_t bs = o->block_size;
  memset (rec, 0, sizeof *rec);
  if (bs < 512 || bs > MAX_BLOCK || (bs & (bs - 1))) {
    snprintf (err, OV_ERRLEN, "block size %u is not a power of two from 512 to %d", bs, MAX_BLOCK);
    return NULL;
  }
  struct overlay *ov = calloc (1, sizeof *ov);
  if (!ov) {
    snprintf (err, OV_ERRLEN, "cannot allocate the overlay");
    return NULL;
  }
  ov->size = o->size;
  ov->bs = bs;
  ov->bits = (unsigned) __builtin_ctz (bs);
  ov->nblocks = o->size / bs + (o->size % bs != 0);
  ov->file_fd = -1;
  ov->compact_min = o->compact_min ? o->compact_min : COMPACT_MIN;
  for (unsigned i = 0; i < STRIPES; ++i)
    pthread_mutex_init (&ov->stripes[i], NULL);
  pthread_mutex_init (&ov->commit_lock, NULL);
  pthread_mutex_init (&ov->freeze_lock, NULL);
  pthread_mutex_init (&ov->committer_lock, NULL);
  monotonic_cond_init (&ov->committer_cond);
  avec_init (&ov->recs[0], sizeof (struct jrec));
  avec_init (&ov->recs[1], sizeof (struct jrec));
  ov->map = blockmap_new (ov->nblocks, E_ZERO);
  if (!ov->map) {
    snprintf (err, OV_ERRLEN, "cannot allocate the block map");
    goto fail;
  }
  if (o->journal && (!(ov->journal_path = strdup (o->journal)) ||
                     asprintf (&ov->base_link, "%s.base", o->journal) == -1)) {
    ov->base_link = NULL;
    snprintf (err, OV_ERRLEN, "out of memory");
    goto fail;
  }
  if (open_store (ov, o, err) == -1)
    goto fail;
  if (o->journal) {
    uint64_t size = 0;
    const struct jio *io = store_io (ov->store);
    io->size (io->h, &size);
    if (size == 0 ? fresh_journal (ov, o->base, err) : ov_recover (ov, rec, err)) 
      goto fail;
  }
  return ov;
 fail:
  overlay_free (ov);
  return NULL;
}

int
overlay_start (struct overlay *ov, char err[OV_ERRLEN])
{
  /* Write-behind first: the committer writes through the store too. */
  if (ov->journal && store_write_behind_start (ov->store, WRITE_BEHIND_KICK) == -1)
    nbdkit_debug ("luacow: no write-behind thread: %s", strerror (errno));
  int e = pthread_create (&ov->committer, NULL, committer_main, ov);
  if (e) {
    snprintf (err, OV_ERRLEN, "cannot start the commit thread: %s", strerror (e));
    return -1;
  }
  ov->committer_running = true;
  return 0;
}

void
ov_flushing (struct overlay *ov)
{
  store_write_behind_arm (ov->store, WRITE_BEHIND_ARMED);
}

void
overlay_free (struct overlay *ov)
{
  if (!ov)
    return;
  if (ov->live) {               /* a frozen view */
    blockmap_free (ov->map);
    atomic_fetch_sub (&ov->live->pins, 1);
    free (ov);
    return;
  }
  if (ov->committer_running) {
    pthread_mutex_lock (&ov->committer_lock);
    ov->committer_stop = true;
    pthread_cond_signal (&ov->committer_cond);
    pthread_mutex_unlock (&ov->committer_lock);
    pthread_join (ov->committer, NULL);
  }
  if (ov->journal && ov->store) {
    int err;
    overlay_commit (ov, &err);  /* a clean stop leaves a complete journal */
    nbdkit_debug ("luacow: journal %s: write-behind asked for writeback %" PRIu64 " times",
                  ov->journal_path, store_write_behind_kicks (ov->store));
  }
  journal_free (ov->journal);
  slots_free (ov->slots);
  store_free (ov->store);
  blockmap_free (ov->map);
  avec_destroy (&ov->recs[0]);
  avec_destroy (&ov->recs[1]);
  if (ov->file_fd >= 0)
    close (ov->file_fd);
  for (unsigned i = 0; i < STRIPES; ++i)
    pthread_mutex_destroy (&ov->stripes[i]);
  pthread_mutex_destroy (&ov->commit_lock);
  pthread_mutex_destroy (&ov->freeze_lock);
  pthread_mutex_destroy (&ov->committer_lock);
  pthread_cond_destroy (&ov->committer_cond);
  free (ov->journal_path);
  free (ov->base_link);
  free (ov->hash_buf);
  free (ov);
}

int
overlay_discard_journal (struct overlay *ov)
{
  if (!ov->journal_path)
    return 0;
  int r = unlink (ov->journal_path);
  if (r == 0 || errno == ENOENT) {
    unlink (ov->base_link);
    r = sync_parent (ov->journal_path);
  }
  journal_free (ov->journal);   /* nothing more to commit */
  ov->journal = NULL;
  return r;
}
