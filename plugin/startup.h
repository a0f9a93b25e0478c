/* luacow: startup work that is no nbdkit callback, see startup.c. */
#ifndef LUACOW_STARTUP_H
#define LUACOW_STARTUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "overlay.h"
#include "policy.h"

/* Before the plugin is open; each logs its own one-line error. */
int startup_check_reload_file (const char *path);
bool startup_journal_dir_unusable (const char *path);

/* A cluster size some save can use for this export, else -1 with a
 * message that says which ones work.
 */
int startup_check_savable (uint64_t size, uint32_t cs, char *msg, size_t len);

struct startup {
  struct policy *policy;
  uint64_t size;
  uint32_t cluster_size;
  const char *tmpdir;         /* the store without a journal */
  const char *journal;        /* NULL: none */
  char *load_path;            /* what to reload (NULL: nothing); taken over */
  struct overlay *overlay;    /* out */
  char *loaded_path;          /* out: what the overlay is based on (malloc'd) */
};

/* At the first client's connection, reading the plugin through lower:
 * s->overlay recovered from the journal, or fresh with s->load_path
 * reloaded and made durable.  0, or -1 with msg (no overlay then).
 */
int startup_overlay (struct startup *s, const struct ov_lower *lower, char *msg, size_t len);

#endif
