/* luacow: an append-only vector that many threads push to without a lock.
 *
 * A push takes an index with one atomic add and returns the element's
 * memory; the element is the pusher's to fill.  Reading is for one thread
 * that knows every pusher has finished (overlay.c's epochs say when), and
 * so is avec_clear.  Chunks are kept for reuse after a clear.
 */
#ifndef LUACOW_AVEC_H
#define LUACOW_AVEC_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define AVEC_CHUNK 8192           /* elements per chunk */
#define AVEC_CHUNKS 8192          /* chunks at most: 64 Mi elements */

struct avec {
  size_t esize;
  _Atomic uint64_t n;
  _Atomic (char *) chunk[AVEC_CHUNKS];
};

void avec_init (struct avec *v, size_t esize);
void avec_destroy (struct avec *v);

/* Memory for one new element, or NULL (out of memory, or full). */
void *avec_push (struct avec *v);

/* Elements pushed since the last clear (some may be missing: see avec_at). */
uint64_t avec_len (const struct avec *v);
/* Element i, or NULL where its push failed. */
void *avec_at (const struct avec *v, uint64_t i);
void avec_clear (struct avec *v);

#endif
