/* luacow: events -> policy -> save, see events.h. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "clock.h"
#include "events.h"
#include "rescue.h"
#include "save.h"

static struct events_setup env;
static bool started;
static pthread_mutex_t save_lock = PTHREAD_MUTEX_INITIALIZER;
static char *last_save_path;
static double last_save_time;
static uint64_t saved_written, saved_zeroed;  /* client bytes the last save holds */
static pthread_t interval_thread;
static bool interval_running, interval_stop;
static pthread_mutex_t interval_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t interval_cond;

static void *
interval_main (void *arg)
{
  (void) arg;
  pthread_mutex_lock (&interval_lock);
  for (;;) {
    struct timespec until;
    clock_gettime (CLOCK_MONOTONIC, &until);
    double whole = (double) (long) env.interval;
    until.tv_sec += (time_t) whole;
    until.tv_nsec += (long) ((env.interval - whole) * 1e9);
    if (until.tv_nsec >= 1000000000L) { until.tv_sec++; until.tv_nsec -= 1000000000L; }
    while (!interval_stop &&
           pthread_cond_timedwait (&interval_cond, &interval_lock, &until) != ETIMEDOUT)
      ;
    if (interval_stop)
      break;
    pthread_mutex_unlock (&interval_lock);
    int err;
    events_fire ("interval", NULL, &err);
    pthread_mutex_lock (&interval_lock);
  }
  pthread_mutex_unlock (&interval_lock);
  return NULL;
}

int
events_start (const struct events_setup *setup)
{
  env = *setup;
  started = true;
  if ((env.mask & EVENT_INTERVAL) && env.interval > 0) {
    pthread_condattr_t ca;
    pthread_condattr_init (&ca);
    pthread_condattr_setclock (&ca, CLOCK_MONOTONIC);
    pthread_cond_init (&interval_cond, &ca);
    pthread_condattr_destroy (&ca);
    int e = pthread_create (&interval_thread, NULL, interval_main, NULL);
    if (e) {
      nbdkit_error ("luacow: cannot start the interval thread: %s", strerror (e));
      return -1;
    }
    interval_running = true;
  }
  return 0;
}

int
events_wanted (unsigned event)
{
  return (env.mask & event) != 0;
}

static void
fill_ctx (struct policy_ctx *c, const char *event)
{
  struct ov_stats st;
  overlay_stats (env.ov, &st);
  *c = (struct policy_ctx) {
    .event = event, .size = overlay_size (env.ov), .cluster_size = env.cluster_size,
    .dirty_bytes = st.written_bytes - saved_written,
    .zero_bytes = st.zeroed_bytes - saved_zeroed,
    .written_bytes = st.written_bytes + st.zeroed_bytes,
    .started = env.started, .now = epoch_seconds (),
    .loaded = env.loaded,
    .last_save_time = last_save_time,
  };
  save_count (env.ov, env.cluster_size, &c->data_clusters, &c->zero_clusters);
}

static enum qcow2_compress
compress_of (const char *name)
{
  if (name && strcmp (name, "zstd") == 0)
    return QCOW2_COMPRESS_ZSTD;
  if (name && strcmp (name, "deflate") == 0)
    return QCOW2_COMPRESS_DEFLATE;
  return QCOW2_COMPRESS_NONE;
}

/* One log line per save; on stderr too at exit, where nbdkit is ending. */
static void
log_saved (const char *event, const struct policy_plan *plan, const struct save_result *res)
{
  char *cmd = NULL, *line = NULL;
  if (!(plan->backing_file && plan->backing_embed))
    cmd = save_rebase_command (plan->path, plan->backing_file, plan->backing_format);
  if (asprintf (&line, "luacow: saved %s (%s): %" PRIu64 " data clusters, %" PRIu64
                " zero clusters, %" PRIu64 " bytes, %.3f s%s%s%s",
                plan->path, event, res->data_clusters, res->zero_clusters, res->bytes,
                res->seconds,
                plan->backing_file && plan->backing_embed ? "; backing file " : "; attach a base with: ",
                plan->backing_file && plan->backing_embed ? plan->backing_file : (cmd ? cmd : "qemu-img rebase -u"),
                "") == -1)
    line = NULL;
  if (line) {
    nbdkit_debug ("%s", line);
    if (strcmp (event, "exit") == 0)
      fprintf (stderr, "nbdkit: %s\n", line);
  }
  free (line);
  free (cmd);
}

/* Save per plan, from a frozen view: a point-in-time image while writers
 * carry on.  After the policy's own save at exit the saved file is the
 * durable state and the journal goes (a rescue file keeps the journal).
 */
static int
save_with (const char *event, const struct policy_plan *plan, uint32_t cluster_size,
           const struct ov_lower *lower, struct save_result *res, char err[SAVE_ERRLEN])
{
  struct save_request req = {
    .path = plan->path, .cluster_size = cluster_size,
    .compress = compress_of (plan->compress),
    .backing_file = plan->backing_file, .backing_format = plan->backing_format,
    .backing_embed = plan->backing_embed,
  };
  struct ov_stats st;
  struct overlay *view = overlay_freeze (env.ov);
  if (!view) {
    snprintf (err, SAVE_ERRLEN, "out of memory copying the block map");
    return -1;
  }
  overlay_stats (view, &st);            /* what this image will hold */
  int r = save_overlay (view, lower, &req, res, err);
  overlay_free (view);
  if (r == 0 && strcmp (event, "exit") == 0 &&
      overlay_discard_journal (env.ov) == -1)
    nbdkit_error ("luacow: saved %s, but cannot remove the journal: %m", plan->path);
  if (r == 0) {
    saved_written = st.written_bytes;
    saved_zeroed = st.zeroed_bytes;
    log_saved (event, plan, res);
    free (last_save_path);
    last_save_path = strdup (plan->path);
    last_save_time = epoch_seconds ();
  }
  return r;
}

/* At exit, when the policy or its save failed: keep the data in a file
 * of our own (rescue.h).
 */
static void
rescue (const char *why, const struct ov_lower *lower)
{
  const struct rescue_setup rs = { .ov = env.ov, .lower = lower, .cwd = env.cwd,
                                   .cluster_size = env.cluster_size };
  (void) rescue_overlay (&rs, why);
}

/* Ask the policy and save, reading the plugin through lower (NULL: the
 * setup's, released afterwards).  Returns 0 (saved or not wanted), or -1.
 */
static int
run (const char *event, const struct ov_lower *lower)
{
  struct policy_ctx ctx;
  struct policy_plan plan;
  struct save_result res;
  char perr[POLICY_ERRLEN], serr[SAVE_ERRLEN], why[POLICY_ERRLEN + SAVE_ERRLEN + 64];
  bool exiting = strcmp (event, "exit") == 0, yes = false;
  int r = 0;

  pthread_mutex_lock (&save_lock);
  bool own = lower == NULL;
  if (own)
    lower = env.lower;
  /* ctx keeps its own copy: a save replaces last_save_path before the
   * saved hook sees ctx.
   */
  char *last = last_save_path ? strdup (last_save_path) : NULL;
  fill_ctx (&ctx, event);
  ctx.last_save_path = last;
  if (policy_should_save (env.policy, &ctx, &yes, perr) == -1 ||
      (yes && policy_make_plan (env.policy, &ctx, &plan, perr) == -1)) {
    if (exiting)
      rescue (perr, lower);
    else
      nbdkit_error ("luacow: %s event: %s", event, perr);
    r = -1;
  }
  else if (yes) {
    if (save_with (event, &plan, env.cluster_size, lower, &res, serr) == 0) {
      struct policy_result pres = { plan.path, res.data_clusters, res.zero_clusters,
                                    res.bytes, res.seconds };
      policy_saved (env.policy, &ctx, &pres);
    }
    else {
      snprintf (why, sizeof why, "save to %s failed: %s", plan.path, serr);
      if (exiting)
        rescue (why, lower);
      else
        nbdkit_error ("luacow: %s event: %s", event, why);
      r = -1;
    }
    policy_plan_clear (&plan);
  }
  /* Nothing changed since the last save or the reload: no file lacks what
   * the journal holds, so it goes.
   */
  if (exiting && r == 0 && !yes && ctx.dirty_bytes + ctx.zero_bytes == 0 &&
      overlay_discard_journal (env.ov) == -1)
    nbdkit_error ("luacow: cannot remove the journal: %m");
  free (last);
  if (own && env.lower_done)
    env.lower_done ();
  pthread_mutex_unlock (&save_lock);
  return r;
}

int
events_fire (const char *event, const struct ov_lower *lower, int *err)
{
  if (!started)
    return 0;
  if (run (event, lower) == -1) {
    *err = EIO;
    return -1;
  }
  return 0;
}

void
events_exit (void)
{
  if (!started)
    return;
  if (interval_running) {
    pthread_mutex_lock (&interval_lock);
    interval_stop = true;
    pthread_cond_signal (&interval_cond);
    pthread_mutex_unlock (&interval_lock);
    pthread_join (interval_thread, NULL);
    interval_running = false;
  }
  run ("exit", NULL);
  started = false;
  free (last_save_path);
  last_save_path = NULL;
}
