// SHA-256 for the host build (FIPS 180-4). On a node the core uses bearssl (ESP8266) or
// mbedtls (ESP32) behind the same dropsync::Sha256 interface.
#ifndef DROPSYNC_HOST_SHA256_H
#define DROPSYNC_HOST_SHA256_H

#include "dropsync_core/platform.h"

class HostSha256 : public dropsync::Sha256 {
 public:
  void begin() override;
  void update(const uint8_t* data, size_t length) override;
  void finish(uint8_t digest[32]) override;

 private:
  void block(const uint8_t* data);
  uint32_t state_[8];
  uint64_t bits_ = 0;
  uint8_t buffer_[64];
  size_t used_ = 0;
};

#endif
