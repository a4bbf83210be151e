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
// Read from the environment on every call so tests can switch levels.
Isa isa_selected();

// Parses "avx512" | "avx2" | "baseline" (former names "scalar", "portable");
// throws std::invalid_argument.
Isa isa_from_name(const std::string& name);

}  // namespace pyrnn
