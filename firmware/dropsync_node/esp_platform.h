// The Arduino glue: the protocol core's interfaces over the ESP8266 and ESP32 cores
// (ESP8266HTTPClient / HTTPClient, LittleFS, Update, bearssl / mbedtls, WiFi, RTC memory).
// Everything the node does is in src/dropsync_core; this file only adapts.
#ifndef DROPSYNC_ESP_PLATFORM_H
#define DROPSYNC_ESP_PLATFORM_H

#include <Arduino.h>
#include <LittleFS.h>

#if defined(ESP8266)
#include <ESP8266HTTPClient.h>
#include <ESP8266WiFi.h>
#include <Updater.h>
#include <bearssl/bearssl_hash.h>
#if defined(HUB_TLS_FINGERPRINT)
#include <WiFiClientSecureBearSSL.h>
#endif
#elif defined(ESP32)
#include <HTTPClient.h>
#include <Update.h>
#include <WiFi.h>
#include <esp_ota_ops.h>
#if defined(HUB_TLS_CA_CERT)
#include <WiFiClientSecure.h>
#endif
#include <mbedtls/sha256.h>
#else
#error "DropSync's sketch is for the ESP8266 and the ESP32"
#endif

#if defined(DROPSYNC_EMULATION)
// The ESP8266 core's host emulation ships bearssl's headers but not its library.
#include "../host/sha256.h"
#endif
#include "littlefs_storage.h"
#include "src/dropsync_core/hub_client.h"
#include "src/dropsync_core/json_writer.h"
#include "src/dropsync_core/platform.h"
#include "src/dropsync_core/text.h"

namespace dropsync_esp {

using dropsync::BodySource;
using dropsync::HttpRequest;
using dropsync::OpenMode;

// A request body read from the core's BodySource (an upload streamed from flash).
class BodyStream : public Stream {
 public:
  explicit BodyStream(BodySource& source) : source_(source) {}
  int available() override { return fill(); }
  int read() override { return fill() ? buffer_[position_++] : -1; }
  int peek() override { return fill() ? buffer_[position_] : -1; }
  size_t write(uint8_t) override { return 0; }
  void flush() override {}

 private:
  int fill() {
    if (position_ == length_) {
      int got = source_.read(buffer_, sizeof(buffer_));
      length_ = got > 0 ? static_cast<size_t>(got) : 0;
      position_ = 0;
    }
    return static_cast<int>(length_ - position_);
  }
  BodySource& source_;
  uint8_t buffer_[128];
  size_t length_ = 0;
  size_t position_ = 0;
};

class ArduinoTransport : public dropsync::HttpTransport {
 public:
  explicit ArduinoTransport(const char* base_url) : base_(base_url) {}
  // The hub found at run time (mDNS): its URL, kept by the caller for as long as this is.
  void set_base(const char* base_url) { base_ = base_url; }

  void begin() {
#if defined(HUB_TLS_FINGERPRINT) && defined(ESP8266)
    secure_.setFingerprint(HUB_TLS_FINGERPRINT);
#elif defined(HUB_TLS_CA_CERT) && defined(ESP32)
    secure_.setCACert(HUB_TLS_CA_CERT);
#endif
  }

  int send(const HttpRequest& request) override {
    close();
    String url = String(base_) + request.path;
#if defined(HUB_TLS_FINGERPRINT) || defined(HUB_TLS_CA_CERT)
    WiFiClient& client = url.startsWith("https://") ? secure_ : plain_;
#else
    WiFiClient& client = plain_;  // https:// needs a pinned certificate (config.h)
#endif
    if (!http_.begin(client, url)) return dropsync::kUnreachable;
    http_.setTimeout(10000);
    http_.useHTTP10(true);  // no chunked bodies: read() gets the bytes as the hub sent them
    http_.setReuse(false);
    http_.collectHeaders(const_cast<const char**>(dropsync::kCollectedHeaders),
                         dropsync::kCollectedHeaderCount);
    for (size_t i = 0; i < request.header_count; i++) {
      if (request.headers[i].value[0]) http_.addHeader(request.headers[i].name,
                                                       request.headers[i].value);
    }
    if (request.content_type) http_.addHeader("Content-Type", request.content_type);
    int status;
    if (request.body_source) {
      BodyStream body(*request.body_source);
      status = http_.sendRequest(request.method, &body,
                                 static_cast<size_t>(request.body_source->size()));
    } else {
      status = http_.sendRequest(request.method, const_cast<uint8_t*>(request.body),
                                 request.body_length);
    }
    if (status <= 0) {  // HTTPClient's own errors: refused, timeout, lost connection
      http_.end();
      return dropsync::kUnreachable;
    }
    open_ = true;
    remaining_ = http_.getSize();
    return status;
  }

  bool header(const char* name, char* out, size_t out_size) override {
    if (!open_ || !http_.hasHeader(name)) return false;
    return dropsync::copy_text(out, out_size, http_.header(name).c_str());
  }

  long content_length() override { return open_ ? http_.getSize() : -1; }

  int read(uint8_t* buffer, size_t length) override {
    if (!open_) return -1;
    if (remaining_ == 0) return 0;
    WiFiClient* stream = http_.getStreamPtr();
    if (!stream) return -1;
    uint32_t started = millis();
    while (!stream->available()) {
      if (!stream->connected()) return remaining_ < 0 ? 0 : -1;  // closed before the end
      if (millis() - started > 10000) return -1;
      delay(1);
    }
    if (remaining_ > 0 && length > static_cast<size_t>(remaining_)) {
      length = static_cast<size_t>(remaining_);
    }
    int got = stream->read(buffer, length);
    if (got > 0 && remaining_ > 0) remaining_ -= got;
    return got;
  }

  void close() override {
    if (open_) http_.end();
    open_ = false;
  }

 private:
  const char* base_;
  HTTPClient http_;
  WiFiClient plain_;
#if defined(HUB_TLS_FINGERPRINT) && defined(ESP8266)
  BearSSL::WiFiClientSecure secure_;
#elif defined(HUB_TLS_CA_CERT) && defined(ESP32)
  WiFiClientSecure secure_;
#endif
  bool open_ = false;
  long remaining_ = 0;
};

// LittleFS through the shared glue (littlefs_storage.h), the one the host tests run.
using LittleFsStorage = LittleFsStorageOver<fs::FS, fs::File>;

class ArduinoClock : public dropsync::Clock {
 public:
  uint32_t millis() override { return ::millis(); }
  void sleep_ms(uint32_t ms) override { delay(ms); }
  void yield_now() override { yield(); }
#if defined(ESP8266)
  uint32_t random32() override { return ESP.random(); }
#else
  uint32_t random32() override { return esp_random(); }
#endif
};

#if defined(DROPSYNC_EMULATION)
using PlatformSha256 = HostSha256;
#elif defined(ESP8266)
class PlatformSha256 : public dropsync::Sha256 {
 public:
  void begin() override { br_sha256_init(&context_); }
  void update(const uint8_t* data, size_t length) override {
    br_sha256_update(&context_, data, length);
  }
  void finish(uint8_t digest[32]) override { br_sha256_out(&context_, digest); }
 private:
  br_sha256_context context_;
};
#else
class PlatformSha256 : public dropsync::Sha256 {
 public:
  void begin() override {
    mbedtls_sha256_init(&context_);
    mbedtls_sha256_starts(&context_, 0);
  }
  void update(const uint8_t* data, size_t length) override {
    mbedtls_sha256_update(&context_, data, length);
  }
  void finish(uint8_t digest[32]) override {
    mbedtls_sha256_finish(&context_, digest);
    mbedtls_sha256_free(&context_);
  }
 private:
  mbedtls_sha256_context context_;
};
#endif

// Verified chunks of a firmware package go to Update, which checks the image's MD5 and,
// with a signing key (FIRMWARE_SIGNING_KEY in config.h, or public.key in the sketch folder
// on an ESP8266), its signature: an image that does not verify is never booted.
class UpdateSink : public dropsync::FirmwareSink {
 public:
  bool begin(uint32_t size, const char* md5_hex) override {
    install_signing_key();
    refusal_ = nullptr;
    return Update.begin(size) && Update.setMD5(md5_hex);
  }
  bool write(const uint8_t* data, size_t length) override {
    return Update.write(const_cast<uint8_t*>(data), length) == length;
  }
  bool end() override {
    if (Update.end()) return true;
#if defined(UPDATE_ERROR_SIGN)
    if (Update.getError() == UPDATE_ERROR_SIGN) refusal_ = "signature";
#endif
    return false;
  }
  const char* refusal() override { return refusal_; }
#if defined(ESP8266)
  void abort() override { Update.end(true); }  // an incomplete image never boots
#else
  void abort() override { Update.abort(); }
#endif

 private:
  // The verifier the cores' own Update checks images with (their signed-update docs).
  static void install_signing_key() {
#if defined(FIRMWARE_SIGNING_KEY) && defined(ESP8266)
    static BearSSL::PublicKey key(FIRMWARE_SIGNING_KEY);
    static BearSSL::HashSHA256 hash;
    static BearSSL::SigningVerifier verifier(&key);
    Update.installSignature(&hash, &verifier);
#elif defined(FIRMWARE_SIGNING_KEY) && defined(ESP32)
    static UpdaterRSAVerifier verifier(reinterpret_cast<const uint8_t*>(FIRMWARE_SIGNING_KEY),
                                       sizeof(FIRMWARE_SIGNING_KEY), HASH_SHA256);
    Update.installSignature(&verifier);
#endif
  }
  const char* refusal_ = nullptr;
};

// Counts starts that never reached the hub. The ESP8266 has no rollback, so a new image
// that crashes before talking to the hub boot-loops; whatever runs next reports the
// count. RTC memory survives resets and watchdog restarts, not a power cycle.
class BootGuard {
 public:
  void begin() {
#if defined(ESP8266)
    if (!ESP.rtcUserMemoryRead(0, reinterpret_cast<uint32_t*>(&record_), sizeof(record_)) ||
        record_.magic != kMagic) {
      record_ = Record{kMagic, 0};
    }
    record_.starts++;
    ESP.rtcUserMemoryWrite(0, reinterpret_cast<uint32_t*>(&record_), sizeof(record_));
#endif
  }
  // Starts before this one that ended before reaching the hub.
  uint32_t failed_starts() const { return record_.starts ? record_.starts - 1 : 0; }
  // The hub answered: this image works. On ESP32 it is marked valid only now, so an
  // image that never reaches the hub is rolled back by the bootloader.
  void reached_hub() {
    if (reached_) return;
    reached_ = true;
#if defined(ESP32)
    esp_ota_mark_app_valid_cancel_rollback();
#else
    record_.starts = 0;
    ESP.rtcUserMemoryWrite(0, reinterpret_cast<uint32_t*>(&record_), sizeof(record_));
#endif
  }
  bool rolled_back() const {
#if defined(ESP32)
    return esp_ota_get_last_invalid_partition() != nullptr;
#else
    return false;
#endif
  }

 private:
  static const uint32_t kMagic = 0x44534254;  // "DSBT"
  struct Record {
    uint32_t magic;
    uint32_t starts;
  };
  Record record_{kMagic, 0};
  bool reached_ = false;
};

class EspBoard : public dropsync::Board {
 public:
  EspBoard(const char* version, dropsync::FirmwareSink* sink, BootGuard& guard)
      : version_(version), sink_(sink), guard_(guard) {}
  const char* firmware_version() override { return version_; }
  uint32_t free_heap() override { return ESP.getFreeHeap(); }
  int rssi() override { return WiFi.RSSI(); }
  void local_ip(char* out, size_t out_size) override {
    dropsync::copy_text(out, out_size, WiFi.localIP().toString().c_str());
  }
  void restart() override {
    delay(200);
    ESP.restart();
  }
  dropsync::FirmwareSink* firmware_sink() override { return sink_; }
  void log(const char* line) override {
    Serial.println(line);
    append_log_line<fs::FS, fs::File>(LittleFS, line);  // for the upload-log command
  }
  void extra_heartbeat(dropsync::JsonWriter& out) override {
#if defined(ESP8266)
    out.field("board", "esp8266").field("reset_reason", ESP.getResetReason().c_str())
        .field("sketch_md5", ESP.getSketchMD5().c_str());
#else
    out.field("board", "esp32").field("reset_reason", static_cast<long long>(esp_reset_reason()));
    if (guard_.rolled_back()) out.field_bool("rolled_back", true);
#endif
    if (guard_.failed_starts()) {
      out.field("boot_failures", static_cast<long long>(guard_.failed_starts()));
    }
  }

 private:
  const char* version_;
  dropsync::FirmwareSink* sink_;
  BootGuard& guard_;
};

}  // namespace dropsync_esp

#endif
