/* luacow: a policy call as a job, shared by policy.c (the API: copies
 * a call's inputs into a job, runs a body on the Lua host) and
 * policy_lua.c (the bodies: Lua arguments from the job, the call to
 * luacow.evaluate, its result checked into the job's C values).
 */
#ifndef LUACOW_POLICY_JOB_H
#define LUACOW_POLICY_JOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "policy.h"

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

/* -D luacow.lua=1 traces every hook call and its result. */
extern int luacow_debug_lua;

/* Bodies run on the host (lua_host_run) with a struct job as argument. */
int policy_field_body (lua_State *L);         /* any field: evaluate, validate */
int policy_cluster_size_body (lua_State *L);  /* also sets disk.size, disk.cluster_size */
int policy_disk_body (lua_State *L);          /* a new disk table: j->integer its ref */
int policy_recovered_body (lua_State *L);     /* disk.recovered */
int policy_init_body (lua_State *L);          /* libraries, the script, luacow.policy */

#endif
