/* Model-based test of the luacow filter over NBD, with multi-conn.
 *
 *   model SOCKET BASEFILE SIZE SEED ROUNDS OPS [DUMP]
 *
 * Opens 4 libnbd connections to SOCKET (one nbdkit, so one overlay) and
 * keeps an exact model of the export, starting from BASEFILE (the plugin's
 * file, which must be SIZE bytes).  Each round the export is cut at random
 * unaligned points into segments, each owned by one connection (or none);
 * the connections run OPS random operations each in parallel, only inside
 * their own segments, so the expected content is exact even while blocks
 * are shared between neighbours: pwrite (with/without FUA), zero (with and
 * without FAST_ZERO, FUA, NO_HOLE), trim (with/without FUA), pread
 * (compared at once), flush, cache and block status (a range reported
 * "zero" must read as zeroes).  After each round every connection reads
 * back the segments of another one (multi-conn visibility).  At the end
 * every connection reads the whole export and compares it with the model,
 * which is written to DUMP when given.
 *
 * Prints "PASS what" / "FAIL what" lines (the script turns them into TAP)
 * and diagnostics on other lines.  Exit status 0 iff nothing failed.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libnbd.h>

#define NCONN 4
#define MAX_SEGS 320

static const char *sock;
static uint64_t size;
static unsigned char *model;          /* expected content of the export */
static struct nbd_handle *h[NCONN];
static pthread_barrier_t barrier;
static atomic_uint failures;
static pthread_mutex_t print_lock = PTHREAD_MUTEX_INITIALIZER;

struct seg { uint64_t start, end; int owner; };
static struct seg segs[MAX_SEGS];
static int nsegs;
/* Dense rounds: the window, reset to zeroes before each of `subrounds`. */
static uint64_t win_lo, win_hi;
static unsigned subrounds = 1;

struct counts { unsigned long pwrite, zero, fast_zero, fua, trim, pread, flush, cache, bs; };
static struct counts totals;

static void
diag (const char *fmt, ...)
{
  va_list ap;
  pthread_mutex_lock (&print_lock);
  va_start (ap, fmt);
  vprintf (fmt, ap);
  va_end (ap);
  putchar ('\n');
  fflush (stdout);
  pthread_mutex_unlock (&print_lock);
}

/* A failure inside the random run: count it, print the first few. */
static void
failure (const char *fmt, ...)
{
  unsigned n = atomic_fetch_add (&failures, 1);
  if (n >= 20)
    return;
  char msg[512];
  va_list ap;
  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  diag ("error: %s", msg);
}

static void
result (bool good, const char *fmt, ...)
{
  char msg[512];
  va_list ap;
  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  diag ("%s %s", good ? "PASS" : "FAIL", msg);
  if (!good)
    atomic_fetch_add (&failures, 1);
}

/* xorshift64*, one state per thread. */
static uint64_t
rnd (uint64_t *s)
{
  uint64_t x = *s;
  x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
  *s = x;
  return x * 0x2545F4914F6CDD1DULL;
}

static uint64_t
below (uint64_t *s, uint64_t n)         /* uniform-ish in [0, n) */
{
  return n ? rnd (s) % n : 0;
}

/* Compare buf (what the server returned for [off, off+len)) with the model. */
static bool
compare (int c, const char *what, const unsigned char *buf, uint64_t off, uint64_t len)
{
  if (memcmp (buf, model + off, len) == 0)
    return true;
  uint64_t i = 0;
  while (buf[i] == model[off + i])
    i++;
  failure ("conn %d: %s [%" PRIu64 ", +%" PRIu64 "): first difference at %" PRIu64
           " (block %" PRIu64 " +%" PRIu64 "): got 0x%02x, expected 0x%02x",
           c, what, off, len, off + i, (off + i) / 4096, (off + i) % 4096,
           buf[i], model[off + i]);
  return false;
}

/* Read [off, off+len) in pieces of at most 4 MiB and compare. */
static bool
read_compare (int c, const char *what, uint64_t off, uint64_t len, unsigned char *buf,
              uint64_t *rng)
{
  while (len > 0) {
    uint64_t n = len < 4194304 ? len : 1 + below (rng, 4194304);
    if (n > len)
      n = len;
    if (nbd_pread (h[c], buf, n, off, 0) == -1) {
      failure ("conn %d: %s pread [%" PRIu64 ", +%" PRIu64 "): %s", c, what, off, n,
               nbd_get_error ());
      return false;
    }
    if (!compare (c, what, buf, off, n))
      return false;
    off += n;
    len -= n;
  }
  return true;
}

struct bs_check { int c; uint64_t lo, hi; bool bad; };

/* Extents reported with NBD_STATE_ZERO must be zeroes in the model
 * (clipped to the range asked, which the calling connection owns).
 */
static int
bs_callback (void *opaque, const char *ctx, uint64_t off, uint32_t *entries,
             size_t n, int *error)
{
  struct bs_check *k = opaque;
  (void) error;
  if (strcmp (ctx, "base:allocation") != 0)
    return 0;
  for (size_t i = 0; i + 1 < n; i += 2) {
    uint64_t a = off, b = off + entries[i];
    if (entries[i] == 0) {
      failure ("conn %d: block status returned a zero-length extent at %" PRIu64, k->c, off);
      k->bad = true;
    }
    if (entries[i + 1] & LIBNBD_STATE_ZERO) {
      if (a < k->lo) a = k->lo;
      if (b > k->hi) b = k->hi;
      for (uint64_t x = a; x < b; ++x)
        if (model[x] != 0) {
          failure ("conn %d: block status says [%" PRIu64 ", %" PRIu64 ") reads as zero"
                   " but byte %" PRIu64 " is 0x%02x", k->c, off, off + entries[i], x, model[x]);
          k->bad = true;
          break;
        }
    }
    off += entries[i];
  }
  return 0;
}

/* Length of a request: mostly small and unaligned, sometimes large. */
static uint64_t
pick_len (uint64_t *rng, uint64_t room)
{
  uint64_t r = below (rng, 100), n;
  if (r < 45) n = 1 + below (rng, 700);
  else if (r < 75) n = 1 + below (rng, 20000);
  else if (r < 90) n = 4096 * (1 + below (rng, 16));        /* block multiples */
  else n = 1 + below (rng, 400000);
  return n < room ? n : room;
}

static uint64_t
pick_off (uint64_t *rng, const struct seg *s)
{
  uint64_t r = below (rng, 10), len = s->end - s->start;
  if (r == 0)
    return s->start;                          /* segment edge (shared blocks) */
  if (r == 1) {                               /* block aligned, if any inside */
    uint64_t a = (s->start + 4095) & ~(uint64_t) 4095;
    if (a < s->end)
      return a + 4096 * below (rng, (s->end - a - 1) / 4096 + 1);
  }
  return s->start + below (rng, len);
}

struct worker { int c; uint64_t seed; unsigned rounds, ops; struct counts n; };

static void
do_ops (struct worker *w, uint64_t *rng, unsigned char *buf, unsigned ops)
{
  int c = w->c;
  int mine[MAX_SEGS], nmine = 0;
  for (int i = 0; i < nsegs; ++i)
    if (segs[i].owner == c)
      mine[nmine++] = i;
  if (nmine == 0)
    return;
  for (unsigned i = 0; i < ops && atomic_load (&failures) < 20; ++i) {
    const struct seg *s = &segs[mine[below (rng, (uint64_t) nmine)]];
    uint64_t off = pick_off (rng, s);
    uint64_t len = pick_len (rng, s->end - off);
    uint64_t op = below (rng, 100);
    uint32_t flags;
    if (op < 35) {                            /* pwrite */
      for (uint64_t j = 0; j < len; j += 8) {
        uint64_t v = rnd (rng);
        memcpy (buf + j, &v, len - j < 8 ? len - j : 8);
      }
      flags = below (rng, 4) == 0 ? LIBNBD_CMD_FLAG_FUA : 0;
      w->n.pwrite++;
      if (flags) w->n.fua++;
      if (nbd_pwrite (h[c], buf, len, off, flags) == -1)
        failure ("conn %d: pwrite [%" PRIu64 ", +%" PRIu64 ") flags 0x%x: %s", c, off, len,
                 flags, nbd_get_error ());
      memcpy (model + off, buf, len);
    }
    else if (op < 55) {                       /* zero */
      static const uint32_t zf[] = {
        0, LIBNBD_CMD_FLAG_FAST_ZERO, LIBNBD_CMD_FLAG_FUA,
        LIBNBD_CMD_FLAG_FAST_ZERO | LIBNBD_CMD_FLAG_FUA, LIBNBD_CMD_FLAG_NO_HOLE,
        LIBNBD_CMD_FLAG_FAST_ZERO | LIBNBD_CMD_FLAG_NO_HOLE,
      };
      flags = zf[below (rng, 6)];
      w->n.zero++;
      if (flags & LIBNBD_CMD_FLAG_FAST_ZERO) w->n.fast_zero++;
      if (flags & LIBNBD_CMD_FLAG_FUA) w->n.fua++;
      if (nbd_zero (h[c], len, off, flags) == -1)
        failure ("conn %d: zero [%" PRIu64 ", +%" PRIu64 ") flags 0x%x: %s", c, off, len,
                 flags, nbd_get_error ());
      memset (model + off, 0, len);
    }
    else if (op < 65) {                       /* trim: luacow reads it back as zeroes */
      flags = below (rng, 3) == 0 ? LIBNBD_CMD_FLAG_FUA : 0;
      w->n.trim++;
      if (flags) w->n.fua++;
      if (nbd_trim (h[c], len, off, flags) == -1)
        failure ("conn %d: trim [%" PRIu64 ", +%" PRIu64 ") flags 0x%x: %s", c, off, len,
                 flags, nbd_get_error ());
      memset (model + off, 0, len);
    }
    else if (op < 90) {                       /* pread */
      w->n.pread++;
      if (nbd_pread (h[c], buf, len, off, 0) == -1)
        failure ("conn %d: pread [%" PRIu64 ", +%" PRIu64 "): %s", c, off, len, nbd_get_error ());
      else
        compare (c, "pread", buf, off, len);
    }
    else if (op < 94) {                       /* flush */
      w->n.flush++;
      if (nbd_flush (h[c], 0) == -1)
        failure ("conn %d: flush: %s", c, nbd_get_error ());
    }
    else if (op < 96) {                       /* cache */
      w->n.cache++;
      if (nbd_cache (h[c], len, off, 0) == -1)
        failure ("conn %d: cache [%" PRIu64 ", +%" PRIu64 "): %s", c, off, len, nbd_get_error ());
    }
    else {                                    /* block status */
      struct bs_check k = { c, off, off + len, false };
      w->n.bs++;
      if (nbd_block_status (h[c], len, off,
                            (nbd_extent_callback) { .callback = bs_callback, .user_data = &k },
                            below (rng, 2) ? LIBNBD_CMD_FLAG_REQ_ONE : 0) == -1)
        failure ("conn %d: block status [%" PRIu64 ", +%" PRIu64 "): %s", c, off, len,
                 nbd_get_error ());
    }
  }
}

static void
sort_cuts (uint64_t *cuts, int n)
{
  for (int i = 1; i < n; ++i)
    for (int j = i; j > 0 && cuts[j - 1] > cuts[j]; --j) {
      uint64_t t = cuts[j]; cuts[j] = cuts[j - 1]; cuts[j - 1] = t;
    }
}

/* Even rounds: up to 62 random cuts over the whole export, some on block
 * boundaries.  Odd rounds are dense: a window of 1 to 6 blocks cut into
 * many small segments, run as 25 sub-rounds each starting with the window
 * zeroed, so nearly every request is a partial block that other
 * connections are read-modify-writing (first write after the reset) at
 * the same time.
 */
static void
new_partition (uint64_t *rng, unsigned round)
{
  uint64_t cuts[MAX_SEGS];
  int ncuts;
  bool dense = round % 2 == 1;
  uint64_t wlo = 0, whi = size;
  if (dense) {
    uint64_t w = 4096 * (1 + below (rng, 6));
    if (w > size)
      w = size;
    wlo = below (rng, size - w + 1);
    whi = wlo + w;
    ncuts = 8 + (int) below (rng, 8 * (w / 4096));
  }
  else
    ncuts = 1 + (int) below (rng, 62);
  win_lo = wlo;
  win_hi = whi;
  subrounds = dense ? 25 : 1;
  for (int i = 0; i < ncuts; ++i) {
    cuts[i] = wlo + below (rng, whi - wlo);
    if (!dense && below (rng, 4) == 0)
      cuts[i] &= ~(uint64_t) 4095;            /* some block-aligned boundaries */
  }
  if (dense) {
    cuts[ncuts++] = wlo;
    cuts[ncuts++] = whi;
  }
  sort_cuts (cuts, ncuts);
  nsegs = 0;
  uint64_t prev = 0;
  for (int i = 0; i <= ncuts; ++i) {
    uint64_t e = i < ncuts ? cuts[i] : size;
    if (e > prev) {
      segs[nsegs].start = prev;
      segs[nsegs].end = e;
      if (dense && (prev < wlo || prev >= whi))
        segs[nsegs].owner = NCONN;              /* outside the window: nobody */
      else if (dense)
        segs[nsegs].owner = (int) below (rng, NCONN);
      else
        segs[nsegs].owner = (int) below (rng, NCONN + 1);  /* NCONN: nobody */
      nsegs++;
    }
    prev = e;
  }
}

static void *
worker_main (void *arg)
{
  struct worker *w = arg;
  uint64_t rng = w->seed * 0x9E3779B97F4A7C15ULL + (uint64_t) w->c + 1;
  unsigned char *buf = malloc (4194304);
  if (!buf) {
    failure ("conn %d: out of memory", w->c);
    return NULL;
  }
  for (unsigned r = 0; r < w->rounds; ++r) {
    pthread_barrier_wait (&barrier);            /* main has made the partition */
    unsigned subs = subrounds, ops = w->ops / subs ? w->ops / subs : 1;
    for (unsigned sub = 0; sub < subs; ++sub) {
      pthread_barrier_wait (&barrier);          /* go (window reset) */
      do_ops (w, &rng, buf, ops);
      pthread_barrier_wait (&barrier);          /* all writes done */
    }
    /* Multi-conn: read another connection's segments, and the unowned ones. */
    int other = (w->c + 1 + (int) r % (NCONN - 1)) % NCONN;
    for (int i = 0; i < nsegs; ++i)
      if (segs[i].owner == other || (segs[i].owner == NCONN && w->c == (int) r % NCONN))
        read_compare (w->c, "cross-check", segs[i].start, segs[i].end - segs[i].start, buf,
                      &rng);
    pthread_barrier_wait (&barrier);
  }
  /* Final: every connection reads everything. */
  read_compare (w->c, "final read", 0, size, buf, &rng);
  free (buf);
  return NULL;
}

static struct nbd_handle *
connect_one (void)
{
  struct nbd_handle *nh = nbd_create ();
  if (!nh || nbd_add_meta_context (nh, "base:allocation") == -1 ||
      nbd_connect_unix (nh, sock) == -1) {
    diag ("error: connect %s: %s", sock, nbd_get_error ());
    return NULL;
  }
  return nh;
}

int
main (int argc, char **argv)
{
  if (argc < 7) {
    fprintf (stderr, "usage: %s SOCKET BASEFILE SIZE SEED ROUNDS OPS [DUMP]\n", argv[0]);
    return 2;
  }
  sock = argv[1];
  const char *base = argv[2];
  size = strtoull (argv[3], NULL, 10);
  uint64_t seed = strtoull (argv[4], NULL, 10);
  unsigned rounds = (unsigned) atoi (argv[5]), ops = (unsigned) atoi (argv[6]);
  const char *dump = argc > 7 ? argv[7] : NULL;

  model = malloc (size ? size : 1);
  FILE *f = fopen (base, "rb");
  if (!model || !f || (size && fread (model, 1, size, f) != size) || fgetc (f) != EOF) {
    diag ("error: cannot read %" PRIu64 " bytes (exactly) from %s", size, base);
    return 2;
  }
  fclose (f);

  for (int c = 0; c < NCONN; ++c)
    if (!(h[c] = connect_one ())) {
      result (false, "%d connections to one nbdkit", NCONN);
      return 1;
    }
  result (true, "%d connections to one nbdkit", NCONN);

  /* Export flags, as every connection sees them. */
  static const struct { const char *name; int (*fn) (struct nbd_handle *); } caps[] = {
    { "can_flush", nbd_can_flush }, { "can_fua", nbd_can_fua },
    { "can_trim", nbd_can_trim }, { "can_zero", nbd_can_zero },
    { "can_fast_zero", nbd_can_fast_zero }, { "can_multi_conn", nbd_can_multi_conn },
    { "can_cache", nbd_can_cache },
  };
  bool all = true;
  for (int c = 0; c < NCONN; ++c) {
    int64_t s = nbd_get_size (h[c]);
    if (s != (int64_t) size) {
      diag ("conn %d: size %" PRId64 ", expected %" PRIu64, c, s, size);
      all = false;
    }
  }
  result (all, "export size is %" PRIu64 " on every connection", size);
  all = true;
  for (int c = 0; c < NCONN; ++c)
    if (nbd_is_read_only (h[c]) != 0) {
      diag ("conn %d: is_read_only = %d", c, nbd_is_read_only (h[c]));
      all = false;
    }
  result (all, "export is writable (is_read_only false) though the plugin is opened read-only");
  for (size_t i = 0; i < sizeof caps / sizeof caps[0]; ++i) {
    all = true;
    for (int c = 0; c < NCONN; ++c)
      if (caps[i].fn (h[c]) != 1) {
        diag ("conn %d: %s = %d", c, caps[i].name, caps[i].fn (h[c]));
        all = false;
      }
    result (all, "%s is true", caps[i].name);
  }
  all = true;
  for (int c = 0; c < NCONN; ++c)
    if (nbd_can_meta_context (h[c], "base:allocation") != 1)
      all = false;
  result (all, "block status (base:allocation) is negotiated");

  if (size == 0) {
    unsigned char b;
    result (nbd_flush (h[0], 0) == 0, "flush on an empty export");
    nbd_set_strict_mode (h[1], 0);          /* let the server judge */
    result (nbd_pread (h[1], &b, 1, 0, 0) == -1, "reading 1 byte of an empty export fails");
    result (nbd_pwrite (h[1], &b, 1, 0, 0) == -1, "writing 1 byte of an empty export fails");
    result (nbd_zero (h[1], 1, 0, 0) == -1, "zeroing 1 byte of an empty export fails");
  }
  else {
    pthread_barrier_init (&barrier, NULL, NCONN + 1);
    struct worker w[NCONN];
    pthread_t t[NCONN];
    uint64_t rng = seed ^ 0xD1B54A32D192ED03ULL;
    for (int c = 0; c < NCONN; ++c) {
      w[c] = (struct worker) { .c = c, .seed = seed, .rounds = rounds, .ops = ops };
      pthread_create (&t[c], NULL, worker_main, &w[c]);
    }
    for (unsigned r = 0; r < rounds; ++r) {
      new_partition (&rng, r);
      pthread_barrier_wait (&barrier);        /* partition made */
      for (unsigned sub = 0; sub < subrounds; ++sub) {
        if (sub > 0 && nbd_zero (h[0], win_hi - win_lo, win_lo, 0) == -1)
          failure ("reset zero [%" PRIu64 ", %" PRIu64 "): %s", win_lo, win_hi,
                   nbd_get_error ());
        if (sub > 0)
          memset (model + win_lo, 0, win_hi - win_lo);
        pthread_barrier_wait (&barrier);      /* go */
        pthread_barrier_wait (&barrier);      /* writes done */
      }
      pthread_barrier_wait (&barrier);        /* cross-checks done */
    }
    for (int c = 0; c < NCONN; ++c)
      pthread_join (t[c], NULL);
    for (int c = 0; c < NCONN; ++c) {
      totals.pwrite += w[c].n.pwrite; totals.zero += w[c].n.zero;
      totals.fast_zero += w[c].n.fast_zero; totals.fua += w[c].n.fua;
      totals.trim += w[c].n.trim; totals.pread += w[c].n.pread;
      totals.flush += w[c].n.flush; totals.cache += w[c].n.cache; totals.bs += w[c].n.bs;
    }
    diag ("ops: %lu pwrite, %lu zero (%lu fast), %lu trim, %lu fua, %lu pread, %lu flush,"
          " %lu cache, %lu block status", totals.pwrite, totals.zero, totals.fast_zero,
          totals.trim, totals.fua, totals.pread, totals.flush, totals.cache, totals.bs);
    unsigned nf = atomic_load (&failures);
    result (nf == 0, "%u rounds x %u ops x %d connections: every read, cross-check, block"
            " status and the final full reads match the model (%u errors)",
            rounds, ops, NCONN, nf);
  }

  if (dump) {
    FILE *d = fopen (dump, "wb");
    bool good = d && (size == 0 || fwrite (model, 1, size, d) == size);
    if (d && fclose (d) != 0)
      good = false;
    if (!good)
      diag ("error: cannot write %s", dump);
  }
  for (int c = 0; c < NCONN; ++c) {
    nbd_shutdown (h[c], 0);
    nbd_close (h[c]);
  }
  free (model);
  return atomic_load (&failures) ? 1 : 0;
}
