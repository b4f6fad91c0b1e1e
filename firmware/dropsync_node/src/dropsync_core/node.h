// The node: poll for commands and run them once each, heartbeat, messages, sync, and
// retry with capped exponential backoff and jitter whenever the hub is out of reach.
//
//   Node node(config, transport, storage, clock, sha256, board);
//   node.on("water", water_plants, nullptr);   // your own commands
//   node.begin();
//   loop: clock.sleep_ms(node.tick());         // tick() does what is due, says when next
//
// Messages and heartbeats made while the hub is unreachable wait in an Outbox on flash.
#ifndef DROPSYNC_CORE_NODE_H
#define DROPSYNC_CORE_NODE_H

#include <stddef.h>
#include <stdint.h>

#include "backoff.h"
#include "command_log.h"
#include "hub_client.h"
#include "json_writer.h"
#include "outbox.h"
#include "platform.h"
#include "sync.h"

namespace dropsync {

struct NodeConfig {
  const char* device_id = "";
  const char* token = "";
  uint32_t poll_s = 30;          // until the hub says otherwise (next_poll_s)
  uint32_t heartbeat_s = 60;
  uint32_t manifest_s = 300;     // how often to ask for the manifest (also on `sync`)
  uint32_t backoff_base_ms = 1000;
  uint32_t backoff_cap_ms = 300000;
  uint32_t outbox_slots = Outbox::kDefaultSlots;
  const char* log_path = "/log.txt";  // what upload-log sends when args name no path
};

struct Command {
  long long id;  // the hub's ids are 64-bit
  int attempt;
  const char* name;
  const char* args;  // the raw JSON of "args" ({} when none)
  size_t args_length;
  // A string or integer member of args; false when absent or of another type.
  bool arg(const char* key, char* out, size_t size) const;
  bool arg(const char* key, long long& out) const;
};

class Node;
// Runs a command; writes members of the result object into `result` (it is already
// open) and answers success. On failure, write an "error" member: it becomes the reason.
typedef bool (*CommandHandler)(Node& node, const Command& command, JsonWriter& result,
                               void* context);

class Node final : public SyncLog {
 public:
  static const int kMaxHandlers = 12;
  static const size_t kPollBufferSize = 1536;

  Node(const NodeConfig& config, HttpTransport& transport, Storage& storage, Clock& clock,
       Sha256& sha256, Board& board);

  bool on(const char* name, CommandHandler handler, void* context = nullptr);
  void begin();
  // Does whatever is due (poll, commands, heartbeat, sync, outbox); answers the ms until
  // something is due again.
  uint32_t tick();

  // Sends a log line to the hub, or keeps it in the outbox while the hub is away.
  bool message(const char* level, const char* text);
  bool heartbeat();
  SyncResult sync_now(SyncStats& stats);
  // Streams a file from flash to the hub's upload route; answers the HTTP status.
  int upload_file(const char* path);
  void request_sync() { sync_due_ = true; }
  bool hub_reachable() const { return reachable_; }
  bool restart_pending() const { return restart_pending_; }
  // Restart once the current command is completed (the reboot command).
  void request_restart() { restart_pending_ = true; }
  const char* log_path() const { return config_.log_path; }
  // How many syncs ran to an end (any result but unreachable), and the last result.
  uint32_t syncs_finished() const { return syncs_finished_; }
  // Polls the hub answered: the sketch marks a new image good after the first.
  uint32_t polls_answered() const { return polls_answered_; }
  SyncResult last_sync() const { return last_sync_; }
  void line(const char* text) override;  // the node's own log (Board::log)

  HubClient& hub() { return hub_; }
  Storage& storage() { return storage_; }

 private:
  int poll();
  void run_command(const Command& command);
  int complete(long long id, bool success, const char* result_json, size_t length,
               const char* error);
  uint64_t uptime_ms();  // millis() wraps after 49.7 days; this does not
  int deliver(ReportKind kind, const char* body, size_t length);
  bool flush_outbox();
  void went_unreachable(int status);
  void came_back();

  struct Handler {
    const char* name;
    CommandHandler run;
    void* context;
  };

  NodeConfig config_;
  HubClient hub_;
  Storage& storage_;
  Clock& clock_;
  Board& board_;
  Backoff backoff_;
  Outbox outbox_;
  CommandLog command_log_;
  Sync sync_;
  Handler handlers_[kMaxHandlers];
  int handler_count_ = 0;
  uint32_t syncs_finished_ = 0;
  uint32_t polls_answered_ = 0;
  SyncResult last_sync_ = SyncResult::kUpToDate;
  bool reachable_ = true;
  bool sync_due_ = true;
  bool restart_pending_ = false;
  bool poll_again_ = false;
  uint32_t next_poll_at_ = 0;
  uint32_t next_heartbeat_at_ = 0;
  uint32_t next_manifest_at_ = 0;
  uint32_t retry_at_ = 0;
  uint64_t uptime_ms_ = 0;
  uint32_t uptime_seen_at_ = 0;
  char poll_buffer_[kPollBufferSize];
  char body_[Outbox::kMaxBody + 1];
  char result_[512];
};

}  // namespace dropsync

#endif
