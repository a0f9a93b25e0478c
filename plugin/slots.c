/* luacow: store slot ownership and reuse, see slots.h. */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "avec.h"
#include "slots.h"

#define RING (1u << 16)           /* free slots ready for writers */
#define PUNCH_BIT ((uint64_t) 1 << 63)

struct slots {
  struct store *st;
  _Atomic uint64_t next;          /* first slot never handed out */
  /* Ring of free slots: the reclaimer (one thread) fills positions
   * [tail, ...); writers take [head, head+n) with a compare-and-swap.
   * Both only grow, so there is no ABA.
   */
  uint64_t ring[RING];
  _Atomic uint64_t head, tail;
  /* Free slots that did not fit in the ring, a min-heap (the reclaimer's
   * alone): adding k slots and moving k to the ring costs O(k log n),
   * never a pass over all the free slots, so that a commit after a big
   * trim still costs what it retired.
   */
  uint64_t *spare;
  size_t nspare, spare_cap;
  uint64_t work;                  /* heap steps taken, for the tests */
  struct avec limbo[2];           /* retired slot + 1 (0: a failed push) */
};

struct slots *
slots_new (struct store *st)
{
  struct slots *s = calloc (1, sizeof *s);
  if (!s)
    return NULL;
  s->st = st;
  avec_init (&s->limbo[0], sizeof (uint64_t));
  avec_init (&s->limbo[1], sizeof (uint64_t));
  return s;
}

void
slots_free (struct slots *s)
{
  if (!s)
    return;
  avec_destroy (&s->limbo[0]);
  avec_destroy (&s->limbo[1]);
  free (s->spare);
  free (s);
}


uint64_t slots_end (const struct slots *s) { return atomic_load (&((struct slots *) s)->next); }

uint64_t
slots_free_count (const struct slots *s)
{
  struct slots *m = (struct slots *) s;
  return atomic_load (&m->tail) - atomic_load (&m->head) + s->nspare;
}

static bool
take_from_ring (struct slots *s, uint64_t n, uint64_t *out)
{
  uint64_t h = atomic_load_explicit (&s->head, memory_order_relaxed);
  for (;;) {
    uint64_t t = atomic_load_explicit (&s->tail, memory_order_acquire);
    if (t - h < n)
      return false;
    for (uint64_t i = 0; i < n; ++i)
      out[i] = s->ring[(h + i) % RING];
    if (atomic_compare_exchange_weak_explicit (&s->head, &h, h + n,
                                               memory_order_acq_rel, memory_order_relaxed))
      return true;
  }
}

int
slots_take_run (struct slots *s, uint64_t n, uint64_t *first)
{
  /* Grow the file first: a slot past the file size limit is never handed
   * out (writing it would raise SIGXFSZ).
   */
  uint64_t f = atomic_load_explicit (&s->next, memory_order_relaxed);
  do {
    if (store_reserve (s->st, f + n) == -1)
      return -1;
  } while (!atomic_compare_exchange_weak_explicit (&s->next, &f, f + n,
                                                   memory_order_relaxed, memory_order_relaxed));
  *first = f;
  return 0;
}

int
slots_take (struct slots *s, uint64_t n, uint64_t *out)
{
  if (n == 0 || n > SLOTS_MAX_TAKE) {
    errno = EINVAL;
    return -1;
  }
  if (take_from_ring (s, n, out))
    return 0;
  uint64_t f;
  if (slots_take_run (s, n, &f) == -1)
    return -1;
  for (uint64_t i = 0; i < n; ++i)
    out[i] = f + i;
  return 0;
}

void
slots_retire (struct slots *s, unsigned p, uint64_t slot, bool punch)
{
  uint64_t *e = avec_push (&s->limbo[p & 1]);
  if (e)
    *e = (slot + 1) | (punch ? PUNCH_BIT : 0);
  /* else: out of memory, the slot is never reused (leaked until exit) */
}

uint64_t
slots_retired (const struct slots *s, unsigned p)
{
  return avec_len (&s->limbo[p & 1]);
}

static int
cmp_u64 (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return x < y ? -1 : x > y;
}

static void
heap_swap (uint64_t *v, size_t a, size_t b)
{
  uint64_t t = v[a];
  v[a] = v[b];
  v[b] = t;
}

static int
spare_add (struct slots *s, uint64_t slot)
{
  if (s->nspare == s->spare_cap) {
    size_t cap = s->spare_cap ? s->spare_cap * 2 : 4096;
    uint64_t *p = realloc (s->spare, cap * sizeof *p);
    if (!p)
      return -1;
    s->spare = p;
    s->spare_cap = cap;
  }
  uint64_t *v = s->spare;
  size_t i = s->nspare++;
  v[i] = slot;
  for (; i > 0 && v[(i - 1) / 2] > v[i]; i = (i - 1) / 2, s->work++)
    heap_swap (v, i, (i - 1) / 2);
  return 0;
}

/* The smallest spare slot, taken out of the heap. */
static uint64_t
spare_pop (struct slots *s)
{
  uint64_t *v = s->spare, top = v[0];
  size_t n = --s->nspare, i = 0;
  v[0] = v[n];
  for (;;) {
    size_t l = 2 * i + 1, m = i;
    if (l < n && v[l] < v[m])
      m = l;
    if (l + 1 < n && v[l + 1] < v[m])
      m = l + 1;
    if (m == i)
      return top;
    heap_swap (v, i, m);
    i = m;
    s->work++;
  }
}

/* Move the smallest spare slots into the ring, ascending, so that runs
 * of freed blocks come out as runs of consecutive slots again.
 */
static void
refill_ring (struct slots *s)
{
  uint64_t t = atomic_load_explicit (&s->tail, memory_order_relaxed);
  uint64_t h = atomic_load_explicit (&s->head, memory_order_acquire);
  size_t room = RING - (size_t) (t - h), n = s->nspare < room ? s->nspare : room;
  for (size_t i = 0; i < n; ++i)
    s->ring[(t + i) % RING] = spare_pop (s);
  atomic_store_explicit (&s->tail, t + n, memory_order_release);
}

uint64_t slots_work (const struct slots *s) { return s->work; }

/* Punch runs of consecutive slots with one call each. */
static void
punch_sorted (struct slots *s, uint64_t *v, size_t n)
{
  qsort (v, n, sizeof *v, cmp_u64);
  for (size_t i = 0; i < n;) {
    size_t k = 1;
    while (i + k < n && v[i + k] == v[i] + k)
      k++;
    store_punch (s->st, v[i], k);
    i += k;
  }
}

void
slots_reclaim (struct slots *s, unsigned p)
{
  struct avec *l = &s->limbo[p & 1];
  uint64_t n = avec_len (l), npunch = 0;
  uint64_t *punch = NULL;
  for (uint64_t i = 0; i < n; ++i) {
    uint64_t *e = avec_at (l, i);
    if (!e || *e == 0)
      continue;
    uint64_t slot = (*e & ~PUNCH_BIT) - 1;
    if (*e & PUNCH_BIT) {
      uint64_t *more = npunch % 4096 == 0
        ? realloc (punch, (npunch + 4096) * sizeof *punch) : punch;
      if (more) {
        punch = more;
        punch[npunch++] = slot;
      }
    }
    if (spare_add (s, slot) == -1)
      break;                  /* out of memory: the rest stay unused */
  }
  avec_clear (l);
  if (npunch)
    punch_sorted (s, punch, npunch);
  free (punch);
  refill_ring (s);
}

void
slots_release_now (struct slots *s, uint64_t slot, uint64_t n)
{
  for (uint64_t i = 0; i < n; ++i)
    if (spare_add (s, slot + i) == -1)
      break;
  refill_ring (s);
}

#define MAX_REBUILD_FREE ((size_t) 1 << 24)

int
slots_rebuild (struct slots *s, const uint64_t *used, size_t n)
{
  uint64_t next = 0;
  size_t added = 0;
  for (size_t i = 0; i < n; ++i) {
    for (uint64_t f = next; f < used[i] && added < MAX_REBUILD_FREE; ++f, ++added)
      if (spare_add (s, f) == -1)
        return -1;
    if (used[i] + 1 > next)
      next = used[i] + 1;
  }
  atomic_store (&s->next, next);
  refill_ring (s);
  return 0;
}
