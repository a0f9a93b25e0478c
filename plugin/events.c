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
#include "exportname.h"
#include "rescue.h"
#include "save.h"

struct events {
  struct events_setup env;
  pthread_mutex_t save_lock;    /* one save (or policy call) at a time */
  char *last_save_path;
  double last_save_time;
  uint64_t saved_written, saved_zeroed;  /* client bytes the last save holds */
  pthread_t interval_thread;
  bool interval_running, interval_stop;
  pthread_mutex_t interval_lock;
  pthread_cond_t interval_cond;
};

static void *
interval_main (void *arg)
{
  struct events *ev = arg;
  double interval = ev->env.interval;
  pthread_mutex_lock (&ev->interval_lock);
  for (;;) {
    struct timespec until;
    clock_gettime (CLOCK_MONOTONIC, &until);
    double whole = (double) (long) interval;
    until.tv_sec += (time_t) whole;
    until.tv_nsec += (long) ((interval - whole) * 1e9);
    if (until.tv_nsec >= 1000000000L) { until.tv_sec++; until.tv_nsec -= 1000000000L; }
    while (!ev->interval_stop &&
           pthread_cond_timedwait (&ev->interval_cond, &ev->interval_lock, &until) != ETIMEDOUT)
      ;
    if (ev->interval_stop)
      break;
    pthread_mutex_unlock (&ev->interval_lock);
    int err;
    events_fire (ev, "interval", NULL, &err);
    pthread_mutex_lock (&ev->interval_lock);
  }
  pthread_mutex_unlock (&ev->interval_lock);
  return NULL;
}

static void
events_free (struct events *ev)
{
  pthread_mutex_destroy (&ev->save_lock);
  pthread_mutex_destroy (&ev->interval_lock);
  pthread_cond_destroy (&ev->interval_cond);
  free (ev->last_save_path);
  free (ev);
}

struct events *
events_start (const struct events_setup *setup)
{
  struct events *ev = calloc (1, sizeof *ev);
  if (!ev) {
    nbdkit_error ("luacow: out of memory");
    return NULL;
  }
  ev->env = *setup;
  pthread_mutex_init (&ev->save_lock, NULL);
  pthread_mutex_init (&ev->interval_lock, NULL);
  monotonic_cond_init (&ev->interval_cond);
  if ((ev->env.mask & EVENT_INTERVAL) && ev->env.interval > 0) {
    int e = pthread_create (&ev->interval_thread, NULL, interval_main, ev);
    if (e) {
      nbdkit_error ("luacow: cannot start the interval thread: %s", strerror (e));
      events_free (ev);
      return NULL;
    }
    ev->interval_running = true;
  }
  return ev;
}

int
events_wanted (const struct events *ev, unsigned event)
{
  return (ev->env.mask & event) != 0;
}

static void
fill_ctx (const struct events *ev, struct policy_ctx *c, const char *event)
{
  const struct events_setup *env = &ev->env;
  struct ov_stats st;
  overlay_stats (env->ov, &st);
  *c = (struct policy_ctx) {
    .disk = env->disk,
    .event = event, .size = overlay_size (env->ov), .cluster_size = env->cluster_size,
    .dirty_bytes = st.written_bytes - ev->saved_written,
    .zero_bytes = st.zeroed_bytes - ev->saved_zeroed,
    .written_bytes = st.written_bytes + st.zeroed_bytes,
    .started = env->started, .now = epoch_seconds (),
    .loaded = env->loaded,
    .last_save_time = ev->last_save_time,
  };
  save_count (env->ov, env->cluster_size, &c->data_clusters, &c->zero_clusters);
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
log_saved (const struct events *ev, const char *event, const struct policy_plan *plan,
           const struct save_result *res)
{
  char *cmd = NULL, *line = NULL, of[EXPORT_OF_LEN];
  bool embedded = plan->backing_file && plan->backing_embed;
  if (!embedded)
    cmd = save_rebase_command (plan->path, plan->backing_file, plan->backing_format);
  if (asprintf (&line, "luacow: saved %s (%s%s): %" PRIu64 " data clusters, %" PRIu64
                " zero clusters, %" PRIu64 " bytes, %.3f s; %s%s",
                plan->path, event, export_of (ev->env.export, of), res->data_clusters, res->zero_clusters,
                res->bytes, res->seconds,
                embedded ? "backing file " : "attach a base with: ",
                embedded ? plan->backing_file : (cmd ? cmd : "qemu-img rebase -u")) == -1)
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
save_with (struct events *ev, const char *event, const struct policy_plan *plan,
           const struct ov_lower *lower, struct save_result *res, char err[SAVE_ERRLEN])
{
  struct events_setup *env = &ev->env;
  struct save_request req = {
    .path = plan->path, .cluster_size = env->cluster_size,
    .compress = compress_of (plan->compress),
    .backing_file = plan->backing_file, .backing_format = plan->backing_format,
    .backing_embed = plan->backing_embed,
  };
  struct ov_stats st;
  if (env->claim && env->claim (env->opaque, plan->path, err, SAVE_ERRLEN) == -1)
    return -1;
  struct overlay *view = overlay_freeze (env->ov);
  if (!view) {
    snprintf (err, SAVE_ERRLEN, "out of memory copying the block map");
    return -1;
  }
  overlay_stats (view, &st);            /* what this image will hold */
  int r = save_overlay (view, lower, &req, res, err);
  overlay_free (view);
  if (r == 0 && strcmp (event, "exit") == 0 &&
      overlay_discard_journal (env->ov) == -1)
    nbdkit_error ("luacow: saved %s, but cannot remove the journal: %m", plan->path);
  if (r == 0) {
    ev->saved_written = st.written_bytes;
    ev->saved_zeroed = st.zeroed_bytes;
    log_saved (ev, event, plan, res);
    free (ev->last_save_path);
    ev->last_save_path = strdup (plan->path);
    ev->last_save_time = epoch_seconds ();
  }
  return r;
}

/* At exit, when the policy or its save failed: keep the data in a file
 * of our own (rescue.h).
 */
static void
rescue (const struct events *ev, const char *why, const struct ov_lower *lower)
{
  const struct rescue_setup rs = { .ov = ev->env.ov, .lower = lower, .cwd = ev->env.cwd,
                                   .cluster_size = ev->env.cluster_size,
                                   .export = ev->env.export };
  (void) rescue_overlay (&rs, why);
}

/* A failure: at exit the rescue file, else one line naming the event. */
static void
failed (const struct events *ev, bool exiting, const char *event, const char *why,
        const struct ov_lower *lower)
{
  char of[EXPORT_OF_LEN];
  if (exiting)
    rescue (ev, why, lower);
  else
    nbdkit_error ("luacow: %s event%s: %s", event, export_of (ev->env.export, of), why);
}

/* Ask the policy and save, reading the plugin through lower (NULL: the
 * setup's, released afterwards).  Returns 0 (saved or not wanted), or -1.
 */
static int
run (struct events *ev, const char *event, const struct ov_lower *lower)
{
  struct events_setup *env = &ev->env;
  struct policy_ctx ctx;
  struct policy_plan plan;
  struct save_result res;
  char perr[POLICY_ERRLEN], serr[SAVE_ERRLEN], why[POLICY_ERRLEN + SAVE_ERRLEN + 64];
  bool exiting = strcmp (event, "exit") == 0, yes = false;
  int r = 0;

  pthread_mutex_lock (&ev->save_lock);
  bool own = lower == NULL;
  if (own)
    lower = env->lower;
  /* ctx keeps its own copy: a save replaces last_save_path before the
   * saved hook sees ctx.
   */
  char *last = ev->last_save_path ? strdup (ev->last_save_path) : NULL;
  fill_ctx (ev, &ctx, event);
  ctx.last_save_path = last;
  if (policy_should_save (env->policy, &ctx, &yes, perr) == -1 ||
      (yes && policy_make_plan (env->policy, &ctx, &plan, perr) == -1)) {
    failed (ev, exiting, event, perr, lower);
    r = -1;
  }
  else if (yes) {
    if (save_with (ev, event, &plan, lower, &res, serr) == 0) {
      struct policy_result pres = { plan.path, res.data_clusters, res.zero_clusters,
                                    res.bytes, res.seconds };
      policy_saved (env->policy, &ctx, &pres);
    }
    else {
      snprintf (why, sizeof why, "save to %s failed: %s", plan.path, serr);
      failed (ev, exiting, event, why, lower);
      r = -1;
    }
    policy_plan_clear (&plan);
  }
  /* Nothing changed since the last save or the reload: no file lacks what
   * the journal holds, so it goes.
   */
  if (exiting && r == 0 && !yes && ctx.dirty_bytes + ctx.zero_bytes == 0 &&
      overlay_discard_journal (env->ov) == -1)
    nbdkit_error ("luacow: cannot remove the journal: %m");
  free (last);
  if (own && env->lower_done)
    env->lower_done (env->opaque);
  pthread_mutex_unlock (&ev->save_lock);
  return r;
}

int
events_fire (struct events *ev, const char *event, const struct ov_lower *lower, int *err)
{
  if (run (ev, event, lower) == -1) {
    *err = EIO;
    return -1;
  }
  return 0;
}

void
events_exit (struct events *ev)
{
  if (ev->interval_running) {
    pthread_mutex_lock (&ev->interval_lock);
    ev->interval_stop = true;
    pthread_cond_signal (&ev->interval_cond);
    pthread_mutex_unlock (&ev->interval_lock);
    pthread_join (ev->interval_thread, NULL);
    ev->interval_running = false;
  }
  run (ev, "exit", NULL);
  events_free (ev);
}
