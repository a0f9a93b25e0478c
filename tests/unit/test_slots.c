/* slots.c: free slots come back smallest first, none lost or doubled, and
 * a commit that reclaims a few slots does work for those few, not for
 * every slot already free (a flush after a trim of gigabytes used to sort
 * all the free slots each time).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jio.h"
#include "slots.h"
#include "store.h"
#include "tap.h"

#define FREED 300000u           /* far more than the ring holds */
#define TAKEN 256u
#define BACK 100u

int
main (void)
{
  char dir[] = "/tmp/luacow-slots.XXXXXX";
  if (!mkdtemp (dir))
    return 1;
  int fd = store_tmpfile (dir);
  struct jio io;
  if (fd == -1 || jio_from_fd (&io, fd) == -1)
    return 1;
  struct store *st = store_new (&io, 4096, 0);
  struct slots *sl = st ? slots_new (st) : NULL;
  if (!sl)
    return 1;

  uint64_t first;
  CHECK (slots_take_run (sl, FREED, &first) == 0 && first == 0, "took %u slots from the file", FREED);
  for (uint64_t i = 0; i < FREED; ++i)
    slots_retire (sl, 0, i, false);
  slots_reclaim (sl, 0);
  CHECK (slots_free_count (sl) == FREED, "all %u are free again (%llu)", FREED,
         (unsigned long long) slots_free_count (sl));

  uint64_t out[TAKEN];
  bool ascending = slots_take (sl, TAKEN, out) == 0;
  for (uint64_t i = 0; i < TAKEN && ascending; ++i)
    ascending = out[i] == i;
  CHECK (ascending, "the smallest free slots come first, as one run");

  /* A hundred commits, each reclaiming one slot: their work must not
   * depend on the ~300000 slots already free.
   */
  slots_reclaim (sl, 1);        /* top the ring up first */
  uint64_t w0 = slots_work (sl);
  for (uint64_t i = 0; i < BACK; ++i) {
    slots_retire (sl, 1, out[i], false);
    slots_reclaim (sl, 1);
  }
  uint64_t per = (slots_work (sl) - w0) / BACK;
  CHECK (per <= 64, "a reclaim of one slot takes %llu steps (at most 64)", (unsigned long long) per);

  /* Every free slot comes back exactly once, in ascending order as the
   * reclaimer refills the ring from its spares.
   */
  unsigned char *seen = calloc (FREED, 1);
  uint64_t want = FREED - TAKEN + BACK, got = 0, end0 = slots_end (sl);
  bool once = seen != NULL;
  while (once && slots_free_count (sl) > 0) {
    slots_reclaim (sl, 0);      /* an empty limbo: only refills the ring */
    uint64_t s;
    if (slots_take (sl, 1, &s) == -1 || s >= FREED || seen[s]) {
      once = false;
      break;
    }
    seen[s] = 1;
    got++;
  }
  CHECK (once && got == want && slots_end (sl) == end0,
         "%llu free slots came back once each, none from the file's end",
         (unsigned long long) got);
  bool right = seen != NULL;
  for (uint64_t i = 0; right && i < FREED; ++i)
    right = seen[i] == (i < BACK || i >= TAKEN);
  CHECK (right, "exactly the freed slots");

  free (seen);
  slots_free (sl);
  store_free (st);
  rmdir (dir);
  return TAP_DONE ();
}
