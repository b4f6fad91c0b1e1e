// Fuzz driver for the core's JSON reader, built with AddressSanitizer and UBSan (no clang,
// so no libFuzzer here: a deterministic random driver instead, run by pytest).
//
//   fuzz-json random <count> <seed>   random bytes, mutated and truncated hub answers, deep
//                                     nesting, long strings; fed through sources that hand
//                                     out 1..33 bytes at a time. Every input must end in
//                                     kEnd or kError within (length + 2) events, every valid
//                                     seed in kEnd and every cut-short one in kError.
//   fuzz-json verdicts                reads records (4-byte little-endian length, bytes)
//                                     from stdin, prints 1 (a JSON document) or 0 per record,
//                                     for a differential check against Python's json.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dropsync_core/json_reader.h"

using dropsync::ByteSource;
using dropsync::JsonEvent;
using dropsync::JsonReader;

namespace {

uint64_t rng_state = 1;

uint32_t next_random() {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return static_cast<uint32_t>((rng_state * 0x2545F4914F6CDD1DULL) >> 32);
}

// Hands out the input in pieces of random size, as a socket or a flash file would.
class ChoppySource : public ByteSource {
 public:
  ChoppySource(const char* data, size_t length) : data_(data), length_(length) {}
  int read(uint8_t* buffer, size_t length) override {
    size_t piece = 1 + next_random() % 33;
    if (piece > length) piece = length;
    if (piece > length_ - position_) piece = length_ - position_;
    memcpy(buffer, data_ + position_, piece);
    position_ += piece;
    return static_cast<int>(piece);
  }
 private:
  const char* data_;
  size_t length_;
  size_t position_ = 0;
};

// Reads a whole document; answers kEnd or kError. Skips some values, as the core does.
JsonEvent read_all(const char* data, size_t length, bool skipping) {
  ChoppySource source(data, length);
  JsonReader reader(source);
  size_t events = 0;
  for (;;) {
    JsonEvent event = reader.next();
    if (++events > length + 2) {
      fprintf(stderr, "no end after %zu events on %zu bytes\n", events, length);
      abort();
    }
    if (event == JsonEvent::kEnd || event == JsonEvent::kError) return event;
    if (reader.text_length() >= JsonReader::kTextSize) abort();
    long long number;
    if (event == JsonEvent::kNumber) reader.as_int(number);
    if (skipping && event == JsonEvent::kKey && (next_random() & 3) == 0) {
      if (!reader.skip(reader.next())) return reader.next();
    }
  }
}

const char* const kSeeds[] = {
    "{\"commands\":[{\"args\":{\"delay_s\":5,\"path\":\"/log.txt\"},\"attempt\":1,"
    "\"expires_at\":null,\"id\":42,\"lease_s\":60.0,\"name\":\"reboot\",\"priority\":50}],"
    "\"next_poll_s\":30,\"server_time\":1764620000}",
    "{\"device\":\"esp001\",\"files\":[{\"chunk_size\":4096,\"chunks\":13,\"id\":\"1cff6733c9e4\","
    "\"md5\":\"d64f0818aa1d6d1d7a4e6a3e8a1f2c3b\",\"path\":\"config/sensor-00.json\","
    "\"sha256\":\"5267a0433b5f0c6c1c4c3d1f5f1c2b3a4d5e6f708192a3b4c5d6e7f8091a2b3c\","
    "\"size\":50000,\"url\":\"/api/v1/files/download/esp001/1cff6733c9e4/17\",\"version\":17}],"
    "\"version\":3}",
    "{\"error\":{\"code\":\"invalid\",\"message\":\"bad \\\"input\\\"\\n\\u00e9\\ud83d\","
    "\"details\":{\"a\":[1,-2.5e-3,true,false,null,{},[]]}}}",
    "[0,-0,1e5,1E+2,0.25,\"\\/\\\\\\b\\f\\r\\t\",[[[[]]]],{\"\":{}}]",
    "  {\"a\" : [ 1 , 2 ] , \"b\" : \"x\" }  ",
};

const char kAlphabet[] = "{}[]\":,0123456789-+.eE tfnrul\\abxyz";

void check(bool condition, const char* what, const char* input, size_t length) {
  if (condition) return;
  fprintf(stderr, "%s: %.*s\n", what, static_cast<int>(length), input);
  abort();
}

int run_random(long count, uint64_t seed) {
  rng_state = seed ? seed : 1;
  static char input[4096];
  size_t seeds = sizeof(kSeeds) / sizeof(kSeeds[0]);
  long ends = 0, errors = 0;
  // Every seed parses, and every strict prefix of it is an error (all seeds are containers).
  for (size_t s = 0; s < seeds; s++) {
    size_t length = strlen(kSeeds[s]);
    check(read_all(kSeeds[s], length, false) == JsonEvent::kEnd, "seed rejected", kSeeds[s], length);
    check(read_all(kSeeds[s], length, true) == JsonEvent::kEnd, "seed rejected (skipping)",
          kSeeds[s], length);
    for (size_t cut = 0; cut < length; cut++) {
      bool only_space = true;
      for (size_t i = cut; i < length; i++) only_space = only_space && kSeeds[s][i] == ' ';
      if (only_space) continue;
      check(read_all(kSeeds[s], cut, cut & 1) == JsonEvent::kError, "truncated accepted",
            kSeeds[s], cut);
    }
  }
  // Nesting far past the limit, and strings far past the text buffer.
  static const size_t kDepths[] = {15, 16, 17, 1000, 2000};
  for (size_t depth : kDepths) {
    size_t n = 0;
    for (size_t i = 0; i < depth; i++) input[n++] = '[';
    for (size_t i = 0; i < depth; i++) input[n++] = ']';
    JsonEvent got = read_all(input, n, false);
    check(got == (depth <= JsonReader::kMaxDepth ? JsonEvent::kEnd : JsonEvent::kError),
          "nesting limit", input, 40);
  }
  input[0] = '"';
  memset(input + 1, 'x', 3000);
  input[3001] = '"';
  check(read_all(input, 3002, false) == JsonEvent::kEnd, "long string", input, 40);

  for (long round = 0; round < count; round++) {
    size_t length;
    uint32_t kind = next_random() % 3;
    if (kind == 0) {  // random bytes
      length = next_random() % 300;
      for (size_t i = 0; i < length; i++) input[i] = static_cast<char>(next_random());
    } else {  // a seed, mutated (and sometimes cut)
      const char* seed_text = kSeeds[next_random() % seeds];
      length = strlen(seed_text);
      memcpy(input, seed_text, length);
      int mutations = 1 + next_random() % 4;
      for (int m = 0; m < mutations && length > 1 && length < sizeof(input) - 2; m++) {
        size_t at = next_random() % length;
        char c = kind == 1 ? kAlphabet[next_random() % (sizeof(kAlphabet) - 1)]
                           : static_cast<char>(next_random());
        switch (next_random() % 3) {
          case 0: input[at] = c; break;
          case 1: memmove(input + at + 1, input + at, length - at); input[at] = c; length++; break;
          default: memmove(input + at, input + at + 1, length - at - 1); length--; break;
        }
      }
      if (next_random() % 4 == 0) length = next_random() % (length + 1);
    }
    JsonEvent got = read_all(input, length, next_random() & 1);
    if (got == JsonEvent::kEnd) ends++; else errors++;
  }
  printf("inputs %ld documents %ld errors %ld reader_bytes %zu\n", count, ends, errors,
         sizeof(JsonReader));
  return 0;
}

int run_verdicts() {
  static char input[1 << 16];
  uint8_t prefix[4];
  while (fread(prefix, 1, 4, stdin) == 4) {
    size_t length = prefix[0] | (prefix[1] << 8) | (prefix[2] << 16) | (size_t(prefix[3]) << 24);
    if (length > sizeof(input) || fread(input, 1, length, stdin) != length) return 2;
    putchar(read_all(input, length, false) == JsonEvent::kEnd ? '1' : '0');
  }
  putchar('\n');
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 4 && !strcmp(argv[1], "random")) {
    return run_random(atol(argv[2]), strtoull(argv[3], nullptr, 10));
  }
  if (argc >= 2 && !strcmp(argv[1], "verdicts")) return run_verdicts();
  fprintf(stderr, "usage: %s random <count> <seed> | verdicts\n", argv[0]);
  return 2;
}
