/* luacow: the "luacow.core" Lua module, the few file-system calls that the
 * Lua library (lua/luacow.lua) cannot make in pure Lua.
 *
 *   core.glob(pattern) -> array of matching paths, sorted by strcmp
 *                         (empty when nothing matches), or nil, message
 *   core.mtime(path)   -> seconds since the epoch (with the nanosecond
 *                         fraction), kind ("file", "directory" or "other");
 *                         or nil, message, errno
 *
 * No nbdkit types: the filter compiles it in and registers it in
 * package.preload; the rockspec builds it as a standalone C module.
 */
#ifndef LUACOW_CORE_H
#define LUACOW_CORE_H

#include <lua.h>

int luaopen_luacow_core (lua_State *L);

#endif /* LUACOW_CORE_H */
