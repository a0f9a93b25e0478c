/* luacow: one export's startup, which is no nbdkit callback: what the
 * policy says for it and the checks made before the plugin is open (the
 * journal's header and base, the file to reload, the journal's
 * directory), and the overlay built at its first client's connection
 * (cluster size check, recovery of a journal or reload of a file).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "load.h"
#include "qcow2.h"
#include "qcow2_common.h"
#include "startup.h"
#include "store.h"

struct file_check {
  struct qcow2_image *img;
  char *buf;                  /* one cluster */
  struct qcow2_err *err;
  bool bad;                   /* a compressed cluster failed: */
  uint64_t guest;             /* this one */
};

/* Compressed clusters are inflated (and thrown away) so that a bad
 * stream stops the start too; the reload inflates them again.
 */
static int
check_cluster (void *opaque, uint64_t guest, const struct qcow2_cluster *c)
{
  struct file_check *fc = opaque;
  if (c->kind != QCOW2_COMPRESSED)
    return 0;
  if (qcow2_read_compressed (fc->img, c, fc->buf, fc->err) == -1) {
    fc->bad = true;
    fc->guest = guest;
    return -1;
  }
  return 0;
}

/* The file to reload, checked without the plugin: header, tables, every
 * L2 entry and compressed cluster.  Its size is compared with the
 * export's at first open.
 */
static int
check_reload_file (const char *path, char *msg, size_t len)
{
  struct qcow2_err qerr = { "" };
  int fd = open (path, O_RDONLY | O_CLOEXEC);
  if (fd == -1) {
    snprintf (msg, len, "luacow: %s: cannot open: %s", path, strerror (errno));
    return -1;
  }
  struct file_check fc = { qcow2_open (fd, &qerr), NULL, &qerr, false, 0 };
  int r = -1;
  if (fc.img && !(fc.buf = malloc (qcow2_cluster_size (fc.img))))
    snprintf (qerr.msg, sizeof qerr.msg, "out of memory");
  else if (fc.img)
    r = qcow2_for_each_cluster (fc.img, check_cluster, &fc, &qerr) == 0 ? 0 : -1;
  if (r == -1 && fc.bad)
    snprintf (msg, len, "luacow: %s: compressed cluster %" PRIu64 ": %s", path, fc.guest,
              qerr.msg);
  else if (r == -1)
    snprintf (msg, len, "luacow: %s: %s", path, qerr.msg);
  free (fc.buf);
  if (fc.img)
    qcow2_close (fc.img);
  close (fd);
  return r;
}

/* A new journal is made at the first client's connection: its directory
 * must be writable, which is checked now so that nbdkit does not start
 * otherwise.
 */
static bool
journal_dir_unusable (const char *path, char *msg, size_t len)
{
  const char *slash = strrchr (path, '/');
  char *dir = slash == path ? strdup ("/") : strndup (path, (size_t) (slash - path));
  bool bad = !dir || access (dir, W_OK | X_OK) == -1;
  if (bad)
    snprintf (msg, len, "luacow: journal %s: its directory %s is not writable: %s", path,
              dir ? dir : "?", strerror (errno));
  free (dir);
  return bad;
}

void
startup_config_clear (struct startup_config *c)
{
  free (c->journal);
  free (c->load);
  free (c->cow_read_path);
  memset (c, 0, sizeof *c);
}

/* What the policy says for export d, checked as far as it can be without
 * the plugin: a journal left by a crash (recovered at the first open,
 * the policy's load not consulted then) by its header and base, else the
 * file to reload; the journal's directory, or TMPDIR for the store.
 */
int
startup_configure (struct policy *p, const struct policy_disk *d, const char *tmpdir,
                   struct startup_config *c, char *msg, size_t len)
{
  char err[POLICY_ERRLEN], oerr[OV_ERRLEN];
  memset (c, 0, sizeof *c);
  if (policy_journal (p, d, &c->journal, err) == -1 ||
      policy_cow (p, d, &c->cow_read, &c->cow_read_path, &c->cow_cache, err) == -1) {
    snprintf (msg, len, "luacow: %s", err);
    goto fail;
  }
  int j = c->journal ? overlay_check_journal (c->journal, oerr) : 0;
  if (j == -1) {
    snprintf (msg, len, "luacow: journal %s: %s", c->journal, oerr);
    goto fail;
  }
  if (j == 0 && c->journal && journal_dir_unusable (c->journal, msg, len))
    goto fail;
  if (j == 0 && policy_load (p, d, &c->load, err) == -1) {
    snprintf (msg, len, "luacow: %s", err);
    goto fail;
  }
  if (c->load && check_reload_file (c->load, msg, len) == -1)
    goto fail;
  if (!c->journal) {          /* the store goes to TMPDIR: can it? */
    int fd = store_tmpfile (tmpdir);
    if (fd == -1) {
      snprintf (msg, len, "luacow: cannot create the overlay store in %s: %s "
                "(set TMPDIR to a writable directory)", tmpdir, strerror (errno));
      goto fail;
    }
    close (fd);
  }
  return 0;
 fail:
  startup_config_clear (c);
  return -1;
}

static void
human (uint64_t n, char buf[32])
{
  static const char *const units[] = { "bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
  unsigned u = 0;
  while (n >= 1024 && n % 1024 == 0 && u < 6) {
    n /= 1024;
    u++;
  }
  snprintf (buf, 32, "%" PRIu64 " %s", n, units[u]);
}

/* The largest export a qcow2 with these clusters describes: qemu's
 * 32 MiB L1 table of 8-byte entries, each an L2 table of cs/8 clusters.
 */
static uint64_t
max_export (uint32_t cs)
{
  return (uint64_t) (QCOW2_MAX_L1_BYTES / 8) * (cs / 8) * cs;
}

/* A cluster size no save could ever use for this export is refused
 * before anything is served, saying which ones work.
 */
int
startup_check_savable (uint64_t size, uint32_t cs, char *msg, size_t len)
{
  if (size <= max_export (cs))
    return 0;
  uint32_t ok = cs;
  while (ok < (1u << QCOW2_MAX_CLUSTER_BITS) && size > max_export (ok))
    ok *= 2;
  char s[32], m[32];
  human (size, s);
  human (max_export (cs), m);
  if (size > max_export (ok))
    snprintf (msg, len, "luacow: a %s export is too large for qcow2 (at most %s with %u-byte "
              "clusters, the largest)", s, m, ok);
  else
    snprintf (msg, len, "luacow: cluster size %u cannot save this %s export (qcow2's 32 MiB "
              "L1 table covers %s with %u-byte clusters); cluster sizes from %u to %u work",
              cs, s, m, cs, ok, 1u << QCOW2_MAX_CLUSTER_BITS);
  return -1;
}

static int
reload (struct startup *s, const struct ov_lower *lower, char *msg, size_t len)
{
  struct load_result loaded;
  char lerr[LOAD_ERRLEN];
  if (load_overlay (s->overlay, lower, s->load_path, &loaded, lerr) == -1) {
    snprintf (msg, len, "luacow: %s: %s (not serving: the client would see the disk without it)",
              s->load_path, lerr);
    (void) overlay_discard_journal (s->overlay);   /* fresh: it holds nothing */
    return -1;
  }
  s->loaded_path = s->load_path;
  s->load_path = NULL;
  int e;
  if (overlay_commit (s->overlay, &e) == -1) {
    snprintf (msg, len, "luacow: journal %s: cannot make the reloaded state durable: %s",
              s->journal, strerror (e));
    return -1;
  }
  char line[512];
  snprintf (line, sizeof line, "luacow: reloaded %s: %" PRIu64 " data clusters (%" PRIu64
            " compressed), %" PRIu64 " zero clusters, %" PRIu64 " bytes, %.3f s",
            s->loaded_path, loaded.data_clusters, loaded.compressed_clusters,
            loaded.zero_clusters, loaded.bytes, loaded.seconds);
  nbdkit_debug ("%s", line);
  fprintf (stderr, "nbdkit: %s\n", line);
  return 0;
}

/* One line on stderr, as for the save at exit. */
static void
log_recovery (const char *journal_path, const struct ov_recovery *rec)
{
  char when[64] = "no flush";
  time_t t = (time_t) rec->flushed;
  struct tm tm;
  if (rec->flushed > 0 && localtime_r (&t, &tm))
    strftime (when, sizeof when, "the flush at %Y-%m-%d %H:%M:%S", &tm);
  char line[1024];
  snprintf (line, sizeof line, "luacow: recovered journal %s: %" PRIu64 " blocks, %" PRIu64
            " bytes of data, as of %s%s, %.3f s", journal_path, rec->blocks, rec->bytes, when,
            rec->dropped ? " (an unfinished last commit was dropped)" : "", rec->seconds);
  nbdkit_debug ("%s", line);
  fprintf (stderr, "nbdkit: %s\n", line);
}

/* The overlay, with its journal when the policy names one: recovered if
 * a crash left it, else fresh with what the policy's load names (made
 * durable before anyone is served).
 */
static int
build (struct startup *s, const struct ov_lower *lower, char *msg, size_t len)
{
  char oerr[OV_ERRLEN], perr[POLICY_ERRLEN];
  struct ov_recovery rec;
  struct ov_options o = {
    .size = s->size, .block_size = s->cluster_size < 4096 ? s->cluster_size : 4096,
    .tmpdir = s->tmpdir, .journal = s->journal, .base = s->load_path,
  };
  s->overlay = overlay_open (&o, &rec, oerr);
  if (!s->overlay) {
    if (s->journal)
      snprintf (msg, len, "luacow: journal %s: %s", s->journal, oerr);
    else
      snprintf (msg, len, "luacow: %s", oerr);
    return -1;
  }
  if (rec.recovered && rec.commits == 0) {
    /* A start that died before its first commit (the reload's): nothing
     * was ever acknowledged, so start afresh as the policy says.
     */
    fprintf (stderr, "nbdkit: luacow: journal %s holds no commit: starting afresh\n",
             s->journal);
    if (overlay_discard_journal (s->overlay) == -1) {
      snprintf (msg, len, "luacow: journal %s: cannot remove it: %s", s->journal,
                strerror (errno));
      return -1;
    }
    overlay_free (s->overlay);
    s->overlay = NULL;
    if (!s->load_path && policy_load (s->policy, s->disk, &s->load_path, perr) == -1) {
      snprintf (msg, len, "luacow: %s", perr);
      return -1;
    }
    return build (s, lower, msg, len);
  }
  if (overlay_start (s->overlay, oerr) == -1) {
    snprintf (msg, len, "luacow: %s", oerr);
    return -1;
  }
  if (rec.recovered) {
    s->loaded_path = rec.base[0] ? strdup (rec.base) : NULL;
    log_recovery (s->journal, &rec);
    struct policy_recovered pr = { s->journal, rec.blocks, rec.bytes, rec.flushed,
                                   rec.seconds };
    if (policy_set_recovered (s->policy, s->disk, &pr, perr) == -1) {
      snprintf (msg, len, "luacow: %s", perr);
      return -1;
    }
    return 0;
  }
  return s->load_path ? reload (s, lower, msg, len) : 0;
}

int
startup_overlay (struct startup *s, const struct ov_lower *lower, char *msg, size_t len)
{
  if (build (s, lower, msg, len) == 0)
    return 0;
  overlay_free (s->overlay);    /* none is served: every open fails alike */
  s->overlay = NULL;
  return -1;
}
