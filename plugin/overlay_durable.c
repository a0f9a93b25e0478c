/* luacow: the overlay's life and durability: open (and recover), commits,
 * the background committer, compaction, and the journal's end.  The
 * request paths and the design note are in overlay.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <nbdkit-filter.h>
#include <xxhash.h>
#include <zlib.h>

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
#define IDENTITY_BYTES (1u << 20)      /* a base file is known by size + CRC of these */
/* Write-behind (store.h): a kick per this many bytes written, while a
 * flush came within the last WRITE_BEHIND_ARMED seconds.  In `make
 * bench`'s durable jobs, 64 KiB beat 16 and 32 KiB at iodepth 1 (each kick
 * costs CPU) and matched them at iodepth 16.
 */
#define WRITE_BEHIND_KICK ((uint64_t) 64 << 10)
#define WRITE_BEHIND_ARMED 1.0


static inline uint64_t
block_bytes (const struct overlay *ov, uint64_t b)
{
  return min64 ((b + 1) << ov->bits, ov->size) - (b << ov->bits);
}

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

static int compact (struct overlay *ov);

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
        compact (ov) == -1) {
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
static int
compact (struct overlay *ov)
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

/* ------------------------------------------------------------- recovery */

/* A base file is known by its size and the CRC of its first MiB: enough
 * to notice a file that was replaced or rewritten (qcow2 metadata lives
 * at its start), without reading it all.
 */
static int
file_identity (int fd, uint64_t *size, uint32_t *crc)
{
  struct stat st;
  if (fstat (fd, &st) == -1)
    return -1;
  *size = (uint64_t) st.st_size;
  size_t n = (size_t) min64 (*size, IDENTITY_BYTES);
  unsigned char *buf = malloc (n ? n : 1);
  if (!buf)
    return -1;
  if (full_pread (fd, buf, n, 0) == -1) {
    free (buf);
    return -1;
  }
  *crc = (uint32_t) crc32 (0, buf, (uInt) n);
  free (buf);
  return 0;
}

struct recovering {
  struct overlay *ov;
  uint64_t file_slots;          /* slots in the journal file */
  uint64_t base_size;
  bool has_base;
};

static bool
in_range (uint64_t start, uint64_t count, uint64_t limit)
{
  return count >= 1 && start < limit && count <= limit - start;
}

/* Whether record r fits the export, the journal file and the base. */
static bool
record_ok (const struct recovering *rc, const struct jrec *r)
{
  const struct overlay *ov = rc->ov;
  if (!in_range (r->block, r->count, ov->nblocks))
    return false;
  switch (r->kind) {
  case REC_STORE: case REC_SYNCED:
    return in_range (r->value, r->count, rc->file_slots);
  case REC_ZERO:
    return true;
  case REC_FILE:
    return rc->has_base && r->value % 512 == 0 && r->value < rc->base_size &&
      (uint64_t) (r->count - 1) < (rc->base_size - r->value) >> ov->bits;
  default:
    return false;
  }
}

static int
apply_record (void *opaque, const struct jrec *r, char err[JOURNAL_ERRLEN])
{
  struct recovering *rc = opaque;
  struct overlay *ov = rc->ov;
  if (!record_ok (rc, r)) {
    snprintf (err, JOURNAL_ERRLEN, "corrupt journal record (kind %u, blocks %" PRIu64 "+%u)",
              r->kind, r->block, r->count);
    return -1;
  }
  if (r->kind == REC_ZERO) {
    if (blockmap_fill (ov->map, r->block, r->block + r->count, NULL, NULL) == UINT64_MAX)
      goto oom;
    return 0;
  }
  for (uint64_t i = 0; i < r->count; ++i) {
    _Atomic uint64_t *cell = blockmap_cell (ov->map, r->block + i);
    if (!cell)
      goto oom;
    atomic_store (cell, r->kind == REC_FILE ? file_entry (r->value + (i << ov->bits))
                                            : store_entry (r->value + i));
  }
  return 0;
 oom:
  snprintf (err, JOURNAL_ERRLEN, "out of memory replaying the journal");
  return -1;
}

/* The last commit's STORE records: is the data what was written? */
static bool
verify_record (void *opaque, const struct jrec *r)
{
  struct recovering *rc = opaque;
  struct overlay *ov = rc->ov;
  if (!record_ok (rc, r))
    return false;
  uint64_t start = r->block << ov->bits;
  uint64_t end = min64 ((r->block + r->count) << ov->bits, ov->size);
  XXH3_state_t *h = XXH3_createState ();
  char *buf = malloc (1 << 16);
  bool ok = h && buf && XXH3_64bits_reset (h) == XXH_OK;
  for (uint64_t off = 0; ok && off < end - start; off += 1 << 16) {
    uint64_t n = min64 (1 << 16, end - start - off);
    int e;
    ok = store_read (ov->store, buf, n, (r->value << ov->bits) + off, &e) == 0 &&
      XXH3_64bits_update (h, buf, n) == XXH_OK;
  }
  ok = ok && XXH3_64bits_digest (h) == r->hash;
  free (buf);
  XXH3_freeState (h);
  return ok;
}

static int
cmp_u64 (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return x < y ? -1 : x > y;
}

struct used { uint64_t *v; size_t n, cap; bool oom; };

static void
used_add (void *opaque, uint64_t first, uint64_t n)
{
  struct used *u = opaque;
  for (uint64_t i = 0; i < n && !u->oom; ++i) {
    if (u->n == u->cap) {
      size_t cap = u->cap ? u->cap * 2 : 4096;
      uint64_t *p = realloc (u->v, cap * sizeof *p);
      if (!p) {
        u->oom = true;
        return;
      }
      u->v = p;
      u->cap = cap;
    }
    u->v[u->n++] = first + i;
  }
}

/* Counters and slot ownership from the replayed map. */
static int
rebuild (struct overlay *ov, struct ov_recovery *rec)
{
  struct used u = { 0 };
  uint64_t b = 0;
  while ((b = blockmap_next_other (ov->map, b, ov->nblocks, E_CLEAN)) < ov->nblocks) {
    uint64_t e = blockmap_get (ov->map, b);
    if (e == E_ZERO) {
      uint64_t nb = blockmap_next_other (ov->map, b, ov->nblocks, E_ZERO);
      atomic_fetch_add (&ov->zero_blocks, nb - b);
      b = nb;
      continue;
    }
    atomic_fetch_add (&ov->data_blocks, 1);
    rec->bytes += block_bytes (ov, b);
    if (tag (e) == TAG_STORE)
      used_add (&u, slot_of (e), 1);
    b++;
  }
  journal_segments (ov->journal, used_add, &u);
  int r = -1;
  if (!u.oom) {
    qsort (u.v, u.n, sizeof *u.v, cmp_u64);
    r = slots_rebuild (ov->slots, u.v, u.n);
  }
  free (u.v);
  rec->blocks = atomic_load (&ov->data_blocks) + atomic_load (&ov->zero_blocks);
  /* Recovered data is in no save yet: it counts as written (and zeroed). */
  atomic_store (&ov->written_bytes, rec->bytes);
  atomic_store (&ov->zeroed_bytes, atomic_load (&ov->zero_blocks) << ov->bits);
  return r;
}

/* The base file h names, if it is the one the journal was made on: its
 * descriptor in *fd (-1 when there is no base).  0, or -1 with err.
 */
static int
open_base (const struct jheader *h, int *fd, uint64_t *size, char err[JOURNAL_ERRLEN])
{
  *fd = -1;
  *size = 0;
  if (!h->has_base)
    return 0;
  int f = open (h->base_path, O_RDONLY | O_CLOEXEC);
  uint32_t crc;
  if (f == -1) {
    snprintf (err, JOURNAL_ERRLEN, "the file it was based on, %.300s, cannot be opened: %s",
              h->base_path, strerror (errno));
    return -1;
  }
  if (file_identity (f, size, &crc) == -1 || *size != h->base_size || crc != h->base_crc) {
    snprintf (err, JOURNAL_ERRLEN, "the file it was based on, %.300s, has changed "
              "(%" PRIu64 " bytes, was %" PRIu64 ")", h->base_path, *size, h->base_size);
    close (f);
    return -1;
  }
  *fd = f;
  return 0;
}

static int
check_base (void *opaque, const struct jheader *h, char err[JOURNAL_ERRLEN])
{
  struct recovering *rc = opaque;
  int fd;
  rc->has_base = h->has_base != 0;
  if (open_base (h, &fd, &rc->base_size, err) == -1)
    return -1;
  if (fd >= 0)
    overlay_attach_file (rc->ov, fd);
  return 0;
}

int
overlay_check_journal (const char *path, char err[OV_ERRLEN])
{
  struct stat st;
  if (stat (path, &st) == -1 || st.st_size == 0)
    return 0;
  int fd = open (path, O_RDONLY | O_CLOEXEC);
  struct jio io;
  if (fd == -1 || jio_from_fd (&io, fd) == -1) {
    snprintf (err, OV_ERRLEN, "cannot open: %s", strerror (errno));
    if (fd >= 0)
      close (fd);
    return -1;
  }
  struct jheader h;
  char jerr[JOURNAL_ERRLEN];
  uint64_t size;
  int bfd = -1;
  int r = journal_read_header (&io, &h, jerr) == 0 && open_base (&h, &bfd, &size, jerr) == 0
    ? 1 : -1;
  io.close (io.h);
  if (bfd >= 0)
    close (bfd);
  if (r == -1)
    snprintf (err, OV_ERRLEN, "%.500s", jerr);
  return r;
}

static int
recover (struct overlay *ov, struct ov_recovery *rec, char err[OV_ERRLEN])
{
  double t = monotonic_seconds ();
  uint64_t fsize = 0;
  const struct jio *io = store_io (ov->store);
  io->size (io->h, &fsize);
  struct recovering rc = { .ov = ov,
                           .file_slots = fsize > JOURNAL_DATA_OFFSET
                             ? (fsize - JOURNAL_DATA_OFFSET) >> ov->bits : 0 };
  struct journal_replay rp = { check_base, apply_record, verify_record, &rc };
  struct journal_recovery jr;
  struct jheader hdr;
  char jerr[JOURNAL_ERRLEN];
  ov->journal = journal_recover (ov->store, ov->slots, ov->size, &hdr, &rp, &jr, jerr);
  if (!ov->journal) {
    snprintf (err, OV_ERRLEN, "%.500s", jerr);
    return -1;
  }
  if (rebuild (ov, rec) == -1) {
    snprintf (err, OV_ERRLEN, "out of memory rebuilding the store");
    return -1;
  }
  /* A fresh log: never append after a torn tail. */
  if (compact (ov) == -1) {
    snprintf (err, OV_ERRLEN, "cannot rewrite the journal: %s", strerror (errno));
    return -1;
  }
  rec->recovered = true;
  rec->commits = jr.commits;
  rec->dropped = jr.dropped;
  rec->flushed = (double) jr.last_time_us / 1e6;
  if (hdr.has_base)
    snprintf (rec->base, sizeof rec->base, "%s", hdr.base_path);
  rec->seconds = monotonic_seconds () - t;
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
    if (fd == -1 || file_identity (fd, &h.base_size, &h.base_crc) == -1) {
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
  pthread_condattr_t ca;
  pthread_condattr_init (&ca);
  pthread_condattr_setclock (&ca, CLOCK_MONOTONIC);
  pthread_cond_init (&ov->committer_cond, &ca);
  pthread_condattr_destroy (&ca);
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
    if (size == 0 ? fresh_journal (ov, o->base, err) : recover (ov, rec, err)) 
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
  int e = pthread_create (&ov->committer, NULL, committer_main, ov);
  if (e) {
    snprintf (err, OV_ERRLEN, "cannot start the commit thread: %s", strerror (e));
    return -1;
  }
  ov->committer_running = true;
  if (ov->journal && store_write_behind_start (ov->store, WRITE_BEHIND_KICK) == -1)
    nbdkit_debug ("luacow: no write-behind thread: %s", strerror (errno));
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
