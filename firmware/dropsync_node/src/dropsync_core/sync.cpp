#include "sync.h"

#include <stdlib.h>
#include <string.h>

#include "json_reader.h"
#include "json_writer.h"
#include "text.h"

namespace dropsync {

static const char kStateDir[] = "/.dropsync";
static const char kEtagPath[] = "/.dropsync/manifest.etag";
static const char kManifestPath[] = "/.dropsync/manifest.json";
// "<package id> <path>" per line: what this node synced, so it can delete what is withdrawn.
static const char kIndexPath[] = "/.dropsync/have.idx";
// A status for "flash refused the write": not the hub's fault, so not retried as one.
static const int kStorageError = -100;

bool read_small(Storage& storage, const char* path, char* out, size_t size) {
  File* file = storage.open(path, OpenMode::kRead);
  if (!file) return false;
  int got = file->read(reinterpret_cast<uint8_t*>(out), size - 1);
  file->close();
  if (got < 0) return false;
  out[got] = '\0';
  return true;
}

// Replaces a small state file whole: written beside, then renamed over (atomic on LittleFS).
bool write_small(Storage& storage, const char* path, const char* text) {
  char temp[80];
  copy_text(temp, sizeof(temp), path);
  append_text(temp, sizeof(temp), "~");
  File* file = storage.open(temp, OpenMode::kWrite);
  if (!file) return false;
  size_t length = strlen(text);
  bool ok = file->write(reinterpret_cast<const uint8_t*>(text), length) ==
                static_cast<int>(length) && file->flush();
  file->close();
  return ok && storage.rename(temp, path);
}

namespace {

class FileSource : public ByteSource {
 public:
  explicit FileSource(File* file) : file_(file) {}
  int read(uint8_t* buffer, size_t length) override { return file_->read(buffer, length); }
 private:
  File* file_;
};

// Reads a small state file (a line of text) into out; false when missing.
void store_field(JsonReader& reader, const char* key, JsonEvent event, ManifestFile& file) {
  long long number = 0;
  bool is_number = event == JsonEvent::kNumber && reader.as_int(number);
  if (event == JsonEvent::kString) {
    char* to = !strcmp(key, "id") ? file.id : !strcmp(key, "path") ? file.path
               : !strcmp(key, "sha256") ? file.sha256 : !strcmp(key, "md5") ? file.md5
               : !strcmp(key, "url") ? file.url : nullptr;
    size_t size = to == file.id ? sizeof(file.id) : to == file.path ? sizeof(file.path)
                  : to == file.sha256 ? sizeof(file.sha256) : to == file.md5 ? sizeof(file.md5)
                  : sizeof(file.url);
    if (to && (!copy_text(to, size, reader.text()) || reader.truncated())) file.cut = true;
  } else if (is_number) {
    // chunk_size and chunks are checked against the size below; a 32-bit long holds them
    // once that check passed for any file the flash can hold.
    bool fits = number >= 0 && number <= 0x7fffffffLL;
    if (!strcmp(key, "size")) file.size = number;
    else if (!strcmp(key, "chunk_size")) file.chunk_size = fits ? static_cast<long>(number) : 0;
    else if (!strcmp(key, "chunks")) file.chunks = fits ? static_cast<long>(number) : -1;
    else if (!strcmp(key, "version")) file.version = number;
  }
}

// Where chunk `index` starts, in 64 bits (index * chunk_size overflows a 32-bit long).
long long chunk_offset(const ManifestFile& file, long index) {
  return static_cast<long long>(index) * file.chunk_size;
}

long chunk_length(const ManifestFile& file, long index) {
  long long left = file.size - chunk_offset(file, index);
  return left < file.chunk_size ? static_cast<long>(left) : file.chunk_size;
}

// Reads one line (without its newline) into out; false at the end of the file.
bool read_line(File* file, char* out, size_t size) {
  size_t length = 0;
  uint8_t c;
  int got;
  while ((got = file->read(&c, 1)) == 1 && c != '\n') {
    if (length + 1 < size) out[length++] = static_cast<char>(c);
  }
  out[length] = '\0';
  return got == 1 || length > 0;
}

bool complete_entry(const ManifestFile& file) {
  return file.id[0] && file.path[0] && strlen(file.sha256) == 64 && file.url[0] &&
         file.size >= 0 && file.size <= 0x7fffffffLL && file.chunk_size > 0 &&
         file.version > 0 &&
         file.chunks == (file.size + file.chunk_size - 1) / file.chunk_size;
}

}  // namespace

const char* unstorable_reason(const ManifestFile& file) {
  // Short texts: every literal is static RAM on an ESP8266.
  if (file.cut) return "too long for the node";
  if (strlen(file.path) > kMaxPathLength) return "path over 200 bytes";
  size_t name = 0;
  int depth = 0;
  for (const char* p = file.path;; p++) {
    if (*p && *p != '/') {
      name++;
      continue;
    }
    if (name > kMaxNameLength) return "name over 31 characters";
    if (!*p) break;
    name = 0;
    depth++;
  }
  return depth > kMaxPathDepth ? "over 8 folders deep" : nullptr;
}

const char* sync_result_name(SyncResult result) {
  static const char* const kNames[] = {"up_to_date", "done", "failed", "unreachable"};
  return kNames[static_cast<int>(result)];
}

Sync::Sync(HubClient& hub, Storage& storage, Clock& clock, Sha256& sha256, Board& board,
           SyncLog& log)
    : hub_(hub), storage_(storage), clock_(clock), sha256_(sha256), board_(board), log_(log) {
  etag_[0] = '\0';
}

bool Sync::is_firmware(const char* path) {
  return starts_with(path, "firmware/") && ends_with(path, ".bin");
}

void Sync::state_path(char* out, size_t size, const char* folder, const char* id,
                      const char* suffix) {
  copy_text(out, size, kStateDir);
  append_text(out, size, "/");
  append_text(out, size, folder);
  append_text(out, size, "/");
  append_text(out, size, id);
  append_text(out, size, suffix);
}

void Sync::note(const char* what, const ManifestFile& file, long long number,
                const char* detail) {
  char line[160];
  copy_text(line, sizeof(line), what);
  append_text(line, sizeof(line), " ");
  append_text(line, sizeof(line), file.id);
  append_text(line, sizeof(line), " ");
  append_number(line, sizeof(line), number);
  if (*detail) {
    append_text(line, sizeof(line), " ");
    append_text(line, sizeof(line), detail);
  }
  log_.line(line);
}

int Sync::fetch_manifest(bool& not_modified) {
  not_modified = false;
  char known[sizeof(etag_)];
  if (!read_small(storage_, kEtagPath, known, sizeof(known))) known[0] = '\0';
  hub_.route("files", "manifest");
  Header if_none_match{"If-None-Match", known};
  int status = hub_.get(&if_none_match, known[0] ? 1 : 0);
  if (status == 304) not_modified = true;
  if (status != 200) {
    hub_.close();
    return status;
  }
  if (!hub_.header("ETag", etag_, sizeof(etag_))) etag_[0] = '\0';
  storage_.make_dirs(kManifestPath);
  File* out = storage_.open(kManifestPath, OpenMode::kWrite);
  if (!out) {
    hub_.close();
    return kStorageError;
  }
  for (;;) {
    int got = hub_.read(piece_, sizeof(piece_));
    if (got < 0) status = kUnreachable;
    if (got <= 0) break;
    if (out->write(piece_, static_cast<size_t>(got)) != got) {
      status = kStorageError;
      break;
    }
    clock_.yield_now();
  }
  out->close();
  hub_.close();
  return status;
}

SyncResult Sync::run(SyncStats& stats) {
  bool not_modified = false;
  int status = fetch_manifest(not_modified);
  if (not_modified) return SyncResult::kUpToDate;
  if (is_transient(status) && status != kStorageError) return SyncResult::kUnreachable;
  if (status != 200) {
    char line[48];
    copy_text(line, sizeof(line), "manifest failed: ");
    append_number(line, sizeof(line), status);
    log_.line(line);
    return SyncResult::kFailed;
  }
  File* manifest = storage_.open(kManifestPath, OpenMode::kRead);
  if (!manifest) return SyncResult::kFailed;
  FileSource source(manifest);
  JsonReader reader(source);
  ManifestFile& file = file_;  // a member: the ESP8266 sketch stack is 4 KiB
  bool all_well = true;
  bool in_files = false;
  char key[16] = "";
  SyncResult result = SyncResult::kUpToDate;
  for (;;) {
    JsonEvent event = reader.next();
    if (event == JsonEvent::kEnd) break;
    if (event == JsonEvent::kError) {
      log_.line("manifest is not valid JSON");
      all_well = false;
      break;
    }
    int depth = reader.depth();
    if (event == JsonEvent::kKey && depth == 1) {
      bool files = reader.text_is("files");
      JsonEvent value = reader.next();
      in_files = files && value == JsonEvent::kBeginArray;
      if (!in_files) reader.skip(value);
    } else if (!in_files) {
      continue;
    } else if (event == JsonEvent::kEndArray && depth == 1) {
      in_files = false;
    } else if (event == JsonEvent::kBeginObject && depth == 3) {
      memset(&file, 0, sizeof(file));
    } else if (event == JsonEvent::kKey && depth == 3) {
      copy_text(key, sizeof(key), reader.text());
      JsonEvent value = reader.next();
      store_field(reader, key, value, file);
      reader.skip(value);
    } else if (event == JsonEvent::kEndObject && depth == 2) {
      stats.files++;
      const char* refusal = unstorable_reason(file);
      if (refusal) {  // never storable here: reported once per list, not fetched
        note("refused", file, file.version, refusal);
        report(file, "failed", 0, refusal);
        stats.failed++;
        continue;
      }
      if (!complete_entry(file)) {
        log_.line("manifest entry incomplete");
        all_well = false;
        continue;
      }
      FileResult outcome = sync_file(file, stats);
      if (outcome == FileResult::kUnreachable) {
        result = SyncResult::kUnreachable;
        break;
      }
      if (outcome == FileResult::kFetched) stats.fetched++;
      if (outcome == FileResult::kFailed) stats.failed++;
      if (outcome == FileResult::kFailed || outcome == FileResult::kReplaced) all_well = false;
    } else {
      reader.skip(event);  // anything else in the list: not a file entry
    }
  }
  manifest->close();
  if (result == SyncResult::kUnreachable) return result;
  if (!all_well) return SyncResult::kFailed;
  // Every listed file is on flash (or can never be): what is not listed has gone, and the
  // list need not be fetched again until it changes.
  prune_withdrawn();
  if (etag_[0]) write_small(storage_, kEtagPath, etag_);
  if (stats.failed) return SyncResult::kFailed;
  return stats.fetched ? SyncResult::kDone : SyncResult::kUpToDate;
}

bool Sync::listed(const char* key, const char* value) {
  File* manifest = storage_.open(kManifestPath, OpenMode::kRead);
  if (!manifest) return true;  // cannot tell: keep the file
  FileSource source(manifest);
  JsonReader reader(source);
  bool found = false;
  for (JsonEvent event = reader.next(); !found && event != JsonEvent::kEnd &&
                                        event != JsonEvent::kError; event = reader.next()) {
    if (event == JsonEvent::kKey && reader.depth() == 3 && reader.text_is(key)) {
      found = reader.next() == JsonEvent::kString && reader.text_is(value);
    }
  }
  manifest->close();
  return found;
}

void Sync::remember(const ManifestFile& file) {
  File* index = storage_.open(kIndexPath, OpenMode::kRead);
  char line[sizeof(file.id) + sizeof(file.path) + 1];
  bool known = false;
  size_t id_length = strlen(file.id);
  while (index && !known && read_line(index, line, sizeof(line))) {
    known = !strncmp(line, file.id, id_length) && line[id_length] == ' ';
  }
  if (index) index->close();
  if (known) return;
  index = storage_.open(kIndexPath, OpenMode::kAppend);
  if (!index) return;
  copy_text(line, sizeof(line), file.id);
  append_text(line, sizeof(line), " ");
  append_text(line, sizeof(line), file.path);
  append_text(line, sizeof(line), "\n");
  index->write(reinterpret_cast<const uint8_t*>(line), strlen(line));
  index->flush();
  index->close();
}

void Sync::prune_withdrawn() {
  File* index = storage_.open(kIndexPath, OpenMode::kRead);
  if (!index) return;
  char temp[sizeof(kIndexPath) + 1];
  copy_text(temp, sizeof(temp), kIndexPath);
  append_text(temp, sizeof(temp), "~");
  File* kept = storage_.open(temp, OpenMode::kWrite);
  if (!kept) {
    index->close();
    return;
  }
  char line[sizeof(file_.id) + sizeof(file_.path) + 1];
  bool changed = false;
  while (read_line(index, line, sizeof(line))) {
    char* space = strchr(line, ' ');
    if (!space) continue;
    *space = '\0';
    if (listed("id", line)) {
      *space = ' ';
      append_text(line, sizeof(line), "\n");
      kept->write(reinterpret_cast<const uint8_t*>(line), strlen(line));
      continue;
    }
    changed = true;
    // A path another listed package now has (moved from all/ to the device's own folder,
    // say) is that package's file now: only this package's record goes.
    bool moved = listed("path", space + 1);
    char path[sizeof(file_.path) + 1] = "/";
    append_text(path, sizeof(path), space + 1);
    if (!moved && !is_firmware(space + 1)) storage_.remove(path);  // an image is not a file
    state_path(path, sizeof(path), "have", line);
    storage_.remove(path);
    char text[sizeof(line) + 12];
    copy_text(text, sizeof(text), moved ? "superseded " : "withdrawn ");
    append_text(text, sizeof(text), line);
    append_text(text, sizeof(text), " ");
    append_text(text, sizeof(text), space + 1);
    log_.line(text);
  }
  index->close();
  kept->flush();
  kept->close();
  if (changed) storage_.rename(temp, kIndexPath);
  else storage_.remove(temp);
}

bool Sync::up_to_date(const ManifestFile& file) {
  char have_path[64], have[72];
  state_path(have_path, sizeof(have_path), "have", file.id);
  if (!read_small(storage_, have_path, have, sizeof(have)) || strcmp(have, file.sha256) != 0) {
    return false;
  }
  if (is_firmware(file.path)) return true;  // flashed, not kept as a file
  char target[220] = "/";
  append_text(target, sizeof(target), file.path);
  return storage_.file_size(target) == file.size;
}

Sync::FileResult Sync::sync_file(const ManifestFile& file, SyncStats& stats) {
  if (up_to_date(file)) return FileResult::kSkipped;
  FileResult result = is_firmware(file.path) ? download_firmware(file, stats)
                                             : download_to_flash(file, stats);
  if (result == FileResult::kFetched) {
    char have_path[64];
    state_path(have_path, sizeof(have_path), "have", file.id);
    storage_.make_dirs(have_path);
    if (write_small(storage_, have_path, file.sha256)) remember(file);
    report(file, "applied", file.size, "");
    note("applied", file, file.size, file.path);
  }
  return result;
}

int Sync::fetch_chunk(const ManifestFile& file, long index, File* out, uint8_t* memory,
                      SyncStats& stats) {
  copy_text(hub_.path(), HubClient::kPathSize, file.url);
  append_text(hub_.path(), HubClient::kPathSize, "/");
  append_number(hub_.path(), HubClient::kPathSize, index);
  int status = hub_.get();
  if (status != 200 && status != 206) {  // 206: nginx sends chunks for the hub (X-Accel)
    hub_.close();
    return status;
  }
  char expected[72];
  bool has_hash = hub_.header("X-Chunk-SHA256", expected, sizeof(expected));
  long length = chunk_length(file, index);
  long got = 0;
  sha256_.begin();
  for (;;) {
    int n = hub_.read(piece_, sizeof(piece_));
    if (n < 0) {
      hub_.close();
      return kUnreachable;
    }
    if (n == 0) break;
    if (got + n > length) {
      got = length + 1;  // longer than the chunk: rejected below
      break;
    }
    sha256_.update(piece_, static_cast<size_t>(n));
    if (out && out->write(piece_, static_cast<size_t>(n)) != n) {
      hub_.close();
      return kStorageError;
    }
    if (memory) memcpy(memory + got, piece_, static_cast<size_t>(n));
    got += n;
    clock_.yield_now();
  }
  hub_.close();
  uint8_t digest[32];
  sha256_.finish(digest);
  const char* problem = !has_hash ? "no X-Chunk-SHA256"
                        : got != length ? "wrong length"
                        : !hex_equals(expected, digest) ? "sha256 mismatch" : nullptr;
  if (problem) {
    stats.chunks_rejected++;
    note("chunk rejected", file, index, problem);
    return 0;
  }
  stats.chunks_fetched++;
  note("chunk fetched", file, index);
  return 200;
}

Sync::FileResult Sync::download_to_flash(const ManifestFile& file, SyncStats& stats) {
  char progress_path[64], part_path[64], progress[112];
  state_path(progress_path, sizeof(progress_path), "dl", file.id);
  state_path(part_path, sizeof(part_path), "dl", file.id, ".part");
  storage_.make_dirs(part_path);

  // Progress is "<version> <sha256> <chunks verified>"; anything else starts over.
  long verified = 0;
  if (read_small(storage_, progress_path, progress, sizeof(progress))) {
    char* space = strchr(progress, ' ');
    char* second = space ? strchr(space + 1, ' ') : nullptr;
    long long version = 0, count = 0;
    if (second) {
      *space = *second = '\0';
      if (parse_number(progress, version) && version == file.version &&
          !strcmp(space + 1, file.sha256) && parse_number(second + 1, count) &&
          count > 0 && count <= file.chunks &&
          storage_.file_size(part_path) >= (chunk_offset(file, static_cast<long>(count)) < file.size
                                                ? chunk_offset(file, static_cast<long>(count))
                                                : file.size)) {
        verified = static_cast<long>(count);
      }
    }
  }
  File* part = storage_.open(part_path, verified ? OpenMode::kUpdate : OpenMode::kWrite);
  if (!part) return FileResult::kFailed;
  if (verified) note("resume", file, verified);
  report(file, "downloading", chunk_offset(file, verified), "");

  for (long index = verified; index < file.chunks; index++) {
    int status = 0;
    for (int attempt = 0; attempt < kChunkAttempts && status != 200; attempt++) {
      if (!part->seek(static_cast<uint32_t>(chunk_offset(file, index)))) {
        status = kStorageError;
        break;
      }
      status = fetch_chunk(file, index, part, nullptr, stats);
      if (status != 0) break;  // 0: a checksum mismatch, worth another try
    }
    if (status == 200 && !part->flush()) status = kStorageError;
    if (status == 200) {
      copy_text(progress, sizeof(progress), "");
      append_number(progress, sizeof(progress), file.version);
      append_text(progress, sizeof(progress), " ");
      append_text(progress, sizeof(progress), file.sha256);
      append_text(progress, sizeof(progress), " ");
      append_number(progress, sizeof(progress), index + 1);
      if (!write_small(storage_, progress_path, progress)) status = kStorageError;
    }
    if (status == 200) {
      if ((index + 1) * 4 / file.chunks != index * 4 / file.chunks && index + 1 < file.chunks) {
        report(file, "downloading", chunk_offset(file, index + 1), "");
      }
      continue;
    }
    part->close();
    if (status == 409) {  // replaced while we fetched: the next manifest has the new one
      storage_.remove(progress_path);
      storage_.remove(part_path);
      note("replaced", file, file.version);
      return FileResult::kReplaced;
    }
    if (is_transient(status) && status != kStorageError) return FileResult::kUnreachable;
    char reason[64];
    copy_text(reason, sizeof(reason), "chunk ");
    append_number(reason, sizeof(reason), index);
    append_text(reason, sizeof(reason), status == 0 ? ": failed its SHA-256 check"
                                        : status == kStorageError ? ": flash write failed"
                                                                  : ": HTTP ");
    if (status > 0) append_number(reason, sizeof(reason), status);
    report(file, "failed", chunk_offset(file, index), reason);
    return FileResult::kFailed;
  }
  part->close();
  if (!file_sha256_matches(part_path, file.size, file.sha256)) {
    storage_.remove(progress_path);
    storage_.remove(part_path);
    report(file, "failed", file.size, "file failed its SHA-256 check");
    note("file rejected", file, file.size);
    return FileResult::kFailed;
  }
  report(file, "verified", file.size, "");
  char target[220] = "/";
  append_text(target, sizeof(target), file.path);
  storage_.make_dirs(target);
  if (!storage_.rename(part_path, target)) {
    report(file, "failed", file.size, "rename into place failed");
    return FileResult::kFailed;
  }
  storage_.remove(progress_path);
  return FileResult::kFetched;
}

bool Sync::file_sha256_matches(const char* path, long long size, const char* expected) {
  File* file = storage_.open(path, OpenMode::kRead);
  if (!file) return false;
  sha256_.begin();
  long long left = size;
  while (left > 0) {
    int n = file->read(piece_, left < static_cast<long>(sizeof(piece_)) ? static_cast<size_t>(left)
                                                                       : sizeof(piece_));
    if (n <= 0) break;
    sha256_.update(piece_, static_cast<size_t>(n));
    left -= n;
    clock_.yield_now();
  }
  file->close();
  uint8_t digest[32];
  sha256_.finish(digest);
  return left == 0 && hex_equals(expected, digest);
}

Sync::FileResult Sync::download_firmware(const ManifestFile& file, SyncStats& stats) {
  FirmwareSink* sink = board_.firmware_sink();
  const char* problem = !sink ? "no firmware updates here"
                        : file.chunk_size > 8192 ? "firmware chunks over 8 KiB"
                        : strlen(file.md5) != 32 ? "no MD5 for the image" : nullptr;
  // One chunk is held in RAM until its SHA-256 is checked: Update cannot take bytes back.
  uint8_t* chunk = problem ? nullptr : static_cast<uint8_t*>(malloc(static_cast<size_t>(file.chunk_size)));
  if (!problem && !chunk) problem = "not enough RAM for one chunk";
  if (!problem && !sink->begin(static_cast<uint32_t>(file.size), file.md5)) {
    problem = "Update.begin refused the image";
  }
  if (problem) {
    free(chunk);
    report(file, "failed", 0, problem);
    return FileResult::kFailed;
  }
  report(file, "downloading", 0, "");
  FileResult result = FileResult::kFetched;
  for (long index = 0; index < file.chunks && result == FileResult::kFetched; index++) {
    int status = 0;
    for (int attempt = 0; attempt < kChunkAttempts && status == 0; attempt++) {
      status = fetch_chunk(file, index, nullptr, chunk, stats);
    }
    if (status == 200 && !sink->write(chunk, static_cast<size_t>(chunk_length(file, index)))) {
      problem = "Update failed to write";
    } else if (status == 409) {
      result = FileResult::kReplaced;
    } else if (is_transient(status) && status != kStorageError) {
      result = FileResult::kUnreachable;
    } else if (status != 200) {
      problem = "a chunk failed";
    }
    if (problem) result = FileResult::kFailed;
  }
  free(chunk);
  if (result == FileResult::kFetched && !sink->end()) {
    problem = sink->refusal() ? sink->refusal() : "Update.end refused the image";
    result = FileResult::kFailed;
  } else if (result != FileResult::kFetched) {
    sink->abort();
  }
  if (problem) report(file, "failed", 0, problem);
  if (result == FileResult::kFetched) {
    report(file, "verified", file.size, "");
    stats.restart_needed = true;
  }
  return result;
}

bool Sync::report(const ManifestFile& file, const char* state, long long received,
                  const char* reason) {
  char body[192];
  JsonWriter json(body, sizeof(body));
  json.begin_object().field("package", file.id).field("version", file.version)
      .field("state", state);
  if (!strcmp(state, "downloading") || !strcmp(state, "failed")) json.field("received", received);
  if (*reason) json.field("reason", reason);
  json.end_object();
  hub_.route("files", "sync-status");
  int status = hub_.post_json(body, json.length());
  return status == 201;
}

}  // namespace dropsync
