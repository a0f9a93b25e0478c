/* luacow: one overlay per export.
 *
 * Every export name a client opens (and the plugin accepts) gets its own
 * overlay, journal, events and saves, as the cow filter of nbdkit 1.44
 * gives each export its own overlay.  An export is added at its first
 * open, at most luacow-max-exports= of them (past that an open fails and
 * the others are untouched), and kept until exit, when each one with
 * changes is saved.
 *
 * Its overlay is built at its first client's .prepare, through that
 * client's plugin context: the policy's fields for it (disk.export is
 * its name), recovery of its journal or reload of its file.  The default
 * export "" is configured before nbdkit forks, so that a broken journal
 * or file stops the start (exports_init).
 *
 * Two exports never share a file: the journal and the exit save's path
 * are claimed at an export's first open, and every save's path when it
 * is written; a path another export claimed fails that open or save with
 * a one-line error that says to put {export} in it.
 */
#ifndef LUACOW_EXPORTS_H
#define LUACOW_EXPORTS_H

#include <stdbool.h>
#include <stdint.h>

#include <nbdkit-filter.h>

#include "events.h"
#include "overlay.h"
#include "policy.h"

#define EXPORTS_DEFAULT_MAX 64

struct exports_setup {
  struct policy *policy;
  const char *cwd;            /* nbdkit's start directory */
  const char *tmpdir;         /* the store without a journal */
  unsigned mask;              /* events, and their interval */
  double interval;
  double started;
  unsigned max;               /* luacow-max-exports= */
};

struct export;

/* Before the fork: configure the default export "".  0, or -1 logged. */
int exports_init (const struct exports_setup *setup);

/* The plugin through a client's context (handle: its nbdkit_next), as
 * struct ov_lower reads it.
 */
int exports_next_pread (void *handle, void *buf, uint32_t count, uint64_t offset, int *err);

/* The backend through which exit and interval saves open a context. */
void exports_set_backend (nbdkit_backend *b);

/* The export called name, added if new: NULL (logged) past the cap. */
struct export *exports_open (const char *name);

/* At a connection's prepare, with its plugin context: the overlay built
 * at the export's first one, the plugin's size checked at every one.
 */
int export_prepare (struct export *ex, nbdkit_next *next);

/* At a connection's finalize, its plugin context still open: the close
 * event, and at the export's last client what later saves need of the
 * plugin.
 */
void export_finalize (struct export *ex, nbdkit_next *next);

struct overlay *export_overlay (const struct export *ex);
uint32_t export_cluster_size (const struct export *ex);
struct events *export_events (const struct export *ex);
bool export_copy_on_read (const struct export *ex);
bool export_copy_on_cache (const struct export *ex);

/* At exit: every export's exit event (a save, or a rescue file). */
void exports_exit (void);
void exports_free (void);

#endif
