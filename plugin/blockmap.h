/* luacow: a sparse, lock-free map from block index to a 64-bit entry.
 *
 * A radix tree of 64-way nodes, allocated on first store, so memory grows
 * with the blocks touched, not with the export size.  Readers never lock;
 * writers publish new nodes with compare-and-swap.  Never-touched entries
 * read 0.  One "fill" value can cover a whole subtree without allocating
 * it, so zeroing a 64 TiB export costs a few nodes, not 2^34 entries.
 * Nodes are only freed by blockmap_free, so a reader never races a free.
 */
#ifndef LUACOW_BLOCKMAP_H
#define LUACOW_BLOCKMAP_H

#include <stdatomic.h>
#include <stdint.h>

struct blockmap;

/* fill must be non-zero; it is the value blockmap_fill stores. */
struct blockmap *blockmap_new (uint64_t nblocks, uint64_t fill);
void blockmap_free (struct blockmap *bm);

/* The entry of block b. */
uint64_t blockmap_get (const struct blockmap *bm, uint64_t b);

/* The atomic cell of block b, allocating the path to it.  NULL only when
 * out of memory.  The cell stays valid until blockmap_free.
 */
_Atomic uint64_t *blockmap_cell (struct blockmap *bm, uint64_t b);

/* The first block >= from and < end whose entry is not value (0 or the
 * fill value), or end.  Uniform subtrees are skipped without a visit.
 */
uint64_t blockmap_next_other (const struct blockmap *bm, uint64_t from,
                              uint64_t end, uint64_t value);

/* Set [from, end) to the fill value.  fn (opaque, old) is called for each
 * entry that held something other than 0 or fill.  Returns the number of
 * blocks that were not fill before, or UINT64_MAX when out of memory
 * (blocks already done stay done).
 */
typedef void (*blockmap_old_fn) (void *opaque, uint64_t block, uint64_t old);
uint64_t blockmap_fill (struct blockmap *bm, uint64_t from, uint64_t end,
                        blockmap_old_fn fn, void *opaque);

/* A copy of the whole map (writers must be kept out meanwhile), or NULL
 * when out of memory.
 */
struct blockmap *blockmap_clone (const struct blockmap *bm);

/* Bytes of memory held by the tree. */
uint64_t blockmap_bytes (const struct blockmap *bm);

#endif
