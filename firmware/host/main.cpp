// The host client: the firmware's protocol core, unchanged, on Linux against a real hub.
// The tests (tests/test_firmware*.py) run it; it is also a handy node simulator.
//
//   dropsync-host --hub http://127.0.0.1:8000 --id esp001 --token T --flash ./flash.img
//   dropsync-host --hub ... --flash ./flash.img --enroll-key K --hardware-id MAC
//                 [--name-hint ID] [--refused-wait-ms N] [--factory-reset]
//                 (no id or token: it enrolls, waits, claims its token and keeps it on
//                 its flash, as a board built once for a fleet; --factory-reset forgets
//                 it first, as the sketch's long press does)
//                 [--hub-cert hub.crt]   (with an https:// hub: the certificate to pin)
//                 [--signing-key public.key]  (firmware images must be signed with it)
//                 [--flash-flavour esp8266|esp32] [--poll-s 30] [--heartbeat-s 60]
//                 [--manifest-s 300]
//                 [--backoff-base-ms 1000] [--backoff-cap-ms 300000] [--outbox-slots 16]
//                 [--firmware-version 1.0.0] [--exit-after-sync] [--run-s N]
//                 [--message TEXT] [--clock-start-ms N]
//
// --flash is a littlefs image (created and formatted when missing) with the ESP8266 core's
// LittleFS rules; a firmware image applied goes beside it, to <flash>.firmware.bin.
// It prints one line per event (the node's log) and, at the end, the heap it used.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dropsync_core/enrollment.h"
#include "dropsync_core/node.h"
#include "dropsync_core/text.h"
#include "host_platform.h"
#include "sha256.h"

namespace {

volatile sig_atomic_t stop_requested = 0;

void request_stop(int) { stop_requested = 1; }

// A custom command, as a sketch would add one: answers its args and notes that it ran.
bool echo_command(dropsync::Node& node, const dropsync::Command& command,
                  dropsync::JsonWriter& result, void*) {
  result.key("echo").raw(command.args, command.args_length);
  dropsync::File* file = node.storage().open("/ran.log", dropsync::OpenMode::kAppend);
  if (file) {
    char line[32] = "";
    dropsync::append_number(line, sizeof(line), command.id);
    dropsync::append_text(line, sizeof(line), "\n");
    file->write(reinterpret_cast<const uint8_t*>(line), strlen(line));
    file->close();
  }
  return true;
}

// Runs as long as args.ms say, after noting that it ran: a power cut lands mid-handler.
bool nap_command(dropsync::Node& node, const dropsync::Command& command,
                 dropsync::JsonWriter& result, void* clock) {
  long long ms = 0;
  command.arg("ms", ms);
  echo_command(node, command, result, nullptr);
  static_cast<HostClock*>(clock)->sleep_ms(static_cast<uint32_t>(ms));
  return true;
}

bool fail_command(dropsync::Node&, const dropsync::Command&, dropsync::JsonWriter& result,
                  void*) {
  result.field("error", "failed on purpose");
  return false;
}

const char* option(int argc, char** argv, const char* name, const char* fallback) {
  for (int i = 1; i + 1 < argc; i++) {
    if (!strcmp(argv[i], name)) return argv[i + 1];
  }
  return fallback;
}

bool flag(int argc, char** argv, const char* name) {
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], name)) return true;
  }
  return false;
}

uint32_t number(int argc, char** argv, const char* name, uint32_t fallback) {
  const char* text = option(argc, argv, name, nullptr);
  return text ? static_cast<uint32_t>(strtoul(text, nullptr, 10)) : fallback;
}

}  // namespace

int main(int argc, char** argv) {
  const char* hub = option(argc, argv, "--hub", nullptr);
  const char* flash = option(argc, argv, "--flash", nullptr);
  dropsync::NodeConfig config;
  config.device_id = option(argc, argv, "--id", "");
  config.token = option(argc, argv, "--token", "");
  dropsync::EnrollConfig enroll;
  enroll.enroll_key = option(argc, argv, "--enroll-key", "");
  enroll.hardware_id = option(argc, argv, "--hardware-id", "");
  enroll.board = "host";
  enroll.name_hint = option(argc, argv, "--name-hint", "");
  bool enrolls = *enroll.enroll_key != '\0';
  if (!hub || !flash || (!*config.device_id && !(enrolls && *enroll.hardware_id))) {
    fprintf(stderr, "usage: %s --hub http://IP:PORT --id ID --token TOKEN --flash IMAGE ...\n"
            "   or: %s --hub ... --flash IMAGE --enroll-key KEY --hardware-id MAC ...\n",
            argv[0], argv[0]);
    return 2;
  }
  config.poll_s = number(argc, argv, "--poll-s", config.poll_s);
  config.heartbeat_s = number(argc, argv, "--heartbeat-s", config.heartbeat_s);
  config.manifest_s = number(argc, argv, "--manifest-s", config.manifest_s);
  config.backoff_base_ms = number(argc, argv, "--backoff-base-ms", config.backoff_base_ms);
  config.backoff_cap_ms = number(argc, argv, "--backoff-cap-ms", config.backoff_cap_ms);
  config.outbox_slots = number(argc, argv, "--outbox-slots", config.outbox_slots);
  uint32_t run_ms = number(argc, argv, "--run-s", 0) * 1000;
  bool exit_after_sync = flag(argc, argv, "--exit-after-sync");
  signal(SIGTERM, request_stop);
  signal(SIGINT, request_stop);

  static PosixTransport transport;
  if (!transport.configure(hub)) {
    fprintf(stderr, "--hub must be http(s)://<IPv4 address>:<port>\n");
    return 2;
  }
  const char* hub_cert = option(argc, argv, "--hub-cert", nullptr);
  if (!strncmp(hub, "https://", 8) && (!hub_cert || !transport.pin_certificate(hub_cert))) {
    fprintf(stderr, "https:// needs --hub-cert FILE: the hub's certificate (PEM) to pin\n");
    return 2;
  }
  static EspLittleFs flash_fs;
  const char* flavour = option(argc, argv, "--flash-flavour", "esp8266");
  if (!flash_fs.begin(flash, strcmp(flavour, "esp32") == 0 ? FlashFlavour::kEsp32
                                                           : FlashFlavour::kEsp8266)) {
    fprintf(stderr, "cannot open or format the flash image %s\n", flash);
    return 2;
  }
  static FlashStorage storage(flash_fs);
  static HostClock clock(number(argc, argv, "--clock-start-ms", 0));
  static HostSha256 sha256;
  static char firmware_path[256];
  snprintf(firmware_path, sizeof(firmware_path), "%s.firmware.bin", flash);
  static HostFirmwareSink firmware(firmware_path);
  const char* signing_key = option(argc, argv, "--signing-key", nullptr);
  if (signing_key && !firmware.require_signature(signing_key)) {
    fprintf(stderr, "--signing-key must name a PEM public key\n");
    return 2;
  }
  static HostBoard board(option(argc, argv, "--firmware-version", "host-1.0.0"), flash_fs,
                         &firmware);

  // A board built with no identity: the one it stored, else enroll until it has one.
  static dropsync::Identity identity;
  if (enrolls) {
    if (flag(argc, argv, "--factory-reset")) {
      dropsync::Enrollment::forget(storage);
      board.log("factory reset: identity forgotten");
    }
    enroll.backoff_base_ms = config.backoff_base_ms;
    enroll.backoff_cap_ms = config.backoff_cap_ms;
    enroll.refused_wait_ms = number(argc, argv, "--refused-wait-ms", enroll.refused_wait_ms);
    if (dropsync::Enrollment::load(storage, identity)) {
      board.log("enroll: identity on flash");
    } else {
      dropsync::Enrollment enrollment(transport, storage, clock, sha256, board);
      uint32_t started = clock.millis();
      bool done = false;
      while (!done && !stop_requested && !(run_ms && clock.millis() - started >= run_ms)) {
        uint32_t wait = enrollment.step(enroll, identity, done);
        uint32_t waited = 0;  // in short sleeps, so a stop is not held up
        while (!done && !stop_requested && waited < wait &&
               !(run_ms && clock.millis() - started >= run_ms)) {
          uint32_t slice = wait - waited < 100 ? wait - waited : 100;
          clock.sleep_ms(slice);
          waited += slice;
        }
      }
      if (!done) return 4;  // stopped before it was accepted
    }
    config.device_id = identity.device_id;
    config.token = identity.token;
  }

  // The node lives on the heap here so the peak below includes it.
  size_t before = heap_in_use();
  heap_reset_peak();
  dropsync::Node* node = new dropsync::Node(config, transport, storage, clock, sha256, board);
  node->on("echo", echo_command);
  node->on("fail", fail_command);
  node->on("nap", nap_command, &clock);
  if (enrolls) node->on("factory_reset", dropsync::factory_reset_command);
  node->begin();
  const char* text = option(argc, argv, "--message", nullptr);
  if (text) node->message("info", text);

  uint32_t started = clock.millis();
  int status = 0;
  while (!stop_requested) {
    uint32_t wait = node->tick();
    if (exit_after_sync && node->syncs_finished() > 0) {
      status = node->last_sync() == dropsync::SyncResult::kFailed ? 1 : 0;
      break;
    }
    if (run_ms && clock.millis() - started >= run_ms) break;
    clock.sleep_ms(wait < 100 ? wait : 100);
  }
  printf("node_bytes %zu\npeak_heap_bytes %zu\n", sizeof(dropsync::Node),
         heap_peak() - before);
  const TlsStats& tls = transport.tls_stats();
  if (tls.handshakes) {
    printf("tls_handshakes %lu\ntls_resumed %lu\ntls_handshake_ms %.1f\n"
           "tls_wire_sent %llu\ntls_wire_received %llu\n", tls.handshakes, tls.resumed,
           tls.handshake_ms, tls.wire_sent, tls.wire_received);
  }
  fflush(stdout);
  delete node;
  return status;
}
