// Run-time ISA detection with CPUID/XGETBV, and the PYRNN_ISA override.
#include "pyrnn/isa.h"

#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

#include "pyrnn/cache.h"
#include "pyrnn/pool.h"
#include "pyrnn/threads.h"

#if defined(PYRNN_HAVE_X86)
#include <cpuid.h>
#endif

namespace pyrnn {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "baseline";
  }
}

namespace {
#if defined(PYRNN_HAVE_X86)
// XCR0 bits the OS must save for the vector state to survive a context switch.
uint64_t xcr0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}

Isa detect() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return Isa::Baseline;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28);
  if (!(fma && osxsave && avx)) return Isa::Baseline;
  const uint64_t xcr = xcr0();
  if ((xcr & 0x6) != 0x6) return Isa::Baseline;  // SSE and AVX state
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return Isa::Baseline;
  const bool avx2 = b & (1u << 5);
  if (!avx2) return Isa::Baseline;
  const bool f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
#if !defined(PYRNN_NO_AVX512)  // (a build without those kernels: CMakeLists.txt)
  if (f && dq && bw && vl && (xcr & 0xE6) == 0xE6) return Isa::Avx512;  // + opmask, ZMM state
#else
  (void)f, (void)dq, (void)bw, (void)vl;
#endif
  return Isa::Avx2;
}
#else
Isa detect() { return Isa::Baseline; }
#endif
}  // namespace

Isa isa_best_supported() {
  static const Isa best = detect();
  return best;
}

std::vector<Isa> isa_supported() {
  std::vector<Isa> out;
  for (int i = 0; i <= int(isa_best_supported()); ++i) out.push_back(Isa(i));
  return out;
}

Isa isa_from_name(const std::string& name) {
  if (name == "avx512") return Isa::Avx512;
  if (name == "avx2") return Isa::Avx2;
  if (name == "baseline" || name == "scalar" || name == "portable") return Isa::Baseline;
  throw std::invalid_argument("PYRNN_ISA must be one of 'avx512', 'avx2', 'baseline', got '" + name + "'");
}

namespace {
thread_local bool t_snapshot = false;  // an EnvSnapshot is alive on this thread
thread_local std::string t_isa_env;    // PYRNN_ISA when it was taken ("" if unset)
}  // namespace

bool profile_requested() {
  static const bool on = [] {
    const char* e = std::getenv("PYRNN_PROFILE");
    if (!e || !*e) return false;
    std::string v(e);
    for (char& ch : v) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    return v != "0" && v != "false" && v != "off" && v != "no";
  }();
  return on;
}

// (Never destroyed: an XLA thread may take a snapshot while the process exits.)
static std::mutex& last_mutex() {
  static std::mutex* m = new std::mutex;
  return *m;
}
static std::string& last_isa_env() {  // (guarded by last_mutex)
  static std::string* s = new std::string;
  return *s;
}

#if defined(__unix__) || defined(__APPLE__)
// pyrnn.jax's custom calls take last_mutex without the GIL, so another thread may hold it at the
// instant of a fork: the child inherited it locked and its first pyrnn call waited forever (16 of
// 10,000 forks while three threads ran jitted calls). The forking thread takes it first, as the
// buffer cache's and the thread table's locks (installed when the module loads).
[[maybe_unused]] static const bool last_mutex_fork_handlers = [] {
  last_mutex();
  pthread_atfork([] { last_mutex().lock(); }, [] { last_mutex().unlock(); }, [] { last_mutex().unlock(); });
  return true;
}();
#endif

EnvSnapshot::EnvSnapshot(LastRead) : outer_(!t_snapshot) {
  if (!outer_) return;
  {
    std::lock_guard<std::mutex> lock(last_mutex());
    t_isa_env = last_isa_env();
  }
  t_snapshot = true;
}

EnvSnapshot::EnvSnapshot() : outer_(!t_snapshot) {
  if (!outer_) return;
  const char* env = std::getenv("PYRNN_ISA");
  t_isa_env = env ? env : "";
  {
    std::lock_guard<std::mutex> lock(last_mutex());
    last_isa_env() = t_isa_env;
  }
  t_snapshot = true;
  // The settings read once at first use: read them now, under the caller's GIL (once per process).
  static const bool read_once = (profile_requested(), (void)get_num_threads(), (void)pool_stats(),
                                 (void)cache_sizes(), true);
  (void)read_once;
}

EnvSnapshot::~EnvSnapshot() {
  if (outer_) t_snapshot = false;
}

Isa isa_selected() {
  std::string env;
  if (t_snapshot) {
    env = t_isa_env;
  } else {  // (a caller holding the GIL, or no Python at all): read, and publish for kLastRead
    if (const char* e = std::getenv("PYRNN_ISA")) env = e;
    std::lock_guard<std::mutex> lock(last_mutex());
    last_isa_env() = env;
  }
  if (env.empty()) return isa_best_supported();
  Isa want = isa_from_name(env);
  if (int(want) > int(isa_best_supported()))
    throw std::invalid_argument(std::string("PYRNN_ISA=") + env + " is not supported by this CPU/build; supported: " +
                                [] {
                                  std::string s;
                                  for (Isa i : isa_supported()) s += std::string(s.empty() ? "" : ", ") + isa_name(i);
                                  return s;
                                }());
  return want;
}

}  // namespace pyrnn
