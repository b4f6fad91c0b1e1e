#include "backoff.h"

namespace dropsync {

uint32_t Backoff::next_delay_ms(uint32_t random) {
  uint32_t delay = base_ms_;
  for (uint32_t i = 0; i < attempt_ && delay < cap_ms_; i++) {
    delay = delay > cap_ms_ / 2 ? cap_ms_ : delay * 2;
  }
  if (delay > cap_ms_) delay = cap_ms_;
  if (attempt_ < 32) attempt_++;
  uint32_t spread = delay / 4;
  return delay - (spread ? random % (spread + 1) : 0);
}

}  // namespace dropsync
