/* luacow: naming a new file safely, see savefile.h. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "savefile.h"

/* EEXIST on a name nobody can predict is someone planting names at random
 * or a broken random source: a few tries, then give up.
 */
#define NAME_TRIES 16
#define TEMP_BASE_MAX 200     /* of the target's name, in a temporary's name */
#define TEMP_TAG ".luacow-"
#define TEMP_END ".tmp"

static void
random_bytes (unsigned char *buf, size_t n)
{
  size_t got = 0;
  while (got < n) {
    ssize_t r = getrandom (buf + got, n - got, 0);
    if (r > 0)
      got += (size_t) r;
    else if (r == -1 && errno != EINTR)
      break;
  }
  if (got == n)
    return;
  /* No getrandom (old kernel, seccomp): still unique per call, and the
   * names are created exclusively, so a guess can only make a try fail.
   */
  static unsigned counter;
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  uint64_t x = (uint64_t) ts.tv_nsec ^ ((uint64_t) ts.tv_sec << 30) ^
    ((uint64_t) getpid () << 20) ^ __atomic_add_fetch (&counter, 1, __ATOMIC_RELAXED);
  for (size_t i = got; i < n; ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    buf[i] = (unsigned char) (x >> 56);
  }
}

/* SAVEFILE_RANDOM_LEN random hex digits at p. */
static void
fill_random (char *p)
{
  unsigned char r[SAVEFILE_RANDOM_LEN / 2];
  random_bytes (r, sizeof r);
  for (size_t i = 0; i < sizeof r; ++i) {
    p[2 * i] = "0123456789abcdef"[r[i] >> 4];
    p[2 * i + 1] = "0123456789abcdef"[r[i] & 15];
  }
}

/* The last SAVEFILE_RANDOM in s, or NULL. */
static char *
random_run (char *s)
{
  char *run = NULL;
  for (char *p = strstr (s, SAVEFILE_RANDOM); p; p = strstr (p + 1, SAVEFILE_RANDOM))
    run = p;
  return run;
}

/* ".BASE.luacow-" with BASE cut to TEMP_BASE_MAX bytes (malloc'd). */
static char *
temp_prefix (const char *base)
{
  char *p;
  if (asprintf (&p, ".%.*s" TEMP_TAG, TEMP_BASE_MAX, base) == -1)
    return NULL;
  return p;
}

bool
savefile_is_temp_of (const char *name, const char *base)
{
  char *prefix = temp_prefix (base);
  if (!prefix)
    return false;
  size_t n = strlen (prefix);
  bool match = strncmp (name, prefix, n) == 0;
  free (prefix);
  if (!match)
    return false;
  name += n;
  for (size_t i = 0; i < SAVEFILE_RANDOM_LEN; ++i)
    if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')))
      return false;
  return strcmp (name + SAVEFILE_RANDOM_LEN, TEMP_END) == 0;
}

/* An OFD lock on the whole file: it marks a temporary as in use for as
 * long as this open file lives, whatever process looks.
 */
static int
ofd_lock (int fd, short type)
{
  struct flock l = { .l_type = type, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
  return fcntl (fd, F_OFD_SETLK, &l);
}

static bool
same_file (const struct stat *a, const struct stat *b)
{
  return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/* Remove name if it is a temporary of ours that no save holds. */
static void
remove_if_stale (int dirfd, const char *dir, const char *name)
{
  struct stat st, now;
  if (fstatat (dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == -1 || !S_ISREG (st.st_mode) ||
      st.st_uid != geteuid () || st.st_nlink != 1)
    return;
  int fd = openat (dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  if (fd == -1)
    return;
  /* A read lock conflicts with the saver's write lock: granted, nobody
   * is saving through this file.  The name is checked again under it.
   */
  if (fstat (fd, &now) == 0 && same_file (&st, &now) && ofd_lock (fd, F_RDLCK) == 0 &&
      fstatat (dirfd, name, &now, AT_SYMLINK_NOFOLLOW) == 0 && same_file (&st, &now) &&
      unlinkat (dirfd, name, 0) == 0)
    nbdkit_debug ("luacow: removed %s/%s, left by an interrupted save", dir, name);
  close (fd);
}

static void
clean_stale (struct savefile *f)
{
  int fd = openat (f->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR *d = fd >= 0 ? fdopendir (fd) : NULL;
  if (!d) {
    if (fd >= 0)
      close (fd);
    return;
  }
  const struct dirent *e;
  while ((e = readdir (d)) != NULL)
    if (savefile_is_temp_of (e->d_name, f->base))
      remove_if_stale (f->dirfd, f->dir, e->d_name);
  closedir (d);
}

/* A new name for the temporary in f->tmp. */
static int
new_temp_name (struct savefile *f)
{
  char *prefix = temp_prefix (f->base);
  free (f->tmp);
  f->tmp = NULL;
  if (!prefix || asprintf (&f->tmp, "%s" SAVEFILE_RANDOM TEMP_END, prefix) == -1) {
    f->tmp = NULL;
    free (prefix);
    errno = ENOMEM;
    return -1;
  }
  fill_random (f->tmp + strlen (prefix));
  free (prefix);
  return 0;
}

/* Where O_TMPFILE is unsupported: a fresh name, created exclusively, not
 * through a symlink, and locked before anyone may take it for stale.
 */
static int
create_named (struct savefile *f)
{
  for (int i = 0; i < NAME_TRIES; ++i) {
    if (new_temp_name (f) == -1)
      return -1;
    f->fd = openat (f->dirfd, f->tmp, O_CREAT | O_EXCL | O_NOFOLLOW | O_RDWR | O_CLOEXEC, 0600);
    if (f->fd == -1) {
      if (errno == EEXIST)
        continue;
      return -1;
    }
    /* A cleanup may have taken it for stale between create and lock: it
     * holds a read lock (the lock fails) or removed it (the name is gone
     * or another file's).  Where OFD locks are unsupported, nobody's
     * cleanup can lock either, so going on without one is safe.
     */
    struct stat mine, there;
    bool contested = ofd_lock (f->fd, F_WRLCK) == -1 && (errno == EAGAIN || errno == EACCES);
    bool still = fstat (f->fd, &mine) == 0 &&
      fstatat (f->dirfd, f->tmp, &there, AT_SYMLINK_NOFOLLOW) == 0 && same_file (&mine, &there);
    if (!contested && still) {
      f->named = true;
      return 0;
    }
    close (f->fd);            /* the cleanup removes it */
    f->fd = -1;
  }
  errno = EEXIST;
  return -1;
}

/* A replaced file lends its permission bits only when it is a regular
 * file of ours; never the setuid, setgid or sticky bits.
 */
static mode_t
choose_mode (const struct savefile *f)
{
  struct stat old;
  if (!f->unique && fstatat (f->dirfd, f->base, &old, AT_SYMLINK_NOFOLLOW) == 0 &&
      S_ISREG (old.st_mode) && old.st_uid == geteuid ())
    return old.st_mode & 0777;
  return 0600;
}

static int
split_path (struct savefile *f, const char *path, char *err, size_t errlen)
{
  const char *slash = strrchr (path, '/');
  if (!slash || slash[1] == '\0') {
    snprintf (err, errlen, "not a file path");
    return -1;
  }
  f->base = strdup (slash + 1);
  f->dir = slash == path ? strdup ("/") : strndup (path, (size_t) (slash - path));
  if (!f->base || !f->dir) {
    snprintf (err, errlen, "out of memory");
    return -1;
  }
  if (f->unique) {
    const char *run = random_run (f->base);
    if (!run) {
      snprintf (err, errlen, "no room for a random part in %s", f->base);
      return -1;
    }
    f->random_at = (size_t) (run - f->base);
  }
  return 0;
}

int
savefile_open (struct savefile *f, const char *path, bool unique, char *err, size_t errlen)
{
  *f = (struct savefile) { .dirfd = -1, .fd = -1, .unique = unique };
  if (split_path (f, path, err, errlen) == -1)
    goto fail;
  f->dirfd = open (f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (f->dirfd == -1) {
    snprintf (err, errlen, "cannot open directory %s: %s", f->dir, strerror (errno));
    goto fail;
  }
  if (!unique)
    clean_stale (f);
  /* An anonymous file vanishes by itself if we are killed mid-save. */
  f->fd = openat (f->dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (f->fd >= 0)
    (void) ofd_lock (f->fd, F_WRLCK);
  else if (create_named (f) == -1) {
    snprintf (err, errlen, "cannot create a file in %s: %s", f->dir, strerror (errno));
    goto fail;
  }
  f->mode = choose_mode (f);
  if (fchmod (f->fd, f->mode) == -1) {   /* whatever the umask did */
    snprintf (err, errlen, "cannot set the mode of the new file in %s: %s", f->dir, strerror (errno));
    goto fail;
  }
  return 0;
 fail:
  savefile_close (f);
  return -1;
}

/* Give the anonymous file the name name in dirfd. */
static int
link_anonymous (int fd, int dirfd, const char *name)
{
  char proc[64];
  snprintf (proc, sizeof proc, "/proc/self/fd/%d", fd);
  if (linkat (AT_FDCWD, proc, dirfd, name, AT_SYMLINK_FOLLOW) == 0)
    return 0;
  if (errno == EEXIST)
    return -1;
  return linkat (fd, "", dirfd, name, AT_EMPTY_PATH);
}

/* unique: a fresh final name, linked without replacing anything. */
static int
publish_unique (struct savefile *f)
{
  for (int i = 0; i < NAME_TRIES; ++i) {
    fill_random (f->base + f->random_at);
    int r = f->named ? linkat (f->dirfd, f->tmp, f->dirfd, f->base, 0)
      : link_anonymous (f->fd, f->dirfd, f->base);
    if (r == 0) {
      if (f->named && unlinkat (f->dirfd, f->tmp, 0) == 0)
        f->named = false;
      return 0;
    }
    if (errno != EEXIST)
      return -1;
  }
  errno = EEXIST;
  return -1;
}

/* Replacing: straight to the final name if there is none yet, else via a
 * temporary name and rename (atomic over the old file).
 */
static int
publish_replace (struct savefile *f)
{
  if (!f->named) {
    if (link_anonymous (f->fd, f->dirfd, f->base) == 0)
      return 0;
    if (errno != EEXIST)
      return -1;
    int i;
    for (i = 0; i < NAME_TRIES; ++i) {
      if (new_temp_name (f) == -1)
        return -1;
      if (link_anonymous (f->fd, f->dirfd, f->tmp) == 0)
        break;
      if (errno != EEXIST)
        return -1;
    }
    if (i == NAME_TRIES) {
      errno = EEXIST;
      return -1;
    }
    f->named = true;
  }
  if (renameat (f->dirfd, f->tmp, f->dirfd, f->base) == -1)
    return -1;
  f->named = false;
  return 0;
}

int
savefile_commit (struct savefile *f, char *err, size_t errlen)
{
  if (fsync (f->fd) == -1) {
    snprintf (err, errlen, "fsync: %s", strerror (errno));
    return -1;
  }
  if ((f->unique ? publish_unique (f) : publish_replace (f)) == -1) {
    snprintf (err, errlen, "cannot give the new file its name %s in %s: %s", f->base, f->dir,
              strerror (errno));
    return -1;
  }
  /* Named: no longer a temporary to protect, and a whole-file lock
   * would make qemu's image locking refuse the file until we close it.
   */
  (void) ofd_lock (f->fd, F_UNLCK);
  if (fsync (f->dirfd) == -1) {
    snprintf (err, errlen, "fsync of %s: %s", f->dir, strerror (errno));
    return -1;                /* named already: the new file is in place */
  }
  return 0;
}

char *
savefile_path (const struct savefile *f)
{
  char *p;
  if (asprintf (&p, "%s/%s", strcmp (f->dir, "/") == 0 ? "" : f->dir, f->base) == -1)
    return NULL;
  return p;
}

void
savefile_close (struct savefile *f)
{
  if (f->named && f->tmp && f->dirfd >= 0)
    unlinkat (f->dirfd, f->tmp, 0);
  if (f->fd >= 0)
    close (f->fd);            /* drops the OFD lock */
  if (f->dirfd >= 0)
    close (f->dirfd);
  free (f->dir);
  free (f->base);
  free (f->tmp);
  *f = (struct savefile) { .dirfd = -1, .fd = -1 };
}
