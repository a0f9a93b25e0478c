/* full_pread / full_pwrite against a fake pread/pwrite (this file defines
 * them, so fullio.o calls these) that moves at most a few bytes per call,
 * fails with EINTR on a schedule, or returns 0; and once against the real
 * calls on a file.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fullio.h"
#include "tap.h"

static struct {
  int on;                 /* 0: behave as the real call */
  size_t max;             /* bytes per call at most */
  int eintr_every;        /* every Nth call fails with EINTR (0: never) */
  long zero_after;        /* calls after which every call returns 0 (-1: never) */
  long calls;
} fake;

static ssize_t fake_io (int write, int fd, void *buf, size_t n, off_t off)
{
  if (fake.on) {
    fake.calls++;
    if (fake.eintr_every && fake.calls % fake.eintr_every == 0) {
      errno = EINTR;
      return -1;
    }
    if (fake.zero_after >= 0 && fake.calls > fake.zero_after) return 0;
    if (n > fake.max) n = fake.max;
  }
  return syscall (write ? SYS_pwrite64 : SYS_pread64, fd, buf, n, off);
}

ssize_t pread (int fd, void *buf, size_t n, off_t off);
ssize_t pread (int fd, void *buf, size_t n, off_t off)
{
  return fake_io (0, fd, buf, n, off);
}

ssize_t pwrite (int fd, const void *buf, size_t n, off_t off);
ssize_t pwrite (int fd, const void *buf, size_t n, off_t off)
{
  return fake_io (1, fd, (void *) (uintptr_t) buf, n, off);
}

static void set_fake (size_t max, int eintr_every, long zero_after)
{
  fake.on = 1;
  fake.max = max;
  fake.eintr_every = eintr_every;
  fake.zero_after = zero_after;
  fake.calls = 0;
}

int main (void)
{
  char path[] = "/tmp/luacow-fullio.XXXXXX";
  static char data[10000], back[10000];
  int fd = mkstemp (path), r, e;

  if (fd < 0) {
    printf ("not ok 1 - mkstemp\n1..1\n");
    return 1;
  }
  unlink (path);
  for (size_t i = 0; i < sizeof data; i++) data[i] = (char) (i * 7 + i / 251);

  set_fake (7, 3, -1);
  r = full_pwrite (fd, data, sizeof data, 100);
  CHECK (r == 0 && fake.calls > 1400,
         "pwrite: 7 bytes a call, EINTR every 3rd: all written (%ld calls)",
         fake.calls);
  set_fake (13, 2, -1);
  r = full_pread (fd, back, sizeof back, 100);
  CHECK (r == 0 && memcmp (data, back, sizeof data) == 0,
         "pread: 13 bytes a call, EINTR every 2nd: all read back (%ld calls)",
         fake.calls);

  set_fake (64, 0, 5);
  errno = 0;
  r = full_pread (fd, back, sizeof back, 0);
  e = errno;
  CHECK (r == -1 && e == EIO && fake.calls == 6,
         "pread returning 0: -1/EIO after %ld calls, no spinning", fake.calls);
  set_fake (64, 0, 3);
  errno = 0;
  r = full_pwrite (fd, data, sizeof data, 0);
  e = errno;
  CHECK (r == -1 && e == EIO && fake.calls == 4,
         "pwrite returning 0: -1/EIO after %ld calls, no spinning", fake.calls);

  fake.on = 0;
  errno = 0;
  r = full_pread (fd, back, 200, sizeof data);
  e = errno;
  CHECK (r == -1 && e == EIO, "real pread past the end of the file: EIO");
  r = full_pread (fd, back, 0, 1u << 30);
  CHECK (r == 0, "a 0-byte transfer succeeds without a call");
  errno = 0;
  r = full_pread (fd, back, 10, UINT64_MAX - 5);
  e = errno;
  CHECK (r == -1 && e == EINVAL, "offset + length past off_t: EINVAL");
  errno = 0;
  r = full_pread (-1, back, 10, 0);
  e = errno;
  CHECK (r == -1 && e == EBADF, "errors of the call pass through (EBADF)");
  close (fd);
  return TAP_DONE ();
}
