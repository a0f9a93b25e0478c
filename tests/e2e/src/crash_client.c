/* A crash-test client for the journal (tests/e2e/journal_crash.sh).
 *
 *   crash_client SOCKET STATE NCONN SECONDS
 *
 * 1. Verify: every 4 KiB block the server shows must be one of the
 *    versions STATE allows (no STATE: anything; the base is adopted).
 * 2. Prints "RUNNING" and runs NCONN connections of random writes
 *    (aligned and not), zeroes, trims, flushes and FUA writes for at most
 *    SECONDS, each connection in its own region, one request at a time,
 *    until the server goes away (it is SIGKILLed).
 * 3. Writes STATE for the next run: per block, the versions that may
 *    survive: the value at the connection's last acknowledged flush (or a
 *    later acknowledged FUA write), and every later version, including
 *    the one of the request in flight when the server died.
 * Prints "PASS what" / "FAIL what"; exits 1 on any failure.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libnbd.h>
#include <xxhash.h>

#define BS 4096
#define MAXV 24

struct block { uint64_t v[MAXV]; unsigned n; };

static const char *sock;
static uint64_t size, nblocks;
static unsigned char *cur;          /* what the server holds now (per our model) */
static struct block *blocks;
static unsigned nconn;
static double seconds;

static uint64_t
hash_block (uint64_t b)
{
  return XXH64 (cur + b * BS, BS, 0);
}

static void
set_floor (uint64_t b)              /* this value is durable */
{
  blocks[b].v[0] = hash_block (b);
  blocks[b].n = 1;
}

static void
add_version (uint64_t b)
{
  struct block *k = &blocks[b];
  if (k->n == MAXV) {               /* cannot happen: flushes bound it */
    fprintf (stderr, "too many versions\n");
    exit (2);
  }
  k->v[k->n++] = hash_block (b);
}

static double
now (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct nbd_handle *
connect_one (void)
{
  struct nbd_handle *h = nbd_create ();
  if (!h || nbd_connect_unix (h, sock) == -1) {
    fprintf (stderr, "connect: %s\n", nbd_get_error ());
    exit (2);
  }
  return h;
}

static int
load_state (const char *path)
{
  FILE *f = fopen (path, "rb");
  if (!f)
    return 0;
  uint64_t n;
  if (fread (&n, sizeof n, 1, f) != 1 || n != nblocks ||
      fread (blocks, sizeof *blocks, nblocks, f) != nblocks) {
    fprintf (stderr, "bad state file\n");
    exit (2);
  }
  fclose (f);
  return 1;
}

static void
save_state (const char *path)
{
  FILE *f = fopen (path, "wb");
  if (!f || fwrite (&nblocks, sizeof nblocks, 1, f) != 1 ||
      fwrite (blocks, sizeof *blocks, nblocks, f) != nblocks || fclose (f) != 0) {
    perror (path);
    exit (2);
  }
}

/* Read everything; check it against the state; adopt it as the model. */
static bool
verify (bool have_state)
{
  struct nbd_handle *h = connect_one ();
  uint64_t bad = 0, first = 0;
  for (uint64_t off = 0; off < size; off += 1 << 20) {
    uint64_t n = size - off < (1 << 20) ? size - off : 1 << 20;
    if (nbd_pread (h, cur + off, n, off, 0) == -1) {
      fprintf (stderr, "read: %s\n", nbd_get_error ());
      exit (2);
    }
  }
  for (uint64_t b = 0; b < nblocks; ++b) {
    uint64_t x = hash_block (b);
    bool ok = !have_state;
    for (unsigned k = 0; k < blocks[b].n && !ok; ++k)
      ok = blocks[b].v[k] == x;
    if (!ok && bad++ == 0)
      first = b;
    set_floor (b);
  }
  nbd_shutdown (h, 0);
  nbd_close (h);
  if (bad)
    printf ("FAIL %" PRIu64 " blocks hold none of their allowed versions (first: block %" PRIu64
            ", %u allowed)\n", bad, first, blocks[first].n);
  else if (have_state)
    printf ("PASS every block of %" PRIu64 " is its last flushed value or a later write's\n",
            nblocks);
  return bad == 0;
}

struct worker { unsigned id; uint64_t seed, ops, flushes, fua; };

static uint64_t
rnd (uint64_t *s)
{
  *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
  return *s;
}

/* Versions of the blocks [off, off+len) touches after cur was updated. */
static void
versions (uint64_t off, uint64_t len, bool floor)
{
  for (uint64_t b = off / BS; b <= (off + len - 1) / BS; ++b) {
    if (floor)
      set_floor (b);
    else
      add_version (b);
  }
}

static void *
work (void *arg)
{
  struct worker *w = arg;
  struct nbd_handle *h = connect_one ();
  uint64_t region = nblocks / nconn, b0 = w->id * region;
  unsigned char *buf = malloc (16 * BS);
  double end = now () + seconds;
  bool alive = true;
  while (alive && now () < end) {
    uint64_t r = rnd (&w->seed) % 100, off, len;
    int rc;
    if (r < 60) {                    /* write, 1 in 4 unaligned, 1 in 6 FUA */
      off = (b0 + rnd (&w->seed) % (region - 16)) * BS;
      len = (1 + rnd (&w->seed) % 16) * BS;
      if (r % 4 == 0) {
        off += rnd (&w->seed) % BS;
        len = 1 + rnd (&w->seed) % (2 * BS);
      }
      for (uint64_t i = 0; i < len; ++i)
        buf[i] = (unsigned char) rnd (&w->seed);
      bool fua = r % 6 == 0;
      rc = nbd_pwrite (h, buf, len, off, fua ? LIBNBD_CMD_FLAG_FUA : 0);
      memcpy (cur + off, buf, len);
      versions (off, len, rc == 0 && fua);
      w->fua += rc == 0 && fua;
    }
    else if (r < 80) {               /* zero or trim, sometimes unaligned */
      off = (b0 + rnd (&w->seed) % (region - 64)) * BS + (r % 3 == 0 ? rnd (&w->seed) % BS : 0);
      len = (1 + rnd (&w->seed) % 64) * BS - (off % BS);
      rc = r < 70 ? nbd_zero (h, len, off, 0) : nbd_trim (h, len, off, 0);
      memset (cur + off, 0, len);
      versions (off, len, false);
    }
    else if (r < 88) {               /* flush: everything before is durable */
      rc = nbd_flush (h, 0);
      if (rc == 0) {
        for (uint64_t b = b0; b < b0 + region; ++b)
          set_floor (b);
        w->flushes++;
      }
    }
    else {                           /* read back something of ours */
      off = (b0 + rnd (&w->seed) % (region - 16)) * BS;
      len = 16 * BS;
      rc = nbd_pread (h, buf, len, off, 0);
      if (rc == 0 && memcmp (buf, cur + off, len) != 0) {
        printf ("FAIL connection %u read back other data at %" PRIu64 "\n", w->id, off);
        exit (1);
      }
    }
    if (rc == -1)
      alive = false;                 /* the server is gone */
    else
      w->ops++;
    /* Keep the versions bounded: flush when a block has many. */
    for (uint64_t b = b0; alive && b < b0 + region; ++b)
      if (blocks[b].n >= MAXV - 20) {
        if (nbd_flush (h, 0) == -1) { alive = false; break; }
        for (uint64_t k = b0; k < b0 + region; ++k)
          set_floor (k);
        break;
      }
  }
  free (buf);
  nbd_close (h);
  return NULL;
}

int
main (int argc, char **argv)
{
  if (argc != 5) {
    fprintf (stderr, "usage: crash_client SOCKET STATE NCONN SECONDS\n");
    return 2;
  }
  sock = argv[1];
  nconn = (unsigned) atoi (argv[3]);
  seconds = atof (argv[4]);
  struct nbd_handle *h = connect_one ();
  int64_t s = nbd_get_size (h);
  nbd_close (h);
  if (s <= 0 || s % BS) {
    fprintf (stderr, "export size must be a multiple of 4 KiB\n");
    return 2;
  }
  size = (uint64_t) s;
  nblocks = size / BS;
  cur = malloc (size);
  blocks = calloc (nblocks, sizeof *blocks);
  bool ok = verify (load_state (argv[2]));
  printf ("RUNNING\n");
  fflush (stdout);
  if (seconds > 0) {
    pthread_t t[16];
    struct worker w[16];
    for (unsigned i = 0; i < nconn && i < 16; ++i) {
      w[i] = (struct worker) { .id = i, .seed = (uint64_t) time (NULL) * 7919 + i * 104729 + 1 };
      pthread_create (&t[i], NULL, work, &w[i]);
    }
    uint64_t ops = 0, fl = 0, fua = 0;
    for (unsigned i = 0; i < nconn && i < 16; ++i) {
      pthread_join (t[i], NULL);
      ops += w[i].ops; fl += w[i].flushes; fua += w[i].fua;
    }
    printf ("# %" PRIu64 " requests acknowledged (%" PRIu64 " flushes, %" PRIu64 " FUA writes)\n",
            ops, fl, fua);
  }
  save_state (argv[2]);
  return ok ? 0 : 1;
}
