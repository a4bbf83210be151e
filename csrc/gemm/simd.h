// Vector types and vectorised math for one ISA level.
//
// Included only from an ISA translation unit, which defines
//   PYRNN_ISA_NS  the namespace for this level (avx512, avx2, portable)
//   PYRNN_VBYTES  vector width in bytes (64, 32, 16)
//   PYRNN_NREGS   architectural vector registers (32 or 16)
// and is compiled with that level's flags. Everything here lives in
// pyrnn::PYRNN_ISA_NS so the three copies never meet at link time (an inline
// function compiled with AVX-512 flags must not be picked for the portable path).
//
// GCC/Clang vector extensions lower to the ISA's instructions under each
// TU's flags (and to NEON or scalar code elsewhere), so one source serves all.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

#ifndef PYRNN_ISA_NS
#error "simd.h is included from an ISA translation unit only"
#endif

namespace pyrnn {
namespace PYRNN_ISA_NS {

template <class T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(PYRNN_VBYTES)));
  typedef int32_t itype __attribute__((vector_size(PYRNN_VBYTES)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(PYRNN_VBYTES)));
  typedef int64_t itype __attribute__((vector_size(PYRNN_VBYTES)));
};
template <class T>
using Vec = typename VecOf<T>::type;

// Lanes of one vector of T.
template <class T>
constexpr int kLanes = PYRNN_VBYTES / int(sizeof(T));

template <class T>
inline Vec<T> loadu(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class T>
inline void storeu(T* p, Vec<T> v) {
  std::memcpy(p, &v, sizeof v);
}
// Splat. Written as s - 0 (an identity even for -0.0) so the compiler emits a
// plain broadcast; 0 + s would need a real add (0 + -0.0 is +0.0).
template <class T>
inline Vec<T> bcast(T s) {
  return s - Vec<T>{};
}
// First n (< kLanes) lanes from p, the rest zero.
template <class T>
inline Vec<T> load_first(const T* p, int n) {
  T buf[kLanes<T>] = {};
  std::memcpy(buf, p, sizeof(T) * size_t(n));
  return loadu(buf);
}
template <class T>
inline void store_first(T* p, Vec<T> v, int n) {
  T buf[kLanes<T>];
  storeu(buf, v);
  std::memcpy(p, buf, sizeof(T) * size_t(n));
}
// NaN-propagating clamp: comparisons with NaN are false, so NaN passes through.
template <class T>
inline Vec<T> clamp(Vec<T> x, T lo, T hi) {
  x = x < bcast(lo) ? bcast(lo) : x;
  return x > bcast(hi) ? bcast(hi) : x;
}
template <class T>
inline Vec<T> relu(Vec<T> x) {
  return x < bcast<T>(0) ? bcast<T>(0) : x;  // NaN stays NaN
}

// The element-wise math below runs once per gate value per step inside the
// recurrent GEMM's epilogue, so it is forced inline (out-of-line calls with
// vector arguments cost spills; the LSTM epilogue was ~11% of a B=32 H=256
// forward before).
#define PYRNN_INLINE inline __attribute__((always_inline))

// 1/d for d >= 1 (finite or NaN), the denominators of sigmoid and tanh: the
// hardware reciprocal estimate and one Newton step (about 1 ulp) instead of a
// division, whose throughput is several times lower.
PYRNN_INLINE Vec<float> recip_ge1(Vec<float> d) {
#if PYRNN_VBYTES == 64 && defined(__AVX512F__)
  Vec<float> r = (Vec<float>)_mm512_rcp14_ps((__m512)d);
  return r * (2.0f - d * r);
#elif PYRNN_VBYTES == 32 && defined(__AVX__)
  Vec<float> r = (Vec<float>)_mm256_rcp_ps((__m256)d);
  r = r * (2.0f - d * r);
  return r * (2.0f - d * r);
#else
  return 1.0f / d;
#endif
}

// ---- float: Cephes-style approximations, about 1-2 ulp ----
//
// exp: n = round(x log2 e), r = x - n ln2 in two parts, degree-6 polynomial,
// scaled by 2^n. The input is clamped so that exp stays finite (~2e38 at
// most); the portable path also clamps below, to keep n in the normal range.

// e^r for |r| <= ln2/2, with r = x - nf ln2 reduced in two parts.
PYRNN_INLINE Vec<float> exp_reduced(Vec<float> x, Vec<float> nf) {
  Vec<float> r = x - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  Vec<float> p = bcast(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * (r * r) + r + 1.0f;
}

PYRNN_INLINE Vec<float> exp_approx(Vec<float> x) {
#if PYRNN_VBYTES == 64 && defined(__AVX512F__)
  // AVX-512: n by vrndscaleps and 2^n applied by vscalefps, which also takes
  // results below the normal range smoothly to 0, so only the top is clamped.
  x = x > bcast(88.3f) ? bcast(88.3f) : x;  // NaN passes
  Vec<float> nf = (Vec<float>)_mm512_roundscale_ps((__m512)(x * 1.44269504088896341f), _MM_FROUND_TO_NEAREST_INT);
  return (Vec<float>)_mm512_scalef_ps((__m512)exp_reduced(x, nf), (__m512)nf);
#else
  // 2^n through the exponent bits: exp saturates to ~1e-38 at the bottom.
  using VI = VecOf<float>::itype;
  x = clamp(x, -87.3f, 88.3f);
  Vec<float> half = x < bcast(0.0f) ? bcast(-0.5f) : bcast(0.5f);
  VI n = __builtin_convertvector(x * 1.44269504088896341f + half, VI);
  Vec<float> p = exp_reduced(x, __builtin_convertvector(n, Vec<float>));
  VI bits = (n + 127) << 23;
  Vec<float> scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
#endif
}

PYRNN_INLINE Vec<float> sigmoid(Vec<float> x) { return recip_ge1(1.0f + exp_approx(-x)); }

// tanh: odd polynomial near zero (keeps relative accuracy where 1-2/(e^2x+1)
// would cancel), 1 - 2/(e^{2|x|}+1) elsewhere, with the sign restored.
PYRNN_INLINE Vec<float> tanh_approx(Vec<float> x) {
  using VI = VecOf<float>::itype;
  Vec<float> z = x * x;
  Vec<float> small = bcast(-5.70498872745e-3f);
  small = small * z + 2.06390887954e-2f;
  small = small * z - 5.37397155531e-2f;
  small = small * z + 1.33314422036e-1f;
  small = small * z - 3.33332819422e-1f;
  small = small * z * x + x;
  VI sign_mask = VI{} + int32_t(0x80000000u);
  VI xi;
  std::memcpy(&xi, &x, sizeof xi);
  VI sign = xi & sign_mask;
  VI ai = xi & ~sign_mask;
  Vec<float> a;
  std::memcpy(&a, &ai, sizeof a);
  Vec<float> big = 1.0f - 2.0f * recip_ge1(exp_approx(a + a) + 1.0f);
  VI bigi;
  std::memcpy(&bigi, &big, sizeof bigi);
  bigi |= sign;
  std::memcpy(&big, &bigi, sizeof big);
  return a < bcast(0.625f) ? small : big;
}

// ---- double: lane loops over libm (accuracy first; float64 is the checking dtype) ----
inline Vec<double> sigmoid(Vec<double> x) {
  for (int l = 0; l < kLanes<double>; ++l) x[l] = 1.0 / (1.0 + std::exp(-x[l]));
  return x;
}
inline Vec<double> tanh_approx(Vec<double> x) {
  for (int l = 0; l < kLanes<double>; ++l) x[l] = std::tanh(x[l]);
  return x;
}

}  // namespace PYRNN_ISA_NS
}  // namespace pyrnn
