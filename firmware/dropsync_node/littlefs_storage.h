// The core's Storage over an Arduino LittleFS: fs::FS and fs::File on the boards, and on
// the host the client's EspLittleFs (firmware/host/esp_littlefs.h), which plays the ESP8266
// core's wrapper rule by rule over littlefs. One template, so the glue the tests run is
// the glue the boards run. No Arduino header here: the types come in as parameters.
#ifndef DROPSYNC_LITTLEFS_STORAGE_H
#define DROPSYNC_LITTLEFS_STORAGE_H

#include <stddef.h>
#include <stdint.h>

#include "src/dropsync_core/platform.h"
#include "src/dropsync_core/text.h"

namespace dropsync_esp {

template <class Fs, class FsFile>
class LittleFsStorageOver : public dropsync::Storage {
 public:
  explicit LittleFsStorageOver(Fs& fs) : fs_(fs) {}

  dropsync::File* open(const char* path, dropsync::OpenMode mode) override {
    for (Slot& slot : slots_) {
      if (slot.file) continue;
      const char* how = mode == dropsync::OpenMode::kRead    ? "r"
                        : mode == dropsync::OpenMode::kWrite  ? "w"
                        : mode == dropsync::OpenMode::kAppend ? "a"
                                                              : "r+";
      if (mode == dropsync::OpenMode::kUpdate && !fs_.exists(path)) return nullptr;
      slot.file = fs_.open(path, how);
      if (slot.file && slot.file.isDirectory()) slot.file.close();
      return slot.file ? &slot : nullptr;
    }
    return nullptr;
  }
  bool exists(const char* path) override { return fs_.exists(path); }
  bool remove(const char* path) override { return fs_.remove(path); }
  // littlefs's own rename replaces an existing file atomically (old or new after a power
  // cut). Removing the target first is not just a gap: on the ESP8266 the wrapper's
  // remove() also removes the folder it empties, and the rename then fails.
  bool rename(const char* from, const char* to) override { return fs_.rename(from, to); }
  bool make_dirs(const char* path) override {
    char folder[224];
    dropsync::copy_text(folder, sizeof(folder), path);
    for (char* p = folder + 1; *p; p++) {
      if (*p != '/') continue;
      *p = '\0';
      if (!fs_.exists(folder)) fs_.mkdir(folder);
      *p = '/';
    }
    return true;
  }
  long file_size(const char* path) override {
    if (!fs_.exists(path)) return -1;
    FsFile file = fs_.open(path, "r");
    long size = file && !file.isDirectory() ? static_cast<long>(file.size()) : -1;
    file.close();
    return size;
  }

 private:
  struct Slot : public dropsync::File {
    FsFile file;
    int read(uint8_t* buffer, size_t length) override {
      return static_cast<int>(file.read(buffer, length));
    }
    int write(const uint8_t* data, size_t length) override {
      return static_cast<int>(file.write(data, length));
    }
    bool seek(uint32_t position) override { return file.seek(position); }
    uint32_t size() override { return static_cast<uint32_t>(file.size()); }
    bool flush() override {
      file.flush();
      return true;
    }
    void close() override {
      file.close();
      file = FsFile();
    }
  };
  Fs& fs_;
  Slot slots_[4];
};

// The node's own log on flash, for the upload-log command: one old generation, each at
// most 16 KiB.
template <class Fs, class FsFile>
void append_log_line(Fs& fs, const char* line) {
  FsFile file = fs.open("/log.txt", "a");
  if (!file) return;
  size_t length = 0;
  while (line[length]) length++;
  file.write(reinterpret_cast<const uint8_t*>(line), length);
  file.write(reinterpret_cast<const uint8_t*>("\r\n"), 2);
  bool full = file.size() > 16 * 1024;
  file.close();
  if (full) {
    fs.remove("/log.old.txt");
    fs.rename("/log.txt", "/log.old.txt");
  }
}

}  // namespace dropsync_esp

#endif
