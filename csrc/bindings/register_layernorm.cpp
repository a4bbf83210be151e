// Layer-normalised LSTM / GRU kernels (pyrnn/api.h layernorm_forward/backward).
//
// As in register_sequence.cpp, arguments are validated in Python
// (pyrnn/_validation.py); the checks here only protect memory: dtype, shape
// and contiguity of every array the kernels touch, and lengths in range.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <optional>
#include <string>

#include "arrays.h"
#include "pyrnn/api.h"
#include "pyrnn/threads.h"

namespace py = pybind11;
using pyrnn::CellKind;
using pyrnn_bindings::check_array;
using pyrnn_bindings::has_dtype;
using pyrnn_bindings::opt_array;
using pyrnn_bindings::ptr;
using pyrnn_bindings::require;

namespace {

template <class Real>
py::array_t<Real> zeros(std::initializer_list<py::ssize_t> shape) {
  py::array_t<Real> a{std::vector<py::ssize_t>(shape)};
  std::memset(a.mutable_data(), 0, sizeof(Real) * size_t(a.size()));
  return a;
}

// What backward needs: the forward's arrays (kept alive) and the workspace.
struct LnState {
  CellKind cell = CellKind::Lstm;
  bool f64 = false;
  int64_t T = 0, B = 0, I = 0, H = 0, P = 0;  // P: the LSTM projection's width (0: none)
  bool has_bias = false, has_c_bias = false;
  pyrnn::LnWorkspacePtr<float> wf;
  pyrnn::LnWorkspacePtr<double> wd;
  pyrnn::LayerNormArgs<float> af;
  pyrnn::LayerNormArgs<double> ad;
  py::list keep;  // the arrays the args point into
  int64_t nbytes() const {
    return f64 ? (wd ? pyrnn::layernorm_workspace_bytes(*wd) : 0) : (wf ? pyrnn::layernorm_workspace_bytes(*wf) : 0);
  }
};

template <class Real>
py::tuple forward_typed(CellKind cell, py::array x, std::optional<py::array> h0, std::optional<py::array> c0,
                        py::array W_ih, py::array W_hh, std::optional<py::array> b_ih, std::optional<py::array> b_hh,
                        py::array ln_ih, py::array ln_hh, std::optional<py::array> ln_c_weight,
                        std::optional<py::array> ln_c_bias, std::optional<py::array> lengths, bool reverse,
                        bool training, std::optional<py::array> h_mask, std::optional<py::array> zoneout_h,
                        std::optional<py::array> zoneout_c, std::optional<py::array> W_hr) {
  const py::dtype dt = py::dtype::of<Real>();
  require(cell == CellKind::Lstm || cell == CellKind::Gru, "cell: the LSTM or the GRU (reset-after)");
  const bool lstm = cell == CellKind::Lstm;
  const int64_t G = pyrnn::gates_of(cell);
  require(x.ndim() == 3 && W_hh.ndim() == 2, "x must be 3-D and W_hh 2-D");
  require(!W_hr || lstm, "W_hr (a projection): LSTM only");
  require(!W_hr || W_hr->ndim() == 2, "W_hr must be 2-D");
  const int64_t T = x.shape(0), B = x.shape(1), I = x.shape(2);
  const int64_t H = W_hr ? W_hr->shape(1) : W_hh.shape(1), P = W_hr ? W_hr->shape(0) : 0, Ho = P ? P : H;
  require(T >= 1 && I >= 1 && H >= 1, "T, I and H must be at least 1");
  require(!W_hr || (P >= 1 && P < H), "W_hr must be [P, H] with 1 <= P < H");
  require(bool(b_ih) == bool(b_hh), "b_ih and b_hh: both or neither");
  require(lstm == bool(ln_c_weight), "ln_c_weight: for the LSTM (required) only");
  require(lstm || (!c0 && !ln_c_bias && !zoneout_c), "c0, ln_c_bias, zoneout_c: LSTM only");
  check_array("x", x, dt, {T, B, I});
  check_array("W_ih", W_ih, dt, {G * H, I});
  check_array("W_hh", W_hh, dt, {G * H, Ho});
  if (W_hr) check_array("W_hr", *W_hr, dt, {P, H});
  if (b_ih) check_array("b_ih", *b_ih, dt, {G * H}), check_array("b_hh", *b_hh, dt, {G * H});
  check_array("ln_ih", ln_ih, dt, {G * H});
  check_array("ln_hh", ln_hh, dt, {G * H});
  if (ln_c_weight) check_array("ln_c_weight", *ln_c_weight, dt, {H});
  if (ln_c_bias) check_array("ln_c_bias", *ln_c_bias, dt, {H});
  if (h0) check_array("h0", *h0, dt, {B, Ho});
  if (c0) check_array("c0", *c0, dt, {B, H});
  if (h_mask) check_array("h_mask", *h_mask, dt, {B, Ho});
  if (zoneout_h) check_array("zoneout_h", *zoneout_h, dt, {T, B, Ho});
  if (zoneout_c) check_array("zoneout_c", *zoneout_c, dt, {T, B, H});
  if (lengths) {
    check_array("lengths", *lengths, py::dtype::of<int64_t>(), {B});
    const int64_t* L = ptr<int64_t>(lengths);
    for (int64_t b = 0; b < B; ++b) require(L[b] >= 1 && L[b] <= T, "lengths must lie in [1, T]");
  }
  py::array_t<Real> y = lengths ? zeros<Real>({T, B, Ho}) : py::array_t<Real>(std::vector<py::ssize_t>{T, B, Ho});
  py::array_t<Real> h_n(std::vector<py::ssize_t>{B, Ho});
  py::object c_n = py::none();
  pyrnn::LayerNormArgs<Real> a;
  a.cell = cell, a.T = T, a.B = B, a.I = I, a.H = H;
  a.x = ptr<Real>(x), a.h0 = ptr<Real>(h0), a.c0 = ptr<Real>(c0);
  a.W_ih = ptr<Real>(W_ih), a.W_hh = ptr<Real>(W_hh), a.b_ih = ptr<Real>(b_ih), a.b_hh = ptr<Real>(b_hh);
  a.ln_ih = ptr<Real>(ln_ih), a.ln_hh = ptr<Real>(ln_hh);
  a.ln_c_weight = ptr<Real>(ln_c_weight), a.ln_c_bias = ptr<Real>(ln_c_bias);
  a.lengths = ptr<int64_t>(lengths), a.reverse = reverse;
  a.h_mask = ptr<Real>(h_mask), a.zoneout_h = ptr<Real>(zoneout_h), a.zoneout_c = ptr<Real>(zoneout_c);
  a.P = P, a.W_hr = ptr<Real>(W_hr);
  a.y = y.mutable_data(), a.h_n = h_n.mutable_data();
  if (lstm) {
    py::array_t<Real> cn(std::vector<py::ssize_t>{B, H});
    a.c_n = cn.mutable_data();
    c_n = cn;
  }
  const int nth = pyrnn::get_num_threads();
  pyrnn::LnWorkspacePtr<Real> ws;
  if (B > 0) {
    pyrnn_bindings::KernelCall nogil;  // only raw buffers are touched below
    ws = pyrnn::layernorm_forward<Real>(a, training, nth);
  }
  py::object state = py::none();
  if (training) {
    auto st = std::make_unique<LnState>();
    st->cell = cell, st->T = T, st->B = B, st->I = I, st->H = H, st->P = P;
    st->has_bias = bool(b_ih), st->has_c_bias = bool(ln_c_bias);
    for (const py::object& o : {py::object(x), py::object(W_ih), py::object(W_hh), py::object(ln_ih),
                                py::object(ln_hh), py::object(y)})
      st->keep.append(o);
    for (const auto& o : {h0, c0, b_ih, b_hh, ln_c_weight, ln_c_bias, lengths, h_mask, zoneout_h, zoneout_c, W_hr})
      if (o) st->keep.append(*o);
    if constexpr (std::is_same_v<Real, float>)
      st->wf = std::move(ws), st->af = a;
    else
      st->f64 = true, st->wd = std::move(ws), st->ad = a;
    state = py::cast(std::move(st));
  }
  return py::make_tuple(y, h_n, c_n, state);
}

template <class Real>
py::tuple backward_typed(LnState& st, std::optional<py::array> dy, std::optional<py::array> dh_n,
                         std::optional<py::array> dc_n) {
  const py::dtype dt = py::dtype::of<Real>();
  const bool lstm = st.cell == CellKind::Lstm;
  const int64_t T = st.T, B = st.B, I = st.I, H = st.H, G = pyrnn::gates_of(st.cell), P = st.P, Ho = P ? P : H;
  if (dy) check_array("dy", *dy, dt, {T, B, Ho});
  if (dh_n) check_array("dh_n", *dh_n, dt, {B, Ho});
  require(!dc_n || lstm, "dc_n: LSTM only");
  if (dc_n) check_array("dc_n", *dc_n, dt, {B, H});
  // Zero-filled: dx rows at padded steps are not written, and with B = 0 nothing is.
  auto dx = zeros<Real>({T, B, I}), dh0 = zeros<Real>({B, Ho});
  auto dW_ih = zeros<Real>({G * H, I}), dW_hh = zeros<Real>({G * H, Ho});
  auto dln_ih = zeros<Real>({G * H}), dln_hh = zeros<Real>({G * H});
  py::object dc0 = py::none(), db_ih = py::none(), db_hh = py::none(), dlc_w = py::none(), dlc_b = py::none();
  py::object dW_hr = py::none();
  pyrnn::LayerNormGrads<Real> g;
  g.dy = ptr<Real>(dy), g.dh_n = ptr<Real>(dh_n), g.dc_n = ptr<Real>(dc_n);
  g.dx = dx.mutable_data(), g.dh0 = dh0.mutable_data(), g.dW_ih = dW_ih.mutable_data();
  g.dW_hh = dW_hh.mutable_data(), g.dln_ih = dln_ih.mutable_data(), g.dln_hh = dln_hh.mutable_data();
  if (st.has_bias) {
    auto a = zeros<Real>({G * H}), b = zeros<Real>({G * H});
    g.db_ih = a.mutable_data(), g.db_hh = b.mutable_data();
    db_ih = a, db_hh = b;
  }
  if (lstm) {
    auto c = zeros<Real>({B, H}), w = zeros<Real>({H});
    g.dc0 = c.mutable_data(), g.dln_c_weight = w.mutable_data();
    dc0 = c, dlc_w = w;
    if (st.has_c_bias) {
      auto bb = zeros<Real>({H});
      g.dln_c_bias = bb.mutable_data();
      dlc_b = bb;
    }
  }
  if (P) {
    auto d = zeros<Real>({P, H});
    g.dW_hr = d.mutable_data();
    dW_hr = d;
  }
  const int nth = pyrnn::get_num_threads();
  if (B > 0) {
    pyrnn_bindings::KernelCall nogil;
    if constexpr (std::is_same_v<Real, float>)
      pyrnn::layernorm_backward<float>(*st.wf, st.af, g, nth);
    else
      pyrnn::layernorm_backward<double>(*st.wd, st.ad, g, nth);
  }
  return py::make_tuple(dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, dln_ih, dln_hh, dlc_w, dlc_b, dW_hr);
}

}  // namespace

void register_layernorm(py::module_& m) {
  py::class_<LnState>(m, "LayerNormWorkspace",
                      "What a layer-normalised training forward keeps for backward: saved normalised values, "
                      "1/sigma and gates, plus references to the forward's arrays.")
      .def_readonly("cell", &LnState::cell)
      .def_property_readonly("nbytes", &LnState::nbytes, "Bytes of saved activations.")
      .def_property_readonly("dtype",
                             [](const LnState& s) { return s.f64 ? py::dtype::of<double>() : py::dtype::of<float>(); })
      .def_property_readonly("shape", [](const LnState& s) { return py::make_tuple(s.T, s.B, s.I, s.H); })
      .def_property_readonly(
          "proj_size", [](const LnState& s) { return s.P; },
          "The LSTM projection's width P (h, y are P wide), 0 without one.");

  m.def(
      "layernorm_forward",
      [](CellKind cell, py::array x, py::object h0, py::object c0, py::array W_ih, py::array W_hh, py::object b_ih,
         py::object b_hh, py::array ln_ih, py::array ln_hh, py::object ln_c_weight, py::object ln_c_bias,
         py::object lengths, bool reverse, bool training, py::object h_mask, py::object zoneout_h,
         py::object zoneout_c, py::object W_hr) {
        auto run = [&](auto tag) {
          using Real = decltype(tag);
          return forward_typed<Real>(cell, x, opt_array(h0), opt_array(c0), W_ih, W_hh, opt_array(b_ih), opt_array(b_hh), ln_ih, ln_hh,
                                     opt_array(ln_c_weight), opt_array(ln_c_bias), opt_array(lengths), reverse, training,
                                     opt_array(h_mask), opt_array(zoneout_h), opt_array(zoneout_c), opt_array(W_hr));
        };
        if (has_dtype(x, py::dtype::of<float>())) return run(float{});
        if (has_dtype(x, py::dtype::of<double>())) return run(double{});
        throw py::type_error("x: expected float32 or float64, got " + std::string(py::str(x.dtype())));
      },
      py::arg("cell"), py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("W_ih"), py::arg("W_hh"), py::arg("b_ih"),
      py::arg("b_hh"), py::arg("ln_ih"), py::arg("ln_hh"), py::arg("ln_c_weight"), py::arg("ln_c_bias"),
      py::arg("lengths"), py::arg("reverse"), py::arg("training"), py::arg("h_mask") = py::none(),
      py::arg("zoneout_h") = py::none(), py::arg("zoneout_c") = py::none(), py::arg("W_hr") = py::none(),
      "Layer-normalised LSTM/GRU forward: returns (y, h_n, c_n or None, LayerNormWorkspace or None). h_mask "
      "[B, H] (recurrent dropout), zoneout_h, zoneout_c [T, B, H] (zoneout; zoneout_c LSTM only): optional. "
      "W_hr [P, H] (LSTM only, optional): the output projection; h, y, h_mask, zoneout_h are then P wide and "
      "W_hh [4H, P].");

  m.def(
      "layernorm_backward",
      [](LnState& st, py::object dy, py::object dh_n, py::object dc_n) {
        if (st.f64) return backward_typed<double>(st, opt_array(dy), opt_array(dh_n), opt_array(dc_n));
        return backward_typed<float>(st, opt_array(dy), opt_array(dh_n), opt_array(dc_n));
      },
      py::arg("workspace"), py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"),
      "Returns (dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, dln_ih, dln_hh, dln_c_weight, dln_c_bias, dW_hr); "
      "absent entries are None.");
  pyrnn_bindings::refuse_pickle(m.attr("LayerNormWorkspace"));
}
