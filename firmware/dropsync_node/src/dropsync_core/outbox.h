// A bounded ring on flash for reports made while the hub is unreachable (messages,
// heartbeats). They are sent in order when it returns; when the ring is full the oldest is
// dropped and counted, and the count is reported with the next delivery.
//
// One file of a fixed size: an 16-byte header (magic, head, count, dropped) and kSlots
// slots of kSlotSize bytes (kind, length, the JSON body), so a power cut at worst loses
// the record being written, never the file.
#ifndef DROPSYNC_CORE_OUTBOX_H
#define DROPSYNC_CORE_OUTBOX_H

#include <stddef.h>
#include <stdint.h>

#include "platform.h"

namespace dropsync {

enum class ReportKind : uint8_t { kMessage = 1, kHeartbeat = 2 };

class Outbox {
 public:
  static const size_t kSlotSize = 320;  // kind (1) + length (2) + body
  static const size_t kMaxBody = kSlotSize - 3;
  static const uint32_t kDefaultSlots = 16;

  Outbox(Storage& storage, const char* path) : storage_(storage), path_(path) {}
  void set_capacity(uint32_t slots) { capacity_ = slots ? slots : 1; }
  bool load();  // reads the header; a missing or foreign file is an empty ring

  bool push(ReportKind kind, const char* body, size_t length);
  // The oldest record into body (kMaxBody + 1 bytes); false when empty.
  bool peek(ReportKind& kind, char* body, size_t size);
  bool pop();
  uint32_t count() const { return count_; }
  uint32_t dropped() const { return dropped_; }
  bool clear_dropped();

 private:
  bool write_header(File* file);

  Storage& storage_;
  const char* path_;
  uint32_t capacity_ = kDefaultSlots;
  uint32_t head_ = 0;
  uint32_t count_ = 0;
  uint32_t dropped_ = 0;
};

}  // namespace dropsync

#endif
