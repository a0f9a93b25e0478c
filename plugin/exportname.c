/* luacow: an export name, as text, see exportname.h. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "exportname.h"

#define LABEL_BYTES 64
#define FILE_CHARS 60

const char *
export_label (const char *name, char buf[EXPORT_LABEL_LEN])
{
  size_t o = 0, n = strlen (name);
  buf[o++] = '"';
  for (size_t i = 0; i < n && i < LABEL_BYTES; ++i) {
    unsigned char c = (unsigned char) name[i];
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
      buf[o++] = (char) c;
    else
      o += (size_t) snprintf (buf + o, EXPORT_LABEL_LEN - o, "\\x%02x", c);
  }
  buf[o++] = '"';
  if (n > LABEL_BYTES)
    o += (size_t) snprintf (buf + o, EXPORT_LABEL_LEN - o, "... (%zu bytes)", n);
  buf[o] = '\0';
  return buf;
}

const char *
export_of (const char *name, char buf[EXPORT_OF_LEN])
{
  char label[EXPORT_LABEL_LEN];
  if (!name || !name[0])
    return "";
  snprintf (buf, EXPORT_OF_LEN, " of export %s", export_label (name, label));
  return buf;
}

static bool
plain (unsigned char c, bool first)
{
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
    (c == '.' && !first);
}

const char *
export_file_form (const char *name, char buf[EXPORT_FILE_LEN])
{
  size_t o = 0;
  for (size_t i = 0; name[i]; ++i) {
    unsigned char c = (unsigned char) name[i];
    size_t need = plain (c, i == 0) ? 1 : 3;
    if (o + need > FILE_CHARS)
      break;
    if (need == 1)
      buf[o++] = (char) c;
    else
      o += (size_t) snprintf (buf + o, EXPORT_FILE_LEN - o, "%%%02x", c);
  }
  if (o == 0)
    buf[o++] = '%';
  buf[o] = '\0';
  return buf;
}
