// Counts every heap allocation of the host client (operator new/delete, and the core's own
// malloc/free through the linker's --wrap), so a test can assert the peak an ESP8266
// would need. Each block carries its size in a 16-byte header.
#include <stddef.h>
#include <stdlib.h>

#include <new>

extern "C" void* __real_malloc(size_t size);
extern "C" void __real_free(void* pointer);

namespace {
size_t in_use = 0;
size_t peak = 0;
const size_t kHeader = 16;

void* counted_alloc(size_t size) {
  unsigned char* block = static_cast<unsigned char*>(__real_malloc(size + kHeader));
  if (!block) return nullptr;
  *reinterpret_cast<size_t*>(block) = size;
  in_use += size;
  if (in_use > peak) peak = in_use;
  return block + kHeader;
}

void counted_free(void* pointer) {
  if (!pointer) return;
  unsigned char* block = static_cast<unsigned char*>(pointer) - kHeader;
  in_use -= *reinterpret_cast<size_t*>(block);
  __real_free(block);
}
}  // namespace

size_t heap_in_use() { return in_use; }
size_t heap_peak() { return peak; }
void heap_reset_peak() { peak = in_use; }

extern "C" void* __wrap_malloc(size_t size) { return counted_alloc(size); }
extern "C" void __wrap_free(void* pointer) { counted_free(pointer); }

void* operator new(size_t size) {
  void* pointer = counted_alloc(size);
  if (!pointer) abort();
  return pointer;
}
void* operator new[](size_t size) { return operator new(size); }
void operator delete(void* pointer) noexcept { counted_free(pointer); }
void operator delete[](void* pointer) noexcept { counted_free(pointer); }
void operator delete(void* pointer, size_t) noexcept { counted_free(pointer); }
void operator delete[](void* pointer, size_t) noexcept { counted_free(pointer); }
