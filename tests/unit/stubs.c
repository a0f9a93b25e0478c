/* The few nbdkit functions the mechanism calls, for unit tests that run
 * without nbdkit: messages go to stderr.
 */
#include <stdarg.h>
#include <stdio.h>
#include <nbdkit-filter.h>

void nbdkit_error (const char *fs, ...)
{
  va_list ap;
  va_start (ap, fs);
  fputs ("error: ", stderr);
  vfprintf (stderr, fs, ap);
  fputc ('\n', stderr);
  va_end (ap);
}

void nbdkit_debug (const char *fs, ...)
{
  va_list ap;
  if (!getenv ("LUACOW_TEST_DEBUG")) return;
  va_start (ap, fs);
  fputs ("debug: ", stderr);
  vfprintf (stderr, fs, ap);
  fputc ('\n', stderr);
  va_end (ap);
}
