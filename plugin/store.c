/* luacow: overlay store, see store.h. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "store.h"

/* The file is kept sparse and larger than what is written, so writes
 * into new slots never extend it: an extending write makes the
 * filesystem journal a size change on every request.
 */
#define INITIAL_SIZE ((uint64_t) 64 << 30)
#define STORE_WRITE_MAX ((uint64_t) 256 * 1024)   /* bytes per pwrite, see store_write */

struct store {
  int fd;
  uint32_t slot_size;
  _Atomic uint64_t next_slot;
  _Atomic uint64_t file_size;
  pthread_mutex_t grow_lock;
};

struct store *
store_new (const char *dir, uint32_t slot_size)
{
  struct store *st = calloc (1, sizeof *st);
  if (!st) {
    nbdkit_error ("luacow: cannot allocate the overlay store: %m");
    return NULL;
  }
  st->slot_size = slot_size;
  st->fd = -1;

  /* O_TMPFILE never gives the file a name at all; the mkstemp fallback
   * (filesystems without O_TMPFILE) unlinks it at once.  Either way the
   * file is 0600 and disappears with the process.
   */
#ifdef O_TMPFILE
  st->fd = open (dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
#endif
  if (st->fd == -1) {
    char *template;
    if (asprintf (&template, "%s/luacow-store.XXXXXX", dir) == -1) {
      free (st);
      nbdkit_error ("luacow: cannot allocate the overlay store name: %m");
      return NULL;
    }
    st->fd = mkostemp (template, O_CLOEXEC);
    if (st->fd >= 0)
      unlink (template);
    free (template);
  }
  if (st->fd == -1) {
    nbdkit_error ("luacow: cannot create the overlay store in %s: %m "
                  "(set TMPDIR to a writable directory)", dir);
    free (st);
    return NULL;
  }
  pthread_mutex_init (&st->grow_lock, NULL);
  if (ftruncate (st->fd, (off_t) INITIAL_SIZE) == 0)
    st->file_size = INITIAL_SIZE;
  return st;
}

/* Keep the sparse size ahead of the slots handed out (doubling). */
static void
grow (struct store *st, uint64_t end)
{
  pthread_mutex_lock (&st->grow_lock);
  uint64_t size = atomic_load (&st->file_size);
  if (end > size) {
    uint64_t want = size * 2 > end ? size * 2 : end;
    if (ftruncate (st->fd, (off_t) want) == 0)
      atomic_store (&st->file_size, want);
    else if (ftruncate (st->fd, (off_t) end) == 0)   /* near the filesystem's limit */
      atomic_store (&st->file_size, end);
  }
  pthread_mutex_unlock (&st->grow_lock);
}

void
store_free (struct store *st)
{
  if (!st)
    return;
  close (st->fd);
  pthread_mutex_destroy (&st->grow_lock);
  free (st);
}

uint64_t
store_alloc (struct store *st, uint64_t n)
{
  uint64_t slot = atomic_fetch_add_explicit (&st->next_slot, n, memory_order_relaxed);
  uint64_t end = (slot + n) * st->slot_size;
  if (end > atomic_load_explicit (&st->file_size, memory_order_relaxed))
    grow (st, end);
  return slot;
}

int
store_read (struct store *st, void *buf, uint64_t count, uint64_t offset, int *err)
{
  char *p = buf;
  off_t off = (off_t) offset;
  while (count > 0) {
    ssize_t r = pread (st->fd, p, count, off);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      *err = errno;
      nbdkit_error ("luacow: overlay store read: %m");
      return -1;
    }
    if (r == 0) {             /* slot allocated but never written: zeroes */
      memset (p, 0, count);
      break;
    }
    p += r; off += r; count -= r;
  }
  return 0;
}

int
store_write (struct store *st, const void *buf, uint64_t count, uint64_t offset, int *err)
{
  const char *p = buf;
  off_t off = (off_t) offset;
  while (count > 0) {
    /* At most 256 KiB per call: 1 MiB pwrites into fresh store space
     * cost about 3x the kernel CPU of the same bytes in 256 KiB calls
     * (Linux 6.18 ext4, 4 writers; tests/bench/profile.sh write-1m).
     */
    ssize_t r = pwrite (st->fd, p, count > STORE_WRITE_MAX ? STORE_WRITE_MAX : count, off);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      *err = errno;
      nbdkit_error ("luacow: overlay store write: %m");
      return -1;
    }
    p += r; off += r; count -= r;
  }
  return 0;
}

void
store_release (struct store *st, uint64_t slot, uint64_t n)
{
  /* Best effort: if punching is unsupported the space is simply kept. */
  (void) fallocate (st->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    (off_t) (slot * st->slot_size), (off_t) (n * st->slot_size));
}
