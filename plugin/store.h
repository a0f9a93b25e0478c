/* luacow: the overlay store, an unlinked temporary file of fixed-size
 * slots.  Slots are handed out by an atomic counter and never reused, so a
 * late writer can only ever touch a slot nobody else owns; freed slots
 * have their disk space punched out instead.
 */
#ifndef LUACOW_STORE_H
#define LUACOW_STORE_H

#include <stdint.h>

struct store;

/* Creates the file in dir (TMPDIR or /var/tmp), private and unlinked.
 * On failure returns NULL and logs the reason with nbdkit_error.
 */
struct store *store_new (const char *dir, uint32_t slot_size);
void store_free (struct store *st);

/* Reserve n consecutive slots; returns the first. */
uint64_t store_alloc (struct store *st, uint64_t n);

/* I/O at a byte offset (slot * slot_size + offset in the slot).  Return 0
 * or -1 with *err set to an errno value.  Never-written bytes read as 0.
 */
int store_read (struct store *st, void *buf, uint64_t count, uint64_t offset, int *err);
int store_write (struct store *st, const void *buf, uint64_t count, uint64_t offset, int *err);

/* Give the disk space of n slots back; contents become undefined. */
void store_release (struct store *st, uint64_t slot, uint64_t n);

#endif
