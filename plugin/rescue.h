/* luacow: the rescue file, the overlay's last way out at exit.
 *
 * When the policy or its exit save fails, the overlay goes to a file of
 * our own under a fresh name, luacow-rescue-<time>-<pid>-<random>.qcow2
 * (luacow-rescue-<export>-<time>-... for an export other than the default
 * "", its name in exportname.h's file-name form),
 * in the start directory, else in $TMPDIR (default /var/tmp).  When no
 * such file can be written the loss is reported on every channel there
 * is: nbdkit's log, stderr and syslog.  nbdkit 1.32 gives a filter no way
 * to change its exit status (main returns EXIT_SUCCESS after unloading
 * everything, and with --run the status is the command's), so the exit
 * status cannot say it.
 */
#ifndef LUACOW_RESCUE_H
#define LUACOW_RESCUE_H

#include <stdint.h>

#include "overlay.h"

struct rescue_setup {
  struct overlay *ov;
  const struct ov_lower *lower;
  const char *cwd;            /* the start directory */
  uint32_t cluster_size;      /* the policy's, the fallback */
  const char *export;         /* its name (the client's) */
};

/* Save the overlay to a rescue file, why being the failure that led here.
 * Returns 0 (saved, or nothing to save) or -1 (lost, and said so).
 */
int rescue_overlay (const struct rescue_setup *s, const char *why);

/* Report that export's overlay is lost, on every channel. */
void rescue_lost (const char *export, const char *why);

#endif
