#include "text.h"

#include <string.h>

namespace dropsync {

static const char kHexDigits[] = "0123456789abcdef";

bool copy_text(char* to, size_t size, const char* from) {
  if (size == 0) return false;
  size_t i = 0;
  for (; from[i] && i + 1 < size; i++) to[i] = from[i];
  to[i] = '\0';
  return from[i] == '\0';
}

bool append_text(char* to, size_t size, const char* from) {
  size_t used = strlen(to);
  if (used >= size) return false;
  return copy_text(to + used, size - used, from);
}

size_t format_number(char* out, size_t size, long long value) {
  char digits[24];
  size_t count = 0;
  unsigned long long magnitude = value < 0 ? 0ULL - static_cast<unsigned long long>(value)
                                           : static_cast<unsigned long long>(value);
  do {
    digits[count++] = static_cast<char>('0' + magnitude % 10);
    magnitude /= 10;
  } while (magnitude);
  if (value < 0) digits[count++] = '-';
  size_t length = 0;
  while (count && length + 1 < size) out[length++] = digits[--count];
  if (size) out[length] = '\0';
  return length;
}

bool append_number(char* to, size_t size, long long value) {
  char digits[24];
  format_number(digits, sizeof(digits), value);
  return append_text(to, size, digits);
}

bool parse_number(const char* text, long long& out) {
  if (!text || !*text) return false;
  bool negative = *text == '-';
  if (negative) text++;
  if (!*text) return false;
  long long value = 0;
  for (; *text; text++) {
    if (*text < '0' || *text > '9') return false;
    if (value > (0x7fffffffffffffffLL - 9) / 10) return false;
    value = value * 10 + (*text - '0');
  }
  out = negative ? -value : value;
  return true;
}

void to_hex(const uint8_t* data, size_t length, char* out) {
  const char* kDigits = kHexDigits;
  for (size_t i = 0; i < length; i++) {
    out[2 * i] = kDigits[data[i] >> 4];
    out[2 * i + 1] = kDigits[data[i] & 15];
  }
  out[2 * length] = '\0';
}

static char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; }

bool hex_equals(const char* hex, const uint8_t digest[32]) {
  char mine[65];
  to_hex(digest, 32, mine);
  for (int i = 0; i < 64; i++) {
    if (lower(hex[i]) != mine[i]) return false;
  }
  return hex[64] == '\0';
}

bool append_url_encoded(char* to, size_t size, const char* from) {
  const char* kDigits = kHexDigits;  // %2b is %2B (RFC 3986 2.1)
  size_t used = strlen(to);
  for (; *from; from++) {
    unsigned char c = static_cast<unsigned char>(*from);
    bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '.' || c == '_' || c == '~' || c == ':';
    size_t need = plain ? 1 : 3;
    if (used + need >= size) return false;
    if (plain) {
      to[used++] = static_cast<char>(c);
    } else {
      to[used++] = '%';
      to[used++] = kDigits[c >> 4];
      to[used++] = kDigits[c & 15];
    }
    to[used] = '\0';
  }
  return true;
}

size_t utf8_prefix(const char* text, size_t length) {
  // Back over continuation bytes (10xxxxxx) to the lead byte of the character that the
  // cut would split, and drop that character whole.
  size_t end = length;
  while (end > 0 && (static_cast<unsigned char>(text[end - 1]) & 0xC0) == 0x80) end--;
  if (end == 0) return 0;
  unsigned char lead = static_cast<unsigned char>(text[end - 1]);
  size_t want = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
  return length - (end - 1) >= want ? length : end - 1;
}

bool starts_with(const char* text, const char* prefix) {
  return strncmp(text, prefix, strlen(prefix)) == 0;
}

bool ends_with(const char* text, const char* suffix) {
  size_t a = strlen(text), b = strlen(suffix);
  return a >= b && strcmp(text + a - b, suffix) == 0;
}

bool equals_ignore_case(const char* a, const char* b) {
  for (; *a && *b; a++, b++) {
    if (lower(*a) != lower(*b)) return false;
  }
  return *a == *b;
}

}  // namespace dropsync
