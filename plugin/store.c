/* luacow: overlay store, see store.h. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "clock.h"
#include "store.h"

#define GROW_MIN ((uint64_t) 64 << 20)   /* bytes added at least per growth */

struct store {
  struct jio io;
  uint32_t slot_size;
  uint64_t data_offset;
  uint64_t max_bytes;         /* RLIMIT_FSIZE, or the largest off_t */
  _Atomic uint64_t file_size;
  pthread_mutex_t grow_lock;
  struct write_behind {        /* see store.h */
    bool running, stop, kicked;
    uint64_t kick;
    _Atomic uint64_t written;  /* bytes, for spotting each kick's worth */
    _Atomic uint64_t armed_until;   /* monotonic microseconds */
    _Atomic uint64_t kicks;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
  } wb;
};

int
store_tmpfile (const char *dir)
{
  int fd = -1;
  /* O_TMPFILE never gives the file a name at all; the mkstemp fallback
   * (filesystems without O_TMPFILE) unlinks it at once.
   */
#ifdef O_TMPFILE
  fd = open (dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
#endif
  if (fd == -1) {
    char *template;
    if (asprintf (&template, "%s/luacow-store.XXXXXX", dir) == -1)
      return -1;
    fd = mkostemp (template, O_CLOEXEC);
    if (fd >= 0)
      unlink (template);
    free (template);
  }
  return fd;
}

struct store *
store_new (const struct jio *io, uint32_t slot_size, uint64_t data_offset)
{
  struct store *st = calloc (1, sizeof *st);
  if (!st)
    return NULL;
  st->io = *io;
  st->slot_size = slot_size;
  st->data_offset = data_offset;
  st->max_bytes = INT64_MAX;
  struct rlimit rl;
  if (getrlimit (RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
      rl.rlim_cur < st->max_bytes)
    st->max_bytes = rl.rlim_cur;   /* beyond it a write would raise SIGXFSZ */
  uint64_t size = 0;
  if (io->size (io->h, &size) == 0)
    st->file_size = size;
  pthread_mutex_init (&st->grow_lock, NULL);
  return st;
}

static void
wb_stop (struct store *st)
{
  struct write_behind *wb = &st->wb;
  if (!wb->running)
    return;
  pthread_mutex_lock (&wb->lock);
  wb->stop = true;
  pthread_cond_signal (&wb->cond);
  pthread_mutex_unlock (&wb->lock);
  pthread_join (wb->thread, NULL);
  pthread_mutex_destroy (&wb->lock);
  pthread_cond_destroy (&wb->cond);
  wb->running = false;
}

void
store_free (struct store *st)
{
  if (!st)
    return;
  wb_stop (st);
  st->io.close (st->io.h);
  pthread_mutex_destroy (&st->grow_lock);
  free (st);
}

uint32_t store_slot_size (const struct store *st) { return st->slot_size; }
const struct jio *store_io (const struct store *st) { return &st->io; }

uint64_t
store_max_slots (const struct store *st)
{
  return st->max_bytes <= st->data_offset ? 0
    : (st->max_bytes - st->data_offset) / st->slot_size;
}

int
store_reserve (struct store *st, uint64_t end)
{
  if (end > store_max_slots (st)) {
    errno = EFBIG;
    return -1;
  }
  uint64_t need = st->data_offset + end * st->slot_size;
  if (need <= atomic_load_explicit (&st->file_size, memory_order_acquire))
    return 0;
  int r = 0;
  pthread_mutex_lock (&st->grow_lock);
  uint64_t size = atomic_load (&st->file_size);
  if (need > size) {
    /* Grow ahead by a quarter (at least 64 MiB), within the limit. */
    uint64_t want = size + (size / 4 > GROW_MIN ? size / 4 : GROW_MIN);
    if (want < need)
      want = need;
    if (want > st->max_bytes)
      want = st->max_bytes;
    if (st->io.truncate (st->io.h, want) == 0 ||
        (want > need && st->io.truncate (st->io.h, (want = need)) == 0))
      atomic_store_explicit (&st->file_size, want, memory_order_release);
    else
      r = -1;
  }
  pthread_mutex_unlock (&st->grow_lock);
  return r;
}

/* ---------------------------------------------------------- write-behind */

static uint64_t now_us (void) { return (uint64_t) (monotonic_seconds () * 1e6); }

static void *
wb_main (void *arg)
{
  struct write_behind *wb = &((struct store *) arg)->wb;
  struct store *st = arg;
  pthread_mutex_lock (&wb->lock);
  for (;;) {
    while (!wb->kicked && !wb->stop)
      pthread_cond_wait (&wb->cond, &wb->lock);
    if (wb->stop)
      break;
    wb->kicked = false;
    pthread_mutex_unlock (&wb->lock);
    (void) st->io.writeback (st->io.h);   /* a hint: errors show at the sync */
    atomic_fetch_add (&wb->kicks, 1);
    pthread_mutex_lock (&wb->lock);
  }
  pthread_mutex_unlock (&wb->lock);
  return NULL;
}

/* count bytes were written: wake the thread at each kick's worth while
 * armed.  The clock is read only then, not on every write.
 */
static void
wb_note (struct store *st, uint64_t count)
{
  struct write_behind *wb = &st->wb;
  uint64_t before = atomic_fetch_add_explicit (&wb->written, count, memory_order_relaxed);
  if (before / wb->kick == (before + count) / wb->kick ||
      atomic_load_explicit (&wb->armed_until, memory_order_relaxed) < now_us ())
    return;
  pthread_mutex_lock (&wb->lock);
  wb->kicked = true;
  pthread_cond_signal (&wb->cond);
  pthread_mutex_unlock (&wb->lock);
}

int
store_write_behind_start (struct store *st, uint64_t kick_bytes)
{
  struct write_behind *wb = &st->wb;
  if (wb->running || !st->io.writeback || kick_bytes == 0)
    return 0;
  wb->kick = kick_bytes;
  pthread_mutex_init (&wb->lock, NULL);
  pthread_cond_init (&wb->cond, NULL);
  int e = pthread_create (&wb->thread, NULL, wb_main, st);
  if (e) {
    pthread_mutex_destroy (&wb->lock);
    pthread_cond_destroy (&wb->cond);
    errno = e;
    return -1;
  }
  wb->running = true;
  return 0;
}

void
store_write_behind_arm (struct store *st, double seconds)
{
  if (st->wb.running)
    atomic_store_explicit (&st->wb.armed_until, now_us () + (uint64_t) (seconds * 1e6),
                           memory_order_relaxed);
}

uint64_t store_write_behind_kicks (const struct store *st)
{
  return atomic_load (&((struct store *) st)->wb.kicks);
}

int
store_read (struct store *st, void *buf, uint64_t count, uint64_t offset, int *err)
{
  if (st->io.pread (st->io.h, buf, count, st->data_offset + offset) == -1) {
    *err = errno;
    nbdkit_error ("luacow: overlay store read: %m");
    return -1;
  }
  return 0;
}

int
store_write (struct store *st, const void *buf, uint64_t count, uint64_t offset, int *err)
{
  if (st->io.pwrite (st->io.h, buf, count, st->data_offset + offset) == -1) {
    *err = errno;
    nbdkit_error ("luacow: overlay store write: %m");
    return -1;
  }
  if (st->wb.running)
    wb_note (st, count);
  return 0;
}

void
store_punch (struct store *st, uint64_t slot, uint64_t n)
{
  /* Best effort: if punching is unsupported the space is simply kept. */
  (void) st->io.punch (st->io.h, st->data_offset + slot * st->slot_size, n * st->slot_size);
}

int
store_sync (struct store *st)
{
  return st->io.sync (st->io.h);
}
