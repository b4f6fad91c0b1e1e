#include "command_log.h"

namespace dropsync {

// A record: the id (8 bytes, little-endian) and the state. Logs written before ids were
// 64-bit had 4-byte ids (5-byte records); they are still read, so a node updated while a
// command ran does not run it again.
static const int kRecordSize = 9;
static const int kOldRecordSize = 5;

bool CommandLog::load() {
  for (Entry& entry : entries_) entry = Entry{-1, 0};
  next_ = 0;
  File* file = storage_.open(path_, OpenMode::kRead);
  if (!file) return true;
  uint8_t data[1 + kEntries * kRecordSize];
  int got = file->read(data, sizeof(data));
  file->close();
  int record = got == 1 + kEntries * kRecordSize      ? kRecordSize
               : got == 1 + kEntries * kOldRecordSize ? kOldRecordSize
                                                      : 0;
  if (!record) return true;  // torn or foreign: start afresh
  next_ = data[0] % kEntries;
  for (int i = 0; i < kEntries; i++) {
    const uint8_t* at = data + 1 + i * record;
    uint64_t id = 0;
    for (int b = record - 2; b >= 0; b--) id = (id << 8) | at[b];
    entries_[i].id = record == kRecordSize ? static_cast<long long>(id)
                                           : static_cast<int32_t>(static_cast<uint32_t>(id));
    entries_[i].state = at[record - 1];
  }
  return true;
}

CommandState CommandLog::state_of(long long id) const {
  for (const Entry& entry : entries_) {
    if (entry.state && entry.id == id) return static_cast<CommandState>(entry.state);
  }
  return CommandState::kUnknown;
}

bool CommandLog::record(long long id, CommandState state) {
  Entry* slot = nullptr;
  for (Entry& entry : entries_) {
    if (entry.state && entry.id == id) slot = &entry;
  }
  if (!slot) {
    slot = &entries_[next_];
    next_ = static_cast<uint8_t>((next_ + 1) % kEntries);
  }
  *slot = Entry{id, static_cast<uint8_t>(state)};
  return save();
}

bool CommandLog::save() {
  uint8_t data[1 + kEntries * kRecordSize];
  data[0] = next_;
  for (int i = 0; i < kEntries; i++) {
    uint8_t* at = data + 1 + i * kRecordSize;
    uint64_t id = static_cast<uint64_t>(entries_[i].id);
    for (int b = 0; b < 8; b++) at[b] = static_cast<uint8_t>(id >> (8 * b));
    at[8] = entries_[i].state;
  }
  // Written beside and renamed over, so a power cut leaves the old log or the new one.
  char temp[48];
  int n = 0;
  for (; path_[n] && n < 40; n++) temp[n] = path_[n];
  temp[n++] = '~';
  temp[n] = '\0';
  File* file = storage_.open(temp, OpenMode::kWrite);
  if (!file) return false;
  bool ok = file->write(data, sizeof(data)) == static_cast<int>(sizeof(data)) && file->flush();
  file->close();
  return ok && storage_.rename(temp, path_);
}

}  // namespace dropsync
