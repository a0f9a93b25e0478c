/* luacow: events -> policy -> save.
 *
 * Decides, through the policy, whether and where to save at "exit" and at
 * the extra events the policy asked for ("flush", "close", "interval"),
 * runs the save from a point-in-time view of the overlay (writers never
 * wait for a save), writes a rescue file at exit when the policy fails, and logs.
 */
#ifndef LUACOW_EVENTS_H
#define LUACOW_EVENTS_H

#include <stdint.h>

#include "overlay.h"
#include "policy.h"

struct events_setup {
  struct overlay *ov;
  struct policy *policy;
  const struct ov_lower *lower;   /* for interval and exit saves */
  void (*lower_done) (void);      /* called after each save through lower */
  uint32_t cluster_size;
  const char *cwd;
  const char *loaded;             /* path reloaded at start, or NULL */
  unsigned mask;                  /* EVENT_* the policy listed */
  double interval;
  double started;                 /* seconds since the epoch */
};

/* Starts the interval thread when asked for.  Returns 0 or -1. */
int events_start (const struct events_setup *setup);

/* Whether the policy listed this event. */
int events_wanted (unsigned event);

/* Run the policy for "flush", "close" or "interval", saving if it says
 * so; a save reads the plugin through lower (the client's context; NULL:
 * the setup's).  Returns -1 (errno-style *err) when a save was wanted but
 * failed.
 */
int events_fire (const char *event, const struct ov_lower *lower, int *err);

/* At exit: stop the interval thread, ask the policy, save or rescue. */
void events_exit (void);

#endif
