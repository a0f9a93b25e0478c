/* luacow: startup work that is no nbdkit callback, see startup.c. */
#ifndef LUACOW_STARTUP_H
#define LUACOW_STARTUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "overlay.h"
#include "policy.h"

/* What the policy says for one export, evaluated once for it. */
struct startup_config {
  char *journal;              /* absolute, or NULL: nothing survives a crash */
  char *load;                 /* what to reload (absolute), or NULL */
  bool cow_read, cow_cache;   /* cow-on-read / cow-on-cache */
  char *cow_read_path;        /* NULL, or: copy reads while it exists */
};

/* Before the plugin is open: the policy's journal, load and cow fields
 * for disk d, and the checks they allow.  0, or -1 with a one-line msg
 * (*c cleared).
 */
int startup_configure (struct policy *p, const struct policy_disk *d, const char *tmpdir,
                       struct startup_config *c, char *msg, size_t len);
void startup_config_clear (struct startup_config *c);

/* A cluster size some save can use for this export, else -1 with a
 * message that says which ones work.
 */
int startup_check_savable (uint64_t size, uint32_t cs, char *msg, size_t len);

struct startup {
  struct policy *policy;
  const struct policy_disk *disk;
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
