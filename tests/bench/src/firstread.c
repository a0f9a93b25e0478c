/* firstread SOCKET TIMEOUT_MS: poll until an NBD server answers a 4 KiB
 * read on SOCKET (connecting again every millisecond until the socket
 * exists and the handshake succeeds).  Exit 0 once a read succeeded,
 * 1 on timeout.  The caller times it from nbdkit's start.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <libnbd.h>

static double
now (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

int
main (int argc, char **argv)
{
  static char buf[4096];
  if (argc != 3) {
    fprintf (stderr, "usage: %s SOCKET TIMEOUT_MS\n", argv[0]);
    return 2;
  }
  double deadline = now () + atof (argv[2]) / 1000.0;
  while (now () < deadline) {
    if (access (argv[1], F_OK) == 0) {
      struct nbd_handle *h = nbd_create ();
      if (h && nbd_connect_unix (h, argv[1]) == 0 && nbd_pread (h, buf, sizeof buf, 0, 0) == 0) {
        nbd_shutdown (h, 0);
        nbd_close (h);
        return 0;
      }
      nbd_close (h);
    }
    usleep (1000);
  }
  fprintf (stderr, "firstread: no answer from %s in %s ms\n", argv[1], argv[2]);
  return 1;
}
