#include "host_platform.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "dropsync_core/hub_client.h"
#include "dropsync_core/text.h"

using dropsync::copy_text;
using dropsync::append_text;

// -- HTTP over POSIX sockets (HTTP/1.0: one request per connection, no chunked bodies) ----
PosixTransport::~PosixTransport() {
  close();
  if (session_) SSL_SESSION_free(session_);
  if (ctx_) SSL_CTX_free(ctx_);
}

bool PosixTransport::configure(const char* base) {
  const char* p = base;
  if (strncmp(p, "http://", 7) == 0) p += 7;
  if (strncmp(p, "https://", 8) == 0) {
    p += 8;
    tls_ = true;
    ctx_ = SSL_CTX_new(TLS_client_method());
    if (!ctx_) return false;
    SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION);
    // The pin decides, not a chain to a CA (a hub's certificate is its own, self-signed).
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_NONE, nullptr);
    SSL_CTX_set_session_cache_mode(ctx_, SSL_SESS_CACHE_CLIENT);
  }
  const char* colon = strchr(p, ':');
  if (!colon || colon - p >= static_cast<long>(sizeof(host_))) return false;
  memcpy(host_, p, colon - p);
  host_[colon - p] = '\0';
  port_ = atoi(colon + 1);
  return port_ > 0;
}

bool PosixTransport::pin_certificate(const char* pem_path) {
  FILE* file = fopen(pem_path, "r");
  if (!file) return false;
  X509* certificate = PEM_read_X509(file, nullptr, nullptr, nullptr);
  fclose(file);
  if (!certificate) return false;
  unsigned int length = 0;
  pinned_ = X509_digest(certificate, EVP_sha256(), pin_, &length) == 1 && length == 32;
  X509_free(certificate);
  return pinned_;
}

// The handshake, then the pin: any certificate but the pinned one ends the connection.
bool PosixTransport::start_tls() {
  ssl_ = SSL_new(ctx_);
  if (!ssl_ || SSL_set_fd(ssl_, socket_) != 1) return false;
  if (session_) SSL_set_session(ssl_, session_);
  timespec started{};
  clock_gettime(CLOCK_MONOTONIC, &started);
  int shaken = SSL_connect(ssl_);
  timespec ended{};
  clock_gettime(CLOCK_MONOTONIC, &ended);
  if (shaken != 1) {
    fprintf(stderr, "tls: handshake with %s:%d failed\n", host_, port_);
    return false;
  }
  tls_stats_.handshakes++;
  if (SSL_session_reused(ssl_)) tls_stats_.resumed++;
  tls_stats_.handshake_ms += (ended.tv_sec - started.tv_sec) * 1e3 +
                             (ended.tv_nsec - started.tv_nsec) / 1e6;
  X509* presented = SSL_get1_peer_certificate(ssl_);
  unsigned char digest[32];
  unsigned int length = 0;
  bool matches = presented && X509_digest(presented, EVP_sha256(), digest, &length) == 1 &&
                 length == 32 && pinned_ && memcmp(digest, pin_, 32) == 0;
  X509_free(presented);
  if (!matches) {
    fprintf(stderr, "tls: %s:%d presented a certificate that is not the pinned one\n",
            host_, port_);
    if (session_) SSL_SESSION_free(session_);
    session_ = nullptr;  // never resume a session with an unpinned peer
    return false;
  }
  pinned_connection_ = true;
  return true;
}

bool PosixTransport::write_all(const void* data, size_t length) {
  const char* p = static_cast<const char*>(data);
  while (length) {
    ssize_t n = ssl_ ? SSL_write(ssl_, p, static_cast<int>(length))
                     : ::send(socket_, p, length, MSG_NOSIGNAL);
    if (n <= 0) return false;
    p += n;
    length -= static_cast<size_t>(n);
  }
  return true;
}

long PosixTransport::receive(void* buffer, size_t length) {
  if (!ssl_) return recv(socket_, buffer, length, 0);
  int n = SSL_read(ssl_, buffer, static_cast<int>(length));
  if (n > 0) return n;
  // a hub that closes after the answer ends the TLS stream cleanly (or just the socket)
  int error = SSL_get_error(ssl_, n);
  return error == SSL_ERROR_ZERO_RETURN || error == SSL_ERROR_SYSCALL ? 0 : -1;
}

int PosixTransport::send(const dropsync::HttpRequest& request) {
  close();
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port_));
  if (inet_pton(AF_INET, host_, &address.sin_addr) != 1) return -2;
  socket_ = socket(AF_INET, SOCK_STREAM, 0);
  if (socket_ < 0) return -3;
  timeval timeout{10, 0};
  setsockopt(socket_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(socket_, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  if (connect(socket_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    close();
    return dropsync::kUnreachable;
  }
  if (tls_ && !start_tls()) {
    close();
    return dropsync::kUnreachable;
  }
  long body_length = request.body_source ? request.body_source->size()
                                         : static_cast<long>(request.body_length);
  char head[1024];
  snprintf(head, sizeof(head), "%s %s HTTP/1.0\r\nHost: %s:%d\r\nUser-Agent: dropsync-host\r\n",
           request.method, request.path, host_, port_);
  for (size_t i = 0; i < request.header_count; i++) {
    if (!request.headers[i].value[0]) continue;
    append_text(head, sizeof(head), request.headers[i].name);
    append_text(head, sizeof(head), ": ");
    append_text(head, sizeof(head), request.headers[i].value);
    append_text(head, sizeof(head), "\r\n");
  }
  if (request.content_type) {
    append_text(head, sizeof(head), "Content-Type: ");
    append_text(head, sizeof(head), request.content_type);
    append_text(head, sizeof(head), "\r\n");
  }
  if (strcmp(request.method, "GET") != 0) {
    char line[48];
    snprintf(line, sizeof(line), "Content-Length: %ld\r\n", body_length);
    append_text(head, sizeof(head), line);
  }
  append_text(head, sizeof(head), "\r\n");
  bool ok = write_all(head, strlen(head));
  if (ok && request.body) ok = write_all(request.body, request.body_length);
  if (ok && request.body_source) {
    uint8_t piece[512];
    int n;
    while (ok && (n = request.body_source->read(piece, sizeof(piece))) > 0) {
      ok = write_all(piece, static_cast<size_t>(n));
    }
  }
  if (!ok) {
    close();
    return dropsync::kUnreachable;
  }
  return read_head();
}

int PosixTransport::read_head() {
  head_length_ = body_start_ = 0;
  content_length_ = -1;
  body_read_ = 0;
  for (;;) {
    if (head_length_ + 1 >= sizeof(head_)) break;
    long n = receive(head_ + head_length_, sizeof(head_) - 1 - head_length_);
    if (n <= 0) break;
    head_length_ += static_cast<size_t>(n);
    head_[head_length_] = '\0';
    char* end = strstr(head_, "\r\n\r\n");
    if (end) {
      body_start_ = static_cast<size_t>(end - head_) + 4;
      break;
    }
  }
  if (!body_start_ || strncmp(head_, "HTTP/1.", 7) != 0) {
    close();
    return dropsync::kUnreachable;
  }
  char length[24];
  if (header("Content-Length", length, sizeof(length))) content_length_ = atol(length);
  return atoi(head_ + 9);
}

bool PosixTransport::header(const char* name, char* out, size_t out_size) {
  if (!body_start_) return false;
  size_t name_length = strlen(name);
  const char* line = strstr(head_, "\r\n");
  while (line && line < head_ + body_start_ - 4) {
    line += 2;
    if (strncasecmp(line, name, name_length) == 0 && line[name_length] == ':') {
      const char* value = line + name_length + 1;
      while (*value == ' ') value++;
      const char* end = strstr(value, "\r\n");
      size_t length = static_cast<size_t>(end - value);
      if (length >= out_size) length = out_size - 1;
      memcpy(out, value, length);
      out[length] = '\0';
      return true;
    }
    line = strstr(line, "\r\n");
  }
  return false;
}

int PosixTransport::read(uint8_t* buffer, size_t length) {
  if (socket_ < 0) return -1;
  if (content_length_ >= 0 && body_read_ >= content_length_) return 0;
  if (content_length_ >= 0 && static_cast<long>(length) > content_length_ - body_read_) {
    length = static_cast<size_t>(content_length_ - body_read_);
  }
  if (body_start_ < head_length_) {  // body bytes that came with the head
    size_t left = head_length_ - body_start_;
    size_t n = left < length ? left : length;
    memcpy(buffer, head_ + body_start_, n);
    body_start_ += n;
    body_read_ += static_cast<long>(n);
    return static_cast<int>(n);
  }
  long n = receive(buffer, length);
  if (n < 0) return -1;
  if (n == 0 && content_length_ >= 0) return -1;  // closed before the announced end
  body_read_ += n;
  return static_cast<int>(n);
}

void PosixTransport::close() {
  if (ssl_) {
    if (pinned_connection_) {  // TLS 1.3 tickets come after the handshake: keep it now
      SSL_SESSION* session = SSL_get1_session(ssl_);
      if (session && SSL_SESSION_is_resumable(session)) {
        if (session_) SSL_SESSION_free(session_);
        session_ = session;
      } else if (session) {
        SSL_SESSION_free(session);
      }
    }
    pinned_connection_ = false;
    BIO* wire = SSL_get_rbio(ssl_);
    tls_stats_.wire_received += BIO_number_read(wire);
    tls_stats_.wire_sent += BIO_number_written(wire);
    SSL_shutdown(ssl_);  // close_notify, not waiting for the hub's
    SSL_free(ssl_);
    ssl_ = nullptr;
  }
  if (socket_ >= 0) ::close(socket_);
  socket_ = -1;
}

// -- clock ---------------------------------------------------------------------------------
static uint64_t monotonic_ms() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return now.tv_sec * 1000ULL + now.tv_nsec / 1000000;
}

HostClock::HostClock(uint32_t start_ms) : started_(monotonic_ms()), start_ms_(start_ms) {
  int fd = ::open("/dev/urandom", O_RDONLY);
  state_ = 0x9e3779b97f4a7c15ULL;
  if (fd >= 0) {
    if (::read(fd, &state_, sizeof(state_)) != sizeof(state_)) state_ ^= getpid();
    ::close(fd);
  }
  if (!state_) state_ = 1;
}

uint32_t HostClock::millis() {  // since start, like millis() on a node: wraps at 2^32
  return static_cast<uint32_t>(start_ms_ + (monotonic_ms() - started_));
}

void HostClock::sleep_ms(uint32_t ms) {
  timespec wait{static_cast<time_t>(ms / 1000), static_cast<long>(ms % 1000) * 1000000L};
  nanosleep(&wait, nullptr);
}

uint32_t HostClock::random32() {  // xorshift64*
  state_ ^= state_ >> 12;
  state_ ^= state_ << 25;
  state_ ^= state_ >> 27;
  return static_cast<uint32_t>((state_ * 0x2545F4914F6CDD1DULL) >> 32);
}

// -- firmware: written to a file (the host has no second flash slot) -----------------------
bool HostFirmwareSink::require_signature(const char* public_key_pem_path) {
  FILE* file = fopen(public_key_pem_path, "r");
  if (!file) return false;
  key_ = PEM_read_PUBKEY(file, nullptr, nullptr, nullptr);
  fclose(file);
  return key_ != nullptr;
}

bool HostFirmwareSink::begin(uint32_t size, const char*) {
  fd_ = ::open(path_, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  expected_ = size;
  written_ = 0;
  refusal_ = nullptr;
  return fd_ >= 0;
}

bool HostFirmwareSink::write(const uint8_t* data, size_t length) {
  ssize_t n = ::write(fd_, data, length);
  written_ += n > 0 ? static_cast<uint32_t>(n) : 0;
  return n == static_cast<ssize_t>(length);
}

// As the ESP8266 Updater's _verifyEnd: the last 4 bytes give the signature's length, the
// signature precedes them, and it must verify over the image before it.
bool HostFirmwareSink::signature_verifies() {
  uint32_t length = 0;
  if (written_ < 4 || pread(fd_, &length, 4, written_ - 4) != 4) return false;
  if (length == 0 || length > 1024 || length + 4 >= written_) return false;
  uint32_t signed_size = written_ - 4 - length;
  unsigned char signature[1024];
  if (pread(fd_, signature, length, signed_size) != static_cast<ssize_t>(length)) return false;
  EVP_MD_CTX* context = EVP_MD_CTX_new();
  bool ok = context && EVP_DigestVerifyInit(context, nullptr, EVP_sha256(), nullptr, key_) == 1;
  unsigned char block[4096];
  for (uint32_t offset = 0; ok && offset < signed_size;) {
    size_t want = signed_size - offset < sizeof(block) ? signed_size - offset : sizeof(block);
    ssize_t got = pread(fd_, block, want, offset);
    ok = got > 0 && EVP_DigestVerifyUpdate(context, block, static_cast<size_t>(got)) == 1;
    offset += got > 0 ? static_cast<uint32_t>(got) : 0;
  }
  ok = ok && EVP_DigestVerifyFinal(context, signature, length) == 1;
  EVP_MD_CTX_free(context);
  return ok;
}

bool HostFirmwareSink::end() {
  bool complete = written_ == expected_;
  bool signed_ok = !complete || !key_ || signature_verifies();
  ::close(fd_);
  fd_ = -1;
  if (complete && !signed_ok) {
    refusal_ = "signature";
    unlink(path_);  // as Update leaves a refused image unbootable
  }
  return complete && signed_ok;
}

void HostFirmwareSink::abort() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  unlink(path_);
}

// -- board ---------------------------------------------------------------------------------
uint32_t HostBoard::free_heap() {
  const size_t kEsp8266FreeHeap = 50 * 1024;  // what an ESP8266 has with WiFi up
  size_t used = heap_in_use();
  return used < kEsp8266FreeHeap ? static_cast<uint32_t>(kEsp8266FreeHeap - used) : 0;
}

void HostBoard::local_ip(char* out, size_t out_size) { copy_text(out, out_size, "127.0.0.1"); }

void HostBoard::restart() {
  printf("peak_heap_bytes %zu\nrestart requested\n", heap_peak());
  fflush(stdout);
  _exit(3);
}

void HostBoard::log(const char* line) {
  printf("%s\n", line);
  fflush(stdout);
  dropsync_esp::append_log_line<EspLittleFs, EspFsFile>(flash_, line);  // as on a node
}
