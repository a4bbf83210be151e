// Sequence kernels: output allocation, GIL release, the cell table.
//
// Arguments are validated in Python (pyrnn/_validation.py), with messages
// meant for users. The checks here only protect memory when the module is
// called directly: dtype, shape and contiguity of every array the kernels
// read or write, and lengths in range; they raise with terse messages.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <optional>
#include <pybind11/stl.h>
#include <string>

#include "arrays.h"
#include "pyrnn/api.h"
#include "pyrnn/pool.h"
#include "pyrnn/threads.h"

namespace py = pybind11;
using pyrnn_bindings::check_array;
using pyrnn_bindings::has_dtype;
using pyrnn_bindings::opt_array;
using pyrnn_bindings::ptr;
using pyrnn_bindings::parse_precision;
using pyrnn_bindings::precision_name;
using pyrnn_bindings::require;
using pyrnn::CellKind;

namespace {

// Keeps the forward's arrays alive for backward, with the kernel workspace.
struct SequenceState {
  CellKind cell = CellKind::Lstm;
  bool f64 = false;
  pyrnn::WorkspacePtr<float> wf;
  pyrnn::WorkspacePtr<double> wd;
  pyrnn::ForwardArgs<float> af;
  pyrnn::ForwardArgs<double> ad;
  py::object x, h0, c0, W_ih, W_hh, b_ih, b_hh, y, lengths, W_hr, h_mask, zoneout_h, zoneout_c;
  py::object residual;  // the block the workspace views (sequence_forward(residual=)), or None
  int64_t T = 0, B = 0, I = 0, H = 0, P = 0;
  bool has_bias = false;

  int64_t nbytes() const { return f64 ? (wd ? pyrnn::workspace_bytes(*wd) : 0) : (wf ? pyrnn::workspace_bytes(*wf) : 0); }
};

// An uninitialised output array whose memory comes from pyrnn's block cache
// (pyrnn/pool.h) and goes back to it when NumPy frees the array, so a loop
// of calls does not page-fault fresh mappings for its outputs every time.
template <class Real>
py::array_t<Real> out_array(std::initializer_list<int64_t> dims) {
  std::vector<py::ssize_t> shape(dims.begin(), dims.end());
  size_t n = 1;
  for (auto d : shape) n *= size_t(d);
  struct Block {
    void* p;
    size_t size;
  };
  size_t size = 0;
  void* p = pyrnn::pool_alloc(n * sizeof(Real), &size);
  Block* block = nullptr;
  try {
    block = new Block{p, size};
  } catch (...) {
    pyrnn::pool_free(p, size);
    throw;
  }
  py::capsule owner;
  try {
    owner = py::capsule(block, [](void* o) {
      auto* b = static_cast<Block*>(o);
      pyrnn::pool_free(b->p, b->size);
      delete b;
    });
  } catch (...) {  // the capsule did not take ownership
    pyrnn::pool_free(p, size);
    delete block;
    throw;
  }
  return py::array_t<Real>(shape, static_cast<Real*>(p), owner);
}

// A layer direction's recurrent weights packed once (pyrnn/api.h pack_recurrence).
struct PackedRecurrenceHolder {
  CellKind cell = CellKind::Lstm;
  int64_t I = 0, H = 0, P = 0;
  bool f64 = false;
  pyrnn::WeightPrecision precision = pyrnn::WeightPrecision::Same;
  pyrnn::PackedRecurrencePtr<float> pf;
  pyrnn::PackedRecurrencePtr<double> pd;
  int64_t nbytes() const { return f64 ? pyrnn::packed_recurrence_bytes(*pd) : pyrnn::packed_recurrence_bytes(*pf); }
};

// A training forward's weights packed for its backward (pyrnn/api.h pack_backward),
// for other workspaces of the same weights (a cell's steps in one graph).
struct PackedBackwardHolder {
  bool f64 = false;
  pyrnn::PackedBackwardPtr<float> pf;
  pyrnn::PackedBackwardPtr<double> pd;
  int64_t nbytes() const { return f64 ? pyrnn::packed_backward_bytes(*pd) : pyrnn::packed_backward_bytes(*pf); }
};

// A sequence call's arrays, checked, and its ForwardArgs (outputs not set).
template <class Real>
struct SequenceCall {
  using Real_ = Real;
  CellKind cell;
  py::array x, W_ih, W_hh;
  std::optional<py::array> h0, c0, b_ih, b_hh, lengths, W_hr, h_mask;
  int64_t T = 0, B = 0, I = 0, H = 0, P = 0, Ho = 0;
  pyrnn::ForwardArgs<Real> a;
  std::optional<py::array> zoneout_h, zoneout_c;
};

// The options beside the arrays: rnn_leaky's rate and the zoneout masks.
struct CallOptions {
  double leak = 1.0;
  std::optional<py::array> zoneout_h, zoneout_c;
};

template <class Real>
SequenceCall<Real> check_call(CellKind cell, py::array x, std::optional<py::array> h0, std::optional<py::array> c0,
                              py::array W_ih, py::array W_hh, std::optional<py::array> b_ih,
                              std::optional<py::array> b_hh, std::optional<py::array> lengths, bool reverse,
                              std::optional<py::array> W_hr, std::optional<py::array> h_mask,
                              const CallOptions& opt) {
  const py::dtype dt = py::dtype::of<Real>();
  const int G = pyrnn::gates_of(cell);
  require(x.ndim() == 3 && W_hh.ndim() == 2 && (!W_hr || W_hr->ndim() == 2), "x must be 3-D, W_hh and W_hr 2-D");
  const int64_t T = x.shape(0), B = x.shape(1), I = x.shape(2);
  const int64_t P = W_hr ? W_hr->shape(0) : 0;
  const int64_t H = W_hr ? W_hr->shape(1) : W_hh.shape(1), Ho = P ? P : H;
  require(T >= 1 && I >= 1 && H >= 1, "T, I and H must be at least 1");
  require(!W_hr || (cell == CellKind::Lstm && P >= 1 && P < H), "W_hr: LSTM only, with 1 <= P < H");
  require(!c0 || cell == CellKind::Lstm, "c0: LSTM only");
  require(bool(b_ih) == bool(b_hh), "b_ih and b_hh: both or neither");
  check_array("x", x, dt, {T, B, I});
  check_array("W_ih", W_ih, dt, {G * H, I});
  check_array("W_hh", W_hh, dt, {G * H, Ho});
  if (W_hr) check_array("W_hr", *W_hr, dt, {P, H});
  if (b_ih) check_array("b_ih", *b_ih, dt, {G * H}), check_array("b_hh", *b_hh, dt, {G * H});
  if (h0) check_array("h0", *h0, dt, {B, Ho});
  if (h_mask) check_array("h_mask", *h_mask, dt, {B, Ho});
  if (c0) check_array("c0", *c0, dt, {B, H});
  require(opt.leak > 0 && opt.leak <= 1, "leak must lie in (0, 1]");
  if (opt.zoneout_h) check_array("zoneout_h", *opt.zoneout_h, dt, {T, B, Ho});
  require(!opt.zoneout_c || cell == CellKind::Lstm, "zoneout_c: LSTM only");
  if (opt.zoneout_c) check_array("zoneout_c", *opt.zoneout_c, dt, {T, B, H});
  if (lengths) {
    check_array("lengths", *lengths, py::dtype::of<int64_t>(), {B});
    const int64_t* L = ptr<int64_t>(lengths);
    for (int64_t b = 0; b < B; ++b) require(L[b] >= 1 && L[b] <= T, "lengths must lie in [1, T]");
  }
  SequenceCall<Real> c{cell, x, W_ih, W_hh, h0, c0, b_ih, b_hh, lengths, W_hr, h_mask, T, B, I, H, P, Ho, {},
                       opt.zoneout_h, opt.zoneout_c};
  pyrnn::ForwardArgs<Real>& a = c.a;
  a.cell = cell, a.T = T, a.B = B, a.I = I, a.H = H;
  a.x = ptr<Real>(std::optional<py::array>(x)), a.h0 = ptr<Real>(h0), a.c0 = ptr<Real>(c0);
  a.W_ih = ptr<Real>(std::optional<py::array>(W_ih)), a.W_hh = ptr<Real>(std::optional<py::array>(W_hh));
  a.b_ih = ptr<Real>(b_ih), a.b_hh = ptr<Real>(b_hh);
  a.lengths = ptr<int64_t>(lengths);
  a.P = P, a.W_hr = ptr<Real>(W_hr), a.h_mask = ptr<Real>(h_mask);
  a.reverse = reverse;
  a.leak = Real(opt.leak);
  a.zoneout_h = ptr<Real>(opt.zoneout_h), a.zoneout_c = ptr<Real>(opt.zoneout_c);
  return c;
}

// The residual block's memory: a C-contiguous array of at least `need` bytes,
// writable for a forward (backward only reads it).
void* residual_memory(const py::array& r, int64_t need, bool write = true) {
  require((r.flags() & py::array::c_style) && (r.writeable() || !write),
          "residual: expected a writable C-contiguous array");
  require(int64_t(r.nbytes()) >= need, "residual: too small for this call (see functional.residual_nbytes)");
  require(reinterpret_cast<uintptr_t>(r.data()) % 16 == 0, "residual: expected 16-byte aligned memory");
  return const_cast<void*>(r.data());
}

// What backward needs: the call's arrays, y, and the workspace (over `residual` if given).
template <class Real>
py::object sequence_state(SequenceCall<Real>& c, py::object y, pyrnn::WorkspacePtr<Real> ws, py::object residual) {
  auto st = std::make_unique<SequenceState>();
  st->cell = c.cell, st->T = c.T, st->B = c.B, st->I = c.I, st->H = c.H, st->P = c.P, st->has_bias = bool(c.b_ih);
  st->x = c.x, st->W_ih = c.W_ih, st->W_hh = c.W_hh, st->y = y;
  auto obj = [](const std::optional<py::array>& a) { return a ? py::object(*a) : py::none(); };
  st->h0 = obj(c.h0), st->c0 = obj(c.c0), st->b_ih = obj(c.b_ih), st->b_hh = obj(c.b_hh);
  st->lengths = obj(c.lengths), st->W_hr = obj(c.W_hr), st->h_mask = obj(c.h_mask);
  st->zoneout_h = obj(c.zoneout_h), st->zoneout_c = obj(c.zoneout_c);
  st->residual = residual;
  if constexpr (std::is_same_v<Real, float>) {
    st->wf = std::move(ws), st->af = c.a;
  } else {
    st->f64 = true, st->wd = std::move(ws), st->ad = c.a;
  }
  return py::cast(std::move(st));
}

template <class Real>
py::tuple forward_typed(SequenceCall<Real> c, bool training, const PackedRecurrenceHolder* packed,
                        std::optional<py::array> residual) {
  const int64_t T = c.T, B = c.B, H = c.H, Ho = c.Ho;
  pyrnn::ForwardArgs<Real>& a = c.a;
  require(!packed || (packed->cell == c.cell && packed->f64 == std::is_same_v<Real, double> && packed->I == c.I &&
                      packed->H == H && packed->P == c.P),
          "packed: weights packed for another cell, dtype or shape");
  require(!packed || !training || packed->precision == pyrnn::WeightPrecision::Same,
          "packed: weights in a reduced precision are for inference (training=False)");
  require(!residual || (training && !packed), "residual: for training forwards without packed weights");
  // (a block sized at a lower ISA level passes: the forward then runs at the highest level it fits)
  void* block = residual ? residual_memory(*residual, 0) : nullptr;
  // y is zero at padded steps, so it starts zeroed when lengths are given.
  py::array_t<Real> y = out_array<Real>({T, B, Ho});
  if (c.lengths) std::memset(y.mutable_data(), 0, sizeof(Real) * size_t(T * B * Ho));
  py::array_t<Real> h_n({B, Ho});
  py::object c_n = py::none();
  if (packed) {
    if constexpr (std::is_same_v<Real, float>)
      a.packed = packed->pf.get();
    else
      a.packed = packed->pd.get();
  }
  a.y = y.mutable_data(), a.h_n = h_n.mutable_data();
  if (c.cell == CellKind::Lstm) {
    py::array_t<Real> cn({B, H});
    a.c_n = cn.mutable_data();
    c_n = cn;
  }
  const int nth = pyrnn::get_num_threads();
  pyrnn::WorkspacePtr<Real> ws;
  {
    pyrnn_bindings::KernelCall nogil;  // only raw buffers are touched below
    ws = block ? pyrnn::sequence_forward_residual<Real>(a, block, int64_t(residual->nbytes()), nth)
               : pyrnn::sequence_forward<Real>(a, training, nth);
  }
  py::object state = py::none();
  if (training) state = sequence_state(c, y, std::move(ws), residual ? py::object(*residual) : py::none());
  return py::make_tuple(y, h_n, c_n, state);
}

template <class Real>
py::tuple backward_typed(SequenceState& st, std::optional<py::array> dy, std::optional<py::array> dh_n,
                         std::optional<py::array> dc_n, bool want_dh_seq, const PackedBackwardHolder* packed,
                         bool want_dx) {
  const py::dtype dt = py::dtype::of<Real>();
  const int64_t T_ = st.T, B = st.B, I = st.I, H = st.H, G = pyrnn::gates_of(st.cell), P = st.P;
  const int64_t Ho = P ? P : H;
  if (dy) check_array("dy", *dy, dt, {T_, B, Ho});
  if (dh_n) check_array("dh_n", *dh_n, dt, {B, Ho});
  require(!dc_n || st.cell == CellKind::Lstm, "dc_n: LSTM only");
  if (dc_n) check_array("dc_n", *dc_n, dt, {B, H});
  auto zeros = [&](std::initializer_list<int64_t> shape) {
    py::array_t<Real> a = out_array<Real>(shape);
    std::memset(a.mutable_data(), 0, sizeof(Real) * size_t(a.size()));
    return a;
  };
  // dx rows of padded steps are never written; with an empty batch nothing is.
  const bool sparse = !st.lengths.is_none() || B == 0;
  py::object dx = py::none();  // (not computed unless wanted: the product over W_ih, a quarter of the FLOPs at I = H)
  if (want_dx) dx = sparse ? zeros({T_, B, I}) : out_array<Real>({T_, B, I});
  py::array_t<Real> dh0 = zeros({B, Ho});
  py::array_t<Real> dW_ih = B == 0 ? zeros({G * H, I}) : out_array<Real>({G * H, I});
  py::array_t<Real> dW_hh = B == 0 ? zeros({G * H, Ho}) : out_array<Real>({G * H, Ho});
  py::object dc0 = py::none(), db_ih = py::none(), db_hh = py::none(), dh_seq = py::none(), dW_hr = py::none();
  pyrnn::BackwardArgs<Real> g;
  require(!packed || packed->f64 == std::is_same_v<Real, double>, "packed: weights packed for another dtype");
  if (packed) {
    if constexpr (std::is_same_v<Real, float>)
      g.packed = packed->pf.get();
    else
      g.packed = packed->pd.get();
  }
  g.dy = ptr<Real>(dy), g.dh_n = ptr<Real>(dh_n), g.dc_n = ptr<Real>(dc_n);
  g.dx = want_dx ? py::cast<py::array_t<Real>>(dx).mutable_data() : nullptr, g.dh0 = dh0.mutable_data();
  g.dW_ih = dW_ih.mutable_data(), g.dW_hh = dW_hh.mutable_data();
  if (st.cell == CellKind::Lstm) {
    auto a = zeros({B, H});
    g.dc0 = a.mutable_data();
    dc0 = a;
  }
  if (st.has_bias) {
    auto a = zeros({G * H}), b = zeros({G * H});
    g.db_ih = a.mutable_data(), g.db_hh = b.mutable_data();
    db_ih = a, db_hh = b;
  }
  if (P) {
    auto a = B == 0 ? zeros({P, H}) : out_array<Real>({P, H});
    g.dW_hr = a.mutable_data();
    dW_hr = a;
  }
  if (want_dh_seq) {
    auto a = zeros({T_, B, Ho});
    g.dh_seq = a.mutable_data();
    dh_seq = a;
  }
  const int nth = pyrnn::get_num_threads();
  {
    pyrnn_bindings::KernelCall nogil;
    if constexpr (std::is_same_v<Real, float>)
      pyrnn::sequence_backward<float>(*st.wf, st.af, g, nth);
    else
      pyrnn::sequence_backward<double>(*st.wd, st.ad, g, nth);
  }
  return py::make_tuple(dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, dh_seq, dW_hr);
}

}  // namespace

void register_sequence(py::module_& m) {
  py::enum_<CellKind> kinds(m, "CellKind");
  for (const pyrnn::CellInfo& c : pyrnn::kCells) kinds.value(c.python_enum, c.kind);
  // Pickled by value at every protocol (0 and 1 aborted the process: copyreg called pybind11's base
  // constructor); layers and cells hold one.
  kinds.def("__reduce_ex__", [](py::handle self, py::handle) {
    return py::make_tuple(py::type::of(self), py::make_tuple(py::int_(self.attr("value"))));
  });
  m.def(
      "cells",
      [] {
        py::list out;
        for (const pyrnn::CellInfo& c : pyrnn::kCells) out.append(py::make_tuple(c.kind, c.name, c.family, c.gates));
        return out;
      },
      "The cell table (pyrnn/cells.h): a list of (CellKind, name, family, gates).");

  py::class_<SequenceState>(m, "Workspace",
                            "What a training forward keeps for backward: saved activations plus "
                            "references to the forward's inputs, weights and outputs.")
      .def_readonly("cell", &SequenceState::cell, "The cell kind of the call (a CellKind).")
      .def_property_readonly("nbytes", &SequenceState::nbytes, "Bytes of saved activations.")
      .def_property_readonly(
          "dtype", [](const SequenceState& s) { return s.f64 ? py::dtype::of<double>() : py::dtype::of<float>(); },
          "The call's dtype (float32 or float64).")
      .def_property_readonly(
          "shape", [](const SequenceState& s) { return py::make_tuple(s.T, s.B, s.I, s.H); },
          "(T, B, I, H) of the call.")
      .def_property_readonly(
          "proj_size", [](const SequenceState& s) { return s.P; }, "The LSTM's projection size P (0: none).");

  py::class_<PackedRecurrenceHolder>(m, "PackedRecurrence",
                                     "A layer direction's recurrent weights (W_hh, W_hr) packed once for many "
                                     "sequence_forward calls (a copy).")
      .def(py::init([](CellKind cell, py::array W_ih, py::array W_hh, py::object W_hr_obj, const std::string& precision) {
             auto W_hr = opt_array(W_hr_obj);
             auto h = std::make_unique<PackedRecurrenceHolder>();
             require(W_ih.ndim() == 2 && W_hh.ndim() == 2 && (!W_hr || W_hr->ndim() == 2), "W_ih, W_hh, W_hr must be 2-D");
             const int G = pyrnn::gates_of(cell);
             const int64_t P = W_hr ? W_hr->shape(0) : 0, H = W_hr ? W_hr->shape(1) : W_hh.shape(1);
             const int64_t I = W_ih.shape(1), Ho = P ? P : H;
             require(I >= 1 && H >= 1 && (!W_hr || (cell == CellKind::Lstm && P >= 1 && P < H)),
                     "W_hr: LSTM only, with 1 <= P < H");
             auto run = [&](auto tag) {
               using Real = decltype(tag);
               const py::dtype dt = py::dtype::of<Real>();
               check_array("W_ih", W_ih, dt, {G * H, I});
               check_array("W_hh", W_hh, dt, {G * H, Ho});
               if (W_hr) check_array("W_hr", *W_hr, dt, {P, H});
               h->precision = parse_precision(precision, std::is_same_v<Real, double>);
               pyrnn::ForwardArgs<Real> a;
               a.cell = cell, a.I = I, a.H = H, a.P = P;
               a.W_ih = ptr<Real>(std::optional<py::array>(W_ih)), a.W_hh = ptr<Real>(std::optional<py::array>(W_hh));
               a.W_hr = ptr<Real>(W_hr);
               pyrnn_bindings::KernelCall nogil;
               if constexpr (std::is_same_v<Real, float>)
                 h->pf = pyrnn::pack_recurrence<float>(a, h->precision);
               else
                 h->f64 = true, h->pd = pyrnn::pack_recurrence<double>(a);
             };
             if (has_dtype(W_hh, py::dtype::of<double>()))
               run(double{});
             else
               run(float{});
             h->cell = cell, h->I = I, h->H = H, h->P = P;
             return h;
           }),
           py::arg("cell"), py::arg("W_ih"), py::arg("W_hh"), py::arg("W_hr") = py::none(),
           py::arg("precision") = "same")
      .def_readonly("cell", &PackedRecurrenceHolder::cell)
      .def_property_readonly("precision", [](const PackedRecurrenceHolder& p) { return precision_name(p.precision); })
      .def_property_readonly("nbytes", &PackedRecurrenceHolder::nbytes);

  // The dtype dispatch of the calls below: fn(SequenceCall<Real>) for x's dtype.
  auto dispatch = [](CellKind cell, py::array x, py::object h0, py::object c0, py::array W_ih, py::array W_hh,
                     py::object b_ih, py::object b_hh, py::object lengths, bool reverse, py::object W_hr,
                     py::object h_mask, double leak, py::object zoneout_h, py::object zoneout_c, auto fn) {
    const CallOptions opt{leak, opt_array(zoneout_h), opt_array(zoneout_c)};
    auto run = [&](auto tag) {
      using Real = decltype(tag);
      return fn(check_call<Real>(cell, x, opt_array(h0), opt_array(c0), W_ih, W_hh, opt_array(b_ih), opt_array(b_hh),
                                 opt_array(lengths), reverse, opt_array(W_hr), opt_array(h_mask), opt));
    };
    if (has_dtype(x, py::dtype::of<float>())) return run(float{});
    if (has_dtype(x, py::dtype::of<double>())) return run(double{});
    throw py::type_error("x: expected float32 or float64, got " + std::string(py::str(x.dtype())));
  };

  m.def(
      "sequence_forward",
      [dispatch](CellKind cell, py::array x, py::object h0, py::object c0, py::array W_ih, py::array W_hh,
                 py::object b_ih, py::object b_hh, py::object lengths, bool reverse, bool training, py::object W_hr,
                 py::object h_mask, const PackedRecurrenceHolder* packed, py::object residual, double leak,
                 py::object zoneout_h, py::object zoneout_c) {
        return dispatch(cell, x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, reverse, W_hr, h_mask, leak, zoneout_h,
                        zoneout_c, [&](auto c) {
          return py::object(forward_typed(std::move(c), training, packed, opt_array(residual)));
        });
      },
      py::arg("cell"), py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("W_ih"), py::arg("W_hh"), py::arg("b_ih"),
      py::arg("b_hh"), py::arg("lengths"), py::arg("reverse"), py::arg("training"), py::arg("W_hr") = py::none(),
      py::arg("h_mask") = py::none(), py::arg("packed") = nullptr, py::arg("residual") = py::none(), py::kw_only(),
      py::arg("leak") = 1.0, py::arg("zoneout_h") = py::none(), py::arg("zoneout_c") = py::none(),
      "Returns (y, h_n, c_n or None, Workspace or None). `packed`: the recurrent weights packed once "
      "(PackedRecurrence of these W_hh, W_hr), or None. `residual`: a writable array of at least "
      "functional.residual_nbytes bytes that holds the training workspace (training only), or None.");

  m.def(
      "residual_strides",
      [dispatch](CellKind cell, py::array x, py::object h0, py::object c0, py::array W_ih, py::array W_hh,
                 py::object b_ih, py::object b_hh, py::object lengths, bool reverse, py::object W_hr,
                 py::object h_mask, double leak, py::object zoneout_h, py::object zoneout_c) {
        return dispatch(cell, x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, reverse, W_hr, h_mask, leak, zoneout_h,
                        zoneout_c, [](auto c) {
          int64_t header = 0, per_entry = 0;
          std::vector<int64_t> per_row;
          pyrnn::residual_strides(c.a, header, per_row, per_entry);
          return py::object(py::make_tuple(header, per_row, per_entry, int64_t(sizeof(*c.a.x))));
        });
      },
      py::arg("cell"), py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("W_ih"), py::arg("W_hh"), py::arg("b_ih"),
      py::arg("b_hh"), py::arg("lengths"), py::arg("reverse"), py::arg("W_hr") = py::none(),
      py::arg("h_mask") = py::none(), py::kw_only(), py::arg("leak") = 1.0, py::arg("zoneout_h") = py::none(),
      py::arg("zoneout_c") = py::none(),
      "(header bytes, [elements per packed row of each per-row buffer], elements per batch entry, element bytes): "
      "the block's bytes for any T and B are header + sum(align64(T*B*n*esize)) + align64(B*e*esize), for "
      "frameworks whose shapes are symbolic at trace time.");

  m.def(
      "workspace_from_residual",
      [dispatch](py::array residual, CellKind cell, py::array x, py::object h0, py::object c0, py::array W_ih,
                 py::array W_hh, py::object b_ih, py::object b_hh, py::object lengths, bool reverse, py::object W_hr,
                 py::object h_mask, py::array y, double leak, py::object zoneout_h, py::object zoneout_c) {
        return dispatch(cell, x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, reverse, W_hr, h_mask, leak, zoneout_h,
                        zoneout_c, [&](auto c) {
          using Real = typename decltype(c)::Real_;
          check_array("y", y, py::dtype::of<Real>(), {c.T, c.B, c.Ho});
          c.a.y = ptr<Real>(std::optional<py::array>(y));
          void* block = residual_memory(residual, 0, false);
          pyrnn::WorkspacePtr<Real> ws;
          try {
            ws = pyrnn::workspace_from_residual<Real>(c.a, block, int64_t(residual.nbytes()));
          } catch (const std::invalid_argument& e) {
            throw py::value_error(e.what());
          }
          return sequence_state(c, y, std::move(ws), residual);
        });
      },
      py::arg("residual"), py::arg("cell"), py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("W_ih"),
      py::arg("W_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("lengths"), py::arg("reverse"),
      py::arg("W_hr"), py::arg("h_mask"), py::arg("y"), py::kw_only(), py::arg("leak") = 1.0,
      py::arg("zoneout_h") = py::none(), py::arg("zoneout_c") = py::none(),
      "The Workspace of a training sequence_forward(..., residual=) again, from its residual block and the same "
      "arguments and output y, for sequence_backward. Raises ValueError when the block does not match.");

  py::class_<PackedBackwardHolder>(m, "PackedBackward",
                                   "A training forward's weights (W_ih, W_hh, W_hr) packed for sequence_backward, "
                                   "for the backward of other calls with the same weights (a copy).")
      .def_property_readonly("nbytes", &PackedBackwardHolder::nbytes);

  m.def(
      "pack_backward",
      [](const SequenceState& st) {
        auto h = std::make_unique<PackedBackwardHolder>();
        pyrnn_bindings::KernelCall nogil;
        if (st.f64)
          h->f64 = true, h->pd = pyrnn::pack_backward<double>(*st.wd, st.ad);
        else
          h->pf = pyrnn::pack_backward<float>(*st.wf, st.af);
        return h;
      },
      py::arg("workspace"),
      "The weights of this workspace's forward packed for sequence_backward(packed=): calls whose forwards had the "
      "same weights (values) then skip their packing. Packs of another ISA level or shape are not used.");

  m.def(
      "sequence_backward",
      [](SequenceState& st, py::object dy, py::object dh_n, py::object dc_n, bool want_dh_seq,
         const PackedBackwardHolder* packed, bool want_dx) {
        if (st.f64)
          return backward_typed<double>(st, opt_array(dy), opt_array(dh_n), opt_array(dc_n), want_dh_seq, packed,
                                        want_dx);
        return backward_typed<float>(st, opt_array(dy), opt_array(dh_n), opt_array(dc_n), want_dh_seq, packed,
                                     want_dx);
      },
      py::arg("workspace"), py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"), py::arg("want_dh_seq") = false,
      py::arg("packed") = nullptr, py::arg("want_dx") = true,
      "Returns (dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, dh_seq, dW_hr); absent entries are None. `packed`: "
      "pack_backward of a workspace whose forward had the same weights, or None (packed in this call). "
      "want_dx=False: dx is not computed (None), for an input that needs no gradient.");
  pyrnn_bindings::refuse_pickle(m.attr("Workspace"));
  pyrnn_bindings::refuse_pickle(m.attr("PackedRecurrence"));
  pyrnn_bindings::refuse_pickle(m.attr("PackedBackward"));
}
