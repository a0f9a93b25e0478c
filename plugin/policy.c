/* luacow: the policy, see policy.h.
 *
 * Each public function reads as marshal, call, validate: it copies what
 * the hook gets into a job the Lua host owns if the hook never returns,
 * and runs a body on the host (lua_host.h: protected, on a thread of its
 * own, under the budget) that builds the Lua arguments, calls
 * luacow.evaluate(P, field, ...) and checks the result into C values.
 * Defaults and the user-facing checks live in the luacow Lua library
 * (lua/luacow.lua, compiled in); the bodies check types again, since a
 * policy can reach the library's tables.  The host's own tables are
 * written and read raw: a metatable set by the policy is never called.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include <nbdkit-filter.h>

#include "luacow_core.h"
#include "luacow_lua.h"
#include "luacow_names_lua.h"
#include "lua_host.h"
#include "lua_sandbox.h"
#include "policy.h"

/* -D luacow.lua=1 traces every hook call and its result. */
NBDKIT_DLL_PUBLIC int luacow_debug_lua = 0;

_Static_assert (POLICY_ERRLEN == HOST_ERRLEN, "one error buffer size");

#define CLUSTER_MIN 512
#define CLUSTER_MAX 2097152

struct policy {
  struct lua_host *host;
  char *name;                 /* "policy.lua" or "default policy" */
  char *chunk;                /* "@policy.lua": prefix of positioned errors */
  char *cwd;
  char *script;               /* disk.script: its path, or NULL */
  const struct policy_param *params;    /* disk.params, the caller's */
  size_t nparams;
  int evaluate_ref, policy_ref, describe_ref;   /* registry */
};

/* One export's disk table, kept in the registry until the state closes. */
struct policy_disk {
  int ref;
};

/* A policy whose host was kept (a hook never returned) is kept too. */
static struct policy *kept_policy;

/* One call: its inputs copied, its outputs C values. */
struct job {
  struct policy *p;
  const char *field;
  int nargs;                  /* 1: disk or ctx; 2: ctx, result */
  bool with_ctx;
  int disk_ref;               /* the export's disk (also ctx's base) */
  struct policy_ctx ctx;      /* its strings are the job's own: */
  char *event, *loaded, *last_save_path, *result_path;
  char *export;               /* a new disk: disk.export */
  struct policy_result res;
  uint64_t size;              /* cluster_size: disk.size */
  char *src;                  /* startup: the script */
  size_t src_len;
  const struct policy_defaults *defaults;   /* startup: cow's parameters */
  /* results */
  bool yes, embed;
  unsigned mask;
  double number;
  lua_Integer integer;
  char *str, *file, *format;
  struct policy_recovered rec;  /* recovered: its journal is str */
};

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

/* ------------------------------------------------------------- marshal */

/* [-0, +0] t[key] = value, raw (t is an absolute index). */
static void
set_string (lua_State *L, int t, const char *key, const char *value)
{
  lua_pushstring (L, key);
  lua_pushstring (L, value);
  lua_rawset (L, t);
}

/* [-0, +0] t[key] = value, raw. */
static void
set_integer (lua_State *L, int t, const char *key, uint64_t value)
{
  lua_pushstring (L, key);
  lua_pushinteger (L, (lua_Integer) value);
  lua_rawset (L, t);
}

/* [-0, +0] t[key] = value, raw. */
static void
set_number (lua_State *L, int t, const char *key, double value)
{
  lua_pushstring (L, key);
  lua_pushnumber (L, value);
  lua_rawset (L, t);
}

/* [-0, +1] pushes the registry value ref. */
static void
push_ref (lua_State *L, int ref)
{
  lua_rawgeti (L, LUA_REGISTRYINDEX, ref);
}

/* [-0, +1] pushes a new disk table: export, params, cwd, script. */
static void
push_new_disk (lua_State *L, const struct job *j)
{
  const struct policy *p = j->p;
  lua_newtable (L);
  int disk = lua_gettop (L);
  lua_newtable (L);
  for (size_t i = 0; i < p->nparams; ++i)
    set_string (L, disk + 1, p->params[i].name, p->params[i].value);
  lua_setfield (L, disk, "params");
  set_string (L, disk, "cwd", p->cwd);
  set_string (L, disk, "export", j->export);
  if (p->script)
    set_string (L, disk, "script", p->script);
}

/* [-0, +1] pushes ctx: a fresh table with disk's fields plus the event's. */
static void
push_ctx (lua_State *L, const struct job *j)
{
  const struct policy_ctx *c = &j->ctx;
  lua_newtable (L);
  int ctx = lua_gettop (L);
  push_ref (L, j->disk_ref);
  lua_pushnil (L);
  while (lua_next (L, ctx + 1)) {
    lua_pushvalue (L, -2);
    lua_insert (L, -2);
    lua_rawset (L, ctx);
  }
  lua_pop (L, 1);
  set_string (L, ctx, "event", c->event);
  set_integer (L, ctx, "dirty_bytes", c->dirty_bytes);
  set_integer (L, ctx, "zero_bytes", c->zero_bytes);
  set_integer (L, ctx, "written_bytes", c->written_bytes);
  set_integer (L, ctx, "data_clusters", c->data_clusters);
  set_integer (L, ctx, "zero_clusters", c->zero_clusters);
  set_number (L, ctx, "started", c->started);
  set_number (L, ctx, "now", c->now);
  if (c->loaded)
    set_string (L, ctx, "loaded", c->loaded);
  if (c->last_save_path) {
    lua_pushliteral (L, "last_save");
    lua_newtable (L);
    set_string (L, ctx + 2, "path", c->last_save_path);
    set_number (L, ctx + 2, "time", c->last_save_time);
    lua_rawset (L, ctx);
  }
}

/* [-0, +1] pushes the saved hook's result table. */
static void
push_result (lua_State *L, const struct job *j)
{
  lua_newtable (L);
  int t = lua_gettop (L);
  set_string (L, t, "path", j->res.path);
  set_integer (L, t, "data_clusters", j->res.data_clusters);
  set_integer (L, t, "zero_clusters", j->res.zero_clusters);
  set_integer (L, t, "bytes", j->res.bytes);
  set_number (L, t, "seconds", j->res.seconds);
}

/* ---------------------------------------------------------------- call */

/* [-0, +0] logs the value on top for -D luacow.lua=1, as luacow.describe
 * renders it; a rendering that fails is reported, the value stands.
 */
static void
trace_value (lua_State *L, const struct job *j)
{
  if (!luacow_debug_lua)
    return;
  push_ref (L, j->p->describe_ref);
  lua_pushvalue (L, -2);
  int r = lua_pcall (L, 1, 1, 0);
  const char *s = lua_type (L, -1) == LUA_TSTRING ? lua_tostring (L, -1) : "?";
  nbdkit_debug ("luacow: lua: %s -> %s%s", j->field, r == LUA_OK ? "" : "(not printable) ", s);
  lua_pop (L, 1);
}

/* [-0, +1] luacow.evaluate (P, field, disk | ctx [, result]): the
 * field's normalized value.
 */
static void
evaluate (lua_State *L, const struct job *j)
{
  push_ref (L, j->p->evaluate_ref);
  push_ref (L, j->p->policy_ref);
  lua_pushstring (L, j->field);
  if (j->with_ctx)
    push_ctx (L, j);
  else if (j->nargs)
    push_ref (L, j->disk_ref);
  if (j->nargs == 2)
    push_result (L, j);
  lua_host_call (L, 2 + j->nargs, 1);
  trace_value (L, j);
}

/* ------------------------------------------------------------ validate */

/* [-0, +0] a malloc'd copy of the string at idx; raises on a NUL byte. */
static char *
to_c_string (lua_State *L, int idx, const struct job *j, const char *what)
{
  size_t len;
  const char *s = lua_tolstring (L, idx, &len);
  if (strlen (s) != len)
    luaL_error (L, "%s must not contain a NUL byte", what);
  char *d = strdup (s);
  if (!d)
    luaL_error (L, "%s: out of memory", j->field);
  return d;
}

/* [-1, +0] a string or nil (then NULL) into *out, malloc'd. */
static void
pop_string (lua_State *L, struct job *j, const char *what, char **out)
{
  if (lua_type (L, -1) == LUA_TSTRING)
    *out = to_c_string (L, -1, j, what);
  else if (!lua_isnil (L, -1))
    luaL_error (L, "%s must be nil or a string, got %s", what, luaL_typename (L, -1));
  lua_pop (L, 1);
}

static unsigned
event_bit (const char *e)
{
  if (strcmp (e, "flush") == 0)
    return EVENT_FLUSH;
  if (strcmp (e, "close") == 0)
    return EVENT_CLOSE;
  return strcmp (e, "interval") == 0 ? EVENT_INTERVAL : 0;
}

/* [-1, +0] events: a list of "flush", "close", "interval". */
static void
take_events (lua_State *L, struct job *j)
{
  luaL_checktype (L, -1, LUA_TTABLE);
  lua_Integer n = (lua_Integer) lua_rawlen (L, -1);
  for (lua_Integer i = 1; i <= n; ++i) {
    lua_rawgeti (L, -1, i);
    unsigned bit = lua_type (L, -1) == LUA_TSTRING ? event_bit (lua_tostring (L, -1)) : 0;
    if (!bit)
      luaL_error (L, "events must be a list of \"flush\", \"close\" and \"interval\"");
    j->mask |= bit;
    lua_pop (L, 1);
  }
  lua_pop (L, 1);
}

/* [-1, +0] interval: seconds, or nil (0). */
static void
take_interval (lua_State *L, struct job *j)
{
  if (lua_type (L, -1) == LUA_TNUMBER)
    j->number = lua_tonumber (L, -1);
  else if (!lua_isnil (L, -1))
    luaL_error (L, "interval must be nil or a number of seconds > 0");
  lua_pop (L, 1);
}

/* [-1, +0] save: a boolean. */
static void
take_save (lua_State *L, struct job *j)
{
  if (lua_type (L, -1) != LUA_TBOOLEAN)
    luaL_error (L, "save must be a boolean, got %s", luaL_typename (L, -1));
  j->yes = lua_toboolean (L, -1);
  lua_pop (L, 1);
}

/* [-1, +0] backing: nil or {file=, format=, embed=}. */
static void
take_backing (lua_State *L, struct job *j)
{
  if (!lua_isnil (L, -1)) {
    luaL_checktype (L, -1, LUA_TTABLE);
    lua_pushliteral (L, "embed");
    lua_rawget (L, -2);
    j->embed = lua_toboolean (L, -1);
    lua_pop (L, 1);
    lua_pushliteral (L, "format");
    lua_rawget (L, -2);
    pop_string (L, j, "backing.format", &j->format);
    lua_pushliteral (L, "file");
    lua_rawget (L, -2);
    pop_string (L, j, "backing.file", &j->file);
    if (!j->file)
      luaL_error (L, "backing.file must be a path");
  }
  lua_pop (L, 1);
}

/* [-1, +0] compress: false, "deflate" or "zstd". */
static void
take_compress (lua_State *L, struct job *j)
{
  if (lua_type (L, -1) == LUA_TSTRING) {
    const char *c = lua_tostring (L, -1);
    if (strcmp (c, "deflate") != 0 && strcmp (c, "zstd") != 0)
      luaL_error (L, "compress must be false, \"deflate\" or \"zstd\"");
    pop_string (L, j, "compress", &j->str);
    return;
  }
  if (!lua_isboolean (L, -1) || lua_toboolean (L, -1))
    luaL_error (L, "compress must be false, \"deflate\" or \"zstd\"");
  lua_pop (L, 1);
}

/* [-1, +0] the result of j->field into j. */
static void
take_result (lua_State *L, struct job *j)
{
  const char *f = j->field;
  if (strcmp (f, "events") == 0)
    take_events (L, j);
  else if (strcmp (f, "interval") == 0)
    take_interval (L, j);
  else if (strcmp (f, "save") == 0)
    take_save (L, j);
  else if (strcmp (f, "load") == 0 || strcmp (f, "name") == 0)
    pop_string (L, j, f, &j->str);
  else if (strcmp (f, "cow_on_read") == 0) {
    j->yes = lua_toboolean (L, -1);     /* true, false, or a path: on while it exists */
    if (lua_type (L, -1) == LUA_TSTRING)
      pop_string (L, j, f, &j->str);
    else
      lua_pop (L, 1);
  }
  else if (strcmp (f, "cow_on_cache") == 0) {
    j->yes = lua_toboolean (L, -1);
    lua_pop (L, 1);
  }
  else if (strcmp (f, "journal") == 0) {
    if (lua_type (L, -1) == LUA_TBOOLEAN && !lua_toboolean (L, -1))
      lua_pop (L, 1);         /* false: no journal */
    else
      pop_string (L, j, f, &j->str);
  }
  else if (strcmp (f, "backing") == 0)
    take_backing (L, j);
  else if (strcmp (f, "compress") == 0)
    take_compress (L, j);
  else
    lua_pop (L, 1);           /* saved */
}

/* --------------------------------------------------------------- bodies */

/* Any field: evaluate, validate. */
static int
field_body (lua_State *L)
{
  struct job *j = lua_host_arg (L);
  evaluate (L, j);
  take_result (L, j);
  return 0;
}

/* cluster_size: disk.size first, disk.cluster_size after. */
static int
cluster_size_body (lua_State *L)
{
  struct job *j = lua_host_arg (L);
  push_ref (L, j->disk_ref);
  int disk = lua_gettop (L);
  set_integer (L, disk, "size", j->size);
  evaluate (L, j);
  lua_Integer cs = lua_tointeger (L, -1);
  if (!lua_isinteger (L, -1) || cs < CLUSTER_MIN || cs > CLUSTER_MAX || (cs & (cs - 1)))
    luaL_error (L, "cluster_size must be a power of two from %d to %d", CLUSTER_MIN, CLUSTER_MAX);
  j->integer = cs;
  set_integer (L, disk, "cluster_size", (uint64_t) cs);
  lua_pop (L, 2);
  return 0;
}

static int
host_log (lua_State *L)
{
  nbdkit_debug ("luacow: policy: %s", luaL_checkstring (L, 1));
  return 0;
}

static int
open_embedded_library (lua_State *L)
{
  if (luaL_loadbufferx (L, (const char *) luacow_lua, luacow_lua_len,
                        "=luacow.lua", "t") != LUA_OK)
    return lua_error (L);
  lua_call (L, 0, 1);
  return 1;
}

static int
open_embedded_names (lua_State *L)
{
  if (luaL_loadbufferx (L, (const char *) luacow_names_lua, luacow_names_lua_len,
                        "=luacow/names.lua", "t") != LUA_OK)
    return lua_error (L);
  lua_call (L, 0, 1);
  return 1;
}

/* [-0, +0] require "luacow" finds the compiled-in copy, luacow.core
 * and luacow.names likewise; luacow.host is the filter's side of luacow.log.
 */
static void
register_library (lua_State *L)
{
  luaL_getsubtable (L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction (L, luaopen_luacow_core);
  lua_setfield (L, -2, "luacow.core");
  lua_pushcfunction (L, open_embedded_names);
  lua_setfield (L, -2, "luacow.names");
  lua_pop (L, 1);
  luaL_getsubtable (L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_newtable (L);
  lua_pushcfunction (L, host_log);
  lua_setfield (L, -2, "log");
  lua_setfield (L, -2, "luacow.host");
  lua_pop (L, 1);
}

/* Startup: libraries, disk, the script's table through luacow.policy. */
/* [-0, +0] luacow.default (in the library table on top) takes cow's
 * parameters; the table is the library's own (raw sets).
 */
static void
set_defaults (lua_State *L, const struct policy_defaults *d)
{
  lua_getfield (L, -1, "default");
  int t = lua_gettop (L);
  if (d->cluster_size)
    set_integer (L, t, "cluster_size", d->cluster_size);
  lua_pushliteral (L, "cow_on_read");
  if (d->cow_read_path)
    lua_pushstring (L, d->cow_read_path);
  else
    lua_pushboolean (L, d->cow_on_read);
  lua_rawset (L, t);
  lua_pushliteral (L, "cow_on_cache");
  lua_pushboolean (L, d->cow_on_cache);
  lua_rawset (L, t);
  lua_pop (L, 1);
}

static int
init_body (lua_State *L)
{
  struct job *j = lua_host_arg (L);
  struct policy *p = j->p;
  lua_sandbox_open (L);
  register_library (L);
  luaL_requiref (L, "luacow", open_embedded_library, 0);
  if (j->defaults)
    set_defaults (L, j->defaults);
  lua_getfield (L, -1, "evaluate");
  p->evaluate_ref = luaL_ref (L, LUA_REGISTRYINDEX);
  lua_getfield (L, -1, "describe");
  p->describe_ref = luaL_ref (L, LUA_REGISTRYINDEX);
  lua_getfield (L, -1, "policy");
  if (j->src) {
    if (luaL_loadbufferx (L, j->src, j->src_len, p->chunk, "t") != LUA_OK)
      return lua_error (L);
    lua_host_field (L, "script");
    lua_host_call (L, 0, 1);
  }
  else
    lua_newtable (L);
  lua_host_field (L, "policy");
  lua_host_call (L, 1, 1);
  p->policy_ref = luaL_ref (L, LUA_REGISTRYINDEX);
  lua_pop (L, 1);
  return 0;
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
      run_job (p, &j, init_body, err) == -1) {
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
  int r = run_job (p, &j, field_body, err);
  if (r == 0) {
    *mask = j->mask;
    job_release (j);
    j = job_new (p, "interval", NULL, NULL);
    if (!j)
      return out_of_memory (p, err);
    r = run_job (p, &j, field_body, err);
    if (r == 0)
      *interval = j->number;
  }
  job_release (j);
  return r;
}

/* A new disk table for j->export, its ref in j->integer. */
static int
disk_body (lua_State *L)
{
  struct job *j = lua_host_arg (L);
  push_new_disk (L, j);
  j->integer = luaL_ref (L, LUA_REGISTRYINDEX);
  return 0;
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
  int r = run_job (p, &j, disk_body, err);
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
  int r = run_job (p, &j, cluster_size_body, err);
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
  int r = run_job (p, &j, field_body, err);
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

/* disk.recovered = { journal, blocks, bytes, flushed, seconds }. */
static int
recovered_body (lua_State *L)
{
  struct job *j = lua_host_arg (L);
  push_ref (L, j->disk_ref);
  int disk = lua_gettop (L);
  lua_pushliteral (L, "recovered");
  lua_newtable (L);
  int t = lua_gettop (L);
  set_string (L, t, "journal", j->str);
  set_integer (L, t, "blocks", j->rec.blocks);
  set_integer (L, t, "bytes", j->rec.bytes);
  set_number (L, t, "flushed", j->rec.flushed);
  set_number (L, t, "seconds", j->rec.seconds);
  lua_rawset (L, disk);
  lua_pop (L, 1);
  return 0;
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
  int res = run_job (p, &j, recovered_body, err);
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
  int r = run_job (p, &j, field_body, err);
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
  return run_job (p, j, field_body, err);
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
  int r = j ? run_job (p, &j, field_body, err) : out_of_memory (p, err);
  if (r == -1)
    nbdkit_error ("luacow: %s (the save itself succeeded)", err);
  job_release (j);
}
