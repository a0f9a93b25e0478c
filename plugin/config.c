/* luacow: the command line, see config.h. */
#include <dlfcn.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "config.h"

#define MAX_PARAMS 64
#define MAX_HELD 64

/* nbdkit's plugins whose first parameter must be script=. */
static const char *const scripting[] = { "sh", "lua", "perl", "python", "ruby", "tcl", "cc" };

struct held_param { char *key, *value; };

static struct policy_param params[MAX_PARAMS];
static size_t nparams;
static struct held_param held[MAX_HELD];
static size_t nheld;
static size_t candidate = SIZE_MAX;   /* index in held of the policy's script= */
static size_t nscripts;               /* script= seen */
static char *luacow_script;           /* luacow-script=, absolute */
static char *policy_script;           /* what config_settle chose */
static char plugin[64];               /* the plugin's name, "" until looked up */
static int plugin_scripting = -2;     /* -2 not looked up, -1 unknown, 0, 1 */
static nbdkit_next_config *config_next;
static nbdkit_backend *config_nxdata;
static uint32_t cow_block_size;
static enum cow_read_mode cow_on_read = COW_READ_OFF;
static char *cow_read_path;
static bool cow_on_cache;

static char *
absolute (const char *path)
{
  char cwd[PATH_MAX], *r;
  if (path[0] == '/' || !getcwd (cwd, sizeof cwd))
    return strdup (path);
  if (asprintf (&r, "%s/%s", strcmp (cwd, "/") == 0 ? "" : cwd, path) == -1)
    return NULL;
  return r;
}

/* Whether the plugin nbdkit loaded takes script= itself: 1, 0, or -1 if
 * it cannot be found.
 */
static int
plugin_takes_script (void)
{
  if (plugin_scripting != -2)
    return plugin_scripting;
  plugin_scripting = -1;
  void *sym = dlsym (RTLD_DEFAULT, "plugin_init");
  Dl_info info;
  if (!sym || !dladdr (sym, &info) || !info.dli_fname)
    return plugin_scripting;
  const char *base = strrchr (info.dli_fname, '/');
  base = base ? base + 1 : info.dli_fname;
  size_t n = strlen (base);
  const char *suffix = "-plugin.so";
  if (strncmp (base, "nbdkit-", 7) == 0 && n > 7 + strlen (suffix) &&
      strcmp (base + n - strlen (suffix), suffix) == 0)
    snprintf (plugin, sizeof plugin, "%.*s", (int) (n - 7 - strlen (suffix)), base + 7);
  else
    snprintf (plugin, sizeof plugin, "%s", base);
  plugin_scripting = 0;
  for (size_t i = 0; i < sizeof scripting / sizeof *scripting; ++i)
    if (strcmp (plugin, scripting[i]) == 0)
      plugin_scripting = 1;
  nbdkit_debug ("luacow: the plugin is %s (%s), which %s script=", plugin, info.dli_fname,
                plugin_scripting ? "takes" : "does not take");
  return plugin_scripting;
}

static int
hold (const char *key, const char *value)
{
  if (nheld == MAX_HELD) {
    nbdkit_error ("luacow: too many plugin parameters after the policy's script= (at most %d)",
                  MAX_HELD);
    return -1;
  }
  held[nheld].key = strdup (key);
  held[nheld].value = strdup (value);
  if (!held[nheld].key || !held[nheld].value) {
    nbdkit_error ("luacow: out of memory");
    return -1;
  }
  nheld++;
  return 0;
}

/* cow's own parameters, with cow's meaning and checks.  1: not one. */
static int
cow_key (const char *key, const char *value)
{
  if (strcmp (key, "cow-block-size") == 0) {
    int64_t r = nbdkit_parse_size (value);
    if (r == -1)
      return -1;
    if (r < 4096 || r > UINT_MAX || (r & (r - 1)) != 0) {
      nbdkit_error ("luacow: cow-block-size is out of range (4096..2G) or not a power of 2");
      return -1;
    }
    cow_block_size = (uint32_t) r;
    return 0;
  }
  if (strcmp (key, "cow-on-cache") == 0) {
    int r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    cow_on_cache = r;
    return 0;
  }
  if (strcmp (key, "cow-on-read") == 0) {
    free (cow_read_path);
    cow_read_path = NULL;
    if (value[0] == '/') {
      if (!(cow_read_path = strdup (value)))
        return -1;
      cow_on_read = COW_READ_PATH;
      return 0;
    }
    int r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    cow_on_read = r ? COW_READ_ON : COW_READ_OFF;
    return 0;
  }
  return 1;
}

static int
luacow_param (const char *key, const char *value)
{
  if (strcmp (key, "luacow-script") == 0) {
    if (luacow_script) {
      nbdkit_error ("luacow: luacow-script= given twice");
      return -1;
    }
    if (value[0] == '\0') {
      nbdkit_error ("luacow: luacow-script= is empty: give the Lua policy's file name");
      return -1;
    }
    luacow_script = absolute (value);
    return luacow_script ? 0 : -1;
  }
  for (size_t i = 0; i < nparams; ++i)
    if (strcmp (params[i].name, key + 7) == 0) {
      nbdkit_error ("luacow: %s given twice", key);
      return -1;
    }
  if (nparams == MAX_PARAMS) {
    nbdkit_error ("luacow: too many luacow-* parameters (at most %d)", MAX_PARAMS);
    return -1;
  }
  params[nparams].name = strdup (key + 7);
  params[nparams].value = strdup (value);
  if (!params[nparams].name || !params[nparams].value)
    return -1;
  nparams++;
  return 0;
}

int
config_key (nbdkit_next_config *next, nbdkit_backend *nxdata,
            const char *key, const char *value)
{
  int r = cow_key (key, value);
  if (r != 1)
    return r;
  if (strncmp (key, "luacow-", 7) == 0 && key[7] != '\0')
    return luacow_param (key, value);
  bool is_script = strcmp (key, "script") == 0;
  if (is_script)
    nscripts++;
  if (is_script && candidate == SIZE_MAX && !luacow_script) {
    int takes = plugin_takes_script ();
    /* The plugin's own script= goes down at once: it must be its first. */
    if (takes == 1 && nscripts == 1)
      return next (nxdata, key, value);
    if (takes == -1) {
      nbdkit_error ("luacow: cannot tell whether the plugin takes script= itself; "
                    "name the policy with luacow-script=FILE");
      return -1;
    }
    config_next = next;
    config_nxdata = nxdata;
    candidate = nheld;
    return hold (key, value);
  }
  if (candidate != SIZE_MAX)
    return hold (key, value);
  return next (nxdata, key, value);
}

/* Everything held goes to the plugin, in order, but the policy's script=
 * (skip), unless luacow-script= named the policy after all.
 */
static int
pass_held (size_t skip)
{
  for (size_t i = 0; i < nheld; ++i)
    if (i != skip && config_next (config_nxdata, held[i].key, held[i].value) == -1)
      return -1;
  return 0;
}

int
config_settle (struct luacow_config *out)
{
  *out = (struct luacow_config) {
    .params = params, .nparams = nparams, .cow_block_size = cow_block_size,
    .cow_on_read = cow_on_read, .cow_read_path = cow_read_path, .cow_on_cache = cow_on_cache,
  };
  if (candidate == SIZE_MAX || luacow_script) {
    out->script = luacow_script;
    return candidate == SIZE_MAX ? 0 : pass_held (SIZE_MAX);
  }
  for (size_t i = candidate + 1; i < nheld; ++i)
    if (strcmp (held[i].key, "script") == 0) {
      if (plugin_scripting == 1)
        nbdkit_error ("luacow: script= given %zu times: the %s plugin takes the first, the "
                      "second is the policy, and the rest is ambiguous; name the policy with "
                      "luacow-script=FILE (then every script= goes to the plugin)",
                      nscripts, plugin);
      else
        nbdkit_error ("luacow: script= given twice: the %s plugin takes no script=, so "
                      "script= names the policy; name the policy with luacow-script=FILE "
                      "(then every script= goes to the plugin)", plugin);
      return -1;
    }
  if (held[candidate].value[0] == '\0') {
    nbdkit_error ("luacow: script= is empty: give the Lua policy's file name");
    return -1;
  }
  if (!(policy_script = absolute (held[candidate].value))) {
    nbdkit_error ("luacow: out of memory");
    return -1;
  }
  out->script = policy_script;
  return pass_held (candidate);
}

void
config_free (void)
{
  free (luacow_script);
  free (policy_script);
  free (cow_read_path);
  for (size_t i = 0; i < nheld; ++i) {
    free (held[i].key);
    free (held[i].value);
  }
  for (size_t i = 0; i < nparams; ++i) {
    free ((char *) params[i].name);
    free ((char *) params[i].value);
  }
}
