// A process-wide cache of large, 64-byte aligned blocks.
//
// Why: a fresh large allocation is a new mapping, and every 4 KiB page of it
// page-faults on first touch. On a virtual machine each such fault can also
// fault on the host, and at many threads the faults serialise. Measured on a
// 16-core Xeon VM (LSTM B=128 T=50 I=H=1024 fp32, one training step at 16
// threads): 628 ms when every call mapped its buffers afresh, 217 ms when the
// memory was reused. pyrnn's workspaces, scratch and output arrays therefore
// come from here and go back here, up to a cap (PYRNN_CACHE_MB, default 1024;
// 0 disables), so a training loop touches the same pages every iteration.
#pragma once
#include <cstddef>

namespace pyrnn {

// 64-byte aligned, uninitialised, at least `bytes` long; its true size goes
// to *size (give that back to pool_free). Throws std::bad_alloc.
void* pool_alloc(size_t bytes, size_t* size);
// Gives back a block from pool_alloc with the size it reported.
void pool_free(void* p, size_t size) noexcept;

struct PoolStats {
  size_t cached_bytes, cached_blocks, limit_bytes, hits, misses;
};
PoolStats pool_stats();
void pool_set_limit(size_t bytes);  // frees cached blocks beyond the new limit
void pool_release();                // frees every cached block

}  // namespace pyrnn
