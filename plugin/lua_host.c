/* luacow: the Lua host, see lua_host.h. */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>

#include <nbdkit-filter.h>

#include "clock.h"
#include "lua_host.h"

#define MEMORY_LIMIT (256u << 20)   /* a policy has no business with more */
#define MEMORY_RESERVE (8u << 20)   /* above it, for the host's own work */
#define HOOK_EVERY 1000             /* instructions between budget checks */

/* One call, shared by the caller and the thread running it: whoever is
 * last frees it (the thread, when the caller gave up waiting).
 */
struct run {
  struct lua_host *h;
  lua_CFunction body;         /* NULL: close the state */
  void *arg;
  void (*release) (void *);
  int status;
  char err[HOST_ERRLEN];
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done, abandoned;
  jmp_buf panic;              /* where the panic handler returns to */
};

struct lua_host {
  lua_State *L;
  pthread_mutex_t lock;       /* one call at a time */
  char *name;                 /* "policy.lua": prefix of errors */
  double budget;
  const int *trace;
  struct timespec deadline;
  const char *field;          /* call being run, for messages */
  struct run *current;
  bool host_side;             /* allocations may use the reserve */
  bool entered;               /* the body has taken its arg */
  bool wedged, dead;          /* no more calls */
  const char *wedged_by;
  size_t mem_used;
};

/* A host abandoned with a thread still in it is never freed: reachable. */
static struct lua_host *kept_host;

static struct lua_host *
host_of (lua_State *L)
{
  return *(struct lua_host **) lua_getextraspace (L);
}

static struct timespec
after (double seconds)
{
  struct timespec t;
  clock_gettime (CLOCK_MONOTONIC, &t);
  double whole = (double) (long) seconds;
  t.tv_sec += (time_t) whole;
  t.tv_nsec += (long) ((seconds - whole) * 1e9);
  if (t.tv_nsec >= 1000000000L) {
    t.tv_sec++;
    t.tv_nsec -= 1000000000L;
  }
  return t;
}

/* ---------------------------------------------------------------- guards */

static void *
capped_alloc (void *ud, void *ptr, size_t osize, size_t nsize)
{
  struct lua_host *h = ud;
  if (ptr == NULL)
    osize = 0;
  if (nsize == 0) {
    free (ptr);
    h->mem_used -= osize;
    return NULL;
  }
  size_t limit = MEMORY_LIMIT + (h->host_side ? MEMORY_RESERVE : 0);
  if (nsize > osize && h->mem_used - osize + nsize > limit)
    return NULL;              /* Lua raises "not enough memory" */
  void *n = realloc (ptr, nsize);
  if (n)
    h->mem_used = h->mem_used - osize + nsize;
  return n;
}

static bool
past_deadline (const struct lua_host *h)
{
  struct timespec now;
  clock_gettime (CLOCK_MONOTONIC, &now);
  return now.tv_sec > h->deadline.tv_sec ||
    (now.tv_sec == h->deadline.tv_sec && now.tv_nsec > h->deadline.tv_nsec);
}

/* Count hook (coroutines inherit it): a loop gets an error at its line. */
static void
budget_hook (lua_State *L, lua_Debug *ar)
{
  (void) ar;
  struct lua_host *h = host_of (L);
  if (!past_deadline (h))
    return;
  h->host_side = true;        /* the message must not fail for memory */
  lua_sethook (L, budget_hook, LUA_MASKCOUNT, 1);  /* fire again if caught */
  luaL_where (L, 0);          /* level 0 in a hook: the looping function */
  char budget[32];
  snprintf (budget, sizeof budget, "%g", h->budget);
  lua_pushfstring (L, "%s: hook exceeded its time budget (%s s)", h->field, budget);
  lua_concat (L, 2);
  lua_error (L);
}

/* Message handler of the protected call: message + traceback. */
static int
traceback_handler (lua_State *L)
{
  host_of (L)->host_side = true;
  const char *msg = lua_type (L, 1) == LUA_TSTRING ? lua_tostring (L, 1) : NULL;
  if (msg == NULL)
    msg = lua_pushfstring (L, "(error object is a %s value)", luaL_typename (L, 1));
  luaL_traceback (L, L, msg, 1);
  return 1;
}

/* An error outside any protected call: the state cannot be used again.
 * Back to the thread's entry, never into Lua (which would abort).
 */
static int
on_panic (lua_State *L)
{
  struct lua_host *h = host_of (L);
  const char *msg = lua_type (L, -1) == LUA_TSTRING ? lua_tostring (L, -1) : "?";
  snprintf (h->current->err, HOST_ERRLEN, "%s: Lua panic: %s; the policy is disabled", h->name, msg);
  longjmp (h->current->panic, 1);
}

/* A thread still runs our code after a timeout: never unmap the filter. */
static void
pin_filter (void)
{
  static const char anchor;   /* any address inside the filter */
  Dl_info info;
  if (dladdr (&anchor, &info) && info.dli_fname)
    (void) dlopen (info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

/* ------------------------------------------------------------- one call */

/* The error on the stack (message + traceback) as one line naming the
 * script; the traceback goes to the debug log when tracing.
 */
static void
take_error (struct lua_host *h, char err[HOST_ERRLEN])
{
  lua_State *L = h->L;
  const char *full = lua_type (L, -1) == LUA_TSTRING ? lua_tostring (L, -1)
                                                     : "(error object is not a string)";
  if (*h->trace)
    nbdkit_debug ("luacow: %s: %s", h->name, full);
  size_t line = strcspn (full, "\n");
  size_t namelen = strlen (h->name);
  /* "policy.lua:12: ..." already names the script; plain validation
   * messages get "policy.lua: " in front.
   */
  if (strlen (full) > namelen && memcmp (full, h->name, namelen) == 0 && full[namelen] == ':')
    snprintf (err, HOST_ERRLEN, "%.*s", (int) line, full);
  else
    snprintf (err, HOST_ERRLEN, "%s: %.*s", h->name, (int) line, full);
}

static int
protected_run (struct lua_host *h, struct run *r)
{
  lua_State *L = h->L;
  int base = lua_gettop (L);
  h->current = r;
  h->entered = false;
  h->host_side = true;
  lua_pushcfunction (L, traceback_handler);
  lua_pushcfunction (L, r->body);
  h->deadline = after (h->budget);
  lua_sethook (L, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
  int s = lua_pcall (L, 0, 0, base + 1);
  lua_sethook (L, NULL, 0, 0);
  h->host_side = true;
  if (s != LUA_OK)
    take_error (h, r->err);
  lua_settop (L, base);
  return s == LUA_OK ? HOST_OK : HOST_FAILED;
}

static void
run_free (struct run *r)
{
  pthread_mutex_destroy (&r->mu);
  pthread_cond_destroy (&r->cv);
  free (r);
}

static void *
run_thread (void *v)
{
  struct run *r = v;
  struct lua_host *h = r->h;
  if (r->body == NULL)
    lua_close (h->L);
  else if (setjmp (r->panic) == 0)
    r->status = protected_run (h, r);
  else {
    h->dead = true;
    r->status = HOST_FAILED;
  }
  pthread_mutex_lock (&r->mu);
  r->done = true;
  bool orphan = r->abandoned;
  pthread_cond_signal (&r->cv);
  pthread_mutex_unlock (&r->mu);
  if (orphan) {
    if (r->release)
      r->release (r->arg);
    run_free (r);
  }
  return NULL;
}

/* Start r on a thread and wait for it, at most budget + grace.  Called
 * with h->lock held.
 */
static int
start_and_wait (struct lua_host *h, struct run *r, char err[HOST_ERRLEN])
{
  pthread_t t;
  int e = pthread_create (&t, NULL, run_thread, r);
  if (e) {
    snprintf (err, HOST_ERRLEN, "%s: cannot start the policy thread: %s", h->name, strerror (e));
    run_free (r);
    return HOST_FAILED;
  }
  struct timespec until = after (h->budget + HOST_GRACE);
  pthread_mutex_lock (&r->mu);
  while (!r->done && pthread_cond_timedwait (&r->cv, &r->mu, &until) != ETIMEDOUT)
    ;
  if (!r->done) {
    r->abandoned = true;
    pthread_mutex_unlock (&r->mu);
    pthread_detach (t);
    h->wedged = true;
    h->wedged_by = h->field;
    pin_filter ();
    snprintf (err, HOST_ERRLEN, "%s: %s: the hook did not return within %g s (its budget + %g s grace: "
              "a blocking call, or a loop where Lua cannot stop it); the policy is disabled",
              h->name, h->field, h->budget + HOST_GRACE, HOST_GRACE);
    return HOST_ABANDONED;
  }
  pthread_mutex_unlock (&r->mu);
  pthread_join (t, NULL);
  int s = r->status;
  if (s != HOST_OK)
    memcpy (err, r->err, HOST_ERRLEN);
  run_free (r);
  return s;
}

static struct run *
run_new (struct lua_host *h, lua_CFunction body, void *arg, void (*release) (void *))
{
  struct run *r = calloc (1, sizeof *r);
  if (!r)
    return NULL;
  *r = (struct run) { .h = h, .body = body, .arg = arg, .release = release };
  monotonic_cond_init (&r->cv);
  pthread_mutex_init (&r->mu, NULL);
  return r;
}

int
lua_host_run (struct lua_host *h, const char *field, lua_CFunction body,
              void *arg, void (*release) (void *), char err[HOST_ERRLEN])
{
  int s = HOST_FAILED;
  pthread_mutex_lock (&h->lock);
  if (h->dead)
    snprintf (err, HOST_ERRLEN, "%s: the policy is disabled (a Lua panic)", h->name);
  else if (h->wedged)
    snprintf (err, HOST_ERRLEN, "%s: the policy is disabled: its %s hook did not return", h->name,
              h->wedged_by);
  else {
    h->field = field;
    struct run *r = run_new (h, body, arg, release);
    if (r)
      s = start_and_wait (h, r, err);
    else
      snprintf (err, HOST_ERRLEN, "%s: out of memory", h->name);
  }
  pthread_mutex_unlock (&h->lock);
  return s;
}

/* ------------------------------------------------------------ lifecycle */

struct lua_host *
lua_host_new (const char *name, double budget, const int *trace, char err[HOST_ERRLEN])
{
  struct lua_host *h = calloc (1, sizeof *h);
  if (!h || !(h->name = strdup (name))) {
    free (h);
    snprintf (err, HOST_ERRLEN, "cannot allocate the policy host");
    return NULL;
  }
  pthread_mutex_init (&h->lock, NULL);
  h->budget = budget;
  h->trace = trace;
  h->L = lua_newstate (capped_alloc, h);
  if (!h->L) {
    snprintf (err, HOST_ERRLEN, "cannot create the Lua state");
    lua_host_free (h);
    return NULL;
  }
  *(struct lua_host **) lua_getextraspace (h->L) = h;
  lua_atpanic (h->L, on_panic);
  return h;
}

bool
lua_host_free (struct lua_host *h)
{
  if (!h)
    return true;
  pthread_mutex_lock (&h->lock);
  bool keep = h->wedged || h->dead;
  if (!keep && h->L) {
    char err[HOST_ERRLEN];
    struct run *r = run_new (h, NULL, NULL, NULL);
    h->field = "close";       /* finalizers run: they may never return */
    if (!r || start_and_wait (h, r, err) == HOST_ABANDONED)
      keep = true;
  }
  pthread_mutex_unlock (&h->lock);
  if (keep) {
    kept_host = h;
    return false;
  }
  pthread_mutex_destroy (&h->lock);
  free (h->name);
  free (h);
  return true;
}

/* ------------------------------------------------------------ for bodies */

void *
lua_host_arg (lua_State *L)
{
  struct lua_host *h = host_of (L);
  if (h->entered || h->current == NULL) {
    luaL_error (L, "a host function cannot be called from a policy");
    return NULL;
  }
  h->entered = true;
  return h->current->arg;
}

void
lua_host_call (lua_State *L, int nargs, int nres)
{
  struct lua_host *h = host_of (L);
  h->host_side = false;
  lua_call (L, nargs, nres);
  h->host_side = true;
}

void
lua_host_field (lua_State *L, const char *field)
{
  host_of (L)->field = field;
}
