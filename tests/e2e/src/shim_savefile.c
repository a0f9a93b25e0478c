/* LD_PRELOAD shim for tests/e2e/save_hostile.sh: makes the rare paths of
 * plugin/savefile.c happen on demand.
 *   LUACOW_SHIM_NO_TMPFILE=1   openat with O_TMPFILE fails (EOPNOTSUPP),
 *                              as on file systems without it;
 *   LUACOW_SHIM_ZERO_RANDOM=N  the first N getrandom calls return zero
 *                              bytes: names collide with planted ones.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/types.h>

typedef int (*openat_fn) (int, const char *, int, ...);
typedef ssize_t (*getrandom_fn) (void *, size_t, unsigned);

static int
shim_openat (const char *name, int dirfd, const char *path, int flags, mode_t mode)
{
  if ((flags & O_TMPFILE) == O_TMPFILE && getenv ("LUACOW_SHIM_NO_TMPFILE")) {
    errno = EOPNOTSUPP;
    return -1;
  }
  openat_fn real = (openat_fn) dlsym (RTLD_NEXT, name);
  return real (dirfd, path, flags, mode);
}

#define MODE_ARG(flags, mode)                                           \
  mode_t mode = 0;                                                      \
  if ((flags) & (O_CREAT | O_TMPFILE)) {                                \
    va_list ap; va_start (ap, flags); mode = va_arg (ap, mode_t); va_end (ap); \
  }

int openat (int dirfd, const char *path, int flags, ...);
int openat64 (int dirfd, const char *path, int flags, ...);

int
openat (int dirfd, const char *path, int flags, ...)
{
  MODE_ARG (flags, mode);
  return shim_openat ("openat", dirfd, path, flags, mode);
}

int
openat64 (int dirfd, const char *path, int flags, ...)
{
  MODE_ARG (flags, mode);
  return shim_openat ("openat64", dirfd, path, flags, mode);
}

ssize_t
getrandom (void *buf, size_t n, unsigned flags)
{
  static int calls;
  const char *zero = getenv ("LUACOW_SHIM_ZERO_RANDOM");
  if (zero && __atomic_fetch_add (&calls, 1, __ATOMIC_RELAXED) < atoi (zero)) {
    memset (buf, 0, n);
    return (ssize_t) n;
  }
  getrandom_fn real = (getrandom_fn) dlsym (RTLD_NEXT, "getrandom");
  return real (buf, n, flags);
}
