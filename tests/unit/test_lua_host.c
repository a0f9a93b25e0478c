/* The Lua host (plugin/lua_host.c): results, errors, the budget, the
 * memory reserve, a body that calls itself, and a body that never returns
 * in time (abandoned, the host wedged, the arg released when it ends).
 */
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "lua_host.h"
#include "tap.h"

static int trace = 0;

struct arg {
  const char *lua;            /* run through lua_host_call */
  int value;
};

static int
body_value (lua_State *L)
{
  struct arg *a = lua_host_arg (L);
  a->value = 42;
  return 0;
}

static int
body_error (lua_State *L)
{
  (void) lua_host_arg (L);
  return luaL_error (L, "boom");
}

/* Runs a->lua as policy code; a->value = 1 when it returned. */
static int
body_lua (lua_State *L)
{
  struct arg *a = lua_host_arg (L);
  if (lua_getglobal (L, "coroutine") == LUA_TNIL)
    luaL_openlibs (L);
  lua_pop (L, 1);
  if (luaL_loadstring (L, a->lua) != LUA_OK)
    return lua_error (L);
  lua_host_call (L, 0, 0);
  a->value = 1;
  return 0;
}

/* The policy code calls the body itself. */
static int
body_reenter (lua_State *L)
{
  struct arg *a = lua_host_arg (L);
  lua_pushcfunction (L, body_reenter);
  lua_setglobal (L, "again");
  if (luaL_loadstring (L, "again()") != LUA_OK)
    return lua_error (L);
  lua_host_call (L, 0, 0);
  a->value = 1;
  return 0;
}

/* After the policy filled its cap: the host still builds a table. */
static int
body_reserve (lua_State *L)
{
  struct arg *a = lua_host_arg (L);
  luaL_openlibs (L);
  if (luaL_loadstring (L, "local function fill (make) pcall(function () while true do keep = { keep, make() } end end) end "
                       "fill(function () return string.rep('x', 1 << 20) end) "
                       "fill(function () return string.rep('x', 1 << 12) end) "
                       "fill(function () return false end)") != LUA_OK)
    return lua_error (L);
  lua_host_call (L, 0, 0);
  lua_createtable (L, 0, 64);
  for (int i = 0; i < 64; ++i) {
    lua_pushinteger (L, i);
    lua_setfield (L, -2, luaL_typename (L, -1));
  }
  a->value = 1;
  return 0;
}

/* ---- a body that blocks in C until the test lets it go */
static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static bool gate_open, released;

static int
body_block (lua_State *L)
{
  (void) lua_host_arg (L);
  pthread_mutex_lock (&gate_lock);
  while (!gate_open)
    pthread_cond_wait (&gate_cond, &gate_lock);
  pthread_mutex_unlock (&gate_lock);
  return 0;
}

static void
release_arg (void *v)
{
  (void) v;
  pthread_mutex_lock (&gate_lock);
  released = true;
  pthread_mutex_unlock (&gate_lock);
}

static double
now (void)
{
  struct timespec t;
  clock_gettime (CLOCK_MONOTONIC, &t);
  return (double) t.tv_sec + (double) t.tv_nsec / 1e9;
}

int
main (void)
{
  char err[HOST_ERRLEN];
  struct lua_host *h = lua_host_new ("t.lua", 0.3, &trace, err);
  CHECK (h != NULL, "a host");
  struct arg a = { 0 };

  CHECK (lua_host_run (h, "value", body_value, &a, NULL, err) == HOST_OK && a.value == 42,
         "a body runs and returns its result through its arg");
  CHECK (lua_host_run (h, "error", body_error, &a, NULL, err) == HOST_FAILED &&
         strcmp (err, "t.lua: boom") == 0, "an error is one line naming the script: %s", err);
  a = (struct arg) { .lua = "while true do end" };
  CHECK (lua_host_run (h, "loop", body_lua, &a, NULL, err) == HOST_FAILED && a.value == 0 &&
         strstr (err, ":1: loop: hook exceeded its time budget (0.3 s)"), "a Lua loop hits the budget: %s", err);
  a = (struct arg) { .lua = "local co = coroutine.wrap(function () while true do end end) co()" };
  CHECK (lua_host_run (h, "co", body_lua, &a, NULL, err) == HOST_FAILED &&
         strstr (err, "co: hook exceeded its time budget"), "so does a loop in a coroutine: %s", err);
  a = (struct arg) { 0 };
  CHECK (lua_host_run (h, "reenter", body_reenter, &a, NULL, err) == HOST_FAILED &&
         strstr (err, "a host function cannot be called from a policy"),
         "policy code cannot call a body: %s", err);
  struct lua_host *big = lua_host_new ("m.lua", 60, &trace, err);   /* filling takes a while */
  a = (struct arg) { 0 };
  CHECK (big && lua_host_run (big, "reserve", body_reserve, &a, NULL, err) == HOST_OK && a.value == 1,
         "with the policy at its memory cap, the host still has room: %s", a.value ? "" : err);
  a = (struct arg) { .lua = "local s = string.rep('y', 1 << 16)" };
  CHECK (lua_host_run (big, "full", body_lua, &a, NULL, err) == HOST_FAILED && strstr (err, "not enough memory"),
         "while the policy itself gets no more: %s", err);
  a = (struct arg) { .lua = "keep = nil collectgarbage() local s = string.rep('x', 1 << 20)" };
  CHECK (lua_host_run (big, "free", body_lua, &a, NULL, err) == HOST_OK && a.value == 1,
         "and gets its memory back when it lets go");
  CHECK (lua_host_free (big), "that host is freed");

  /* A body that never returns in time. */
  double t0 = now ();
  int s = lua_host_run (h, "block", body_block, &a, release_arg, err);
  double waited = now () - t0;
  CHECK (s == HOST_ABANDONED && strstr (err, "t.lua: block: the hook did not return within 2.3 s") &&
         strstr (err, "the policy is disabled"), "a blocked body is abandoned: %s", err);
  CHECK (waited >= 2.3, "not before the budget plus the grace (%.2f s)", waited);
  pthread_mutex_lock (&gate_lock);
  bool early = released;
  pthread_mutex_unlock (&gate_lock);
  CHECK (!early, "its arg is not released while it runs");
  a = (struct arg) { 0 };
  s = lua_host_run (h, "value", body_value, &a, NULL, err);
  CHECK (s == HOST_FAILED && a.value == 0 && strstr (err, "the policy is disabled: its block hook did not return"),
         "the next call fails without running, with one line: %s", err);
  pthread_mutex_lock (&gate_lock);
  gate_open = true;
  pthread_cond_broadcast (&gate_cond);
  pthread_mutex_unlock (&gate_lock);
  bool done = false;
  for (int i = 0; i < 200 && !done; ++i) {
    usleep (10000);
    pthread_mutex_lock (&gate_lock);
    done = released;
    pthread_mutex_unlock (&gate_lock);
  }
  CHECK (done, "when the body ends, the host releases its arg");
  CHECK (!lua_host_free (h), "a wedged host is kept, not freed");

  struct lua_host *h2 = lua_host_new ("u.lua", 1, &trace, err);
  CHECK (h2 && lua_host_free (h2), "a host that was never wedged is freed");
  return TAP_DONE ();
}
