/* luacow: the Lua side of a policy call, see policy_job.h.
 *
 * A body builds the hook's arguments from the job (disk, ctx, result),
 * calls luacow.evaluate(P, field, ...) and checks what it returns into
 * the job's C values; init_body loads the libraries and the script.  The
 * host's own tables are written and read raw: a metatable set by the
 * policy is never called.  Each helper says its stack effect.
 */
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
#include "policy_job.h"

NBDKIT_DLL_PUBLIC int luacow_debug_lua = 0;

#define CLUSTER_MIN 512
#define CLUSTER_MAX 2097152

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
int
policy_field_body (lua_State *L)
{
  struct job *j = lua_host_arg (L);
  evaluate (L, j);
  take_result (L, j);
  return 0;
}

/* cluster_size: disk.size first, disk.cluster_size after. */
int
policy_cluster_size_body (lua_State *L)
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

/* [-0, +1] runs a compiled-in Lua source: its module table. */
static int
run_embedded (lua_State *L, const unsigned char *src, size_t len, const char *chunk)
{
  if (luaL_loadbufferx (L, (const char *) src, len, chunk, "t") != LUA_OK)
    return lua_error (L);
  lua_call (L, 0, 1);
  return 1;
}

static int
open_embedded_library (lua_State *L)
{
  return run_embedded (L, luacow_lua, luacow_lua_len, "=luacow.lua");
}

static int
open_embedded_names (lua_State *L)
{
  return run_embedded (L, luacow_names_lua, luacow_names_lua_len, "=luacow/names.lua");
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

int
policy_init_body (lua_State *L)
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

/* A new disk table for j->export, its ref in j->integer. */
int
policy_disk_body (lua_State *L)
{
  struct job *j = lua_host_arg (L);
  push_new_disk (L, j);
  j->integer = luaL_ref (L, LUA_REGISTRYINDEX);
  return 0;
}

/* disk.recovered = { journal, blocks, bytes, flushed, seconds }. */
int
policy_recovered_body (lua_State *L)
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
