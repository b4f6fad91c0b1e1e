// See esp_littlefs.h. "LittleFS.h:N" below is libraries/LittleFS/src/LittleFS.h of
// esp8266/Arduino at f946290; each rule the wrapper adds to littlefs is cited where it is
// played.
#include "esp_littlefs.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

namespace {

// ESP8266 4M1M layout (boards.txt, nodemcuv2 eesz=4M1M): FS from 0x300000 to 0x3FA000 in
// 8 KiB blocks = 125 blocks. ESP32 default.csv: a 0x160000 spiffs partition, 4 KiB blocks.
const uint32_t kEsp8266BlockSize = 8192, kEsp8266Blocks = 125;
const uint32_t kEsp32BlockSize = 4096, kEsp32Blocks = 352;
// LittleFS.h:37 `#define LFS_NAME_MAX 32` (with the terminator: 31 characters a name);
// esp_littlefs's CONFIG_LITTLEFS_OBJ_NAME_LEN is 64.
const size_t kEsp8266NameMax = 32, kEsp32NameMax = 64;

}  // namespace

// -- the block device: one image file, written through at every prog and erase -------------
int EspLittleFs::device_read(const lfs_config* c, lfs_block_t block, lfs_off_t off,
                             void* buffer, lfs_size_t size) {
  const EspLittleFs* fs = static_cast<const EspLittleFs*>(c->context);
  off_t at = static_cast<off_t>(block) * c->block_size + off;
  return pread(fs->image_, buffer, size, at) == static_cast<ssize_t>(size) ? 0 : LFS_ERR_IO;
}

int EspLittleFs::device_prog(const lfs_config* c, lfs_block_t block, lfs_off_t off,
                             const void* buffer, lfs_size_t size) {
  const EspLittleFs* fs = static_cast<const EspLittleFs*>(c->context);
  off_t at = static_cast<off_t>(block) * c->block_size + off;
  return pwrite(fs->image_, buffer, size, at) == static_cast<ssize_t>(size) ? 0 : LFS_ERR_IO;
}

int EspLittleFs::device_erase(const lfs_config* c, lfs_block_t block) {
  const EspLittleFs* fs = static_cast<const EspLittleFs*>(c->context);
  uint8_t ones[512];
  memset(ones, 0xff, sizeof(ones));  // NOR flash erases to 1s
  off_t at = static_cast<off_t>(block) * c->block_size;
  for (lfs_size_t done = 0; done < c->block_size; done += sizeof(ones)) {
    if (pwrite(fs->image_, ones, sizeof(ones), at + done) != sizeof(ones)) return LFS_ERR_IO;
  }
  return 0;
}

// Nothing is cached above the kernel: a killed process loses nothing written before it.
int EspLittleFs::device_sync(const lfs_config*) { return 0; }

bool EspLittleFs::begin(const char* path, FlashFlavour flavour) {
  flavour_ = flavour;
  bool esp32 = flavour == FlashFlavour::kEsp32;
  uint32_t block_size = esp32 ? kEsp32BlockSize : kEsp8266BlockSize;
  uint32_t blocks = esp32 ? kEsp32Blocks : kEsp8266Blocks;
  image_ = ::open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (image_ < 0) return false;
  off_t size = lseek(image_, 0, SEEK_END);
  if (size < static_cast<off_t>(block_size) * blocks) {  // a blank chip
    if (ftruncate(image_, 0) != 0) return false;
    for (uint32_t b = 0; b < blocks; b++) {
      config_.context = this;
      config_.block_size = block_size;
      if (device_erase(&config_, b) != 0) return false;
    }
  }
  // LittleFS.h:57-80, the wrapper's lfs_config.
  config_.context = this;
  config_.read = device_read;
  config_.prog = device_prog;
  config_.erase = device_erase;
  config_.sync = device_sync;
  config_.read_size = 64;
  config_.prog_size = 64;
  config_.block_size = block_size;
  config_.block_count = blocks;
  config_.block_cycles = 16;
  config_.cache_size = kCacheSize;
  config_.lookahead_size = kCacheSize;
  config_.read_buffer = read_buffer_;
  config_.prog_buffer = prog_buffer_;
  config_.lookahead_buffer = lookahead_buffer_;
  config_.name_max = static_cast<lfs_size_t>(name_max() + 1);
  // LittleFS.h begin(): mount, and format when that fails (the FSConfig default autoFormat).
  if (lfs_mount(&lfs_, &config_) == 0) return true;
  return lfs_format(&lfs_, &config_) == 0 && lfs_mount(&lfs_, &config_) == 0;
}

size_t EspLittleFs::name_max() const {
  return (flavour_ == FlashFlavour::kEsp32 ? kEsp32NameMax : kEsp8266NameMax) - 1;
}

// LittleFS.h:326-342 pathValid(): every folder and the file name shorter than LFS_NAME_MAX.
bool EspLittleFs::path_valid(const char* path) const {
  while (*path) {
    const char* slash = strchr(path, '/');
    size_t length = slash ? static_cast<size_t>(slash - path) : strlen(path);
    if (length > name_max()) return false;
    if (!slash) break;
    path = slash + 1;
  }
  return true;
}

EspFsFile EspLittleFs::open(const char* path, const char* mode) {
  EspFsFile handle;
  // cores/esp8266/FS.cpp sflags(): "r" read; "w" create+truncate; "a" create+append;
  // "+" adds the other direction.
  int flags;
  switch (mode[0]) {
    case 'r': flags = 0; break;
    case 'w': flags = LFS_O_CREAT | LFS_O_TRUNC; break;
    case 'a': flags = LFS_O_CREAT | LFS_O_APPEND; break;
    default: return handle;
  }
  bool plus = mode[1] == '+';
  flags |= plus ? LFS_O_RDWR : mode[0] == 'r' ? LFS_O_RDONLY : LFS_O_WRONLY;
  // LittleFS.cpp:38-50: refused on an empty path or a name over LFS_NAME_MAX - 1.
  if (!path || !path[0] || !path_valid(path)) return handle;
  // LittleFS.cpp:55-69: "For file creation, silently make subdirs as needed" (ESP8266).
  if ((flags & LFS_O_CREAT) && flavour_ == FlashFlavour::kEsp8266 && strchr(path + 1, '/')) {
    char folders[256];
    size_t length = strlen(path);
    if (length < sizeof(folders)) {
      memcpy(folders, path, length + 1);
      for (char* p = strchr(folders + 1, '/'); p; p = strchr(p + 1, '/')) {
        *p = '\0';
        lfs_mkdir(&lfs_, folders);
        *p = '/';
      }
    }
  }
  lfs_info info;
  if (lfs_stat(&lfs_, path, &info) == 0 && info.type == LFS_TYPE_DIR) {
    handle.fs_ = this;  // LittleFS.cpp:86-89: a folder comes back as a file without an fd
    return handle;
  }
  for (int i = 0; i < kMaxOpenFiles; i++) {
    Slot& slot = slots_[i];
    if (slot.used) continue;
    slot.file_config = lfs_file_config{};
    slot.file_config.buffer = slot.buffer;
    if (lfs_file_opencfg(&lfs_, &slot.file, path, flags, &slot.file_config) != 0) return handle;
    lfs_file_sync(&lfs_, &slot.file);  // LittleFS.cpp:90: synced at once after the open
    slot.used = true;
    handle.fs_ = this;
    handle.slot_ = i;
    return handle;
  }
  return handle;  // out of descriptors
}

// LittleFS.h:93-100: lfs_stat.
bool EspLittleFs::exists(const char* path) {
  lfs_info info;
  return path && path[0] && lfs_stat(&lfs_, path, &info) == 0;
}

// LittleFS.h:142-166: lfs_remove, then "try and remove any empty subdirs this makes,
// silently" up to the root. A folder left without its last file is gone (ESP8266 only).
bool EspLittleFs::remove(const char* path) {
  if (!path || !path[0] || lfs_remove(&lfs_, path) != 0) return false;
  if (flavour_ != FlashFlavour::kEsp8266) return true;
  char parents[256];
  size_t length = strlen(path);
  if (length >= sizeof(parents)) return true;
  memcpy(parents, path, length + 1);
  for (char* p = strrchr(parents, '/'); p; p = strrchr(parents, '/')) {
    *p = '\0';
    lfs_remove(&lfs_, parents);  // fails (and stays) while the folder holds anything
  }
  return true;
}

// LittleFS.h:102-112: lfs_rename and nothing else. littlefs replaces an existing file
// atomically: after a power cut the target is the old file or the new one.
bool EspLittleFs::rename(const char* from, const char* to) {
  if (!from || !from[0] || !to || !to[0]) return false;
  return lfs_rename(&lfs_, from, to) == 0;
}

// LittleFS.h:168-180: lfs_mkdir.
bool EspLittleFs::mkdir(const char* path) {
  return path && path[0] && lfs_mkdir(&lfs_, path) == 0;
}

// -- files ---------------------------------------------------------------------------------
size_t EspFsFile::read(uint8_t* buffer, size_t length) {
  if (!fs_ || slot_ < 0) return 0;
  lfs_ssize_t got = lfs_file_read(&fs_->lfs_, &fs_->slots_[slot_].file, buffer, length);
  return got < 0 ? 0 : static_cast<size_t>(got);  // LittleFS.h:424-435: errors read as 0
}

size_t EspFsFile::write(const uint8_t* data, size_t length) {
  if (!fs_ || slot_ < 0) return 0;
  lfs_ssize_t put = lfs_file_write(&fs_->lfs_, &fs_->slots_[slot_].file, data, length);
  return put < 0 ? 0 : static_cast<size_t>(put);  // LittleFS.h:412-422
}

// LittleFS.h:442-460 seek(): "if (position() > size()) { seek(lastPos, SeekSet); // Pretend
// the seek() never happened; return false; }": no sparse growth on the ESP8266. littlefs
// itself (and so the ESP32's VFS) allows it; a later write fills the gap with zeros.
bool EspFsFile::seek(uint32_t position) {
  if (!fs_ || slot_ < 0) return false;
  if (fs_->flavour_ == FlashFlavour::kEsp8266 && position > size()) return false;
  return lfs_file_seek(&fs_->lfs_, &fs_->slots_[slot_].file, static_cast<lfs_soff_t>(position),
                       LFS_SEEK_SET) >= 0;
}

size_t EspFsFile::position() const {
  if (!fs_ || slot_ < 0) return 0;
  lfs_soff_t at = lfs_file_tell(&fs_->lfs_, &fs_->slots_[slot_].file);
  return at < 0 ? 0 : static_cast<size_t>(at);
}

size_t EspFsFile::size() const {
  if (!fs_ || slot_ < 0) return 0;
  lfs_soff_t size = lfs_file_size(&fs_->lfs_, &fs_->slots_[slot_].file);
  return size < 0 ? 0 : static_cast<size_t>(size);
}

// LittleFS.h:437-440: lfs_file_sync, its result dropped (flush() is void in fs::File).
void EspFsFile::flush() {
  if (fs_ && slot_ >= 0) lfs_file_sync(&fs_->lfs_, &fs_->slots_[slot_].file);
}

void EspFsFile::close() {
  if (fs_ && slot_ >= 0) {
    lfs_file_close(&fs_->lfs_, &fs_->slots_[slot_].file);
    fs_->slots_[slot_].used = false;
  }
  fs_ = nullptr;
  slot_ = -1;
}
