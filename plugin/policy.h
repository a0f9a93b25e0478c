/* luacow: the policy: its fields as C values.
 *
 * Used at startup, at events and at exit, never in the per-request data
 * path.  Each call runs on the Lua host (lua_host.h): protected, on a
 * thread of its own, under the time budget and the memory cap, and waited
 * for at most the budget + HOST_GRACE seconds.  Errors come back as one
 * line; after a hook that never returned, every call fails at once.
 */
#ifndef LUACOW_POLICY_H
#define LUACOW_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define POLICY_ERRLEN 512

enum policy_event_mask { EVENT_FLUSH = 1, EVENT_CLOSE = 2, EVENT_INTERVAL = 4 };

struct policy_param { const char *name, *value; };

struct policy;
struct policy_disk;           /* one export's disk table */

struct policy_ctx {           /* the C side of the Lua ctx table */
  const struct policy_disk *disk;   /* the export's: ctx starts as a copy */
  const char *event;          /* "exit", "flush", "close", "interval" */
  uint64_t size;
  uint32_t cluster_size;
  uint64_t dirty_bytes, zero_bytes, written_bytes;
  uint64_t data_clusters, zero_clusters;
  double started, now;
  const char *loaded;         /* NULL if nothing was reloaded */
  const char *last_save_path; /* NULL if never saved */
  double last_save_time;
};

struct policy_plan {          /* what to write, from name/backing/compress */
  char *path;                 /* absolute */
  char *backing_file;         /* NULL: no hint */
  char *backing_format;
  bool backing_embed;
  char *compress;             /* NULL, "deflate" or "zstd" */
};

struct policy_result {
  const char *path;
  uint64_t data_clusters, zero_clusters, bytes;
  double seconds;
};

/* Defaults of luacow.default that come from cow's parameters. */
struct policy_defaults {
  uint32_t cluster_size;      /* 0: the library's (65536) */
  bool cow_on_read;           /* cow_on_read: false/true, or ... */
  const char *cow_read_path;  /* ... this path when not NULL */
  bool cow_on_cache;
};

/* Load the library and the script (NULL: the default policy), validate
 * it.  cwd resolves relative paths.  budget: seconds a hook may run.
 * defaults (may be NULL) are set in luacow.default before the script runs.
 */
struct policy *policy_new (const char *script, const struct policy_param *params,
                           size_t nparams, const char *cwd, double budget,
                           const struct policy_defaults *defaults,
                           char err[POLICY_ERRLEN]);
void policy_free (struct policy *p);

/* The script's file name, for messages ("policy.lua" or "default policy"). */
const char *policy_name (const struct policy *p);

int policy_events (struct policy *p, unsigned *mask, double *interval,
                   char err[POLICY_ERRLEN]);

/* A new disk table for the export named export (the client's name,
 * disk.export): params, cwd, script as for every export.  Freeing the
 * handle leaves the table to the state, which keeps it until it closes.
 */
struct policy_disk *policy_disk_new (struct policy *p, const char *export,
                                     char err[POLICY_ERRLEN]);
void policy_disk_free (struct policy_disk *d);

/* The fields evaluated once per export, with its disk. */
int policy_cluster_size (struct policy *p, const struct policy_disk *d, uint64_t size,
                         uint32_t *cluster_size, char err[POLICY_ERRLEN]);
/* *path is NULL (no journal) or an absolute path to free. */
int policy_journal (struct policy *p, const struct policy_disk *d, char **path,
                    char err[POLICY_ERRLEN]);

struct policy_recovered {     /* disk.recovered and ctx.recovered */
  const char *journal;
  uint64_t blocks, bytes;
  double flushed, seconds;
};
int policy_set_recovered (struct policy *p, const struct policy_disk *d,
                          const struct policy_recovered *r, char err[POLICY_ERRLEN]);

/* cow_on_read (*read_path: NULL, or an absolute path to free: on while
 * it exists) and cow_on_cache, evaluated with disk.
 */
int policy_cow (struct policy *p, const struct policy_disk *d, bool *on_read,
                char **read_path, bool *on_cache, char err[POLICY_ERRLEN]);
/* *path is NULL (nothing to load) or an absolute path to free. */
int policy_load (struct policy *p, const struct policy_disk *d, char **path,
                 char err[POLICY_ERRLEN]);
int policy_should_save (struct policy *p, const struct policy_ctx *ctx, bool *yes,
                        char err[POLICY_ERRLEN]);
int policy_make_plan (struct policy *p, const struct policy_ctx *ctx,
                      struct policy_plan *plan, char err[POLICY_ERRLEN]);
void policy_plan_clear (struct policy_plan *plan);
/* The name field alone: *path NULL (no name) or absolute, to free. */
int policy_save_name (struct policy *p, const struct policy_ctx *ctx, char **path,
                      char err[POLICY_ERRLEN]);
/* Errors of the saved hook are only logged. */
void policy_saved (struct policy *p, const struct policy_ctx *ctx,
                   const struct policy_result *result);

/* Join a path returned by the policy to cwd when relative (malloc'd). */
char *policy_resolve (const char *cwd, const char *path);

#endif
