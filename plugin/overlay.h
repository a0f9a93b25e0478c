/* luacow: the copy-on-write overlay.
 *
 * Every block of the export is in one of three states: clean (read from
 * the layer below), zero (reads as zeroes, stores nothing) or data (read
 * from the overlay: a slot of the store, or a range of a reloaded qcow2
 * file read on demand).  Knows nothing of qcow2 or Lua.
 *
 * Requests must lie inside the export (nbdkit checks that).  Aligned
 * whole-block writes take no lock; a partial block is read-modified-written
 * under a lock striped by block number.
 */
#ifndef LUACOW_OVERLAY_H
#define LUACOW_OVERLAY_H

#include <stdint.h>

/* The layer below (the plugin), as the overlay reads it. */
struct ov_lower {
  int (*pread) (void *handle, void *buf, uint32_t count, uint64_t offset, int *err);
  void *handle;
};

enum ov_kind { OV_CLEAN, OV_ZERO, OV_DATA };

struct ov_stats {
  uint64_t data_blocks;     /* blocks holding overlay data */
  uint64_t zero_blocks;     /* blocks that read as zero */
  uint64_t written_bytes;   /* bytes clients wrote since start */
  uint64_t zeroed_bytes;    /* bytes clients zeroed or trimmed since start */
  uint64_t memory_bytes;    /* block map */
};

struct overlay;

/* Block size: a power of two from 512 to 4096.  The store is created in
 * tmpdir.  NULL on failure, reported with nbdkit_error.
 */
struct overlay *overlay_new (uint64_t size, uint32_t block_size, const char *tmpdir);
void overlay_free (struct overlay *ov);

uint64_t overlay_size (const struct overlay *ov);
uint32_t overlay_block_size (const struct overlay *ov);
void overlay_stats (const struct overlay *ov, struct ov_stats *stats);

int overlay_pread (struct overlay *ov, const struct ov_lower *lower,
                   void *buf, uint32_t count, uint64_t offset, int *err);
int overlay_pwrite (struct overlay *ov, const struct ov_lower *lower,
                    const void *buf, uint32_t count, uint64_t offset, int *err);
/* Zero and trim: afterwards the range reads as zeroes. */
int overlay_zero (struct overlay *ov, const struct ov_lower *lower,
                  uint64_t count, uint64_t offset, int *err);

/* Calls fn for each maximal run of one kind inside [offset, offset+count)
 * (clipped to the export), in order.  fn returning non-zero stops the walk
 * and is returned.
 */
typedef int (*ov_run_fn) (void *opaque, enum ov_kind kind, uint64_t offset,
                          uint64_t length);
int overlay_map (const struct overlay *ov, uint64_t offset, uint64_t count,
                 ov_run_fn fn, void *opaque);

/* Reloading.  overlay_attach_file names the file whose byte ranges
 * overlay_set_file_block refers to (the caller keeps it open until
 * overlay_free).  Used before any client is served.
 */
void overlay_attach_file (struct overlay *ov, int fd);
int overlay_set_file_block (struct overlay *ov, uint64_t block, uint64_t file_offset);
int overlay_set_zero_blocks (struct overlay *ov, uint64_t block, uint64_t n);
int overlay_put_block (struct overlay *ov, uint64_t block, const void *buf, int *err);

#endif
