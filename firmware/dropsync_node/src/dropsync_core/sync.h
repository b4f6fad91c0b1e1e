// The sync state machine: manifest (If-None-Match), then for each file that differs from
// what is on flash a chunk-by-chunk download into a temp file, each chunk checked against
// the hub's X-Chunk-SHA256, the whole file against the manifest's SHA-256 (read back from
// flash), then a rename into place. Progress is persisted after every verified chunk, so
// after a power cut the download resumes at the first chunk not yet verified.
//
// Files below firmware/ ending in .bin are firmware images: their verified chunks stream
// into the board's FirmwareSink (Update, which checks the MD5) instead of a file.
//
// After a sync in which every listed file is on flash, files this node synced earlier that
// the manifest no longer lists (withdrawn on the hub) are deleted (have.idx lists them).
//
// State kept on flash under /.dropsync/: manifest.etag (the list last fully applied),
// have/<package> (the SHA-256 on flash), dl/<package> (version, SHA-256, chunks verified)
// and dl/<package>.part (the bytes so far).
#ifndef DROPSYNC_CORE_SYNC_H
#define DROPSYNC_CORE_SYNC_H

#include <stddef.h>
#include <stdint.h>

#include "hub_client.h"
#include "platform.h"

namespace dropsync {

class JsonWriter;

// A small state file (a line of text) on flash: read whole, NUL-terminated...
bool read_small(Storage& storage, const char* path, char* out, size_t size);
// ...and replaced whole: written beside, flushed, then renamed over (atomic on LittleFS).
bool write_small(Storage& storage, const char* path, const char* text);

struct ManifestFile {
  char id[16];
  char path[208];
  char sha256[65];
  char md5[33];
  char url[160];
  long long size;     // 64-bit: a 32-bit long (the ESP's) would cut ids and sizes
  long chunk_size;
  long chunks;
  long long version;
  bool cut;           // a string was longer than its buffer: the entry is not usable
};

// The longest name (folder or file) and path the node stores, and how deep: ESP8266
// LittleFS allows 31 characters a name (LFS_NAME_MAX 32 with the terminator); the hub
// refuses staged paths over these (dropsync/sync/staging.py, path_problem).
const size_t kMaxNameLength = 31;
const size_t kMaxPathLength = 200;
const int kMaxPathDepth = 8;

// Why the node cannot store a manifest entry, or nullptr when it can.
const char* unstorable_reason(const ManifestFile& file);

enum class SyncResult : uint8_t {
  kUpToDate,     // 304, or every file already on flash
  kDone,         // files were fetched, all verified
  kFailed,       // some file failed (reported to the hub); tried again at the next sync
  kUnreachable,  // the hub went away; resumed at the next sync
};

const char* sync_result_name(SyncResult result);

struct SyncStats {
  uint16_t files = 0;
  uint16_t fetched = 0;
  uint16_t failed = 0;
  uint32_t chunks_fetched = 0;
  uint32_t chunks_rejected = 0;
  bool restart_needed = false;  // a firmware image was applied
};

// Where a sync says what it does (the node's log).
class SyncLog {
 public:
  virtual void line(const char* text) = 0;
 protected:
  ~SyncLog() {}
};

class Sync {
 public:
  static const int kChunkAttempts = 3;

  Sync(HubClient& hub, Storage& storage, Clock& clock, Sha256& sha256, Board& board,
       SyncLog& log);
  SyncResult run(SyncStats& stats);
  static bool is_firmware(const char* path);

 private:
  enum class FileResult : uint8_t { kSkipped, kFetched, kFailed, kUnreachable, kReplaced };

  int fetch_manifest(bool& not_modified);
  FileResult sync_file(const ManifestFile& file, SyncStats& stats);
  FileResult download_to_flash(const ManifestFile& file, SyncStats& stats);
  FileResult download_firmware(const ManifestFile& file, SyncStats& stats);
  // Fetches chunk `index`: streamed to `out` (a file at its offset) or into `memory`;
  // answers the HTTP status, 0 after a checksum mismatch, or -1 unreachable.
  int fetch_chunk(const ManifestFile& file, long index, File* out, uint8_t* memory,
                  SyncStats& stats);
  bool file_sha256_matches(const char* path, long long size, const char* expected);
  bool up_to_date(const ManifestFile& file);
  bool listed(const char* key, const char* value);  // an entry of the manifest on flash has it
  void remember(const ManifestFile& file);      // into the index of synced files
  void prune_withdrawn();                       // deletes synced files no longer listed
  bool report(const ManifestFile& file, const char* state, long long received,
              const char* reason);
  void note(const char* what, const ManifestFile& file, long long number,
            const char* detail = "");
  void state_path(char* out, size_t size, const char* folder, const char* id,
                  const char* suffix = "");

  HubClient& hub_;
  Storage& storage_;
  Clock& clock_;
  Sha256& sha256_;
  Board& board_;
  SyncLog& log_;
  uint8_t piece_[256];
  char etag_[64];
  ManifestFile file_;
};

}  // namespace dropsync

#endif
