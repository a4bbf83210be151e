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
#include <type_traits>
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
// Copies N elements (whole vectors) by vector moves: a packed panel's row. GCC's inline
// memcpy of 64 bytes used four 16-byte moves.
template <class T, int64_t N>
inline void copy_vectors(T* dst, const T* src) {
  static_assert(N % kLanes<T> == 0, "whole vectors");
#pragma GCC unroll 8
  for (int64_t v = 0; v < N; v += kLanes<T>) storeu(dst + v, loadu(src + v));
}
// NaN-propagating clamp: comparisons with NaN are false, so NaN passes through.
// On x86 one max and one min: (v)maxps a, b gives b where either is NaN, so x
// goes second. (Two instructions instead of two compares and two blends; the
// sigmoid and tanh clamp their inputs, and the LSTM's step epilogue took 13%
// less time for it, measured on Zen 3.)
template <class T>
inline Vec<T> clamp(Vec<T> x, T lo, T hi) {
#if PYRNN_VBYTES == 64 && defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>)
    return (Vec<T>)_mm512_min_ps((__m512)bcast(hi), _mm512_max_ps((__m512)bcast(lo), (__m512)x));
#elif PYRNN_VBYTES == 32 && defined(__AVX__)
  if constexpr (std::is_same_v<T, float>)
    return (Vec<T>)_mm256_min_ps((__m256)bcast(hi), _mm256_max_ps((__m256)bcast(lo), (__m256)x));
#endif
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

// n/d for d >= 1 (finite or NaN), the quotients of sigmoid and tanh.
// - AVX-512: the hardware reciprocal estimate (14 bits) and one Newton step
//   (about 1-2 ulp: the sigmoid 2.1 ulp at most, at x = 7.53), three
//   instructions on the FMA units.
// - AVX2: a division. It runs on its own unit beside the FMAs, where the
//   12-bit estimate needs two Newton steps on the FMA units: measured on
//   Zen 3, sigmoid 14.1 cycles per vector against 17.2, tanh 9.9 against 12.9.
// - Portable: a division.
PYRNN_INLINE Vec<float> div_ge1(Vec<float> n, Vec<float> d) {
#if PYRNN_VBYTES == 64 && defined(__AVX512F__)
  Vec<float> r = (Vec<float>)_mm512_rcp14_ps((__m512)d);
  return n * (r * (2.0f - d * r));
#else
  return n / d;
#endif
}

// ---- float: exp and sigmoid Cephes-style (about 1-2 ulp), tanh rational ----
//
// exp: n = round(x log2 e), r = x - n ln2 in two parts, degree-6 polynomial,
// scaled by 2^n. The input is clamped so that exp stays finite (~2e38 at
// most), and below: the AVX2 and portable paths to keep n in the normal
// range, the AVX-512 path to keep the reduction finite.

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
  // results below the normal range smoothly to 0 (e^-104 rounds to 0). The
  // bottom clamp keeps the reduction finite: at x = -1e30, r = x - n ln2 lost
  // all precision, e^r overflowed to inf, and inf * 2^n gave a NaN sigmoid(1e30).
  x = clamp(x, -104.0f, 88.3f);  // NaN passes
  Vec<float> nf = (Vec<float>)_mm512_roundscale_ps((__m512)(x * 1.44269504088896341f), _MM_FROUND_TO_NEAREST_INT);
  return (Vec<float>)_mm512_scalef_ps((__m512)exp_reduced(x, nf), (__m512)nf);
#else
  // 2^n through the exponent bits: exp saturates to ~1e-38 at the bottom.
  using VI = VecOf<float>::itype;
  x = clamp(x, -87.3f, 88.3f);
#if PYRNN_VBYTES == 32 && defined(__AVX__)
  // n rounded to nearest by vroundps (one instruction where the portable form
  // takes a compare, a blend, an add and two conversions): sigmoid 4.09 -> 3.48
  // ns per vector on Zen 3, the same results but at exact ties of x log2 e.
  Vec<float> nf = (Vec<float>)_mm256_round_ps((__m256)(x * 1.44269504088896341f),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  VI n = __builtin_convertvector(nf, VI);
  Vec<float> p = exp_reduced(x, nf);
#else
  Vec<float> half = x < bcast(0.0f) ? bcast(-0.5f) : bcast(0.5f);
  VI n = __builtin_convertvector(x * 1.44269504088896341f + half, VI);
  Vec<float> p = exp_reduced(x, __builtin_convertvector(n, Vec<float>));
#endif
  VI bits = (n + 127) << 23;
  Vec<float> scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
#endif
}

// Below -88.72, e^-x is beyond float and the sigmoid rounds to 0 (libm's and torch's float32 do):
// exactly 0 here too, where the clamped exp would leave ~4.5e-39, whose derivative times a huge
// input gave O(1) gradients where torch's are 0 (NaN passes the compare).
PYRNN_INLINE Vec<float> sigmoid(Vec<float> x) {
  const Vec<float> y = div_ge1(bcast(1.0f), 1.0f + exp_approx(-x));
  return x < bcast(-88.7228f) ? Vec<float>{} : y;
}

// tanh(x) = x P(x^2) / Q(x^2) on |x| <= 9 (beyond, tanh is 1 in float to
// within 3e-8), P and Q of degree 4, fitted for relative error by
// bench/fit_tanh.py (2.9e-8 in exact arithmetic; tests/test_functional.py
// checks the float result).
// - Accuracy, over every other float in [-12, 12]: at most 5.5 ulp with FMAs
//   and 6.4 without (the portable level on x86-64), 3.3e-7 and 3.8e-7
//   absolute, near |x| = 7-8.5 where tanh is within 1e-6 of 1. The exp-based
//   form it replaced (1 - 2/(e^2x + 1), with a polynomial near 0, both
//   computed and blended) was within 1.6 ulp.
// - Speed: 2.7x faster (Zen 3, AVX2: 9.9 cycles per vector against 27.1).
//   The LSTM's step epilogue takes two tanh and three sigmoids per vector of
//   units; a replica of it (B=50, H=128) took 44.0 ns per vector before, 25.5
//   with this tanh and the sigmoid's division.
// - The clamps keep NaN, take +-inf to +-1, and keep |tanh| <= 1 (1 - y^2 is
//   the derivative backward uses).
PYRNN_INLINE Vec<float> tanh_approx(Vec<float> x) {
  const Vec<float> a = clamp(x, -9.0f, 9.0f), s = a * a;
  Vec<float> p = bcast(1.336763433e-08f);
  p = p * s + 2.061711718e-05f;
  p = p * s + 3.496022053e-03f;
  p = p * s + 1.338137437e-01f;
  p = p * s + 9.999999778e-01f;
  Vec<float> q = bcast(7.781470438e-07f);
  q = q * s + 3.286381921e-04f;
  q = q * s + 2.587858050e-02f;
  q = q * s + 4.671468964e-01f;
  q = q * s + 1.0f;
  return clamp(div_ge1(a * p, q), -1.0f, 1.0f);
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
