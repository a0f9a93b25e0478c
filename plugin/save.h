/* luacow: saving the overlay as a qcow2 file, atomically.
 *
 * The one place that joins the overlay and the qcow2 encoder: it walks the
 * overlay cluster by cluster (completing partly written clusters from the
 * layer below) and streams them to a new file that savefile.h names only
 * once it is complete and fsynced.
 */
#ifndef LUACOW_SAVE_H
#define LUACOW_SAVE_H

#include <stdbool.h>
#include <stdint.h>

#include "overlay.h"
#include "qcow2.h"

#define SAVE_ERRLEN 512

struct save_request {
  const char *path;           /* absolute */
  uint32_t cluster_size;
  enum qcow2_compress compress;
  const char *backing_file;   /* NULL: none */
  const char *backing_format;
  bool backing_embed;         /* write the hint into the header */
  bool unique;                /* path's name holds SAVEFILE_RANDOM: made a
                                 fresh name, never replacing a file */
};

struct save_result {
  uint64_t data_clusters, zero_clusters, bytes;
  double seconds;
  char *path;                 /* unique: the name used (malloc'd), else NULL */
};

/* What a save would write now: counts of data and zero clusters. */
void save_count (const struct overlay *ov, uint32_t cluster_size,
                 uint64_t *data_clusters, uint64_t *zero_clusters);

/* Returns 0, or -1 with a one-line reason; the target is then untouched
 * and no temporary file is left.  res->path is always set (NULL unless
 * unique and saved).
 */
int save_overlay (struct overlay *ov, const struct ov_lower *lower,
                  const struct save_request *req, struct save_result *res,
                  char err[SAVE_ERRLEN]);

/* Copy, through lower, what the plugin holds of every cluster a save
 * would write whole (the clean blocks of partly written clusters) into
 * the overlay as copies (overlay_populate), so that a later save reads
 * nothing from the plugin.  0, or -1 with *err.
 */
int save_settle (struct overlay *ov, const struct ov_lower *lower, uint32_t cluster_size,
                 int *err);

/* The shell command that attaches a base to a saved file (malloc'd). */
char *save_rebase_command (const char *path, const char *base, const char *format);

#endif
