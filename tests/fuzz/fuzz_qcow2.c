/* libFuzzer target for the qcow2 decoder: the input is the image file.
 * Opens it, walks every cluster, reads every data cluster and inflates
 * every compressed one, checking the contract on the way (reasons are
 * one non-empty line; reported clusters lie inside the file).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "qcow2.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

struct walk {
  struct qcow2_image *img;
  int fd;
  uint64_t size;
  uint8_t *buf;
};

static void check_reason (const struct qcow2_err *err)
{
  if (err->msg[0] == '\0' || strchr (err->msg, '\n')) abort ();
}

static int visit (void *opaque, uint64_t g, const struct qcow2_cluster *c)
{
  struct walk *x = opaque;
  uint32_t cs = qcow2_cluster_size (x->img);
  struct qcow2_err err = { "" };
  (void) g;

  switch (c->kind) {
  case QCOW2_DATA:
    if (c->host_offset + cs > x->size) abort ();
    if (pread (x->fd, x->buf, cs, (off_t) c->host_offset) != (ssize_t) cs) abort ();
    break;
  case QCOW2_COMPRESSED:
    if (c->compressed_size == 0 || c->host_offset + c->compressed_size > x->size)
      abort ();
    if (qcow2_read_compressed (x->img, c, x->buf, &err) < 0) check_reason (&err);
    break;
  case QCOW2_ZERO:
    break;
  default:
    abort ();                   /* unallocated clusters are never reported */
  }
  return 0;
}

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  static int fd = -1;
  struct qcow2_err err = { "" };
  struct walk x;

  if (fd < 0 && (fd = memfd_create ("qcow2-fuzz", 0)) < 0) abort ();
  if (ftruncate (fd, 0) < 0 ||
      (size && pwrite (fd, data, size, 0) != (ssize_t) size))
    abort ();

  x.img = qcow2_open (fd, &err);
  if (!x.img) {
    check_reason (&err);
    return 0;
  }
  x.fd = fd;
  x.size = size;
  x.buf = malloc (qcow2_cluster_size (x.img));
  if (!x.buf) abort ();
  if (qcow2_for_each_cluster (x.img, visit, &x, &err) < 0) check_reason (&err);
  free (x.buf);
  qcow2_close (x.img);
  return 0;
}
