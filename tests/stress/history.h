/* luacow stress: the record of every request that changes the export,
 * shared by the stress client (stress.c, which writes it) and the
 * consistent-cut check of the saves taken under load (cut.c).
 *
 * A record holds when the request was sent and acknowledged on the
 * client's CLOCK_MONOTONIC, and enough to regenerate what it left on the
 * export: zeroes (zero, trim, a write of zeroes), nbdkit's pattern, or
 * random bytes from a seed.
 *
 * History file: "LCWHIST1", then native uint64 size, int64 offset_ns,
 * uint64 nseen, uint64 nops, int64 seen[nseen], struct op_rec[nops].
 * offset_ns bounds CLOCK_REALTIME - CLOCK_MONOTONIC from above (to place
 * the policy's ctx.now, a CLOCK_REALTIME value, on the client's clock);
 * seen[i] is when the client first saw line i of the saves log (the
 * saved hook writes it after the save, so that is after the save).
 */
#ifndef LUACOW_STRESS_HISTORY_H
#define LUACOW_STRESS_HISTORY_H

#include <stdint.h>
#include <string.h>
#include <time.h>

#define HIST_MAGIC "LCWHIST1"
#define NEVER INT64_MAX             /* a request never acknowledged */

enum { H_ZERO, H_PATTERN, H_RANDOM };

struct op_rec {
  int64_t s, a;                 /* sent, acknowledged (ns); s < a */
  uint64_t off, dseed;          /* dseed: H_RANDOM's seed */
  uint32_t len, kind;
};

/* nbdkit's pattern plugin: each 8-byte word holds its offset, big endian. */
static inline void
pattern_fill (unsigned char *p, uint64_t off, uint64_t len)
{
  for (uint64_t i = 0; i < len; ++i) {
    uint64_t o = off + i, word = o & ~(uint64_t) 7;
    p[i] = (unsigned char) (word >> (8 * (7 - (o & 7))));
  }
}

static inline void
random_fill (unsigned char *p, uint64_t len, uint64_t dseed)
{
  uint64_t x = dseed | 1;
  for (uint64_t i = 0; i < len; i += 8) {
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    uint64_t v = x * 0x2545F4914F6CDD1DULL;
    memcpy (p + i, &v, len - i < 8 ? len - i : 8);
  }
}

/* What request r left in [r->off, r->off + r->len): into buf. */
static inline void
op_fill (const struct op_rec *r, unsigned char *buf)
{
  if (r->kind == H_PATTERN) pattern_fill (buf, r->off, r->len);
  else if (r->kind == H_RANDOM) random_fill (buf, r->len, r->dseed);
  else memset (buf, 0, r->len);
}

/* cut.c: the check of stress -C. */
int cut_main (const char *hist_path, const char *log_path, const char *initial_path,
              const char *dir, int keep);

/* record.c: recording a run (record: 0, or -1 out of memory). */
int64_t clock_ns (clockid_t c);
int record (unsigned id, int64_t s, int64_t a, uint64_t off, uint64_t len, unsigned kind,
            uint64_t dseed);
int record_start (const char *log_path);        /* starts reading the log */
void poll_log (void);
void last_saved (char out[4096]);
int record_finish (const char *hist_path, uint64_t size, unsigned nconn);

#endif
