/* luacow: the policy, see policy.h.
 *
 * Each public function reads as marshal, call, validate: it copies what
 * the hook gets into a job the Lua host owns if the hook never returns,
 * and runs a body (policy_lua.c) on the host (lua_host.h: protected, on a
 * thread of its own, under the budget) that builds the Lua arguments,
 * calls luacow.evaluate(P, field, ...) and checks the result into C
 * values.  Defaults and the user-facing checks live in the luacow Lua
 * library (lua/luacow.lua, compiled in); the bodies check types again,
 * since a policy can reach the library's tables.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>   /* LUA_NOREF */
#include <lua.h>

#include <nbdkit-filter.h>

#include "lua_host.h"
#include "policy.h"
#include "policy_job.h"

_Static_assert (POLICY_ERRLEN == HOST_ERRLEN, "one error buffer size");

/* A policy whose host was kept (a hook never returned) is kept too. */
static struct policy *kept_policy;

static void
job_release (void *v)
{
  struct job *j = v;
  if (!j)
    return;
  free (j->event);
  free (j->loaded);
  free (j->last_save_path);
  free (j->result_path);
  free (j->src);
  free (j->export);
  free (j->str);
  free (j->file);
  free (j->format);
  free (j);
}

static char *
dup_or_null (const char *s, bool *ok)
{
  char *d = s ? strdup (s) : NULL;
  if (s && !d)
    *ok = false;
  return d;
}

/* A job for field; ctx and res (may be NULL) are copied. */
static struct job *
job_new (struct policy *p, const char *field, const struct policy_ctx *ctx,
         const struct policy_result *res)
{
  struct job *j = calloc (1, sizeof *j);
  if (!j)
    return NULL;
  bool ok = true;
  j->p = p;
  j->field = field;
  j->disk_ref = LUA_NOREF;
  if (ctx) {
    j->with_ctx = true;
    j->nargs = res ? 2 : 1;
    j->disk_ref = ctx->disk->ref;
    j->ctx = *ctx;
    j->ctx.event = j->event = dup_or_null (ctx->event, &ok);
    j->ctx.loaded = j->loaded = dup_or_null (ctx->loaded, &ok);
    j->ctx.last_save_path = j->last_save_path = dup_or_null (ctx->last_save_path, &ok);
  }
  if (res) {
    j->res = *res;
    j->res.path = j->result_path = dup_or_null (res->path, &ok);
  }
  if (!ok) {
    job_release (j);
    return NULL;
  }
  return j;
}

/* Run body for *j; when the hook never returned, *j is the host's now. */
static int
run_job (struct policy *p, struct job **j, lua_CFunction body, char err[POLICY_ERRLEN])
{
  int s = lua_host_run (p->host, (*j)->field, body, *j, job_release, err);
  if (s == HOST_ABANDONED)
    *j = NULL;
  return s == HOST_OK ? 0 : -1;
}

/* ------------------------------------------------------------ lifecycle */

static char *
read_script (const char *path, size_t *len, char err[POLICY_ERRLEN])
{
  FILE *f = fopen (path, "rb");
  if (!f) {
    snprintf (err, POLICY_ERRLEN, "%s: cannot open the policy script: %s", path, strerror (errno));
    return NULL;
  }
  size_t cap = 4096, n = 0;
  char *buf = malloc (cap);
  while (buf) {
    n += fread (buf + n, 1, cap - n, f);
    if (n < cap || cap >= (16u << 20))
      break;
    char *bigger = realloc (buf, cap * 2);
    if (!bigger) { free (buf); buf = NULL; break; }
    buf = bigger;
    cap *= 2;
  }
  bool bad = ferror (f) || !buf || n == cap;
  fclose (f);
  if (bad) {
    snprintf (err, POLICY_ERRLEN, "%s: cannot read the policy script (unreadable or over 16 MiB)", path);
    free (buf);
    return NULL;
  }
  *len = n;
  return buf;
}


struct policy *
policy_new (const char *script, const struct policy_param *params, size_t nparams,
            const char *cwd, double budget, const struct policy_defaults *defaults,
            char err[POLICY_ERRLEN])
{
  struct policy *p = calloc (1, sizeof *p);
  struct job *j = p ? job_new (p, "script", NULL, NULL) : NULL;
  if (!j) {
    free (p);
    snprintf (err, POLICY_ERRLEN, "cannot allocate the policy host");
    return NULL;
  }
  const char *base = script ? strrchr (script, '/') : NULL;
  base = base ? base + 1 : script;
  p->cwd = strdup (cwd);
  p->name = strdup (script ? base : "default policy");
  if (asprintf (&p->chunk, "@%s", script ? base : "default policy") == -1)
    p->chunk = NULL;
  p->params = params;
  p->nparams = nparams;
  j->defaults = defaults;
  if (script && !(p->script = strdup (script)))
    goto oom;
  if (!p->cwd || !p->name || !p->chunk)
    goto oom;
  if ((script && !(j->src = read_script (script, &j->src_len, err))) ||
      !(p->host = lua_host_new (p->name, budget, &luacow_debug_lua, err)) ||
      run_job (p, &j, policy_init_body, err) == -1) {
    job_release (j);
    policy_free (p);
    return NULL;
  }
  job_release (j);
  return p;
 oom:
  snprintf (err, POLICY_ERRLEN, "cannot allocate the policy host");
  job_release (j);
  policy_free (p);
  return NULL;
}

void
policy_free (struct policy *p)
{
  if (!p)
    return;
  if (!lua_host_free (p->host)) {
    kept_policy = p;          /* a body may still use it */
    return;
  }
  free (p->name);
  free (p->chunk);
  free (p->cwd);
  free (p->script);
  free (p);
}

const char *
policy_name (const struct policy *p)
{
  return p->name;
}

/* ------------------------------------------------------------- the API */

char *
policy_resolve (const char *cwd, const char *path)
{
  char *r;
  if (path[0] == '/')
    return strdup (path);
  if (asprintf (&r, "%s/%s", strcmp (cwd, "/") == 0 ? "" : cwd, path) == -1)
    return NULL;
  return r;
}

static int
out_of_memory (struct policy *p, char err[POLICY_ERRLEN])
{
  snprintf (err, POLICY_ERRLEN, "%s: out of memory", p->name);
  return -1;
}

int
policy_events (struct policy *p, unsigned *mask, double *interval, char err[POLICY_ERRLEN])
{
  struct job *j = job_new (p, "events", NULL, NULL);
  *mask = 0;
  *interval = 0;
  if (!j)
    return out_of_memory (p, err);
  int r = run_job (p, &j, policy_field_body, err);
  if (r == 0) {
    *mask = j->mask;
    job_release (j);
    j = job_new (p, "interval", NULL, NULL);
    if (!j)
      return out_of_memory (p, err);
    r = run_job (p, &j, policy_field_body, err);
    if (r == 0)
      *interval = j->number;
  }
  job_release (j);
  return r;
}

struct policy_disk *
policy_disk_new (struct policy *p, const char *export, char err[POLICY_ERRLEN])
{
  struct policy_disk *d = malloc (sizeof *d);
  struct job *j = d ? job_new (p, "disk", NULL, NULL) : NULL;
  if (!j || !(j->export = strdup (export))) {
    job_release (j);
    free (d);
    out_of_memory (p, err);
    return NULL;
  }
  int r = run_job (p, &j, policy_disk_body, err);
  if (r == 0)
    d->ref = (int) j->integer;
  job_release (j);
  if (r == -1) {
    free (d);
    return NULL;
  }
  return d;
}

void
policy_disk_free (struct policy_disk *d)
{
  free (d);
}

/* A job for a field of disk d. */
static struct job *
disk_job (struct policy *p, const struct policy_disk *d, const char *field)
{
  struct job *j = job_new (p, field, NULL, NULL);
  if (j) {
    j->nargs = 1;
    j->disk_ref = d->ref;
  }
  return j;
}

int
policy_cluster_size (struct policy *p, const struct policy_disk *d, uint64_t size,
                     uint32_t *cluster_size, char err[POLICY_ERRLEN])
{
  struct job *j = disk_job (p, d, "cluster_size");
  if (!j)
    return out_of_memory (p, err);
  j->size = size;
  int r = run_job (p, &j, policy_cluster_size_body, err);
  if (r == 0)
    *cluster_size = (uint32_t) j->integer;
  job_release (j);
  return r;
}

/* A path result made absolute (NULL stays NULL). */
static int
resolve_result (struct policy *p, char **path, char err[POLICY_ERRLEN])
{
  if (!*path)
    return 0;
  char *abs = policy_resolve (p->cwd, *path);
  free (*path);
  *path = abs;
  return abs ? 0 : out_of_memory (p, err);
}


/* A startup field of disk that gives a path (or nothing): *path is NULL
 * or absolute, to free; *yes (when asked for) is the result's truth.
 */
static int
disk_field (struct policy *p, const struct policy_disk *d, const char *field, char **path,
            bool *yes, char err[POLICY_ERRLEN])
{
  struct job *j = disk_job (p, d, field);
  if (path)
    *path = NULL;
  if (!j)
    return out_of_memory (p, err);
  int r = run_job (p, &j, policy_field_body, err);
  if (r == 0 && yes)
    *yes = j->yes;
  if (r == 0 && path) {
    *path = j->str;
    j->str = NULL;
    r = resolve_result (p, path, err);
  }
  job_release (j);
  return r;
}

int
policy_load (struct policy *p, const struct policy_disk *d, char **path,
             char err[POLICY_ERRLEN])
{
  return disk_field (p, d, "load", path, NULL, err);
}

int
policy_journal (struct policy *p, const struct policy_disk *d, char **path,
                char err[POLICY_ERRLEN])
{
  return disk_field (p, d, "journal", path, NULL, err);
}

int
policy_cow (struct policy *p, const struct policy_disk *d, bool *on_read, char **read_path,
            bool *on_cache, char err[POLICY_ERRLEN])
{
  *on_cache = false;
  if (disk_field (p, d, "cow_on_read", read_path, on_read, err) == -1)
    return -1;
  return disk_field (p, d, "cow_on_cache", NULL, on_cache, err);
}

int
policy_set_recovered (struct policy *p, const struct policy_disk *d,
                      const struct policy_recovered *r, char err[POLICY_ERRLEN])
{
  struct job *j = disk_job (p, d, "recovered");
  if (!j || !(j->str = strdup (r->journal))) {
    job_release (j);
    return out_of_memory (p, err);
  }
  j->rec = *r;
  j->rec.journal = NULL;
  int res = run_job (p, &j, policy_recovered_body, err);
  job_release (j);
  return res;
}

int
policy_should_save (struct policy *p, const struct policy_ctx *ctx, bool *yes,
                    char err[POLICY_ERRLEN])
{
  struct job *j = job_new (p, "save", ctx, NULL);
  if (!j)
    return out_of_memory (p, err);
  int r = run_job (p, &j, policy_field_body, err);
  if (r == 0)
    *yes = j->yes;
  job_release (j);
  return r;
}

void
policy_plan_clear (struct policy_plan *plan)
{
  free (plan->path);
  free (plan->backing_file);
  free (plan->backing_format);
  free (plan->compress);
  memset (plan, 0, sizeof *plan);
}

/* One field of the plan: the job's results, or -1. */
static int
plan_field (struct policy *p, const char *field, const struct policy_ctx *ctx,
            struct job **j, char err[POLICY_ERRLEN])
{
  *j = job_new (p, field, ctx, NULL);
  if (!*j)
    return out_of_memory (p, err);
  return run_job (p, j, policy_field_body, err);
}

int
policy_save_name (struct policy *p, const struct policy_ctx *ctx, char **path,
                  char err[POLICY_ERRLEN])
{
  struct job *j = NULL;
  *path = NULL;
  int r = plan_field (p, "name", ctx, &j, err);
  if (r == 0) {
    *path = j->str;
    j->str = NULL;
    r = resolve_result (p, path, err);
  }
  job_release (j);
  return r;
}

int
policy_make_plan (struct policy *p, const struct policy_ctx *ctx,
                  struct policy_plan *plan, char err[POLICY_ERRLEN])
{
  struct job *j = NULL;
  memset (plan, 0, sizeof *plan);
  int r = policy_save_name (p, ctx, &plan->path, err);
  if (r == 0 && !plan->path) {
    snprintf (err, POLICY_ERRLEN, "%s: name gave no path to save to (set luacow-save=PATH or a name field)",
              p->name);
    r = -1;
  }
  if (r == 0 && (r = plan_field (p, "backing", ctx, &j, err)) == 0) {
    plan->backing_file = j->file;
    plan->backing_format = j->format;
    plan->backing_embed = j->embed;
    j->file = j->format = NULL;
    r = resolve_result (p, &plan->backing_file, err);
  }
  job_release (j);
  j = NULL;
  if (r == 0 && (r = plan_field (p, "compress", ctx, &j, err)) == 0) {
    plan->compress = j->str;
    j->str = NULL;
  }
  job_release (j);
  if (r == -1)
    policy_plan_clear (plan);
  return r;
}

void
policy_saved (struct policy *p, const struct policy_ctx *ctx,
              const struct policy_result *res)
{
  char err[POLICY_ERRLEN];
  struct job *j = job_new (p, "saved", ctx, res);
  int r = j ? run_job (p, &j, policy_field_body, err) : out_of_memory (p, err);
  if (r == -1)
    nbdkit_error ("luacow: %s (the save itself succeeded)", err);
  job_release (j);
}
