// Copy this file to config.h (git-ignored) and fill it in. The sketch does not build
// without config.h, so a real token never has to be committed.
#ifndef DROPSYNC_CONFIG_H
#define DROPSYNC_CONFIG_H

// -- WiFi -----------------------------------------------------------------------------
#define WIFI_SSID "my-network"
#define WIFI_PASSWORD "my-password"

// -- the hub --------------------------------------------------------------------------
// Base URL only, no trailing slash. A name (http://raspberrypi.local:8000) needs mDNS or
// DNS on the network; an address always works. Empty (""): the board asks the LAN for the
// hub over mDNS (_dropsync._tcp, which the hub advertises) at every boot.
#define HUB_URL "http://192.168.1.10:8000"

// TLS placeholder: with an https:// HUB_URL, pin the hub's certificate by its SHA-1
// fingerprint (ESP8266, BearSSL) or give its CA certificate (ESP32). Unset: plain HTTP.
// #define HUB_TLS_FINGERPRINT "AA BB CC ..."    // ESP8266
// #define HUB_TLS_CA_CERT "-----BEGIN CERTIFICATE-----\n..."  // ESP32

// Signed firmware: the public key `dropsync keys new` printed. With it, Update refuses
// any image not signed by its private key (`dropsync sign`); the hub reports it as a
// failed sync with reason "signature". (On an ESP8266, public.key in the sketch folder
// does the same for every update, stock updaters included.)
// #define FIRMWARE_SIGNING_KEY "-----BEGIN PUBLIC KEY-----\n...\n-----END PUBLIC KEY-----\n"

// -- this node: EITHER one build for the whole fleet... ---------------------------------
// The key `dropsync enroll-key new` printed. Each board then enrolls at first boot, waits
// until an operator accepts it (dashboard: Pending; or `dropsync device accept MAC`) or its
// MAC was preauthorised, and keeps the token it is given on its flash. DEVICE_ID and
// DEVICE_TOKEN below are then ignored. (docs/operators/adding-boards.md)
// #define ENROLL_KEY "paste-the-enrollment-key-here"
// Held low for 5 s (the BOOT/FLASH button on most boards): forget the token, enroll again.
// #define RESET_PIN 0        // -1: no reset button

// -- ...OR a build for this one board ---------------------------------------------------
// Empty: the WiFi MAC address (e.g. 5C:CF:7F:A1:49:8F), which the hub accepts as an id.
#define DEVICE_ID ""
// From `dropsync device add <id>` (shown once).
#define DEVICE_TOKEN "paste-the-token-here"

// Reported in heartbeats; bump it with every build you stage as firmware/<name>.bin.
#define FIRMWARE_VERSION "1.0.0"

// -- timing (the hub's next_poll_s overrides POLL_S once it answers) ------------------
#define POLL_S 30
#define HEARTBEAT_S 60
#define MANIFEST_S 300
#define BACKOFF_BASE_MS 1000
#define BACKOFF_CAP_MS 300000

// -- the blink example's LED: the board's LED_BUILTIN unless set here (a generic ESP32
// board defines none; many ESP32 DevKits have an LED on GPIO 2) --------------------------
// #define LED_PIN 2

#endif
