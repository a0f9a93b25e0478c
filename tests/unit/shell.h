/* A shell command for the unit tests that drive qemu-img and qemu-io: run
 * in a work directory, its stdout and stderr kept in out.  Returns its
 * exit status (-1 if it could not run or died of a signal); with report,
 * a failing command and its output are printed as TAP comments.
 */
#ifndef LUACOW_SHELL_H
#define LUACOW_SHELL_H
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static int shell_run (const char *dir, char *out, size_t outlen, bool report,
                      const char *fmt, ...) __attribute__ ((format (printf, 5, 6)));
static int
shell_run (const char *dir, char *out, size_t outlen, bool report, const char *fmt, ...)
{
  char cmd[2048], full[2200];
  va_list ap;
  va_start (ap, fmt);
  vsnprintf (cmd, sizeof cmd, fmt, ap);
  va_end (ap);
  snprintf (full, sizeof full, "cd '%s' && { %s; } 2>&1", dir, cmd);
  FILE *p = popen (full, "r");
  if (!p)
    return -1;
  size_t n = fread (out, 1, outlen - 1, p);
  out[n] = '\0';
  int st = pclose (p);
  if (report && !(WIFEXITED (st) && WEXITSTATUS (st) == 0))
    printf ("# command failed: %s\n# %s", cmd, out);
  return WIFEXITED (st) ? WEXITSTATUS (st) : -1;
}

/* The start of such a test: qemu-img (and qemu-io when need_io) must be
 * there, else a failing TAP line says how to install them; then a fresh
 * work directory /tmp/luacow-NAME.XXXXXX in dir (64 bytes).  0 or -1.
 */
static int
shell_setup (char dir[64], const char *name, bool need_io)
{
  if (system ("qemu-img --version >/dev/null 2>&1") != 0 ||
      (need_io && system ("qemu-io --version >/dev/null 2>&1") != 0)) {
    printf ("not ok 1 - %s needed (Debian package qemu-utils; make deps installs it)\n1..1\n",
            need_io ? "qemu-img and qemu-io are" : "qemu-img is");
    return -1;
  }
  snprintf (dir, 64, "/tmp/luacow-%s.XXXXXX", name);
  if (!mkdtemp (dir)) {
    perror ("mkdtemp");
    return -1;
  }
  return 0;
}
#endif
