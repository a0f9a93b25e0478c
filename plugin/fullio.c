/* luacow: whole-buffer pread/pwrite, see fullio.h. */
#include <errno.h>
#include <stdint.h>
#include <unistd.h>

#include "fullio.h"

/* off + n must fit in off_t, or pread would get a negative offset. */
static int range_ok (size_t n, uint64_t off)
{
  if (off > INT64_MAX || n > INT64_MAX - off) {
    errno = EINVAL;
    return 0;
  }
  return 1;
}

int full_pread (int fd, void *buf, size_t n, uint64_t off)
{
  char *p = buf;
  if (!range_ok (n, off)) return -1;
  while (n > 0) {
    ssize_t r = pread (fd, p, n, (off_t) off);
    if (r == -1 && errno == EINTR) continue;
    if (r <= 0) {
      if (r == 0) errno = EIO;      /* end of file before n bytes */
      return -1;
    }
    p += r;
    n -= (size_t) r;
    off += (uint64_t) r;
  }
  return 0;
}

int full_pwrite (int fd, const void *buf, size_t n, uint64_t off)
{
  const char *p = buf;
  if (!range_ok (n, off)) return -1;
  while (n > 0) {
    ssize_t r = pwrite (fd, p, n, (off_t) off);
    if (r == -1 && errno == EINTR) continue;
    if (r <= 0) {
      if (r == 0) errno = EIO;      /* no progress: never spin */
      return -1;
    }
    p += r;
    n -= (size_t) r;
    off += (uint64_t) r;
  }
  return 0;
}
