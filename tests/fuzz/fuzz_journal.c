/* libFuzzer target for journal recovery: the input is a journal file.
 * The overlay opens it (in memory) as it would after a crash: a valid
 * journal recovers, anything else is refused with one line; then every
 * block of the recovered overlay is read.
 *
 * Built with -DSEED_MAIN it is instead a program that writes a few valid
 * journals (seeds) into the directory given as its argument.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "journal_format.h"
#include "overlay.h"

#define MAX_FILE ((uint64_t) 1 << 30)

struct memfile { unsigned char *p; uint64_t len, cap, size; };

static int
m_pwrite (void *h, const void *buf, size_t n, uint64_t off)
{
  struct memfile *m = h;
  if (off + n > MAX_FILE)
    return -1;
  if (off + n > m->cap) {
    uint64_t cap = m->cap ? m->cap : 65536;
    while (cap < off + n)
      cap *= 2;
    unsigned char *p = realloc (m->p, cap);
    if (!p)
      return -1;
    memset (p + m->cap, 0, cap - m->cap);
    m->p = p;
    m->cap = cap;
  }
  memcpy (m->p + off, buf, n);
  if (off + n > m->len) m->len = off + n;
  if (off + n > m->size) m->size = off + n;
  return 0;
}

static int
m_pread (void *h, void *buf, size_t n, uint64_t off)
{
  struct memfile *m = h;
  memset (buf, 0, n);
  if (off < m->len)
    memcpy (buf, m->p + off, off + n <= m->len ? n : m->len - off);
  return 0;
}

static int m_sync (void *h) { (void) h; return 0; }
static int m_truncate (void *h, uint64_t size)
{ ((struct memfile *) h)->size = size; return size > MAX_FILE ? -1 : 0; }
static int m_punch (void *h, uint64_t off, uint64_t len) { (void) h; (void) off; (void) len; return 0; }
static int m_size (void *h, uint64_t *size) { *size = ((struct memfile *) h)->size; return 0; }
static void m_close (void *h) { (void) h; }

static int
lower_pread (void *h, void *buf, uint32_t count, uint64_t offset, int *err)
{
  (void) h; (void) offset; (void) err;
  memset (buf, 0x5a, count);
  return 0;
}

static struct overlay *
open_mem (struct memfile *m, uint64_t size, uint32_t bs, struct ov_recovery *rec, char *err)
{
  static const struct jio ops = { m_pwrite, m_pread, m_sync, m_truncate, m_punch, m_size,
                                  m_close, NULL };
  struct jio io = ops;
  io.h = m;
  struct ov_options o = { .size = size, .block_size = bs, .journal = "/tmp/luacow-fuzz.journal",
                          .io = &io };
  return overlay_open (&o, rec, err);
}

#ifndef SEED_MAIN
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct memfile m = { 0 };
  if (size == 0 || m_pwrite (&m, data, size, 0) == -1)
    return 0;
  /* Take the geometry from the header when it is plausible, so that
   * inputs get past the first checks.
   */
  uint64_t esize = 1 << 20;
  uint32_t bs = 4096;
  if (size >= 52) {
    uint64_t e = get64 (data + 40);
    uint32_t b = get32 (data + 48);
    if (e > 0 && e <= ((uint64_t) 64 << 20))
      esize = e;
    if (b >= 512 && b <= 4096 && (b & (b - 1)) == 0)
      bs = b;
  }
  struct ov_recovery rec;
  char err[OV_ERRLEN] = "";
  struct overlay *ov = open_mem (&m, esize, bs, &rec, err);
  if (!ov) {
    if (err[0] == '\0' || strchr (err, '\n'))
      abort ();                 /* a refusal is one non-empty line */
  }
  else {
    struct ov_lower lower = { lower_pread, NULL };
    unsigned char *buf = malloc (1 << 16);
    int e;
    for (uint64_t off = 0; off < esize; off += 1 << 16) {
      uint64_t n = esize - off < (1 << 16) ? esize - off : 1 << 16;
      if (overlay_pread (ov, &lower, buf, (uint32_t) n, off, &e) == -1)
        break;
    }
    free (buf);
    overlay_free (ov);
  }
  free (m.p);
  return 0;
}
#else
/* Seeds: journals after a few writes, zeroes and flushes, cut short of
 * their last sync, of three block sizes.
 */
int
main (int argc, char **argv)
{
  if (argc != 2)
    return 2;
  const uint32_t sizes[] = { 4096, 512, 2048 };
  for (int i = 0; i < 6; ++i) {
    struct memfile m = { 0 };
    struct ov_recovery rec;
    char err[OV_ERRLEN];
    uint32_t bs = sizes[i % 3];
    struct overlay *ov = open_mem (&m, 256 << 10, bs, &rec, err);
    if (!ov) {
      fprintf (stderr, "%s\n", err);
      return 1;
    }
    struct ov_lower lower = { lower_pread, NULL };
    unsigned char buf[8192];
    int e;
    for (int k = 0; k < 20 + i * 10; ++k) {
      memset (buf, k, sizeof buf);
      overlay_pwrite (ov, &lower, buf, (uint32_t) (bs * (1 + k % 2)), (uint64_t) (k * 7 % 50) * bs, &e);
      if (k % 5 == 0)
        overlay_zero (ov, &lower, bs * 3, (uint64_t) (k % 40) * bs, &e);
      if (k % 4 == 0)
        overlay_flush (ov, &e);
      if (k % 9 == 0)
        overlay_tick (ov, &e);
    }
    overlay_flush (ov, &e);
    overlay_free (ov);
    char path[4096];
    snprintf (path, sizeof path, "%s/journal-%d", argv[1], i);
    FILE *f = fopen (path, "wb");
    /* The file's written part only (its apparent size is much larger). */
    if (!f || fwrite (m.p, 1, m.len, f) != m.len || fclose (f) != 0)
      return 1;
    free (m.p);
  }
  return 0;
}
#endif
