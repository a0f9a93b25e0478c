/* luacow: the copy-on-write overlay (design note at the top of overlay.c).
 *
 * Every block of the export is clean (read from the layer below), zero, or
 * data (a slot of the store, or a range of a reloaded qcow2 file).  With
 * a journal, the store is the journal file and a flush makes everything
 * acknowledged before it durable; recovery after a crash happens in
 * overlay_open.  Knows nothing of qcow2 or Lua.
 *
 * Requests must lie inside the export (nbdkit checks that).
 */
#ifndef LUACOW_OVERLAY_H
#define LUACOW_OVERLAY_H

#include <stdbool.h>
#include <stdint.h>

#include "jio.h"

#define OV_ERRLEN 512

/* The layer below (the plugin), as the overlay reads it. */
struct ov_lower {
  int (*pread) (void *handle, void *buf, uint32_t count, uint64_t offset, int *err);
  void *handle;
};

enum ov_kind { OV_CLEAN, OV_ZERO, OV_DATA };

struct ov_stats {
  uint64_t data_blocks;     /* blocks holding overlay data */
  uint64_t zero_blocks;     /* blocks that read as zero */
  uint64_t written_bytes;   /* bytes clients wrote since start (recovered data counts) */
  uint64_t zeroed_bytes;    /* bytes clients zeroed or trimmed since start */
  uint64_t memory_bytes;    /* block map */
  uint64_t store_slots;     /* slots of the store file handed out (high-water mark) */
};

struct ov_options {
  uint64_t size;
  uint32_t block_size;      /* a power of two from 512 to 4096 */
  const char *tmpdir;       /* without a journal: where the store goes */
  const char *journal;      /* absolute path, or NULL: nothing survives a crash */
  const char *base;         /* a new journal: the file about to be reloaded, or NULL */
  const struct jio *io;     /* tests: the journal's file operations (default: the path) */
  uint64_t compact_min;     /* tests: compact the log past this many bytes (0: default) */
};

struct ov_recovery {        /* what overlay_open recovered from a journal */
  bool recovered;
  uint64_t commits, blocks, bytes;
  double flushed;           /* wall-clock time of the last durable commit (0: none) */
  double seconds;
  bool dropped;             /* an incomplete last commit was dropped */
  char base[4096];          /* the file the journal was based on ("" if none) */
};

struct overlay;

/* NULL on failure with a one-line reason in err.  With a journal that
 * already exists, recovers it: *rec says what (the caller must not reload
 * anything then: the journal holds the whole state).
 */
struct overlay *overlay_open (const struct ov_options *o, struct ov_recovery *rec,
                              char err[OV_ERRLEN]);
/* Before the plugin is open: 1 when a journal at path waits to be
 * recovered and its header and base file are sound, 0 when there is none
 * (or it is empty), -1 when it cannot be recovered (err says why).
 */
int overlay_check_journal (const char *path, char err[OV_ERRLEN]);

/* Commits what is pending (a clean shutdown leaves a complete journal). */
void overlay_free (struct overlay *ov);

/* Start committing (and reclaiming) in the background: every second
 * without a journal (no I/O), every 30 s with one, and sooner when space
 * or records pile up.
 * After nbdkit forks: a thread started before would not be in the server.
 * 0, or -1 with err set.
 */
int overlay_start (struct overlay *ov, char err[OV_ERRLEN]);

uint64_t overlay_size (const struct overlay *ov);
uint32_t overlay_block_size (const struct overlay *ov);
bool overlay_has_journal (const struct overlay *ov);
void overlay_stats (const struct overlay *ov, struct ov_stats *stats);

int overlay_pread (struct overlay *ov, const struct ov_lower *lower,
                   void *buf, uint32_t count, uint64_t offset, int *err);
int overlay_pwrite (struct overlay *ov, const struct ov_lower *lower,
                    const void *buf, uint32_t count, uint64_t offset, int *err);
/* Zero and trim: afterwards the range reads as zeroes. */
int overlay_zero (struct overlay *ov, const struct ov_lower *lower,
                  uint64_t count, uint64_t offset, int *err);

/* cow-on-read and cow-on-cache: keep copies of the plugin's data just read
 * (buf holds [offset, offset+count)) for the whole blocks still clean.
 * Copies are read from the overlay but are clean for saves, extents and
 * the journal (a save holds only what clients changed).
 */
void overlay_populate (struct overlay *ov, const void *buf, uint64_t count, uint64_t offset);
/* Whether the block holding offset is clean and no copy of it is kept. */
bool overlay_block_clean (const struct overlay *ov, uint64_t offset);

/* With a journal: returns once everything acknowledged before the call is
 * durable.  Without: nothing to do.  0 or -1 (*err).
 */
int overlay_flush (struct overlay *ov, int *err);

/* Calls fn for each maximal run of one kind inside [offset, offset+count)
 * (clipped to the export), in order.  fn returning non-zero stops the walk
 * and is returned.
 */
typedef int (*ov_run_fn) (void *opaque, enum ov_kind kind, uint64_t offset,
                          uint64_t length);
int overlay_map (const struct overlay *ov, uint64_t offset, uint64_t count,
                 ov_run_fn fn, void *opaque);

/* A point-in-time view for a save: reads and maps what the overlay held
 * at this moment while writers go on (they never wait for the save).
 * Writers are held off only while the block map is copied.  Release it
 * with overlay_free.  NULL when out of memory.
 */
struct overlay *overlay_freeze (struct overlay *ov);

/* Reloading.  overlay_attach_file names the file whose byte ranges
 * overlay_set_file_block refers to (the overlay owns fd from then on).
 * Used before any client is served; overlay_commit afterwards.
 */
void overlay_attach_file (struct overlay *ov, int fd);
int overlay_set_file_block (struct overlay *ov, uint64_t block, uint64_t file_offset);
int overlay_set_zero_blocks (struct overlay *ov, uint64_t block, uint64_t n);
int overlay_put_block (struct overlay *ov, uint64_t block, const void *buf, int *err);
int overlay_commit (struct overlay *ov, int *err);

/* What the background committer does each time: commit, reclaim,
 * compact the journal when due.  For tests, which do not start it.
 */
int overlay_tick (struct overlay *ov, int *err);

/* After a successful save at exit: the saved file is the durable state,
 * remove the journal (and its link to the base).  0 or -1 (errno).
 */
int overlay_discard_journal (struct overlay *ov);

#endif
