// The ids of the last commands this node ran, kept on flash.
//
// The hub delivers a command at least once: after a lapsed lease or a hub restart the same
// id comes again. An id is recorded as running *before* its handler runs, so a command
// that reboots the node, or a power cut mid-command, never makes it run twice; an id seen
// again is only completed again (with what is remembered of its outcome).
#ifndef DROPSYNC_CORE_COMMAND_LOG_H
#define DROPSYNC_CORE_COMMAND_LOG_H

#include <stdint.h>

#include "platform.h"

namespace dropsync {

enum class CommandState : uint8_t { kUnknown = 0, kRunning = 1, kSucceeded = 2, kFailed = 3 };

class CommandLog {
 public:
  static const int kEntries = 16;

  CommandLog(Storage& storage, const char* path) : storage_(storage), path_(path) {}
  bool load();
  CommandState state_of(long long id) const;
  bool record(long long id, CommandState state);

 private:
  bool save();

  struct Entry {
    long long id;  // the hub's ids are 64-bit
    uint8_t state;
  };
  Storage& storage_;
  const char* path_;
  Entry entries_[kEntries] = {};
  uint8_t next_ = 0;
};

}  // namespace dropsync

#endif
