// pyrnn_selftest: the kernels through pyrnn/api.h, without Python.
//
// For every cell kind (and the projected LSTM), at every ISA level this CPU
// and build support (PYRNN_ISA is set per level), on small odd shapes with
// lengths shorter than T and in reverse:
//   - float64 forward against the naive reference below (double sums);
//   - float64 backward against central finite differences of a random scalar
//     loss L = <y, Ry> + <h_n, Rh> + <c_n, Rc>, element by element, for every
//     input the call takes (x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr);
//   - float32 forward against the reference and float32 backward against the
//     float64 backward (loose tolerances): the fp32 kernels are the vectorised
//     ones (NEON fmla .4s on aarch64);
//   - cell_step (one step, the generation path) against the reference;
//   - 1 and 2 threads giving bitwise identical forward and backward results
//     (a larger shape, so that the calls do split).
// Prints one line per case and a summary; exits 1 on any failure.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "pyrnn/api.h"
#include "pyrnn/isa.h"
#include "pyrnn/threads.h"

using namespace pyrnn;

namespace {

enum Arr { X, H0, C0, WIH, WHH, BIH, BHH, WHR, NARR };
const char* const kArrName[NARR] = {"x", "h0", "c0", "W_ih", "W_hh", "b_ih", "b_hh", "W_hr"};

struct Problem {
  CellKind cell = CellKind::Lstm;
  int64_t T = 0, B = 0, I = 0, H = 0, P = 0;
  bool reverse = false;
  double leak = 1;
  std::vector<int64_t> lengths;    // empty: all T (null)
  std::vector<double> a[NARR];     // empty: not passed (null)
  std::vector<double> ry, rh, rc;  // the loss's weights
  int64_t G() const { return gates_of(cell); }
  int64_t Ho() const { return P ? P : H; }
  bool lstm() const { return cell == CellKind::Lstm; }
};

std::mt19937_64 rng(20261202);

// n elements of R, zero (sizes are int64_t, as in api.h).
template <class R = double>
std::vector<R> zeros(int64_t n) {
  return std::vector<R>(static_cast<size_t>(n), R(0));
}

std::vector<double> rand_vec(int64_t n, double scale) {
  std::uniform_real_distribution<double> d(-scale, scale);
  std::vector<double> v = zeros(n);
  for (double& e : v) e = d(rng);
  return v;
}

// variant 0: lengths {T, 1, T-2, ...}, bias, h0 (and c0); 1: the same in
// reverse; 2: all T (null lengths), no bias, no h0/c0.
Problem make_problem(CellKind cell, int64_t P, int variant, int64_t T, int64_t B, int64_t I, int64_t H) {
  Problem p;
  p.cell = cell, p.T = T, p.B = B, p.I = I, p.H = H, p.P = P;
  p.reverse = variant == 1;
  p.leak = cell == CellKind::RnnLeaky ? 0.7 : 1.0;
  const int64_t G = p.G(), Ho = p.Ho();
  const double w = 0.9 / std::sqrt(double(Ho));
  if (variant != 2)
    for (int64_t b = 0; b < B; ++b) p.lengths.push_back(b % 3 == 0 ? T : b % 3 == 1 ? 1 : T - 2);
  p.a[X] = rand_vec(T * B * I, 1.0);
  p.a[WIH] = rand_vec(G * H * I, 0.6);
  p.a[WHH] = rand_vec(G * H * Ho, w);
  if (variant != 2) {
    p.a[BIH] = rand_vec(G * H, 0.3), p.a[BHH] = rand_vec(G * H, 0.3);
    p.a[H0] = rand_vec(B * Ho, 0.8);
    if (p.lstm()) p.a[C0] = rand_vec(B * H, 0.8);
  }
  if (P) p.a[WHR] = rand_vec(P * H, 0.6);
  p.ry = rand_vec(T * B * Ho, 1.0), p.rh = rand_vec(B * Ho, 1.0);
  if (p.lstm()) p.rc = rand_vec(B * H, 1.0);
  return p;
}

double sigm(double v) { return 1.0 / (1.0 + std::exp(-v)); }

struct Outputs {
  std::vector<double> y, hn, cn;
};

// The definition of each cell, one sequence entry and one step at a time.
Outputs naive_forward(const Problem& p) {
  const int64_t T = p.T, B = p.B, I = p.I, H = p.H, G = p.G(), Ho = p.Ho();
  auto in = [&](Arr k, int64_t i) { return p.a[k].empty() ? 0.0 : p.a[k][i]; };
  const std::vector<double>&Wih = p.a[WIH], &Whh = p.a[WHH], &Whr = p.a[WHR];
  Outputs o;
  o.y = zeros(T * B * Ho), o.hn = zeros(B * Ho), o.cn = zeros(B * H);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = p.lengths.empty() ? T : p.lengths[b];
    std::vector<double> h = zeros(Ho), c = zeros(H), gi = zeros(G * H), gh = zeros(G * H), m = zeros(H);
    for (int64_t j = 0; j < Ho; ++j) h[j] = in(H0, b * Ho + j);
    for (int64_t j = 0; j < H; ++j) c[j] = in(C0, b * H + j);
    for (int64_t k = 0; k < L; ++k) {
      const int64_t t = p.reverse ? L - 1 - k : k;
      const double* x = p.a[X].data() + (t * B + b) * I;
      for (int64_t r = 0; r < G * H; ++r) {
        double si = in(BIH, r), sh = in(BHH, r);
        for (int64_t i = 0; i < I; ++i) si += Wih[r * I + i] * x[i];
        for (int64_t j = 0; j < Ho; ++j) sh += Whh[r * Ho + j] * h[j];
        gi[r] = si, gh[r] = sh;
      }
      switch (p.cell) {
        case CellKind::RnnTanh:
          for (int64_t u = 0; u < H; ++u) h[u] = std::tanh(gi[u] + gh[u]);
          break;
        case CellKind::RnnRelu:
          for (int64_t u = 0; u < H; ++u) h[u] = std::max(0.0, gi[u] + gh[u]);
          break;
        case CellKind::RnnLeaky:
          for (int64_t u = 0; u < H; ++u) h[u] = (1 - p.leak) * h[u] + p.leak * std::tanh(gi[u] + gh[u]);
          break;
        case CellKind::Lstm:
          for (int64_t u = 0; u < H; ++u) {
            const double ig = sigm(gi[u] + gh[u]), fg = sigm(gi[H + u] + gh[H + u]);
            const double gg = std::tanh(gi[2 * H + u] + gh[2 * H + u]), og = sigm(gi[3 * H + u] + gh[3 * H + u]);
            c[u] = fg * c[u] + ig * gg;
            m[u] = og * std::tanh(c[u]);
          }
          for (int64_t j = 0; j < Ho; ++j) {
            double s = 0;
            if (p.P)
              for (int64_t u = 0; u < H; ++u) s += Whr[j * H + u] * m[u];
            h[j] = p.P ? s : m[j];
          }
          break;
        case CellKind::Gru:
          for (int64_t u = 0; u < H; ++u) {
            const double r = sigm(gi[u] + gh[u]), z = sigm(gi[H + u] + gh[H + u]);
            const double n = std::tanh(gi[2 * H + u] + r * gh[2 * H + u]);
            h[u] = (1 - z) * n + z * h[u];
          }
          break;
        case CellKind::GruResetBefore: {
          std::vector<double> rh = zeros(H);
          for (int64_t u = 0; u < H; ++u) rh[u] = sigm(gi[u] + gh[u]) * h[u];
          for (int64_t u = 0; u < H; ++u) {
            double s = in(BHH, 2 * H + u);
            for (int64_t j = 0; j < H; ++j) s += Whh[(2 * H + u) * H + j] * rh[j];
            const double z = sigm(gi[H + u] + gh[H + u]), n = std::tanh(gi[2 * H + u] + s);
            h[u] = (1 - z) * n + z * h[u];
          }
          break;
        }
      }
      for (int64_t j = 0; j < Ho; ++j) o.y[(t * B + b) * Ho + j] = h[j];
    }
    for (int64_t j = 0; j < Ho; ++j) o.hn[b * Ho + j] = h[j];
    for (int64_t j = 0; j < H; ++j) o.cn[b * H + j] = c[j];
  }
  return o;
}

template <class R>
std::vector<R> conv(const std::vector<double>& v) {
  return std::vector<R>(v.begin(), v.end());
}
template <class R>
const R* ptr(const std::vector<R>& v) {
  return v.empty() ? nullptr : v.data();
}
template <class R>
R* ptr(std::vector<R>& v) {
  return v.empty() ? nullptr : v.data();
}

// The kernels' outputs and (with backward) the gradient of every input.
template <class R>
struct KernelRun {
  std::vector<R> y, hn, cn, g[NARR];
};

template <class R>
KernelRun<R> run_kernels(const Problem& p, bool backward, int nthreads) {
  std::vector<R> in[NARR];
  for (int k = 0; k < NARR; ++k) in[k] = conv<R>(p.a[k]);
  ForwardArgs<R> a;
  a.cell = p.cell, a.T = p.T, a.B = p.B, a.I = p.I, a.H = p.H, a.P = p.P;
  a.x = ptr(in[X]), a.h0 = ptr(in[H0]), a.c0 = ptr(in[C0]), a.W_ih = ptr(in[WIH]), a.W_hh = ptr(in[WHH]);
  a.b_ih = ptr(in[BIH]), a.b_hh = ptr(in[BHH]), a.W_hr = ptr(in[WHR]);
  a.lengths = p.lengths.empty() ? nullptr : p.lengths.data();
  a.reverse = p.reverse, a.leak = R(p.leak);
  KernelRun<R> out;
  out.y = zeros<R>(p.T * p.B * p.Ho()), out.hn = zeros<R>(p.B * p.Ho());
  a.y = out.y.data(), a.h_n = out.hn.data();
  if (p.lstm()) out.cn = zeros<R>(p.B * p.H), a.c_n = out.cn.data();
  WorkspacePtr<R> ws = sequence_forward(a, backward, nthreads);
  if (!backward) return out;
  const std::vector<R> ry = conv<R>(p.ry), rh = conv<R>(p.rh), rc = conv<R>(p.rc);
  // Every gradient is written, also for inputs passed as null (zeros).
  const int64_t size[NARR] = {p.T * p.B * p.I, p.B * p.Ho(), p.lstm() ? p.B * p.H : 0, p.G() * p.H * p.I,
                              p.G() * p.H * p.Ho(), in[BIH].empty() ? 0 : p.G() * p.H,
                              in[BHH].empty() ? 0 : p.G() * p.H, p.P * p.H};
  for (int k = 0; k < NARR; ++k) out.g[k].assign(static_cast<size_t>(size[k]), R(-7));  // garbage the kernels overwrite
  std::fill(out.g[X].begin(), out.g[X].end(), R(0));  // dx: padded positions may stay unwritten
  BackwardArgs<R> g;
  g.dy = ry.data(), g.dh_n = rh.data(), g.dc_n = ptr(rc);
  g.dx = out.g[X].data(), g.dh0 = out.g[H0].data(), g.dc0 = ptr(out.g[C0]);
  g.dW_ih = out.g[WIH].data(), g.dW_hh = out.g[WHH].data(), g.db_ih = ptr(out.g[BIH]), g.db_hh = ptr(out.g[BHH]);
  g.dW_hr = ptr(out.g[WHR]);
  sequence_backward(*ws, a, g, nthreads);
  return out;
}

template <class V>
double dot(const std::vector<double>& r, const V& v) {
  double s = 0;
  for (size_t i = 0; i < r.size(); ++i) s += r[i] * double(v[i]);
  return s;
}

double loss_f64(const Problem& p) {
  KernelRun<double> k = run_kernels<double>(p, false, 1);
  return dot(p.ry, k.y) + dot(p.rh, k.hn) + (p.lstm() ? dot(p.rc, k.cn) : 0.0);
}

int g_checks = 0, g_failures = 0;

// Passes when |got - want| <= atol + rtol |want| everywhere (NaN fails);
// returns the largest |got - want| and reports the worst element on failure.
template <class A, class B>
double compare(const std::string& what, const A& got, const B& want, double atol, double rtol) {
  double worst = got.size() == want.size() ? 0 : INFINITY, largest = 0;
  size_t at = 0;
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    const double e = std::fabs(double(got[i]) - double(want[i]));
    const double q = e / (atol + rtol * std::fabs(double(want[i])));
    if (!(q <= worst)) worst = q, at = i;
    if (!(e <= largest)) largest = e;
  }
  ++g_checks;
  if (!(worst <= 1)) {
    ++g_failures;
    std::printf("    FAIL %s: element %zu: got %.10g want %.10g\n", what.c_str(), at,
                at < got.size() ? double(got[at]) : NAN, at < want.size() ? double(want[at]) : NAN);
  }
  return largest;
}

template <class R>
bool bitwise_equal(const std::vector<R>& a, const std::vector<R>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(R)) == 0);
}

struct CellCase {
  const char* name;
  CellKind cell;
  int64_t P;
};
const CellCase kCases[] = {
    {"rnn_tanh", CellKind::RnnTanh, 0}, {"rnn_relu", CellKind::RnnRelu, 0}, {"rnn_leaky", CellKind::RnnLeaky, 0},
    {"lstm", CellKind::Lstm, 0},        {"lstm_proj", CellKind::Lstm, 5},   {"gru", CellKind::Gru, 0},
    {"gru_reset_before", CellKind::GruResetBefore, 0},
};
const char* const kVariant[] = {"lengths", "lengths+reverse", "no bias/h0"};

// Forward, backward and the float32 path on one small problem; prints one line.
void check_small(const std::string& tag, const Problem& p) {
  const Outputs ref = naive_forward(p);
  char buf[256];
  // float64 forward against the reference.
  KernelRun<double> k64 = run_kernels<double>(p, true, 1);
  double fwd = compare(tag + " f64 y", k64.y, ref.y, 1e-12, 1e-11);
  fwd = std::max(fwd, compare(tag + " f64 h_n", k64.hn, ref.hn, 1e-12, 1e-11));
  if (p.lstm()) fwd = std::max(fwd, compare(tag + " f64 c_n", k64.cn, ref.cn, 1e-12, 1e-11));
  // float64 backward against central differences, element by element.
  double grad = 0;
  const double eps = 1e-5;
  Problem q = p;
  for (int k = 0; k < NARR; ++k) {
    if (q.a[k].empty()) continue;
    std::vector<double> fd(q.a[k].size());
    for (size_t i = 0; i < fd.size(); ++i) {
      const double v = q.a[k][i];
      q.a[k][i] = v + eps;
      const double lp = loss_f64(q);
      q.a[k][i] = v - eps;
      const double lm = loss_f64(q);
      q.a[k][i] = v;
      fd[i] = (lp - lm) / (2 * eps);
    }
    grad = std::max(grad, compare(tag + " f64 d" + kArrName[k] + " vs finite differences", k64.g[k], fd, 2e-8, 2e-8));
  }
  // float32: forward against the reference, backward against float64's.
  KernelRun<float> k32 = run_kernels<float>(p, true, 1);
  double f32 = compare(tag + " f32 y", k32.y, ref.y, 5e-6, 5e-6);
  f32 = std::max(f32, compare(tag + " f32 h_n", k32.hn, ref.hn, 5e-6, 5e-6));
  if (p.lstm()) f32 = std::max(f32, compare(tag + " f32 c_n", k32.cn, ref.cn, 5e-6, 5e-6));
  double g32 = 0;
  for (int k = 0; k < NARR; ++k)
    if (!k64.g[k].empty())
      g32 = std::max(g32, compare(tag + " f32 d" + kArrName[k] + " vs f64", k32.g[k], k64.g[k], 2e-5, 2e-5));
  std::snprintf(buf, sizeof buf, "  %-44s f64 fwd %.1e  grad-fd %.1e | f32 fwd %.1e  grad %.1e", tag.c_str(), fwd,
                grad, f32, g32);
  std::puts(buf);
}

// One step (cell_step) from h, c against the reference with T = 1.
void check_step(const std::string& tag, const Problem& p0) {
  Problem p = p0;
  p.T = 1, p.lengths.clear(), p.reverse = false;
  p.a[X].resize(p.a[X].size() / static_cast<size_t>(p0.T));  // x[0]
  const Outputs ref = naive_forward(p);
  auto run = [&](auto zero) {
    using R = decltype(zero);
    std::vector<R> in[NARR];
    for (int k = 0; k < NARR; ++k) in[k] = conv<R>(p.a[k]);
    CellStepArgs<R> s;
    s.cell = p.cell, s.B = p.B, s.I = p.I, s.H = p.H, s.leak = R(p.leak);
    s.x = in[X].data(), s.h = ptr(in[H0]), s.c = ptr(in[C0]), s.W_ih = in[WIH].data(), s.W_hh = in[WHH].data();
    s.b_ih = ptr(in[BIH]), s.b_hh = ptr(in[BHH]);
    std::vector<R> h = zeros<R>(p.B * p.H), c = zeros<R>(p.B * p.H);
    s.h_out = h.data(), s.c_out = p.lstm() ? c.data() : nullptr;
    cell_step(s, 1);
    const double tol = sizeof(R) == 8 ? 1e-12 : 5e-6;
    const std::string what = tag + (sizeof(R) == 8 ? " f64" : " f32") + " cell_step ";
    double w = compare(what + "h", h, ref.hn, tol, tol);
    if (p.lstm()) w = std::max(w, compare(what + "c", c, ref.cn, tol, tol));
    return w;
  };
  const double w64 = run(0.0), w32 = run(0.0f);
  std::printf("  %-44s cell_step: f64 %.1e | f32 %.1e\n", tag.c_str(), w64, w32);
}

// 1 and 2 threads (fixed mode) on a shape whose steps split: bitwise equal.
template <class R>
bool same_at_1_and_2_threads(const Problem& p) {
  set_num_threads(1);
  KernelRun<R> one = run_kernels<R>(p, true, 1);
  set_num_threads(2);
  KernelRun<R> two = run_kernels<R>(p, true, 2);
  bool same = bitwise_equal(one.y, two.y) && bitwise_equal(one.hn, two.hn) && bitwise_equal(one.cn, two.cn);
  for (int k = 0; k < NARR; ++k) same = same && bitwise_equal(one.g[k], two.g[k]);
  return same;
}

}  // namespace

int main() {
  std::vector<Isa> levels = isa_supported();
  std::string names;
  for (Isa l : levels) names += std::string(names.empty() ? "" : ", ") + isa_name(l);
  std::printf("pyrnn_selftest: ISA levels supported here: %s\n", names.c_str());
  for (Isa level : levels) {
    setenv("PYRNN_ISA", isa_name(level), 1);
    if (isa_selected() != level) {
      std::printf("FAIL: PYRNN_ISA=%s did not select that level\n", isa_name(level));
      return 1;
    }
    std::printf("[%s] T=5 B=3 I=7 H=9 (P=5): largest |error| against the reference / finite differences\n",
                isa_name(level));
    for (const CellCase& c : kCases) {
      for (int v = 0; v < 3; ++v) {
        const Problem p = make_problem(c.cell, c.P, v, 5, 3, 7, 9);
        check_small(std::string(isa_name(level)) + " " + c.name + " " + kVariant[v], p);
        if (v == 0 && c.P == 0) check_step(std::string(isa_name(level)) + " " + c.name, p);
      }
    }
    std::printf("[%s] 1 vs 2 threads, T=6 B=21 I=11 H=67 (P=29 projected), forward + backward\n",
                isa_name(level));
    for (const CellCase& c : kCases) {
      for (int v = 0; v < 2; ++v) {
        const Problem p = make_problem(c.cell, c.P ? 29 : 0, v, 6, 21, 11, 67);
        const bool same = same_at_1_and_2_threads<float>(p) && same_at_1_and_2_threads<double>(p);
        ++g_checks;
        if (!same) ++g_failures;
        std::printf("  %-44s f32+f64 %s\n", (std::string(isa_name(level)) + " " + c.name + " " + kVariant[v]).c_str(),
                    same ? "bitwise identical" : "FAIL: results differ");
      }
    }
    set_adaptive_threads();
  }
  std::printf("pyrnn_selftest: %d checks, %d failed: %s\n", g_checks, g_failures, g_failures ? "FAIL" : "PASS");
  return g_failures ? 1 : 0;
}
