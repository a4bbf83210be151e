// Packed GEMM for one ISA level: micro-kernels, packing, a per-thread driver.
//
// C[M,N] (+)= A[M,K] B[K,N]. The micro-kernel keeps an MR x (NV*lanes) tile
// of C in registers; B arrives packed in panels of NV*lanes columns
// ([K][NR] contiguous), A either packed in MR-row panels ([K][MR]) or read in
// place through MR row pointers (rows contiguous along K). Each element of C
// is summed over k in increasing order whatever the blocking, which is what
// makes results independent of how work is split among threads.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "simd.h"
#include "pyrnn/cache.h"
#include "../runtime/aligned_buffer.h"

namespace pyrnn {
namespace PYRNN_ISA_NS {

// Tile shapes. With 32 registers a 6 x 4-vector tile leaves room for the B
// vectors and the broadcast; with 16, 6 x 2.
constexpr int kGemmNV = PYRNN_NREGS >= 32 ? 4 : 2;
constexpr int kGemmMR = 6;

// Two register plans for an MR x NV tile (acc[MR][NV] accumulators):
// - B-stationary: a k row's NV B vectors in registers, one broadcast of A at a
//   time: MR*NV + NV + 1 registers;
// - A-stationary: the MR broadcasts of a k row in registers, one B vector at a
//   time: MR*NV + MR + 1 registers.
// With 16 registers and 4 vectors (the LSTM's gate block) the first holds 2
// rows (8 accumulators, too few to hide the FMA latency), the second 3 (12
// accumulators, all 16 registers): measured 1.4-1.5x faster on AVX2 (Zen 3).
constexpr bool b_stationary(int mr, int nv) { return mr * nv + nv + 1 <= PYRNN_NREGS; }

// Rows of a tile whose accumulators fit beside its operands in one of the plans.
constexpr int tile_rows(int nv) {
  int rb = (PYRNN_NREGS - nv - 1) / nv, ra = (PYRNN_NREGS - 1) / (nv + 1);
  int r = rb > ra ? rb : ra;
  int cap = PYRNN_NREGS >= 32 ? 12 : 8;
  return r < 1 ? 1 : (r > cap ? cap : r);
}

// Where a tile's rows are read from (ACC) and written to: a contiguous tile
// (rows NV*lanes apart) or C's own rows.
template <class T, int NR>
struct TileRows {
  T* p;
  T* row(int r) const { return p + r * NR; }
};
template <class T>
struct CRows {
  T* const* rows;
  T* row(int r) const { return rows[r]; }
};
// C's own rows, stored as the tile's sums plus bias[n] when given (never
// read: the sums are the same as through a tile buffer and write_tile).
template <class T>
struct CRowsBias {
  T* const* rows;
  const T* bias;
  T* row(int r) const { return rows[r]; }
};
template <class Out>
constexpr bool kStoresBias = false;
template <class T>
constexpr bool kStoresBias<CRowsBias<T>> = true;

// Requests (into L2) the NV*lanes-wide panel row `pf` elements past b: a
// kernel streaming its panel from L3 or DRAM spreads the requests over its
// FMAs instead of waiting on each line. An integer address: it may lie past
// the panel's end (the next panel follows in memory), where no pointer may
// point; a hint never faults.
template <class T, int NV>
inline void prefetch_row(const T* b, int64_t pf) {
  constexpr int64_t kLine = 64, bytes = NV * kLanes<T> * int64_t(sizeof(T));
  const uintptr_t at = reinterpret_cast<uintptr_t>(b) + uintptr_t(pf) * sizeof(T);
#pragma GCC unroll 8
  for (int64_t l = 0; l < (bytes + kLine - 1) / kLine; ++l)
    __builtin_prefetch(reinterpret_cast<const void*>(at + uintptr_t(l * kLine)), 0, 1);
}

// out[MR][NV*lanes] = sum_k A(r,k) * Bp[k][:]
// PACKED_A: a[k*MR + r]; otherwise arows[r][k].
// ACC: start from out's current values instead of zero. Splitting K into
// chunks this way keeps each element's sum in the same order as one pass.
// Either register plan computes the same products in the same order.
//
// Never inlined: inlined into a large caller (a step loop with its cell's
// epilogue), GCC keeps the caller's hoisted constants in vector registers
// across this loop and spills accumulators to the stack (measured: the
// AVX2 GRU and RNN backward loops at 41-51% of the FMA peak, 6 of 12
// accumulators on the stack). A call costs nothing beside K iterations.
template <class T, int MR, int NV, bool PACKED_A, bool ACC, class Out, bool PF = false>
[[gnu::noinline]] void ukernel_out(int64_t K, const T* __restrict a, const T* const* arows, const T* __restrict b,
                                   Out out, int64_t pf = 0) {
  constexpr int L = kLanes<T>;
  Vec<T> acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = ACC ? loadu(out.row(r) + v * L) : Vec<T>{};
  const T* ap[MR];
  if (!PACKED_A) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) ap[r] = arows[r];
  }
  for (int64_t k = 0; k < K; ++k) {
    if constexpr (PF) prefetch_row<T, NV>(b, pf);
    if constexpr (b_stationary(MR, NV)) {
      Vec<T> bv[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) bv[v] = loadu(b + v * L);
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        Vec<T> av = bcast(PACKED_A ? a[r] : ap[r][k]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
      }
    } else {
      Vec<T> av[MR];
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) av[r] = bcast(PACKED_A ? a[r] : ap[r][k]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        const Vec<T> bv = loadu(b + v * L);
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) acc[r][v] += av[r] * bv;
      }
    }
    b += NV * L;
    if (PACKED_A) a += MR;
  }
  if constexpr (kStoresBias<Out>) {
    if (out.bias) {
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) storeu(out.row(r) + v * L, acc[r][v] + loadu(out.bias + v * L));
      return;
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) storeu(out.row(r) + v * L, acc[r][v]);
}

// The tile kernel into a contiguous tile[MR][NV*lanes].
template <class T, int MR, int NV, bool PACKED_A, bool ACC = false, bool PF = false>
inline void ukernel(int64_t K, const T* a, const T* const* arows, const T* b, T* tile, int64_t pf = 0) {
  ukernel_out<T, MR, NV, PACKED_A, ACC, TileRows<T, NV * kLanes<T>>, PF>(K, a, arows, b,
                                                                        TileRows<T, NV * kLanes<T>>{tile}, pf);
}

// The packed-A tile kernel added to C in place (rows crow[r], columns
// 0..NV*lanes), or stored there when `first`: a whole tile of a K-split GEMM,
// without going through a tile buffer.
template <class T, int MR, int NV>
inline void ukernel_into(int64_t K, const T* a, const T* b, T* const* crow, bool first) {
  if (first)
    ukernel_out<T, MR, NV, true, false>(K, a, nullptr, b, CRows<T>{crow});
  else
    ukernel_out<T, MR, NV, true, true>(K, a, nullptr, b, CRows<T>{crow});
}

// One row (a GEMV, batch 1): four accumulator sets over k mod 4 hide the FMA
// latency that a single chain per column vector would expose; they are summed
// in a fixed order, so results do not depend on threads. (With 4 vectors and
// 16 registers GCC keeps some of the 16 accumulators on the stack; three sets
// that fit measured no faster at B=1, where reading the weights bounds it.)
template <class T, int NV, bool ACC>
[[gnu::noinline]] void ukernel_row(int64_t K, const T* __restrict a, const T* __restrict b, T* __restrict tile) {
  constexpr int L = kLanes<T>, U = 4;
  Vec<T> acc[U][NV];
#pragma GCC unroll 4
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[u][v] = (ACC && u == 0) ? loadu(tile + v * L) : Vec<T>{};
  int64_t k = 0;
  for (; k + U <= K; k += U) {
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      Vec<T> av = bcast(a[k + u]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[u][v] += av * loadu(b + ((k + u) * NV + v) * L);
    }
  }
  for (; k < K; ++k) {
    Vec<T> av = bcast(a[k]);
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[0][v] += av * loadu(b + (k * NV + v) * L);
  }
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) storeu(tile + v * L, (acc[0][v] + acc[1][v]) + (acc[2][v] + acc[3][v]));
}

// Runs the MR-row kernel with only m rows (1 <= m <= MR): a small batch must
// not pay for MR rows of FMAs. For packed A the panel keeps its MR stride.
// PF: prefetch pf elements ahead of the panel row being read (prefetch_row),
// in a whole tile only (step_tiles asks for it on first tiles of MR rows): with
// m < MR the kernel for m rows runs without it, so those kernels are not
// compiled twice.
template <class T, int MR, int NV, bool PACKED_A, bool ACC = false, int M = MR, bool PF = false>
inline void ukernel_rows(int m, int64_t K, const T* a, const T* const* arows, const T* b, T* tile, int64_t pf = 0) {
  if constexpr (PACKED_A) {
    ukernel<T, MR, NV, true, ACC>(K, a, arows, b, tile);
  } else if constexpr (M == 1) {
    ukernel_row<T, NV, ACC>(K, arows[0], b, tile);
  } else {
    if (m == M)
      ukernel<T, M, NV, false, ACC, PF>(K, a, arows, b, tile, pf);
    else
      ukernel_rows<T, MR, NV, false, ACC, M - 1>(m, K, a, arows, b, tile);
  }
}

// The tile kernel for a panel of nv vectors (1 <= nv <= NV): the last,
// narrower panel of a GEMM whose N is not a multiple of NV vectors.
template <class T, int MR, int NV, bool PACKED_A>
inline void ukernel_nv(int nv, int m, int64_t K, const T* a, const T* const* arows, const T* b, T* tile) {
  if constexpr (NV > 1)
    if (nv < NV) return ukernel_nv<T, MR, NV - 1, PACKED_A>(nv, m, K, a, arows, b, tile);
  ukernel_rows<T, MR, NV, PACKED_A>(m, K, a, arows, b, tile);
}

// B(k,n): by_rows ? ptr[k][n] : ptr[n][k]; a null pointer reads as zeros.
template <class T>
struct BView {
  const T* const* ptr = nullptr;
  bool by_rows = true;
};

// A(i,k): rows ? rows[i][k] : p[i*rs + k*cs].
template <class T>
struct AView {
  const T* const* rows = nullptr;
  const T* p = nullptr;
  int64_t rs = 0, cs = 0;
};

// C(i,n): rows ? rows[i][n] (a null row is dropped) : p[i*ld + n].
template <class T>
struct CView {
  T* const* rows = nullptr;
  T* p = nullptr;
  int64_t ld = 0;
  T* row(int64_t i) const { return rows ? rows[i] : p + i * ld; }
};

// Packs B(k0..k0+kc, n0..n0+nc) into panels of NR columns, zero-padded; a
// last, narrower panel is only as wide as whole vectors (panel_width), so its
// micro-kernel does not multiply padding (65 columns cost 80, not 128).
// Either way the source is read along its contiguous direction: rows of B
// (by_rows), or rows of B^T, i.e. weight rows, written down a panel column
// (the panel, kc x width, stays in L1 while it fills).
// One stage of an in-register transpose of L x L (L = lanes, a power of two):
// swaps the off-diagonal W x W sub-blocks of every 2W x 2W block.
template <class T, int W, int... E>
inline void transpose_stage(Vec<T>* r, std::integer_sequence<int, E...>) {
  constexpr int L = int(sizeof...(E));
  for (int i = 0; i < L; ++i)
    if ((i & W) == 0) {
      const Vec<T> a = r[i], b = r[i + W];
#if defined(__clang__)
      r[i] = __builtin_shufflevector(a, b, ((E & W) == 0 ? E : L + E - W)...);
      r[i + W] = __builtin_shufflevector(a, b, ((E & W) == 0 ? E + W : L + E)...);
#else
      using I = typename VecOf<T>::itype;
      r[i] = __builtin_shuffle(a, b, I{((E & W) == 0 ? E : L + E - W)...});
      r[i + W] = __builtin_shuffle(a, b, I{((E & W) == 0 ? E + W : L + E)...});
#endif
    }
}
// r[i][e] <- r[e][i] for the kLanes<T> vectors of r.
template <class T, int W = kLanes<T> / 2>
inline void transpose_block(Vec<T>* r) {
  if constexpr (W >= 1) {
    transpose_stage<T, W>(r, std::make_integer_sequence<int, kLanes<T>>{});
    transpose_block<T, W / 2>(r);
  }
}

// r[i][e] = rows[e][k + i] for the kLanes<T> rows (none null): kLanes runs of
// kLanes, transposed in registers. With 256-bit vectors the transpose's first
// stage (each register's 128-bit half swapped with another's: vperm2f128, one
// uop on Zen 3 but eight on Zen 1) is done by the loads instead: each register
// is filled from two rows' halves (vinsertf128 from memory). On Zen 1 an LSTM
// call of one step, B=1 I=H=256, took 240 us instead of 272 (direct_tile_m),
// GRU H=512 683 instead of 874. Only data movement: the same values.
template <class T>
inline void load_transposed(const T* const* rows, int64_t k, Vec<T>* r) {
  constexpr int L = kLanes<T>;
#if PYRNN_VBYTES == 32 && defined(__AVX__)
  constexpr int W = L / 2;
  auto join = [](const T* lo, const T* hi) {
    if constexpr (std::is_same_v<T, float>)
      return (Vec<T>)_mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(lo)), _mm_loadu_ps(hi), 1);
    else
      return (Vec<T>)_mm256_insertf128_pd(_mm256_castpd128_pd256(_mm_loadu_pd(lo)), _mm_loadu_pd(hi), 1);
  };
  for (int i = 0; i < W; ++i) {
    r[i] = join(rows[i] + k, rows[i + W] + k);  // what transpose_stage<T, W> makes of the two rows
    r[i + W] = join(rows[i] + k + W, rows[i + W] + k + W);
  }
  transpose_block<T, W / 2>(r);
#else
  for (int v = 0; v < L; ++v) r[v] = loadu(rows[v] + k);
  transpose_block<T>(r);
#endif
}

// out[k * ldo + v] = rows[v][k0 + k] for k < kc and the kLanes<T> rows (a
// null row: zeros). With every row present, kLanes x kLanes blocks are
// transposed in registers: each block reads kLanes runs of kLanes and stores
// kLanes whole vectors, where element by element each store went to another
// line of the panel (the LSTM's W_hh at H=512 packed for the forward in 0.3 ms
// instead of 1.0 on Zen 3, H=1024 3.0 instead of 4.8: memory-bound there).
// Only data movement: the packed values are the same.
template <class T>
inline void transpose_rows(const T* const* rows, int64_t k0, int64_t kc, T* out, int64_t ldo) {
  constexpr int L = kLanes<T>;
  static_assert((L & (L - 1)) == 0, "lanes: a power of two");
  int64_t k = 0;
  bool all = true;
  for (int v = 0; v < L; ++v) all = all && rows[v] != nullptr;
  if (all)
    for (; k + L <= kc; k += L) {
      Vec<T> r[L];
      load_transposed<T>(rows, k0 + k, r);
      for (int i = 0; i < L; ++i) storeu(out + (k + i) * ldo, r[i]);
    }
  for (int v = 0; v < L; ++v) {
    const T* src = rows[v];
    T* o = out + v;
    if (src)
      for (int64_t kk = k; kk < kc; ++kk) o[kk * ldo] = src[k0 + kk];
    else
      for (int64_t kk = k; kk < kc; ++kk) o[kk * ldo] = T(0);
  }
}

// ukernel_rows<T, MR, NV, false, ACC>(m, kc, ...) on the panel that packing
// the NV*lanes rows wrows[c] (W's row of column c, from the block's first k;
// null: a zero column) would give, without packing it: each lanes x lanes
// block of the rows is transposed in registers where the kernel reads it.
// For calls of one or two steps, where packing W_hh and W_ih cost more than
// their products (GRU B=1 T=1 I=H=256: 70 of the call's 80 us). The same
// products in the same order as the packed kernel (one row: ukernel_row's
// four sets over k mod 4, the last K mod 4 in set 0; more rows: one chain
// per element), so the same bits: a layer's call equals its frozen copy's.
template <class T, int NV, int M, bool ACC>
[[gnu::noinline]] void direct_tile_m(int64_t kc, const T* const* arows, const T* const* wrows, T* tile) {
  constexpr int L = kLanes<T>, NR = NV * L, NA = M == 1 ? 4 : M;
  const int64_t k4 = M == 1 ? kc / 4 * 4 : 0;
  for (int v = 0; v < NV; ++v) {
    const T* const* wr = wrows + v * L;
    Vec<T> acc[NA];
#pragma GCC unroll 16
    for (int r = 0; r < NA; ++r)
      acc[r] = ACC && (M > 1 || r == 0) ? loadu(tile + (M == 1 ? 0 : r * NR) + v * L) : Vec<T>{};
    bool full = true;  // every column a row of W (none padding)
    for (int l = 0; l < L; ++l) full = full && wr[l];
    for (int64_t k0 = 0; k0 < kc; k0 += L) {
      const int n = int(std::min<int64_t>(L, kc - k0));
      Vec<T> w[L];  // w[i]: the columns' values at k0 + i
      if (full && n == L) {
        load_transposed<T>(wr, k0, w);
      } else {
#pragma GCC unroll 16
        for (int l = 0; l < L; ++l) w[l] = !wr[l] ? Vec<T>{} : n == L ? loadu(wr[l] + k0) : load_first(wr[l] + k0, n);
        transpose_block<T>(w);
      }
      // (Each product feeds one accumulator of constant index in its own statement, as in the
      // kernel, so that GCC fuses each multiply-add as it does there: with the accumulator
      // chosen at run time, or the product shared by two branches, it did not always.)
      if constexpr (M == 1) {
        if (n == L && k0 + L <= k4 && L % 4 == 0) {  // k0 is a multiple of L: k0 + i is in set i % 4
#pragma GCC unroll 16
          for (int i = 0; i < L; ++i) acc[i % 4] += bcast(arows[0][k0 + i]) * w[i];
        } else if constexpr (L % 4 == 0) {
          // below k4 whole groups of four (k0 and k4 are multiples of 4), then set 0
          const int in_sets = int(std::max<int64_t>(0, std::min<int64_t>(n, k4 - k0)));
          const T* a = arows[0] + k0;
          int i = 0;
          for (; i < in_sets; i += 4) {
            acc[0] += bcast(a[i]) * w[i];
            acc[1] += bcast(a[i + 1]) * w[i + 1];
            acc[2] += bcast(a[i + 2]) * w[i + 2];
            acc[3] += bcast(a[i + 3]) * w[i + 3];
          }
          for (; i < n; ++i) acc[0] += bcast(a[i]) * w[i];
        } else {  // (fewer than 4 lanes: the portable level, which has no fused multiply-add)
          for (int i = 0; i < n; ++i) acc[k0 + i < k4 ? (k0 + i) % 4 : 0] += bcast(arows[0][k0 + i]) * w[i];
        }
      } else if (n == L) {
#pragma GCC unroll 16
        for (int r = 0; r < M; ++r)
#pragma GCC unroll 16
          for (int i = 0; i < L; ++i) acc[r] += bcast(arows[r][k0 + i]) * w[i];
      } else {
#pragma GCC unroll 16
        for (int r = 0; r < M; ++r)
          for (int i = 0; i < n; ++i) acc[r] += bcast(arows[r][k0 + i]) * w[i];
      }
    }
    if constexpr (M == 1) {
      storeu(tile + v * L, (acc[0] + acc[1]) + (acc[2] + acc[3]));
    } else {
#pragma GCC unroll 16
      for (int r = 0; r < M; ++r) storeu(tile + r * NR + v * L, acc[r]);
    }
  }
}

// direct_tile_m for m rows (1 <= m <= MR), as ukernel_rows picks its kernel.
template <class T, int MR, int NV, bool ACC, int M = MR>
inline void direct_tile(int m, int64_t kc, const T* const* arows, const T* const* wrows, T* tile) {
  if constexpr (M == 1)
    direct_tile_m<T, NV, 1, ACC>(kc, arows, wrows, tile);
  else if (m == M)
    direct_tile_m<T, NV, M, ACC>(kc, arows, wrows, tile);
  else
    direct_tile<T, MR, NV, ACC, M - 1>(m, kc, arows, wrows, tile);
}

template <class T, int NR>
constexpr int64_t panel_width(int64_t nw) {
  return std::min<int64_t>(NR, (nw + kLanes<T> - 1) / kLanes<T> * kLanes<T>);
}

template <class T, int NR>
void pack_b(const BView<T>& B, int64_t k0, int64_t kc, int64_t n0, int64_t nc, T* out) {
  for (int64_t j = 0; j < nc; j += NR) {
    const int64_t nw = std::min<int64_t>(NR, nc - j), w = panel_width<T, NR>(nw);
    T* panel = out + (j / NR) * kc * NR;
    if (B.by_rows) {
      for (int64_t k = 0; k < kc; ++k) {
        T* o = panel + k * w;
        const T* src = B.ptr[k0 + k];
        if (src && nw == NR) {  // a whole panel row (and no call to fill nothing after it)
          copy_vectors<T, NR>(o, src + n0 + j);
          continue;
        }
        if (src)
          std::memcpy(o, src + n0 + j, sizeof(T) * size_t(nw));
        else
          std::memset(static_cast<void*>(o), 0, sizeof(T) * size_t(nw));
        std::memset(static_cast<void*>(o + nw), 0, sizeof(T) * size_t(w - nw));
      }
    } else {
      for (int64_t n = 0; n < w; n += kLanes<T>) {
        const T* rows[kLanes<T>];
        for (int v = 0; v < kLanes<T>; ++v) rows[v] = n + v < nw ? B.ptr[n0 + j + n + v] : nullptr;
        transpose_rows(rows, k0, kc, panel + n, w);
      }
    }
  }
}

// Packs A(i0..i0+mc, k0..k0+kc) (strided view) into MR-row panels, zero-padded.
// k outer, panels inner: for dG^T (rs = 1) each k reads one contiguous run of mc.
template <class T, int MR>
void pack_a(const AView<T>& A, int64_t i0, int64_t mc, int64_t k0, int64_t kc, T* out) {
  const int64_t full = mc / MR, rest = mc - full * MR;
  for (int64_t k = 0; k < kc; ++k) {
    const T* src = A.p + i0 * A.rs + (k0 + k) * A.cs;
    T* o = out + k * MR;
    for (int64_t p = 0; p < full; ++p, o += kc * MR, src += MR * A.rs)
      for (int r = 0; r < MR; ++r) o[r] = src[r * A.rs];
    if (rest) {
      for (int r = 0; r < rest; ++r) o[r] = src[r * A.rs];
      for (int r = int(rest); r < MR; ++r) o[r] = T(0);
    }
  }
}

// Adds (or stores) an m x nw corner of a tile (rows ld apart) into C rows
// i0.., columns n0..
template <class T>
inline void write_tile(const T* tile, int64_t ld, int m, int nw, const CView<T>& C, int64_t i0, int64_t n0,
                       const T* bias, bool overwrite) {
  for (int r = 0; r < m; ++r) {
    T* c = C.row(i0 + r);
    if (!c) continue;
    c += n0;
    const T* t = tile + r * ld;
    if (overwrite) {
      if (bias)
        for (int n = 0; n < nw; ++n) c[n] = t[n] + bias[n0 + n];
      else
        for (int n = 0; n < nw; ++n) c[n] = t[n];
    } else {
      for (int n = 0; n < nw; ++n) c[n] += t[n];
    }
  }
}

// K blocking of gemm(). With several K blocks every element of C goes to
// memory and back once per block. When A is read in place (x rows for the
// input projection, dG rows for dx) and K is at most 8 KiB of elements (I or
// G*H of the layers here), K is not split: the kc x NR micro-panel of B then
// streams from L2 instead of sitting in L1, which costs less than the C
// traffic it saves (measured, LSTM B=64 T=50 H=512, 1 thread: input
// projection 80 -> 64 ms, dx 78 -> 63 ms). Packed A (the weight gradients,
// K = rows) keeps blocks the size of this CPU's L1 (pyrnn/cache.h): larger
// ones, and a variant keeping C blocks in L2 across all K blocks, measured
// slower there.
template <class T>
inline int64_t gemm_kc(int64_t K, int64_t NR, bool packed_a) {
  if (!packed_a && K * int64_t(sizeof(T)) <= 8 * 1024) return K;
  return std::min<int64_t>(256, std::max<int64_t>(64, cache_sizes().l1 / int64_t(NR * sizeof(T))));
}

// Per-thread scratch for gemm(); grows on demand, reused across calls.
template <class T>
struct GemmScratch {
  AlignedBuffer<T> a, b;
};

// One thread computes C[0..M, 0..N] = A B (+ bias[n]) or C += A B.
// Called by each thread on its own block of C, so no synchronisation here.
// `prepacked`, when given, holds B already packed as whole NR-wide column
// panels over all of K (panel j at prepacked + j*K*NR, as pack_column_panels
// writes them: frozen weights), so no packing happens here; the last panel
// is then computed whole and only its first columns written. `direct`
// (A read in place, B by columns, ptr[n][k]): B is not packed at all, its
// rows read where they are (direct_tile), for products over so few rows of A
// that packing B would cost more. The sums are the same every way.
template <class T>
void gemm(int64_t M, int64_t N, int64_t K, const AView<T>& A, const BView<T>& B, const CView<T>& C,
          const T* bias, bool accumulate, GemmScratch<T>& s, const T* prepacked = nullptr, bool direct = false) {
  constexpr int NV = kGemmNV, MR = kGemmMR, NR = NV * kLanes<T>;
  // Blocking: a kc x NR micro-panel of B stays in L1 (or L2, gemm_kc) while
  // the micro-kernel passes over all MC rows of A; the kc x nc block of B
  // (half of this CPU's L2) and the MC x kc block of A stay in L2.
  constexpr int64_t MC = 72;
  // Row tiles start at multiples of MR (callers split rows in whole tiles):
  // each row then sits in the same tile for any split, see input_grad.
  static_assert(MC % MR == 0, "MC must hold whole row tiles");
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; ++i) {
        T* c = C.row(i);
        if (c)
          for (int64_t n = 0; n < N; ++n) c[n] = bias ? bias[n] : T(0);
      }
    return;
  }
  const bool packed_a = A.rows == nullptr;
  direct = direct && !packed_a && !prepacked && !B.by_rows;
  const int64_t KC = gemm_kc<T>(K, NR, packed_a);
  const int64_t NC = std::max<int64_t>(NR, (cache_sizes().l2 / 2 / int64_t(KC * sizeof(T))) / NR * NR);
  if (!prepacked && !direct) s.b.reserve(size_t(KC * NC));
  if (packed_a) s.a.reserve(size_t(KC * MC));
  alignas(64) T tile[MR * NR];
  const T* arows[MR];
  const T* wrows[NR];
  for (int64_t jc = 0; jc < N; jc += NC) {
    int64_t nc = std::min(NC, N - jc);
    for (int64_t pc = 0; pc < K; pc += KC) {
      int64_t kc = std::min(KC, K - pc);
      bool first = pc == 0;
      if (!prepacked && !direct) pack_b<T, NR>(B, pc, kc, jc, nc, s.b.data());
      for (int64_t ic = 0; ic < M; ic += MC) {
        int64_t mc = std::min(MC, M - ic);
        if (packed_a) pack_a<T, MR>(A, ic, mc, pc, kc, s.a.data());
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int nw = int(std::min<int64_t>(NR, nc - jr));
          const int64_t w = prepacked || direct ? NR : panel_width<T, NR>(nw);
          const int nv = int(w / kLanes<T>);
          const T* bp = prepacked ? prepacked + ((jc + jr) / NR * K + pc) * NR : s.b.data() + (jr / NR) * kc * NR;
          if (direct)
            for (int c = 0; c < NR; ++c) {
              const T* row = c < nw ? B.ptr[jc + jr + c] : nullptr;
              wrows[c] = row ? row + pc : nullptr;
            }
          for (int64_t ir = 0; ir < mc; ir += MR) {
            int m = int(std::min<int64_t>(MR, mc - ir));
            if (packed_a) {
              ukernel_nv<T, MR, NV, true>(nv, m, kc, s.a.data() + (ir / MR) * kc * MR, nullptr, bp, tile);
            } else if (direct) {
              for (int r = 0; r < MR; ++r) arows[r] = A.rows[ic + ir + std::min(r, m - 1)] + pc;
              direct_tile<T, MR, NV, false>(m, kc, arows, wrows, tile);
            } else {
              for (int r = 0; r < MR; ++r) arows[r] = A.rows[ic + ir + std::min(r, m - 1)] + pc;
              // A whole tile that overwrites C goes to C's rows directly, bias added in
              // registers (the input projection; bitwise the same as through write_tile):
              // measured, LSTM inference's input projection B=50 T=50 I=65/128 H=128 1.07x
              // faster, B=64 I=H=512 1.03x (Zen 3, 1 thread).
              if (m == MR && nw == NR && first && !accumulate) {
                T* crow[MR];
                bool all = true;
                for (int r = 0; r < MR; ++r) all &= (crow[r] = C.row(ic + ir + r)) != nullptr;
                if (all) {
                  for (int r = 0; r < MR; ++r) crow[r] += jc + jr;
                  ukernel_out<T, MR, NV, false, false>(kc, nullptr, arows, bp,
                                                       CRowsBias<T>{crow, bias ? bias + jc + jr : nullptr});
                  continue;
                }
              }
              ukernel_nv<T, MR, NV, false>(nv, m, kc, nullptr, arows, bp, tile);
            }
            write_tile<T>(tile, w, m, nw, C, ic + ir, jc + jr, bias, first && !accumulate);
          }
        }
      }
    }
  }
}

// One product of gemm_shared_a: C[0..M, 0..N] = A B.
template <class T>
struct SharedAProduct {
  BView<T> B;
  CView<T> C;
  int64_t N;
};

// Packs the whole of A(0..M, k0..k0+kc) (rs = 1: each k a contiguous run of M,
// as dG's rows are) into MR-row panels, and with `colsum` adds each row's
// values over these k to colsum[i], in k order.
template <class T, int MR>
void pack_a_rows(const AView<T>& A, int64_t M, int64_t k0, int64_t kc, T* out, T* colsum) {
  const int64_t full = M / MR, rest = M - full * MR;
  for (int64_t k = 0; k < kc; ++k) {
    const T* src = A.p + (k0 + k) * A.cs;
    if (colsum)
      for (int64_t i = 0; i < M; ++i) colsum[i] += src[i];
    T* o = out + k * MR;
    for (int64_t p = 0; p < full; ++p, o += kc * MR, src += MR) std::memcpy(o, src, sizeof(T) * MR);
    if (rest) {
      std::memcpy(o, src, sizeof(T) * size_t(rest));
      for (int r = int(rest); r < MR; ++r) o[r] = T(0);
    }
  }
}

// C_j = A B_j for several products with one A (K = rows, A = dG^T read through
// a view with rs = 1): the weight gradients that share dG (dW_ih and dW_hh of
// an LSTM). Each K block of A is packed once for all products and all their
// columns; gemm() packs it once per NC columns of each product. With
// `colsum`, A's sums over k (the bias gradient) come out of the same pass
// over A. The K blocks, tiles and per-element sums are gemm()'s, so each C
// element is bitwise what gemm() gives.
template <class T>
void gemm_shared_a(int64_t M, int64_t K, const AView<T>& A, const SharedAProduct<T>* prods, int nprod, T* colsum,
                   GemmScratch<T>& s) {
  constexpr int NV = kGemmNV, MR = kGemmMR, NR = NV * kLanes<T>;
  constexpr int64_t MC = 72;  // as gemm(): the MC x kc block of A that the micro-panels pass over sits in L2
  if (colsum) std::fill(colsum, colsum + std::max<int64_t>(M, 0), T(0));
  if (M <= 0) return;
  if (K <= 0) {
    for (int j = 0; j < nprod; ++j) gemm<T>(M, prods[j].N, 0, A, prods[j].B, prods[j].C, nullptr, false, s);
    return;
  }
  const int64_t KC = gemm_kc<T>(K, NR, true);
  const int64_t NC = std::max<int64_t>(NR, (cache_sizes().l2 / 2 / int64_t(KC * sizeof(T))) / NR * NR);
  s.a.reserve(size_t((M + MR - 1) / MR * MR * KC));
  s.b.reserve(size_t(KC * NC));
  alignas(64) T tile[MR * NR];
  for (int64_t pc = 0; pc < K; pc += KC) {
    const int64_t kc = std::min(KC, K - pc);
    pack_a_rows<T, MR>(A, M, pc, kc, s.a.data(), colsum);
    for (int j = 0; j < nprod; ++j) {
      const SharedAProduct<T>& pr = prods[j];
      for (int64_t jc = 0; jc < pr.N; jc += NC) {
        const int64_t nc = std::min(NC, pr.N - jc);
        pack_b<T, NR>(pr.B, pc, kc, jc, nc, s.b.data());
        for (int64_t ic = 0; ic < M; ic += MC) {
          const int64_t mc = std::min(MC, M - ic);
          for (int64_t jr = 0; jr < nc; jr += NR) {
            const int nw = int(std::min<int64_t>(NR, nc - jr));
            const int64_t w = panel_width<T, NR>(nw);
            const T* bp = s.b.data() + (jr / NR) * kc * NR;
            for (int64_t ir = 0; ir < mc; ir += MR) {
              const int m = int(std::min<int64_t>(MR, mc - ir));
              const T* ap = s.a.data() + ((ic + ir) / MR) * kc * MR;
              T* crow[MR];
              bool whole = m == MR && nw == NR && pr.C.rows;
              for (int r = 0; whole && r < MR; ++r) whole = (crow[r] = pr.C.rows[ic + ir + r]) != nullptr;
              if (whole) {
                for (int r = 0; r < MR; ++r) crow[r] += jc + jr;
                ukernel_into<T, MR, NV>(kc, ap, bp, crow, pc == 0);
              } else {
                ukernel_nv<T, MR, NV, true>(int(w / kLanes<T>), m, kc, ap, nullptr, bp, tile);
                write_tile<T>(tile, w, m, nw, pr.C, ic + ir, jc + jr, nullptr, pc == 0);
              }
            }
          }
        }
      }
    }
  }
}

}  // namespace PYRNN_ISA_NS
}  // namespace pyrnn
