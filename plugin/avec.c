/* luacow: lock-free append-only vector, see avec.h. */
#include <stdlib.h>

#include "avec.h"

void
avec_init (struct avec *v, size_t esize)
{
  v->esize = esize;
  atomic_init (&v->n, 0);
  for (size_t i = 0; i < AVEC_CHUNKS; ++i)
    atomic_init (&v->chunk[i], NULL);
}

void
avec_destroy (struct avec *v)
{
  for (size_t i = 0; i < AVEC_CHUNKS; ++i)
    free (atomic_load (&v->chunk[i]));
}

void *
avec_push (struct avec *v)
{
  uint64_t i = atomic_fetch_add_explicit (&v->n, 1, memory_order_relaxed);
  uint64_t c = i / AVEC_CHUNK;
  if (c >= AVEC_CHUNKS)
    return NULL;
  char *chunk = atomic_load_explicit (&v->chunk[c], memory_order_acquire);
  if (!chunk) {
    char *fresh = calloc (AVEC_CHUNK, v->esize);
    if (!fresh)
      return NULL;
    if (atomic_compare_exchange_strong_explicit (&v->chunk[c], &chunk, fresh,
                                                 memory_order_acq_rel, memory_order_acquire))
      chunk = fresh;
    else
      free (fresh);           /* another pusher installed it first */
  }
  return chunk + (i % AVEC_CHUNK) * v->esize;
}

uint64_t
avec_len (const struct avec *v)
{
  uint64_t n = atomic_load_explicit (&((struct avec *) v)->n, memory_order_acquire);
  return n < (uint64_t) AVEC_CHUNK * AVEC_CHUNKS ? n : (uint64_t) AVEC_CHUNK * AVEC_CHUNKS;
}

void *
avec_at (const struct avec *v, uint64_t i)
{
  char *chunk = atomic_load_explicit (&((struct avec *) v)->chunk[i / AVEC_CHUNK],
                                      memory_order_acquire);
  return chunk ? chunk + (i % AVEC_CHUNK) * v->esize : NULL;
}

void
avec_clear (struct avec *v)
{
  atomic_store_explicit (&v->n, 0, memory_order_release);
}
