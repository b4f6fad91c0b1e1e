#include "json_reader.h"

#include <string.h>

namespace dropsync {

int MemorySource::read(uint8_t* buffer, size_t length) {
  size_t left = length_ - position_;
  size_t count = left < length ? left : length;
  memcpy(buffer, data_ + position_, count);
  position_ += count;
  return static_cast<int>(count);
}

int JsonReader::peek_byte() {
  if (position_ == buffered_) {
    int got = source_.read(buffer_, sizeof(buffer_));
    if (got <= 0) return -1;
    buffered_ = static_cast<size_t>(got);
    position_ = 0;
  }
  return buffer_[position_];
}

int JsonReader::take_byte() {
  int c = peek_byte();
  if (c >= 0) {
    position_++;
    offset_++;
  }
  return c;
}

int JsonReader::skip_space() {
  for (;;) {
    int c = peek_byte();
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return c;
    take_byte();
  }
}

JsonEvent JsonReader::fail() {
  failed_ = true;
  return JsonEvent::kError;
}

bool JsonReader::append(char c) {
  if (text_length_ + 1 < kTextSize) {
    text_[text_length_++] = c;
    text_[text_length_] = '\0';
  } else {
    truncated_ = true;
  }
  return true;
}

bool JsonReader::append_utf8(uint32_t code) {
  if (code < 0x80) return append(static_cast<char>(code));
  if (code < 0x800) {
    append(static_cast<char>(0xC0 | (code >> 6)));
  } else {
    if (code >= 0xD800 && code <= 0xDFFF) return append('?');  // lone surrogate halves
    append(static_cast<char>(0xE0 | (code >> 12)));
    append(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
  }
  return append(static_cast<char>(0x80 | (code & 0x3F)));
}

static int hex_value(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool JsonReader::read_string() {  // the opening quote is taken
  for (;;) {
    int c = take_byte();
    if (c < 0 || c < 0x20) return false;
    if (c == '"') return true;
    if (c != '\\') {
      append(static_cast<char>(c));
      continue;
    }
    c = take_byte();
    switch (c) {
      case '"': case '\\': case '/': append(static_cast<char>(c)); break;
      case 'b': append('\b'); break;
      case 'f': append('\f'); break;
      case 'n': append('\n'); break;
      case 'r': append('\r'); break;
      case 't': append('\t'); break;
      case 'u': {
        uint32_t code = 0;
        for (int i = 0; i < 4; i++) {
          int digit = hex_value(take_byte());
          if (digit < 0) return false;
          code = (code << 4) | static_cast<uint32_t>(digit);
        }
        append_utf8(code);
        break;
      }
      default: return false;
    }
  }
}

bool JsonReader::read_number(int first) {
  // JSON's grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
  int c = first;
  append(static_cast<char>(c));
  if (c == '-') {
    c = take_byte();
    if (c < '0' || c > '9') return false;
    append(static_cast<char>(c));
  }
  bool leading_zero = c == '0';
  int digits = 0;
  while ((c = peek_byte()) >= '0' && c <= '9') {
    if (leading_zero) return false;
    append(static_cast<char>(take_byte()));
    digits++;
  }
  if (c == '.') {
    append(static_cast<char>(take_byte()));
    digits = 0;
    while ((c = peek_byte()) >= '0' && c <= '9') { append(static_cast<char>(take_byte())); digits++; }
    if (digits == 0) return false;
  }
  if (c == 'e' || c == 'E') {
    append(static_cast<char>(take_byte()));
    c = peek_byte();
    if (c == '+' || c == '-') append(static_cast<char>(take_byte()));
    digits = 0;
    while ((c = peek_byte()) >= '0' && c <= '9') { append(static_cast<char>(take_byte())); digits++; }
    if (digits == 0) return false;
  }
  return true;
}

bool JsonReader::read_literal(const char* rest) {
  for (; *rest; rest++) {
    if (take_byte() != *rest) return false;
  }
  return true;
}

JsonEvent JsonReader::after_value(JsonEvent event) {
  expect_ = depth_ == 0 ? Expect::kDone : Expect::kCommaOrEnd;
  return event;
}

JsonEvent JsonReader::next() {
  if (failed_) return JsonEvent::kError;
  text_length_ = 0;
  text_[0] = '\0';
  truncated_ = false;
  for (;;) {
    int c = skip_space();
    if (expect_ == Expect::kDone) {
      if (c >= 0) return fail();  // something after the document
      return JsonEvent::kEnd;
    }
    if (c < 0) return fail();  // cut short
    bool in_array = depth_ > 0 && (array_bits_ >> (depth_ - 1)) & 1u;
    switch (expect_) {
      case Expect::kCommaOrEnd:
        take_byte();
        if (c == ',') {
          expect_ = in_array ? Expect::kValue : Expect::kKey;
          continue;
        }
        if (c == (in_array ? ']' : '}')) {
          depth_--;
          after_value(JsonEvent::kEnd);
          return in_array ? JsonEvent::kEndArray : JsonEvent::kEndObject;
        }
        return fail();
      case Expect::kColon:
        take_byte();
        if (c != ':') return fail();
        expect_ = Expect::kValue;
        continue;
      case Expect::kKeyOrEnd:
      case Expect::kKey:
        take_byte();
        if (c == '}' && expect_ == Expect::kKeyOrEnd) {
          depth_--;
          return after_value(JsonEvent::kEndObject);
        }
        if (c != '"' || !read_string()) return fail();
        expect_ = Expect::kColon;
        return JsonEvent::kKey;
      case Expect::kValueOrEnd:
        if (c == ']') {
          take_byte();
          depth_--;
          return after_value(JsonEvent::kEndArray);
        }
        expect_ = Expect::kValue;
        continue;
      case Expect::kValue:
        break;
      case Expect::kDone:
        return fail();
    }
    value_start_ = offset_;
    take_byte();
    switch (c) {
      case '{':
      case '[':
        if (depth_ >= kMaxDepth) return fail();
        if (c == '[') array_bits_ |= 1u << depth_; else array_bits_ &= ~(1u << depth_);
        depth_++;
        expect_ = c == '{' ? Expect::kKeyOrEnd : Expect::kValueOrEnd;
        return c == '{' ? JsonEvent::kBeginObject : JsonEvent::kBeginArray;
      case '"':
        if (!read_string()) return fail();
        return after_value(JsonEvent::kString);
      case 't': return read_literal("rue") ? after_value(JsonEvent::kTrue) : fail();
      case 'f': return read_literal("alse") ? after_value(JsonEvent::kFalse) : fail();
      case 'n': return read_literal("ull") ? after_value(JsonEvent::kNull) : fail();
      default:
        if (c == '-' || (c >= '0' && c <= '9')) {
          return read_number(c) ? after_value(JsonEvent::kNumber) : fail();
        }
        return fail();
    }
  }
}

bool JsonReader::skip(JsonEvent event) {
  if (event == JsonEvent::kError || event == JsonEvent::kEnd) return false;
  if (event != JsonEvent::kBeginObject && event != JsonEvent::kBeginArray) return true;
  int target = depth_ - 1;
  for (;;) {
    JsonEvent inner = next();
    if (inner == JsonEvent::kError || inner == JsonEvent::kEnd) return false;
    if ((inner == JsonEvent::kEndObject || inner == JsonEvent::kEndArray) && depth_ == target) {
      return true;
    }
  }
}

bool JsonReader::text_is(const char* literal) const {
  return !truncated_ && strcmp(text_, literal) == 0;
}

bool JsonReader::as_int(long long& out) const {
  if (truncated_ || text_length_ == 0) return false;
  const char* p = text_;
  bool negative = *p == '-';
  if (negative) p++;
  long long value = 0;
  for (; *p; p++) {
    if (*p < '0' || *p > '9') return false;  // a fraction or an exponent
    if (value > (0x7fffffffffffffffLL - 9) / 10) return false;
    value = value * 10 + (*p - '0');
  }
  out = negative ? -value : value;
  return true;
}

}  // namespace dropsync
