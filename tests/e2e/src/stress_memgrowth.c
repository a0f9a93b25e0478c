/* Memory-growth client for tests/e2e/memory_growth.sh (libnbd, async).
 *
 *   stress_memgrowth -s SOCK -p NBDKIT_PID -d STORE_DIR [-z REGION] [-n WRITES]
 *                    [-c CONNS] [-q DEPTH] [-e EVERY] [-Z]
 *
 * Writes the region [0, REGION) again and again in 4 KiB writes, CONNS
 * connections with DEPTH writes in flight each (connection i writes the
 * blocks i, i + CONNS, ... of every pass, so no two writes of a pass
 * overlap).  With -Z, one connection zeroes the whole region (one
 * NBD_CMD_WRITE_ZEROES) before every pass after the first, while the
 * others wait.  Passes continue until at least WRITES writes were made
 * (whole passes only).  After pass 1, after every EVERY passes and after
 * the last one, with every write acknowledged, prints one line
 *
 *   pass P writes W rss_kib R store_blocks_kib B store_size_kib S seconds T
 *
 * R is nbdkit's VmRSS; B and S are st_blocks * 512 and st_size of the
 * overlay store: the open, deleted file of nbdkit's that lives in
 * STORE_DIR (O_TMPFILE: "STORE_DIR/#NNN (deleted)"; otherwise
 * "STORE_DIR/luacow-store.XXXXXX (deleted)").  Exit status 0 when every
 * write succeeded and the store was found.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libnbd.h>

#define BS 4096
#define MAX_CONNS 32

static const char *sock_path, *store_dir;
static long nbdkit_pid;
static uint64_t region = 64 << 20, want = 1000000;
static unsigned nconn = 4, depth = 32, every = 10;
static bool zero_first;         /* -Z: zero the region before every pass but the first */

struct conn {
  struct nbd_handle *h;
  unsigned id;
  uint64_t issued, done, errors;
  uint64_t passes;
  int rc;
};

static pthread_barrier_t barrier;
static double t0;

static double
now (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static long
rss_kib (void)
{
  char path[64], line[256];
  long kib = -1;
  snprintf (path, sizeof path, "/proc/%ld/status", nbdkit_pid);
  FILE *f = fopen (path, "r");
  if (!f) return -1;
  while (fgets (line, sizeof line, f))
    if (sscanf (line, "VmRSS: %ld kB", &kib) == 1)
      break;
  fclose (f);
  return kib;
}

/* The store: nbdkit's open fd whose target is a deleted file in store_dir. */
static int
store_stat (struct stat *st)
{
  char dpath[64], lpath[PATH_MAX], target[PATH_MAX];
  size_t dl = strlen (store_dir);
  int found = 0;
  snprintf (dpath, sizeof dpath, "/proc/%ld/fd", nbdkit_pid);
  DIR *d = opendir (dpath);
  if (!d) return -1;
  struct dirent *e;
  while ((e = readdir (d))) {
    if (e->d_name[0] == '.') continue;
    snprintf (lpath, sizeof lpath, "%s/%s", dpath, e->d_name);
    ssize_t n = readlink (lpath, target, sizeof target - 1);
    if (n <= 0) continue;
    target[n] = '\0';
    if (strncmp (target, store_dir, dl) != 0 || target[dl] != '/' ||
        !strstr (target, "(deleted)"))
      continue;
    if (stat (lpath, st) == 0 && S_ISREG (st->st_mode)) {
      found++;
      break;
    }
  }
  closedir (d);
  return found ? 0 : -1;
}

static int
done_cb (void *user_data, int *error)
{
  struct conn *c = user_data;
  if (*error) {
    if (c->errors++ == 0)
      fprintf (stderr, "# conn %u: write failed: %s\n", c->id, strerror (*error));
  }
  c->done++;
  return 1;                   /* retire the command */
}

/* One pass: this connection's blocks of the region, DEPTH in flight. */
static int
one_pass (struct conn *c, const char *buf)
{
  uint64_t nblocks = region / BS;
  uint64_t next = c->id, target = c->done;
  for (uint64_t b = c->id; b < nblocks; b += nconn)
    target++;
  while (c->done < target) {
    while (next < nblocks && c->issued - c->done < depth) {
      if (nbd_aio_pwrite (c->h, buf, BS, next * BS,
                          (nbd_completion_callback) { .callback = done_cb, .user_data = c },
                          0) == -1) {
        fprintf (stderr, "# conn %u: aio_pwrite: %s\n", c->id, nbd_get_error ());
        return -1;
      }
      c->issued++;
      next += nconn;
    }
    if (nbd_poll (c->h, -1) == -1) {
      fprintf (stderr, "# conn %u: poll: %s\n", c->id, nbd_get_error ());
      return -1;
    }
  }
  return c->errors ? -1 : 0;
}

static uint64_t total_passes;
static struct conn conns[MAX_CONNS];
static bool failed, store_missing;

static void
report (uint64_t pass)
{
  struct stat st;
  uint64_t writes = 0;
  for (unsigned i = 0; i < nconn; ++i) writes += conns[i].done;
  long rss = rss_kib ();
  if (store_stat (&st) == -1) {
    store_missing = true;
    memset (&st, 0, sizeof st);
  }
  printf ("pass %" PRIu64 " writes %" PRIu64 " rss_kib %ld store_blocks_kib %lld"
          " store_size_kib %lld seconds %.2f\n", pass, writes, rss,
          (long long) st.st_blocks / 2, (long long) st.st_size / 1024, now () - t0);
}

static void *
worker (void *arg)
{
  struct conn *c = arg;
  char *buf = malloc (BS);
  if (!buf) { failed = true; return NULL; }
  for (uint64_t pass = 1; pass <= total_passes; ++pass) {
    if (zero_first && pass > 1 && c->id == 0 && !failed &&
        nbd_zero (c->h, region, 0, 0) == -1) {
      fprintf (stderr, "# zero: %s\n", nbd_get_error ());
      failed = true;
    }
    if (zero_first)
      pthread_barrier_wait (&barrier);
    memset (buf, (int) (pass * 7 + c->id) | 1, BS);   /* new data each pass */
    if (!failed && one_pass (c, buf) == -1)
      failed = true;
    /* Every write of the pass acknowledged on every connection. */
    if (pthread_barrier_wait (&barrier) == PTHREAD_BARRIER_SERIAL_THREAD &&
        (pass == 1 || pass == total_passes || pass % every == 0))
      report (pass);
    pthread_barrier_wait (&barrier);
  }
  free (buf);
  return NULL;
}

int
main (int argc, char **argv)
{
  int opt;
  setvbuf (stdout, NULL, _IOLBF, 0);
  while ((opt = getopt (argc, argv, "s:p:d:z:n:c:q:e:Z")) != -1)
    switch (opt) {
    case 's': sock_path = optarg; break;
    case 'p': nbdkit_pid = atol (optarg); break;
    case 'd': store_dir = optarg; break;
    case 'z': region = strtoull (optarg, NULL, 0); break;
    case 'n': want = strtoull (optarg, NULL, 0); break;
    case 'c': nconn = (unsigned) atoi (optarg); break;
    case 'q': depth = (unsigned) atoi (optarg); break;
    case 'e': every = (unsigned) atoi (optarg); break;
    case 'Z': zero_first = true; break;
    default: goto usage;
    }
  if (!sock_path || nbdkit_pid <= 0 || !store_dir || region < BS || region % BS ||
      nconn < 1 || nconn > MAX_CONNS || depth < 1 || every < 1)
    goto usage;

  uint64_t per_pass = region / BS;
  total_passes = (want + per_pass - 1) / per_pass;
  if (total_passes < 2) total_passes = 2;
  for (unsigned i = 0; i < nconn; ++i) {
    conns[i].id = i;
    conns[i].h = nbd_create ();
    if (!conns[i].h || nbd_connect_unix (conns[i].h, sock_path) == -1) {
      fprintf (stderr, "# connect: %s\n", nbd_get_error ());
      return 1;
    }
    if (nbd_get_size (conns[i].h) < (int64_t) region) {
      fprintf (stderr, "# the export is smaller than the region\n");
      return 1;
    }
  }
  printf ("# %u connections x %u in flight, region %" PRIu64 " MiB, %" PRIu64
          " passes of %" PRIu64 " 4 KiB writes\n", nconn, depth, region >> 20,
          total_passes, per_pass);
  pthread_barrier_init (&barrier, NULL, nconn);
  pthread_t th[MAX_CONNS];
  t0 = now ();
  for (unsigned i = 0; i < nconn; ++i)
    pthread_create (&th[i], NULL, worker, &conns[i]);
  for (unsigned i = 0; i < nconn; ++i)
    pthread_join (th[i], NULL);
  double el = now () - t0;
  uint64_t writes = 0;
  for (unsigned i = 0; i < nconn; ++i) {
    writes += conns[i].done;
    nbd_shutdown (conns[i].h, 0);
    nbd_close (conns[i].h);
  }
  printf ("# %" PRIu64 " writes in %.2f s: %.0f writes/s, %.0f MiB/s\n", writes, el,
          writes / el, writes * (double) BS / el / 1048576);
  if (store_missing)
    printf ("# the overlay store was not found among nbdkit's open files in %s\n", store_dir);
  return failed || store_missing ? 1 : 0;

 usage:
  fprintf (stderr, "usage: stress_memgrowth -s SOCK -p NBDKIT_PID -d STORE_DIR [-z REGION] "
           "[-n WRITES] [-c CONNS] [-q DEPTH] [-e EVERY] [-Z]\n");
  return 2;
}
