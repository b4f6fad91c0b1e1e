// Requests to the hub with the device's credentials, over whatever HttpTransport the
// platform has. Paths are built into one fixed buffer; bodies are read into the caller's.
#ifndef DROPSYNC_CORE_HUB_CLIENT_H
#define DROPSYNC_CORE_HUB_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "platform.h"

namespace dropsync {

// The status of a request that never reached the hub (transport errors are negative too).
const int kUnreachable = -1;

// True for answers that mean "try again later": no answer, 408, 429 and 5xx.
inline bool is_transient(int status) {
  return status < 0 || status == 408 || status == 429 || status >= 500;
}

class HubClient {
 public:
  static const size_t kPathSize = 256;

  HubClient(HttpTransport& transport, const char* device_id, const char* token);

  // Builds "/api/v1/<area>/<route>/<device id><suffix>" into path() and answers it.
  const char* route(const char* area, const char* route, const char* suffix = "");
  char* path() { return path_; }

  // Sends a request for path(); the answer stays open for header() and read_body().
  int get(const Header* extra = nullptr, size_t extra_count = 0);
  // Posts JSON and reads the answer into `answer` (may be null); the request is closed.
  int post_json(const char* json, size_t length, char* answer = nullptr, size_t answer_size = 0);
  int post_stream(const char* content_type, BodySource& body);

  bool header(const char* name, char* out, size_t size) {
    return transport_.header(name, out, size);
  }
  // Reads the rest of the body into buffer (NUL-terminated); false when it did not fit
  // or the connection failed before its end.
  bool read_body(char* buffer, size_t size, size_t& length);
  int read(uint8_t* buffer, size_t length) { return transport_.read(buffer, length); }
  long content_length() { return transport_.content_length(); }
  void close() { transport_.close(); }
  const char* device_id() const { return device_id_; }
  // False when the token did not fit its buffer (it would be sent cut, and refused).
  bool token_fits() const { return token_fits_; }
  static const size_t kMaxToken = 88;
  HttpTransport& transport() { return transport_; }

 private:
  int send(HttpRequest& request, const Header* extra, size_t extra_count);

  HttpTransport& transport_;
  const char* device_id_;
  char authorization_[8 + kMaxToken];  // "Bearer " + the token
  bool token_fits_;
  char path_[kPathSize];
};

}  // namespace dropsync

#endif
