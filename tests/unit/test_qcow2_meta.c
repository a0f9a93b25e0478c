/* The decoder's metadata range set alone: ranges round up to whole
 * clusters, sort, adjacent ranges are fine and overlapping ones are
 * named, lookups hit exactly the bytes covered, and a set cannot grow
 * past the number of clusters in the file.
 */
#include <stdio.h>
#include <string.h>

#include "qcow2_meta.h"
#include "tap.h"

#define CB 9                    /* 512-byte clusters */

int main (void)
{
  struct qcow2_meta m;
  struct qcow2_err err = { "" };
  const struct qcow2_meta_range *r;
  int ok;

  qcow2_meta_init (&m, CB, 100 * 512);
  ok = qcow2_meta_add (&m, 4096, 1, META_L2, &err) == 0 &&
       qcow2_meta_add (&m, 0, 512, META_HEADER, &err) == 0 &&
       qcow2_meta_add (&m, 1024, 600, META_L1, &err) == 0 &&
       qcow2_meta_add (&m, 2048, 0, META_REFBLOCK, &err) == 0 &&
       qcow2_meta_sort (&m, &err) == 0;
  CHECK (ok && m.n == 3, "3 ranges added out of order (one empty ignored): %s",
         err.msg);
  CHECK (m.n == 3 && m.r[0].start == 0 && m.r[1].start == 1024 &&
         m.r[1].end == 2048 && m.r[2].start == 4096 && m.r[2].end == 4608,
         "sorted, lengths rounded up to whole clusters");

  r = qcow2_meta_find (&m, 512, 512);
  CHECK (r == NULL, "the free cluster between header and L1 is free");
  r = qcow2_meta_find (&m, 2047, 1);
  CHECK (r && r->kind == META_L1, "the last byte of the L1 range is found");
  r = qcow2_meta_find (&m, 2048, 2048);
  CHECK (r == NULL, "[2048, 4096) touches nothing");
  r = qcow2_meta_find (&m, 2048, 2049);
  CHECK (r && r->kind == META_L2, "one more byte reaches the L2 table");
  r = qcow2_meta_find (&m, 600, 5000);
  CHECK (r && (r->kind == META_L1 || r->kind == META_L2),
         "a span over two ranges finds one of them");
  r = qcow2_meta_find (&m, 4608, 512);
  CHECK (r == NULL, "past the last range: free");
  CHECK (!strcmp (qcow2_meta_name (META_L1), "the L1 table") &&
         !strcmp (qcow2_meta_name ((enum qcow2_meta_kind) 99), "metadata"),
         "names, and a safe name for an unknown kind");
  qcow2_meta_free (&m);

  qcow2_meta_init (&m, CB, 100 * 512);
  err.msg[0] = '\0';
  ok = qcow2_meta_add (&m, 1024, 1024, META_REFTABLE, &err) == 0 &&
       qcow2_meta_add (&m, 1536, 512, META_SNAPSHOT_L1, &err) == 0 &&
       qcow2_meta_sort (&m, &err) == -1;
  CHECK (ok && strstr (err.msg, "a snapshot L1 table at 0x600 overlaps the "
                       "refcount table at 0x400") && !strchr (err.msg, '\n'),
         "overlap refused, both named: %s", err.msg);
  qcow2_meta_free (&m);

  /* A 4-cluster file holds at most 5 ranges (header counted once). */
  qcow2_meta_init (&m, CB, 4 * 512);
  err.msg[0] = '\0';
  for (int i = 0; i < 5; i++)
    ok = qcow2_meta_add (&m, 0, 512, META_L2, &err) == 0;
  CHECK (ok, "as many ranges as the file has clusters (+1)");
  ok = qcow2_meta_add (&m, 0, 512, META_L2, &err) == -1;
  CHECK (ok && strstr (err.msg, "more metadata clusters than the file holds"),
         "one more is refused before any allocation: %s", err.msg);
  qcow2_meta_free (&m);
  CHECK (m.r == NULL && m.n == 0, "freed set is empty");
  return TAP_DONE ();
}
