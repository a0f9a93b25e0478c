/* luacow stress client: what the cut check (cut.c) needs from a run --
 * every request that changes the export with its send and acknowledge
 * times, and when each line of the saves log was first seen.  See
 * history.h for the file this writes.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "history.h"

#define MAX_RECORDERS 64

int64_t
clock_ns (clockid_t c)
{
  struct timespec ts;
  clock_gettime (c, &ts);
  return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* CLOCK_REALTIME - CLOCK_MONOTONIC, from above (monotonic read first). */
static int64_t
clock_offset (void)
{
  int64_t m = clock_ns (CLOCK_MONOTONIC);
  return clock_ns (CLOCK_REALTIME) - m;
}

/* Each connection's records: only its own thread appends. */
struct history { struct op_rec *v; size_t n, cap; };
static struct history hist[MAX_RECORDERS];

int
record (unsigned id, int64_t s, int64_t a, uint64_t off, uint64_t len, unsigned kind,
        uint64_t dseed)
{
  if (id >= MAX_RECORDERS) return -1;
  struct history *h = &hist[id];
  if (h->n == h->cap) {
    size_t cap = h->cap ? 2 * h->cap : 4096;
    struct op_rec *v = realloc (h->v, cap * sizeof *v);
    if (!v) return -1;
    h->v = v; h->cap = cap;
  }
  if (a <= s) a = s + 1;
  h->v[h->n++] = (struct op_rec) { s, a, off, dseed, (uint32_t) len, kind };
  return 0;
}

/* The saves log. */
static const char *log_path;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t *seen_at;
static size_t nseen, seen_cap;
static off_t log_off;
static char last_path[4096];
static atomic_bool poll_stop, poll_failed;
static pthread_t poll_thread;
static int64_t offset0;

void
poll_log (void)
{
  char buf[65536];
  pthread_mutex_lock (&log_lock);
  int fd = open (log_path, O_RDONLY | O_CLOEXEC);
  while (fd >= 0) {
    ssize_t r = pread (fd, buf, sizeof buf - 1, log_off);
    if (r <= 0) break;
    int64_t t = clock_ns (CLOCK_MONOTONIC);       /* after the line was there */
    ssize_t used = 0;
    for (ssize_t i = 0; i < r; ++i) {
      if (buf[i] != '\n') continue;
      buf[i] = '\0';
      if (nseen == seen_cap) {
        size_t cap = seen_cap ? 2 * seen_cap : 256;
        int64_t *v = realloc (seen_at, cap * sizeof *v);
        if (!v) { atomic_store (&poll_failed, true); break; }
        seen_at = v; seen_cap = cap;
      }
      seen_at[nseen++] = t;
      char p[4096];
      if (sscanf (buf + used, "%*s %*d %*d %*f %*s %4095s", p) == 1)
        memcpy (last_path, p, sizeof p);
      used = i + 1;
    }
    if (used == 0) break;                       /* a line still being written */
    log_off += used;
  }
  if (fd >= 0) close (fd);
  pthread_mutex_unlock (&log_lock);
}

/* The path of the newest save the log names ("" if none). */
void
last_saved (char out[4096])
{
  poll_log ();
  pthread_mutex_lock (&log_lock);
  memcpy (out, last_path, 4096);
  pthread_mutex_unlock (&log_lock);
}

static void *
poller (void *arg)
{
  (void) arg;
  while (!atomic_load (&poll_stop)) {
    poll_log ();
    usleep (1000);
  }
  poll_log ();
  return NULL;
}

int
record_start (const char *path)
{
  log_path = path;
  offset0 = clock_offset ();
  return pthread_create (&poll_thread, NULL, poller, NULL) == 0 ? 0 : -1;
}

static int
write_history (const char *path, uint64_t size, unsigned nconn, int64_t offset)
{
  FILE *f = fopen (path, "wb");
  if (!f) { perror (path); return -1; }
  uint64_t n = 0;
  for (unsigned i = 0; i < nconn; ++i) n += hist[i].n;
  uint64_t hdr[4] = { size, (uint64_t) offset, nseen, n };
  fwrite (HIST_MAGIC, 8, 1, f);
  fwrite (hdr, sizeof hdr, 1, f);
  fwrite (seen_at, sizeof *seen_at, nseen, f);
  for (unsigned i = 0; i < nconn; ++i)
    fwrite (hist[i].v, sizeof *hist[i].v, hist[i].n, f);
  printf ("# history: %" PRIu64 " requests that change the export, %zu saves seen\n", n, nseen);
  return fclose (f) == 0 ? 0 : -1;
}

/* Stop reading the saves log (one last read first) and write the history
 * to path (if not NULL).  A clock step makes the windows unplaceable.
 */
int
record_finish (const char *path, uint64_t size, unsigned nconn)
{
  atomic_store (&poll_stop, true);
  pthread_join (poll_thread, NULL);
  int64_t offset1 = clock_offset ();
  if (llabs (offset1 - offset0) > 1000000) {
    printf ("# CLOCK_REALTIME moved by %.3f ms against CLOCK_MONOTONIC during the run: "
            "the saves' windows cannot be placed\n", (double) (offset1 - offset0) / 1e6);
    return -1;
  }
  if (atomic_load (&poll_failed)) {
    printf ("# out of memory reading the saves log\n");
    return -1;
  }
  return path ? write_history (path, size, nconn, offset0 > offset1 ? offset0 : offset1) : 0;
}
