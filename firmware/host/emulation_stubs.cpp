// Hardware calls the ESP8266 core's host emulation (tests/host/common/MockEsp.cpp) does
// not provide, for emulate.sh only: RTC user memory kept in RAM, the RNG from rand(),
// and the sketch MD5 from $SKETCH_MD5 (zeros when unset), to play a node that already
// runs the staged image.
#include <Esp.h>
#include <stdlib.h>
#include <string.h>

static uint32_t rtc_memory[128];

bool EspClass::rtcUserMemoryRead(uint32_t offset, uint32_t* data, size_t size) {
  if (offset * 4 + size > sizeof(rtc_memory)) return false;
  memcpy(data, reinterpret_cast<uint8_t*>(rtc_memory) + offset * 4, size);
  return true;
}

bool EspClass::rtcUserMemoryWrite(uint32_t offset, uint32_t* data, size_t size) {
  if (offset * 4 + size > sizeof(rtc_memory)) return false;
  memcpy(reinterpret_cast<uint8_t*>(rtc_memory) + offset * 4, data, size);
  return true;
}

uint32_t EspClass::random() { return static_cast<uint32_t>(rand()); }

String EspClass::getSketchMD5() {
  const char* md5 = getenv("SKETCH_MD5");
  return String(md5 ? md5 : "00000000000000000000000000000000");
}
