/* luacow: the set of metadata cluster ranges of a qcow2 image (internal
 * to the decoder).
 *
 * Every metadata structure the decoder finds (header cluster, L1, L2
 * tables, refcount table and blocks, snapshot table and L1 tables, bitmap
 * directory) is added as a cluster-aligned range; once all are in, the
 * set is sorted and must not overlap, and guest data must not touch it.
 */
#ifndef LUACOW_QCOW2_META_H
#define LUACOW_QCOW2_META_H

#include <stddef.h>
#include <stdint.h>

#include "qcow2.h"

enum qcow2_meta_kind {
  META_HEADER, META_L1, META_L2, META_REFTABLE, META_REFBLOCK,
  META_SNAPSHOT_TABLE, META_SNAPSHOT_L1, META_BITMAP_DIR,
};

struct qcow2_meta_range {
  uint64_t start, end;          /* bytes, cluster-aligned */
  enum qcow2_meta_kind kind;
};

struct qcow2_meta {
  struct qcow2_meta_range *r;   /* sorted by start after qcow2_meta_sort */
  size_t n, cap;
  size_t max;                   /* more ranges than clusters: overlap */
  unsigned cluster_bits;
};

/* An empty set for a file of file_size bytes. */
void qcow2_meta_init (struct qcow2_meta *m, unsigned cluster_bits,
                      uint64_t file_size);
void qcow2_meta_free (struct qcow2_meta *m);

/* "the L1 table", "an L2 table"... for messages. */
const char *qcow2_meta_name (enum qcow2_meta_kind kind);

/* Add [start, start + len rounded up to a cluster); len 0 adds nothing.
 * The caller has checked start is aligned and the range is in the file.
 */
int qcow2_meta_add (struct qcow2_meta *m, uint64_t start, uint64_t len,
                    enum qcow2_meta_kind kind, struct qcow2_err *err);

/* Sort; fails naming the first two ranges that overlap. */
int qcow2_meta_sort (struct qcow2_meta *m, struct qcow2_err *err);

/* After qcow2_meta_sort: a range overlapping [off, off + len), len > 0,
 * or NULL.
 */
const struct qcow2_meta_range *qcow2_meta_find (const struct qcow2_meta *m,
                                                uint64_t off, uint64_t len);

#endif /* LUACOW_QCOW2_META_H */
