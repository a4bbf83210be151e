// Instruction-set levels and run-time selection.
#pragma once
#include <string>
#include <vector>

namespace pyrnn {

// Ordered from lowest to highest: a level is usable when every lower one is.
// Baseline: the architecture's 16-byte SIMD (SSE2 on x86-64, NEON on aarch64).
enum class Isa : int { Baseline = 0, Avx2 = 1, Avx512 = 2 };

const char* isa_name(Isa isa);

// Highest level this CPU (and OS, for AVX state) supports and this build compiled.
Isa isa_best_supported();

// Levels supported, lowest first.
std::vector<Isa> isa_supported();

// The level kernels use: PYRNN_ISA if set (validated, throws std::invalid_argument
// naming the request and what is supported), otherwise the best supported.
// Read from the environment on every call so tests can switch levels (inside an
// EnvSnapshot on this thread: the value it read).
Isa isa_selected();

// The environment a kernel call from Python reads, read while the caller still
// holds the GIL. The kernels run with the GIL released, and getenv there races
// os.environ's updates in other Python threads (putenv may move the environment
// array: a layer's call segfaulted within a second while another thread set
// variables). The bindings construct one before releasing the GIL: PYRNN_ISA is
// read then (isa_selected() on this thread uses that value until the outermost
// snapshot ends), and the settings read once (PYRNN_PROFILE, PYRNN_CACHE_MB,
// OMP_NUM_THREADS, the cache sizes) are read by then.
// Calls that run without any GIL (XLA's custom calls for pyrnn.jax) take the
// snapshot with kLastRead: PYRNN_ISA as it was last read on any thread (the
// module reads it when imported; pyrnn.jax's trace reads it when it sizes the
// residual), with no getenv.
class EnvSnapshot {
 public:
  enum LastRead { kLastRead };
  EnvSnapshot();
  explicit EnvSnapshot(LastRead);
  ~EnvSnapshot();
  EnvSnapshot(const EnvSnapshot&) = delete;
  EnvSnapshot& operator=(const EnvSnapshot&) = delete;

 private:
  bool outer_;
};

// PYRNN_PROFILE set to something other than "", 0, false, off or no (read once).
bool profile_requested();

// Parses "avx512" | "avx2" | "baseline" (former names "scalar", "portable");
// throws std::invalid_argument.
Isa isa_from_name(const std::string& name);

}  // namespace pyrnn
