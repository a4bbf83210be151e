// pyrnn's thread count and its adaptive choice per call (see pyrnn/threads.h),
// and fork safety of the OpenMP thread pool.
#include "pyrnn/threads.h"

#include "pyrnn/pool.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <exception>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace pyrnn {

namespace {
int default_threads() {
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    char* end = nullptr;
    long n = std::strtol(env, &end, 10);  // "4" or the first entry of "4,2"
    if (end != env && n >= 1) return int(std::min<long>(n, std::numeric_limits<int>::max()));  // (no wrap)
  }
  return omp_get_num_procs();
}

// > 0: fixed count; < 0: adaptive with limit -value.
std::atomic<int>& setting() {
  static std::atomic<int> n{-default_threads()};
  return n;
}

// Per key: the time per unit of work at one thread (arm 0) and at the limit
// (arm 1). The arm in use (`best`) is an average of recent calls; the other
// arm's figure is its latest probe, taken every `interval` calls (8, doubling
// to 256 while the choice holds, or more when probes are costly: see the
// destructor). The first call of each arm is discarded (first-touch page
// faults, cold caches).
struct Arm {
  double per_unit = 0;
  int samples = 0;
};
struct KeyStats {
  Arm arm[2];
  int best = 1, interval = 8;
  int64_t calls = 0, next_probe = 0;
};

struct Table {
  std::mutex mu;
  std::unordered_map<uint64_t, KeyStats> keys;
  int64_t calls_one = 0, calls_limit = 0;
  double timed_seconds = 0;  // the calls' measured time, warm-up calls included
};

Table* the_table = nullptr;

// libgomp's worker threads do not exist in a forked child, but the forking
// thread's pool still lists them: the child's first parallel region waits for
// them forever. omp_pause_resource_all (OpenMP 5.0) ends the calling thread's
// pool before the fork; it is re-created on its next parallel region, in the
// parent and in the child alike, so a child runs with the same threads.
// (Pools of other threads are never used in the child: only the forking
// thread exists there.) The adaptive table's lock is held across the fork so
// that the child never inherits it locked.
void before_fork() {
  omp_pause_resource_all(omp_pause_soft);
  the_table->mu.lock();
}
void after_fork() { the_table->mu.unlock(); }

Table& table() {
  static Table* t = [] {
    the_table = new Table;  // never destroyed: calls may still finish during interpreter shutdown
    // The buffer cache registers its fork handlers first, so that these run
    // before its own (prepare handlers run in reverse order): the pool's
    // threads then end while no pyrnn lock is held.
    (void)pool_stats();
#if defined(__unix__) || defined(__APPLE__)
    pthread_atfork(before_fork, after_fork, after_fork);
#endif
    return the_table;
  }();
  return *t;
}

// Installs the fork handlers when the module loads, not at the first call:
// a process may fork after running kernels only through another entry point.
const bool fork_handlers_installed = (table(), true);

constexpr size_t kMaxKeys = 4096;  // a table this large is cleared (shapes that never repeat)

// The most threads a call uses (computed once: omp_get_num_procs is a system call).
const int max_call_threads = std::max(64, 4 * omp_get_num_procs());
}  // namespace

int get_num_threads() {
  const int n = setting().load();
  // At most max(64, 4 x cores): libgomp ends the process when it cannot create a region's threads
  // (set_num_threads(1000) under a memory limit), and more threads than cores only wait at barriers.
  // (Not omp_get_max_threads(): torch may share this libgomp, and torch.set_num_threads must not
  // change pyrnn's count.)
  return std::max(1, std::min(n > 0 ? n : -n, max_call_threads));
}

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("num_threads must be a positive integer, got " + std::to_string(n));
  setting().store(n);
}

void set_adaptive_threads() { setting().store(-default_threads()); }

bool threads_adaptive() { return setting().load() < 0; }

ThreadChoice::ThreadChoice(uint64_t key, int limit, double per_step_flops, double units)
    : key_(key_mix(key, uint64_t(limit))), threads_(std::max(1, limit)), arm_(-1), units_(std::max(1.0, units)) {
  if (threads_ == 1) return;
  if (per_step_flops < kMinFlopsPerStepToSplit) {
    threads_ = 1;
    return;
  }
  if (!threads_adaptive()) return;
  Table& t = table();
  {
    std::lock_guard<std::mutex> lock(t.mu);
    if (t.keys.size() >= kMaxKeys) t.keys.clear();
    KeyStats& s = t.keys[key_];
    ++s.calls;
    if (s.arm[0].samples < 2 || s.arm[1].samples < 2) {
      arm_ = s.arm[1].samples <= s.arm[0].samples ? 1 : 0;  // both measured first, the limit first
    } else if (s.calls >= s.next_probe) {
      arm_ = 1 - s.best;
      s.next_probe = s.calls + s.interval;
      s.interval = std::min(256, s.interval * 2);
    } else {
      arm_ = s.best;
    }
    (arm_ ? t.calls_limit : t.calls_one) += 1;
  }
  if (arm_ == 0) threads_ = 1;
  exceptions_ = std::uncaught_exceptions();
  start_ = std::chrono::steady_clock::now();
}

ThreadChoice::~ThreadChoice() {
  if (arm_ < 0 || std::uncaught_exceptions() != exceptions_) return;  // a failed call says nothing of speed
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double per_unit = seconds / units_;
  Table& t = table();
  std::lock_guard<std::mutex> lock(t.mu);
  t.timed_seconds += seconds;
  auto it = t.keys.find(key_);
  if (it == t.keys.end()) return;  // the table was cleared meanwhile
  KeyStats& s = it->second;
  Arm& a = s.arm[arm_];
  if (a.samples == 0) {  // warm-up call
    a.samples = 1;
    return;
  }
  a.samples = std::min(a.samples + 1, 3);  // only 1, 2 and "more" matter
  if (arm_ == s.best && a.samples > 2)
    a.per_unit = 0.75 * a.per_unit + 0.25 * per_unit;
  else
    a.per_unit = per_unit;  // a probe: the latest figure for the arm not in use
  if (s.arm[0].samples < 2 || s.arm[1].samples < 2) return;
  // The first decision takes the faster arm (ties go to one thread: the same
  // speed for half the cores); later, the other arm must be 10% faster, so
  // that noise between calls does not flip the choice back and forth.
  const bool first = s.arm[0].samples + s.arm[1].samples == 4;
  const int other = 1 - s.best;
  const int best = first ? (s.arm[0].per_unit <= s.arm[1].per_unit ? 0 : 1)
                         : (s.arm[other].per_unit < 0.9 * s.arm[s.best].per_unit ? other : s.best);
  if (best != s.best) {
    s.best = best;
    s.interval = 8;
    s.next_probe = s.calls + s.interval;
    return;
  }
  // A probe costs (ratio - 1) calls' time. Under contention a call on the
  // limit can take tens of times longer than on one thread (its threads wait
  // at every step for one that shares a core with another library's spinning
  // threads), so probes are spaced to cost at most ~2% of the time.
  if (first || arm_ != s.best) {
    const double ratio = s.arm[1 - s.best].per_unit / s.arm[s.best].per_unit;
    const auto spacing = int64_t(std::min(1e6, 50.0 * (ratio - 1.0)));
    s.next_probe = std::max(s.next_probe, s.calls + spacing);
  }
}

ThreadStats thread_stats() {
  Table& t = table();
  std::lock_guard<std::mutex> lock(t.mu);
  return ThreadStats{int64_t(t.keys.size()), t.calls_one, t.calls_limit, t.timed_seconds};
}

void reset_thread_stats() {
  Table& t = table();
  std::lock_guard<std::mutex> lock(t.mu);
  t.keys.clear();
  t.calls_one = t.calls_limit = 0;
  t.timed_seconds = 0;
}

}  // namespace pyrnn
