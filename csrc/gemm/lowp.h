// Reduced-precision weights for inference (one ISA level): int8 and bf16
// column panels, and the micro-kernels that multiply fp32 activations by them.
//
// Both start from the fp32 column panels the GEMM uses ([K][NR] each) and keep
// their column order, so a tile comes out as the fp32 kernel's would:
// [m][NR] floats, handed to the same epilogues.
//
// int8 (as torch's quantize_dynamic and ORT's DynamicQuantizeLSTM): each
//   weight column (a row of W) has its own scale, max|w| / 127, and holds
//   round(w / scale) in [-127, 127]. A rows (x, h) are quantised per row, per
//   call or step, to 7 bits: round(a / scale) in [-63, 63], scale max|a| / 63
//   (torch's fbgemm also keeps activations to 7 bits, its reduce_range).
//   The panel interleaves k quads ([ceil(K/4)][NR][4]); a row is held as
//   bytes a + 64 in [1, 127], so the u8 x s8 multiply-add of pairs (pmaddubsw)
//   cannot saturate (2 * 127 * 127 < 2^15), and a 16-bit multiply-add by ones
//   (pmaddwd) sums each quad into int32: 32 products per two instructions
//   (AVX2). The offset's share, 64 * sum_k w, is subtracted per column; the
//   exact int32 sum is then scaled back: tile = acc * (scale_a * scale_w).
//   Integer sums make int8 results identical at every ISA level and thread count.
// bf16: weights rounded to bf16 (nearest even), [K][NR] of the upper 16 bits
//   (lanes of vector pairs interleaved); widened back to fp32 (a shift or a
//   mask) and multiplied by fp32 activations with fp32 accumulation.
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
typedef uint16_t HalfU16 __attribute__((vector_size(PYRNN_VBYTES / 2)));

template <class V, class S>
PYRNN_INLINE V load_vec(const S* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Per int32 lane l: the sum over its four bytes j of a (unsigned, at most
// 127) times b (signed): a quad of k for one column.
PYRNN_INLINE VecI32 dot_quads(VecI32 a, VecI32 b) {
#if PYRNN_VBYTES == 64 && defined(__AVX512BW__)
  return (VecI32)_mm512_madd_epi16(_mm512_maddubs_epi16((__m512i)a, (__m512i)b), _mm512_set1_epi16(1));
#elif PYRNN_VBYTES == 32 && defined(__AVX2__)
  return (VecI32)_mm256_madd_epi16(_mm256_maddubs_epi16((__m256i)a, (__m256i)b), _mm256_set1_epi16(1));
#elif PYRNN_VBYTES == 16 && defined(__SSE2__)
  // SSE2 has no pmaddubsw: bytes to int16 (a zero-, b sign-extended), pair
  // sums by pmaddwd, then the two pairs of each quad added.
  const __m128i ai = (__m128i)a, bi = (__m128i)b, z = _mm_setzero_si128();
  const __m128i lo = _mm_madd_epi16(_mm_unpacklo_epi8(ai, z), _mm_srai_epi16(_mm_unpacklo_epi8(bi, bi), 8));
  const __m128i hi = _mm_madd_epi16(_mm_unpackhi_epi8(ai, z), _mm_srai_epi16(_mm_unpackhi_epi8(bi, bi), 8));
  const __m128 even = _mm_shuffle_ps(_mm_castsi128_ps(lo), _mm_castsi128_ps(hi), _MM_SHUFFLE(2, 0, 2, 0));
  const __m128 odd = _mm_shuffle_ps(_mm_castsi128_ps(lo), _mm_castsi128_ps(hi), _MM_SHUFFLE(3, 1, 3, 1));
  return (VecI32)_mm_add_epi32(_mm_castps_si128(even), _mm_castps_si128(odd));
#else
  VecI32 r;
  for (int l = 0; l < kLanes<float>; ++l) {
    int32_t sum = 0;
    for (int j = 0; j < 4; ++j) sum += int32_t(uint8_t(a[l] >> (8 * j))) * int32_t(int8_t(b[l] >> (8 * j)));
    r[l] = sum;
  }
  return r;
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
// int8: per row, the bytes a + 64 with k quads as int32 ([n][K4]) and a
// scale; bf16: the fp32 rows.
struct LowRows {
  int64_t K4 = 0;
  AlignedBuffer<int32_t> quads;
  AlignedBuffer<float> scale;
  std::vector<const float*> rows;

  const int32_t* quad_row(int64_t i) const { return quads.data() + i * K4; }

  // Quantises rows [0, n) (int8) or records them (bf16); arow(i) gives row i, K long.
  template <class ARow>
  void prepare(WeightPrecision prec, int64_t n, int64_t K, ARow arow) {
    if (prec == WeightPrecision::BF16) {
      rows.resize(size_t(n));
      for (int64_t i = 0; i < n; ++i) rows[size_t(i)] = arow(i);
      return;
    }
    K4 = (K + 3) / 4;
    quads.reserve(size_t(std::max<int64_t>(1, n * K4)));
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
      const float inv = amax > 0 && finite ? 63.0f / amax : 0.0f;
      scale.data()[i] = finite ? amax / 63.0f : std::numeric_limits<float>::quiet_NaN();
      uint8_t* q = reinterpret_cast<uint8_t*>(quads.data() + i * K4);
      for (int64_t k = 0; k < K; ++k) q[k] = uint8_t(64 + (finite ? int(std::nearbyint(a[k] * inv)) : 0));
      for (int64_t k = K; k < 4 * K4; ++k) q[k] = 64;  // meets zero weights
    }
  }
};

// Lowers fp32 column panels (np x [K][NR]) to `out.prec`.
inline void lower_panels(const float* panels, int64_t np, int64_t K, int64_t NR, WeightPrecision prec,
                         LowPanels& out) {
  out.prec = prec, out.K = K, out.NR = NR, out.np = np;
  if (prec == WeightPrecision::BF16) {
    // Each k row of a panel keeps its NR values, but the lanes of column
    // vectors 2p and 2p+1 alternate (bf16_row reads both with one load); an
    // odd last vector stays as it is.
    constexpr int64_t L = kLanes<float>;
    const int64_t NV = NR / L;
    out.bf.reserve(size_t(std::max<int64_t>(1, np * K * NR)));
    for (int64_t r = 0; r < np * K; ++r) {
      const float* src = panels + r * NR;
      uint16_t* o = out.bf.data() + r * NR;
      for (int64_t v = 0; v < NV; v += 2) {
        if (v + 1 < NV) {
          for (int64_t l = 0; l < L; ++l) {
            o[v * L + 2 * l] = to_bf16(src[v * L + l]);
            o[v * L + 2 * l + 1] = to_bf16(src[(v + 1) * L + l]);
          }
        } else {
          for (int64_t l = 0; l < L; ++l) o[v * L + l] = to_bf16(src[v * L + l]);
        }
      }
    }
    return;
  }
  const int64_t K4 = (K + 3) / 4;
  out.q8.zero(size_t(std::max<int64_t>(1, np * K4 * NR * 4)));
  out.scale.reserve(size_t(std::max<int64_t>(1, np * NR)));
  out.offset.reserve(size_t(std::max<int64_t>(1, np * NR)));
  for (int64_t q = 0; q < np; ++q) {
    const float* p = panels + q * K * NR;
    int8_t* o = out.q8.data() + q * K4 * NR * 4;
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
      int32_t sum = 0;
      for (int64_t k = 0; k < K; ++k) {
        const int8_t w = finite ? int8_t(std::nearbyint(p[k * NR + n] * inv)) : int8_t(0);
        o[((k / 4) * NR + n) * 4 + k % 4] = w;
        sum += w;
      }
      out.offset.data()[q * NR + n] = 64 * sum;  // what the rows' +64 adds to the column's sum
    }
  }
}

// tile[M][NV*lanes] = A rows . int8 panel, scaled to fp32.
template <int M, int NV>
inline void ukernel_q8(int64_t K4, const int32_t* const* a, const float* ascale, const int8_t* __restrict b,
                       const float* wscale, const int32_t* offset, float* __restrict tile) {
  constexpr int L = kLanes<float>;
  VecI32 acc[M][NV] = {};
  for (int64_t kq = 0; kq < K4; ++kq) {
    VecI32 bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bv[v] = load_vec<VecI32>(b + v * L * 4);
    b += NV * L * 4;
#pragma GCC unroll 16
    for (int r = 0; r < M; ++r) {
      const VecI32 av = a[r][kq] - VecI32{};
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] += dot_quads(av, bv[v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < M; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      storeu(tile + (r * NV + v) * L,
             __builtin_convertvector(acc[r][v] - load_vec<VecI32>(offset + v * L), Vec<float>) *
                 (ascale[r] * loadu(wscale + v * L)));
}

// The NV column vectors of one k row of a bf16 panel (lower_panels' order):
// a pair of vectors is one load, its even lanes shifted up and its odd lanes
// masked, one operation each.
template <int NV>
PYRNN_INLINE void bf16_row(const uint16_t* p, Vec<float>* bv) {
  constexpr int L = kLanes<float>;
#pragma GCC unroll 8
  for (int v = 0; v + 1 < NV; v += 2) {
    const VecI32 u = load_vec<VecI32>(p + v * L);
    bv[v] = (Vec<float>)(u << 16);
    bv[v + 1] = (Vec<float>)(u & int32_t(0xffff0000u));
  }
  if constexpr (NV % 2) bv[NV - 1] = widen_bf16(p + (NV - 1) * L);
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
      bf16_row<NV>(b + (k + u) * NV * L, bv);
#pragma GCC unroll 16
      for (int r = 0; r < M; ++r) {
        const Vec<float> av = bcast(a[r][k + u]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[u][r][v] += av * bv[v];
      }
    }
  for (; k < K; ++k) {
    Vec<float> bv[NV];
    bf16_row<NV>(b + k * NV * L, bv);
    for (int r = 0; r < M; ++r)
      for (int v = 0; v < NV; ++v) acc[0][r][v] += bcast(a[r][k]) * bv[v];
  }
#pragma GCC unroll 16
  for (int r = 0; r < M; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      Vec<float> s = acc[0][r][v];
      if constexpr (U == 2) s += acc[1][r][v];
      storeu(tile + (r * NV + v) * L, s);
    }
}

// Rows of a reduced-precision tile: its kernels keep a k row's NV B vectors
// in registers (plus the int8 kernel's temporaries), so the A-stationary plan
// of tile_rows does not apply.
constexpr int low_tile_rows(int nv) {
  int r = (PYRNN_NREGS - nv - 2) / nv, cap = PYRNN_NREGS >= 32 ? 12 : 8;
  return r < 1 ? 1 : (r > cap ? cap : r);
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
    for (int r = 0; r < M; ++r) rows[r] = a.quad_row(i0 + r);
    const int64_t K4 = (w.K + 3) / 4;
    ukernel_q8<M, NV>(K4, rows, a.scale.data() + i0, w.q8.data() + q * K4 * NR * 4, w.scale.data() + q * NR,
                      w.offset.data() + q * NR, tile);
  } else {
    ukernel_bf16<M, NV>(w.K, a.rows.data() + i0, w.bf.data() + q * w.K * NR, tile);
  }
}

}  // namespace PYRNN_ISA_NS
}  // namespace pyrnn
