/* luacow: an export name, as text.
 *
 * Export names come from clients: any bytes (NBD allows up to 4096),
 * never trusted.  Messages show a label: quoted, non-printable bytes as
 * \xHH, cut at 64 bytes.  Rescue files carry a file-name form: bytes
 * other than a-z 0-9 _ - (and . after the first) as %xx, cut at 60
 * characters (a rescue name is unique by its time, pid and random part).
 */
#ifndef LUACOW_EXPORTNAME_H
#define LUACOW_EXPORTNAME_H

#include <stddef.h>

#define EXPORT_LABEL_LEN 300  /* "..." of 64 bytes as \xHH, and a mark */
#define EXPORT_FILE_LEN 64

#define EXPORT_OF_LEN (EXPORT_LABEL_LEN + 16)

/* "name" for messages, into buf. */
const char *export_label (const char *name, char buf[EXPORT_LABEL_LEN]);

/* " of export "name"" to follow "the overlay" or "exit" in messages; ""
 * for the default export "" (and NULL), so single-export logs read as
 * they always did.
 */
const char *export_of (const char *name, char buf[EXPORT_OF_LEN]);

/* The file-name form, into buf: never empty ("%" for ""), never a "/",
 * never a leading ".".
 */
const char *export_file_form (const char *name, char buf[EXPORT_FILE_LEN]);

#endif
