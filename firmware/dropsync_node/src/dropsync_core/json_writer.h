// Builds small JSON bodies (heartbeats, messages, completions) into a caller's buffer.
// Writing past the end marks the writer overflowed instead of cutting the document.
#ifndef DROPSYNC_CORE_JSON_WRITER_H
#define DROPSYNC_CORE_JSON_WRITER_H

#include <stddef.h>
#include <stdint.h>

namespace dropsync {

class JsonWriter {
 public:
  JsonWriter(char* buffer, size_t size);

  JsonWriter& begin_object();
  JsonWriter& end_object();
  JsonWriter& begin_array();
  JsonWriter& end_array();
  JsonWriter& key(const char* name);
  JsonWriter& string(const char* value);
  JsonWriter& string(const char* value, size_t length);
  JsonWriter& number(long long value);
  JsonWriter& boolean(bool value);
  JsonWriter& null();
  // Already-valid JSON (a command's args), copied as is.
  JsonWriter& raw(const char* json, size_t length);

  JsonWriter& field(const char* name, const char* value) { return key(name).string(value); }
  JsonWriter& field(const char* name, long long value) { return key(name).number(value); }
  JsonWriter& field_bool(const char* name, bool value) { return key(name).boolean(value); }

  const char* c_str() const { return buffer_; }
  size_t length() const { return length_; }
  bool ok() const { return !overflowed_; }
  void clear();

 private:
  void put(char c);
  void put(const char* text);
  void comma();

  char* buffer_;
  size_t size_;
  size_t length_ = 0;
  bool overflowed_ = false;
  bool need_comma_ = false;
};

}  // namespace dropsync

#endif
