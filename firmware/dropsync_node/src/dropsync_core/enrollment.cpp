#include "enrollment.h"

#include <string.h>

#include "json_reader.h"
#include "json_writer.h"
#include "node.h"
#include "sync.h"
#include "text.h"

namespace dropsync {

namespace {

const char kSecretPath[] = "/.dropsync/secret";
const char kIdentityPath[] = "/.dropsync/identity";
const char kEnrollPath[] = "/api/v1/enroll";

// A string or integer member of the hub's flat JSON answer.
bool member(const char* json, const char* key, char* out, size_t size) {
  MemorySource source(json, strlen(json));
  JsonReader reader(source);
  if (reader.next() != JsonEvent::kBeginObject) return false;
  for (;;) {
    if (reader.next() != JsonEvent::kKey) return false;
    bool match = reader.text_is(key);
    JsonEvent value = reader.next();
    if (match) {
      return (value == JsonEvent::kString || value == JsonEvent::kNumber) &&
             copy_text(out, size, reader.text()) && !reader.truncated();
    }
    if (!reader.skip(value)) return false;
  }
}

uint32_t seconds_member(const char* json, uint32_t fallback_ms) {
  char text[16];
  long long seconds = 0;
  if (member(json, "retry_after_s", text, sizeof(text)) && parse_number(text, seconds) &&
      seconds > 0 && seconds < 86400) {
    return static_cast<uint32_t>(seconds) * 1000;
  }
  return fallback_ms;
}

}  // namespace

bool factory_reset_command(Node& node, const Command&, JsonWriter& result, void*) {
  Enrollment::forget(node.storage());
  node.line("reset: identity forgotten");
  result.field_bool("restarting", true);
  node.request_restart();
  return true;
}

Enrollment::Enrollment(HttpTransport& transport, Storage& storage, Clock& clock,
                       Sha256& sha256, Board& board)
    : hub_(transport, "", ""),
      storage_(storage),
      clock_(clock),
      sha256_(sha256),
      board_(board),
      backoff_(1000, 300000) {}

bool Enrollment::load(Storage& storage, Identity& identity) {
  char text[sizeof(identity.device_id) + sizeof(identity.token) + 2];
  if (!read_small(storage, kIdentityPath, text, sizeof(text))) return false;
  char* newline = strchr(text, '\n');
  if (!newline || newline == text || !newline[1]) return false;
  *newline = '\0';
  char* end = strchr(newline + 1, '\n');
  if (end) *end = '\0';
  return copy_text(identity.device_id, sizeof(identity.device_id), text) &&
         copy_text(identity.token, sizeof(identity.token), newline + 1);
}

void Enrollment::forget(Storage& storage) {
  storage.remove(kIdentityPath);
  storage.remove(kSecretPath);
}

// The board's secret: made once from the platform's random source, then kept.
bool Enrollment::secret(char out[65]) {
  if (read_small(storage_, kSecretPath, out, 65) && strlen(out) == 64) return true;
  uint8_t bytes[32];
  for (size_t i = 0; i < sizeof(bytes); i += 4) {
    uint32_t random = clock_.random32();
    memcpy(bytes + i, &random, 4);
  }
  to_hex(bytes, sizeof(bytes), out);
  storage_.make_dirs(kSecretPath);
  return write_small(storage_, kSecretPath, out);
}

uint32_t Enrollment::step(const EnrollConfig& config, Identity& identity, bool& done) {
  done = false;
  backoff_.configure(config.backoff_base_ms, config.backoff_cap_ms);
  char secret_hex[65];
  if (!secret(secret_hex)) {
    board_.log("enroll: flash?");
    return transient();
  }
  uint8_t digest[32];
  sha256_.begin();
  sha256_.update(reinterpret_cast<const uint8_t*>(secret_hex), 64);
  sha256_.finish(digest);
  char digest_hex[65];
  to_hex(digest, sizeof(digest), digest_hex);

  char body[512];
  JsonWriter json(body, sizeof(body));
  json.begin_object().field("enroll_key", config.enroll_key)
      .field("hardware_id", config.hardware_id).field("board", config.board)
      .field("firmware_version", board_.firmware_version())
      .field("secret_sha256", digest_hex);
  if (config.name_hint && *config.name_hint) json.field("name_hint", config.name_hint);
  if (config.sketch_md5 && *config.sketch_md5) json.field("sketch_md5", config.sketch_md5);
  json.end_object();
  if (!json.ok()) return refused(config, 400);
  copy_text(hub_.path(), HubClient::kPathSize, kEnrollPath);
  int status = hub_.post_json(body, json.length(), answer_, sizeof(answer_));
  if (status == 202) {
    backoff_.reset();
    board_.log("enroll: pending");
    return seconds_member(answer_, config.backoff_cap_ms);
  }
  if (status == 200) return claim(config, secret_hex, identity, done);
  return is_transient(status) ? transient() : refused(config, status);
}

uint32_t Enrollment::claim(const EnrollConfig& config, const char* secret_hex,
                           Identity& identity, bool& done) {
  char body[160];
  JsonWriter json(body, sizeof(body));
  json.begin_object().field("hardware_id", config.hardware_id)
      .field("secret", secret_hex).end_object();
  copy_text(hub_.path(), HubClient::kPathSize, kEnrollPath);
  append_text(hub_.path(), HubClient::kPathSize, "/claim");
  int status = hub_.post_json(body, json.length(), answer_, sizeof(answer_));
  if (status == 202) return seconds_member(answer_, config.backoff_cap_ms);
  if (status != 200) return is_transient(status) ? transient() : refused(config, status);
  char line[sizeof(identity.device_id) + sizeof(identity.token) + 2];
  if (!member(answer_, "device_id", identity.device_id, sizeof(identity.device_id)) ||
      !member(answer_, "token", identity.token, sizeof(identity.token))) {
    board_.log("enroll: bad claim");
    return transient();
  }
  copy_text(line, sizeof(line), identity.device_id);
  append_text(line, sizeof(line), "\n");
  append_text(line, sizeof(line), identity.token);
  if (!write_small(storage_, kIdentityPath, line)) {
    // The token was handed out once: without it on flash this board must enroll again.
    board_.log("enroll: flash?");
    forget(storage_);
    return transient();
  }
  char note[96] = "enroll: claimed ";
  append_text(note, sizeof(note), identity.device_id);
  board_.log(note);
  done = true;
  return 0;
}

// 401/403/404 (a wrong or revoked key, a rejected board, enrollment off) wait long; 409 and
// 410 (another secret enrolled, or this one's token handed out) make a new secret first.
uint32_t Enrollment::refused(const EnrollConfig& config, int status) {
  char note[48] = "enroll: refused ";
  append_number(note, sizeof(note), status);
  board_.log(note);
  if (status == 409 || status == 410) storage_.remove(kSecretPath);
  return config.refused_wait_ms;
}

uint32_t Enrollment::transient() { return backoff_.next_delay_ms(clock_.random32()); }

}  // namespace dropsync
