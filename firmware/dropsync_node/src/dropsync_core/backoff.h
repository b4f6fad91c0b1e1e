// Capped exponential backoff with jitter, so a fleet that lost its hub does not come back
// in step: attempt n waits d = min(cap, base * 2^n), less a random part of up to d / 4.
// Before the cap each wait is longer than the one before (3/4 of 2d exceeds d).
#ifndef DROPSYNC_CORE_BACKOFF_H
#define DROPSYNC_CORE_BACKOFF_H

#include <stdint.h>

namespace dropsync {

class Backoff {
 public:
  Backoff(uint32_t base_ms, uint32_t cap_ms) : base_ms_(base_ms), cap_ms_(cap_ms) {}
  // The wait before the next try; `random` comes from Clock::random32().
  uint32_t next_delay_ms(uint32_t random);
  void reset() { attempt_ = 0; }
  uint32_t attempts() const { return attempt_; }
  void configure(uint32_t base_ms, uint32_t cap_ms) { base_ms_ = base_ms; cap_ms_ = cap_ms; }

 private:
  uint32_t base_ms_;
  uint32_t cap_ms_;
  uint32_t attempt_ = 0;
};

}  // namespace dropsync

#endif
