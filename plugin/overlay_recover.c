/* luacow: recovering the overlay from its journal at startup: the base
 * file's identity, the checks every record passes before it is applied,
 * the hash check of the last commit, and the slots rebuilt from what the
 * durable state references.  See the recovery invariant in overlay.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nbdkit-filter.h>
#include <xxhash.h>
#include <zlib.h>

#include "clock.h"
#include "fullio.h"
#include "overlay_impl.h"

#define IDENTITY_BYTES (1u << 20)      /* a base file is known by size + CRC of these */

static inline uint64_t
block_bytes (const struct overlay *ov, uint64_t b)
{
  return min64 ((b + 1) << ov->bits, ov->size) - (b << ov->bits);
}

/* A base file is known by its size and the CRC of its first MiB: enough
 * to notice a file that was replaced or rewritten (qcow2 metadata lives
 * at its start), without reading it all.
 */
int
ov_file_identity (int fd, uint64_t *size, uint32_t *crc)
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
  if (ov_file_identity (f, size, &crc) == -1 || *size != h->base_size || crc != h->base_crc) {
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

int
ov_recover (struct overlay *ov, struct ov_recovery *rec, char err[OV_ERRLEN])
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
  if (ov_compact (ov) == -1) {
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
