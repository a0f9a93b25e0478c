/* luacow: whole-buffer pread/pwrite.
 *
 * pread and pwrite may transfer less than asked (signals, pipes, some
 * filesystems) or be interrupted: these loop until every byte is moved.
 * A transfer of 0 bytes would loop forever, so it is an error: EIO
 * (reading past the end of the file, or a write that makes no progress).
 * No nbdkit or Lua types: the qcow2 code uses these too.
 */
#ifndef LUACOW_FULLIO_H
#define LUACOW_FULLIO_H

#include <stddef.h>
#include <stdint.h>

/* Return 0, or -1 with errno set (EINVAL if off + n overflows off_t). */
int full_pread (int fd, void *buf, size_t n, uint64_t off);
int full_pwrite (int fd, const void *buf, size_t n, uint64_t off);

#endif
