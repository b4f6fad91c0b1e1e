// DropSync node for ESP8266 and ESP32: polls the hub for commands, reports heartbeats and
// messages, and keeps the files staged for it (firmware included) in sync, verified.
//
// 1. Copy config.example.h to config.h and fill it in: WiFi, the hub's URL (or none: it is
//    found by mDNS), and either the fleet's ENROLL_KEY (one build for every board: each
//    enrolls and an operator accepts it) or this board's DEVICE_ID and DEVICE_TOKEN.
// 2. Install the board core (ESP8266 or ESP32); LittleFS and HTTPClient come with it.
// 3. Build and flash (firmware/README.md: Arduino IDE or arduino-cli).
//
// The protocol lives in src/dropsync_core (plain C++, tested on a Linux host against a
// real hub); this sketch is the glue. Add your own commands with node->on() below.
#include "config.h"
#include "esp_platform.h"
#include "src/dropsync_core/enrollment.h"
#include "src/dropsync_core/node.h"
#if defined(ESP32)
#include <ESPmDNS.h>
#elif !defined(DROPSYNC_EMULATION)  // the core's host emulation has no mDNS
#include <ESP8266mDNS.h>
#endif

using namespace dropsync_esp;

static ArduinoTransport transport(HUB_URL);
static LittleFsStorage storage(LittleFS);
static ArduinoClock board_clock;
static PlatformSha256 sha256;
static UpdateSink update_sink;
static BootGuard boot_guard;
static EspBoard board(FIRMWARE_VERSION, &update_sink, boot_guard);
static dropsync::Node* node = nullptr;
static char device_id[65];
#if !defined(DROPSYNC_EMULATION)
static char hub_url[64];  // found by mDNS when HUB_URL is empty
#endif
#if defined(ENROLL_KEY)
static dropsync::Identity identity;  // what enrollment stored on flash
#endif

// The factory-reset button: held this long, the board forgets its identity and secret
// and restarts to enroll again. RESET_PIN defaults to GPIO 0 (the BOOT/FLASH button of
// most ESP8266 and ESP32 boards); -1 in config.h turns it off.
#if !defined(RESET_PIN) && defined(DROPSYNC_EMULATION)
#define RESET_PIN -1  // the emulation reads every pin LOW: a button held down
#elif !defined(RESET_PIN)
#define RESET_PIN 0
#endif
static const uint32_t kResetHoldMs = 5000;
static uint32_t reset_pressed_at = 0;

#if defined(ESP32)
// arduino-esp32 marks a new image valid at start unless the sketch says it will do so
// itself: we do, once the hub has answered (BootGuard::reached_hub).
extern "C" bool verifyRollbackLater() { return true; }
#endif

// The LED the blink example drives: LED_PIN from config.h, else the board's LED_BUILTIN.
// A generic ESP32 board defines no LED_BUILTIN (many ESP32 DevKits have one on GPIO 2).
#if defined(LED_PIN)
static const int kLedPin = LED_PIN;
#elif defined(LED_BUILTIN)
static const int kLedPin = LED_BUILTIN;
#else
static const int kLedPin = -1;
#endif

// An example command: {"name": "blink", "args": {"times": 3}}.
static bool blink(dropsync::Node&, const dropsync::Command& command,
                  dropsync::JsonWriter& result, void*) {
  long long times = 3;
  command.arg("times", times);
  if (times < 1 || times > 50) {
    result.field("error", "times must be 1 to 50");
    return false;
  }
  if (kLedPin < 0) {
    result.field("error", "no LED known on this board: set LED_PIN in config.h");
    return false;
  }
  pinMode(kLedPin, OUTPUT);
  for (long long i = 0; i < times; i++) {
    digitalWrite(kLedPin, LOW);
    delay(150);
    digitalWrite(kLedPin, HIGH);
    delay(150);
  }
  result.field("blinked", times);
  return true;
}

// WiFi with retry: capped exponential backoff, so a node waiting for its access point
// does not hammer it either.
static void connect_wifi() {
  if (WiFi.status() == WL_CONNECTED) return;
  WiFi.mode(WIFI_STA);
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
  dropsync::Backoff backoff(500, 30000);
  while (WiFi.status() != WL_CONNECTED) {
    uint32_t wait = backoff.next_delay_ms(board_clock.random32());
    Serial.printf("WiFi: waiting %u ms\n", static_cast<unsigned>(wait));
    uint32_t started = millis();
    while (WiFi.status() != WL_CONNECTED && millis() - started < wait) delay(50);
    if (WiFi.status() != WL_CONNECTED && backoff.attempts() % 5 == 0) {
      WiFi.disconnect();
      WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
    }
  }
  Serial.printf("WiFi: connected, %s\n", WiFi.localIP().toString().c_str());
}

// HUB_URL empty: ask the LAN for the hub (it advertises _dropsync._tcp over mDNS).
static void find_hub() {
  if (HUB_URL[0]) return;
#if defined(DROPSYNC_EMULATION)
  Serial.println("mDNS: not in the emulation; set HUB_URL");
#else
  MDNS.begin("dropsync-node");
  for (dropsync::Backoff backoff(1000, 30000);;) {
    int found = MDNS.queryService("dropsync", "tcp");
    if (found > 0) {
      snprintf(hub_url, sizeof(hub_url), "http://%s:%u", MDNS.IP(0).toString().c_str(),
               static_cast<unsigned>(MDNS.port(0)));
      transport.set_base(hub_url);
      Serial.printf("mDNS: hub at %s\n", hub_url);
      return;
    }
    uint32_t wait = backoff.next_delay_ms(board_clock.random32());
    Serial.printf("mDNS: no hub yet, waiting %u ms\n", static_cast<unsigned>(wait));
    delay(wait);
  }
#endif
}

// A long press on RESET_PIN: forget the identity and the secret, restart, enroll again.
static void watch_reset_button() {
  if (RESET_PIN < 0) return;
  if (digitalRead(RESET_PIN) != LOW) {
    reset_pressed_at = 0;
    return;
  }
  if (!reset_pressed_at) reset_pressed_at = millis() | 1;
  if (millis() - reset_pressed_at >= kResetHoldMs) {
    Serial.println("factory reset: identity forgotten");
    dropsync::Enrollment::forget(storage);
    ESP.restart();
  }
}

void setup() {
  Serial.begin(115200);
  boot_guard.begin();
#if defined(ESP32)
  LittleFS.begin(true);  // format on first use
#else
  LittleFS.begin();
#endif
  if (RESET_PIN >= 0) pinMode(RESET_PIN, INPUT_PULLUP);
  connect_wifi();
  find_hub();
  transport.begin();
  static dropsync::NodeConfig config;
#if defined(ENROLL_KEY)
  // One build for the whole fleet: the identity this board stored, else enroll for one.
  if (!dropsync::Enrollment::load(storage, identity)) {
    char mac[18];
    dropsync::copy_text(mac, sizeof(mac), WiFi.macAddress().c_str());
    for (char* c = mac; *c; c++) *c = tolower(*c);
    static dropsync::EnrollConfig enroll;
    enroll.enroll_key = ENROLL_KEY;
    enroll.hardware_id = mac;
#if defined(ESP32)
    enroll.board = "esp32";
#else
    enroll.board = "esp8266";
#endif
    enroll.backoff_base_ms = BACKOFF_BASE_MS;
    enroll.backoff_cap_ms = BACKOFF_CAP_MS;
    dropsync::Enrollment enrollment(transport, storage, board_clock, sha256, board);
    for (bool done = false; !done;) {
      uint32_t wait = enrollment.step(enroll, identity, done);
      for (uint32_t started = millis(); !done && millis() - started < wait;) {
        connect_wifi();
        watch_reset_button();
        delay(50);
      }
    }
  }
  dropsync::copy_text(device_id, sizeof(device_id), identity.device_id);
  config.token = identity.token;
#else
  dropsync::copy_text(device_id, sizeof(device_id),
                      DEVICE_ID[0] ? DEVICE_ID : WiFi.macAddress().c_str());
  config.token = DEVICE_TOKEN;
#endif
  config.device_id = device_id;
  config.poll_s = POLL_S;
  config.heartbeat_s = HEARTBEAT_S;
  config.manifest_s = MANIFEST_S;
  config.backoff_base_ms = BACKOFF_BASE_MS;
  config.backoff_cap_ms = BACKOFF_CAP_MS;
  static dropsync::Node instance(config, transport, storage, board_clock, sha256, board);
  node = &instance;
  node->on("blink", blink);
#if defined(ENROLL_KEY)
  node->on("factory_reset", dropsync::factory_reset_command);
#endif
  node->begin();
  if (boot_guard.failed_starts()) {
    char text[96] = "boot loop: ";
    dropsync::append_number(text, sizeof(text), boot_guard.failed_starts());
    dropsync::append_text(text, sizeof(text), " starts ended before reaching the hub");
    node->message("warning", text);  // sent, or kept in the outbox until it is reachable
  }
}

void loop() {
  connect_wifi();
  watch_reset_button();
  uint32_t wait = node->tick();
  if (node->polls_answered() > 0) boot_guard.reached_hub();
  delay(wait < 50 ? wait : 50);  // short naps: WiFi and the watchdog get their turn
}
