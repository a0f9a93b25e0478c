/* luacow: metadata cluster ranges of a qcow2 image, see qcow2_meta.h. */
#include <stdlib.h>

#include "qcow2_common.h"
#include "qcow2_meta.h"

static const char *const names[] = {
  [META_HEADER] = "the header cluster",
  [META_L1] = "the L1 table",
  [META_L2] = "an L2 table",
  [META_REFTABLE] = "the refcount table",
  [META_REFBLOCK] = "a refcount block",
  [META_SNAPSHOT_TABLE] = "the snapshot table",
  [META_SNAPSHOT_L1] = "a snapshot L1 table",
  [META_BITMAP_DIR] = "the bitmap directory",
};

void qcow2_meta_init (struct qcow2_meta *m, unsigned cluster_bits,
                      uint64_t file_size)
{
  m->r = NULL;
  m->n = m->cap = 0;
  m->cluster_bits = cluster_bits;
  m->max = (size_t) (file_size >> cluster_bits) + 1;
}

void qcow2_meta_free (struct qcow2_meta *m)
{
  free (m->r);
  m->r = NULL;
  m->n = m->cap = 0;
}

const char *qcow2_meta_name (enum qcow2_meta_kind kind)
{
  return (unsigned) kind < sizeof names / sizeof names[0] ? names[kind]
                                                          : "metadata";
}

int qcow2_meta_add (struct qcow2_meta *m, uint64_t start, uint64_t len,
                    enum qcow2_meta_kind kind, struct qcow2_err *err)
{
  uint64_t cs = (uint64_t) 1 << m->cluster_bits;
  if (len == 0) return 0;
  if (m->n >= m->max) {
    /* More metadata clusters than the file holds: they must overlap. */
    qcow2_seterr (err, "qcow2: more metadata clusters than the file holds "
                  "(overlapping metadata)");
    return -1;
  }
  if (m->n == m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 64;
    struct qcow2_meta_range *r;
    if (cap > m->max) cap = m->max;
    r = realloc (m->r, cap * sizeof *r);
    if (!r) {
      qcow2_seterr (err, "qcow2: out of memory");
      return -1;
    }
    m->r = r;
    m->cap = cap;
  }
  m->r[m->n].start = start;
  m->r[m->n].end = start + (div_round_up (len, cs) << m->cluster_bits);
  m->r[m->n].kind = kind;
  m->n++;
  return 0;
}

static int cmp (const void *a, const void *b)
{
  const struct qcow2_meta_range *x = a, *y = b;
  return x->start < y->start ? -1 : x->start > y->start;
}

int qcow2_meta_sort (struct qcow2_meta *m, struct qcow2_err *err)
{
  if (m->n > 1) qsort (m->r, m->n, sizeof *m->r, cmp);
  for (size_t i = 1; i < m->n; i++) {
    const struct qcow2_meta_range *a = &m->r[i - 1], *b = &m->r[i];
    if (b->start < a->end) {
      qcow2_seterr (err, "qcow2: %s at %#llx overlaps %s at %#llx",
                    qcow2_meta_name (b->kind), (unsigned long long) b->start,
                    qcow2_meta_name (a->kind), (unsigned long long) a->start);
      return -1;
    }
  }
  return 0;
}

const struct qcow2_meta_range *qcow2_meta_find (const struct qcow2_meta *m,
                                                uint64_t off, uint64_t len)
{
  size_t lo = 0, hi = m->n;
  uint64_t last = off + len - 1;
  /* Find the last range starting at or before the last byte. */
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (m->r[mid].start <= last) lo = mid + 1;
    else hi = mid;
  }
  if (lo == 0) return NULL;
  return m->r[lo - 1].end > off ? &m->r[lo - 1] : NULL;
}
