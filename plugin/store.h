/* luacow: the overlay store, a file of fixed-size slots.
 *
 * The file is either an anonymous temporary (no journal: nothing survives
 * the process) or the journal file, whose first bytes hold the journal's
 * headers (data_offset says where the slots begin).  Which slot holds what,
 * and when a slot may be reused, is the business of slots.c and overlay.c;
 * this file only moves bytes and keeps the file large enough.
 */
#ifndef LUACOW_STORE_H
#define LUACOW_STORE_H

#include <stdint.h>

#include "jio.h"

struct store;

/* Takes over io (closed by store_free).  The file is grown on demand,
 * never past RLIMIT_FSIZE.  NULL when out of memory.
 */
struct store *store_new (const struct jio *io, uint32_t slot_size, uint64_t data_offset);
void store_free (struct store *st);

/* An unlinked private file in dir, or -1 with errno set. */
int store_tmpfile (const char *dir);

uint32_t store_slot_size (const struct store *st);
/* How many slots the file may ever hold (the file size limit). */
uint64_t store_max_slots (const struct store *st);

/* Make sure slots [0, end) exist in the file (growing ahead, so that
 * writes into new slots never extend the file: an extending write makes
 * the filesystem journal a size change on every request).  -1: errno.
 */
int store_reserve (struct store *st, uint64_t end);

/* I/O at a byte offset into the slot area (slot * slot_size + offset in
 * the slot).  0, or -1 with *err set to an errno value.
 */
int store_read (struct store *st, void *buf, uint64_t count, uint64_t offset, int *err);
int store_write (struct store *st, const void *buf, uint64_t count, uint64_t offset, int *err);

/* Give the disk space of n slots back (best effort). */
void store_punch (struct store *st, uint64_t slot, uint64_t n);

/* fdatasync.  0 or -1 with errno. */
int store_sync (struct store *st);

/* Write-behind.  A journal's flush must fdatasync everything written
 * since the previous flush, and the sync is short when the kernel has
 * already sent most of it to the disk.  So while armed, every kick_bytes
 * written wake a thread that asks the kernel to start writing the file's
 * dirty pages back (jio.writeback: no waiting, no promise, nothing about
 * durability changes).  Armed by each flush for a while: a workload that
 * never asks for durability never writes anything early.  Start: 0, or
 * -1 with errno (then there is simply no write-behind); a file without
 * writeback gets none.  Stopped by store_free.
 */
int store_write_behind_start (struct store *st, uint64_t kick_bytes);
void store_write_behind_arm (struct store *st, double seconds);
/* Times the thread asked the kernel to write back (tests, the exit debug line). */
uint64_t store_write_behind_kicks (const struct store *st);

/* The file operations, for the journal's headers before data_offset. */
const struct jio *store_io (const struct store *st);

#endif
