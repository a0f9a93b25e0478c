/* luacow: the write-ahead journal, see journal.h and journal_format.h.
 *
 * Ordering.  A commit writes its batches after the data they name was
 * written, then syncs once: afterwards both are durable.  The next commit
 * starts only after that sync returned, so a valid batch on disk proves
 * every earlier commit complete.  Only the last commit may have been
 * caught half-synced; recovery checks its data hashes and drops it
 * whole when any is wrong, or when any of its batches is torn.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "journal.h"

struct journal {
  struct store *st;
  struct slots *sl;
  struct jheader h;              /* the current header */
  uint64_t seg_slots;
  uint64_t seg, off;             /* where the next batch goes */
  uint64_t next_seq;
  uint64_t *chain;               /* segments of the current log */
  size_t nchain, chain_cap;
  uint64_t *old_chain;           /* during compaction: the log being replaced */
  size_t nold;
  uint64_t log_bytes;
  unsigned char *buf;            /* one segment's worth of batch */
  uint64_t nbuf;                 /* records pending in buf (compaction) */
  uint64_t compact_seq;          /* first batch seq of the log being written */
  bool broken;
};

static struct journal *
journal_alloc (struct store *st, struct slots *sl)
{
  struct journal *j = calloc (1, sizeof *j);
  if (!j)
    return NULL;
  j->st = st;
  j->sl = sl;
  j->seg_slots = JOURNAL_SEGMENT / store_slot_size (st);
  j->buf = malloc (JOURNAL_SEGMENT);
  if (!j->buf) {
    free (j);
    return NULL;
  }
  return j;
}

void
journal_free (struct journal *j)
{
  if (!j)
    return;
  free (j->chain);
  free (j->old_chain);
  free (j->buf);
  free (j);
}

uint64_t journal_log_bytes (const struct journal *j) { return j->log_bytes; }
bool journal_broken (const struct journal *j) { return j->broken; }

void
journal_segments (const struct journal *j, void (*fn) (void *, uint64_t, uint64_t), void *opaque)
{
  for (size_t i = 0; i < j->nchain; ++i)
    fn (opaque, j->chain[i], j->seg_slots);
}

static int
chain_add (struct journal *j, uint64_t seg)
{
  if (j->nchain == j->chain_cap) {
    size_t cap = j->chain_cap ? j->chain_cap * 2 : 16;
    uint64_t *p = realloc (j->chain, cap * sizeof *p);
    if (!p)
      return -1;
    j->chain = p;
    j->chain_cap = cap;
  }
  j->chain[j->nchain++] = seg;
  return 0;
}

static int
fail_io (struct journal *j)
{
  int e = errno ? errno : EIO;
  j->broken = true;
  errno = e;
  return -1;
}

static int
write_at (struct journal *j, const void *buf, uint64_t len)
{
  int err;
  uint64_t bs = store_slot_size (j->st);
  if (store_write (j->st, buf, len, j->seg * bs + j->off, &err) == -1) {
    errno = err;
    return -1;
  }
  j->off += len;
  j->log_bytes += len;
  return 0;
}

/* Start a new segment: the old one ends with a JUMP naming it (the
 * first segment of a log is named by the header instead).
 */
static int
new_segment (struct journal *j, bool jump)
{
  uint64_t seg;
  if (slots_take_run (j->sl, j->seg_slots, &seg) == -1 || chain_add (j, seg) == -1)
    return -1;
  if (jump) {
    unsigned char hdr[BATCH_HEADER];
    struct jbatch b = { .kind = BATCH_JUMP, .seq = j->next_seq++, .target = seg };
    jbatch_encode (hdr, &b, j->h.uuid);
    if (write_at (j, hdr, sizeof hdr) == -1)
      return -1;
  }
  j->seg = seg;
  j->off = 0;
  return 0;
}

/* Records that fit in the current segment after a batch header, keeping
 * room for the JUMP that ends it.
 */
static uint64_t
room (const struct journal *j)
{
  uint64_t used = j->off + (uint64_t) 2 * BATCH_HEADER;
  return used >= JOURNAL_SEGMENT ? 0 : (JOURNAL_SEGMENT - used) / RECORD_SIZE;
}

/* Write the n records already encoded at buf + BATCH_HEADER as a batch. */
static int
write_batch (struct journal *j, uint64_t n, bool last, uint64_t time_us)
{
  struct jbatch b = { .kind = BATCH_RECORDS, .flags = last ? BATCH_LAST : 0,
                      .nrec = (uint32_t) n, .seq = j->next_seq++, .time_us = time_us };
  b.recs_crc = jrecs_crc (j->buf + BATCH_HEADER, n, j->h.uuid);
  jbatch_encode (j->buf, &b, j->h.uuid);
  return write_at (j, j->buf, BATCH_HEADER + n * RECORD_SIZE);
}

/* Make sure the next batch can hold at least one record. */
static int
ensure_room (struct journal *j)
{
  return room (j) > 0 ? 0 : new_segment (j, true);
}

/* Blocks seen by the backward pass of drop_superseded. */
struct blockset {
  uint64_t *v;                   /* block + 1; 0 is empty */
  uint64_t mask;
  struct jrec **big;             /* zero runs too long to list block by block */
  size_t nbig, bigcap;
};

#define BIG_ZERO 65536

static bool
set_has (const struct blockset *s, uint64_t b)
{
  for (uint64_t i = (b * 0x9e3779b97f4a7c15ull) & s->mask;; i = (i + 1) & s->mask) {
    if (s->v[i] == 0)
      return false;
    if (s->v[i] == b + 1)
      return true;
  }
}

static void
set_add (struct blockset *s, uint64_t b)
{
  uint64_t i = (b * 0x9e3779b97f4a7c15ull) & s->mask;
  while (s->v[i] != 0 && s->v[i] != b + 1)
    i = (i + 1) & s->mask;
  s->v[i] = b + 1;
}

static bool
covered_later (const struct blockset *s, uint64_t b)
{
  if (set_has (s, b))
    return true;
  for (size_t i = 0; i < s->nbig; ++i)
    if (b >= s->big[i]->block && b - s->big[i]->block < s->big[i]->count)
      return true;
  return false;
}

/* Within one commit, a block's STORE record that a later record of the
 * same commit replaces is dropped: its slot was retired in this epoch and
 * is reused right after the commit, so if this commit were the last one
 * on disk its hash could no longer be checked.  (The later record gives
 * the block its value anyway.)  Records are one block each, except ZERO.
 * -1 when out of memory.
 */
static int
drop_superseded (const struct avec *v, uint64_t n)
{
  struct blockset s = { 0 };
  uint64_t cap = 64;
  uint64_t slots = 0;
  for (uint64_t x = 0; x < n; ++x) {
    const struct jrec *r = avec_at (v, x);
    if (r && r->kind != 0)
      slots += r->kind == REC_ZERO && r->count <= BIG_ZERO ? r->count : 1;
  }
  while (cap < 2 * slots)
    cap *= 2;
  s.v = calloc (cap, sizeof *s.v);
  if (!s.v)
    return -1;
  s.mask = cap - 1;
  int rc = 0;
  for (uint64_t x = n; x-- > 0 && rc == 0;) {
    struct jrec *r = avec_at (v, x);
    if (!r || r->kind == 0)
      continue;
    if (r->kind == REC_ZERO) {
      if (r->count <= BIG_ZERO)
        for (uint64_t i = 0; i < r->count; ++i)
          set_add (&s, r->block + i);
      else if (s.nbig == s.bigcap) {
        size_t c = s.bigcap ? s.bigcap * 2 : 16;
        struct jrec **p = realloc (s.big, c * sizeof (struct jrec *));
        if (!p)
          rc = -1;
        else {
          s.big = p;
          s.bigcap = c;
          s.big[s.nbig++] = r;
        }
      }
      else
        s.big[s.nbig++] = r;
      continue;
    }
    if (covered_later (&s, r->block))
      r->kind = 0;               /* replaced later in this commit */
    else
      set_add (&s, r->block);
  }
  free (s.v);
  free (s.big);
  return rc;
}

int
journal_commit (struct journal *j, const struct avec *v, uint64_t time_us)
{
  if (j->broken) {
    errno = EIO;
    return -1;
  }
  uint64_t n = avec_len (v), k = 0;
  bool any = false;
  if (drop_superseded (v, n) == -1) {
    errno = ENOMEM;
    return fail_io (j);
  }
  for (uint64_t x = 0; x < n; ++x) {
    const struct jrec *r = avec_at (v, x);
    if (!r || r->kind == 0)
      continue;                  /* dropped, or a push that failed with its write */
    if (!any || k == room (j)) {
      if (any && write_batch (j, k, false, time_us) == -1)
        return fail_io (j);
      if (ensure_room (j) == -1)
        return fail_io (j);
      k = 0;
      any = true;
    }
    rec_encode (j->buf + BATCH_HEADER + k * RECORD_SIZE, r);
    k++;
  }
  if (!any)
    return 0;
  if (write_batch (j, k, true, time_us) == -1 || store_sync (j->st) == -1)
    return fail_io (j);
  return 0;
}

/* ----------------------------------------------------------- headers */

static int
write_header (struct journal *j)
{
  unsigned char buf[JOURNAL_HEADER_SIZE];
  const struct jio *io = store_io (j->st);
  jheader_encode (buf, &j->h);
  if (io->pwrite (io->h, buf, sizeof buf, (j->h.seq % 2) * JOURNAL_HEADER_SIZE) == -1 ||
      io->sync (io->h) == -1)
    return -1;
  return 0;
}

struct journal *
journal_create (struct store *st, struct slots *sl, uint64_t export_size,
                const struct jheader *base, char err[JOURNAL_ERRLEN])
{
  struct journal *j = journal_alloc (st, sl);
  if (!j) {
    snprintf (err, JOURNAL_ERRLEN, "out of memory");
    return NULL;
  }
  if (base)
    j->h = *base;
  j->h.seq = 1;
  j->h.export_size = export_size;
  j->h.block_size = store_slot_size (st);
  j->h.created = (uint64_t) time (NULL);
  if (getrandom (j->h.uuid, sizeof j->h.uuid, 0) != (ssize_t) sizeof j->h.uuid) {
    snprintf (err, JOURNAL_ERRLEN, "cannot get random bytes for the journal's uuid: %s",
              strerror (errno));
    journal_free (j);
    return NULL;
  }
  j->next_seq = 1;
  if (new_segment (j, false) == -1) {
    snprintf (err, JOURNAL_ERRLEN, "cannot grow the journal: %s", strerror (errno));
    journal_free (j);
    return NULL;
  }
  j->h.log_head = j->seg;
  j->h.log_seq = j->next_seq;
  /* Both copies, so that a stale copy from an earlier file never wins. */
  struct jheader h2 = j->h;
  j->h.seq = 0;
  if (write_header (j) == -1 || ((j->h = h2), write_header (j)) == -1) {
    snprintf (err, JOURNAL_ERRLEN, "cannot write the journal header: %s", strerror (errno));
    journal_free (j);
    return NULL;
  }
  return j;
}

/* -------------------------------------------------------- compaction */

int
journal_compact_begin (struct journal *j)
{
  if (j->broken) {
    errno = EIO;
    return -1;
  }
  free (j->old_chain);
  j->old_chain = j->chain;
  j->nold = j->nchain;
  j->chain = NULL;
  j->nchain = j->chain_cap = 0;
  j->nbuf = 0;
  j->compact_seq = j->next_seq;
  if (new_segment (j, false) == -1)
    return fail_io (j);
  return 0;
}

int
journal_compact_add (struct journal *j, const struct jrec *r)
{
  if (j->broken) {
    errno = EIO;
    return -1;
  }
  if (j->nbuf == room (j)) {
    if (write_batch (j, j->nbuf, false, 0) == -1 || ensure_room (j) == -1)
      return fail_io (j);
    j->nbuf = 0;
  }
  rec_encode (j->buf + BATCH_HEADER + j->nbuf * RECORD_SIZE, r);
  j->nbuf++;
  return 0;
}

int
journal_compact_end (struct journal *j, uint64_t time_us)
{
  if (j->broken) {
    errno = EIO;
    return -1;
  }
  uint64_t head = j->chain[0];
  if (write_batch (j, j->nbuf, true, time_us) == -1 || store_sync (j->st) == -1)
    return fail_io (j);
  j->h.seq++;
  j->h.log_head = head;
  j->h.log_seq = j->compact_seq;
  if (write_header (j) == -1)
    return fail_io (j);
  for (size_t i = 0; i < j->nold; ++i)
    slots_release_now (j->sl, j->old_chain[i], j->seg_slots);
  free (j->old_chain);
  j->old_chain = NULL;
  j->nold = 0;
  j->log_bytes = 0;
  return 0;
}

/* ---------------------------------------------------------- recovery */

struct replay {
  struct journal *j;
  const struct journal_replay *rp;
  struct journal_recovery *rec;
  uint64_t file_slots;           /* slots the file holds */
  struct jrec *pend;             /* the commit being read, or complete but unconfirmed */
  uint64_t npend, pend_cap;
  bool complete;                 /* pend is a whole commit */
  uint64_t pend_time;
  char *err;
};

#define MAX_COMMIT_RECORDS ((uint64_t) 1 << 26)

static int
apply_pending (struct replay *r)
{
  for (uint64_t i = 0; i < r->npend; ++i)
    if (r->rp->apply (r->rp->opaque, &r->pend[i], r->err) == -1)
      return -1;
  r->rec->commits++;
  r->rec->records += r->npend;
  r->rec->last_time_us = r->pend_time;
  r->npend = 0;
  r->complete = false;
  return 0;
}

static int
pend_add (struct replay *r, const struct jrec *x)
{
  if (r->npend == r->pend_cap) {
    uint64_t cap = r->pend_cap ? r->pend_cap * 2 : 4096;
    struct jrec *p = cap <= MAX_COMMIT_RECORDS ? realloc (r->pend, cap * sizeof *p) : NULL;
    if (!p) {
      snprintf (r->err, JOURNAL_ERRLEN, "a commit is too large to replay");
      return -1;
    }
    r->pend = p;
    r->pend_cap = cap;
  }
  r->pend[r->npend++] = *x;
  return 0;
}

static bool
segment_ok (const struct replay *r, uint64_t seg)
{
  return seg < r->file_slots && r->j->seg_slots <= r->file_slots - seg;
}

/* Read the batch at the current position.  1: one more batch read,
 * 0: the log ends here, -1: a fatal error (err says why).
 */
static int
replay_batch (struct replay *r)
{
  struct journal *j = r->j;
  unsigned char hdr[BATCH_HEADER];
  struct jbatch b;
  int e;
  uint64_t bs = store_slot_size (j->st);
  if (j->off + BATCH_HEADER > JOURNAL_SEGMENT)
    return 0;
  if (store_read (j->st, hdr, sizeof hdr, j->seg * bs + j->off, &e) == -1) {
    snprintf (r->err, JOURNAL_ERRLEN, "cannot read the journal: %s", strerror (e));
    return -1;
  }
  if (jbatch_decode (hdr, &b, j->h.uuid) == -1 || b.seq != j->next_seq)
    return 0;
  if (b.kind == BATCH_JUMP) {
    if (!segment_ok (r, b.target) || chain_add (j, b.target) == -1)
      return 0;
    if (r->complete && apply_pending (r) == -1)
      return -1;
    j->seg = b.target;
    j->off = 0;
    j->next_seq++;
    return 1;
  }
  if (b.kind != BATCH_RECORDS || b.nrec > (JOURNAL_SEGMENT - j->off - BATCH_HEADER) / RECORD_SIZE)
    return 0;
  if (store_read (j->st, j->buf, (uint64_t) b.nrec * RECORD_SIZE,
                  j->seg * bs + j->off + BATCH_HEADER, &e) == -1) {
    snprintf (r->err, JOURNAL_ERRLEN, "cannot read the journal: %s", strerror (e));
    return -1;
  }
  if (jrecs_crc (j->buf, b.nrec, j->h.uuid) != b.recs_crc)
    return 0;
  /* A valid batch after a whole commit proves that commit was synced. */
  if (r->complete && apply_pending (r) == -1)
    return -1;
  for (uint32_t i = 0; i < b.nrec; ++i) {
    struct jrec x;
    rec_decode (j->buf + (uint64_t) i * RECORD_SIZE, &x);
    if (pend_add (r, &x) == -1)
      return -1;
  }
  j->off += BATCH_HEADER + (uint64_t) b.nrec * RECORD_SIZE;
  j->next_seq++;
  if (b.flags & BATCH_LAST) {
    r->complete = true;
    r->pend_time = b.time_us;
  }
  return 1;
}

/* The last commit: keep it only if every STORE record's data is there. */
static int
finish_replay (struct replay *r)
{
  if (!r->complete) {
    r->rec->dropped = r->npend > 0;
    return 0;
  }
  for (uint64_t i = 0; i < r->npend; ++i)
    if (r->pend[i].kind == REC_STORE && !r->rp->verify (r->rp->opaque, &r->pend[i])) {
      r->rec->dropped = true;
      return 0;
    }
  return apply_pending (r);
}

int
journal_read_header (const struct jio *io, struct jheader *h, char err[JOURNAL_ERRLEN])
{
  unsigned char buf[JOURNAL_HEADER_SIZE];
  struct jheader c[2];
  bool ok[2];
  for (int i = 0; i < 2; ++i) {
    if (io->pread (io->h, buf, sizeof buf, (uint64_t) i * JOURNAL_HEADER_SIZE) == -1) {
      snprintf (err, JOURNAL_ERRLEN, "cannot read the journal header: %s", strerror (errno));
      return -1;
    }
    ok[i] = jheader_decode (buf, &c[i]) == 0 && c[i].seq % 2 == (uint64_t) i;
  }
  if (!ok[0] && !ok[1]) {
    snprintf (err, JOURNAL_ERRLEN, "corrupt journal header (not a luacow journal, or damaged)");
    return -1;
  }
  *h = ok[0] && (!ok[1] || c[0].seq > c[1].seq) ? c[0] : c[1];
  return 0;
}

struct journal *
journal_recover (struct store *st, struct slots *sl, uint64_t export_size,
                 struct jheader *hdr, const struct journal_replay *rp,
                 struct journal_recovery *rec, char err[JOURNAL_ERRLEN])
{
  memset (rec, 0, sizeof *rec);
  if (journal_read_header (store_io (st), hdr, err) == -1)
    return NULL;
  if (hdr->export_size != export_size) {
    snprintf (err, JOURNAL_ERRLEN, "the journal is for an export of %llu bytes, this export has %llu",
              (unsigned long long) hdr->export_size, (unsigned long long) export_size);
    return NULL;
  }
  if (hdr->block_size != store_slot_size (st)) {
    snprintf (err, JOURNAL_ERRLEN, "the journal has %u-byte blocks, this overlay %u-byte ones "
              "(the policy's cluster_size changed)", hdr->block_size, store_slot_size (st));
    return NULL;
  }
  if (rp->check && rp->check (rp->opaque, hdr, err) == -1)
    return NULL;
  struct journal *j = journal_alloc (st, sl);
  if (!j) {
    snprintf (err, JOURNAL_ERRLEN, "out of memory");
    return NULL;
  }
  j->h = *hdr;
  uint64_t size = 0;
  const struct jio *io = store_io (st);
  io->size (io->h, &size);
  struct replay r = { .j = j, .rp = rp, .rec = rec, .err = err,
                      .file_slots = size > JOURNAL_DATA_OFFSET
                        ? (size - JOURNAL_DATA_OFFSET) / store_slot_size (st) : 0 };
  err[0] = '\0';
  int k = 0;
  if (!segment_ok (&r, hdr->log_head) || chain_add (j, hdr->log_head) == -1) {
    snprintf (err, JOURNAL_ERRLEN, "corrupt journal header (log outside the file)");
    k = -1;
  }
  else {
    j->seg = hdr->log_head;
    j->off = 0;
    j->next_seq = hdr->log_seq;
    while ((k = replay_batch (&r)) == 1)
      ;
  }
  if (k == 0)
    k = finish_replay (&r);
  free (r.pend);
  if (k == -1) {
    journal_free (j);
    return NULL;
  }
  return j;
}
