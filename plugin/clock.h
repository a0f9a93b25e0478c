/* luacow: the two clocks the filter reads, as seconds in a double. */
#ifndef LUACOW_CLOCK_H
#define LUACOW_CLOCK_H

#include <time.h>

static inline double
clock_seconds (clockid_t clock)
{
  struct timespec ts;
  clock_gettime (clock, &ts);
  return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

/* For durations and progress lines. */
static inline double monotonic_seconds (void) { return clock_seconds (CLOCK_MONOTONIC); }
/* Seconds since the epoch, as the policy's ctx.now and ctx.started. */
static inline double epoch_seconds (void) { return clock_seconds (CLOCK_REALTIME); }

#endif
