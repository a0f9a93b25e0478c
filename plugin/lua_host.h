/* luacow: the Lua host, the boundary between the filter and a policy.
 *
 * One lua_State.  Everything that touches it runs as a "body": a C
 * function called under lua_pcall (the pattern of lua.c's pmain), on a
 * thread of its own, with an instruction-count hook that enforces a
 * wall-clock budget and a memory cap.  The caller waits at most the budget
 * plus a grace period: a hook that cannot be stopped (a loop in a __gc
 * finalizer, a blocking C call) is abandoned there, the host is marked
 * wedged and every later call fails at once.  A panic (an error outside
 * any protected call, which should not happen) marks the state dead
 * instead of aborting the process.  Errors come back as one line.
 */
#ifndef LUACOW_LUA_HOST_H
#define LUACOW_LUA_HOST_H

#include <stdbool.h>

#include <lua.h>

#define HOST_ERRLEN 512
#define HOST_GRACE 2.0        /* seconds a call may overrun its budget */

enum host_status { HOST_OK = 0, HOST_FAILED = -1, HOST_ABANDONED = -2 };

struct lua_host;

/* A fresh, empty state (no libraries: a body opens them).  name prefixes
 * errors ("policy.lua"); *trace (read at each error) logs tracebacks.
 */
struct lua_host *lua_host_new (const char *name, double budget, const int *trace,
                               char err[HOST_ERRLEN]);

/* Runs body under the budget.  HOST_OK, or HOST_FAILED with err filled.
 * HOST_ABANDONED (err filled): the body did not return in time; arg now
 * belongs to the host, which calls release (arg) if the body ever ends.
 */
int lua_host_run (struct lua_host *h, const char *field, lua_CFunction body,
                  void *arg, void (*release) (void *), char err[HOST_ERRLEN]);

/* Closes the state (on a thread, under the same timeout) and frees the
 * host.  false: the host was wedged or dead and is kept as it is, with
 * the filter pinned in memory; what its bodies use must be kept too.
 */
bool lua_host_free (struct lua_host *h);

/* ---- for bodies only ---- */

/* The arg of the running body; raises if a policy calls the body itself. */
void *lua_host_arg (lua_State *L);
/* [-(nargs+1), +nres] calls policy code: it gets the memory cap, while the
 * host's own work (marshalling, reading results) has a reserve above it.
 */
void lua_host_call (lua_State *L, int nargs, int nres);
/* Renames the running call for the budget message ("script", "policy"). */
void lua_host_field (lua_State *L, const char *field);

#endif
