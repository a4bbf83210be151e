// 64-byte aligned, uninitialised storage that only grows. Large blocks come
// from and go back to the process-wide cache (pyrnn/pool.h). A buffer may
// instead borrow caller memory (borrow()): a view it never frees or grows,
// e.g. a training workspace kept in a torch or XLA buffer.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <utility>
#include <vector>

#include "pyrnn/pool.h"

namespace pyrnn {

template <class T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t n) { reserve(n); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& o) noexcept : p_(o.p_), n_(o.n_), bytes_(o.bytes_), borrowed_(o.borrowed_) {
    o.p_ = nullptr, o.n_ = 0, o.bytes_ = 0, o.borrowed_ = false;
  }
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    std::swap(bytes_, o.bytes_);
    std::swap(borrowed_, o.borrowed_);
    return *this;
  }
  ~AlignedBuffer() {
    if (!borrowed_) pool_free(p_, bytes_);
  }

  // Views n elements at p (caller memory, which must outlive the view).
  void borrow(T* p, size_t n) {
    if (!borrowed_) pool_free(p_, bytes_);
    p_ = p, n_ = 0, bytes_ = n * sizeof(T), borrowed_ = true;
  }

  // Grows to at least n elements (a cached block may hold more); the
  // contents are not kept.
  void reserve(size_t n) {
    if (n <= bytes_ / sizeof(T)) {
      n_ = std::max(n_, n);
      return;
    }
    if (borrowed_) throw std::length_error("pyrnn: a borrowed buffer is too small");
    pool_free(p_, bytes_);
    p_ = nullptr;
    n_ = bytes_ = 0;
    p_ = static_cast<T*>(pool_alloc(n * sizeof(T), &bytes_));
    n_ = n;
  }
  void zero(size_t n) {
    reserve(n);
    std::memset(static_cast<void*>(p_), 0, n * sizeof(T));
  }
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }  // elements asked for (the largest reserve)

 private:
  T* p_ = nullptr;
  size_t n_ = 0, bytes_ = 0;
  bool borrowed_ = false;
};

// One buffer of n elements per thread of a parallel region, allocated before
// the region: there a failed allocation is a MemoryError in Python, while a
// std::bad_alloc thrown inside an OpenMP region ends the process.
template <class T>
std::vector<AlignedBuffer<T>> per_thread_buffers(int nthreads, size_t n) {
  std::vector<AlignedBuffer<T>> out(size_t(std::max(nthreads, 1)));
  for (AlignedBuffer<T>& b : out) b.reserve(n);
  return out;
}

}  // namespace pyrnn
