// The block cache behind pool_alloc / pool_free (see pyrnn/pool.h).
#include "pyrnn/pool.h"

#include <cstdlib>
#include <iterator>
#include <list>
#include <mutex>
#include <new>
#include <utility>
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace pyrnn {

namespace {

// Blocks below this size are left to malloc, whose heap reuses them anyway.
constexpr size_t kMinPooled = size_t(128) << 10;

size_t round_up(size_t bytes) { return (bytes + 63) / 64 * 64; }

size_t default_limit() {
  if (const char* env = std::getenv("PYRNN_CACHE_MB")) {
    char* end = nullptr;
    long long mb = std::strtoll(env, &end, 10);
    if (end != env && mb >= 0) return size_t(mb) << 20;
  }
  return size_t(1024) << 20;
}

struct Pool {
  std::mutex mu;
  std::list<std::pair<size_t, void*>> blocks;  // oldest first
  size_t cached = 0, limit = default_limit(), hits = 0, misses = 0;

  // Drops the oldest blocks until `cached` <= target. Caller holds mu.
  void trim(size_t target) {
    while (cached > target && !blocks.empty()) {
      cached -= blocks.front().first;
      std::free(blocks.front().second);
      blocks.pop_front();
    }
  }
};

Pool* the_pool = nullptr;

Pool* make_pool() {
  the_pool = new Pool;  // never destroyed: blocks may come back during interpreter shutdown
#if defined(__unix__) || defined(__APPLE__)
  // A fork while another thread holds the lock would leave the child's copy
  // locked forever; the child starts with a fresh lock.
  pthread_atfork(nullptr, nullptr, [] { new (&the_pool->mu) std::mutex(); });
#endif
  return the_pool;
}

Pool& pool() {
  static Pool* p = make_pool();
  return *p;
}

}  // namespace

void* pool_alloc(size_t bytes, size_t* size) {
  bytes = round_up(bytes == 0 ? 1 : bytes);
  if (bytes >= kMinPooled) {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mu);
    // Best fit among blocks no more than twice the request (a much larger
    // block would hold its surplus idle while in use).
    auto best = p.blocks.end();
    for (auto it = p.blocks.begin(); it != p.blocks.end(); ++it)
      if (it->first >= bytes && it->first <= 2 * bytes && (best == p.blocks.end() || it->first < best->first))
        best = it;
    if (best != p.blocks.end()) {
      void* ptr = best->second;
      *size = best->first;
      p.cached -= best->first;
      p.blocks.erase(best);
      ++p.hits;
      return ptr;
    }
    ++p.misses;
  }
  void* ptr = std::aligned_alloc(64, bytes);
  if (!ptr) throw std::bad_alloc();
  *size = bytes;
  return ptr;
}

void pool_free(void* ptr, size_t bytes) noexcept {
  if (!ptr) return;
  Pool& p = pool();
  if (bytes < kMinPooled) {
    std::free(ptr);
    return;
  }
  std::lock_guard<std::mutex> lock(p.mu);
  if (bytes > p.limit) {
    std::free(ptr);
    return;
  }
  try {
    p.blocks.emplace_back(bytes, ptr);
  } catch (...) {
    std::free(ptr);
    return;
  }
  p.cached += bytes;
  p.trim(p.limit);
}

PoolStats pool_stats() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  return PoolStats{p.cached, p.blocks.size(), p.limit, p.hits, p.misses};
}

void pool_set_limit(size_t bytes) {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  p.limit = bytes;
  p.trim(bytes);
}

void pool_release() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  p.trim(0);
}

}  // namespace pyrnn
