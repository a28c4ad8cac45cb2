// The replaced global operator new and delete of tests/util/host_allocation_counter.h.
#include "tests/util/host_allocation_counter.h"

void* operator new(std::size_t bytes) {
  if (void* p = minitron::testing::counted_allocate(bytes)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t bytes) { return operator new(bytes); }
void* operator new(std::size_t bytes, const std::nothrow_t&) noexcept {
  return minitron::testing::counted_allocate(bytes);
}
void* operator new[](std::size_t bytes, const std::nothrow_t&) noexcept {
  return minitron::testing::counted_allocate(bytes);
}
void operator delete(void* p) noexcept { minitron::testing::counted_free(p); }
void operator delete[](void* p) noexcept { minitron::testing::counted_free(p); }
void operator delete(void* p, std::size_t) noexcept { minitron::testing::counted_free(p); }
void operator delete[](void* p, std::size_t) noexcept { minitron::testing::counted_free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { minitron::testing::counted_free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { minitron::testing::counted_free(p); }
