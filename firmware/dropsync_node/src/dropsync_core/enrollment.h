// Enrollment: a board built with no device id or token joins the fleet by itself.
//
// At first boot it makes a random secret (32 bytes) and keeps it on flash. It enrolls
// with the fleet's enrollment key, its MAC and the SHA-256 of the secret; the hub keeps it
// pending until an operator accepts it (or its MAC was preauthorised). Then it claims its
// token by showing the secret, once, and stores its id and token on flash: from then on
// it boots straight into the Node as any device.
//
//   Identity identity;
//   if (!Enrollment::load(storage, identity)) {
//     Enrollment enrollment(transport, storage, clock, sha256, board);
//     bool done = false;
//     while (!done) clock.sleep_ms(enrollment.step(config, identity, done));
//   }
//
// A factory reset (Enrollment::forget; the factory_reset command, which a board built to
// enroll adds with node.on("factory_reset", factory_reset_command)) deletes the identity
// and the secret: the next boot enrolls again, as a re-enrollment an operator accepts.
// A board built with a fixed DEVICE_ID never calls any of this, so the linker drops it
// (and its strings, which an ESP8266 keeps in RAM).
//
// Kept on flash under /.dropsync/: secret (64 hex characters), identity ("id\ntoken").
#ifndef DROPSYNC_CORE_ENROLLMENT_H
#define DROPSYNC_CORE_ENROLLMENT_H

#include <stddef.h>
#include <stdint.h>

#include "backoff.h"
#include "hub_client.h"
#include "platform.h"

namespace dropsync {

struct EnrollConfig {
  const char* enroll_key = "";
  const char* hardware_id = "";   // the MAC, a4:cf:12:00:00:01
  const char* board = "esp8266";
  const char* name_hint = "";     // optional: the id the hub gives when it can
  const char* sketch_md5 = "";    // optional
  uint32_t backoff_base_ms = 1000;
  uint32_t backoff_cap_ms = 300000;
  // After a refusal (a wrong or revoked key, a rejected board): try again this much later,
  // in case an operator changes that. Never faster than the hub allows.
  uint32_t refused_wait_ms = 300000;
};

struct Identity {
  char device_id[65];
  char token[HubClient::kMaxToken + 1];
};

struct Command;
class JsonWriter;
class Node;

// The factory_reset command: forgets the identity and the secret, then restarts once the
// command is completed (with the token still in memory).
bool factory_reset_command(Node& node, const Command& command, JsonWriter& result,
                           void* context);

class Enrollment {
 public:
  Enrollment(HttpTransport& transport, Storage& storage, Clock& clock, Sha256& sha256,
             Board& board);

  // The identity stored by an earlier enrollment: false when there is none.
  static bool load(Storage& storage, Identity& identity);
  // Factory reset: forget the identity and the secret.
  static void forget(Storage& storage);

  // One step (enroll, or claim once accepted); answers the ms to wait before the next.
  // Sets `done` once the identity is stored on flash (and copied into `identity`).
  uint32_t step(const EnrollConfig& config, Identity& identity, bool& done);

 private:
  bool secret(char out[65]);
  uint32_t claim(const EnrollConfig& config, const char* secret_hex, Identity& identity,
                 bool& done);
  uint32_t refused(const EnrollConfig& config, int status);
  uint32_t transient();

  HubClient hub_;
  Storage& storage_;
  Clock& clock_;
  Sha256& sha256_;
  Board& board_;
  Backoff backoff_;
  char answer_[256];
};

}  // namespace dropsync

#endif
