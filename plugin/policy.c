/* luacow: the Lua policy host, see policy.h.
 *
 * Validation and defaults live in the luacow Lua library (lua/luacow.lua,
 * compiled in): the host only calls luacow.policy(t) once and
 * luacow.evaluate(P, field, ...) for each value, and turns the normalized
 * results into C values.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <nbdkit-filter.h>

#include "luacow_core.h"
#include "luacow_lua.h"
#include "policy.h"

/* -D luacow.lua=1 traces every hook call and its result. */
NBDKIT_DLL_PUBLIC int luacow_debug_lua = 0;

#define MEMORY_LIMIT (256u << 20)   /* a policy has no business with more */
#define HOOK_EVERY 1000             /* instructions between budget checks */

struct policy {
  lua_State *L;
  pthread_mutex_t lock;
  char *name;                 /* "policy.lua" or "default policy" */
  char *chunk;                /* "@policy.lua": prefix of positioned errors */
  char *cwd;
  double budget;
  struct timespec deadline;
  const char *field;          /* hook being run, for the budget message */
  int evaluate_ref, policy_ref, disk_ref, traceback_ref;
  size_t mem_used;
};

static struct policy *
host_of (lua_State *L)
{
  return *(struct policy **) lua_getextraspace (L);
}

/* ---------------------------------------------------------------- guards */

static void *
capped_alloc (void *ud, void *ptr, size_t osize, size_t nsize)
{
  struct policy *p = ud;
  if (ptr == NULL)
    osize = 0;
  if (nsize == 0) {
    free (ptr);
    p->mem_used -= osize;
    return NULL;
  }
  if (nsize > osize && p->mem_used - osize + nsize > MEMORY_LIMIT)
    return NULL;              /* Lua raises "not enough memory" */
  void *n = realloc (ptr, nsize);
  if (n)
    p->mem_used = p->mem_used - osize + nsize;
  return n;
}

static bool
past_deadline (const struct policy *p)
{
  struct timespec now;
  clock_gettime (CLOCK_MONOTONIC, &now);
  return now.tv_sec > p->deadline.tv_sec ||
    (now.tv_sec == p->deadline.tv_sec && now.tv_nsec > p->deadline.tv_nsec);
}

/* Count hook: a hook that loops forever gets an error at its own line. */
static void
budget_hook (lua_State *L, lua_Debug *ar)
{
  (void) ar;
  struct policy *p = host_of (L);
  if (!past_deadline (p))
    return;
  lua_sethook (L, budget_hook, LUA_MASKCOUNT, 1);  /* fire again if caught */
  luaL_where (L, 0);          /* level 0 in a hook: the looping function */
  char budget[32];
  snprintf (budget, sizeof budget, "%g", p->budget);
  lua_pushfstring (L, "%s: hook exceeded its time budget (%s s)", p->field, budget);
  lua_concat (L, 2);
  lua_error (L);
}

static void
arm_budget (struct policy *p, const char *field)
{
  p->field = field;
  clock_gettime (CLOCK_MONOTONIC, &p->deadline);
  double whole = (double) (long) p->budget;
  p->deadline.tv_sec += (time_t) whole;
  p->deadline.tv_nsec += (long) ((p->budget - whole) * 1e9);
  if (p->deadline.tv_nsec >= 1000000000L) {
    p->deadline.tv_sec++;
    p->deadline.tv_nsec -= 1000000000L;
  }
  lua_sethook (p->L, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
}

static int
traceback_handler (lua_State *L)
{
  const char *msg = lua_tostring (L, 1);
  if (msg == NULL)
    msg = lua_pushfstring (L, "(error object is a %s value)", luaL_typename (L, 1));
  luaL_traceback (L, L, msg, 1);
  return 1;
}

/* os.exit would end nbdkit before the overlay is saved. */
static int
forbidden_exit (lua_State *L)
{
  return luaL_error (L, "os.exit is not allowed in a policy (luacow must save the overlay first)");
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

/* Turn the error on the stack (message + traceback) into one line that
 * names the script, and log the traceback for -D luacow.lua=1.
 */
static void
take_error (struct policy *p, char err[POLICY_ERRLEN])
{
  const char *full = lua_tostring (p->L, -1);
  if (!full)
    full = "(error object is not a string)";
  if (luacow_debug_lua)
    nbdkit_debug ("luacow: %s: %s", p->name, full);
  size_t line = strcspn (full, "\n");
  size_t namelen = strlen (p->name);
  /* "policy.lua:12: ..." already names the script; plain validation
   * messages get "policy.lua: " in front.
   */
  if (strlen (full) > namelen && memcmp (full, p->name, namelen) == 0 && full[namelen] == ':')
    snprintf (err, POLICY_ERRLEN, "%.*s", (int) line, full);
  else
    snprintf (err, POLICY_ERRLEN, "%s: %.*s", p->name, (int) line, full);
  lua_pop (p->L, 1);
}

/* Call the function below nargs arguments on the stack, under budget.
 * Leaves nres results, or returns -1 with err filled.
 */
static int
guarded_call (struct policy *p, const char *field, int nargs, int nres,
              char err[POLICY_ERRLEN])
{
  lua_State *L = p->L;
  int base = lua_gettop (L) - nargs;          /* the function's index */
  lua_rawgeti (L, LUA_REGISTRYINDEX, p->traceback_ref);
  lua_insert (L, base);
  arm_budget (p, field);
  int r = lua_pcall (L, nargs, nres, base);
  lua_sethook (L, NULL, 0, 0);
  lua_remove (L, base);
  if (r != LUA_OK) {
    take_error (p, err);
    return -1;
  }
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

static void
set_string_field (lua_State *L, const char *key, const char *value)
{
  lua_pushstring (L, value);
  lua_setfield (L, -2, key);
}

/* luacow.default (the table on top) takes cow's parameters. */
static void
set_defaults (lua_State *L, const struct policy_defaults *d)
{
  lua_getfield (L, -1, "default");
  if (d->cluster_size) {
    lua_pushinteger (L, d->cluster_size);
    lua_setfield (L, -2, "cluster_size");
  }
  if (d->cow_read_path)
    lua_pushstring (L, d->cow_read_path);
  else
    lua_pushboolean (L, d->cow_on_read);
  lua_setfield (L, -2, "cow_on_read");
  lua_pushboolean (L, d->cow_on_cache);
  lua_setfield (L, -2, "cow_on_cache");
  lua_pop (L, 1);
}

struct policy *
policy_new (const char *script, const struct policy_param *params, size_t nparams,
            const char *cwd, double budget, const struct policy_defaults *defaults,
            char err[POLICY_ERRLEN])
{
  struct policy *p = calloc (1, sizeof *p);
  if (!p) {
    snprintf (err, POLICY_ERRLEN, "cannot allocate the policy host");
    return NULL;
  }
  pthread_mutex_init (&p->lock, NULL);
  p->budget = budget;
  p->cwd = strdup (cwd);
  const char *base = script ? strrchr (script, '/') : NULL;
  base = base ? base + 1 : script;
  p->name = strdup (script ? base : "default policy");
  if (asprintf (&p->chunk, "@%s", script ? base : "default policy") == -1)
    p->chunk = NULL;
  p->L = lua_newstate (capped_alloc, p);
  if (!p->cwd || !p->name || !p->chunk || !p->L) {
    snprintf (err, POLICY_ERRLEN, "cannot create the Lua state");
    policy_free (p);
    return NULL;
  }
  lua_State *L = p->L;
  *(struct policy **) lua_getextraspace (L) = p;
  luaL_openlibs (L);

  lua_getglobal (L, "os");
  lua_pushcfunction (L, forbidden_exit);
  lua_setfield (L, -2, "exit");
  lua_pop (L, 1);

  /* require "luacow" finds the compiled-in copy; luacow.core likewise. */
  luaL_getsubtable (L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction (L, open_embedded_library);
  lua_setfield (L, -2, "luacow");
  lua_pushcfunction (L, luaopen_luacow_core);
  lua_setfield (L, -2, "luacow.core");
  lua_pop (L, 1);
  luaL_getsubtable (L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_newtable (L);
  lua_pushcfunction (L, host_log);
  lua_setfield (L, -2, "log");
  lua_setfield (L, -2, "luacow.host");
  lua_pop (L, 1);

  lua_pushcfunction (L, traceback_handler);
  p->traceback_ref = luaL_ref (L, LUA_REGISTRYINDEX);

  /* disk: size and cluster_size are filled in when known. */
  lua_newtable (L);
  lua_newtable (L);
  for (size_t i = 0; i < nparams; ++i)
    set_string_field (L, params[i].name, params[i].value);
  lua_setfield (L, -2, "params");
  set_string_field (L, "cwd", cwd);
  if (script)
    set_string_field (L, "script", script);
  p->disk_ref = luaL_ref (L, LUA_REGISTRYINDEX);

  /* luacow = require "luacow"; keep luacow.evaluate. */
  lua_getglobal (L, "require");
  lua_pushliteral (L, "luacow");
  if (guarded_call (p, "require", 1, 1, err) == -1) {
    policy_free (p);
    return NULL;
  }
  lua_getfield (L, -1, "evaluate");
  p->evaluate_ref = luaL_ref (L, LUA_REGISTRYINDEX);
  if (defaults)
    set_defaults (L, defaults);
  lua_getfield (L, -1, "policy");            /* stack: luacow, luacow.policy */

  /* Run the script once; its result goes through luacow.policy. */
  if (script) {
    size_t len;
    char *src = read_script (script, &len, err);
    if (!src) {
      policy_free (p);
      return NULL;
    }
    int r = luaL_loadbufferx (L, src, len, p->chunk, "t");
    free (src);
    if (r != LUA_OK) {
      take_error (p, err);
      policy_free (p);
      return NULL;
    }
    if (guarded_call (p, "script", 0, 1, err) == -1) {
      policy_free (p);
      return NULL;
    }
  }
  else
    lua_newtable (L);
  if (guarded_call (p, "policy", 1, 1, err) == -1) {
    policy_free (p);
    return NULL;
  }
  p->policy_ref = luaL_ref (L, LUA_REGISTRYINDEX);
  lua_pop (L, 1);                            /* luacow */
  return p;
}

void
policy_free (struct policy *p)
{
  if (!p)
    return;
  if (p->L)
    lua_close (p->L);
  pthread_mutex_destroy (&p->lock);
  free (p->name);
  free (p->chunk);
  free (p->cwd);
  free (p);
}

const char *
policy_name (const struct policy *p)
{
  return p->name;
}

/* ------------------------------------------------------------ evaluation */

/* Push luacow.evaluate, P and the field name: the caller pushes the
 * field's arguments and calls evaluate_field.
 */
static void
begin_field (struct policy *p, const char *field)
{
  lua_rawgeti (p->L, LUA_REGISTRYINDEX, p->evaluate_ref);
  lua_rawgeti (p->L, LUA_REGISTRYINDEX, p->policy_ref);
  lua_pushstring (p->L, field);
}

/* Push a short rendering of the value at idx for the -D luacow.lua=1
 * trace: tables one level deep ({file="a", embed=true}), not addresses.
 */
static void
push_description (lua_State *L, int idx)
{
  idx = lua_absindex (L, idx);
  if (!lua_istable (L, idx)) {
    if (lua_type (L, idx) == LUA_TSTRING)
      lua_pushfstring (L, "\"%s\"", lua_tostring (L, idx));
    else
      luaL_tolstring (L, idx, NULL);
    return;
  }
  luaL_Buffer b;
  luaL_buffinit (L, &b);
  luaL_addchar (&b, '{');
  int n = 0;
  lua_pushnil (L);
  while (lua_next (L, idx)) {
    if (n++)
      luaL_addstring (&b, ", ");
    if (n > 8) {
      luaL_addstring (&b, "...");
      lua_pop (L, 2);
      break;
    }
    if (lua_type (L, -2) == LUA_TSTRING) {
      luaL_addstring (&b, lua_tostring (L, -2));
      luaL_addchar (&b, '=');
    }
    push_description (L, -1);
    luaL_addvalue (&b);
    lua_pop (L, 1);
  }
  luaL_addchar (&b, '}');
  luaL_pushresult (&b);
}

static int
evaluate_field (struct policy *p, const char *field, int nargs, char err[POLICY_ERRLEN])
{
  int r = guarded_call (p, field, 2 + nargs, 1, err);
  if (r == 0 && luacow_debug_lua) {
    push_description (p->L, -1);
    nbdkit_debug ("luacow: lua: %s -> %s", field, lua_tostring (p->L, -1));
    lua_pop (p->L, 1);
  }
  return r;
}

static void
push_disk (struct policy *p)
{
  lua_rawgeti (p->L, LUA_REGISTRYINDEX, p->disk_ref);
}

/* ctx: a fresh table with disk's fields plus the event's. */
static void
push_ctx (struct policy *p, const struct policy_ctx *c)
{
  lua_State *L = p->L;
  lua_newtable (L);
  push_disk (p);
  lua_pushnil (L);
  while (lua_next (L, -2)) {
    lua_pushvalue (L, -2);
    lua_insert (L, -2);
    lua_settable (L, -5);
  }
  lua_pop (L, 1);
  set_string_field (L, "event", c->event);
  static const char *const names[] = { "dirty_bytes", "zero_bytes", "written_bytes",
                                       "data_clusters", "zero_clusters" };
  const uint64_t values[] = { c->dirty_bytes, c->zero_bytes, c->written_bytes,
                              c->data_clusters, c->zero_clusters };
  for (size_t i = 0; i < sizeof values / sizeof *values; ++i) {
    lua_pushinteger (L, (lua_Integer) values[i]);
    lua_setfield (L, -2, names[i]);
  }
  lua_pushnumber (L, c->started);
  lua_setfield (L, -2, "started");
  lua_pushnumber (L, c->now);
  lua_setfield (L, -2, "now");
  if (c->loaded)
    set_string_field (L, "loaded", c->loaded);
  if (c->last_save_path) {
    lua_newtable (L);
    set_string_field (L, "path", c->last_save_path);
    lua_pushnumber (L, c->last_save_time);
    lua_setfield (L, -2, "time");
    lua_setfield (L, -2, "last_save");
  }
}

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

int
policy_events (struct policy *p, unsigned *mask, double *interval, char err[POLICY_ERRLEN])
{
  lua_State *L = p->L;
  int r = -1;
  pthread_mutex_lock (&p->lock);
  *mask = 0;
  *interval = 0;
  begin_field (p, "events");
  if (evaluate_field (p, "events", 0, err) == 0) {
    lua_Integer n = luaL_len (L, -1);
    for (lua_Integer i = 1; i <= n; ++i) {
      lua_geti (L, -1, i);
      const char *e = lua_tostring (L, -1);
      if (e && strcmp (e, "flush") == 0) *mask |= EVENT_FLUSH;
      if (e && strcmp (e, "close") == 0) *mask |= EVENT_CLOSE;
      if (e && strcmp (e, "interval") == 0) *mask |= EVENT_INTERVAL;
      lua_pop (L, 1);
    }
    lua_pop (L, 1);
    begin_field (p, "interval");
    if (evaluate_field (p, "interval", 0, err) == 0) {
      if (lua_isnumber (L, -1))
        *interval = lua_tonumber (L, -1);
      lua_pop (L, 1);
      r = 0;
    }
  }
  pthread_mutex_unlock (&p->lock);
  return r;
}

int
policy_cluster_size (struct policy *p, uint64_t size, uint32_t *cluster_size,
                     char err[POLICY_ERRLEN])
{
  lua_State *L = p->L;
  int r = -1;
  pthread_mutex_lock (&p->lock);
  push_disk (p);
  lua_pushinteger (L, (lua_Integer) size);
  lua_setfield (L, -2, "size");
  lua_pop (L, 1);
  begin_field (p, "cluster_size");
  push_disk (p);
  if (evaluate_field (p, "cluster_size", 1, err) == 0) {
    lua_Integer cs = lua_tointeger (L, -1);
    lua_pop (L, 1);
    if (cs < 512 || cs > 2097152 || (cs & (cs - 1)))   /* the library checked; be sure */
      snprintf (err, POLICY_ERRLEN, "%s: cluster_size must be a power of two from 512 to 2097152, got %lld",
                p->name, (long long) cs);
    else {
      *cluster_size = (uint32_t) cs;
      push_disk (p);
      lua_pushinteger (L, cs);
      lua_setfield (L, -2, "cluster_size");
      lua_pop (L, 1);
      r = 0;
    }
  }
  pthread_mutex_unlock (&p->lock);
  return r;
}

/* Pop an optional string result into *out (absolute path when resolve). */
static int
pop_string (struct policy *p, char **out, bool resolve, char err[POLICY_ERRLEN])
{
  const char *s = lua_tostring (p->L, -1);
  *out = NULL;
  if (s) {
    *out = resolve ? policy_resolve (p->cwd, s) : strdup (s);
    if (!*out) {
      snprintf (err, POLICY_ERRLEN, "%s: out of memory", p->name);
      lua_pop (p->L, 1);
      return -1;
    }
  }
  lua_pop (p->L, 1);
  return 0;
}

int
policy_cow (struct policy *p, bool *on_read, char **read_path, bool *on_cache,
            char err[POLICY_ERRLEN])
{
  lua_State *L = p->L;
  int r = -1;
  *read_path = NULL;
  pthread_mutex_lock (&p->lock);
  begin_field (p, "cow_on_read");
  push_disk (p);
  if (evaluate_field (p, "cow_on_read", 1, err) == 0) {
    *on_read = lua_toboolean (L, -1);
    if (lua_type (L, -1) == LUA_TSTRING)
      r = pop_string (p, read_path, true, err);
    else {
      lua_pop (L, 1);
      r = 0;
    }
  }
  if (r == 0) {
    r = -1;
    begin_field (p, "cow_on_cache");
    push_disk (p);
    if (evaluate_field (p, "cow_on_cache", 1, err) == 0) {
      *on_cache = lua_toboolean (L, -1);
      lua_pop (L, 1);
      r = 0;
    }
  }
  pthread_mutex_unlock (&p->lock);
  return r;
}

int
policy_load (struct policy *p, char **path, char err[POLICY_ERRLEN])
{
  int r = -1;
  pthread_mutex_lock (&p->lock);
  begin_field (p, "load");
  push_disk (p);
  if (evaluate_field (p, "load", 1, err) == 0)
    r = pop_string (p, path, true, err);
  pthread_mutex_unlock (&p->lock);
  return r;
}

int
policy_should_save (struct policy *p, const struct policy_ctx *ctx, bool *yes,
                    char err[POLICY_ERRLEN])
{
  int r = -1;
  pthread_mutex_lock (&p->lock);
  begin_field (p, "save");
  push_ctx (p, ctx);
  if (evaluate_field (p, "save", 1, err) == 0) {
    *yes = lua_toboolean (p->L, -1);
    lua_pop (p->L, 1);
    r = 0;
  }
  pthread_mutex_unlock (&p->lock);
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

static int
make_plan_locked (struct policy *p, const struct policy_ctx *ctx,
                  struct policy_plan *plan, char err[POLICY_ERRLEN])
{
  lua_State *L = p->L;
  begin_field (p, "name");
  push_ctx (p, ctx);
  if (evaluate_field (p, "name", 1, err) == -1 || pop_string (p, &plan->path, true, err) == -1)
    return -1;
  if (!plan->path) {
    snprintf (err, POLICY_ERRLEN, "%s: name gave no path to save to (set luacow-save=PATH or a name field)",
              p->name);
    return -1;
  }
  begin_field (p, "backing");
  push_ctx (p, ctx);
  if (evaluate_field (p, "backing", 1, err) == -1)
    return -1;
  if (lua_istable (L, -1)) {
    lua_getfield (L, -1, "file");
    lua_getfield (L, -2, "format");
    lua_getfield (L, -3, "embed");
    plan->backing_embed = lua_toboolean (L, -1);
    lua_pop (L, 1);
    if (pop_string (p, &plan->backing_format, false, err) == -1 ||
        pop_string (p, &plan->backing_file, true, err) == -1)
      return -1;
  }
  lua_pop (L, 1);
  begin_field (p, "compress");
  push_ctx (p, ctx);
  if (evaluate_field (p, "compress", 1, err) == -1)
    return -1;
  if (lua_type (L, -1) == LUA_TSTRING)
    return pop_string (p, &plan->compress, false, err);
  lua_pop (L, 1);
  return 0;
}

int
policy_make_plan (struct policy *p, const struct policy_ctx *ctx,
                  struct policy_plan *plan, char err[POLICY_ERRLEN])
{
  memset (plan, 0, sizeof *plan);
  pthread_mutex_lock (&p->lock);
  int r = make_plan_locked (p, ctx, plan, err);
  pthread_mutex_unlock (&p->lock);
  if (r == -1)
    policy_plan_clear (plan);
  return r;
}

void
policy_saved (struct policy *p, const struct policy_ctx *ctx,
              const struct policy_result *res)
{
  lua_State *L = p->L;
  char err[POLICY_ERRLEN];
  pthread_mutex_lock (&p->lock);
  begin_field (p, "saved");
  push_ctx (p, ctx);
  lua_newtable (L);
  set_string_field (L, "path", res->path);
  lua_pushinteger (L, (lua_Integer) res->data_clusters);
  lua_setfield (L, -2, "data_clusters");
  lua_pushinteger (L, (lua_Integer) res->zero_clusters);
  lua_setfield (L, -2, "zero_clusters");
  lua_pushinteger (L, (lua_Integer) res->bytes);
  lua_setfield (L, -2, "bytes");
  lua_pushnumber (L, res->seconds);
  lua_setfield (L, -2, "seconds");
  if (evaluate_field (p, "saved", 2, err) == 0)
    lua_pop (L, 1);
  else
    nbdkit_error ("luacow: %s (the save itself succeeded)", err);
  pthread_mutex_unlock (&p->lock);
}
