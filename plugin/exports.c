/* luacow: one overlay per export, see exports.h. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "clock.h"
#include "exportname.h"
#include "exports.h"
#include "load.h"
#include "save.h"
#include "startup.h"

/* -D luacow.verbose=1 logs startup decisions and the overlay's size. */
extern int luacow_debug_verbose;

#define MSG_LEN (POLICY_ERRLEN + LOAD_ERRLEN + EXPORT_LABEL_LEN + 256)

struct export {
  char *name;                 /* the client's: untrusted */
  struct policy_disk *disk;
  pthread_mutex_t lock;       /* its first open */
  struct startup_config cfg;
  bool configured;
  struct overlay *overlay;    /* NULL until its first open built it */
  uint32_t cluster_size;
  char *loaded_path;
  char *init_error;           /* a failed first open fails every later one */
  struct events *events;
  /* Paths this export writes, compared with every other export's:
   * its journal, its exit save's path and its last save's.
   */
  char *claims[3];
  /* Exit and interval saves read the plugin through a client's context
   * while one is open (conns, held under bg_lock for the read), else
   * through one of their own (bg_next), opened at the first read and
   * closed after the save: only for the default export, since nbdkit
   * 1.32 gives a context outside a connection no export name.  The last
   * client of an export copies what those saves would read (save_settle),
   * so after it they read nothing from the plugin.
   */
  pthread_mutex_t bg_lock;
  nbdkit_next **conns;
  size_t nconns;
  nbdkit_next *bg_next;
  bool bg_failed;
  struct ov_lower bg_lower;   /* bg_pread on this export */
};

enum { CLAIM_JOURNAL, CLAIM_EXIT, CLAIM_SAVED };

static struct exports_setup env;
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;  /* also claims */
static struct export **table;
static size_t nexports;
static struct startup_config default_cfg;   /* "", configured at startup */
static struct policy_disk *default_disk;    /* with the disk it saw then */
static bool default_configured;
static nbdkit_backend *backend;

/* ------------------------------------------------------ the plugin below */

int
exports_next_pread (void *handle, void *buf, uint32_t count, uint64_t offset, int *err)
{
  nbdkit_next *next = handle;
  return next->pread (next, buf, count, offset, 0, err);
}

/* A context of our own into the plugin for this export, managed by hand. */
static nbdkit_next *
open_plugin (const struct export *ex)
{
  nbdkit_next *next = backend ? nbdkit_next_context_open (backend, 1, ex->name, 1) : NULL;
  /* get_size also makes nbdkit record the size it checks requests by. */
  if (!next || next->prepare (next) == -1 || next->get_size (next) == -1) {
    char label[EXPORT_LABEL_LEN];
    nbdkit_error ("luacow: cannot open the plugin for export %s", export_label (ex->name, label));
    if (next)
      nbdkit_next_context_close (next);
    return NULL;
  }
  return next;
}

static int
bg_pread (void *handle, void *buf, uint32_t count, uint64_t offset, int *err)
{
  struct export *ex = handle;
  char label[EXPORT_LABEL_LEN];
  pthread_mutex_lock (&ex->bg_lock);
  if (ex->nconns) {           /* a client's context, kept open by the lock */
    nbdkit_next *c = ex->conns[0];
    int r = c->pread (c, buf, count, offset, 0, err);
    pthread_mutex_unlock (&ex->bg_lock);
    return r;
  }
  if (!ex->bg_next && !ex->bg_failed && ex->name[0]) {
    nbdkit_error ("luacow: export %s: a save with no client connected cannot read the "
                  "plugin (nbdkit 1.32 gives a context outside a connection no export name)",
                  export_label (ex->name, label));
    ex->bg_failed = true;
  }
  if (!ex->bg_next && !ex->bg_failed)
    ex->bg_failed = !(ex->bg_next = open_plugin (ex));
  nbdkit_next *next = ex->bg_next;
  pthread_mutex_unlock (&ex->bg_lock);
  if (!next) {
    *err = EIO;
    return -1;
  }
  return next->pread (next, buf, count, offset, 0, err);
}

/* A client's context joins (prepare) or leaves (finalize) the ones saves
 * may borrow.  add_conn returns 0, or -1 (out of memory).
 */
static int
add_conn (struct export *ex, nbdkit_next *next)
{
  pthread_mutex_lock (&ex->bg_lock);
  nbdkit_next **bigger = realloc (ex->conns, (ex->nconns + 1) * sizeof (nbdkit_next *));
  if (bigger) {
    ex->conns = bigger;
    ex->conns[ex->nconns++] = next;
  }
  pthread_mutex_unlock (&ex->bg_lock);
  return bigger ? 0 : -1;
}

static void
remove_conn (struct export *ex, nbdkit_next *next)
{
  pthread_mutex_lock (&ex->bg_lock);
  for (size_t i = 0; i < ex->nconns; ++i)
    if (ex->conns[i] == next) {
      ex->conns[i] = ex->conns[--ex->nconns];
      break;
    }
  pthread_mutex_unlock (&ex->bg_lock);
}

/* A leaving client: gone from the list unless it is the export's last
 * (then it stays, for the settle, until remove_conn).  Decided under the
 * lock, so of clients leaving together exactly the last one settles.
 */
enum leave { LEAVE_UNKNOWN, LEAVE_DONE, LEAVE_LAST };

static enum leave
leave_conn (struct export *ex, nbdkit_next *next)
{
  enum leave r = LEAVE_UNKNOWN;
  pthread_mutex_lock (&ex->bg_lock);
  for (size_t i = 0; i < ex->nconns && r == LEAVE_UNKNOWN; ++i)
    if (ex->conns[i] == next) {
      r = ex->nconns == 1 ? LEAVE_LAST : LEAVE_DONE;
      if (r == LEAVE_DONE)
        ex->conns[i] = ex->conns[--ex->nconns];
    }
  pthread_mutex_unlock (&ex->bg_lock);
  return r;
}

static void
bg_done (void *opaque)
{
  struct export *ex = opaque;
  pthread_mutex_lock (&ex->bg_lock);
  if (ex->bg_next) {
    ex->bg_next->finalize (ex->bg_next);
    nbdkit_next_context_close (ex->bg_next);
  }
  ex->bg_next = NULL;
  ex->bg_failed = false;
  pthread_mutex_unlock (&ex->bg_lock);
}

void
exports_set_backend (nbdkit_backend *b)
{
  backend = b;
}

/* ------------------------------------------------------------- claims */

/* path with its directory resolved (symbolic links, "..", "."), so that
 * two spellings of one file compare equal; as given if it has none.
 */
static char *
canonical (const char *path)
{
  const char *slash = strrchr (path, '/');
  char dir[PATH_MAX], *out = NULL;
  if (!slash)
    return strdup (path);
  char *d = slash == path ? strdup ("/") : strndup (path, (size_t) (slash - path));
  if (d && realpath (d, dir) && asprintf (&out, "%s/%s", strcmp (dir, "/") ? dir : "", slash + 1) == -1)
    out = NULL;
  free (d);
  return out ? out : strdup (path);
}

/* The other export that claimed path, or NULL.  Under table_lock. */
static const struct export *
claimed_by_other (const struct export *ex, const char *path)
{
  for (size_t i = 0; i < nexports; ++i)
    for (size_t k = 0; table[i] != ex && k < 3; ++k)
      if (table[i]->claims[k] && strcmp (table[i]->claims[k], path) == 0)
        return table[i];
  return NULL;
}

static int
claim_locked (struct export *ex, unsigned which, const char *path, const char *what,
              char *msg, size_t len)
{
  char *c = canonical (path);
  if (!c) {
    snprintf (msg, len, "out of memory");
    return -1;
  }
  const struct export *other = claimed_by_other (ex, c);
  if (other) {
    char a[EXPORT_LABEL_LEN], b[EXPORT_LABEL_LEN];
    snprintf (msg, len, "luacow: export %s: %s %s is export %s's already: two exports never "
              "share a file (put {export} in it, e.g. luacow-save=ov-{export}.qcow2)",
              export_label (ex->name, a), what, path, export_label (other->name, b));
    free (c);
    return -1;
  }
  free (ex->claims[which]);
  ex->claims[which] = c;
  return 0;
}

/* events.h's claim: every save's path, just before it is written. */
static int
claim_save (void *opaque, const char *path, char *msg, size_t len)
{
  pthread_mutex_lock (&table_lock);
  int r = claim_locked (opaque, CLAIM_SAVED, path, "the save path", msg, len);
  pthread_mutex_unlock (&table_lock);
  return r;
}

/* At the first open: the journal and what the exit save would write. */
static int
claim_files (struct export *ex, uint64_t size, char *msg, size_t len)
{
  char err[POLICY_ERRLEN], *exit_path = NULL;
  struct policy_ctx ctx = {
    .disk = ex->disk, .event = "exit", .size = size,
    .cluster_size = ex->cluster_size, .started = env.started, .now = epoch_seconds (),
    .loaded = ex->loaded_path,
  };
  /* A name that fails now may work at exit: only the save is checked then. */
  if (policy_save_name (env.policy, &ctx, &exit_path, err) == -1)
    nbdkit_debug ("luacow: no save path to claim at the first open: %s", err);
  pthread_mutex_lock (&table_lock);
  int r = ex->cfg.journal ? claim_locked (ex, CLAIM_JOURNAL, ex->cfg.journal, "the journal",
                                          msg, len) : 0;
  if (r == 0 && exit_path)
    r = claim_locked (ex, CLAIM_EXIT, exit_path, "the save path", msg, len);
  pthread_mutex_unlock (&table_lock);
  free (exit_path);
  return r;
}

static void
release_claims (struct export *ex)
{
  pthread_mutex_lock (&table_lock);
  for (size_t k = 0; k < 3; ++k) {
    free (ex->claims[k]);
    ex->claims[k] = NULL;
  }
  pthread_mutex_unlock (&table_lock);
}

/* ------------------------------------------------------------ the table */

int
exports_init (const struct exports_setup *setup)
{
  char err[POLICY_ERRLEN], msg[MSG_LEN];
  env = *setup;
  if (env.max == 0)
    env.max = EXPORTS_DEFAULT_MAX;
  struct policy_disk *d = policy_disk_new (env.policy, "", err);
  if (!d) {
    nbdkit_error ("luacow: %s", err);
    return -1;
  }
  if (startup_configure (env.policy, d, env.tmpdir, &default_cfg, msg, sizeof msg) == -1) {
    policy_disk_free (d);
    nbdkit_error ("%s", msg);
    return -1;
  }
  default_disk = d;
  default_configured = true;
  return 0;
}

static struct export *
export_new (const char *name)
{
  struct export *ex = calloc (1, sizeof *ex);
  if (!ex || !(ex->name = strdup (name))) {
    free (ex);
    return NULL;
  }
  pthread_mutex_init (&ex->lock, NULL);
  pthread_mutex_init (&ex->bg_lock, NULL);
  if (name[0] == '\0' && default_configured) {
    ex->cfg = default_cfg;    /* taken over */
    ex->disk = default_disk;
    memset (&default_cfg, 0, sizeof default_cfg);
    default_disk = NULL;
    default_configured = false;
    ex->configured = true;
  }
  return ex;
}

struct export *
exports_open (const char *name)
{
  char label[EXPORT_LABEL_LEN];
  struct export *ex = NULL;
  pthread_mutex_lock (&table_lock);
  for (size_t i = 0; i < nexports && !ex; ++i)
    if (strcmp (table[i]->name, name) == 0)
      ex = table[i];
  if (!ex && nexports >= env.max)
    nbdkit_error ("luacow: export %s refused: %zu exports have an overlay already, the most "
                  "there may be (luacow-max-exports=%u)", export_label (name, label), nexports,
                  env.max);
  else if (!ex) {
    struct export **bigger = realloc (table, (nexports + 1) * sizeof (struct export *));
    if (bigger)
      table = bigger;
    if (bigger && (ex = export_new (name)))
      table[nexports++] = ex;
    else
      nbdkit_error ("luacow: export %s: out of memory", export_label (name, label));
  }
  pthread_mutex_unlock (&table_lock);
  return ex;
}

/* ------------------------------------------------------ the first open */

/* A configuration error found at the first open: that open and every
 * later one of this export fail with it, and nothing is saved for it.
 */
static int
sticky (struct export *ex, const char *msg)
{
  static const char prefix[] = "luacow: ";
  char label[EXPORT_LABEL_LEN], *named = NULL;
  /* A named export's lines say which export they are about. */
  if (ex->name[0] && strncmp (msg, prefix, sizeof prefix - 1) == 0 &&
      strncmp (msg, "luacow: export ", 15) != 0 &&
      asprintf (&named, "luacow: export %s: %s", export_label (ex->name, label),
                msg + sizeof prefix - 1) == -1)
    named = NULL;
  nbdkit_error ("%s", named ? named : msg);
  ex->init_error = named ? named : strdup (msg);
  return -1;
}

static int
start_events (struct export *ex)
{
  ex->bg_lower = (struct ov_lower) { bg_pread, ex };
  struct events_setup setup = {
    .ov = ex->overlay, .policy = env.policy, .disk = ex->disk, .export = ex->name,
    .lower = &ex->bg_lower, .lower_done = bg_done, .claim = claim_save, .opaque = ex,
    .cluster_size = ex->cluster_size, .cwd = env.cwd, .loaded = ex->loaded_path,
    .mask = env.mask, .interval = env.interval, .started = env.started,
  };
  ex->events = events_start (&setup);
  return ex->events ? 0 : -1;
}

/* The policy's fields for this export, its overlay (recovered or
 * reloaded), its claims and events.  Under ex->lock.
 */
static int
first_open (struct export *ex, nbdkit_next *next)
{
  char err[POLICY_ERRLEN], msg[MSG_LEN];
  if (ex->init_error) {
    nbdkit_error ("%s", ex->init_error);
    return -1;
  }
  int64_t size = next->get_size (next);
  if (size < 0)
    return -1;                /* the plugin's trouble: the next open retries */
  if (!ex->disk && !(ex->disk = policy_disk_new (env.policy, ex->name, err))) {
    snprintf (msg, sizeof msg, "luacow: %s", err);
    return sticky (ex, msg);
  }
  if (!ex->configured &&
      startup_configure (env.policy, ex->disk, env.tmpdir, &ex->cfg, msg, sizeof msg) == -1)
    return sticky (ex, msg);
  ex->configured = true;
  if (policy_cluster_size (env.policy, ex->disk, (uint64_t) size, &ex->cluster_size, err) == -1) {
    snprintf (msg, sizeof msg, "luacow: %s", err);
    return sticky (ex, msg);
  }
  if (startup_check_savable ((uint64_t) size, ex->cluster_size, msg, sizeof msg) == -1)
    return sticky (ex, msg);
  struct ov_lower lower = { exports_next_pread, next };
  struct startup st = { .policy = env.policy, .disk = ex->disk, .size = (uint64_t) size,
                        .cluster_size = ex->cluster_size, .tmpdir = env.tmpdir,
                        .journal = ex->cfg.journal, .load_path = ex->cfg.load };
  ex->cfg.load = NULL;
  /* Claims first: a journal another export holds is not even opened. */
  if (claim_files (ex, (uint64_t) size, msg, sizeof msg) == -1) {
    free (st.load_path);
    return sticky (ex, msg);
  }
  int r = startup_overlay (&st, &lower, msg, sizeof msg);
  ex->cfg.load = st.load_path;  /* what is left of it */
  ex->overlay = st.overlay;
  ex->loaded_path = st.loaded_path;
  if (r == -1) {
    release_claims (ex);      /* it writes nothing: others may have them */
    return sticky (ex, msg);
  }
  if (luacow_debug_verbose)
    nbdkit_debug ("luacow: export %s: %s, %" PRId64 " bytes, cluster %u, events 0x%x, "
                  "cow-on-read %d, cow-on-cache %d", export_label (ex->name, msg),
                  policy_name (env.policy), size, ex->cluster_size, env.mask,
                  ex->cfg.cow_read, ex->cfg.cow_cache);
  if (start_events (ex) == -1)
    return sticky (ex, "luacow: cannot start its events");
  return 0;
}

/* Asking the plugin too makes nbdkit record its size for this
 * connection, which it checks on every request passed down.
 */
int
export_prepare (struct export *ex, nbdkit_next *next)
{
  pthread_mutex_lock (&ex->lock);
  int r = ex->overlay && !ex->init_error ? 0 : first_open (ex, next);
  pthread_mutex_unlock (&ex->lock);
  if (r == -1)
    return -1;
  int64_t below = next->get_size (next);
  if (below == -1)
    return -1;
  if ((uint64_t) below != overlay_size (ex->overlay)) {
    nbdkit_error ("luacow: the plugin's size changed from %" PRIu64 " to %" PRId64,
                  overlay_size (ex->overlay), below);
    return -1;
  }
  if (add_conn (ex, next) == -1) {
    nbdkit_error ("luacow: out of memory");
    return -1;
  }
  return 0;
}

/* The close event, then (the export's last client leaving) what later
 * saves would read from the plugin is copied while this context is open.
 */
void
export_finalize (struct export *ex, nbdkit_next *next)
{
  struct ov_lower lower = { exports_next_pread, next };
  char label[EXPORT_LABEL_LEN];
  int err = 0;
  if (!ex->overlay)
    return;                   /* its prepare failed: it served nothing */
  if (ex->events && events_wanted (ex->events, EVENT_CLOSE))
    events_fire (ex->events, "close", &lower, &err);
  if (leave_conn (ex, next) != LEAVE_LAST)
    return;
  if (save_settle (ex->overlay, &lower, ex->cluster_size, &err) == -1)
    nbdkit_error ("luacow: export %s: cannot read the plugin to complete partly written "
                  "clusters for the next save: %s", export_label (ex->name, label),
                  strerror (err));
  remove_conn (ex, next);
}

struct overlay *export_overlay (const struct export *ex) { return ex->overlay; }
uint32_t export_cluster_size (const struct export *ex) { return ex->cluster_size; }
struct events *export_events (const struct export *ex) { return ex->events; }
bool export_copy_on_cache (const struct export *ex) { return ex->cfg.cow_cache; }

/* cow-on-read=true, or =PATH while PATH exists (as cow checks it). */
bool
export_copy_on_read (const struct export *ex)
{
  return ex->cfg.cow_read && (!ex->cfg.cow_read_path || access (ex->cfg.cow_read_path, F_OK) == 0);
}

/* ------------------------------------------------------------- the end */

void
exports_exit (void)
{
  for (size_t i = 0; i < nexports; ++i) {
    struct export *ex = table[i];
    if (ex->events) {
      events_exit (ex->events);
      ex->events = NULL;
    }
  }
}

void
exports_free (void)
{
  for (size_t i = 0; i < nexports; ++i) {
    struct export *ex = table[i];
    overlay_free (ex->overlay);   /* also closes the reloaded file */
    startup_config_clear (&ex->cfg);
    policy_disk_free (ex->disk);
    for (size_t k = 0; k < 3; ++k)
      free (ex->claims[k]);
    free (ex->loaded_path);
    free (ex->init_error);
    free (ex->conns);
    free (ex->name);
    pthread_mutex_destroy (&ex->lock);
    pthread_mutex_destroy (&ex->bg_lock);
    free (ex);
  }
  free (table);
  table = NULL;
  nexports = 0;
  startup_config_clear (&default_cfg);
  policy_disk_free (default_disk);
  default_disk = NULL;
}
