#include "hub_client.h"

#include "text.h"

namespace dropsync {

const char* const kCollectedHeaders[] = {"ETag", "X-Chunk-SHA256", "Retry-After", "Content-Length"};
const size_t kCollectedHeaderCount = sizeof(kCollectedHeaders) / sizeof(kCollectedHeaders[0]);

HubClient::HubClient(HttpTransport& transport, const char* device_id, const char* token)
    : transport_(transport), device_id_(device_id) {
  copy_text(authorization_, sizeof(authorization_), "Bearer ");
  token_fits_ = append_text(authorization_, sizeof(authorization_), token);
  path_[0] = '\0';
}

const char* HubClient::route(const char* area, const char* route, const char* suffix) {
  copy_text(path_, sizeof(path_), "/api/v1/");
  append_text(path_, sizeof(path_), area);
  append_text(path_, sizeof(path_), "/");
  append_text(path_, sizeof(path_), route);
  append_text(path_, sizeof(path_), "/");
  append_url_encoded(path_, sizeof(path_), device_id_);  // a device id is the user's text
  append_text(path_, sizeof(path_), suffix);
  return path_;
}

int HubClient::send(HttpRequest& request, const Header* extra, size_t extra_count) {
  Header headers[4];
  size_t count = 0;
  headers[count++] = Header{"Authorization", authorization_};
  for (size_t i = 0; i < extra_count && count < 4; i++) headers[count++] = extra[i];
  request.path = path_;
  request.headers = headers;
  request.header_count = count;
  return transport_.send(request);
}

int HubClient::get(const Header* extra, size_t extra_count) {
  HttpRequest request;
  request.method = "GET";
  return send(request, extra, extra_count);
}

int HubClient::post_json(const char* json, size_t length, char* answer, size_t answer_size) {
  HttpRequest request;
  request.method = "POST";
  request.content_type = "application/json";
  request.body = reinterpret_cast<const uint8_t*>(json);
  request.body_length = length;
  int status = send(request, nullptr, 0);
  if (status > 0 && answer) {
    size_t got = 0;
    read_body(answer, answer_size, got);
  }
  transport_.close();
  return status;
}

int HubClient::post_stream(const char* content_type, BodySource& body) {
  HttpRequest request;
  request.method = "POST";
  request.content_type = content_type;
  request.body_source = &body;
  int status = send(request, nullptr, 0);
  transport_.close();
  return status;
}

bool HubClient::read_body(char* buffer, size_t size, size_t& length) {
  length = 0;
  if (size == 0) return false;
  for (;;) {
    if (length + 1 >= size) {  // full: is there more?
      uint8_t extra;
      int got = transport_.read(&extra, 1);
      buffer[length] = '\0';
      return got == 0;
    }
    int got = transport_.read(reinterpret_cast<uint8_t*>(buffer + length), size - 1 - length);
    if (got < 0) {
      buffer[length] = '\0';
      return false;
    }
    if (got == 0) break;
    length += static_cast<size_t>(got);
  }
  buffer[length] = '\0';
  return true;
}

}  // namespace dropsync
