/* luacow: who owns a store slot, and when a freed slot may be reused.
 *
 * A slot is free, owned by the writer that took it (until it publishes it
 * in the block map, or gives it back unused after a failed write), live
 * (referenced by the block map), or retired (unreferenced, but a reader
 * that looked the block up earlier may still be reading it, and in a
 * journal the record that unreferenced it may not be durable yet).
 * Retired slots wait in the limbo list of the epoch they were retired in;
 * overlay.c hands that list back with slots_reclaim once both conditions
 * are gone.  Free slots are taken first from a ring that the reclaimer
 * refills, then from the end of the file (consecutive slots).  Nothing
 * here takes a lock in the request path.
 */
#ifndef LUACOW_SLOTS_H
#define LUACOW_SLOTS_H

#include <stdbool.h>
#include <stdint.h>

#include "store.h"

struct slots;

struct slots *slots_new (struct store *st);
void slots_free (struct slots *s);

/* Take n slots (n <= SLOTS_MAX_TAKE) into out[], ascending and as
 * consecutive as the free slots allow.  0, or -1 with errno (ENOSPC when
 * the file may not grow, ENOMEM).
 */
#define SLOTS_MAX_TAKE 256
int slots_take (struct slots *s, uint64_t n, uint64_t *out);
/* n consecutive slots from the end of the file (journal log segments). */
int slots_take_run (struct slots *s, uint64_t n, uint64_t *first);

/* Retire a slot in epoch parity p (0 or 1); punch its disk space when it
 * is reclaimed if the client freed the block (zero, trim).
 */
void slots_retire (struct slots *s, unsigned p, uint64_t slot, bool punch);
/* Retired slots waiting with parity p. */
uint64_t slots_retired (const struct slots *s, unsigned p);
/* Every slot retired with parity p is free now.  One caller at a time. */
void slots_reclaim (struct slots *s, unsigned p);
/* Free at once: slots nobody has seen (a failed write's), or log
 * segments no durable header refers to.  Same caller as slots_reclaim.
 */
void slots_release_now (struct slots *s, uint64_t slot, uint64_t n);

/* After recovery: used[] (n slots, sorted ascending) are in use, every
 * other slot below the highest is free (up to a bound; the rest of a
 * very sparse file is simply not reused).
 */
int slots_rebuild (struct slots *s, const uint64_t *used, size_t n);

/* Slots handed out from the end of the file so far (the high-water mark),
 * and free slots waiting for reuse.
 */
uint64_t slots_end (const struct slots *s);
uint64_t slots_free_count (const struct slots *s);
/* Steps the reclaimer took keeping its free slots in order (tests: a
 * reclaim costs what it frees, not what is already free).
 */
uint64_t slots_work (const struct slots *s);

#endif
