// Bounded string helpers: every copy and join knows its buffer's size.
#ifndef DROPSYNC_CORE_TEXT_H
#define DROPSYNC_CORE_TEXT_H

#include <stddef.h>
#include <stdint.h>

namespace dropsync {

// Copies at most size - 1 bytes and terminates; false when `from` did not fit.
bool copy_text(char* to, size_t size, const char* from);
// Appends to a NUL-terminated buffer; false when it did not fit (the buffer is then cut).
bool append_text(char* to, size_t size, const char* from);
bool append_number(char* to, size_t size, long long value);
// Decimal text of value; answers the length.
size_t format_number(char* out, size_t size, long long value);
bool parse_number(const char* text, long long& out);
void to_hex(const uint8_t* data, size_t length, char* out);  // out: 2 * length + 1 bytes
// Compares 64 hex digits to a 32-byte digest, ignoring case.
bool hex_equals(const char* hex, const uint8_t digest[32]);
// Appends `from` percent-encoded for a URL path segment or query value (only letters,
// digits and -._~: stay as they are); false when it did not fit (the buffer is then cut).
bool append_url_encoded(char* to, size_t size, const char* from);
// The longest prefix of text[0..length) that does not end inside a UTF-8 character.
size_t utf8_prefix(const char* text, size_t length);
bool starts_with(const char* text, const char* prefix);
bool ends_with(const char* text, const char* suffix);
bool equals_ignore_case(const char* a, const char* b);

}  // namespace dropsync

#endif
