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
#include <sys/mman.h>
#endif
#if defined(_WIN32)
#include <malloc.h>
#endif

namespace pyrnn {

namespace {

// Blocks below this size are left to malloc, whose heap reuses them anyway.
constexpr size_t kMinPooled = size_t(128) << 10;

size_t round_up(size_t bytes) { return (bytes + 63) / 64 * 64; }

// 64-byte aligned blocks (sizes are multiples of 64). Windows' C runtime has no
// std::aligned_alloc: its own pair there (untried here; see pyproject.toml).
//
// Pooled sizes are mappings of their own on Unix (mmap/munmap), so that a block
// the cache drops (its limit, empty_cache) goes back to the system at once. From
// malloc they lay in its heap once glibc had raised its mmap threshold (it does
// on the first free of a large block, NumPy's included), and cached blocks there
// pinned the freed memory between them: measured, the default 1 GiB limit left
// RSS 1.3-2.2 GiB above the start after calls of many shapes, and empty_cache()
// returned under half of it.
void* aligned_block(size_t bytes) {
#if defined(__unix__) || defined(__APPLE__)
  if (bytes >= kMinPooled) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
  }
#endif
#if defined(_WIN32)
  return _aligned_malloc(bytes, 64);
#else
  return std::aligned_alloc(64, bytes);
#endif
}

// `bytes`: the size the block was allocated with.
void free_block(void* ptr, size_t bytes) {
#if defined(__unix__) || defined(__APPLE__)
  if (bytes >= kMinPooled) {
    munmap(ptr, bytes);
    return;
  }
#endif
  (void)bytes;
#if defined(_WIN32)
  _aligned_free(ptr);
#else
  std::free(ptr);
#endif
}

size_t default_limit() {
  // PYRNN_CACHE_MB: MiB, fractions allowed; values that do not parse as a
  // number >= 0 keep the default (pyrnn.set_cache_limit checks its argument).
  if (const char* env = std::getenv("PYRNN_CACHE_MB")) {
    char* end = nullptr;
    double mb = std::strtod(env, &end);
    while (end && (*end == ' ' || *end == '\t')) ++end;  // (leading blanks: strtod skips them)
    if (end != env && *end == '\0' && mb >= 0) return mb >= 1e12 ? size_t(1e12) << 20 : size_t(mb * 1048576.0);
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
      free_block(blocks.front().second, blocks.front().first);
      blocks.pop_front();
    }
  }
};

Pool* the_pool = nullptr;

Pool* make_pool() {
  the_pool = new Pool;  // never destroyed: blocks may come back during interpreter shutdown
#if defined(__unix__) || defined(__APPLE__)
  // fork() while another thread is inside the cache would give the child a
  // locked mutex and possibly a half-updated list: the forking thread takes
  // the lock first (no fork happens with it held), so both sides see a
  // consistent cache, then releases it in the parent and the child.
  pthread_atfork([] { the_pool->mu.lock(); }, [] { the_pool->mu.unlock(); }, [] { the_pool->mu.unlock(); });
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
  void* ptr = aligned_block(bytes);
  if (!ptr && bytes >= kMinPooled) {  // the cached blocks, idle, may be what stands in the way: free them, retry
    Pool& p = pool();
    {
      std::lock_guard<std::mutex> lock(p.mu);
      p.trim(0);
    }
    ptr = aligned_block(bytes);
  }
  if (!ptr) throw std::bad_alloc();
  *size = bytes;
  return ptr;
}

void pool_free(void* ptr, size_t bytes) noexcept {
  if (!ptr) return;
  Pool& p = pool();
  if (bytes < kMinPooled) {
    free_block(ptr, bytes);
    return;
  }
  std::lock_guard<std::mutex> lock(p.mu);
  if (bytes > p.limit) {
    free_block(ptr, bytes);
    return;
  }
  try {
    p.blocks.emplace_back(bytes, ptr);
  } catch (...) {
    free_block(ptr, bytes);
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
