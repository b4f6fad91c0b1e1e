// A small pull reader for the hub's JSON, bounded in memory.
//
// It reads from a ByteSource a few bytes at a time (a buffer in RAM, a file on flash, an
// HTTP body) and hands out one event at a time: the caller keeps only what it needs, so a
// manifest of any length is read with a few hundred bytes. Strings longer than the text
// buffer are cut (truncated() says so) rather than failing; nesting deeper than kMaxDepth
// and anything that is not JSON end in kError. It never allocates.
#ifndef DROPSYNC_CORE_JSON_READER_H
#define DROPSYNC_CORE_JSON_READER_H

#include <stddef.h>
#include <stdint.h>

namespace dropsync {

class ByteSource {
 public:
  virtual int read(uint8_t* buffer, size_t length) = 0;  // 0 at the end, < 0 on error
 protected:
  ~ByteSource() {}
};

class MemorySource : public ByteSource {
 public:
  MemorySource(const char* data, size_t length) : data_(data), length_(length) {}
  int read(uint8_t* buffer, size_t length) override;
 private:
  const char* data_;
  size_t length_;
  size_t position_ = 0;
};

enum class JsonEvent : uint8_t {
  kBeginObject, kEndObject, kBeginArray, kEndArray,
  kKey, kString, kNumber, kTrue, kFalse, kNull,
  kEnd,    // the document is complete
  kError,  // not JSON, truncated, too deep or a read error; every later call says so too
};

class JsonReader {
 public:
  static const int kMaxDepth = 16;
  static const size_t kTextSize = 224;  // fits a staged path (200) and a SHA-256 (64)

  explicit JsonReader(ByteSource& source) : source_(source) {}

  JsonEvent next();
  // Skips the value that starts with `event` (the one next() just returned); true when the
  // whole value was read. Use after kKey's value event to ignore members you do not need.
  bool skip(JsonEvent event);

  // For kKey, kString and kNumber: the text (NUL-terminated, at most kTextSize - 1 bytes).
  const char* text() const { return text_; }
  size_t text_length() const { return text_length_; }
  bool truncated() const { return truncated_; }
  bool text_is(const char* literal) const;
  // kNumber as an integer; false when it is not one or does not fit.
  bool as_int(long long& out) const;
  // Depth after the event: 1 inside the top-level object, and so on.
  int depth() const { return depth_; }
  // Bytes consumed so far: a value's first byte is at offset() - 1 after its event for
  // objects and arrays; use value_start() for any value.
  size_t offset() const { return offset_; }
  size_t value_start() const { return value_start_; }

 private:
  int peek_byte();
  int take_byte();
  int skip_space();
  bool read_string();
  bool read_number(int first);
  bool read_literal(const char* rest);
  bool append(char c);
  bool append_utf8(uint32_t code);
  JsonEvent fail();
  JsonEvent after_value(JsonEvent event);

  ByteSource& source_;
  uint8_t buffer_[32];
  size_t buffered_ = 0;
  size_t position_ = 0;
  size_t offset_ = 0;
  size_t value_start_ = 0;
  char text_[kTextSize];
  size_t text_length_ = 0;
  bool truncated_ = false;
  // Bit i set: level i is an array, clear: an object.
  uint32_t array_bits_ = 0;
  int depth_ = 0;
  enum class Expect : uint8_t { kValue, kKeyOrEnd, kKey, kColon, kCommaOrEnd, kValueOrEnd, kDone };
  Expect expect_ = Expect::kValue;
  bool failed_ = false;
  bool started_ = false;
};

}  // namespace dropsync

#endif
