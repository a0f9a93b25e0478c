/* luacow: the policy's standard library, see lua_sandbox.h. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "lua_sandbox.h"

/* os.exit would end nbdkit before the overlay is saved. */
static int
forbidden_exit (lua_State *L)
{
  return luaL_error (L, "os.exit is not allowed in a policy (luacow must save the overlay first)");
}

/* load (chunk [, chunkname [, mode [, env]]]) with mode "t". */
static int
text_load (lua_State *L)
{
  int n = lua_gettop (L);
  lua_settop (L, 4);
  lua_pushvalue (L, lua_upvalueindex (1));
  lua_pushvalue (L, 1);
  lua_pushvalue (L, 2);
  lua_pushliteral (L, "t");
  if (n >= 4)                 /* an explicit nil env is not an absent one */
    lua_pushvalue (L, 4);
  lua_call (L, n >= 4 ? 4 : 3, LUA_MULTRET);
  return lua_gettop (L) - 4;
}

/* loadfile ([filename [, mode [, env]]]) with mode "t". */
static int
text_loadfile (lua_State *L)
{
  int n = lua_gettop (L);
  lua_settop (L, 3);
  lua_pushvalue (L, lua_upvalueindex (1));
  lua_pushvalue (L, 1);
  lua_pushliteral (L, "t");
  if (n >= 3)
    lua_pushvalue (L, 3);
  lua_call (L, n >= 3 ? 3 : 2, LUA_MULTRET);
  return lua_gettop (L) - 3;
}

/* dofile ([filename]): a text chunk, its results. */
static int
text_dofile (lua_State *L)
{
  const char *name = luaL_optstring (L, 1, NULL);
  lua_settop (L, 1);
  if (luaL_loadfilex (L, name, "t") != LUA_OK)
    return lua_error (L);
  lua_call (L, 0, LUA_MULTRET);
  return lua_gettop (L) - 1;
}

/* package.searchers[2] for text files only; upvalue: the package table. */
static int
text_searcher (lua_State *L)
{
  const char *name = luaL_checkstring (L, 1);
  lua_getfield (L, lua_upvalueindex (1), "searchpath");
  lua_pushvalue (L, 1);
  lua_getfield (L, lua_upvalueindex (1), "path");
  if (lua_type (L, -1) != LUA_TSTRING)
    return luaL_error (L, "'package.path' must be a string");
  lua_call (L, 2, 2);
  if (lua_isnil (L, -2))
    return 1;                 /* the "no file ..." list */
  lua_pop (L, 1);
  const char *file = lua_tostring (L, -1);
  if (luaL_loadfilex (L, file, "t") != LUA_OK)
    return luaL_error (L, "error loading module '%s' from file '%s':\n\t%s",
                       name, file, lua_tostring (L, -1));
  lua_insert (L, -2);         /* loader, file name */
  return 2;
}

/* [-0, +0] replaces global NAME by FN with the old value as upvalue. */
static void
wrap_global (lua_State *L, const char *name, lua_CFunction fn)
{
  lua_getglobal (L, name);
  lua_pushcclosure (L, fn, 1);
  lua_setglobal (L, name);
}

/* [-0, +0] debug keeps traceback and getinfo: a new table, everywhere. */
static void
restrict_debug (lua_State *L)
{
  static const char *const keep[] = { "traceback", "getinfo" };
  lua_getglobal (L, "debug");
  lua_createtable (L, 0, 2);
  for (size_t i = 0; i < sizeof keep / sizeof *keep; ++i) {
    lua_getfield (L, -2, keep[i]);
    lua_setfield (L, -2, keep[i]);
  }
  lua_pushvalue (L, -1);
  lua_setglobal (L, "debug");
  luaL_getsubtable (L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_insert (L, -2);
  lua_setfield (L, -2, "debug");
  lua_pop (L, 2);
}

/* [-0, +0] package: no native code, Lua modules as text. */
static void
restrict_package (lua_State *L)
{
  lua_getglobal (L, "package");
  lua_pushnil (L);
  lua_setfield (L, -2, "loadlib");
  lua_pushliteral (L, "");
  lua_setfield (L, -2, "cpath");
  lua_getfield (L, -1, "searchers");
  lua_pushvalue (L, -2);
  lua_pushcclosure (L, text_searcher, 1);
  lua_rawseti (L, -2, 2);
  for (lua_Integer i = (lua_Integer) lua_rawlen (L, -1); i > 2; --i) {
    lua_pushnil (L);
    lua_rawseti (L, -2, i);
  }
  lua_pop (L, 2);
}

void
lua_sandbox_open (lua_State *L)
{
  luaL_openlibs (L);
  lua_getglobal (L, "os");
  lua_pushcfunction (L, forbidden_exit);
  lua_setfield (L, -2, "exit");
  lua_pop (L, 1);
  wrap_global (L, "load", text_load);
  wrap_global (L, "loadfile", text_loadfile);
  lua_pushcfunction (L, text_dofile);
  lua_setglobal (L, "dofile");
  restrict_debug (L);
  restrict_package (L);
}
