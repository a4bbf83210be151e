// pyrnn's own thread count, separate from any other OpenMP user in the process.
//
// Two modes:
//  - adaptive (the default): a call may use up to get_num_threads() threads
//    (OMP_NUM_THREADS, else the core count). Each kind of call (ThreadChoice's
//    key: entry point, cell, dtype, shape) is timed at one thread and at the
//    limit, and runs with whichever is faster now, re-checked every so often.
//    In a NumPy loop, NumPy's OpenBLAS threads busy-wait for ~0.1 s after each
//    BLAS call and libgomp's idle threads for ~3 ms after each parallel region;
//    sharing two cores that way, barrier-synchronous steps at 2 threads ran
//    2-3x slower than at 1 (measured: LSTM B=48 H=96 T=24 training loop 17.6
//    vs 6.1 ms/step, B=32 H=256 T=50 117 vs 63 ms/step). Results do not depend
//    on the thread count (bitwise), so the choice only changes speed.
//  - fixed: set_num_threads(n) makes every call use n threads.
#pragma once
#include <chrono>
#include <cstdint>
#include <initializer_list>

namespace pyrnn {

// Most threads a call uses: the fixed count, or the adaptive limit; at most max(64, 4 x the cores).
int get_num_threads();
// Fixed mode with n >= 1 threads; throws std::invalid_argument otherwise.
void set_num_threads(int n);
// Adaptive mode with the default limit (OMP_NUM_THREADS, else the core count).
void set_adaptive_threads();
bool threads_adaptive();

// Steps whose recurrent product is below this many flops always run on one
// thread: a per-step barrier would cost more than the split saves.
constexpr double kMinFlopsPerStepToSplit = 65536;

// Picks the thread count of one call and, in adaptive mode, times it.
// `limit`: the most threads (get_num_threads() read by the caller before it
// released the GIL); `per_step_flops`: below kMinFlopsPerStepToSplit the call
// runs on one thread; `units`: the call's amount of work (rows), so calls of
// one key with different lengths compare per unit.
class ThreadChoice {
 public:
  ThreadChoice(uint64_t key, int limit, double per_step_flops, double units);
  ThreadChoice(const ThreadChoice&) = delete;
  ThreadChoice& operator=(const ThreadChoice&) = delete;
  ~ThreadChoice();  // records the elapsed time (adaptive mode)
  int threads() const { return threads_; }

 private:
  uint64_t key_;
  int threads_, arm_;  // arm_: -1 not timed, 0 one thread, 1 the limit
  int exceptions_ = 0;
  double units_;
  std::chrono::steady_clock::time_point start_;
};

// Mixes a value into a key (FNV-1a style).
constexpr uint64_t key_mix(uint64_t h, uint64_t v) { return (h ^ v) * 1099511628211ULL; }

// A ThreadChoice key from the fields that tell kinds of call apart.
inline uint64_t call_key(std::initializer_list<int64_t> fields) {
  uint64_t h = 14695981039346656037ULL;
  for (int64_t v : fields) h = key_mix(h, uint64_t(v));
  return h;
}

// What the adaptive mode has learned, for tests and diagnostics: number of
// keys, how many calls ran at one thread and at the limit, and the time it
// measured over those calls.
struct ThreadStats {
  int64_t keys = 0, calls_one = 0, calls_limit = 0;
  double timed_seconds = 0;
};
ThreadStats thread_stats();
void reset_thread_stats();

}  // namespace pyrnn
