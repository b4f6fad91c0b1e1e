#include "node.h"

#include <string.h>

#include "json_reader.h"
#include "text.h"

namespace dropsync {

namespace {

const char kOutboxPath[] = "/.dropsync/outbox";
const char kCommandLogPath[] = "/.dropsync/commands";

bool due(uint32_t now, uint32_t at) { return static_cast<int32_t>(now - at) >= 0; }

uint32_t until(uint32_t now, uint32_t at) { return due(now, at) ? 0 : at - now; }

// Finds a member of a flat JSON object (a command's args).
bool find_member(JsonReader& reader, const char* key, JsonEvent& value) {
  if (reader.next() != JsonEvent::kBeginObject) return false;
  for (;;) {
    JsonEvent event = reader.next();
    if (event != JsonEvent::kKey) return false;
    bool match = reader.text_is(key);
    value = reader.next();
    if (match) return true;
    if (!reader.skip(value)) return false;
  }
}

class FileBody : public BodySource {
 public:
  explicit FileBody(File* file) : file_(file) {}
  long size() override { return static_cast<long>(file_->size()); }
  int read(uint8_t* buffer, size_t length) override { return file_->read(buffer, length); }
 private:
  File* file_;
};

bool reboot_command(Node& node, const Command&, JsonWriter& result, void*) {
  result.field_bool("restarting", true);
  node.request_restart();
  return true;
}

bool sync_command(Node& node, const Command&, JsonWriter& result, void*) {
  SyncStats stats;
  SyncResult outcome = node.sync_now(stats);
  result.field("outcome", sync_result_name(outcome))
      .field("files", stats.files).field("fetched", stats.fetched)
      .field("failed", stats.failed).field("chunks_rejected", static_cast<long long>(stats.chunks_rejected));
  return outcome == SyncResult::kUpToDate || outcome == SyncResult::kDone;
}

bool upload_log_command(Node& node, const Command& command, JsonWriter& result, void*) {
  char path[96];
  if (!command.arg("path", path, sizeof(path))) copy_text(path, sizeof(path), node.log_path());
  int status = node.upload_file(path);
  result.field("path", path).field("status", status);
  if (status != 201) result.field("error", status == 0 ? "no such file" : "upload refused");
  return status == 201;
}

}  // namespace

bool Command::arg(const char* key, char* out, size_t size) const {
  MemorySource source(args, args_length);
  JsonReader reader(source);
  JsonEvent value;
  if (!find_member(reader, key, value) ||
      value != JsonEvent::kString) {
    return false;
  }
  return copy_text(out, size, reader.text()) && !reader.truncated();
}

bool Command::arg(const char* key, long long& out) const {
  MemorySource source(args, args_length);
  JsonReader reader(source);
  JsonEvent value;
  return find_member(reader, key, value) &&
         value == JsonEvent::kNumber && reader.as_int(out);
}

Node::Node(const NodeConfig& config, HttpTransport& transport, Storage& storage, Clock& clock,
           Sha256& sha256, Board& board)
    : config_(config),
      hub_(transport, config.device_id, config.token),
      storage_(storage),
      clock_(clock),
      board_(board),
      backoff_(config.backoff_base_ms, config.backoff_cap_ms),
      outbox_(storage, kOutboxPath),
      command_log_(storage, kCommandLogPath),
      sync_(hub_, storage, clock, sha256, board, *this) {
  on("reboot", reboot_command);
  on("sync", sync_command);
  on("upload-log", upload_log_command);
}

bool Node::on(const char* name, CommandHandler handler, void* context) {
  for (int i = 0; i < handler_count_; i++) {
    if (!strcmp(handlers_[i].name, name)) {  // replaces a built-in
      handlers_[i] = Handler{name, handler, context};
      return true;
    }
  }
  if (handler_count_ == kMaxHandlers) return false;
  handlers_[handler_count_++] = Handler{name, handler, context};
  return true;
}

void Node::begin() {
  uptime_ms_ = uptime_seen_at_ = clock_.millis();  // millis() counts from the boot
  if (!hub_.token_fits()) line("token over 88 characters");  // sent cut, and refused
  storage_.make_dirs(kOutboxPath);
  outbox_.set_capacity(config_.outbox_slots);
  outbox_.load();
  command_log_.load();
  uint32_t now = clock_.millis();
  next_poll_at_ = next_heartbeat_at_ = now;
  next_manifest_at_ = now + config_.manifest_s * 1000;
  sync_due_ = true;
  char text[96];
  copy_text(text, sizeof(text), "node ");
  append_text(text, sizeof(text), config_.device_id);
  append_text(text, sizeof(text), " starting, firmware ");
  append_text(text, sizeof(text), board_.firmware_version());
  line(text);
}

void Node::line(const char* text) { board_.log(text); }

void Node::went_unreachable(int status) {
  reachable_ = false;
  uint32_t delay = backoff_.next_delay_ms(clock_.random32());
  retry_at_ = clock_.millis() + delay;
  char text[80];
  copy_text(text, sizeof(text), "retry in ");
  append_number(text, sizeof(text), delay);
  append_text(text, sizeof(text), " ms (attempt ");
  append_number(text, sizeof(text), backoff_.attempts());
  append_text(text, sizeof(text), ", status ");
  append_number(text, sizeof(text), status);
  append_text(text, sizeof(text), ")");
  line(text);
}

void Node::came_back() {
  if (!reachable_) {
    char text[64];
    copy_text(text, sizeof(text), "hub reachable after ");
    append_number(text, sizeof(text), backoff_.attempts());
    append_text(text, sizeof(text), " retries");
    line(text);
  }
  reachable_ = true;
  backoff_.reset();
  if (outbox_.count() || outbox_.dropped()) flush_outbox();
}

uint64_t Node::uptime_ms() {
  uint32_t now = clock_.millis();
  uptime_ms_ += static_cast<uint32_t>(now - uptime_seen_at_);  // right across a wrap
  uptime_seen_at_ = now;
  return uptime_ms_;
}

uint32_t Node::tick() {
  uptime_ms();  // seen at least once a wrap (49.7 days), so none is missed
  uint32_t now = clock_.millis();
  if (due(now, next_heartbeat_at_)) {
    next_heartbeat_at_ = now + config_.heartbeat_s * 1000;
    heartbeat();  // into the outbox while the hub is away
  }
  if (!reachable_ && !due(now, retry_at_)) {
    uint32_t wait = until(now, retry_at_);
    uint32_t heartbeat_wait = until(now, next_heartbeat_at_);
    return wait < heartbeat_wait ? wait : heartbeat_wait;
  }
  if (!reachable_ || poll_again_ || due(now, next_poll_at_)) {
    int status = poll();
    if (is_transient(status) || status == 401 || status == 403) {
      went_unreachable(status);
      return until(clock_.millis(), retry_at_);
    }
    polls_answered_++;
    came_back();
  }
  now = clock_.millis();
  if (!poll_again_ && (sync_due_ || due(now, next_manifest_at_))) {
    SyncStats stats;
    sync_now(stats);
    if (!reachable_) return until(clock_.millis(), retry_at_);
  }
  if (restart_pending_) {
    line("restarting");
    board_.restart();
    return 0;
  }
  if (poll_again_) return 0;
  now = clock_.millis();
  uint32_t wait = until(now, next_poll_at_);
  uint32_t other = until(now, next_heartbeat_at_);
  if (other < wait) wait = other;
  other = until(now, next_manifest_at_);
  return other < wait ? other : wait;
}

int Node::poll() {
  poll_again_ = false;
  hub_.route("device", "commands", "?limit=1");
  int status = hub_.get();
  if (status != 200) {
    hub_.close();
    return status;
  }
  size_t length = 0;
  bool whole = hub_.read_body(poll_buffer_, sizeof(poll_buffer_), length);
  hub_.close();

  MemorySource source(poll_buffer_, length);
  JsonReader reader(source);
  Command command{-1, 0, "", "{}", 2};
  char name[64] = "";
  long long next_poll_s = config_.poll_s;
  bool in_commands = false;
  for (;;) {
    JsonEvent event = reader.next();
    if (event == JsonEvent::kEnd || event == JsonEvent::kError) break;
    int depth = reader.depth();
    if (event == JsonEvent::kKey && depth == 1) {
      bool commands = reader.text_is("commands");
      bool next_poll = reader.text_is("next_poll_s");
      JsonEvent value = reader.next();
      in_commands = commands && value == JsonEvent::kBeginArray;
      if (next_poll && value == JsonEvent::kNumber) reader.as_int(next_poll_s);
      if (!in_commands) reader.skip(value);
    } else if (in_commands && event == JsonEvent::kKey && depth == 3) {
      char key[16];
      copy_text(key, sizeof(key), reader.text());
      JsonEvent value = reader.next();
      size_t start = reader.value_start();
      long long number = 0;
      if (!strcmp(key, "id") && reader.as_int(number)) command.id = number;
      if (!strcmp(key, "attempt") && reader.as_int(number)) command.attempt = static_cast<int>(number);
      if (!strcmp(key, "name") && value == JsonEvent::kString) copy_text(name, sizeof(name), reader.text());
      if (!reader.skip(value)) break;
      if (!strcmp(key, "args") && value == JsonEvent::kBeginObject) {
        command.args = poll_buffer_ + start;
        command.args_length = reader.offset() - start;
      }
    } else if (in_commands && event == JsonEvent::kEndArray && depth == 1) {
      in_commands = false;
    }
  }
  if (next_poll_s < 1) next_poll_s = 1;
  if (next_poll_s > 86400) next_poll_s = 86400;
  next_poll_at_ = clock_.millis() + static_cast<uint32_t>(next_poll_s) * 1000;
  if (command.id >= 0) {
    poll_again_ = true;  // one command per poll: there may be more waiting
    command.name = name;
    if (!whole) {
      static const char kTooLarge[] = "command too large for the node";
      line(kTooLarge);
      complete(command.id, false, "{}", 2, kTooLarge);
    } else {
      run_command(command);
    }
  }
  return status;
}

void Node::run_command(const Command& command) {
  char text[112];
  CommandState state = command_log_.state_of(command.id);
  copy_text(text, sizeof(text), "command ");
  append_number(text, sizeof(text), command.id);
  append_text(text, sizeof(text), " ");
  append_text(text, sizeof(text), command.name);
  if (state == CommandState::kSucceeded || state == CommandState::kFailed) {
    append_text(text, sizeof(text), " duplicate: not run again");
    line(text);
    complete(command.id, state == CommandState::kSucceeded, "{\"duplicate\":true}", 18,
             state == CommandState::kFailed ? "failed earlier" : nullptr);
    return;
  }
  if (state == CommandState::kRunning) {
    static const char kInterrupted[] = "interrupted by a restart";
    append_text(text, sizeof(text), " ");
    append_text(text, sizeof(text), kInterrupted);
    line(text);
    command_log_.record(command.id, CommandState::kFailed);
    complete(command.id, false, "{}", 2, kInterrupted);
    return;
  }
  const Handler* handler = nullptr;
  for (int i = 0; i < handler_count_; i++) {
    if (!strcmp(handlers_[i].name, command.name)) handler = &handlers_[i];
  }
  if (!handler) {
    static const char kNoHandler[] = "no handler";
    append_text(text, sizeof(text), " ");
    append_text(text, sizeof(text), kNoHandler);
    line(text);
    command_log_.record(command.id, CommandState::kFailed);
    complete(command.id, false, "{}", 2, kNoHandler);
    return;
  }
  command_log_.record(command.id, CommandState::kRunning);  // before: a reboot runs it once
  JsonWriter result(result_, sizeof(result_));
  result.begin_object();
  bool ok = handler->run(*this, command, result, handler->context);
  result.end_object();
  if (!result.ok()) {
    result.clear();
    result.begin_object().field_bool("result_too_large", true).end_object();
  }
  command_log_.record(command.id, ok ? CommandState::kSucceeded : CommandState::kFailed);
  append_text(text, sizeof(text), ok ? " ran" : " failed");
  line(text);
  complete(command.id, ok, result_, result.length(), ok ? nullptr : "the command failed");
}

int Node::complete(long long id, bool success, const char* result_json, size_t length,
                   const char* error) {
  JsonWriter json(poll_buffer_, sizeof(poll_buffer_));  // the poll's answer is used up
  json.begin_object().field("command_id", id).field_bool("success", success)
      .key("result").raw(result_json, length);
  if (error) json.field("error", error);
  json.end_object();
  hub_.route("device", "commands", "/complete");
  int status = hub_.post_json(json.c_str(), json.length());
  if (is_transient(status)) went_unreachable(status);  // the hub hands it out again
  return status;
}

int Node::deliver(ReportKind kind, const char* body, size_t length) {
  hub_.route("device", kind == ReportKind::kHeartbeat ? "heartbeat" : "messages");
  return hub_.post_json(body, length);
}

bool Node::message(const char* level, const char* text) {
  // At most 200 bytes of text, fewer when escaping makes the body too long for a slot,
  // and never a UTF-8 character cut in two: the hub gets valid JSON or nothing.
  static const size_t kMaxText = 200;
  size_t length = strlen(text);
  if (length > kMaxText) length = kMaxText;
  long long timestamp = static_cast<long long>(uptime_ms() / 1000);
  JsonWriter json(body_, sizeof(body_));
  for (;;) {
    length = utf8_prefix(text, length);
    json.clear();
    json.begin_object().field("level", level).key("text").string(text, length)
        .field("timestamp", timestamp).end_object();
    if (json.ok() || length == 0) break;
    length = length > 8 ? length - 8 : 0;
  }
  if (!json.ok()) return false;
  if (reachable_) {
    int status = deliver(ReportKind::kMessage, json.c_str(), json.length());
    if (!is_transient(status)) return status == 201;
    went_unreachable(status);
  }
  return outbox_.push(ReportKind::kMessage, json.c_str(), json.length());
}

bool Node::heartbeat() {
  JsonWriter json(body_, sizeof(body_));
  char ip[48];
  board_.local_ip(ip, sizeof(ip));
  json.begin_object()
      .field("firmware_version", board_.firmware_version())
      .field("uptime_s", static_cast<long long>(uptime_ms() / 1000))
      .field("free_heap", static_cast<long long>(board_.free_heap()))
      .field("ip", ip);
  int rssi = board_.rssi();
  if (rssi < 0) json.field("rssi", rssi);
  board_.extra_heartbeat(json);
  if (!reachable_) json.field_bool("queued", true);
  json.end_object();
  if (!json.ok()) return false;
  if (reachable_) {
    int status = deliver(ReportKind::kHeartbeat, json.c_str(), json.length());
    if (!is_transient(status)) return status == 200;
    went_unreachable(status);
  }
  return outbox_.push(ReportKind::kHeartbeat, json.c_str(), json.length());
}

bool Node::flush_outbox() {
  if (outbox_.dropped()) {
    char text[96];
    copy_text(text, sizeof(text), "outbox was full: ");
    append_number(text, sizeof(text), outbox_.dropped());
    append_text(text, sizeof(text), " oldest reports dropped");
    JsonWriter json(body_, sizeof(body_));
    json.begin_object().field("level", "warning").field("text", text).key("data")
        .begin_object().field("dropped", static_cast<long long>(outbox_.dropped()))
        .end_object().end_object();
    int status = deliver(ReportKind::kMessage, json.c_str(), json.length());
    if (is_transient(status)) return false;
    outbox_.clear_dropped();
  }
  ReportKind kind;
  while (outbox_.count()) {
    if (!outbox_.peek(kind, body_, sizeof(body_))) {
      outbox_.pop();  // unreadable (torn by a power cut): nothing to send
      continue;
    }
    int status = deliver(kind, body_, strlen(body_));
    if (is_transient(status)) return false;
    outbox_.pop();  // sent, or refused for good (a 4xx will not change)
  }
  line("outbox delivered");
  return true;
}

SyncResult Node::sync_now(SyncStats& stats) {
  SyncResult result = sync_.run(stats);
  char text[128];
  copy_text(text, sizeof(text), "sync ");
  append_text(text, sizeof(text), sync_result_name(result));
  append_text(text, sizeof(text), " files=");
  append_number(text, sizeof(text), stats.files);
  append_text(text, sizeof(text), " fetched=");
  append_number(text, sizeof(text), stats.fetched);
  append_text(text, sizeof(text), " failed=");
  append_number(text, sizeof(text), stats.failed);
  append_text(text, sizeof(text), " chunks=");
  append_number(text, sizeof(text), stats.chunks_fetched);
  append_text(text, sizeof(text), " rejected=");
  append_number(text, sizeof(text), stats.chunks_rejected);
  line(text);
  sync_due_ = result == SyncResult::kUnreachable;
  last_sync_ = result;
  if (result != SyncResult::kUnreachable) syncs_finished_++;
  next_manifest_at_ = clock_.millis() + config_.manifest_s * 1000;
  if (stats.restart_needed) restart_pending_ = true;
  if (result == SyncResult::kUnreachable) went_unreachable(kUnreachable);
  return result;
}

int Node::upload_file(const char* path) {
  File* file = storage_.open(path, OpenMode::kRead);
  if (!file) return 0;
  const char* name = strrchr(path, '/');
  name = name ? name + 1 : path;
  char suffix[112];
  copy_text(suffix, sizeof(suffix), "?filename=");
  if (!append_url_encoded(suffix, sizeof(suffix), name)) {  // a name is the user's text
    file->close();
    return 414;
  }
  hub_.route("files", "upload", suffix);
  FileBody body(file);
  int status = hub_.post_stream("application/octet-stream", body);
  file->close();
  return status;
}

}  // namespace dropsync
