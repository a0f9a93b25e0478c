/* plugin/savefile.c: names, modes, unique names, stale temporaries. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "savefile.h"
#include "tap.h"

static char dir[64];
static char err[256];

static int
entries (void)
{
  DIR *d = opendir (dir);
  int n = 0;
  const struct dirent *e;
  while (d && (e = readdir (d)) != NULL)
    n += strcmp (e->d_name, ".") != 0 && strcmp (e->d_name, "..") != 0;
  if (d)
    closedir (d);
  return n;
}

static char *
in_dir (const char *name)
{
  static char p[512];
  snprintf (p, sizeof p, "%s/%s", dir, name);
  return p;
}

static void
touch (const char *name, mode_t mode)
{
  int fd = open (in_dir (name), O_CREAT | O_WRONLY | O_TRUNC, 0600);
  if (fd >= 0) {
    fchmod (fd, mode);
    close (fd);
  }
}

static mode_t
mode_of (const char *name)
{
  struct stat st;
  return stat (in_dir (name), &st) == 0 ? st.st_mode & 07777 : (mode_t) -1;
}

/* Save "data" to name (unique: a template); returns the path or NULL. */
static char *
save (const char *name, bool unique)
{
  struct savefile f;
  char *path = NULL;
  if (savefile_open (&f, in_dir (name), unique, err, sizeof err) == -1)
    return NULL;
  if (write (f.fd, "data", 4) == 4 && savefile_commit (&f, err, sizeof err) == 0)
    path = savefile_path (&f);
  savefile_close (&f);
  return path;
}

static void
test_names (void)
{
  CHECK (savefile_is_temp_of (".t.qcow2.luacow-0123456789abcdef.tmp", "t.qcow2"), "our pattern");
  CHECK (!savefile_is_temp_of (".t.qcow2.luacow-0123456789abcde.tmp", "t.qcow2"), "15 digits");
  CHECK (!savefile_is_temp_of (".t.qcow2.luacow-0123456789abcdef0.tmp", "t.qcow2"), "17 digits");
  CHECK (!savefile_is_temp_of (".t.qcow2.luacow-0123456789ABCDEF.tmp", "t.qcow2"), "upper case");
  CHECK (!savefile_is_temp_of (".t.qcow2.luacow-0123456789abcdef.tmp~", "t.qcow2"), "a suffix");
  CHECK (!savefile_is_temp_of (".u.qcow2.luacow-0123456789abcdef.tmp", "t.qcow2"), "another target");
  CHECK (!savefile_is_temp_of (".t.qcow2.luacow-1234-5678.tmp", "t.qcow2"), "the old pattern");
  char base[251], name[300];
  memset (base, 'b', 250);
  base[250] = '\0';
  snprintf (name, sizeof name, ".%.200s.luacow-0123456789abcdef.tmp", base);
  CHECK (savefile_is_temp_of (name, base), "a long target's name is cut to 200 bytes");
}

static void
test_modes (void)
{
  char *p = save ("new.qcow2", false);
  CHECK (p && mode_of ("new.qcow2") == 0600, "a new file is 0600 (%s)", err);
  free (p);
  touch ("kept.qcow2", 0640);
  p = save ("kept.qcow2", false);
  CHECK (p && mode_of ("kept.qcow2") == 0640, "our own 0640 file: kept");
  free (p);
  touch ("suid.qcow2", 06755);
  p = save ("suid.qcow2", false);
  CHECK (p && mode_of ("suid.qcow2") == 0755, "our own 06755 file: 0755, no s-bits");
  free (p);
  CHECK (symlink ("kept.qcow2", in_dir ("link.qcow2")) == 0, "a symlink");
  p = save ("link.qcow2", false);
  struct stat st;
  CHECK (p && lstat (in_dir ("link.qcow2"), &st) == 0 && S_ISREG (st.st_mode) &&
         (st.st_mode & 07777) == 0600 && mode_of ("kept.qcow2") == 0640,
         "a symlink at the target is replaced, 0600, what it pointed to untouched");
  free (p);
}

static void
test_unique (void)
{
  int before = entries ();
  char *a = save ("r-" SAVEFILE_RANDOM ".qcow2", true);
  char *b = save ("r-" SAVEFILE_RANDOM ".qcow2", true);
  CHECK (a && b && strcmp (a, b) != 0 && !strstr (a, "XXXX") && !strstr (b, "XXXX"),
         "two unique saves: two fresh names (%s, %s)", a ? a : err, b ? b : "-");
  CHECK (entries () == before + 2, "exactly two new files");
  CHECK (a && access (a, F_OK) == 0 && mode_of (strrchr (a, '/') + 1) == 0600, "0600");
  free (a);
  free (b);
  CHECK (save ("no-room.qcow2", true) == NULL && strstr (err, "no room"), "a template without the run: error");
}

static void
test_stale (void)
{
  const char *stale = ".s.qcow2.luacow-0123456789abcdef.tmp";
  const char *live = ".s.qcow2.luacow-fedcba9876543210.tmp";
  touch (stale, 0600);
  touch (live, 0600);
  int fd = open (in_dir (live), O_RDWR);
  struct flock l = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
  CHECK (fd >= 0 && fcntl (fd, F_OFD_SETLK, &l) == 0, "a live save's lock");
  int before = entries ();
  struct savefile f;
  CHECK (savefile_open (&f, in_dir ("s.qcow2"), false, err, sizeof err) == 0, "open s.qcow2");
  CHECK (access (in_dir (stale), F_OK) == -1 && errno == ENOENT, "the stale temporary is gone");
  CHECK (access (in_dir (live), F_OK) == 0, "the locked one stays");
  savefile_close (&f);
  CHECK (entries () == before - 1, "an uncommitted save leaves nothing");
  close (fd);
}

int
main (void)
{
  snprintf (dir, sizeof dir, "%s/luacow-savefile.XXXXXX", getenv ("TMPDIR") ? getenv ("TMPDIR") : "/tmp");
  if (!mkdtemp (dir)) {
    perror ("mkdtemp");
    return 1;
  }
  umask (022);
  test_names ();
  test_modes ();
  test_unique ();
  test_stale ();
  char cmd[128];
  snprintf (cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system (cmd) != 0)
    perror ("rm");
  return TAP_DONE ();
}
