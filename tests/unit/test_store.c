/* store.c's write-behind: the thread asks the file to write back only
 * while a flush armed it, about once per kick's worth of bytes written,
 * never for a file without writeback, and stops with the store; the
 * data written reads back the same (write-behind moves no bytes).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "jio.h"
#include "store.h"
#include "tap.h"

#define KICK 8192u
#define BS 4096u

/* The real file's operations, with writeback counted. */
static struct jio real;
static atomic_int calls;

static int
counting_writeback (void *h)
{
  atomic_fetch_add (&calls, 1);
  return real.writeback (h);
}

static void
pause_ms (long ms)
{
  struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
  nanosleep (&ts, NULL);
}

/* Until the store has kicked at least n times in all, at most 5 s. */
static uint64_t
wait_kicks (const struct store *st, uint64_t n)
{
  for (int i = 0; i < 500 && store_write_behind_kicks (st) < n; ++i)
    pause_ms (10);
  return store_write_behind_kicks (st);
}

static int
write_blocks (struct store *st, unsigned first, unsigned n, unsigned char fill)
{
  unsigned char buf[BS];
  memset (buf, fill, sizeof buf);
  int err;
  for (unsigned i = 0; i < n; ++i)
    if (store_reserve (st, first + i + 1) == -1 ||
        store_write (st, buf, BS, (uint64_t) (first + i) * BS, &err) == -1)
      return -1;
  return 0;
}

/* Writers at once, as nbdkit's request threads are: each its own blocks. */
#define WRITERS 4
#define PER_WRITER 64u
#define FIRST_CONCURRENT 100u

struct writer { struct store *st; unsigned id; int r; };

static void *
writer_main (void *arg)
{
  struct writer *w = arg;
  w->r = write_blocks (w->st, FIRST_CONCURRENT + w->id * PER_WRITER, PER_WRITER,
                       (unsigned char) (0x10 + w->id));
  return NULL;
}

static int
concurrent_writes (struct store *st)
{
  pthread_t t[WRITERS];
  struct writer w[WRITERS];
  for (unsigned i = 0; i < WRITERS; ++i) {
    w[i] = (struct writer) { st, i, -1 };
    if (pthread_create (&t[i], NULL, writer_main, &w[i]) != 0)
      return -1;
  }
  int r = 0;
  for (unsigned i = 0; i < WRITERS; ++i) {
    pthread_join (t[i], NULL);
    r |= w[i].r;
  }
  return r;
}

int
main (void)
{
  char dir[] = "/tmp/luacow-store.XXXXXX";
  if (!mkdtemp (dir))
    return 1;
  int fd = store_tmpfile (dir);
  if (fd == -1 || jio_from_fd (&real, fd) == -1)
    return 1;
  CHECK (real.writeback != NULL && real.writeback (real.h) == 0,
         "a real file supports writeback, and it succeeds");
  struct jio io = real;
  io.writeback = counting_writeback;
  struct store *st = store_new (&io, BS, 0);
  if (!st)
    return 1;
  CHECK (store_write_behind_start (st, KICK) == 0, "the write-behind thread starts");

  CHECK (write_blocks (st, 0, 16, 1) == 0, "64 KiB written, not armed");
  pause_ms (100);
  CHECK (atomic_load (&calls) == 0 && store_write_behind_kicks (st) == 0,
         "no flush armed it: nothing is written back early (%d calls)", atomic_load (&calls));

  store_write_behind_arm (st, 30.0);
  CHECK (write_blocks (st, 16, 2, 2) == 0, "one kick's worth written, armed");
  uint64_t k = wait_kicks (st, 1);
  CHECK (k >= 1 && atomic_load (&calls) == (int) k,
         "armed: the thread asked for writeback (%llu kicks, %d calls)",
         (unsigned long long) k, atomic_load (&calls));
  CHECK (write_blocks (st, 18, 32, 3) == 0, "16 kicks' worth more written, one block at a time");
  k = wait_kicks (st, 2);
  pause_ms (100);
  k = store_write_behind_kicks (st);
  CHECK (k >= 2 && k <= 17, "kicks come at most once per kick's worth (%llu for 17)",
         (unsigned long long) k);

  store_write_behind_arm (st, 0.0);   /* expired at once */
  pause_ms (5);
  CHECK (write_blocks (st, 50, 16, 4) == 0, "64 KiB more after the arming expired");
  pause_ms (100);
  CHECK (store_write_behind_kicks (st) == k, "expired: no more kicks (%llu, was %llu)",
         (unsigned long long) store_write_behind_kicks (st), (unsigned long long) k);

  /* 4 writers at once while armed: kicks come, and every block is right. */
  store_write_behind_arm (st, 30.0);
  uint64_t before = store_write_behind_kicks (st);
  CHECK (concurrent_writes (st) == 0, "%d writers wrote %u blocks each at once", WRITERS, PER_WRITER);
  uint64_t after = wait_kicks (st, before + 1);
  CHECK (after > before && after - before <= WRITERS * PER_WRITER * BS / KICK,
         "concurrent writers: kicks came, at most one per kick's worth (%llu)",
         (unsigned long long) (after - before));

  unsigned char got[BS], want[BS];
  int err, same = 1;
  for (unsigned b = 0; b < 66; ++b) {
    memset (want, b < 16 ? 1 : b < 18 ? 2 : b < 50 ? 3 : 4, BS);
    if (store_read (st, got, BS, (uint64_t) b * BS, &err) == -1 || memcmp (got, want, BS))
      same = 0;
  }
  for (unsigned b = FIRST_CONCURRENT; b < FIRST_CONCURRENT + WRITERS * PER_WRITER; ++b) {
    memset (want, 0x10 + (b - FIRST_CONCURRENT) / PER_WRITER, BS);
    if (store_read (st, got, BS, (uint64_t) b * BS, &err) == -1 || memcmp (got, want, BS))
      same = 0;
  }
  CHECK (same, "every block reads back what was written");
  store_free (st);             /* joins the thread; ASan/valgrind see the rest */

  /* A file without writeback: no thread, arming is harmless. */
  int fd2 = store_tmpfile (dir);
  struct jio plain;
  if (fd2 == -1 || jio_from_fd (&plain, fd2) == -1)
    return 1;
  plain.writeback = NULL;
  struct store *st2 = store_new (&plain, BS, 0);
  if (!st2)
    return 1;
  CHECK (store_write_behind_start (st2, KICK) == 0, "no writeback: start succeeds, as a no-op");
  store_write_behind_arm (st2, 30.0);
  CHECK (write_blocks (st2, 0, 16, 5) == 0 && store_write_behind_kicks (st2) == 0,
         "no writeback: writes work and nothing kicks");
  store_free (st2);
  rmdir (dir);
  return TAP_DONE ();
}
