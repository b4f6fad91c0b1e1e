// The four small interfaces the protocol core runs on: HTTP transport, file storage,
// clock and hashing (plus what a board reports about itself). The sketch implements them
// with ESP8266HTTPClient/HTTPClient, LittleFS, millis() and bearssl/mbedtls; the host client
// (firmware/host) with POSIX sockets, a folder and its own SHA-256.
//
// Plain C++: no Arduino header, no STL, no exceptions, no RTTI, so the same code builds
// with g++ on Linux and with xtensa-lx106-elf-g++ for the ESP8266.
#ifndef DROPSYNC_CORE_PLATFORM_H
#define DROPSYNC_CORE_PLATFORM_H

#include <stddef.h>
#include <stdint.h>

namespace dropsync {

struct Header {
  const char* name;
  const char* value;
};

// A request body read piece by piece (an upload streamed from flash).
class BodySource {
 public:
  virtual long size() = 0;
  virtual int read(uint8_t* buffer, size_t length) = 0;  // 0 at the end, < 0 on error
 protected:
  ~BodySource() {}
};

struct HttpRequest {
  const char* method = "GET";
  const char* path = "/";  // below the hub's base URL, e.g. /api/v1/device/ping/esp001
  const Header* headers = nullptr;
  size_t header_count = 0;
  const char* content_type = nullptr;
  const uint8_t* body = nullptr;
  size_t body_length = 0;
  BodySource* body_source = nullptr;  // instead of body, for large uploads
};

// Response headers the core reads; a transport must collect at least these.
// (ESP8266HTTPClient only keeps the headers named before the request.)
extern const char* const kCollectedHeaders[];
extern const size_t kCollectedHeaderCount;

// One request at a time: send(), then header()/read() the answer, then close().
class HttpTransport {
 public:
  // Sends the request; answers the HTTP status, or a negative number when the hub could
  // not be reached (connection refused, timeout, DNS...).
  virtual int send(const HttpRequest& request) = 0;
  // Copies a response header (case-insensitive name) into out; false when absent.
  virtual bool header(const char* name, char* out, size_t out_size) = 0;
  // The announced body length, or -1 when unknown.
  virtual long content_length() = 0;
  // Reads body bytes: the count read, 0 at the end, < 0 on error.
  virtual int read(uint8_t* buffer, size_t length) = 0;
  virtual void close() = 0;
 protected:
  ~HttpTransport() {}
};

enum class OpenMode : uint8_t {
  kRead,
  kWrite,   // create or truncate
  kAppend,  // create, write at the end
  kUpdate,  // existing file, read and write from the start without truncating
};

class File {
 public:
  virtual int read(uint8_t* buffer, size_t length) = 0;  // 0 at the end
  virtual int write(const uint8_t* data, size_t length) = 0;
  virtual bool seek(uint32_t position) = 0;
  virtual uint32_t size() = 0;
  virtual bool flush() = 0;  // on flash: really written before it returns
  virtual void close() = 0;  // the File must not be used afterwards
 protected:
  ~File() {}
};

// A flash file system (LittleFS on the node, a folder on the host). Paths start with '/'.
class Storage {
 public:
  // A file from a small fixed pool, or nullptr (missing, or the pool is exhausted).
  virtual File* open(const char* path, OpenMode mode) = 0;
  virtual bool exists(const char* path) = 0;
  virtual bool remove(const char* path) = 0;
  virtual bool rename(const char* from, const char* to) = 0;  // replaces `to`
  virtual bool make_dirs(const char* path) = 0;               // every folder of a file path
  virtual long file_size(const char* path) = 0;               // -1 when missing
 protected:
  ~Storage() {}
};

class Clock {
 public:
  virtual uint32_t millis() = 0;
  virtual void sleep_ms(uint32_t ms) = 0;
  // Called inside long loops (downloads) so the ESP8266's WiFi stack and watchdog run.
  virtual void yield_now() = 0;
  // A source of randomness for backoff jitter (the ESP's hardware RNG, /dev/urandom).
  virtual uint32_t random32() = 0;
 protected:
  ~Clock() {}
};

// Incremental SHA-256 (bearssl on ESP8266, mbedtls on ESP32, firmware/host/sha256.cpp).
class Sha256 {
 public:
  virtual void begin() = 0;
  virtual void update(const uint8_t* data, size_t length) = 0;
  virtual void finish(uint8_t digest[32]) = 0;
 protected:
  ~Sha256() {}
};

// Streams a firmware image into the platform's Update (which checks the MD5).
class FirmwareSink {
 public:
  virtual bool begin(uint32_t size, const char* md5_hex) = 0;
  virtual bool write(const uint8_t* data, size_t length) = 0;
  virtual bool end() = 0;  // false when the image is incomplete or its MD5 differs
  virtual void abort() = 0;
  // After end() refused: the reason a sync report gives, when the board knows it
  // ("signature": the image's signature did not verify with the key the node holds).
  virtual const char* refusal() { return nullptr; }
 protected:
  ~FirmwareSink() {}
};

// What a board says about itself, and the few things only it can do.
class Board {
 public:
  virtual const char* firmware_version() = 0;
  virtual uint32_t free_heap() = 0;
  virtual int rssi() = 0;                            // dBm, 0 when unknown
  virtual void local_ip(char* out, size_t out_size) = 0;
  virtual void restart() = 0;                        // does not return on a node
  virtual FirmwareSink* firmware_sink() = 0;        // nullptr: no firmware updates
  virtual void log(const char* line) = 0;           // the node's own log (Serial, a file)
  // Extra heartbeat attributes (reset reason, boot-loop count); may write nothing.
  virtual void extra_heartbeat(class JsonWriter& out) { (void)out; }
 protected:
  ~Board() {}
};

}  // namespace dropsync

#endif
