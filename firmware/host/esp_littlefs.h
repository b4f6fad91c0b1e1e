// The host client's flash: littlefs itself (firmware/host/littlefs, BSD-3, from the
// littlefs-python 0.19.0 sdist) on a file-backed block device sized like a real ESP8266
// FS partition, behind a file layer that behaves as the ESP8266 core's LittleFS wrapper
// does (esp8266/Arduino f946290: libraries/LittleFS/src/LittleFS.h and LittleFS.cpp,
// cores/esp8266/FS.cpp). The same names as fs::FS and fs::File, so the sketch's own glue
// (dropsync_node/littlefs_storage.h) runs over it unchanged.
//
// Every block write goes to the image file as it happens (pwrite, no cache of our own),
// so a SIGKILL of the client at any instant leaves the image as a power cut leaves a
// chip's flash; booting again mounts what is there.
//
// The ESP32 flavour (--flash-flavour esp32) plays arduino-esp32's LittleFS (esp_littlefs
// under the VFS): 4 KiB blocks, names up to 63 characters, seek past the end allowed,
// no folder removed behind the caller's back. Not checked against a chip here.
#ifndef DROPSYNC_HOST_ESP_LITTLEFS_H
#define DROPSYNC_HOST_ESP_LITTLEFS_H

#include <stddef.h>
#include <stdint.h>

#include "littlefs/lfs.h"

enum class FlashFlavour : uint8_t { kEsp8266, kEsp32 };

class EspLittleFs;

// fs::File's shape: a handle that is false when the open failed.
class EspFsFile {
 public:
  EspFsFile() {}
  explicit operator bool() const { return fs_ != nullptr; }
  size_t read(uint8_t* buffer, size_t length);
  size_t write(const uint8_t* data, size_t length);
  bool seek(uint32_t position);
  size_t position() const;
  size_t size() const;
  void flush();
  void close();
  bool isDirectory() const { return slot_ < 0; }

 private:
  friend class EspLittleFs;
  EspLittleFs* fs_ = nullptr;
  int slot_ = -1;  // -1: a folder (the wrapper hands those out with a null fd)
};

class EspLittleFs {
 public:
  // Mounts the image at `path` (created blank, formatted on first use).
  bool begin(const char* path, FlashFlavour flavour);
  EspFsFile open(const char* path, const char* mode);
  bool exists(const char* path);
  bool remove(const char* path);
  bool rename(const char* from, const char* to);
  bool mkdir(const char* path);
  size_t name_max() const;  // the longest name a folder or file may have

 private:
  friend class EspFsFile;
  static const int kMaxOpenFiles = 5;  // FS_MAX_OPEN_FILES in the ESP8266 core
  static const uint32_t kCacheSize = 64;
  bool path_valid(const char* path) const;
  static int device_read(const lfs_config* c, lfs_block_t block, lfs_off_t off, void* buffer,
                         lfs_size_t size);
  static int device_prog(const lfs_config* c, lfs_block_t block, lfs_off_t off,
                         const void* buffer, lfs_size_t size);
  static int device_erase(const lfs_config* c, lfs_block_t block);
  static int device_sync(const lfs_config* c);

  FlashFlavour flavour_ = FlashFlavour::kEsp8266;
  int image_ = -1;
  lfs_t lfs_{};
  lfs_config config_{};
  // Static buffers: littlefs mallocs nothing, so the heap the tests count is the node's.
  uint8_t read_buffer_[kCacheSize];
  uint8_t prog_buffer_[kCacheSize];
  uint8_t lookahead_buffer_[kCacheSize];
  struct Slot {
    bool used = false;
    lfs_file_t file{};
    lfs_file_config file_config{};
    uint8_t buffer[kCacheSize];
  };
  Slot slots_[kMaxOpenFiles];
};

#endif
