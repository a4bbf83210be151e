// Reduced-precision weights for inference (one ISA level): int8 and bf16
// column panels, and the micro-kernels that multiply fp32 activations by them.
//
// Both start from the fp32 column panels the GEMM uses ([K][NR] each) and keep
// their column order, so a tile comes out as the fp32 kernel's would:
// [m][NR] floats, handed to the same epilogues.
//
// int8 (as torch's quantize_dynamic and ORT's DynamicQuantizeLSTM): each
//   weight column (a row of W) has its own scale, max|w| / 127, and holds
//   round(w / scale) in [-127, 127]. A rows (x, h) are quantised per row and
//   per call or step the same way. The products are summed exactly in int32,
//   then scaled back: tile = acc * (scale_a * scale_w). The panel interleaves
//   k pairs ([ceil(K/2)][NR][2]), so one 16-bit multiply-add (pmaddwd) after
//   sign extension gives each column's two products summed. Integer sums make
//   int8 results identical at every ISA level and thread count.
// bf16: weights rounded to bf16 (nearest even), [K][NR] of the upper 16 bits;
//   widened back to fp32 (a shift) and multiplied by fp32 activations with
//   fp32 accumulation.
//
// What changes is the bytes read per step: a quarter (int8) or a half (bf16)
// of fp32's, which is what bounds small-batch steps.
#pragma once
#include <cmath>
#include <limits>

#include "gemm.h"
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace pyrnn {
namespace PYRNN_ISA_NS {

using VecI32 = VecOf<float>::itype;
typedef int16_t VecI16 __attribute__((vector_size(PYRNN_VBYTES)));
typedef int8_t HalfI8 __attribute__((vector_size(PYRNN_VBYTES / 2)));
typedef uint16_t HalfU16 __attribute__((vector_size(PYRNN_VBYTES / 2)));

template <class V, class S>
PYRNN_INLINE V load_vec(const S* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Adjacent int16 pairs multiplied and summed into int32 lanes (pmaddwd).
PYRNN_INLINE VecI32 madd_pairs(VecI16 a, VecI16 b) {
#if PYRNN_VBYTES == 64 && defined(__AVX512BW__)
  return (VecI32)_mm512_madd_epi16((__m512i)a, (__m512i)b);
#elif PYRNN_VBYTES == 32 && defined(__AVX2__)
  return (VecI32)_mm256_madd_epi16((__m256i)a, (__m256i)b);
#elif PYRNN_VBYTES == 16 && defined(__SSE2__)
  return (VecI32)_mm_madd_epi16((__m128i)a, (__m128i)b);
#else
  VecI32 r;
  for (int l = 0; l < kLanes<float>; ++l)
    r[l] = int32_t(a[2 * l]) * b[2 * l] + int32_t(a[2 * l + 1]) * b[2 * l + 1];
  return r;
#endif
}

// 2*lanes int8 weights (lanes columns x one k pair) sign-extended to int16.
// (GCC lowers __builtin_convertvector here to two half-width extensions and
// an insert; the intrinsic is one vpmovsxbw.)
PYRNN_INLINE VecI16 widen_i8(const int8_t* p) {
#if PYRNN_VBYTES == 64 && defined(__AVX512BW__)
  return (VecI16)_mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#elif PYRNN_VBYTES == 32 && defined(__AVX2__)
  return (VecI16)_mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#elif PYRNN_VBYTES == 16 && defined(__SSE2__)
  const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return (VecI16)_mm_srai_epi16(_mm_unpacklo_epi8(v, v), 8);
#else
  return __builtin_convertvector(load_vec<HalfI8>(p), VecI16);
#endif
}

// lanes bf16 values to fp32.
PYRNN_INLINE Vec<float> widen_bf16(const uint16_t* p) {
#if PYRNN_VBYTES == 64 && defined(__AVX512F__)
  return (Vec<float>)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16);
#elif PYRNN_VBYTES == 32 && defined(__AVX2__)
  return (Vec<float>)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16);
#elif PYRNN_VBYTES == 16 && defined(__SSE2__)
  return (Vec<float>)_mm_unpacklo_epi16(_mm_setzero_si128(), _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
#else
  return (Vec<float>)(__builtin_convertvector(load_vec<HalfU16>(p), VecI32) << 16);
#endif
}

inline uint16_t to_bf16(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if (std::isnan(v)) return uint16_t((u >> 16) | 0x40);  // stays a NaN
  u += 0x7fff + ((u >> 16) & 1);                          // nearest, ties to even
  return uint16_t(u >> 16);
}

// The A rows of one call or step, in the form a precision's kernel reads:
// int8: per row, k pairs as int32 ([n][K2]) and a scale; bf16: the fp32 rows.
struct LowRows {
  int64_t K2 = 0;
  AlignedBuffer<int32_t> pairs;
  AlignedBuffer<float> scale;
  std::vector<const float*> rows;

  const int32_t* pair_row(int64_t i) const { return pairs.data() + i * K2; }

  // Quantises rows [0, n) (int8) or records them (bf16); arow(i) gives row i, K long.
  template <class ARow>
  void prepare(WeightPrecision prec, int64_t n, int64_t K, ARow arow) {
    if (prec == WeightPrecision::BF16) {
      rows.resize(size_t(n));
      for (int64_t i = 0; i < n; ++i) rows[size_t(i)] = arow(i);
      return;
    }
    K2 = (K + 1) / 2;
    pairs.reserve(size_t(std::max<int64_t>(1, n * K2)));
    scale.reserve(size_t(std::max<int64_t>(1, n)));
    for (int64_t i = 0; i < n; ++i) {
      const float* a = arow(i);
      float amax = 0;
      bool finite = true;
      for (int64_t k = 0; k < K; ++k) {
        const float v = std::fabs(a[k]);
        amax = v > amax ? v : amax;
        finite &= v <= std::numeric_limits<float>::max();  // false for inf and NaN
      }
      // A row with inf or NaN scales every product to NaN, as fp32 would give.
      const float inv = amax > 0 && finite ? 127.0f / amax : 0.0f;
      scale.data()[i] = finite ? amax / 127.0f : std::numeric_limits<float>::quiet_NaN();
      int16_t* q = reinterpret_cast<int16_t*>(pairs.data() + i * K2);
      for (int64_t k = 0; k < K; ++k) q[k] = finite ? int16_t(std::nearbyint(a[k] * inv)) : int16_t(0);
      if (K % 2) q[K] = 0;
    }
  }
};

// Lowers fp32 column panels (np x [K][NR]) to `out.prec`.
inline void lower_panels(const float* panels, int64_t np, int64_t K, int64_t NR, WeightPrecision prec,
                         LowPanels& out) {
  out.prec = prec, out.K = K, out.NR = NR, out.np = np;
  if (prec == WeightPrecision::BF16) {
    out.bf.reserve(size_t(std::max<int64_t>(1, np * K * NR)));
    for (int64_t i = 0; i < np * K * NR; ++i) out.bf.data()[i] = to_bf16(panels[i]);
    return;
  }
  const int64_t K2 = (K + 1) / 2;
  out.q8.zero(size_t(std::max<int64_t>(1, np * K2 * NR * 2)));
  out.scale.reserve(size_t(std::max<int64_t>(1, np * NR)));
  for (int64_t q = 0; q < np; ++q) {
    const float* p = panels + q * K * NR;
    int8_t* o = out.q8.data() + q * K2 * NR * 2;
    for (int64_t n = 0; n < NR; ++n) {
      float wmax = 0;
      bool nan = false;
      for (int64_t k = 0; k < K; ++k) {
        const float v = std::fabs(p[k * NR + n]);
        wmax = v > wmax ? v : wmax;
        nan |= std::isnan(v);
      }
      const bool finite = !nan && wmax <= std::numeric_limits<float>::max();
      out.scale.data()[q * NR + n] = finite ? wmax / 127.0f : std::numeric_limits<float>::quiet_NaN();
      const float inv = finite && wmax > 0 ? 127.0f / wmax : 0.0f;
      for (int64_t k = 0; k < K; ++k)
        o[((k / 2) * NR + n) * 2 + k % 2] = finite ? int8_t(std::nearbyint(p[k * NR + n] * inv)) : int8_t(0);
    }
  }
}

// tile[M][NV*lanes] = A rows . int8 panel, scaled to fp32.
template <int M, int NV>
inline void ukernel_q8(int64_t K2, const int32_t* const* a, const float* ascale, const int8_t* __restrict b,
                       const float* wscale, float* __restrict tile) {
  constexpr int L = kLanes<float>;
  VecI32 acc[M][NV] = {};
  for (int64_t kp = 0; kp < K2; ++kp) {
    VecI16 bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bv[v] = widen_i8(b + v * L * 2);
    b += NV * L * 2;
#pragma GCC unroll 16
    for (int r = 0; r < M; ++r) {
      const VecI16 av = (VecI16)(a[r][kp] - VecI32{});
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] += madd_pairs(bv[v], av);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < M; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      storeu(tile + (r * NV + v) * L,
             __builtin_convertvector(acc[r][v], Vec<float>) * (ascale[r] * loadu(wscale + v * L)));
}

// tile[M][NV*lanes] = A rows . bf16 panel, fp32 accumulation (two sets over
// k parity for one row, to hide the FMA latency).
template <int M, int NV>
inline void ukernel_bf16(int64_t K, const float* const* a, const uint16_t* __restrict b, float* __restrict tile) {
  constexpr int L = kLanes<float>, U = M == 1 ? 2 : 1;
  Vec<float> acc[U][M][NV] = {};
  int64_t k = 0;
  for (; k + U <= K; k += U)
#pragma GCC unroll 2
    for (int u = 0; u < U; ++u) {
      Vec<float> bv[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) bv[v] = widen_bf16(b + ((k + u) * NV + v) * L);
#pragma GCC unroll 16
      for (int r = 0; r < M; ++r) {
        const Vec<float> av = bcast(a[r][k + u]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[u][r][v] += av * bv[v];
      }
    }
  for (; k < K; ++k)
    for (int r = 0; r < M; ++r)
      for (int v = 0; v < NV; ++v) acc[0][r][v] += bcast(a[r][k]) * widen_bf16(b + (k * NV + v) * L);
#pragma GCC unroll 16
  for (int r = 0; r < M; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      Vec<float> s = acc[0][r][v];
      if constexpr (U == 2) s += acc[1][r][v];
      storeu(tile + (r * NV + v) * L, s);
    }
}

// Panel q of `w` times A rows [i0, i0 + m) (1 <= m <= MR) into tile [m][NV*lanes].
template <int MR, int NV, int M = MR>
inline void low_tile(const LowPanels& w, int64_t q, const LowRows& a, int64_t i0, int m, float* tile) {
  if constexpr (M > 1) {
    if (m < M) return low_tile<MR, NV, M - 1>(w, q, a, i0, m, tile);
  }
  constexpr int64_t NR = NV * kLanes<float>;
  if (w.prec == WeightPrecision::Int8) {
    const int32_t* rows[M];
    for (int r = 0; r < M; ++r) rows[r] = a.pair_row(i0 + r);
    const int64_t K2 = (w.K + 1) / 2;
    ukernel_q8<M, NV>(K2, rows, a.scale.data() + i0, w.q8.data() + q * K2 * NR * 2, w.scale.data() + q * NR, tile);
  } else {
    ukernel_bf16<M, NV>(w.K, a.rows.data() + i0, w.bf.data() + q * w.K * NR, tile);
  }
}

}  // namespace PYRNN_ISA_NS
}  // namespace pyrnn
