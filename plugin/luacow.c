/* luacow: nbdkit filter callbacks, in lifecycle order.
 *
 * Each callback hands off: parameters to config.c, requests to the
 * overlay, events to events.c, policy to policy.c, reloads to load.c.  The
 * plugin below is always opened read-only and never written.
 *
 * Each export a client names has its own overlay (exports.h): the handle
 * of a connection is its export.  The plugin is opened only as often as
 * the cow filter opens it: once per client connection, with the client's
 * export name.  Startup (before nbdkit forks) checks what it can without
 * the plugin: the policy, and for the default export the file to reload
 * (its qcow2 structure), the journal, the overlay store's directory.  An
 * export's first connection then gives its size: the cluster size is
 * chosen, the overlay built and the file reloaded through that
 * connection's plugin context.  Saves read the plugin through a client's
 * context: their own at flush and close, any connected one at an
 * interval; an export's last client copies what later saves would read,
 * so the exit save reads nothing (exports.h).
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "clock.h"
#include "config.h"
#include "events.h"
#include "exports.h"
#include "overlay.h"
#include "policy.h"
#include "qcow2_common.h"

/* -D luacow.verbose=1 logs startup decisions and the overlay's size. */
NBDKIT_DLL_PUBLIC int luacow_debug_verbose = 0;

#define DEFAULT_BUDGET 10.0   /* seconds a policy hook may run */
#define PREFERRED_BLOCK 65536 /* the block size hint cow sends by default */

static struct luacow_config cfg;
static char *start_dir;
static struct policy *policy;
static unsigned event_mask;
static double event_interval;
static unsigned max_exports = EXPORTS_DEFAULT_MAX;

/* ------------------------------------------------------------ startup */

static void
luacow_unload (void)
{
  exports_free ();
  policy_free (policy);
  config_free ();
  free (start_dir);
}

static int
luacow_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
               const char *key, const char *value)
{
  return config_key (next, nxdata, key, value);
}

static const char *
param (const char *name)
{
  for (size_t i = 0; i < cfg.nparams; ++i)
    if (strcmp (cfg.params[i].name, name) == 0)
      return cfg.params[i].value;
  return NULL;
}

static double
hook_budget (void)
{
  const char *v = param ("hook-seconds");
  double s = v ? atof (v) : 0;
  return s > 0 ? s : DEFAULT_BUDGET;
}

/* luacow-max-exports=N: how many exports may have an overlay. */
static int
read_max_exports (void)
{
  const char *v = param ("max-exports");
  char *end;
  if (!v)
    return 0;
  errno = 0;
  unsigned long n = strtoul (v, &end, 10);
  if (errno || end == v || *end || v[0] == '-' || n < 1 || n > 65536) {
    nbdkit_error ("luacow: luacow-max-exports must be a number from 1 to 65536, got \"%s\"", v);
    return -1;
  }
  max_exports = (unsigned) n;
  return 0;
}

/* Load and validate the policy now, before nbdkit forks, so a broken
 * script fails the start with a one-line error.
 */
static int
luacow_config_complete (nbdkit_next_config_complete *next, nbdkit_backend *nxdata)
{
  char err[POLICY_ERRLEN], cwd[PATH_MAX];
  if (config_settle (&cfg) == -1 || read_max_exports () == -1)
    return -1;
  if (!getcwd (cwd, sizeof cwd) || !(start_dir = strdup (cwd))) {
    nbdkit_error ("luacow: cannot get the current directory: %m");
    return -1;
  }
  /* cow-block-size= is cow's unit of copying: here the default cluster
   * size, up to qcow2's largest.
   */
  struct policy_defaults defaults = {
    .cluster_size = cfg.cow_block_size > (1u << QCOW2_MAX_CLUSTER_BITS)
      ? 1u << QCOW2_MAX_CLUSTER_BITS : cfg.cow_block_size,
    .cow_on_read = cfg.cow_on_read != COW_READ_OFF,
    .cow_read_path = cfg.cow_on_read == COW_READ_PATH ? cfg.cow_read_path : NULL,
    .cow_on_cache = cfg.cow_on_cache,
  };
  policy = policy_new (cfg.script, cfg.params, cfg.nparams, start_dir, hook_budget (),
                       &defaults, err);
  if (!policy || policy_events (policy, &event_mask, &event_interval, err) == -1) {
    nbdkit_error ("luacow: %s", err);
    return -1;
  }
  return next (nxdata);
}

#define luacow_config_help \
  "script=|luacow-script=<FILE>  Lua policy (default: save/load below).\n" \
  "luacow-save=<FILE>            Default policy: save the overlay here at exit.\n" \
  "luacow-load=<FILE>            Default policy: reload this file at start.\n" \
  "luacow-hook-seconds=<N>       Time budget of each policy hook (default 10).\n" \
  "luacow-max-exports=<N>        Exports that may have an overlay (default 64).\n" \
  "luacow-<NAME>=<VALUE>         Passed to the policy as params.NAME.\n" \
  "cow-block-size=<N>            As cow: block size hint; default cluster size.\n" \
  "cow-on-read=<BOOL>|/PATH      As cow: copy read requests to the overlay.\n" \
  "cow-on-cache=<BOOL>           As cow: copy cache requests to the overlay."

static int
luacow_thread_model (void)
{
  return NBDKIT_THREAD_MODEL_PARALLEL;
}

static const char *
store_dir (void)
{
  const char *tmpdir = getenv ("TMPDIR");
  return tmpdir && *tmpdir ? tmpdir : "/var/tmp";
}

/* Still before nbdkit forks and before --run starts its command, so a
 * failure here stops nbdkit with a non-zero status and nothing served.
 * The plugin is not opened: it may not be ready before its .after_fork.
 */
static int
luacow_get_ready (int thread_model)
{
  (void) thread_model;
  struct exports_setup setup = {
    .policy = policy, .cwd = start_dir, .tmpdir = store_dir (), .mask = event_mask,
    .interval = event_interval, .started = epoch_seconds (), .max = max_exports,
  };
  return exports_init (&setup);
}

/* Serving starts.  The plugin's own .after_fork has run (nbdkit calls it
 * first), but nothing is opened here: a plugin may serve one client only.
 */
static int
luacow_after_fork (nbdkit_backend *b)
{
  exports_set_backend (b);
  return 0;
}

/* All clients have gone; the plugin is still loaded: save every export. */
static void
luacow_cleanup (nbdkit_backend *b)
{
  exports_set_backend (b);
  exports_exit ();
}

/* ------------------------------------------------------------ clients */

/* A connection's handle is its export, opened in the plugin under the
 * client's name (read-only): each export has an overlay of its own.
 */
static void *
luacow_open (nbdkit_next_open *next, nbdkit_context *nxdata,
             int readonly, const char *exportname, int is_tls)
{
  (void) readonly; (void) is_tls;
  if (next (nxdata, 1, exportname) == -1)
    return NULL;              /* the plugin refused the name: no overlay */
  return exports_open (exportname);
}

/* The plugin is open and prepared: build the export's overlay at its
 * first connection, check the size at every one.
 */
static int
luacow_prepare (nbdkit_next *next, void *handle, int readonly)
{
  (void) readonly;
  return export_prepare (handle, next);
}

/* As export_prepare checked it. */
static int64_t
luacow_get_size (nbdkit_next *next, void *handle)
{
  (void) next;
  return (int64_t) overlay_size (export_overlay (handle));
}

/* The connection ends, its plugin context still open for the save. */
static int
luacow_finalize (nbdkit_next *next, void *handle)
{
  export_finalize (handle, next);
  return 0;
}

/* As cow: preferred at least its block size (here also the cluster
 * size), any alignment accepted.
 */
static int
luacow_block_size (nbdkit_next *next, void *handle,
                   uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
  if (next->block_size (next, minimum, preferred, maximum) == -1)
    return -1;
  uint32_t want = cfg.cow_block_size ? cfg.cow_block_size : PREFERRED_BLOCK;
  if (export_cluster_size (handle) > want)
    want = export_cluster_size (handle);
  if (*minimum == 0) {        /* the plugin sets no constraints */
    *minimum = 1;
    *preferred = want;
    *maximum = 0xffffffff;
  }
  else if (*maximum >= want && *preferred < want)
    *preferred = want;
  return 0;
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
{ (void) next; (void) handle; return 1; }   /* one overlay per export */
static int luacow_can_cache (nbdkit_next *next, void *handle)
{ (void) next; (void) handle; return NBDKIT_CACHE_NATIVE; }

/* A read's partly covered first or last block is copied whole, as cow
 * copies its blocks: the same read next time needs nothing from below.
 */
static void
copy_edge (struct overlay *overlay, nbdkit_next *next, uint64_t pos)
{
  char blk[4096];
  uint32_t bs = overlay_block_size (overlay);
  uint64_t start = pos / bs * bs, size = overlay_size (overlay);
  uint32_t len = size - start < bs ? (uint32_t) (size - start) : bs;
  int err;
  if (overlay_block_clean (overlay, start) &&
      next->pread (next, blk, len, start, 0, &err) == 0)
    overlay_populate (overlay, blk, len, start);
}

static int
luacow_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
              uint64_t offset, uint32_t flags, int *err)
{
  struct ov_lower lower = { exports_next_pread, next };
  struct overlay *overlay = export_overlay (handle);
  (void) flags;
  if (overlay_pread (overlay, &lower, buf, count, offset, err) == -1)
    return -1;
  if (export_copy_on_read (handle)) {
    uint32_t bs = overlay_block_size (overlay);
    overlay_populate (overlay, buf, count, offset);
    if (offset % bs)
      copy_edge (overlay, next, offset);
    if ((offset + count) % bs && offset + count < overlay_size (overlay))
      copy_edge (overlay, next, offset + count - 1);
  }
  return 0;
}

static int
luacow_pwrite (nbdkit_next *next, void *handle, const void *buf, uint32_t count,
               uint64_t offset, uint32_t flags, int *err)
{
  struct ov_lower lower = { exports_next_pread, next };
  struct overlay *overlay = export_overlay (handle);
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
  struct ov_lower lower = { exports_next_pread, next };
  struct events *ev = export_events (handle);
  (void) flags;
  if (overlay_flush (export_overlay (handle), err) == -1)
    return -1;
  if (events_wanted (ev, EVENT_FLUSH))
    return events_fire (ev, "flush", &lower, err);
  return 0;
}

static int
zero_range (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset, uint32_t flags,
            int *err)
{
  struct ov_lower lower = { exports_next_pread, next };
  struct overlay *overlay = export_overlay (handle);
  if (overlay_zero (overlay, &lower, count, offset, err) == -1)
    return -1;
  return flags & NBDKIT_FLAG_FUA ? overlay_flush (overlay, err) : 0;
}

static int
luacow_trim (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
             uint32_t flags, int *err)
{
  return zero_range (next, handle, count, offset, flags, err);
}

/* Always fast: a zero is a metadata change, whatever the flags. */
static int
luacow_zero (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
             uint32_t flags, int *err)
{
  return zero_range (next, handle, count, offset, flags, err);
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
  return overlay_map (export_overlay (handle), offset, count, extents_run, &j) < 0 ? -1 : 0;
}

struct cache_job { struct overlay *overlay; nbdkit_next *next; int *err; char *buf; };

#define CACHE_CHUNK (1u << 20)

/* cow-on-cache: clean data is read from the plugin and kept as copies;
 * otherwise the plugin is asked to cache it.
 */
static int
cache_run (void *opaque, enum ov_kind kind, uint64_t off, uint64_t len)
{
  struct cache_job *j = opaque;
  if (kind != OV_CLEAN)
    return 0;
  if (!j->buf)
    return j->next->can_cache (j->next) == NBDKIT_CACHE_NATIVE &&
      j->next->cache (j->next, (uint32_t) len, off, 0, j->err) == -1 ? -1 : 0;
  for (uint64_t done = 0; done < len;) {
    uint32_t n = len - done < CACHE_CHUNK ? (uint32_t) (len - done) : CACHE_CHUNK;
    if (j->next->pread (j->next, j->buf, n, off + done, 0, j->err) == -1)
      return -1;
    overlay_populate (j->overlay, j->buf, n, off + done);
    done += n;
  }
  return 0;
}

/* Overlay data is local already; clean ranges are cached below, or kept
 * as copies with cow-on-cache.
 */
static int
luacow_cache (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
              uint32_t flags, int *err)
{
  struct cache_job j = { export_overlay (handle), next, err, NULL };
  (void) flags;
  if (export_copy_on_cache (handle) && !(j.buf = malloc (CACHE_CHUNK))) {
    *err = ENOMEM;
    return -1;
  }
  int r = overlay_map (j.overlay, offset, count, cache_run, &j) ? -1 : 0;
  free (j.buf);
  return r;
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
  .prepare           = luacow_prepare,
  .finalize          = luacow_finalize,
  .get_size          = luacow_get_size,
  .block_size        = luacow_block_size,
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
