/* luacow: the two clocks the filter reads, as seconds in a double. */
#ifndef LUACOW_CLOCK_H
#define LUACOW_CLOCK_H

#include <pthread.h>
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

/* A condition variable whose timed waits count CLOCK_MONOTONIC time, so
 * that setting the wall clock neither shortens nor stretches them.
 */
static inline void
monotonic_cond_init (pthread_cond_t *cv)
{
  pthread_condattr_t ca;
  pthread_condattr_init (&ca);
  pthread_condattr_setclock (&ca, CLOCK_MONOTONIC);
  pthread_cond_init (cv, &ca);
  pthread_condattr_destroy (&ca);
}

#endif
