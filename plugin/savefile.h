/* luacow: giving a new file its name in a directory others can write to.
 *
 * The file is written under no name (O_TMPFILE) or under a temporary name
 * nobody can predict, with an OFD lock held on it for as long as the save
 * runs, and named only when complete.  Nothing another user created is
 * followed, reused or adopted: names are created exclusively and never
 * through a symlink, and a replaced file lends its permission bits (0777
 * at most) only when it is a regular file of our own.  Temporaries our
 * own killed saves left behind (ours, the exact pattern, unlocked) are
 * removed when the next save to the same target starts.
 */
#ifndef LUACOW_SAVEFILE_H
#define LUACOW_SAVEFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* The random part of temporary and unique names: 16 hex digits. */
#define SAVEFILE_RANDOM "XXXXXXXXXXXXXXXX"
#define SAVEFILE_RANDOM_LEN 16

struct savefile {
  int dirfd, fd;
  char *dir;                  /* for messages */
  char *base;                 /* the final name (unique: rewritten) */
  char *tmp;                  /* the temporary name, when it has one */
  bool unique;                /* never replace; base holds SAVEFILE_RANDOM */
  size_t random_at;           /* unique: where in base */
  bool named;                 /* tmp exists and is ours to remove */
  mode_t mode;
};

/* Opens a new, empty, locked file for path.  With unique, the last
 * SAVEFILE_RANDOM in path's file name is replaced by random hex digits
 * (getrandom) at commit, retried while the name exists.  Returns 0, or -1 with a
 * one-line reason in err; f is then closed.
 */
int savefile_open (struct savefile *f, const char *path, bool unique,
                   char *err, size_t errlen);

/* fsync the file, give it its name, fsync the directory.  Returns 0, or
 * -1 with a reason (the target untouched unless the directory fsync
 * failed, which the reason then says).
 */
int savefile_commit (struct savefile *f, char *err, size_t errlen);

/* The path the file now has (after a successful commit; malloc'd). */
char *savefile_path (const struct savefile *f);

/* Removes an uncommitted file, closes everything. */
void savefile_close (struct savefile *f);

/* Whether name is a temporary of ours for the target base. */
bool savefile_is_temp_of (const char *name, const char *base);

#endif
