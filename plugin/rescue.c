/* luacow: the rescue file, see rescue.h. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "exportname.h"
#include "rescue.h"
#include "save.h"
#include "savefile.h"

/* The same line as a policy's exit save, on stderr too. */
static void
log_rescued (const struct rescue_setup *s, const char *why, const struct save_result *res)
{
  char *cmd = save_rebase_command (res->path, NULL, NULL);
  char *line = NULL;
  if (asprintf (&line, "luacow: saved %s (exit): %" PRIu64 " data clusters, %" PRIu64
                " zero clusters, %" PRIu64 " bytes, %.3f s; attach a base with: %s",
                res->path, res->data_clusters, res->zero_clusters, res->bytes, res->seconds,
                cmd ? cmd : "qemu-img rebase -u") == -1)
    line = NULL;
  if (line) {
    nbdkit_debug ("%s", line);
    fprintf (stderr, "nbdkit: %s\n", line);
  }
  free (line);
  free (cmd);
  char of[EXPORT_OF_LEN];
  nbdkit_error ("luacow: %s; the overlay%s was saved to the rescue file %s", why,
                export_of (s->export, of), res->path);
}

/* One try in dir with clusters of cs bytes.  Returns 0 or -1. */
static int
rescue_to (const struct rescue_setup *s, const char *dir, uint32_t cs, const char *why)
{
  struct save_request req = { .cluster_size = cs, .compress = QCOW2_COMPRESS_NONE, .unique = true };
  struct save_result res;
  char err[SAVE_ERRLEN], *path, form[EXPORT_FILE_LEN];
  bool named = s->export && s->export[0];
  if (asprintf (&path, "%s/luacow-rescue-%s%s%ld-%ld-" SAVEFILE_RANDOM ".qcow2",
                strcmp (dir, "/") == 0 ? "" : dir, named ? export_file_form (s->export, form) : "",
                named ? "-" : "", (long) time (NULL), (long) getpid ()) == -1)
    return -1;
  req.path = path;
  int r = save_overlay (s->ov, s->lower, &req, &res, err);
  if (r == 0)
    log_rescued (s, why, &res);
  else
    nbdkit_error ("luacow: rescue save in %s failed: %s", dir, err);
  free (res.path);
  free (path);
  return r;
}

/* Clusters of the overlay's block size first: every such cluster is
 * wholly data, zero or clean, so nothing is read from the plugin, which
 * may be what failed (or refuses reads while nbdkit shuts down).  The
 * policy's cluster size is the fallback for exports too large for small
 * clusters.
 */
int
rescue_overlay (const struct rescue_setup *s, const char *why)
{
  struct ov_stats st;
  overlay_stats (s->ov, &st);
  if (st.data_blocks + st.zero_blocks == 0)
    return 0;
  const char *tmpdir = getenv ("TMPDIR");
  const char *dirs[] = { s->cwd, tmpdir && *tmpdir ? tmpdir : "/var/tmp" };
  const uint32_t sizes[] = { overlay_block_size (s->ov), s->cluster_size };
  for (size_t i = 0; i < 2; ++i)
    for (size_t k = 0; k < 2; ++k) {
      if (k == 1 && sizes[1] == sizes[0])
        break;
      if (rescue_to (s, dirs[i], sizes[k], why) == 0)
        return 0;
    }
  rescue_lost (s->export, why);
  return -1;
}

/* nbdkit's log may be syslog (in the background), stderr, or nothing
 * (--log=null): say it on all three.  syslog without openlog, as nbdkit
 * itself does, so its identity and facility stay as they were.
 */
void
rescue_lost (const char *export, const char *why)
{
  char of[EXPORT_OF_LEN];
  const char *x = export_of (export, of);
  static const char what[] = "no rescue file could be written: the overlay";
  nbdkit_error ("luacow: %s; %s%s is lost", why, what, x);
  fprintf (stderr, "nbdkit: luacow: CRITICAL: %s; %s%s is lost\n", why, what, x);
  fflush (stderr);
  syslog (LOG_DAEMON | LOG_CRIT, "luacow: %s; %s%s is lost", why, what, x);
}
