/* luacow: the write-ahead journal of the overlay's block map.
 *
 * The overlay's data lives in the store's slots; the journal logs, per
 * commit, which blocks changed to which slot (or to zero, or to a range
 * of the reloaded file), and makes data and records durable with one
 * fdatasync.  Format: journal_format.h.  The journal has one writer at a
 * time (overlay.c's commit lock); recovery runs before anything is served.
 */
#ifndef LUACOW_JOURNAL_H
#define LUACOW_JOURNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "avec.h"
#include "journal_format.h"
#include "slots.h"
#include "store.h"

#define JOURNAL_ERRLEN 512

struct journal;

/* A fresh journal in an empty store file: writes both headers and syncs.
 * base (may be NULL) identifies the file the overlay was reloaded from.
 */
struct journal *journal_create (struct store *st, struct slots *sl, uint64_t export_size,
                                const struct jheader *base, char err[JOURNAL_ERRLEN]);

/* Recovery callbacks: apply checks a record against the export (and the
 * base file) and applies it, -1 rejecting the journal; verify says
 * whether a STORE record's data is what was written.
 */
struct journal_replay {
  /* Called once the header is read and fits the export: check the base. */
  int (*check) (void *opaque, const struct jheader *h, char err[JOURNAL_ERRLEN]);
  int (*apply) (void *opaque, const struct jrec *r, char err[JOURNAL_ERRLEN]);
  bool (*verify) (void *opaque, const struct jrec *r);
  void *opaque;
};

struct journal_recovery {
  uint64_t commits, records;
  uint64_t last_time_us;         /* of the last commit recovered (0: none) */
  bool dropped;                  /* an unsynced or torn last commit was dropped */
};

/* Open the journal in a store file that has one: reads the newest valid
 * header into *hdr, checks it against export_size and the store's block
 * size, and replays every durable commit.  Afterwards call
 * journal_compact before appending.
 */
struct journal *journal_recover (struct store *st, struct slots *sl, uint64_t export_size,
                                 struct jheader *hdr, const struct journal_replay *rp,
                                 struct journal_recovery *rec, char err[JOURNAL_ERRLEN]);
void journal_free (struct journal *j);

/* The newest valid header of the journal file behind io.  0 or -1 (err). */
int journal_read_header (const struct jio *io, struct jheader *h, char err[JOURNAL_ERRLEN]);

/* The log segments of the current chain, to mark them in use (recovery). */
void journal_segments (const struct journal *j, void (*fn) (void *, uint64_t, uint64_t),
                       void *opaque);

/* Append the records in v as one commit and fdatasync (data written
 * before this call becomes durable with it).  0, or -1 with errno; after
 * a failure the journal is broken and every later call fails.
 */
int journal_commit (struct journal *j, const struct avec *v, uint64_t time_us);

/* Write a fresh log holding the whole state, then switch the header to it
 * and free the old log.  Records come from journal_compact_add between
 * begin and end.  0 or -1 (errno; broken as for commit).
 */
int journal_compact_begin (struct journal *j);
int journal_compact_add (struct journal *j, const struct jrec *r);
int journal_compact_end (struct journal *j, uint64_t time_us);

/* Log bytes written since the last compaction. */
uint64_t journal_log_bytes (const struct journal *j);
bool journal_broken (const struct journal *j);

#endif
