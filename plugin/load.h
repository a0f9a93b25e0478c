/* luacow: reloading a qcow2 file into the overlay.
 *
 * Start -> policy -> decoder -> overlay.  Uncompressed data clusters are
 * not copied: the overlay reads them from the file on demand, so a large
 * save is ready to serve at once.  Compressed clusters, and blocks that
 * mix states (files with clusters smaller than the overlay's block), are
 * materialized into the overlay store.
 */
#ifndef LUACOW_LOAD_H
#define LUACOW_LOAD_H

#include <stdint.h>

#include "overlay.h"

#define LOAD_ERRLEN 512

struct load_result {
  uint64_t data_clusters, zero_clusters, compressed_clusters, bytes;
  uint32_t cluster_size;
  double seconds;
  int fd;                     /* the file, kept open for on-demand reads */
};

/* Returns 0, or -1 with a one-line reason (without the path).  On
 * failure the overlay is in an undefined state and must not be served.
 */
int load_overlay (struct overlay *ov, const struct ov_lower *lower, const char *path,
                  struct load_result *res, char err[LOAD_ERRLEN]);

#endif
