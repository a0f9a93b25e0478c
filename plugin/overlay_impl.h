/* luacow: the overlay's insides, shared by overlay.c (the request paths),
 * overlay_durable.c (open, commits, compaction) and overlay_recover.c
 * (recovery).  See overlay.c.
 */
#ifndef LUACOW_OVERLAY_IMPL_H
#define LUACOW_OVERLAY_IMPL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "avec.h"
#include "blockmap.h"
#include "journal.h"
#include "overlay.h"
#include "slots.h"
#include "store.h"

/* A block's entry in the block map: the low two bits are the state, the
 * rest says where the data is.  Clean is 0 so untouched blocks cost
 * nothing; zero is the block map's fill value.  A store entry's bits 2-3
 * say, with a journal, that its slot was first written in the open epoch
 * of that parity and no commit names it yet: only such a slot may be
 * written over in place (see the design note).
 */
enum { E_CLEAN = 0, E_ZERO = 1, TAG_STORE = 2, TAG_FILE = 3 };
#define E_FRESH 4
#define E_PARITY 8
/* A copy of the plugin's data (cow-on-read, cow-on-cache): read from the
 * store, but clean for everything else (saves, extents, the journal).
 */
#define E_COPY 16
#define SLOT_SHIFT 5

static inline unsigned tag (uint64_t e) { return e & 3; }
static inline bool is_copy (uint64_t e) { return tag (e) == TAG_STORE && (e & E_COPY); }
/* Data of the overlay's own: what clients wrote (or a reload gave). */
static inline bool is_data (uint64_t e) { return tag (e) >= TAG_STORE && !is_copy (e); }
static inline bool is_clean (uint64_t e) { return e == E_CLEAN || is_copy (e); }
static inline uint64_t store_entry (uint64_t slot) { return slot << SLOT_SHIFT | TAG_STORE; }
static inline uint64_t fresh_entry (uint64_t slot, unsigned p)
{ return store_entry (slot) | E_FRESH | (p ? E_PARITY : 0); }
static inline uint64_t slot_of (uint64_t e) { return e >> SLOT_SHIFT; }
/* Whether e is a store entry for slot s (whatever its flags). */
static inline bool is_slot (uint64_t e, uint64_t s) { return tag (e) == TAG_STORE && slot_of (e) == s; }
/* Reloaded qcow2 data offsets are multiples of 512, so the tag fits. */
static inline uint64_t file_entry (uint64_t off) { return off | TAG_FILE; }
static inline uint64_t file_offset_of (uint64_t e) { return e & ~(uint64_t) 3; }

#define MAX_BLOCK 4096
#define STRIPES 256
#define STRIPE_SHIFT 6            /* 64 neighbouring blocks share a stripe */

struct overlay {
  uint64_t size, nblocks;
  uint32_t bs;
  unsigned bits;
  struct blockmap *map;
  struct store *store;
  struct slots *slots;
  struct journal *journal;        /* NULL: nothing survives the process */
  char *journal_path, *base_link;
  int file_fd;                    /* reloaded qcow2, or -1 */
  struct overlay *live;           /* a frozen view: its overlay (NULL: live) */

  /* Epochs: every request runs inside one; see the design note. */
  _Atomic uint64_t epoch;
  _Atomic uint64_t active[2];
  struct avec recs[2];            /* journal records by epoch parity */
  pthread_mutex_t stripes[STRIPES];

  pthread_mutex_t commit_lock;
  _Atomic uint64_t committed;     /* epochs below this are committed */
  _Atomic int pins;               /* frozen views alive: reclaim nothing */
  /* A freeze waits for the write requests in flight (a request is one
   * point in time for a save) and holds new ones off while it copies.
   */
  _Atomic uint64_t writers;
  _Atomic int freezing;
  pthread_mutex_t freeze_lock;    /* held by a freeze throughout */
  _Atomic int journal_errno;      /* sticky: a commit failed */
  uint64_t compact_min;
  char *hash_buf;                 /* commit_lock's: data read to be hashed */

  pthread_t committer;
  bool committer_running, committer_stop;
  pthread_mutex_t committer_lock;
  pthread_cond_t committer_cond;

  _Atomic uint64_t data_blocks, zero_blocks, written_bytes, zeroed_bytes;
};

static inline uint64_t min64 (uint64_t a, uint64_t b) { return a < b ? a : b; }

/* Byte offset of the end of block b, clipped to the export. */
static inline uint64_t
ov_block_end (const struct overlay *ov, uint64_t b)
{
  uint64_t e = (b + 1) << ov->bits;
  return e < ov->size ? e : ov->size;
}

/* The stripe locks of blocks [b, b_end), taken in ascending order
 * (overlay.c).
 */
struct stripe_set { uint64_t bits[STRIPES / 64]; };
void ov_stripes_of (struct stripe_set *s, uint64_t b, uint64_t b_end);
void ov_stripes_lock (struct overlay *ov, const struct stripe_set *s);
void ov_stripes_unlock (struct overlay *ov, const struct stripe_set *s);

/* Under the stripes, epoch parity p: file a journal record (none without
 * a journal).  0 or -1 (*err).
 */
int ov_add_record (struct overlay *ov, unsigned p, const struct jrec *r, int *err);
/* Inside an epoch section: whole blocks [b, b_end) written from src, or
 * made zero.  0 or -1 (*err).
 */
int ov_write_blocks (struct overlay *ov, uint64_t b, uint64_t b_end, const char *src, int *err);
int ov_zero_blocks (struct overlay *ov, uint64_t b, uint64_t b_end, int *err);
/* The k blocks at src (bytes long; the last may be short) into slots
 * s[0..k), one write per run of consecutive slots.  0 or -1 (*err).
 */
int ov_write_slots (struct overlay *ov, const uint64_t *s, uint64_t k, const char *src,
                    uint64_t bytes, int *err);

/* Block b's entry for a compaction's log, its FRESH mark cleared first
 * (overlay.c).
 */
uint64_t ov_entry_for_log (struct overlay *ov, uint64_t b);

/* Epoch sections (overlay.c). */
uint64_t ov_enter (struct overlay *ov);
void ov_exit (struct overlay *ov, uint64_t e);

/* Entry changes, counted (overlay.c). */
void ov_account (struct overlay *ov, uint64_t old, uint64_t new);

/* Wake the committer early: many slots wait for reuse, or many records
 * for the journal (overlay_durable.c).
 */
void ov_nudge (struct overlay *ov);
/* A flush arrived: keep the store writing behind for a while. */
void ov_flushing (struct overlay *ov);

/* A base file's identity: its size and the CRC of its first MiB
 * (overlay_recover.c).  0, or -1 with errno.
 */
int ov_file_identity (int fd, uint64_t *size, uint32_t *crc);
/* Replay the journal in ov's store into its block map and slots
 * (overlay_recover.c).  0, or -1 with err set.
 */
int ov_recover (struct overlay *ov, struct ov_recovery *rec, char err[OV_ERRLEN]);

/* Commit epochs up to now (overlay_durable.c); compact if asked and due. */
int ov_commit (struct overlay *ov, bool compact, int *err);
/* Rewrite the journal's log from the live block map (overlay_durable.c;
 * the caller holds commit_lock, or nothing else runs yet).  0 or -1.
 */
int ov_compact (struct overlay *ov);

#endif
