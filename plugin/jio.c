/* luacow: file operations on a descriptor, see jio.h. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fullio.h"
#include "jio.h"

/* At most 256 KiB per call: 1 MiB pwrites into fresh file space cost
 * about 3x the kernel CPU of the same bytes in 256 KiB calls (Linux 6.18
 * ext4, 4 writers; tests/bench/profile.sh write-1m).
 */
#define WRITE_MAX ((size_t) 256 * 1024)

struct fd_handle { int fd; };

static int fd_of (void *h) { return ((struct fd_handle *) h)->fd; }

static int
fd_pwrite (void *h, const void *buf, size_t n, uint64_t off)
{
  const char *p = buf;
  while (n > 0) {
    size_t k = n > WRITE_MAX ? WRITE_MAX : n;
    if (full_pwrite (fd_of (h), p, k, off) == -1)
      return -1;
    p += k; n -= k; off += k;
  }
  return 0;
}

static int
fd_pread (void *h, void *buf, size_t n, uint64_t off)
{
  return full_pread (fd_of (h), buf, n, off);
}

static int fd_sync (void *h) { return fdatasync (fd_of (h)); }
/* The whole file: the kernel walks only its dirty pages. */
static int fd_writeback (void *h) { return sync_file_range (fd_of (h), 0, 0, SYNC_FILE_RANGE_WRITE); }
static int fd_truncate (void *h, uint64_t size) { return ftruncate (fd_of (h), (off_t) size); }

static int
fd_punch (void *h, uint64_t off, uint64_t len)
{
  return fallocate (fd_of (h), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    (off_t) off, (off_t) len);
}

static int
fd_size (void *h, uint64_t *size)
{
  struct stat st;
  if (fstat (fd_of (h), &st) == -1)
    return -1;
  *size = (uint64_t) st.st_size;
  return 0;
}

static void
fd_close (void *h)
{
  close (fd_of (h));
  free (h);
}

int
jio_from_fd (struct jio *io, int fd)
{
  struct fd_handle *h = malloc (sizeof *h);
  if (!h)
    return -1;
  h->fd = fd;
  io->pwrite = fd_pwrite;
  io->pread = fd_pread;
  io->sync = fd_sync;
  io->truncate = fd_truncate;
  io->punch = fd_punch;
  io->size = fd_size;
  io->close = fd_close;
  io->writeback = fd_writeback;
  io->h = h;
  return 0;
}
