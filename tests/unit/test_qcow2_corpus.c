/* Hostile input corpus: every file in tests/corpus/bad/ must be rejected
 * (by qcow2_open, qcow2_for_each_cluster or qcow2_read_compressed) with a
 * non-empty one-line reason; every file in tests/corpus/good/ must decode
 * completely.  Run it under valgrind or ASan/UBSan too.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qcow2.h"
#include "tap.h"

struct walk {
  struct qcow2_image *img;
  int fd;
  uint8_t *buf;
  uint32_t cs;
  uint64_t clusters;
  bool read_failed;
  struct qcow2_err err;
};

/* Read every cluster the way the filter would. */
static int visit (void *opaque, uint64_t g, const struct qcow2_cluster *c)
{
  struct walk *x = opaque;
  (void) g;
  x->clusters++;
  if (c->kind == QCOW2_COMPRESSED) {
    if (qcow2_read_compressed (x->img, c, x->buf, &x->err) < 0) {
      x->read_failed = true;
      return 1;
    }
  }
  else if (c->kind == QCOW2_DATA) {
    if (pread (x->fd, x->buf, x->cs, (off_t) c->host_offset) != (ssize_t) x->cs) {
      snprintf (x->err.msg, sizeof x->err.msg, "test: short read of a data "
                "cluster the decoder accepted");
      x->read_failed = true;
      return 1;
    }
  }
  return 0;
}

/* 0: decoded; -1: rejected, reason in err. */
static int decode_file (const char *path, struct qcow2_err *err,
                        uint64_t *clusters)
{
  struct walk x = { .fd = open (path, O_RDONLY) };
  int r = -1;

  err->msg[0] = '\0';
  *clusters = 0;
  if (x.fd < 0) {
    snprintf (err->msg, sizeof err->msg, "test: cannot open");
    return -1;
  }
  x.img = qcow2_open (x.fd, err);
  if (x.img) {
    x.cs = qcow2_cluster_size (x.img);
    x.buf = malloc (x.cs);
    r = qcow2_for_each_cluster (x.img, visit, &x, err);
    if (x.read_failed) {
      *err = x.err;
      r = -1;
    }
    else if (r != 0) r = -1;
    free (x.buf);
    qcow2_close (x.img);
  }
  close (x.fd);
  *clusters = x.clusters;
  return r;
}

static int cmp_names (const void *a, const void *b)
{
  return strcmp (*(char *const *) a, *(char *const *) b);
}

/* Sorted list of the files in dir. */
static size_t list_dir (const char *dir, char ***names)
{
  DIR *d = opendir (dir);
  struct dirent *e;
  size_t n = 0, cap = 0;
  *names = NULL;
  if (!d) return 0;
  while ((e = readdir (d))) {
    if (e->d_name[0] == '.') continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 64;
      *names = realloc (*names, cap * sizeof **names);
    }
    (*names)[n++] = strdup (e->d_name);
  }
  closedir (d);
  if (n) qsort (*names, n, sizeof **names, cmp_names);
  return n;
}

static size_t run_dir (const char *top, const char *sub, bool want_ok)
{
  char dir[1024];
  char **names;
  size_t n;

  snprintf (dir, sizeof dir, "%s/tests/corpus/%s", top, sub);
  n = list_dir (dir, &names);
  for (size_t i = 0; i < n; i++) {
    char path[2048];
    struct qcow2_err err;
    uint64_t clusters;
    int r;
    snprintf (path, sizeof path, "%s/%s", dir, names[i]);
    r = decode_file (path, &err, &clusters);
    if (want_ok)
      CHECK (r == 0, "good/%s decodes (%llu clusters)%s%s", names[i],
             (unsigned long long) clusters, r ? ": " : "", r ? err.msg : "");
    else
      CHECK (r < 0 && err.msg[0] && !strchr (err.msg, '\n') &&
             strncmp (err.msg, "test:", 5) != 0,
             "bad/%s rejected: %s", names[i], err.msg);
    free (names[i]);
  }
  free (names);
  return n;
}

int main (void)
{
  const char *top = getenv ("LUACOW_TOP");
  size_t ngood, nbad;
  if (!top) top = ".";
  ngood = run_dir (top, "good", true);
  nbad = run_dir (top, "bad", false);
  CHECK (ngood >= 10 && nbad >= 60, "corpus has %zu good and %zu bad files",
         ngood, nbad);
  return TAP_DONE ();
}
