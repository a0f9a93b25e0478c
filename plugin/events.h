/* luacow: events -> policy -> save.
 *
 * Decides, through the policy, whether and where to save at "exit" and at
 * the extra events the policy asked for ("flush", "close", "interval"),
 * runs the save from a point-in-time view of the overlay (writers never
 * wait for a save), writes a rescue file at exit when the policy fails, and logs.
 * One per export: each has its own saves, its own interval thread, and
 * ctx.export says which it is.
 */
#ifndef LUACOW_EVENTS_H
#define LUACOW_EVENTS_H

#include <stddef.h>
#include <stdint.h>

#include "overlay.h"
#include "policy.h"

struct events_setup {
  struct overlay *ov;
  struct policy *policy;
  const struct policy_disk *disk; /* the export's */
  const char *export;             /* its name (the client's: untrusted) */
  const struct ov_lower *lower;   /* for interval and exit saves */
  void (*lower_done) (void *opaque);  /* called after each save through lower */
  /* May this export write path?  0, or -1 with a message (another
   * export's file).  opaque is lower_done's and claim's.
   */
  int (*claim) (void *opaque, const char *path, char *msg, size_t len);
  void *opaque;
  uint32_t cluster_size;
  const char *cwd;
  const char *loaded;             /* path reloaded at start, or NULL */
  unsigned mask;                  /* EVENT_* the policy listed */
  double interval;
  double started;                 /* seconds since the epoch */
};

/* One export's events. */
struct events;

/* Starts the interval thread when asked for.  NULL on error (logged). */
struct events *events_start (const struct events_setup *setup);

/* Whether the policy listed this event. */
int events_wanted (const struct events *ev, unsigned event);

/* Run the policy for "flush", "close" or "interval", saving if it says
 * so; a save reads the plugin through lower (the client's context; NULL:
 * the setup's).  Returns -1 (errno-style *err) when a save was wanted but
 * failed.
 */
int events_fire (struct events *ev, const char *event, const struct ov_lower *lower,
                 int *err);

/* At exit: stop the interval thread, ask the policy, save or rescue, and
 * free ev.
 */
void events_exit (struct events *ev);

#endif
