/* luacow: sparse lock-free radix tree, see blockmap.h. */
#include <stdbool.h>
#include <stdlib.h>

#include "blockmap.h"

#define FAN_BITS 6
#define FAN (1u << FAN_BITS)

/* Interior nodes hold child pointers; leaves hold entries.  Both are 512
 * bytes, so an isolated write costs a few small nodes, not a big page.
 * A child pointer equal to FILLED stands for a subtree entirely at the
 * fill value.
 */
static char filled_marker;
#define FILLED ((void *) &filled_marker)

struct node {
  _Atomic (void *) child[FAN];
};
struct leaf {
  _Atomic uint64_t entry[FAN];
};

struct blockmap {
  _Atomic (void *) root;
  unsigned levels;            /* interior levels above the leaves */
  uint64_t nblocks;
  uint64_t fill;
  _Atomic uint64_t bytes;
};

struct blockmap *
blockmap_new (uint64_t nblocks, uint64_t fill)
{
  struct blockmap *bm = calloc (1, sizeof *bm);
  if (!bm)
    return NULL;
  bm->nblocks = nblocks;
  bm->fill = fill;
  /* Enough interior levels that FAN^(levels+1) covers every block
   * (block indexes stay below 2^55: 8 EiB of 512-byte blocks).
   */
  while (bm->levels < 9 && ((uint64_t) 1 << (FAN_BITS * (bm->levels + 1))) < nblocks)
    bm->levels++;
  return bm;
}

static void
free_subtree (void *p, unsigned level)
{
  if (!p || p == FILLED)
    return;
  if (level > 0) {
    struct node *n = p;
    for (unsigned i = 0; i < FAN; ++i)
      free_subtree (atomic_load_explicit (&n->child[i], memory_order_relaxed),
                    level - 1);
  }
  free (p);
}

void
blockmap_free (struct blockmap *bm)
{
  if (!bm)
    return;
  free_subtree (atomic_load (&bm->root), bm->levels);
  free (bm);
}

static inline unsigned
index_at (uint64_t b, unsigned level)
{
  return (unsigned) (b >> (FAN_BITS * level)) & (FAN - 1);
}

/* Blocks covered by one child of a node at this level. */
static inline uint64_t
span_of (unsigned level)
{
  return (uint64_t) 1 << (FAN_BITS * level);
}

static inline void *
load_ptr (_Atomic (void *) *p)
{
  return atomic_load_explicit (p, memory_order_acquire);
}

uint64_t
blockmap_get (const struct blockmap *bm, uint64_t b)
{
  void *p = load_ptr ((_Atomic (void *) *) &bm->root);
  for (unsigned level = bm->levels; level > 0; --level) {
    if (!p || p == FILLED)
      break;
    p = load_ptr (&((struct node *) p)->child[index_at (b, level)]);
  }
  if (!p)
    return 0;
  if (p == FILLED)
    return bm->fill;
  struct leaf *l = p;
  return atomic_load_explicit (&l->entry[index_at (b, 0)], memory_order_acquire);
}

/* A fresh node or leaf standing for what *slot held (empty or filled). */
static void *
make (struct blockmap *bm, bool leaf, bool filled)
{
  size_t size = leaf ? sizeof (struct leaf) : sizeof (struct node);
  void *p = calloc (1, size);
  if (!p || !filled)
    return p;
  if (leaf) {
    struct leaf *l = p;
    for (unsigned i = 0; i < FAN; ++i)
      atomic_init (&l->entry[i], bm->fill);
  }
  else {
    struct node *n = p;
    for (unsigned i = 0; i < FAN; ++i)
      atomic_init (&n->child[i], FILLED);
  }
  return p;
}

/* Return the node in *slot, creating it (empty, or expanded from FILLED)
 * when needed.  NULL when out of memory.
 */
static void *
get_or_make (struct blockmap *bm, _Atomic (void *) *slot, bool leaf)
{
  for (;;) {
    void *cur = load_ptr (slot);
    if (cur && cur != FILLED)
      return cur;
    void *fresh = make (bm, leaf, cur == FILLED);
    if (!fresh)
      return NULL;
    if (atomic_compare_exchange_strong_explicit (slot, &cur, fresh,
                                                 memory_order_acq_rel,
                                                 memory_order_acquire)) {
      atomic_fetch_add_explicit (&bm->bytes,
                                 leaf ? sizeof (struct leaf) : sizeof (struct node),
                                 memory_order_relaxed);
      return fresh;
    }
    free (fresh);             /* another thread changed the slot: retry */
  }
}

_Atomic uint64_t *
blockmap_cell (struct blockmap *bm, uint64_t b)
{
  _Atomic (void *) *slot = &bm->root;
  for (unsigned level = bm->levels; level > 0; --level) {
    struct node *n = get_or_make (bm, slot, false);
    if (!n)
      return NULL;
    slot = &n->child[index_at (b, level)];
  }
  struct leaf *l = get_or_make (bm, slot, true);
  if (!l)
    return NULL;
  return &l->entry[index_at (b, 0)];
}

static uint64_t
next_other_in (const struct blockmap *bm, void *p, unsigned level, uint64_t base,
               uint64_t from, uint64_t end, uint64_t value)
{
  /* A uniform subtree either matches value (skip it) or differs at once. */
  if (!p || p == FILLED) {
    uint64_t uniform = p ? bm->fill : 0;
    if (uniform != value)
      return from;
    uint64_t stop = base + span_of (level) * FAN;
    return stop < end ? stop : end;
  }
  if (level == 0) {
    struct leaf *l = p;
    for (uint64_t b = from; b < end && b < base + FAN; ++b)
      if (atomic_load_explicit (&l->entry[b - base], memory_order_acquire) != value)
        return b;
    return base + FAN < end ? base + FAN : end;
  }
  struct node *n = p;
  uint64_t span = span_of (level);
  for (unsigned i = index_at (from, level); i < FAN; ++i) {
    uint64_t child_base = base + i * span;
    if (child_base >= end)
      return end;
    uint64_t start = from > child_base ? from : child_base;
    uint64_t child_end = child_base + span < end ? child_base + span : end;
    uint64_t r = next_other_in (bm, load_ptr (&n->child[i]), level - 1,
                                child_base, start, child_end, value);
    if (r < child_end)
      return r;
  }
  uint64_t stop = base + span * FAN;
  return stop < end ? stop : end;
}

uint64_t
blockmap_next_other (const struct blockmap *bm, uint64_t from, uint64_t end,
                     uint64_t value)
{
  if (end > bm->nblocks)
    end = bm->nblocks;
  if (from >= end)
    return end;
  return next_other_in (bm, load_ptr ((_Atomic (void *) *) &bm->root),
                        bm->levels, 0, from, end, value);
}

struct fill_job {
  struct blockmap *bm;
  blockmap_old_fn fn;
  void *opaque;
  uint64_t changed;
  bool oom;
};

static void
fill_leaf (struct fill_job *j, struct leaf *l, uint64_t base, uint64_t from, uint64_t end)
{
  uint64_t fill = j->bm->fill;
  for (uint64_t b = from; b < end; ++b) {
    _Atomic uint64_t *e = &l->entry[b - base];
    if (atomic_load_explicit (e, memory_order_acquire) == fill)
      continue;
    uint64_t old = atomic_exchange_explicit (e, fill, memory_order_acq_rel);
    if (old == fill)
      continue;
    if (b < j->bm->nblocks)     /* the tail past the export is not counted */
      j->changed++;
    if (old != 0 && j->fn)
      j->fn (j->opaque, b, old);
  }
}

/* Fill [from, end) inside the subtree at *slot covering [base, base+span*FAN). */
static void
fill_in (struct fill_job *j, _Atomic (void *) *slot, unsigned level, uint64_t base,
         uint64_t from, uint64_t end)
{
  uint64_t cover = span_of (level) * FAN;
  bool whole = from == base && end == base + cover;
  for (;;) {
    void *cur = load_ptr (slot);
    if (cur == FILLED)
      return;
    if (!cur && whole) {
      /* An untouched subtree becomes FILLED without allocating it. */
      if (atomic_compare_exchange_strong_explicit (slot, &cur, FILLED,
                                                   memory_order_acq_rel,
                                                   memory_order_acquire)) {
        uint64_t stop = end < j->bm->nblocks ? end : j->bm->nblocks;
        if (stop > base)
          j->changed += stop - base;
        return;
      }
      continue;
    }
    break;
  }
  void *p = get_or_make (j->bm, slot, level == 0);
  if (!p) {
    j->oom = true;
    return;
  }
  if (level == 0) {
    fill_leaf (j, p, base, from, end);
    return;
  }
  struct node *n = p;
  uint64_t span = span_of (level);
  for (unsigned i = index_at (from, level); i < FAN && !j->oom; ++i) {
    uint64_t child_base = base + i * span;
    if (child_base >= end)
      break;
    uint64_t start = from > child_base ? from : child_base;
    uint64_t child_end = child_base + span < end ? child_base + span : end;
    fill_in (j, &n->child[i], level - 1, child_base, start, child_end);
  }
}

uint64_t
blockmap_fill (struct blockmap *bm, uint64_t from, uint64_t end,
               blockmap_old_fn fn, void *opaque)
{
  struct fill_job j = { .bm = bm, .fn = fn, .opaque = opaque };
  if (end > bm->nblocks)
    end = bm->nblocks;
  if (from >= end)
    return 0;
  /* The tree's full range may exceed nblocks; blocks past nblocks are
   * never read, so treat the tail as covered when the request reaches it.
   */
  uint64_t top = span_of (bm->levels) * FAN;
  fill_in (&j, &bm->root, bm->levels, 0, from, end == bm->nblocks ? top : end);
  return j.oom ? UINT64_MAX : j.changed;
}

static void *
clone_subtree (void *p, unsigned level, uint64_t *bytes, bool *oom)
{
  if (!p || p == FILLED || *oom)
    return p == FILLED ? FILLED : NULL;
  size_t size = level > 0 ? sizeof (struct node) : sizeof (struct leaf);
  void *c = malloc (size);
  if (!c) {
    *oom = true;
    return NULL;
  }
  *bytes += size;
  if (level == 0) {
    struct leaf *from = p, *to = c;
    for (unsigned i = 0; i < FAN; ++i)
      atomic_init (&to->entry[i], atomic_load_explicit (&from->entry[i], memory_order_acquire));
    return c;
  }
  struct node *from = p, *to = c;
  for (unsigned i = 0; i < FAN; ++i)
    atomic_init (&to->child[i], clone_subtree (load_ptr (&from->child[i]), level - 1, bytes, oom));
  return c;
}

struct blockmap *
blockmap_clone (const struct blockmap *bm)
{
  struct blockmap *c = blockmap_new (bm->nblocks, bm->fill);
  if (!c)
    return NULL;
  bool oom = false;
  uint64_t bytes = 0;
  atomic_store (&c->root, clone_subtree (load_ptr ((_Atomic (void *) *) &bm->root),
                                         bm->levels, &bytes, &oom));
  atomic_store (&c->bytes, bytes);
  if (oom) {
    blockmap_free (c);
    return NULL;
  }
  return c;
}

uint64_t
blockmap_bytes (const struct blockmap *bm)
{
  return atomic_load_explicit ((_Atomic uint64_t *) &bm->bytes, memory_order_relaxed)
    + sizeof *bm;
}
