// Developer check (emulate.sh stock): the ESP8266 core's own ESPhttpUpdate, unmodified,
// against the hub's stock-updater route with HTTP Basic credentials. Not a sketch to
// flash: it only reports what the updater concluded.
#include <ESP8266WiFi.h>
#include <ESP8266httpUpdate.h>

#include "config.h"

static void check(const char* label, const char* user, const char* password) {
  WiFiClient client;
  ESPhttpUpdate.rebootOnUpdate(false);
  ESPhttpUpdate.setAuthorization(user, password);
  String url = String(HUB_URL) + "/api/v1/ota/" + DEVICE_ID;
  HTTPUpdateResult result = ESPhttpUpdate.update(client, url, FIRMWARE_VERSION);
  Serial.printf("%s: result %d (%s), error %d: %s\n", label, static_cast<int>(result),
                result == HTTP_UPDATE_OK          ? "updated"
                : result == HTTP_UPDATE_NO_UPDATES ? "no updates"
                                                   : "failed",
                ESPhttpUpdate.getLastError(), ESPhttpUpdate.getLastErrorString().c_str());
}

void setup() {
  Serial.begin(115200);
  check("with the device's token", DEVICE_ID, DEVICE_TOKEN);
  check("with a wrong token", DEVICE_ID, "not-the-token");
}

void loop() { delay(1000); }
