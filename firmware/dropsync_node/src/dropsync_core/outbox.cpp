#include "outbox.h"

#include <string.h>

namespace dropsync {

static const uint32_t kMagic = 0x44534f42;  // "DSOB"
static const uint32_t kHeaderSize = 16;

static void put32(uint8_t* at, uint32_t value) {
  for (int i = 0; i < 4; i++) at[i] = static_cast<uint8_t>(value >> (8 * i));
}

static uint32_t get32(const uint8_t* at) {
  return at[0] | (at[1] << 8) | (at[2] << 16) | (static_cast<uint32_t>(at[3]) << 24);
}

bool Outbox::load() {
  head_ = count_ = dropped_ = 0;
  File* file = storage_.open(path_, OpenMode::kRead);
  if (!file) return true;
  uint8_t header[kHeaderSize];
  bool ok = file->read(header, sizeof(header)) == static_cast<int>(sizeof(header)) &&
            get32(header) == kMagic;
  file->close();
  if (!ok) return true;
  head_ = get32(header + 4) % capacity_;
  count_ = get32(header + 8);
  if (count_ > capacity_) count_ = capacity_;
  dropped_ = get32(header + 12);
  return true;
}

bool Outbox::write_header(File* file) {
  uint8_t header[kHeaderSize];
  put32(header, kMagic);
  put32(header + 4, head_);
  put32(header + 8, count_);
  put32(header + 12, dropped_);
  return file->seek(0) && file->write(header, sizeof(header)) == static_cast<int>(sizeof(header))
         && file->flush();
}

static File* open_ring(Storage& storage, const char* path) {
  File* file = storage.open(path, OpenMode::kUpdate);
  return file ? file : storage.open(path, OpenMode::kWrite);
}

// ESP8266 LittleFS refuses a seek past the end of a file (LittleFSFileImpl::seek), so the
// ring is written out whole, zeros, before any slot is reached by seeking. A zero header
// is not the magic: a power cut mid-way leaves an empty ring.
static bool fill_to(File* file, uint32_t size) {
  uint32_t at = file->size();
  if (at >= size) return true;
  if (!file->seek(at)) return false;
  uint8_t zeros[32] = {};
  while (at < size) {
    uint32_t n = size - at < sizeof(zeros) ? size - at : static_cast<uint32_t>(sizeof(zeros));
    if (file->write(zeros, n) != static_cast<int>(n)) return false;
    at += n;
  }
  return file->flush();
}

bool Outbox::push(ReportKind kind, const char* body, size_t length) {
  if (length > kMaxBody) return false;
  File* file = open_ring(storage_, path_);
  if (!file) return false;
  if (!fill_to(file, kHeaderSize + capacity_ * kSlotSize)) {
    file->close();
    return false;
  }
  if (count_ == capacity_) {  // full: the oldest goes
    head_ = (head_ + 1) % capacity_;
    count_--;
    dropped_++;
  }
  uint32_t slot = (head_ + count_) % capacity_;
  uint8_t prefix[3] = {static_cast<uint8_t>(kind), static_cast<uint8_t>(length & 0xff),
                       static_cast<uint8_t>(length >> 8)};
  bool ok = file->seek(kHeaderSize + slot * kSlotSize) &&
            file->write(prefix, 3) == 3 &&
            file->write(reinterpret_cast<const uint8_t*>(body), length) ==
                static_cast<int>(length) &&
            file->flush();
  if (ok) {
    count_++;
    ok = write_header(file);
  }
  file->close();
  return ok;
}

bool Outbox::peek(ReportKind& kind, char* body, size_t size) {
  if (count_ == 0) return false;
  File* file = storage_.open(path_, OpenMode::kRead);
  if (!file) return false;
  uint8_t prefix[3];
  bool ok = file->seek(kHeaderSize + head_ * kSlotSize) && file->read(prefix, 3) == 3;
  size_t length = prefix[1] | (prefix[2] << 8);
  ok = ok && length < size &&
       file->read(reinterpret_cast<uint8_t*>(body), length) == static_cast<int>(length);
  file->close();
  if (!ok) return false;
  body[length] = '\0';
  kind = static_cast<ReportKind>(prefix[0]);
  return true;
}

bool Outbox::pop() {
  if (count_ == 0) return false;
  File* file = open_ring(storage_, path_);
  if (!file) return false;
  head_ = (head_ + 1) % capacity_;
  count_--;
  bool ok = write_header(file);
  file->close();
  return ok;
}

bool Outbox::clear_dropped() {
  File* file = open_ring(storage_, path_);
  if (!file) return false;
  dropped_ = 0;
  bool ok = write_header(file);
  file->close();
  return ok;
}

}  // namespace dropsync
