#include "command_log.h"

namespace dropsync {

static const int kRecordSize = 5;

bool CommandLog::load() {
  for (Entry& entry : entries_) entry = Entry{-1, 0};
  next_ = 0;
  File* file = storage_.open(path_, OpenMode::kRead);
  if (!file) return true;
  uint8_t data[1 + kEntries * kRecordSize];
  int got = file->read(data, sizeof(data));
  file->close();
  if (got != static_cast<int>(sizeof(data))) return true;  // torn or foreign: start afresh
  next_ = data[0] % kEntries;
  for (int i = 0; i < kEntries; i++) {
    const uint8_t* at = data + 1 + i * kRecordSize;
    entries_[i].id = static_cast<int32_t>(at[0] | (at[1] << 8) | (at[2] << 16) |
                                          (static_cast<uint32_t>(at[3]) << 24));
    entries_[i].state = at[4];
  }
  return true;
}

CommandState CommandLog::state_of(int32_t id) const {
  for (const Entry& entry : entries_) {
    if (entry.state && entry.id == id) return static_cast<CommandState>(entry.state);
  }
  return CommandState::kUnknown;
}

bool CommandLog::record(int32_t id, CommandState state) {
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
    uint32_t id = static_cast<uint32_t>(entries_[i].id);
    for (int b = 0; b < 4; b++) at[b] = static_cast<uint8_t>(id >> (8 * b));
    at[4] = entries_[i].state;
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
