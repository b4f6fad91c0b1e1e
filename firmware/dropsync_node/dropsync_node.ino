// DropSync node for ESP8266 and ESP32: polls the hub for commands, reports heartbeats and
// messages, and keeps the files staged for it (firmware included) in sync, verified.
//
// 1. Copy config.example.h to config.h and fill it in (WiFi, hub URL, token).
// 2. Install the board core (ESP8266 or ESP32); LittleFS and HTTPClient come with it.
// 3. Build and flash (firmware/README.md: Arduino IDE or arduino-cli).
//
// The protocol lives in src/dropsync_core (plain C++, tested on a Linux host against a
// real hub); this sketch is the glue. Add your own commands with node->on() below.
#include "config.h"
#include "esp_platform.h"
#include "src/dropsync_core/node.h"

using namespace dropsync_esp;

static ArduinoTransport transport(HUB_URL);
static LittleFsStorage storage(LittleFS);
static ArduinoClock board_clock;
static PlatformSha256 sha256;
static UpdateSink update_sink;
static BootGuard boot_guard;
static EspBoard board(FIRMWARE_VERSION, &update_sink, boot_guard);
static dropsync::Node* node = nullptr;
static char device_id[32];

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

void setup() {
  Serial.begin(115200);
  boot_guard.begin();
#if defined(ESP32)
  LittleFS.begin(true);  // format on first use
#else
  LittleFS.begin();
#endif
  connect_wifi();
  dropsync::copy_text(device_id, sizeof(device_id),
                      DEVICE_ID[0] ? DEVICE_ID : WiFi.macAddress().c_str());
  transport.begin();

  static dropsync::NodeConfig config;
  config.device_id = device_id;
  config.token = DEVICE_TOKEN;
  config.poll_s = POLL_S;
  config.heartbeat_s = HEARTBEAT_S;
  config.manifest_s = MANIFEST_S;
  config.backoff_base_ms = BACKOFF_BASE_MS;
  config.backoff_cap_ms = BACKOFF_CAP_MS;
  static dropsync::Node instance(config, transport, storage, board_clock, sha256, board);
  node = &instance;
  node->on("blink", blink);
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
  uint32_t wait = node->tick();
  if (node->polls_answered() > 0) boot_guard.reached_hub();
  delay(wait < 50 ? wait : 50);  // short naps: WiFi and the watchdog get their turn
}
