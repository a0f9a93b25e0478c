/* Minimal TAP output for C unit tests: tests/run.sh counts the
 * "ok"/"not ok" lines.  CHECK never aborts, so one run reports every failure.
 */
#ifndef LUACOW_TAP_H
#define LUACOW_TAP_H
#include <stdio.h>

static int tap_n, tap_failed;

#define CHECK(cond, ...) do {                                           \
    ++tap_n;                                                            \
    if (cond) { printf ("ok %d - ", tap_n); }                           \
    else { ++tap_failed; printf ("not ok %d - %s:%d: ", tap_n, __FILE__, __LINE__); } \
    printf (__VA_ARGS__); putchar ('\n'); fflush (stdout);              \
  } while (0)

#define TAP_DONE() (printf ("1..%d\n", tap_n), tap_failed ? 1 : 0)
#endif
