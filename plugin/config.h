/* luacow: the command line.
 *
 * Takes luacow's own parameters (luacow-script=, luacow-NAME=, and cow's
 * cow-block-size=, cow-on-read=, cow-on-cache=) out of the plugin's, and
 * decides which script= names the policy:
 *
 *   - luacow-script=FILE always names the policy; every script= then goes
 *     to the plugin.
 *   - Otherwise it depends on the plugin.  A scripting plugin (sh, lua,
 *     perl, python, ruby, tcl, cc: nbdkit's plugins whose first parameter
 *     must be script=) keeps the first script=; a second one names the
 *     policy.  With any other plugin the first script= names the policy.
 *   - One script= more than that is ambiguous: an error that says to use
 *     luacow-script=.
 *
 * The plugin is the object nbdkit loaded that defines plugin_init (nbdkit
 * loads it first, with RTLD_GLOBAL); its name is its file's
 * nbdkit-NAME-plugin.so.
 */
#ifndef LUACOW_CONFIG_H
#define LUACOW_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nbdkit-filter.h>

#include "policy.h"

/* cow-on-read=: off, on, or on while a path exists (cow's COR_PATH). */
enum cow_read_mode { COW_READ_OFF, COW_READ_ON, COW_READ_PATH };

struct luacow_config {
  char *script;                       /* the policy (absolute), or NULL */
  const struct policy_param *params;  /* luacow-NAME=VALUE as NAME, VALUE */
  size_t nparams;
  uint32_t cow_block_size;            /* cow-block-size=, 0 if not given */
  enum cow_read_mode cow_on_read;     /* cow-on-read= (default off) */
  const char *cow_read_path;          /* its path, for COW_READ_PATH */
  bool cow_on_cache;                  /* cow-on-cache= (default false) */
};

/* The filter's .config: luacow's keys are taken, the rest passed on (or
 * held, in order, until config_settle knows whose a script= is).
 */
int config_key (nbdkit_next_config *next, nbdkit_backend *nxdata,
                const char *key, const char *value);

/* In .config_complete, before the plugin's: hands the held parameters on
 * and fills *out (valid until config_free).  Returns 0 or -1 (reported).
 */
int config_settle (struct luacow_config *out);

void config_free (void);

#endif
