/* luacow: what of the Lua standard library a policy gets.
 *
 * All of it, except what would let a policy switch off the time budget,
 * end nbdkit before the overlay is saved, load native code, or load
 * binary chunks (which the Lua VM does not verify):
 *   debug     only traceback and getinfo (error reports, introspection);
 *             sethook/gethook, the registry, locals, upvalues and
 *             metatables of other types are gone
 *   load, loadfile, dofile, require   text chunks only
 *   package   no loadlib, no C searchers (cpath is empty)
 *   os.exit   raises an error
 * io and os.execute stay: a blocking call is bounded by the host's
 * timeout (lua_host.h), not by the sandbox.  This is no security
 * boundary: a policy runs with nbdkit's privileges.
 */
#ifndef LUACOW_LUA_SANDBOX_H
#define LUACOW_LUA_SANDBOX_H

#include <lua.h>

/* [-0, +0] opens the libraries as above; raises on memory errors. */
void lua_sandbox_open (lua_State *L);

#endif
