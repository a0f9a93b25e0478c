/* Crash simulation of the journaled overlay.
 *
 * The journal's file operations go to a simulated disk that remembers
 * what was synced.  At a random I/O call the disk "loses power": every
 * write since the last completed sync is dropped, kept, or torn at 512
 * bytes, in random order.  The overlay is then recovered from what is
 * left and every block is checked against an exact model:
 *   - the state as of the last completed flush, or a version some later
 *     write gave the block (never bytes nobody wrote);
 *   - a FUA write, once acknowledged, or a later version.
 * Each trial runs two rounds (crash, recover, go on, crash again), so the
 * log written after a recovery and compactions are crashed too.
 *
 * LUACOW_CRASH_TRIALS=N sets the number of trials (default 1500).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "overlay.h"
#include "tap.h"

/* ------------------------------------------------------------ sim disk */

#define PAGE 4096
#define SECTOR 512

struct simfile {
  uint64_t size;
  unsigned char **pages;
  size_t npages;
};

struct pending {               /* a write not yet covered by a sync */
  uint64_t off, len;
  unsigned char *data;
};

struct sim {
  struct simfile cur, durable;
  uint64_t durable_size;
  struct pending *pend;
  size_t npend, cap;
  long calls, crash_at;        /* the I/O call that loses power (-1: never) */
  bool crashed;
  void (*on_sync) (void *);    /* called once at the next sync, then cleared */
  void *on_sync_arg;
};

static uint64_t rng_state;
static uint64_t
rnd (void)
{
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}
static uint64_t below (uint64_t n) { return n ? rnd () % n : 0; }

static unsigned char *
page_of (struct simfile *f, uint64_t p, bool make)
{
  if (p >= f->npages) {
    if (!make)
      return NULL;
    size_t n = f->npages ? f->npages : 64;
    while (n <= p)
      n *= 2;
    f->pages = realloc (f->pages, n * sizeof *f->pages);
    memset (f->pages + f->npages, 0, (n - f->npages) * sizeof *f->pages);
    f->npages = n;
  }
  if (!f->pages[p] && make)
    f->pages[p] = calloc (1, PAGE);
  return f->pages[p];
}

static void
file_write (struct simfile *f, const unsigned char *buf, uint64_t len, uint64_t off)
{
  while (len > 0) {
    uint64_t in = off % PAGE, n = PAGE - in < len ? PAGE - in : len;
    memcpy (page_of (f, off / PAGE, true) + in, buf, n);
    buf += n; off += n; len -= n;
  }
  if (off > f->size)
    f->size = off;
}

static void
file_read (struct simfile *f, unsigned char *buf, uint64_t len, uint64_t off)
{
  while (len > 0) {
    uint64_t in = off % PAGE, n = PAGE - in < len ? PAGE - in : len;
    unsigned char *pg = off < f->size ? page_of (f, off / PAGE, false) : NULL;
    if (pg)
      memcpy (buf, pg + in, n);
    else
      memset (buf, 0, n);
    buf += n; off += n; len -= n;
  }
}

static void
file_copy (struct simfile *to, struct simfile *from)
{
  to->size = from->size;
  to->npages = from->npages;
  to->pages = calloc (from->npages ? from->npages : 1, sizeof *to->pages);
  for (size_t i = 0; i < from->npages; ++i)
    if (from->pages[i]) {
      to->pages[i] = malloc (PAGE);
      memcpy (to->pages[i], from->pages[i], PAGE);
    }
}

static void
file_free (struct simfile *f)
{
  for (size_t i = 0; i < f->npages; ++i)
    free (f->pages[i]);
  free (f->pages);
  memset (f, 0, sizeof *f);
}

/* Counts the call; true once power is lost (from then on nothing lands). */
static bool
lost (struct sim *s)
{
  if (!s->crashed && s->crash_at >= 0 && s->calls++ >= s->crash_at)
    s->crashed = true;
  return s->crashed;
}

static int
sim_pwrite (void *h, const void *buf, size_t n, uint64_t off)
{
  struct sim *s = h;
  if (lost (s))
    return 0;                  /* the process does not know yet */
  file_write (&s->cur, buf, n, off);
  if (s->npend == s->cap) {
    s->cap = s->cap ? s->cap * 2 : 256;
    s->pend = realloc (s->pend, s->cap * sizeof *s->pend);
  }
  struct pending *p = &s->pend[s->npend++];
  p->off = off;
  p->len = n;
  p->data = malloc (n ? n : 1);
  memcpy (p->data, buf, n);
  return 0;
}

static int
sim_pread (void *h, void *buf, size_t n, uint64_t off)
{
  struct sim *s = h;
  file_read (&s->cur, buf, n, off);
  return 0;
}

static void
drop_pending (struct sim *s)
{
  for (size_t i = 0; i < s->npend; ++i)
    free (s->pend[i].data);
  s->npend = 0;
}

/* After a crash the disk holds after, and nothing is pending: the file
 * and its durable copy both become it (after is consumed).
 */
static void
restart_from (struct sim *s, struct simfile *after)
{
  drop_pending (s);
  file_free (&s->cur);
  file_free (&s->durable);
  file_copy (&s->cur, after);
  file_copy (&s->durable, after);
  file_free (after);
}

static int
sim_sync (void *h)
{
  struct sim *s = h;
  if (lost (s))
    return 0;
  if (s->on_sync) {
    void (*fn) (void *) = s->on_sync;
    s->on_sync = NULL;
    fn (s->on_sync_arg);
  }
  for (size_t i = 0; i < s->npend; ++i)
    file_write (&s->durable, s->pend[i].data, s->pend[i].len, s->pend[i].off);
  drop_pending (s);
  s->durable.size = s->cur.size;
  return 0;
}

static int
sim_truncate (void *h, uint64_t size)
{
  struct sim *s = h;
  if (lost (s))
    return 0;
  s->cur.size = size;          /* only ever grows here */
  return 0;
}

static int
sim_punch (void *h, uint64_t off, uint64_t len)
{
  /* Punching is an optimisation the store may skip: a no-op is valid. */
  (void) h; (void) off; (void) len;
  return 0;
}

static int
sim_size (void *h, uint64_t *size)
{
  *size = ((struct sim *) h)->cur.size;
  return 0;
}

static void sim_close (void *h) { (void) h; }
/* A hint that promises nothing: what was written stays pending, to be
 * dropped, reordered or torn at a crash, until a sync.
 */
static int sim_writeback (void *h) { (void) h; return 0; }

static struct jio
sim_io (struct sim *s)
{
  return (struct jio) { .pwrite = sim_pwrite, .pread = sim_pread, .sync = sim_sync,
                        .truncate = sim_truncate, .punch = sim_punch, .size = sim_size,
                        .close = sim_close, .h = s, .writeback = sim_writeback };
}

/* Power loss: the durable image plus some of the pending writes, in a
 * random order, each dropped, whole, or torn at sector boundaries.
 */
static void
power_loss (struct sim *s, struct simfile *out)
{
  file_copy (out, &s->durable);
  if (below (2))
    out->size = s->cur.size;   /* the size change may or may not land */
  size_t n = s->npend;
  size_t *order = malloc ((n ? n : 1) * sizeof *order);
  for (size_t i = 0; i < n; ++i)
    order[i] = i;
  for (size_t i = n; i > 1; --i) {
    size_t j = below (i), t = order[i - 1];
    order[i - 1] = order[j];
    order[j] = t;
  }
  for (size_t k = 0; k < n; ++k) {
    struct pending *p = &s->pend[order[k]];
    unsigned mode = (unsigned) below (3);   /* 0 drop, 1 whole, 2 torn */
    if (mode == 0)
      continue;
    for (uint64_t o = p->off; o < p->off + p->len;) {
      uint64_t e = (o / SECTOR + 1) * SECTOR;
      if (e > p->off + p->len)
        e = p->off + p->len;
      if (mode == 1 || below (2))
        file_write (out, p->data + (o - p->off), e - o, o);
      o = e;
    }
  }
  if (out->size < s->durable.size)
    out->size = s->durable.size;
  free (order);
}

/* --------------------------------------------------------------- model */

#define MAXV 64                /* versions a block may have since the floor */

struct block_model {
  unsigned char *v[MAXV];     /* allowed contents; v[0] is the floor */
  unsigned n;
};

struct model {
  uint64_t size, nblocks;
  uint32_t bs;
  unsigned char *cur;          /* what the client sees now */
  struct block_model *b;
};

static void
model_floor_all (struct model *m)  /* a flush completed: cur is durable */
{
  for (uint64_t i = 0; i < m->nblocks; ++i) {
    for (unsigned k = 0; k < m->b[i].n; ++k)
      free (m->b[i].v[k]);
    m->b[i].v[0] = malloc (m->bs);
    memcpy (m->b[i].v[0], m->cur + i * m->bs, m->bs);
    m->b[i].n = 1;
  }
}

static void
model_version (struct model *m, uint64_t blk, bool floor)
{
  struct block_model *b = &m->b[blk];
  if (floor || b->n == MAXV) {
    /* FUA (or too many versions: the test forces a flush first). */
    for (unsigned k = 0; k < b->n; ++k)
      free (b->v[k]);
    b->n = 0;
  }
  b->v[b->n] = malloc (m->bs);
  memcpy (b->v[b->n], m->cur + blk * m->bs, m->bs);
  b->n++;
}

static void
model_free (struct model *m)
{
  for (uint64_t i = 0; i < m->nblocks; ++i)
    for (unsigned k = 0; k < m->b[i].n; ++k)
      free (m->b[i].v[k]);
  free (m->b);
  free (m->cur);
}

/* ------------------------------------------------------------- trials */

static int
no_lower (void *h, void *buf, uint32_t count, uint64_t offset, int *err)
{
  /* The "plugin": every byte reads as its offset's low byte ^ 0xa5. */
  (void) h; (void) err;
  for (uint32_t i = 0; i < count; ++i)
    ((unsigned char *) buf)[i] = (unsigned char) ((offset + i) ^ 0xa5);
  return 0;
}

static char dir[] = "/tmp/luacow-crash-XXXXXX";
static char journal[64];

static struct overlay *
open_ov (struct sim *s, struct model *m, struct ov_recovery *rec, char *err)
{
  struct jio io = sim_io (s);
  struct ov_options o = { .size = m->size, .block_size = m->bs, .journal = journal,
                          .io = &io, .compact_min = 4096 };
  return overlay_open (&o, rec, err);
}

/* A random workload until power is lost (or ops run out). */
static bool
workload (struct overlay *ov, struct model *m, struct sim *s, int ops)
{
  struct ov_lower lower = { no_lower, NULL };
  unsigned char *buf = malloc (8 * m->bs);
  bool ok = true;
  for (int i = 0; i < ops && !s->crashed && ok; ++i) {
    unsigned kind = (unsigned) below (10);
    uint64_t off, len;
    int err = 0;
    if (kind < 6) {            /* write, sometimes unaligned, sometimes FUA */
      if (below (3) == 0) {
        off = below (m->size - 1);
        len = 1 + below (m->bs * 2 < m->size - off ? m->bs * 2 : m->size - off);
      }
      else {
        uint64_t b0 = below (m->nblocks), nb = 1 + below (8);
        if (b0 + nb > m->nblocks) nb = m->nblocks - b0;
        off = b0 * m->bs; len = nb * m->bs;
      }
      if (len > m->size - off)
        len = m->size - off;    /* requests lie inside the export */
      for (uint64_t k = 0; k < len; ++k)
        buf[k] = (unsigned char) rnd ();
      bool fua = below (5) == 0;
      ok = overlay_pwrite (ov, &lower, buf, (uint32_t) len, off, &err) == 0 &&
        (!fua || overlay_flush (ov, &err) == 0);
      if (s->crashed)
        fua = false;           /* not known to have been acknowledged */
      memcpy (m->cur + off, buf, len);
      for (uint64_t blk = off / m->bs; blk <= (off + len - 1) / m->bs; ++blk)
        model_version (m, blk, fua);
    }
    else if (kind < 8) {       /* zero or trim */
      uint64_t b0 = below (m->nblocks), nb = 1 + below (16);
      if (b0 + nb > m->nblocks) nb = m->nblocks - b0;
      off = b0 * m->bs + (below (2) ? below (m->bs) : 0);
      len = nb * m->bs - (off - b0 * m->bs);
      if (off >= m->size)
        continue;
      if (len > m->size - off)
        len = m->size - off;
      ok = overlay_zero (ov, &lower, len, off, &err) == 0;
      memset (m->cur + off, 0, len);
      for (uint64_t blk = off / m->bs; blk <= (off + len - 1) / m->bs; ++blk)
        model_version (m, blk, false);
    }
    else if (kind == 8) {      /* flush */
      ok = overlay_flush (ov, &err) == 0;
      if (!s->crashed)
        model_floor_all (m);
    }
    else                       /* the background committer's tick */
      ok = overlay_tick (ov, &err) == 0;
    for (uint64_t blk = 0; blk < m->nblocks && ok && !s->crashed; ++blk)
      if (m->b[blk].n == MAXV - 1) {   /* bound the versions: flush */
        ok = overlay_flush (ov, &err) == 0;
        if (!s->crashed)
          model_floor_all (m);
      }
  }
  free (buf);
  return ok;
}

/* Every block of the recovered overlay is an allowed version. */
static bool
check_blocks (struct overlay *ov, struct model *m, char *why, size_t whylen)
{
  struct ov_lower lower = { no_lower, NULL };
  unsigned char *blk = malloc (m->bs);
  bool ok = true;
  for (uint64_t i = 0; i < m->nblocks && ok; ++i) {
    int err;
    uint64_t len = m->size - i * m->bs < m->bs ? m->size - i * m->bs : m->bs;
    memset (blk, 0, m->bs);
    if (overlay_pread (ov, &lower, blk, (uint32_t) len, i * m->bs, &err) == -1) {
      snprintf (why, whylen, "read of block %llu failed", (unsigned long long) i);
      ok = false;
      break;
    }
    bool match = false;
    for (unsigned k = 0; k < m->b[i].n && !match; ++k)
      match = memcmp (blk, m->b[i].v[k], len) == 0;
    if (!match) {
      unsigned char plug[4096];
      int e2;
      no_lower (NULL, plug, (uint32_t) len, i * m->bs, &e2);
      bool zero = true;
      for (uint64_t k = 0; k < len; ++k)
        zero = zero && blk[k] == 0;
      snprintf (why, whylen, "block %llu holds none of its %u allowed versions (%s)",
                (unsigned long long) i, m->b[i].n,
                memcmp (blk, plug, len) == 0 ? "it reads as the plugin" : zero ? "it reads as zeroes" : "other data");
      ok = false;
    }
    /* What was recovered is the model's state from here on. */
    memcpy (m->cur + i * m->bs, blk, len);
  }
  free (blk);
  if (ok)
    model_floor_all (m);
  return ok;
}

static bool
trial (uint32_t bs, uint64_t nblocks, char *why, size_t whylen)
{
  struct model m = { .size = nblocks * bs - (below (2) ? below (bs) : 0), .bs = bs };
  m.nblocks = (m.size + bs - 1) / bs;
  m.cur = malloc (m.nblocks * bs);
  m.b = calloc (m.nblocks, sizeof *m.b);
  struct ov_lower lower = { no_lower, NULL };
  int err;
  lower.pread (NULL, m.cur, (uint32_t) m.size, 0, &err);
  memset (m.cur + m.size, 0, m.nblocks * bs - m.size);
  model_floor_all (&m);

  struct sim s = { .crash_at = -1 };
  struct ov_recovery rec;
  char oerr[OV_ERRLEN];
  unlink (journal);
  bool ok = true;
  for (int round = 0; round < 2 && ok; ++round) {
    /* Round 0 creates the journal (atomically, by a rename, outside the
     * simulated disk): the crash comes after.  Later rounds may crash
     * during recovery itself.
     */
    s.crash_at = round == 0 ? -1 : (long) below (400);
    s.calls = 0;
    s.crashed = false;
    struct overlay *ov = open_ov (&s, &m, &rec, oerr);
    if (round == 0)
      s.crash_at = s.calls + (long) below (400);
    if (!ov) {
      snprintf (why, whylen, "round %d: open failed: %.200s", round, oerr);
      ok = false;
      break;
    }
    if (round > 0 && !rec.recovered && !s.crashed) {
      snprintf (why, whylen, "round %d: nothing recovered", round);
      ok = false;
    }
    if (ok && round > 0 && !check_blocks (ov, &m, why, whylen))
      ok = false;
    if (ok && !workload (ov, &m, &s, 300) && !s.crashed) {
      snprintf (why, whylen, "round %d: an operation failed before the crash", round);
      ok = false;
    }
    s.crashed = true;          /* whatever happens now never lands */
    overlay_free (ov);
    struct simfile after;
    power_loss (&s, &after);
    restart_from (&s, &after);
  }
  if (ok) {                    /* the last crash, recovered */
    s.crash_at = -1;
    s.crashed = false;
    struct overlay *ov = open_ov (&s, &m, &rec, oerr);
    if (!ov) {
      snprintf (why, whylen, "final open failed: %.200s", oerr);
      ok = false;
    }
    else {
      ok = check_blocks (ov, &m, why, whylen);
      overlay_free (ov);
    }
  }
  drop_pending (&s);
  free (s.pend);
  file_free (&s.cur);
  file_free (&s.durable);
  model_free (&m);
  return ok;
}

/* ------------------------------------------- compaction vs in place */

struct inject {
  struct overlay *ov;
  const unsigned char *data;
  uint64_t off;
  uint32_t len;
};

static void
write_now (void *arg)           /* a client's write, mid-commit */
{
  struct inject *in = arg;
  struct ov_lower lower = { no_lower, NULL };
  int err;
  overlay_pwrite (in->ov, &lower, in->data, in->len, in->off, &err);
}

/* A write lands in a fresh slot while a background commit syncs, the
 * compaction that follows names that slot, a second write of the block
 * comes after the compaction is durable, and power is lost with only its
 * first sector on disk: the block must read as one of the writes (or as
 * before), never as a mix of two.
 */
static bool
compaction_vs_in_place (char *why, size_t whylen)
{
  const uint32_t bs = 4096;
  struct model m = { .size = 16 * bs, .nblocks = 16, .bs = bs };
  struct sim s = { .crash_at = -1 };
  struct ov_recovery rec;
  char oerr[OV_ERRLEN];
  struct ov_lower lower = { no_lower, NULL };
  unsigned char a[4096], b[4096], got[4096], before[4096];
  int err;
  unlink (journal);
  struct overlay *ov = open_ov (&s, &m, &rec, oerr);
  if (!ov) {
    snprintf (why, whylen, "open failed: %.200s", oerr);
    return false;
  }
  /* Enough small commits that the next tick compacts. */
  memset (a, 1, sizeof a);
  for (int i = 0; i < 100; ++i)
    if (overlay_pwrite (ov, &lower, a, bs, (uint64_t) (i % 4) * bs, &err) == -1 ||
        overlay_flush (ov, &err) == -1) {
      snprintf (why, whylen, "setup write %d failed", i);
      return false;
    }
  const uint64_t blk = 9;
  memset (a, 0xaa, sizeof a);
  memset (b, 0xbb, sizeof b);
  struct inject in = { ov, a, blk * bs, bs };
  overlay_pwrite (ov, &lower, a, bs, 5 * bs, &err);   /* the tick's commit has a record */
  s.on_sync = write_now;
  s.on_sync_arg = &in;
  bool ok = overlay_tick (ov, &err) == 0 && s.on_sync == NULL;
  ok = ok && overlay_pwrite (ov, &lower, b, bs, blk * bs, &err) == 0;
  if (!ok) {
    snprintf (why, whylen, "the writes around the tick failed");
    return false;
  }
  /* Power loss: only the first sector of each unsynced write lands. */
  s.crashed = true;
  struct simfile after;
  file_copy (&after, &s.durable);
  for (size_t i = 0; i < s.npend; ++i)
    file_write (&after, s.pend[i].data, s.pend[i].len < SECTOR ? s.pend[i].len : SECTOR,
                s.pend[i].off);
  overlay_free (ov);
  restart_from (&s, &after);
  s.crashed = false;
  ov = open_ov (&s, &m, &rec, oerr);
  ok = ov && overlay_pread (ov, &lower, got, bs, blk * bs, &err) == 0;
  no_lower (NULL, before, bs, blk * bs, &err);
  if (!ok)
    snprintf (why, whylen, "recovery failed: %.200s", ov ? "read" : oerr);
  else if (memcmp (got, a, bs) && memcmp (got, b, bs) && memcmp (got, before, bs)) {
    snprintf (why, whylen, "block %llu reads as none of its versions (bytes 0 and 512: %02x %02x)",
              (unsigned long long) blk, got[0], got[512]);
    ok = false;
  }
  overlay_free (ov);
  drop_pending (&s);
  free (s.pend);
  file_free (&s.cur);
  file_free (&s.durable);
  free (m.cur);
  return ok;
}

int
main (void)
{
  const char *env = getenv ("LUACOW_CRASH_TRIALS");
  long trials = env ? atol (env) : 1500;
  if (!mkdtemp (dir)) {
    perror ("mkdtemp");
    return 1;
  }
  snprintf (journal, sizeof journal, "%s/j", dir);
  const uint32_t sizes[] = { 4096, 512, 2048 };
  for (unsigned si = 0; si < 3; ++si) {
    long failed = 0;
    char why[256] = "", first[300] = "";
    for (long t = 0; t < trials / 3; ++t) {
      rng_state = 0x9e3779b97f4a7c15ull ^ ((uint64_t) si << 32) ^ (uint64_t) (t + 1) * 2654435761u;
      if (!trial (sizes[si], 48, why, sizeof why)) {
        if (!failed++)
          snprintf (first, sizeof first, "trial %ld: %s", t, why);
      }
    }
    CHECK (failed == 0, "%u-byte blocks: %ld crash trials (2 crashes each) recover to an allowed state%s%s",
           sizes[si], trials / 3, failed ? "; first failure: " : "", first);
  }
  char why[256] = "";
  CHECK (compaction_vs_in_place (why, sizeof why),
         "a compaction names a fresh slot: a later write of that block never goes in place%s%s",
         why[0] ? ": " : "", why);
  char cmd[128];
  snprintf (cmd, sizeof cmd, "rm -rf %s", dir);
  if (system (cmd) != 0)
    return 1;
  return TAP_DONE ();
}
