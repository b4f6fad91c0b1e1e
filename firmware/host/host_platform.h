// The core's interfaces on Linux: POSIX sockets for HTTP, littlefs on an image file for flash, the
// monotonic clock, and a board that prints its log. Only loopback/LAN hubs by IP address.
#ifndef DROPSYNC_HOST_PLATFORM_H
#define DROPSYNC_HOST_PLATFORM_H

#include "dropsync_core/json_writer.h"
#include "dropsync_core/platform.h"
#include "esp_littlefs.h"
#include "littlefs_storage.h"

struct evp_pkey_st;
struct ssl_ctx_st;
struct ssl_st;
struct ssl_session_st;

// What TLS cost this client: handshakes (full and resumed), their time, bytes on the wire.
struct TlsStats {
  unsigned long handshakes = 0;
  unsigned long resumed = 0;
  double handshake_ms = 0;
  unsigned long long wire_sent = 0;
  unsigned long long wire_received = 0;
};

class PosixTransport : public dropsync::HttpTransport {
 public:
  ~PosixTransport();
  // base: http://<IPv4 address>:<port> or https://<IPv4 address>:<port>
  bool configure(const char* base);
  // HTTPS only: the hub's certificate (PEM file, as `dropsync tls init` writes it). The
  // connection is refused unless the hub presents exactly this certificate, as an ESP8266
  // pinned with setFingerprint() refuses any other (the pin here is its SHA-256).
  bool pin_certificate(const char* pem_path);
  int send(const dropsync::HttpRequest& request) override;
  bool header(const char* name, char* out, size_t out_size) override;
  long content_length() override { return content_length_; }
  int read(uint8_t* buffer, size_t length) override;
  void close() override;
  const TlsStats& tls_stats() const { return tls_stats_; }

 private:
  bool write_all(const void* data, size_t length);
  long receive(void* buffer, size_t length);
  bool start_tls();
  int read_head();

  char host_[64] = "";
  int port_ = 0;
  int socket_ = -1;
  bool tls_ = false;
  unsigned char pin_[32] = {};
  bool pinned_ = false;
  ssl_ctx_st* ctx_ = nullptr;
  ssl_st* ssl_ = nullptr;
  ssl_session_st* session_ = nullptr;  // resumed on the next connection, as BearSSL::Session
  bool pinned_connection_ = false;     // this connection's peer matched the pin
  TlsStats tls_stats_;
  char head_[2048];
  size_t head_length_ = 0;
  size_t body_start_ = 0;   // leftover body bytes read with the head: head_[body_start_..]
  long content_length_ = -1;
  long body_read_ = 0;
};

// The flash: littlefs with the ESP8266 wrapper's rules (esp_littlefs.h) under the sketch's
// own glue (dropsync_node/littlefs_storage.h).
using FlashStorage = dropsync_esp::LittleFsStorageOver<EspLittleFs, EspFsFile>;

class HostClock : public dropsync::Clock {
 public:
  // start_ms: what millis() answers at start (a test plays a node up for 49.7 days).
  explicit HostClock(uint32_t start_ms = 0);
  uint32_t millis() override;
  void sleep_ms(uint32_t ms) override;
  void yield_now() override {}
  uint32_t random32() override;

 private:
  uint64_t started_;
  uint32_t start_ms_;
  uint64_t state_;
};

class HostFirmwareSink : public dropsync::FirmwareSink {
 public:
  explicit HostFirmwareSink(const char* path) : path_(path) {}
  // The public key (PEM) images must be signed with, in the ESP8266 core's format
  // (image | RSA PKCS#1 v1.5 signature over its SHA-256 | uint32 length), as a node's
  // Update with an installed SigningVerifier checks them. Unset: not checked.
  bool require_signature(const char* public_key_pem_path);
  bool begin(uint32_t size, const char* md5_hex) override;
  bool write(const uint8_t* data, size_t length) override;
  bool end() override;
  void abort() override;
  const char* refusal() override { return refusal_; }

 private:
  bool signature_verifies();
  const char* path_;
  evp_pkey_st* key_ = nullptr;
  const char* refusal_ = nullptr;
  int fd_ = -1;
  uint32_t expected_ = 0;
  uint32_t written_ = 0;
};

class HostBoard : public dropsync::Board {
 public:
  HostBoard(const char* version, EspLittleFs& flash, HostFirmwareSink* sink)
      : version_(version), flash_(flash), sink_(sink) {}
  const char* firmware_version() override { return version_; }
  uint32_t free_heap() override;
  int rssi() override { return -55; }
  void local_ip(char* out, size_t out_size) override;
  void restart() override;
  dropsync::FirmwareSink* firmware_sink() override { return sink_; }
  void log(const char* line) override;
  void extra_heartbeat(dropsync::JsonWriter& out) override { out.field("board", "host"); }

 private:
  const char* version_;
  EspLittleFs& flash_;
  HostFirmwareSink* sink_;
};

// The counting allocator (counting_alloc.cpp): bytes in use now and at most.
size_t heap_in_use();
size_t heap_peak();
void heap_reset_peak();

#endif
