/* luacow: nbdkit filter callbacks, in lifecycle order.
 *
 * Each callback hands off: requests to the overlay, events to events.c,
 * policy to policy.c, reloads to load.c.  The plugin below is always opened
 * read-only and never written.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "clock.h"
#include "events.h"
#include "load.h"
#include "overlay.h"
#include "policy.h"

/* -D luacow.verbose=1 logs startup decisions and the overlay's size. */
NBDKIT_DLL_PUBLIC int luacow_debug_verbose = 0;

#define MAX_PARAMS 64
#define DEFAULT_BUDGET 10.0   /* seconds a policy hook may run */

static char *script;                  /* the policy: absolute path, or NULL */
static char *first_script;            /* the first script= (see luacow_config) */
static char *luacow_script;           /* luacow-script=, absolute */
struct held_param { char *key, *value; };
static struct held_param held[MAX_PARAMS];
static size_t nheld;
static nbdkit_next_config *config_next;
static nbdkit_backend *config_nxdata;
static struct policy_param params[MAX_PARAMS];
static size_t nparams;
static char *start_dir;
static struct policy *policy;
static unsigned event_mask;
static double event_interval;

static nbdkit_backend *backend;       /* the plugin, from config_complete on */
static nbdkit_next *shared;           /* plugin context for saves, after the fork */
static uint32_t cluster_size;
static double started_at;
static struct overlay *overlay;
static struct load_result loaded;
static char *loaded_path;
static char *journal_path;            /* NULL: nothing survives a crash */

/* The plugin below, as the overlay reads it. */
static int
next_pread (void *handle, void *buf, uint32_t count, uint64_t offset, int *err)
{
  nbdkit_next *next = handle;
  return next->pread (next, buf, count, offset, 0, err);
}

static void
luacow_unload (void)
{
  overlay_free (overlay);       /* also closes the reloaded file */
  free (loaded_path);
  free (journal_path);
  policy_free (policy);
  if (script != luacow_script)
    free (script);
  free (luacow_script);
  free (first_script);
  for (size_t i = 0; i < nheld; ++i) {
    free (held[i].key);
    free (held[i].value);
  }
  for (size_t i = 0; i < nparams; ++i) {
    free ((char *) params[i].name);
    free ((char *) params[i].value);
  }
  free (start_dir);
}

static char *
absolute (const char *path)
{
  char cwd[PATH_MAX];
  if (path[0] == '/' || !getcwd (cwd, sizeof cwd))
    return strdup (path);
  return policy_resolve (cwd, path);
}

/* The first script= is the policy unless luacow-script= names one, before
 * or after it; every other script= belongs to the plugin (lua, python,
 * perl... take script= themselves, and nbdkit turns a bare script name
 * after the plugin into script=).  Until config_complete knows which it
 * is, the plugin's parameters after that first script= are held back, so
 * the plugin still sees them in their order.
 */

static int
hold (const char *key, const char *value)
{
  if (nheld == MAX_PARAMS) {
    nbdkit_error ("luacow: too many plugin parameters after script= (at most %d)", MAX_PARAMS);
    return -1;
  }
  held[nheld].key = strdup (key);
  held[nheld].value = strdup (value);
  if (!held[nheld].key || !held[nheld].value)
    return -1;
  nheld++;
  return 0;
}

static int
luacow_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
               const char *key, const char *value)
{
  if (strcmp (key, "luacow-script") == 0) {
    if (luacow_script) {
      nbdkit_error ("luacow: luacow-script= given twice");
      return -1;
    }
    luacow_script = absolute (value);
    return luacow_script ? 0 : -1;
  }
  if (strcmp (key, "script") == 0 && !luacow_script && !first_script) {
    first_script = strdup (value);
    config_next = next;
    config_nxdata = nxdata;
    return first_script ? 0 : -1;
  }
  if (strncmp (key, "luacow-", 7) == 0 && key[7] != '\0') {
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
  if (first_script)
    return hold (key, value);
  return next (nxdata, key, value);
}

/* Decide whose the first script= was and hand the held parameters on. */
static int
settle_script (void)
{
  if (!first_script) {
    script = luacow_script;
    return 0;
  }
  if (luacow_script) {
    script = luacow_script;
    if (config_next (config_nxdata, "script", first_script) == -1)
      return -1;
  }
  else if (!(script = absolute (first_script)))
    return -1;
  for (size_t i = 0; i < nheld; ++i)
    if (config_next (config_nxdata, held[i].key, held[i].value) == -1)
      return -1;
  return 0;
}

static double
hook_budget (void)
{
  for (size_t i = 0; i < nparams; ++i)
    if (strcmp (params[i].name, "hook-seconds") == 0) {
      double s = atof (params[i].value);
      return s > 0 ? s : DEFAULT_BUDGET;
    }
  return DEFAULT_BUDGET;
}

/* Load and validate the policy now, before nbdkit forks, so a broken
 * script fails the start with a one-line error.
 */
static int
luacow_config_complete (nbdkit_next_config_complete *next, nbdkit_backend *nxdata)
{
  char err[POLICY_ERRLEN], cwd[PATH_MAX];
  if (settle_script () == -1)
    return -1;
  if (!getcwd (cwd, sizeof cwd) || !(start_dir = strdup (cwd))) {
    nbdkit_error ("luacow: cannot get the current directory: %m");
    return -1;
  }
  policy = policy_new (script, params, nparams, start_dir, hook_budget (), err);
  if (!policy || policy_events (policy, &event_mask, &event_interval, err) == -1) {
    nbdkit_error ("luacow: %s", err);
    return -1;
  }
  if (next (nxdata) == -1)
    return -1;
  backend = nxdata;
  return 0;
}

#define luacow_config_help \
  "script=|luacow-script=<FILE>  Lua policy (default: save/load below).\n" \
  "luacow-save=<FILE>            Default policy: save the overlay here at exit.\n" \
  "luacow-load=<FILE>            Default policy: reload this file at start.\n" \
  "luacow-hook-seconds=<N>       Time budget of each policy hook (default 10).\n" \
  "luacow-<NAME>=<VALUE>         Passed to the policy as params.NAME."

static int
luacow_thread_model (void)
{
  return NBDKIT_THREAD_MODEL_PARALLEL;
}

/* Open a context of our own into the plugin, managed by hand. */
static nbdkit_next *
open_plugin (nbdkit_backend *b)
{
  nbdkit_next *next = nbdkit_next_context_open (b, 1, "", 1);
  /* get_size also makes nbdkit record the size it checks requests by. */
  if (!next || next->prepare (next) == -1 || next->get_size (next) == -1) {
    nbdkit_error ("luacow: cannot open the plugin");
    if (next)
      nbdkit_next_context_close (next);
    return NULL;
  }
  return next;
}

static void
close_plugin (nbdkit_next *next)
{
  next->finalize (next);
  nbdkit_next_context_close (next);
}

/* Still before nbdkit forks and before --run starts its command, so a
 * failure here stops nbdkit with a non-zero status and nothing served:
 * ask the plugin its size, choose the cluster size, build the overlay,
 * reload what the policy names.  The context used is closed again; the
 * one for saves is opened after the fork.
 */
/* One line on stderr, as for the save at exit: nbdkit has not forked. */
static void
log_recovery (const char *journal, const struct ov_recovery *rec)
{
  char when[64] = "no flush";
  time_t t = (time_t) rec->flushed;
  struct tm tm;
  if (rec->flushed > 0 && localtime_r (&t, &tm))
    strftime (when, sizeof when, "the flush at %Y-%m-%d %H:%M:%S", &tm);
  fprintf (stderr, "nbdkit: luacow: recovered journal %s: %" PRIu64 " blocks, %" PRIu64
           " bytes of data, as of %s%s, %.3f s\n", journal, rec->blocks, rec->bytes, when,
           rec->dropped ? " (an unfinished last commit was dropped)" : "", rec->seconds);
}

/* Reload what the policy names into a fresh overlay, and make that
 * starting state durable in the journal.
 */
static int
reload (const struct ov_lower *lower)
{
  char lerr[LOAD_ERRLEN];
  int err;
  if (load_overlay (overlay, lower, loaded_path, &loaded, lerr) == -1) {
    nbdkit_error ("luacow: %s: %s", loaded_path, lerr);
    return -1;
  }
  if (overlay_commit (overlay, &err) == -1) {
    nbdkit_error ("luacow: %s: cannot make the reloaded state durable: %s",
                  journal_path, strerror (err));
    return -1;
  }
  fprintf (stderr, "nbdkit: luacow: reloaded %s: %" PRIu64 " data clusters (%" PRIu64
           " compressed), %" PRIu64 " zero clusters, %" PRIu64 " bytes, %.3f s\n",
           loaded_path, loaded.data_clusters, loaded.compressed_clusters,
           loaded.zero_clusters, loaded.bytes, loaded.seconds);
  return 0;
}

/* The overlay, with its journal when the policy names one: recovered if
 * a crash left it, else fresh with what the policy's load names.
 */
static int
build_overlay (uint64_t size, const struct ov_lower *lower)
{
  char err[POLICY_ERRLEN], oerr[OV_ERRLEN];
  struct ov_recovery rec;
  struct stat st;
  if (policy_journal (policy, &journal_path, err) == -1) {
    nbdkit_error ("luacow: %s", err);
    return -1;
  }
  bool recovering = journal_path && stat (journal_path, &st) == 0 && st.st_size > 0;
  if (!recovering && policy_load (policy, &loaded_path, err) == -1) {
    nbdkit_error ("luacow: %s", err);
    return -1;
  }
  const char *tmpdir = getenv ("TMPDIR");
  struct ov_options o = {
    .size = size, .block_size = cluster_size < 4096 ? cluster_size : 4096,
    .tmpdir = tmpdir && *tmpdir ? tmpdir : "/var/tmp",
    .journal = journal_path, .base = loaded_path,
  };
  overlay = overlay_open (&o, &rec, oerr);
  if (overlay && rec.recovered && rec.commits == 0) {
    /* A start that died before its first commit (the reload's): nothing
     * was ever acknowledged, so start afresh as the policy says.
     */
    fprintf (stderr, "nbdkit: luacow: journal %s holds no commit: starting afresh\n",
             journal_path);
    if (overlay_discard_journal (overlay) == -1) {
      nbdkit_error ("luacow: journal %s: cannot remove it: %m", journal_path);
      return -1;
    }
    overlay_free (overlay);
    free (journal_path);
    journal_path = NULL;
    return build_overlay (size, lower);
  }
  if (!overlay) {
    if (journal_path)
      nbdkit_error ("luacow: journal %s: %s", journal_path, oerr);
    else
      nbdkit_error ("luacow: %s", oerr);
    return -1;
  }
  if (rec.recovered) {
    free (loaded_path);
    loaded_path = rec.base[0] ? strdup (rec.base) : NULL;
    log_recovery (journal_path, &rec);
    struct policy_recovered pr = { journal_path, rec.blocks, rec.bytes, rec.flushed,
                                   rec.seconds };
    if (policy_set_recovered (policy, &pr, err) == -1) {
      nbdkit_error ("luacow: %s", err);
      return -1;
    }
    return 0;
  }
  return loaded_path ? reload (lower) : 0;
}

/* Still before nbdkit forks and before --run starts its command, so a
 * failure here stops nbdkit with a non-zero status and nothing served:
 * ask the plugin its size, choose the cluster size, build the overlay,
 * recover or reload.  The context used is closed again; the one for
 * saves is opened after the fork.
 */
static int
luacow_get_ready (int thread_model)
{
  struct ov_lower lower = { next_pread, NULL };
  char err[POLICY_ERRLEN];
  (void) thread_model;

  started_at = epoch_seconds ();
  nbdkit_next *next = open_plugin (backend);
  if (!next)
    return -1;
  lower.handle = next;
  int r = -1;
  int64_t size = next->get_size (next);
  if (size < 0)
    goto out;
  if (policy_cluster_size (policy, (uint64_t) size, &cluster_size, err) == -1) {
    nbdkit_error ("luacow: %s", err);
    goto out;
  }
  if (build_overlay ((uint64_t) size, &lower) == -1)
    goto out;
  if (luacow_debug_verbose)
    nbdkit_debug ("luacow: %s, export %" PRId64 " bytes, cluster %u, events 0x%x, journal %s",
                  policy_name (policy), size, cluster_size, event_mask,
                  journal_path ? journal_path : "none");
  r = 0;
 out:
  close_plugin (next);
  return r;
}

/* Serving starts: open the context saves read through, start events. */
static int
luacow_after_fork (nbdkit_backend *b)
{
  static struct ov_lower lower = { next_pread, NULL };
  char err[OV_ERRLEN];
  if (overlay_start (overlay, err) == -1) {
    nbdkit_error ("luacow: %s", err);
    return -1;
  }
  shared = open_plugin (b);
  if (!shared)
    return -1;
  lower.handle = shared;
  struct events_setup setup = {
    .ov = overlay, .policy = policy, .lower = &lower, .cluster_size = cluster_size,
    .cwd = start_dir, .loaded = loaded_path, .mask = event_mask,
    .interval = event_interval, .started = started_at,
  };
  return events_start (&setup);
}

/* All clients have gone; the plugin is still open: save. */
static void
luacow_cleanup (nbdkit_backend *b)
{
  (void) b;
  events_exit ();
  if (shared) {
    close_plugin (shared);
    shared = NULL;
  }
}

/* Every connection sees the one overlay, over the plugin's default export
 * opened read-only.
 */
static void *
luacow_open (nbdkit_next_open *next, nbdkit_context *nxdata,
             int readonly, const char *exportname, int is_tls)
{
  (void) readonly; (void) exportname; (void) is_tls;
  if (next (nxdata, 1, "") == -1)
    return NULL;
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static void
luacow_close (void *handle)
{
  int err;
  (void) handle;
  if (events_wanted (EVENT_CLOSE))
    events_fire ("close", &err);
}

/* Asking the plugin too makes nbdkit record its size for this
 * connection, which it checks on every request passed down.
 */
static int64_t
luacow_get_size (nbdkit_next *next, void *handle)
{
  (void) handle;
  int64_t below = next->get_size (next);
  if (below == -1)
    return -1;
  if ((uint64_t) below != overlay_size (overlay)) {
    nbdkit_error ("luacow: the plugin's size changed from %" PRIu64 " to %" PRId64,
                  overlay_size (overlay), below);
    return -1;
  }
  return (int64_t) overlay_size (overlay);
}

static int luacow_can_write (nbdkit_next *next, void *handle)
{ (void) next; (void) handle; return 1; }
static int luacow_can_flush (nbdkit_next *next, void *handle)
{ (void) next; (void) handle; return 1; }
static int luacow_can_trim (nbdkit_next *next, void *handle)
{ (void) next; (void) handle; return 1; }
static int luacow_can_zero (nbdkit_next *next, void *handle)
{ (void) next; (void) handle; return NBDKIT_ZERO_NATIVE; }
static int luacow_can_fast_zero (nbdkit_next *next, void *handle)
{ (void) next; (void) handle; return 1; }   /* zeroing is metadata only */
static int luacow_can_extents (nbdkit_next *next, void *handle)
{ (void) next; (void) handle; return 1; }
/* With a journal, FUA writes are durable when acknowledged; without one
 * the overlay is volatile until saved, like the cow filter's.
 */
static int luacow_can_fua (nbdkit_next *next, void *handle)
{ (void) next; (void) handle; return NBDKIT_FUA_NATIVE; }
static int luacow_can_multi_conn (nbdkit_next *next, void *handle)
{ (void) next; (void) handle; return 1; }   /* one overlay for all */
static int luacow_can_cache (nbdkit_next *next, void *handle)
{ (void) next; (void) handle; return NBDKIT_CACHE_NATIVE; }

static int
luacow_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
              uint64_t offset, uint32_t flags, int *err)
{
  struct ov_lower lower = { next_pread, next };
  (void) handle; (void) flags;
  return overlay_pread (overlay, &lower, buf, count, offset, err);
}

static int
luacow_pwrite (nbdkit_next *next, void *handle, const void *buf, uint32_t count,
               uint64_t offset, uint32_t flags, int *err)
{
  struct ov_lower lower = { next_pread, next };
  (void) handle;
  if (overlay_pwrite (overlay, &lower, buf, count, offset, err) == -1)
    return -1;
  return flags & NBDKIT_FLAG_FUA ? overlay_flush (overlay, err) : 0;
}

/* The journal first (every acknowledged write durable), then the
 * policy's flush event (which may save).
 */
static int
luacow_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  (void) next; (void) handle; (void) flags;
  if (overlay_flush (overlay, err) == -1)
    return -1;
  if (events_wanted (EVENT_FLUSH))
    return events_fire ("flush", err);
  return 0;
}

static int
zero_range (nbdkit_next *next, uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  struct ov_lower lower = { next_pread, next };
  if (overlay_zero (overlay, &lower, count, offset, err) == -1)
    return -1;
  return flags & NBDKIT_FLAG_FUA ? overlay_flush (overlay, err) : 0;
}

static int
luacow_trim (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
             uint32_t flags, int *err)
{
  (void) handle;
  return zero_range (next, count, offset, flags, err);
}

/* Always fast: a zero is a metadata change, whatever the flags. */
static int
luacow_zero (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
             uint32_t flags, int *err)
{
  (void) handle;
  return zero_range (next, count, offset, flags, err);
}

struct extents_job {
  nbdkit_next *next;
  struct nbdkit_extents *out;
  uint32_t flags;
  int *err;
};

/* Clean runs report what the plugin reports; overlay runs report data or
 * hole+zero.
 */
static int
add_extent (struct extents_job *j, uint64_t off, uint64_t len, uint32_t type)
{
  if (nbdkit_add_extent (j->out, off, len, type) == -1) {
    *j->err = errno;
    return -1;
  }
  return 0;
}

/* Clean runs report what the plugin reports; overlay runs report data or
 * hole+zero.
 */
static int
extents_run (void *opaque, enum ov_kind kind, uint64_t off, uint64_t len)
{
  struct extents_job *j = opaque;
  if (kind != OV_CLEAN)
    return add_extent (j, off, len, kind == OV_ZERO ? NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO : 0);
  if (j->next->can_extents (j->next) <= 0)
    return add_extent (j, off, len, 0);
  struct nbdkit_extents *below = nbdkit_extents_new (off, off + len);
  if (!below) {
    *j->err = errno;
    return -1;
  }
  int r = j->next->extents (j->next, (uint32_t) len, off, j->flags, below, j->err);
  uint64_t covered = off;
  for (size_t i = 0; r == 0 && i < nbdkit_extents_count (below); ++i) {
    struct nbdkit_extent e = nbdkit_get_extent (below, i);
    r = add_extent (j, e.offset, e.length, e.type);
    covered = e.offset + e.length;
  }
  nbdkit_extents_free (below);
  if (r == -1)
    return -1;
  /* The plugin may answer for less than asked; extents must stay
   * contiguous, so the reply ends there (NBD allows a short reply).
   */
  return covered < off + len ? 1 : 0;
}

static int
luacow_extents (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
                uint32_t flags, struct nbdkit_extents *extents, int *err)
{
  struct extents_job j = { next, extents, flags & ~NBDKIT_FLAG_REQ_ONE, err };
  (void) handle;
  return overlay_map (overlay, offset, count, extents_run, &j) < 0 ? -1 : 0;
}

struct cache_job { nbdkit_next *next; int *err; };

static int
cache_run (void *opaque, enum ov_kind kind, uint64_t off, uint64_t len)
{
  struct cache_job *j = opaque;
  if (kind != OV_CLEAN || j->next->can_cache (j->next) != NBDKIT_CACHE_NATIVE)
    return 0;
  return j->next->cache (j->next, (uint32_t) len, off, 0, j->err) == -1 ? -1 : 0;
}

/* Overlay data is local already; clean ranges are passed to the plugin. */
static int
luacow_cache (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
              uint32_t flags, int *err)
{
  struct cache_job j = { next, err };
  (void) handle; (void) flags;
  return overlay_map (overlay, offset, count, cache_run, &j) ? -1 : 0;
}

static struct nbdkit_filter filter = {
  .name              = "luacow",
  .longname          = "nbdkit luacow filter",
  .description       = "persistent copy-on-write overlay with a Lua policy, saved as qcow2",
  .unload            = luacow_unload,
  .config            = luacow_config,
  .config_complete   = luacow_config_complete,
  .config_help       = luacow_config_help,
  .thread_model      = luacow_thread_model,
  .get_ready         = luacow_get_ready,
  .after_fork        = luacow_after_fork,
  .cleanup           = luacow_cleanup,
  .open              = luacow_open,
  .close             = luacow_close,
  .get_size          = luacow_get_size,
  .can_write         = luacow_can_write,
  .can_flush         = luacow_can_flush,
  .can_trim          = luacow_can_trim,
  .can_zero          = luacow_can_zero,
  .can_fast_zero     = luacow_can_fast_zero,
  .can_extents       = luacow_can_extents,
  .can_fua           = luacow_can_fua,
  .can_multi_conn    = luacow_can_multi_conn,
  .can_cache         = luacow_can_cache,
  .pread             = luacow_pread,
  .pwrite            = luacow_pwrite,
  .flush             = luacow_flush,
  .trim              = luacow_trim,
  .zero              = luacow_zero,
  .extents           = luacow_extents,
  .cache             = luacow_cache,
};

NBDKIT_REGISTER_FILTER (filter)
