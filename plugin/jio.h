/* luacow: the file operations of the overlay store and its journal.
 *
 * Everything the store and the journal write goes through one of these,
 * so that a test can put a simulated disk behind them and crash it: drop,
 * reorder or tear (at 512 bytes) whatever was written since the last
 * completed sync.  Each returns 0, or -1 with errno set; transfers are
 * whole (short transfers and EINTR are the implementation's business).
 */
#ifndef LUACOW_JIO_H
#define LUACOW_JIO_H

#include <stddef.h>
#include <stdint.h>

struct jio {
  int (*pwrite) (void *h, const void *buf, size_t n, uint64_t off);
  /* Reading past the end of the file is an error (EIO) for a real file;
   * the store never does (the file is grown before a slot is used).
   */
  int (*pread) (void *h, void *buf, size_t n, uint64_t off);
  int (*sync) (void *h);                  /* fdatasync */
  int (*truncate) (void *h, uint64_t size);
  /* Give back the disk space of a range; it reads as zeroes after. */
  int (*punch) (void *h, uint64_t off, uint64_t len);
  int (*size) (void *h, uint64_t *size);
  void (*close) (void *h);
  void *h;
  /* Start writing back what was written so far, without waiting for it
   * and without promising anything (NULL: not supported).  Only sync
   * makes data durable.
   */
  int (*writeback) (void *h);
};

/* Operations on an open file descriptor (closed by jio.close).  0, or -1
 * when out of memory (fd is left open).
 */
int jio_from_fd (struct jio *io, int fd);

#endif
