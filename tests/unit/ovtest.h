/* An overlay without a journal, for unit tests. */
#ifndef LUACOW_OVTEST_H
#define LUACOW_OVTEST_H
#include <stdio.h>
#include "overlay.h"

static inline struct overlay *
overlay_new (uint64_t size, uint32_t bs, const char *dir)
{
  struct ov_options o = { .size = size, .block_size = bs, .tmpdir = dir };
  struct ov_recovery rec;
  char err[OV_ERRLEN];
  struct overlay *ov = overlay_open (&o, &rec, err);
  if (!ov)
    fprintf (stderr, "overlay_open: %s\n", err);
  return ov;
}
#endif
