/* luacow: the journal's on-disk format (all integers little-endian).
 *
 *   [0, 4096)      header copy 0     the copy with the higher valid seq
 *   [4096, 8192)   header copy 1     is current; a new header is written
 *                                    over the older copy, then synced
 *   [8192, ...)    slots             overlay data and log segments
 *
 * The log is a chain of segments (runs of slots, JOURNAL_SEGMENT bytes)
 * holding batches.  A batch is a 48-byte header and nrec 32-byte records;
 * a JUMP batch ends a segment and names the next.  Batch seqs go up by one
 * along the chain; a commit is the batches up to one flagged LAST.  The
 * batch CRCs are seeded with the journal's uuid, so stale batches of an
 * earlier log (or of another journal) in reused slots never pass.
 */
#ifndef LUACOW_JOURNAL_FORMAT_H
#define LUACOW_JOURNAL_FORMAT_H

#include <stdint.h>
#include <string.h>

#define JOURNAL_MAGIC_LEN 8    /* "LUACOWJ1", no NUL */
#define JOURNAL_VERSION 1
#define JOURNAL_HEADER_SIZE 4096
#define JOURNAL_DATA_OFFSET 8192
#define JOURNAL_SEGMENT ((uint64_t) 256 << 10)
#define JOURNAL_BASE_PATH_MAX 3900

#define BATCH_MAGIC 0x424a434cu          /* "LCJB" */
#define BATCH_HEADER 48
#define RECORD_SIZE 32

enum batch_kind { BATCH_RECORDS = 1, BATCH_JUMP = 2 };
enum batch_flags { BATCH_LAST = 1 };

/* Record kinds.  STORE's hash is XXH3-64 of the bytes written; it is
 * checked for the last commit only (the one whose sync may not have
 * completed).  SYNCED records were written after their data was synced
 * (snapshots), so they carry no hash.
 */
enum rec_kind { REC_STORE = 1, REC_SYNCED = 2, REC_ZERO = 3, REC_FILE = 4 };

struct jrec {                    /* in memory; 32 bytes on disk */
  uint32_t kind, count;          /* blocks [block, block+count) */
  uint64_t block;
  uint64_t value;                /* first slot, or file offset */
  uint64_t hash;
};

struct jheader {
  uint64_t seq;
  uint8_t uuid[16];
  uint64_t export_size;
  uint32_t block_size, has_base;
  uint64_t log_head, log_seq;    /* first segment's slot, its first batch seq */
  uint64_t base_size;
  uint32_t base_crc;
  uint64_t created;
  char base_path[JOURNAL_BASE_PATH_MAX + 1];
};

struct jbatch {
  uint32_t kind, flags, nrec, recs_crc;
  uint64_t seq, target;          /* target: next segment (JUMP) */
  uint64_t time_us;              /* wall clock at commit */
};

static inline void put32 (unsigned char *p, uint32_t v)
{ for (int i = 0; i < 4; ++i) p[i] = (unsigned char) (v >> (8 * i)); }
static inline void put64 (unsigned char *p, uint64_t v)
{ for (int i = 0; i < 8; ++i) p[i] = (unsigned char) (v >> (8 * i)); }
static inline uint32_t get32 (const unsigned char *p)
{ uint32_t v = 0; for (int i = 3; i >= 0; --i) v = v << 8 | p[i]; return v; }
static inline uint64_t get64 (const unsigned char *p)
{ uint64_t v = 0; for (int i = 7; i >= 0; --i) v = v << 8 | p[i]; return v; }

static inline void
rec_encode (unsigned char *p, const struct jrec *r)
{
  put32 (p, r->kind); put32 (p + 4, r->count);
  put64 (p + 8, r->block); put64 (p + 16, r->value); put64 (p + 24, r->hash);
}

static inline void
rec_decode (const unsigned char *p, struct jrec *r)
{
  r->kind = get32 (p); r->count = get32 (p + 4);
  r->block = get64 (p + 8); r->value = get64 (p + 16); r->hash = get64 (p + 24);
}

/* Header and batch codecs live in journal_format.c (they need the CRC). */
void jheader_encode (unsigned char out[JOURNAL_HEADER_SIZE], const struct jheader *h);
/* 0, or -1 when the copy is not a valid header. */
int jheader_decode (const unsigned char in[JOURNAL_HEADER_SIZE], struct jheader *h);
void jbatch_encode (unsigned char out[BATCH_HEADER], const struct jbatch *b,
                    const uint8_t uuid[16]);
int jbatch_decode (const unsigned char in[BATCH_HEADER], struct jbatch *b,
                   const uint8_t uuid[16]);
uint32_t jrecs_crc (const unsigned char *recs, uint64_t n, const uint8_t uuid[16]);

#endif
