/* luacow stress client (libnbd).
 *
 *   stress -s SOCK -o MODEL [-t SECONDS] [-c CONNS] [-r OPS/S] [-S SEED]
 *          [-R REGION] [-P PHASE_MS] [-F FLUSH_ONE_IN] [-l SAVELOG [-m MIDPREFIX]
 *          [-H HISTORY]] [-I INITIAL_MODEL] [-k KILL_AFTER -K NBDKIT_PID]
 *   stress -V -s SOCK -i MODEL [-A PENDING]
 *   stress -C HISTORY -l SAVELOG -D DIR [-I INITIAL_MODEL] [-Q]
 *
 * Stress mode: CONNS connections (one thread each) do random unaligned
 * writes, zeroes, trims, reads, block-status queries and flushes for
 * SECONDS.  The export is cut into regions of REGION bytes (deliberately
 * not a multiple of the filter's 4 KiB block, so neighbouring owners share
 * blocks and race on read-modify-write); in phase p, region r belongs to
 * connection (r + p) % CONNS only.  Phases end at a barrier every PHASE_MS,
 * so ownership rotates and every byte of the model is exact: a byte
 * changes only by an acknowledged request of its current owner.  Reads
 * and block status are checked against the model at once.
 *
 * The export must start out reading as INITIAL_MODEL (a raw image, e.g.
 * the MODEL of an earlier run whose checkpoint was reloaded), or by
 * default as nbdkit's pattern plugin (each 8-byte word holds its own
 * offset, big endian); this is checked before the run.
 *
 * SAVELOG is the policy's log of saves: its saved hook appends one line
 * per save, "EVENT DATA ZERO SECONDS LAST PATH NOW" (NOW: ctx.now, "%.6f").
 * A thread reads it every millisecond and notes when each line was first
 * seen.  With -H, every write, zero and trim is recorded with the times
 * it was sent and acknowledged (history.h); at the end the record, the
 * times the log lines were seen and the clock offset go to HISTORY, for
 * the check below.
 *
 * With -m, at the first phase boundary after half of the time, while
 * every connection is idle, one connection flushes (which makes the
 * filter save), then the file the log names last is hard-linked to
 * MIDPREFIX.qcow2 and the model written to MIDPREFIX.model: a mid-run
 * checkpoint to check later.
 *
 * At the end all connections disconnect cleanly after one connection has
 * read the whole export back and compared it; the model is written to
 * MODEL.
 *
 * With -k/-K, KILL_AFTER seconds into the run nbdkit gets SIGTERM while
 * every connection is busy.  Requests that fail after that are expected;
 * a write, zero or trim in flight then may or may not have happened, byte
 * by byte: it is written to MODEL.pending (records: offset, length as
 * native uint64_t, then length bytes of the request's outcome), and MODEL
 * holds what was acknowledged.  No read-back: nbdkit is gone.
 *
 * Verify mode reads the whole export and compares it with MODEL; with
 * -A PENDING, a byte inside a pending request may also equal the
 * request's outcome.
 *
 * Cut mode (cut.c) checks that every save of SAVELOG but the exit save is
 * a point-in-time image of the export: the state after every request
 * acknowledged before one instant inside the save's window and none sent
 * after it.  It reads the saves with qemu-img over nbdkit's pattern (in
 * DIR) and, unless -Q, deletes those that pass.  INITIAL_MODEL is what
 * the export held before the run (default: the pattern).
 *
 * Output: "# ..." comment lines; exit status 0 when everything matched.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libnbd.h>

#include "history.h"

#define MAX_CONNS 64
#define MAX_OP ((uint64_t) 256 * 1024)

static const char *sock_path, *model_path, *mid_prefix, *initial_path;
static const char *log_path, *hist_path;
static double kill_after;
static long kill_pid;
static atomic_bool killed;
static double seconds = 20, rate = 0;
static unsigned nconn = 8, phase_ms = 500, flush_one_in = 400;
static uint64_t region = 9 * 4096 + 2 * 512 + 77;
static uint64_t seed;

static uint64_t size, nregions;
static unsigned char *model;
static struct nbd_handle *handles[MAX_CONNS];
static pthread_barrier_t barrier;
static double t_start, t_end, phase_deadline;
static unsigned phase;
static bool stop, mid_done;
static atomic_bool fatal;
static atomic_uint_fast64_t mismatches;

enum { OP_WRITE, OP_ZERO, OP_TRIM, OP_READ, OP_BS, OP_FLUSH, OP_NTYPES };
static const char *op_names[OP_NTYPES] = { "write", "zero", "trim", "read", "block_status", "flush" };
static atomic_uint_fast64_t op_count[OP_NTYPES];
static atomic_uint_fast64_t bytes_written, bytes_read;

/* Requests in flight when nbdkit was killed: old or new, byte by byte. */
struct pending {
  uint64_t off, len;
  unsigned char *outcome;
};
static struct pending pend[MAX_CONNS];
static size_t npend;

static double
now (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static uint64_t
rnd (uint64_t *s)               /* xorshift64* */
{
  uint64_t x = *s;
  x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
  *s = x;
  return x * 0x2545F4914F6CDD1DULL;
}

static uint64_t
below (uint64_t *s, uint64_t n)
{
  return n ? rnd (s) % n : 0;
}

static int
write_file (const char *path, const void *buf, uint64_t len)
{
  int fd = open (path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd == -1) { perror (path); return -1; }
  const char *p = buf;
  while (len > 0) {
    ssize_t r = write (fd, p, len > (1 << 30) ? (1 << 30) : len);
    if (r <= 0) { perror (path); close (fd); return -1; }
    p += r; len -= (uint64_t) r;
  }
  return close (fd);
}

static struct nbd_handle *
connect_one (bool meta)
{
  struct nbd_handle *h = nbd_create ();
  if (!h) { fprintf (stderr, "# nbd_create: %s\n", nbd_get_error ()); return NULL; }
  if (meta && nbd_add_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1)
    goto err;
  if (nbd_connect_unix (h, sock_path) == -1)
    goto err;
  return h;
 err:
  fprintf (stderr, "# connect %s: %s\n", sock_path, nbd_get_error ());
  nbd_close (h);
  return NULL;
}

/* Whether byte o may read v because of a pending request. */
static bool
pending_allows (uint64_t o, unsigned char v)
{
  for (size_t i = 0; i < npend; ++i)
    if (o >= pend[i].off && o - pend[i].off < pend[i].len &&
        pend[i].outcome[o - pend[i].off] == v)
      return true;
  return false;
}

/* Compare len bytes read at off with the model; report the first few. */
static uint64_t
compare (const char *what, const unsigned char *got, uint64_t off, uint64_t len)
{
  if (memcmp (got, model + off, len) == 0)
    return 0;
  uint64_t bad = 0, first = UINT64_MAX, last = 0;
  for (uint64_t i = 0; i < len; ++i)
    if (got[i] != model[off + i] && !pending_allows (off + i, got[i])) {
      bad++;
      if (first == UINT64_MAX) first = off + i;
      last = off + i;
    }
  if (bad == 0)
    return 0;
  uint64_t n = atomic_fetch_add (&mismatches, bad);
  if (n < 1000)
    printf ("# MISMATCH (%s) in [%" PRIu64 ", +%" PRIu64 "): %" PRIu64
            " bytes differ, first at %" PRIu64 " (expected 0x%02x got 0x%02x), last at %"
            PRIu64 "\n", what, off, len, bad, first, model[first], got[first - off], last);
  return bad;
}

/* One request's range inside [rs, re). */
static void
pick_range (uint64_t *s, uint64_t rs, uint64_t re, uint64_t *off, uint64_t *len)
{
  uint64_t span = re - rs, r = below (s, 100);
  if (r < 20) {                 /* whole 4 KiB blocks inside the region */
    uint64_t a = (rs + 4095) & ~(uint64_t) 4095, b = re & ~(uint64_t) 4095;
    if (b > a) {
      uint64_t nb = (b - a) / 4096, first = below (s, nb);
      *off = a + first * 4096;
      *len = (1 + below (s, nb - first)) * 4096;
      return;
    }
  }
  *off = rs + below (s, span);
  uint64_t max = re - *off, want;
  if (r < 50) want = 1 + below (s, 600);
  else if (r < 80) want = 1 + below (s, 9000);
  else if (r < 95) want = 1 + below (s, max);
  else { *off = rs; want = span; }            /* the whole region */
  *len = want < max ? want : max;
  if (*len > MAX_OP) *len = MAX_OP;
}

struct bs_check { uint64_t lo, hi; uint64_t bad; };

static int
extent_cb (void *opaque, const char *ctx, uint64_t offset, uint32_t *entries,
           size_t n, int *error)
{
  struct bs_check *c = opaque;
  (void) error;
  if (strcmp (ctx, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
    return 0;
  uint64_t pos = offset;
  for (size_t i = 0; i + 1 < n; i += 2) {
    uint64_t len = entries[i], end = pos + len;
    if (entries[i + 1] & LIBNBD_STATE_ZERO) {
      uint64_t a = pos > c->lo ? pos : c->lo, b = end < c->hi ? end : c->hi;
      for (uint64_t o = a; o < b; ++o)
        if (model[o] != 0) {
          c->bad++;
          if (c->bad == 1)
            printf ("# MISMATCH (block_status) extent [%" PRIu64 ", +%" PRIu64
                    ") says zero but byte %" PRIu64 " is 0x%02x in the model\n",
                    pos, len, o, model[o]);
          break;
        }
    }
    pos = end;
  }
  return 0;
}

static void
fail_op (unsigned id, const char *what, uint64_t off, uint64_t len)
{
  printf ("# conn %u: %s at %" PRIu64 "+%" PRIu64 " failed: %s (errno %d)\n",
          id, what, off, len, nbd_get_error (), nbd_get_errno ());
  atomic_store (&fatal, true);
}

/* Record a request that changes the export, sent at ts (history.h);
 * called as soon as it returned.
 */
static void
note (unsigned id, int64_t ts, bool acked, uint64_t off, uint64_t len, unsigned kind,
      uint64_t dseed)
{
  int64_t ta = acked ? clock_ns (CLOCK_MONOTONIC) : NEVER;
  if (record (id, ts, ta, off, len, kind, dseed) == -1)
    atomic_store (&fatal, true);
}

/* A request failed.  After the kill that is expected: a write, zero or
 * trim (data NULL: zeroes) becomes pending; true when it was the kill.
 */
static bool
after_kill (unsigned id, uint64_t off, uint64_t len, const unsigned char *data,
            bool changes)
{
  if (!atomic_load (&killed))
    return false;
  atomic_store (&fatal, true);  /* stop at the next boundary */
  if (changes) {
    struct pending *p = &pend[id];
    p->off = off;
    p->len = len;
    p->outcome = calloc (1, len);
    if (p->outcome && data)
      memcpy (p->outcome, data, len);
  }
  return true;
}

static void *
killer (void *arg)
{
  (void) arg;
  double until = t_start + kill_after;
  while (now () < until)
    usleep (10000);
  atomic_store (&killed, true);
  printf ("# sending SIGTERM to nbdkit (pid %ld) at %.2f s\n", kill_pid, now () - t_start);
  if (kill ((pid_t) kill_pid, SIGTERM) == -1)
    perror ("kill");
  return NULL;
}

/* At a phase boundary, on the serial thread, every connection idle. */
static void
boundary (unsigned id)
{
  double t = now ();
  if (mid_prefix && log_path && !mid_done && t - t_start >= (t_end - t_start) / 2
      && !atomic_load (&fatal)) {
    mid_done = true;
    if (nbd_flush (handles[id], 0) == -1)
      fail_op (id, "mid-run flush", 0, 0);
    else {
      /* The flush's saved hook has logged it; any later save is of this
       * state too, every connection being idle.
       */
      char p[4096], saved[4096];
      last_saved (saved);
      snprintf (p, sizeof p, "%s.qcow2", mid_prefix);
      unlink (p);
      if (link (saved, p) == -1) {
        printf ("# link %s -> %s: %s\n", saved, p, strerror (errno));
        atomic_store (&fatal, true);
      }
      snprintf (p, sizeof p, "%s.model", mid_prefix);
      if (write_file (p, model, size) == -1)
        atomic_store (&fatal, true);
      printf ("# mid-run checkpoint taken at %.2f s (phase %u)\n", t - t_start, phase);
    }
  }
  phase++;
  t = now ();
  stop = t >= t_end || atomic_load (&fatal);
  phase_deadline = t + phase_ms / 1000.0;
}

static void *
worker (void *arg)
{
  unsigned id = (unsigned) (uintptr_t) arg;
  struct nbd_handle *h = handles[id];
  uint64_t s = seed * 0x9E3779B97F4A7C15ULL + id + 1;
  unsigned char *buf = malloc (MAX_OP), *rbuf = malloc (MAX_OP);
  double per = rate > 0 ? nconn / rate : 0, next_t = now ();
  if (!buf || !rbuf) { atomic_store (&fatal, true); }
  bool can_fua = nbd_can_fua (h) > 0, can_fast_zero = nbd_can_fast_zero (h) > 0;
  bool can_meta = nbd_can_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) > 0;

  for (;;) {
    if (atomic_load (&fatal) || now () >= phase_deadline) {
      if (pthread_barrier_wait (&barrier) == PTHREAD_BARRIER_SERIAL_THREAD) // NOLINT(bugprone-posix-return): it is -1
        boundary (id);
      pthread_barrier_wait (&barrier);
      if (stop)
        break;
      continue;
    }
    if (per > 0) {
      double t = now ();
      if (t < next_t)
        usleep ((useconds_t) ((next_t - t) * 1e6));
      next_t += per;
      if (next_t < t - 1) next_t = t;   /* do not burst after a stall */
    }
    /* A region of ours in this phase. */
    uint64_t base = ((id + nconn) - phase % nconn) % nconn;
    if (base >= nregions) { usleep (1000); continue; }
    uint64_t count = (nregions - base + nconn - 1) / nconn;
    uint64_t r = base + nconn * below (&s, count);
    uint64_t rs = r * region, re = rs + region < size ? rs + region : size;
    uint64_t off, len;
    pick_range (&s, rs, re, &off, &len);

    unsigned what = (unsigned) below (&s, 1000), op;
    if (what < 420) op = OP_WRITE;
    else if (what < 520) op = OP_ZERO;
    else if (what < 600) op = OP_TRIM;
    else if (what < 900) op = OP_READ;
    else op = OP_BS;
    if (flush_one_in && below (&s, flush_one_in) == 0) op = OP_FLUSH;
    uint32_t fua = can_fua && below (&s, 8) == 0 ? LIBNBD_CMD_FLAG_FUA : 0;

    switch (op) {
    case OP_WRITE: {
      unsigned kind = (unsigned) below (&s, 10), hk = H_RANDOM;
      uint64_t dseed = 0;
      if (kind == 0) { memset (buf, 0, len); hk = H_ZERO; }               /* zeroes as data */
      else if (kind == 1) { pattern_fill (buf, off, len); hk = H_PATTERN; } /* same as below */
      else { dseed = rnd (&s); random_fill (buf, len, dseed); }
      int64_t ts = clock_ns (CLOCK_MONOTONIC);
      if (nbd_pwrite (h, buf, len, off, fua) == -1) {
        note (id, ts, false, off, len, hk, dseed);
        if (!after_kill (id, off, len, buf, true)) fail_op (id, "pwrite", off, len);
        break;
      }
      note (id, ts, true, off, len, hk, dseed);
      memcpy (model + off, buf, len);
      atomic_fetch_add (&bytes_written, len);
      break;
    }
    case OP_ZERO: {
      uint32_t f = fua;
      if (below (&s, 3) == 0) f |= LIBNBD_CMD_FLAG_NO_HOLE;
      else if (can_fast_zero && below (&s, 3) == 0) f |= LIBNBD_CMD_FLAG_FAST_ZERO;
      int64_t ts = clock_ns (CLOCK_MONOTONIC);
      if (nbd_zero (h, len, off, f) == -1) {
        note (id, ts, false, off, len, H_ZERO, 0);
        if (!after_kill (id, off, len, NULL, true)) fail_op (id, "zero", off, len);
        break;
      }
      note (id, ts, true, off, len, H_ZERO, 0);
      memset (model + off, 0, len);
      break;
    }
    case OP_TRIM: {
      /* The filter documents that a trimmed range reads as zeroes. */
      int64_t ts = clock_ns (CLOCK_MONOTONIC);
      if (nbd_trim (h, len, off, fua) == -1) {
        note (id, ts, false, off, len, H_ZERO, 0);
        if (!after_kill (id, off, len, NULL, true)) fail_op (id, "trim", off, len);
        break;
      }
      note (id, ts, true, off, len, H_ZERO, 0);
      memset (model + off, 0, len);
      break;
    }
    case OP_READ:
      if (nbd_pread (h, rbuf, len, off, 0) == -1) {
        if (!after_kill (id, off, len, NULL, false)) fail_op (id, "pread", off, len);
        break;
      }
      atomic_fetch_add (&bytes_read, len);
      if (compare ("read", rbuf, off, len))
        atomic_store (&fatal, true);
      break;
    case OP_BS: {
      if (!can_meta) break;
      struct bs_check c = { off, off + len, 0 };
      if (nbd_block_status (h, len, off,
                            (nbd_extent_callback) { .callback = extent_cb, .user_data = &c },
                            0) == -1) {
        if (!after_kill (id, off, len, NULL, false)) fail_op (id, "block_status", off, len);
        break;
      }
      if (c.bad) {
        atomic_fetch_add (&mismatches, c.bad);
        atomic_store (&fatal, true);
      }
      break;
    }
    case OP_FLUSH:
      if (nbd_flush (h, 0) == -1 && !after_kill (id, 0, 0, NULL, false))
        fail_op (id, "flush", 0, 0);
      break;
    }
    atomic_fetch_add (&op_count[op], 1);
  }
  free (buf);
  free (rbuf);
  return NULL;
}

/* Read the whole export through h and compare with the model. */
static uint64_t
compare_all (struct nbd_handle *h, const char *what)
{
  const uint64_t chunk = 4 << 20;
  unsigned char *buf = malloc (chunk);
  uint64_t bad = 0;
  if (!buf) return 1;
  for (uint64_t off = 0; off < size; off += chunk) {
    uint64_t len = size - off < chunk ? size - off : chunk;
    if (nbd_pread (h, buf, len, off, 0) == -1) {
      printf ("# %s: pread at %" PRIu64 ": %s\n", what, off, nbd_get_error ());
      bad++;
      break;
    }
    bad += compare (what, buf, off, len);
  }
  free (buf);
  return bad;
}

/* model = the contents of path, which must be size bytes long. */
static int
load_model (const char *path)
{
  int fd = open (path, O_RDONLY | O_CLOEXEC);
  if (fd == -1) { perror (path); return -1; }
  off_t fsz = lseek (fd, 0, SEEK_END);
  if ((uint64_t) fsz != size) {
    printf ("# size mismatch: export %" PRIu64 ", model %s %lld\n", size, path, (long long) fsz);
    close (fd);
    return -1;
  }
  for (uint64_t o = 0; o < size;) {
    ssize_t r = pread (fd, model + o, size - o, (off_t) o);
    if (r <= 0) { perror (path); close (fd); return -1; }
    o += (uint64_t) r;
  }
  close (fd);
  return 0;
}

/* Pending requests from a kill run (see the top of the file). */
static int
load_pending (const char *path)
{
  FILE *f = fopen (path, "rb");
  if (!f) { perror (path); return -1; }
  uint64_t hdr[2];
  while (npend < MAX_CONNS && fread (hdr, sizeof hdr, 1, f) == 1) {
    struct pending *p = &pend[npend];
    p->off = hdr[0];
    p->len = hdr[1];
    if (p->len > size || p->off > size - p->len || !(p->outcome = malloc (p->len ? p->len : 1)) ||
        fread (p->outcome, 1, p->len, f) != p->len) {
      printf ("# %s: bad record\n", path);
      fclose (f);
      return -1;
    }
    npend++;
  }
  fclose (f);
  return 0;
}

static int
write_pending (const char *path)
{
  FILE *f = fopen (path, "wb");
  if (!f) { perror (path); return -1; }
  int n = 0;
  for (unsigned i = 0; i < nconn; ++i)
    if (pend[i].outcome) {
      uint64_t hdr[2] = { pend[i].off, pend[i].len };
      fwrite (hdr, sizeof hdr, 1, f);
      fwrite (pend[i].outcome, 1, pend[i].len, f);
      n++;
    }
  printf ("# %d requests were in flight when nbdkit was killed\n", n);
  return fclose (f) == 0 ? 0 : -1;
}

static const char *pending_path;

static int
verify (const char *path)
{
  struct nbd_handle *h = connect_one (false);
  if (!h) return 1;
  int64_t sz = nbd_get_size (h);
  if (sz <= 0) { printf ("# bad export size\n"); return 1; }
  size = (uint64_t) sz;
  model = malloc (size);
  if (!model || load_model (path) == -1) return 1;
  if (pending_path && load_pending (pending_path) == -1) return 1;
  uint64_t bad = compare_all (h, "verify");
  nbd_shutdown (h, 0);
  nbd_close (h);
  printf ("# verify: %" PRIu64 " bytes compared, %" PRIu64 " differ\n", size, bad);
  return bad ? 1 : 0;
}

static void
usage (void)
{
  fprintf (stderr, "usage: stress -s SOCK -o MODEL [-t S] [-c N] [-r OPS] [-S SEED] "
           "[-R REGION] [-P MS] [-F N] [-l SAVELOG [-m PREFIX] [-H HISTORY]] [-I MODEL]\n"
           "       [-k KILL_AFTER -K NBDKIT_PID]\n"
           "       stress -V -s SOCK -i MODEL [-A PENDING]\n"
           "       stress -C HISTORY -l SAVELOG -D DIR [-I MODEL] [-Q]\n");
  exit (2);
}

int
main (int argc, char **argv)
{
  const char *in = NULL, *cut_hist = NULL, *cut_dir = NULL;
  bool verify_mode = false, keep = false;
  int c;
  seed = (uint64_t) time (NULL);
  setvbuf (stdout, NULL, _IOLBF, 0);
  while ((c = getopt (argc, argv, "s:o:t:c:r:S:R:P:F:m:l:H:Vi:I:k:K:A:C:D:Q")) != -1)
    switch (c) {
    case 's': sock_path = optarg; break;
    case 'o': model_path = optarg; break;
    case 't': seconds = atof (optarg); break;
    case 'c': nconn = (unsigned) atoi (optarg); break;
    case 'r': rate = atof (optarg); break;
    case 'S': seed = strtoull (optarg, NULL, 0); break;
    case 'R': region = strtoull (optarg, NULL, 0); break;
    case 'P': phase_ms = (unsigned) atoi (optarg); break;
    case 'F': flush_one_in = (unsigned) atoi (optarg); break;
    case 'm': mid_prefix = optarg; break;
    case 'l': log_path = optarg; break;
    case 'H': hist_path = optarg; break;
    case 'C': cut_hist = optarg; break;
    case 'D': cut_dir = optarg; break;
    case 'Q': keep = true; break;
    case 'V': verify_mode = true; break;
    case 'i': in = optarg; break;
    case 'I': initial_path = optarg; break;
    case 'k': kill_after = atof (optarg); break;
    case 'K': kill_pid = atol (optarg); break;
    case 'A': pending_path = optarg; break;
    default: usage ();
    }
  if (cut_hist)
    return log_path && cut_dir ? cut_main (cut_hist, log_path, initial_path, cut_dir, keep)
                               : (usage (), 2);
  if (!sock_path) usage ();
  if (verify_mode)
    return in ? verify (in) : (usage (), 2);
  if (!model_path || nconn < 1 || nconn > MAX_CONNS || region < 1 || phase_ms < 1 ||
      (kill_after > 0) != (kill_pid > 0) || ((mid_prefix || hist_path) && !log_path))
    usage ();

  double tc = now ();
  for (unsigned i = 0; i < nconn; ++i)
    if (!(handles[i] = connect_one (true)))
      return 1;
  tc = now () - tc;
  int64_t sz = nbd_get_size (handles[0]);
  if (sz <= 0) { printf ("# bad export size\n"); return 1; }
  size = (uint64_t) sz;
  nregions = (size + region - 1) / region;
  model = malloc (size);
  if (!model) { perror ("malloc"); return 1; }
  if (initial_path) {
    if (load_model (initial_path) == -1) return 1;
  }
  else
    pattern_fill (model, 0, size);

  printf ("# stress: %u connections, %.1f s, export %" PRIu64 " bytes, %" PRIu64
          " regions of %" PRIu64 ", phase %u ms, seed %" PRIu64 "%s\n",
          nconn, seconds, size, nregions, region, phase_ms, seed,
          rate > 0 ? ", rate-limited" : "");
  /* Check the starting point: the pattern plugin, or the reloaded model. */
  double t = now ();
  if (compare_all (handles[0], "initial") != 0) {
    printf ("# the export does not read as %s before any write\n",
            initial_path ? initial_path : "the pattern plugin");
    return 1;
  }
  printf ("# connecting took %.2f s, the initial read of the export %.2f s\n", tc, now () - t);

  if (log_path && record_start (log_path) == -1) { perror ("pthread_create"); return 1; }
  pthread_barrier_init (&barrier, NULL, nconn);
  t_start = now ();
  t_end = t_start + seconds;
  phase_deadline = t_start + phase_ms / 1000.0;
  pthread_t th[MAX_CONNS], kt;
  for (unsigned i = 0; i < nconn; ++i)
    pthread_create (&th[i], NULL, worker, (void *) (uintptr_t) i);  // NOLINT(performance-no-int-to-ptr)
  if (kill_pid > 0)
    pthread_create (&kt, NULL, killer, NULL);
  for (unsigned i = 0; i < nconn; ++i)
    pthread_join (th[i], NULL);
  if (kill_pid > 0)
    pthread_join (kt, NULL);
  double el = now () - t_start;

  uint64_t total = 0;
  for (int i = 0; i < OP_NTYPES; ++i) total += op_count[i];
  printf ("# %" PRIu64 " ops in %.2f s: %.0f ops/s (", total, el, (double) total / el);
  for (int i = 0; i < OP_NTYPES; ++i)
    printf ("%s%s %" PRIu64, i ? ", " : "", op_names[i], (uint64_t) op_count[i]);
  printf ("); %.1f MiB written, %.1f MiB read, %u phases\n",
          (double) bytes_written / 1048576.0, (double) bytes_read / 1048576.0, phase);

  int rc = 0;
  if (log_path && record_finish (hist_path, size, nconn) == -1)
    rc = 1;
  if (kill_pid > 0) {
    /* nbdkit is gone: no read-back; the model and what was in flight. */
    char p[4096];
    if (mismatches || !atomic_load (&killed)) {
      printf ("# FAILED during the run: %" PRIu64 " mismatching bytes%s\n",
              (uint64_t) mismatches, atomic_load (&killed) ? "" : ", nbdkit not killed");
      rc = 1;
    }
    for (unsigned i = 0; i < nconn; ++i)
      nbd_close (handles[i]);
    snprintf (p, sizeof p, "%s.pending", model_path);
    if (write_file (model_path, model, size) == -1 || write_pending (p) == -1)
      rc = 1;
    return rc;
  }
  if (atomic_load (&fatal) || mismatches) {
    printf ("# FAILED during the run: %" PRIu64 " mismatching bytes\n", (uint64_t) mismatches);
    rc = 1;
  }
  t = now ();
  if (compare_all (handles[0], "final read-back") != 0) {
    printf ("# FAILED: final read-back differs from the model\n");
    rc = 1;
  }
  else
    printf ("# final read-back of %" PRIu64 " bytes matches the model (%.2f s)\n",
            size, now () - t);
  t = now ();
  for (unsigned i = 0; i < nconn; ++i) {
    if (nbd_shutdown (handles[i], 0) == -1) {
      printf ("# shutdown %u: %s\n", i, nbd_get_error ());
      rc = 1;
    }
    nbd_close (handles[i]);
  }
  printf ("# disconnecting took %.2f s\n", now () - t);
  if (write_file (model_path, model, size) == -1)
    rc = 1;
  free (model);
  return rc;
}
