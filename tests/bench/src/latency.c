/* Latency probes for make bench.
 *
 *   latency flush SOCKET N SPAN
 *     N times: a 4 KiB write at a random offset below SPAN, then a flush;
 *     prints "median_ms p99_ms" of the flushes (and, when LATENCY_SAMPLES
 *     names a file, writes every flush's ms there, one a line, in order).
 *   latency checkpoint SOCKET SPAN
 *     one connection writes 4 KiB at random offsets below SPAN, one at a
 *     time, while another sends one flush (which makes the policy save);
 *     prints "p99_ms max_ms writes flush_ms" for the writes that were
 *     sent while that flush was outstanding.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libnbd.h>

static double
now (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static struct nbd_handle *
connect_to (const char *sock)
{
  struct nbd_handle *h = nbd_create ();
  if (!h || nbd_connect_unix (h, sock) == -1) {
    fprintf (stderr, "latency: %s\n", nbd_get_error ());
    exit (1);
  }
  return h;
}

static int
cmp (const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;
  return x < y ? -1 : x > y;
}

static double
pct (double *v, size_t n, double p)
{
  qsort (v, n, sizeof *v, cmp);
  size_t i = (size_t) (p * (double) (n - 1) + 0.5);
  return v[i < n ? i : n - 1];
}

static uint64_t
rnd (uint64_t *s)
{
  *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
  return *s;
}

static int
flush_mode (const char *sock, long n, uint64_t span)
{
  struct nbd_handle *h = connect_to (sock);
  static char buf[4096];
  double *lat = malloc ((size_t) n * sizeof *lat);
  uint64_t s = 88172645463325252ull;
  for (long i = 0; i < n; ++i) {
    memset (buf, (int) i, sizeof buf);
    if (nbd_pwrite (h, buf, sizeof buf, (rnd (&s) % (span / 4096)) * 4096, 0) == -1)
      goto err;
    double t0 = now ();
    if (nbd_flush (h, 0) == -1)
      goto err;
    lat[i] = (now () - t0) * 1000;
  }
  const char *dump = getenv ("LATENCY_SAMPLES");
  FILE *f = dump ? fopen (dump, "w") : NULL;
  for (long i = 0; f && i < n; ++i)
    fprintf (f, "%.4f\n", lat[i]);
  if (f)
    fclose (f);
  printf ("%.3f %.3f\n", pct (lat, (size_t) n, 0.5), pct (lat, (size_t) n, 0.99));
  nbd_close (h);
  return 0;
 err:
  fprintf (stderr, "latency: %s\n", nbd_get_error ());
  return 1;
}

struct probe {
  const char *sock;
  uint64_t span;
  _Atomic int stop;
  _Atomic double flush_start, flush_end;   /* 0: not yet */
  double *sent, *took;
  size_t n, cap;
};

static void *
writer (void *arg)
{
  struct probe *p = arg;
  struct nbd_handle *h = connect_to (p->sock);
  static char buf[4096];
  uint64_t s = 2463534242ull;
  while (!atomic_load (&p->stop)) {
    if (p->n == p->cap) {
      p->cap = p->cap ? p->cap * 2 : 65536;
      p->sent = realloc (p->sent, p->cap * sizeof *p->sent);
      p->took = realloc (p->took, p->cap * sizeof *p->took);
    }
    memset (buf, (int) p->n, sizeof buf);
    double t0 = now ();
    if (nbd_pwrite (h, buf, sizeof buf, (rnd (&s) % (p->span / 4096)) * 4096, 0) == -1) {
      fprintf (stderr, "latency: %s\n", nbd_get_error ());
      exit (1);
    }
    p->sent[p->n] = t0;
    p->took[p->n] = (now () - t0) * 1000;
    p->n++;
  }
  nbd_close (h);
  return NULL;
}

static int
checkpoint_mode (const char *sock, uint64_t span)
{
  struct probe p = { .sock = sock, .span = span };
  struct nbd_handle *h = connect_to (sock);
  pthread_t t;
  pthread_create (&t, NULL, writer, &p);
  usleep (500000);
  double fs = now ();
  if (nbd_flush (h, 0) == -1) {
    fprintf (stderr, "latency: flush: %s\n", nbd_get_error ());
    return 1;
  }
  double fe = now ();
  usleep (200000);
  atomic_store (&p.stop, 1);
  pthread_join (t, NULL);
  nbd_close (h);
  double *during = malloc ((p.n ? p.n : 1) * sizeof *during);
  size_t k = 0;
  double worst = 0;
  for (size_t i = 0; i < p.n; ++i)
    if (p.sent[i] >= fs && p.sent[i] <= fe) {
      during[k++] = p.took[i];
      if (p.took[i] > worst)
        worst = p.took[i];
    }
  if (k == 0) {
    fprintf (stderr, "latency: no write was sent during the save\n");
    return 1;
  }
  printf ("%.3f %.3f %zu %.0f\n", pct (during, k, 0.99), worst, k, (fe - fs) * 1000);
  return 0;
}

int
main (int argc, char **argv)
{
  if (argc == 5 && strcmp (argv[1], "flush") == 0)
    return flush_mode (argv[2], atol (argv[3]), strtoull (argv[4], NULL, 0));
  if (argc == 4 && strcmp (argv[1], "checkpoint") == 0)
    return checkpoint_mode (argv[2], strtoull (argv[3], NULL, 0));
  fprintf (stderr, "usage: latency flush SOCKET N SPAN | latency checkpoint SOCKET SPAN\n");
  return 2;
}
