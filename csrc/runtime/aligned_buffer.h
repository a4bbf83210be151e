// 64-byte aligned, uninitialised storage that only grows. Large blocks come
// from and go back to the process-wide cache (pyrnn/pool.h).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include "pyrnn/pool.h"

namespace pyrnn {

template <class T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t n) { reserve(n); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& o) noexcept : p_(o.p_), n_(o.n_), bytes_(o.bytes_) {
    o.p_ = nullptr, o.n_ = 0, o.bytes_ = 0;
  }
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~AlignedBuffer() { pool_free(p_, bytes_); }

  // Grows to at least n elements (a cached block may hold more); the
  // contents are not kept.
  void reserve(size_t n) {
    if (n <= bytes_ / sizeof(T)) {
      n_ = std::max(n_, n);
      return;
    }
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
};

}  // namespace pyrnn
