/* luacow: journal header and batch codecs, see journal_format.h. */
#include <zlib.h>

#include "journal_format.h"

static const unsigned char magic[JOURNAL_MAGIC_LEN] = { 'L', 'U', 'A', 'C', 'O', 'W', 'J', '1' };

static uint32_t
crc (uint32_t seed, const void *p, uint64_t n)
{
  const unsigned char *b = p;
  while (n > 0) {                /* zlib takes uInt lengths */
    uInt k = n > (1u << 30) ? 1u << 30 : (uInt) n;
    seed = (uint32_t) crc32 (seed, b, k);
    b += k; n -= k;
  }
  return seed;
}

void
jheader_encode (unsigned char out[JOURNAL_HEADER_SIZE], const struct jheader *h)
{
  size_t plen = strnlen (h->base_path, JOURNAL_BASE_PATH_MAX);
  memset (out, 0, JOURNAL_HEADER_SIZE);
  memcpy (out, magic, sizeof magic);
  put32 (out + 8, JOURNAL_VERSION);
  put64 (out + 16, h->seq);
  memcpy (out + 24, h->uuid, 16);
  put64 (out + 40, h->export_size);
  put32 (out + 48, h->block_size);
  put32 (out + 52, h->has_base);
  put64 (out + 56, h->log_head);
  put64 (out + 64, h->log_seq);
  put64 (out + 72, h->base_size);
  put32 (out + 80, h->base_crc);
  put32 (out + 84, (uint32_t) plen);
  put64 (out + 88, h->created);
  memcpy (out + 104, h->base_path, plen);
  put32 (out + 12, crc (0, out, JOURNAL_HEADER_SIZE));
}

int
jheader_decode (const unsigned char in[JOURNAL_HEADER_SIZE], struct jheader *h)
{
  unsigned char copy[JOURNAL_HEADER_SIZE];
  if (memcmp (in, magic, sizeof magic) != 0 || get32 (in + 8) != JOURNAL_VERSION)
    return -1;
  memcpy (copy, in, sizeof copy);
  put32 (copy + 12, 0);
  if (crc (0, copy, sizeof copy) != get32 (in + 12))
    return -1;
  uint32_t plen = get32 (in + 84);
  if (plen > JOURNAL_BASE_PATH_MAX)
    return -1;
  memset (h, 0, sizeof *h);
  h->seq = get64 (in + 16);
  memcpy (h->uuid, in + 24, 16);
  h->export_size = get64 (in + 40);
  h->block_size = get32 (in + 48);
  h->has_base = get32 (in + 52);
  h->log_head = get64 (in + 56);
  h->log_seq = get64 (in + 64);
  h->base_size = get64 (in + 72);
  h->base_crc = get32 (in + 80);
  h->created = get64 (in + 88);
  memcpy (h->base_path, in + 104, plen);
  h->base_path[plen] = '\0';
  if (memchr (h->base_path, '\0', plen))
    return -1;                 /* a path with a NUL inside is no path */
  return 0;
}

void
jbatch_encode (unsigned char out[BATCH_HEADER], const struct jbatch *b, const uint8_t uuid[16])
{
  memset (out, 0, BATCH_HEADER);
  put32 (out, BATCH_MAGIC);
  put32 (out + 4, b->kind);
  put32 (out + 8, b->flags);
  put32 (out + 12, b->nrec);
  put64 (out + 16, b->seq);
  put64 (out + 24, b->target);
  put64 (out + 32, b->time_us);
  put32 (out + 40, b->recs_crc);
  put32 (out + 44, crc (crc (0, uuid, 16), out, 44));
}

int
jbatch_decode (const unsigned char in[BATCH_HEADER], struct jbatch *b, const uint8_t uuid[16])
{
  if (get32 (in) != BATCH_MAGIC || crc (crc (0, uuid, 16), in, 44) != get32 (in + 44))
    return -1;
  b->kind = get32 (in + 4);
  b->flags = get32 (in + 8);
  b->nrec = get32 (in + 12);
  b->seq = get64 (in + 16);
  b->target = get64 (in + 24);
  b->time_us = get64 (in + 32);
  b->recs_crc = get32 (in + 40);
  return 0;
}

uint32_t
jrecs_crc (const unsigned char *recs, uint64_t n, const uint8_t uuid[16])
{
  return crc (crc (0, uuid, 16), recs, n * RECORD_SIZE);
}
