#include "json_writer.h"

#include "text.h"

namespace dropsync {

JsonWriter::JsonWriter(char* buffer, size_t size) : buffer_(buffer), size_(size) { clear(); }

void JsonWriter::clear() {
  length_ = 0;
  overflowed_ = size_ == 0;
  need_comma_ = false;
  if (size_) buffer_[0] = '\0';
}

void JsonWriter::put(char c) {
  if (length_ + 1 >= size_) {
    overflowed_ = true;
    return;
  }
  buffer_[length_++] = c;
  buffer_[length_] = '\0';
}

void JsonWriter::put(const char* text) {
  while (*text) put(*text++);
}

void JsonWriter::comma() {
  if (need_comma_) put(',');
  need_comma_ = true;
}

JsonWriter& JsonWriter::begin_object() { comma(); put('{'); need_comma_ = false; return *this; }
JsonWriter& JsonWriter::end_object() { put('}'); need_comma_ = true; return *this; }
JsonWriter& JsonWriter::begin_array() { comma(); put('['); need_comma_ = false; return *this; }
JsonWriter& JsonWriter::end_array() { put(']'); need_comma_ = true; return *this; }

JsonWriter& JsonWriter::key(const char* name) {
  string(name);
  put(':');
  need_comma_ = false;
  return *this;
}

JsonWriter& JsonWriter::string(const char* value) {
  size_t length = 0;
  while (value[length]) length++;
  return string(value, length);
}

JsonWriter& JsonWriter::string(const char* value, size_t length) {
  comma();
  put('"');
  for (size_t i = 0; i < length; i++) {
    unsigned char c = static_cast<unsigned char>(value[i]);
    if (c == '"' || c == '\\') {
      put('\\');
      put(static_cast<char>(c));
    } else if (c == '\n') {
      put("\\n");
    } else if (c < 0x20) {
      static const char kHex[] = "0123456789abcdef";
      put("\\u00");
      put(kHex[c >> 4]);
      put(kHex[c & 15]);
    } else {
      put(static_cast<char>(c));
    }
  }
  put('"');
  return *this;
}

JsonWriter& JsonWriter::number(long long value) {
  comma();
  char digits[24];
  format_number(digits, sizeof(digits), value);
  put(digits);
  return *this;
}

JsonWriter& JsonWriter::boolean(bool value) { comma(); put(value ? "true" : "false"); return *this; }
JsonWriter& JsonWriter::null() { comma(); put("null"); return *this; }

JsonWriter& JsonWriter::raw(const char* json, size_t length) {
  comma();
  for (size_t i = 0; i < length; i++) put(json[i]);
  return *this;
}

}  // namespace dropsync
