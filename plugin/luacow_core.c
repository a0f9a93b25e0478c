/* luacow: the "luacow.core" Lua module (see luacow_core.h). */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L   /* glob(3), struct stat's st_mtim */
#endif

#include "luacow_core.h"

#include <errno.h>
#include <glob.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lauxlib.h>
#include <lua.h>

#define GLOB_MT "luacow.core.glob"

/* The glob_t lives in a userdata so that globfree runs even when a Lua
 * call raises (out of memory) between glob() and the end of core_glob. */
struct glob_box {
  glob_t g;
  int live;
};

static void
glob_box_release (struct glob_box *b)
{
  if (b->live) {
    b->live = 0;
    globfree (&b->g);
  }
}

static int
glob_box_gc (lua_State *L)
{
  glob_box_release (luaL_checkudata (L, 1, GLOB_MT));
  return 0;
}

static int
compare_paths (const void *a, const void *b)
{
  return strcmp (*(char *const *) a, *(char *const *) b);
}

static const char *
glob_error (int rc)
{
  switch (rc) {
  case GLOB_NOSPACE: return "out of memory";
  case GLOB_ABORTED: return "read error";
  default: return "unknown error";
  }
}

/* The path argument at arg; a NUL byte inside would cut it short. */
static const char *
check_path (lua_State *L, int arg)
{
  size_t len;
  const char *path = luaL_checklstring (L, arg, &len);
  if (strlen (path) != len)
    luaL_argerror (L, arg, "path contains a NUL byte");
  return path;
}

/* glob(pattern) -> sorted array of paths | nil, message */
static int
core_glob (lua_State *L)
{
  const char *pattern = check_path (L, 1);
  struct glob_box *b = lua_newuserdatauv (L, sizeof *b, 0);
  int rc;
  size_t i;

  *b = (struct glob_box) { .live = 0 };
  luaL_setmetatable (L, GLOB_MT);
  rc = glob (pattern, GLOB_NOSORT, NULL, &b->g);
  b->live = 1;
  if (rc == GLOB_NOMATCH) {
    glob_box_release (b);
    lua_newtable (L);
    return 1;
  }
  if (rc != 0) {
    lua_pushnil (L);
    lua_pushfstring (L, "glob %s: %s", pattern, glob_error (rc));
    return 2;
  }
  if (b->g.gl_pathc > 1)
    qsort (b->g.gl_pathv, b->g.gl_pathc, sizeof (char *), compare_paths);
  lua_createtable (L, b->g.gl_pathc > (size_t) 0x7fffffff ? 0 : (int) b->g.gl_pathc, 0);
  for (i = 0; i < b->g.gl_pathc; i++) {
    lua_pushstring (L, b->g.gl_pathv[i]);
    lua_rawseti (L, -2, (lua_Integer) i + 1);
  }
  glob_box_release (b);
  return 1;
}

/* mtime(path) -> seconds, kind | nil, message, errno */
static int
core_mtime (lua_State *L)
{
  const char *path = check_path (L, 1);
  struct stat st;

  if (stat (path, &st) == -1) {
    int e = errno;
    lua_pushnil (L);
    lua_pushfstring (L, "%s: %s", path, strerror (e));
    lua_pushinteger (L, e);
    return 3;
  }
  lua_pushnumber (L, (lua_Number) st.st_mtim.tv_sec
                     + (lua_Number) st.st_mtim.tv_nsec / 1e9);
  if (S_ISREG (st.st_mode))
    lua_pushliteral (L, "file");
  else if (S_ISDIR (st.st_mode))
    lua_pushliteral (L, "directory");
  else
    lua_pushliteral (L, "other");
  return 2;
}

static const luaL_Reg core_functions[] = {
  { "glob", core_glob },
  { "mtime", core_mtime },
  { NULL, NULL }
};

int
luaopen_luacow_core (lua_State *L)
{
  if (luaL_newmetatable (L, GLOB_MT)) {
    lua_pushcfunction (L, glob_box_gc);
    lua_setfield (L, -2, "__gc");
  }
  lua_pop (L, 1);
  luaL_newlib (L, core_functions);
  return 1;
}
