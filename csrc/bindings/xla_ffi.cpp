// XLA FFI handlers for pyrnn.jax: the sequence kernels as XLA custom calls on
// the CPU, with no host callback. Built only when XLA's FFI headers were found
// (CMake's PYRNN_XLA_FFI_INCLUDE, or jax importable at build time); otherwise
// pyrnn.jax falls back to jax.pure_callback.
//
// pyrnn_sequence_fwd: x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths ->
//   y, h_n, c_n, residual. Absent optional inputs (bit i of `present` clear,
//   in that order from h0) and absent outputs (c_n but for the LSTM; the
//   residual of an inference call) are zero-size buffers. With training=1 the
//   training workspace is written into `residual` (pyrnn/api.h
//   sequence_forward_residual), which JAX keeps for:
// pyrnn_sequence_bwd: residual, x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr,
//   lengths, y, dy, dh_n, dc_n -> dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, dW_hr
//   (zero-size where the forward had no such input; dc_n zero-size means zeros).
//   Bit kNoDx of the backward's `present`: x needs no gradient, dx is zero-size
//   and not computed (data fed to a first layer; the bit is clear in calls
//   staged before it existed, so those keep computing dx).
// Shapes and dtypes are checked in Python (pyrnn/jax.py) before the call is
// staged; the handlers check what protects memory.
#include <pybind11/pybind11.h>

#include <cstring>
#include <iterator>
#include <string>
#include <vector>

#include "pyrnn/api.h"
#include "pyrnn/cells.h"
#include "pyrnn/threads.h"
#include "xla/ffi/api/ffi.h"

namespace py = pybind11;
namespace ffi = xla::ffi;

namespace {

enum Present : int64_t { kH0 = 1, kC0 = 2, kBias = 4, kWhr = 8, kLengths = 16, kNoDx = 32 };

template <class T>
T* data_of(const ffi::AnyBuffer& b) {
  return b.element_count() ? static_cast<T*>(b.untyped_data()) : nullptr;
}

// ForwardArgs over the buffers (outputs not set); an error message if they do not fit.
template <class Real>
std::string forward_args(int64_t cell, int64_t present, bool reverse, const ffi::AnyBuffer& x,
                         const ffi::AnyBuffer& h0, const ffi::AnyBuffer& c0, const ffi::AnyBuffer& W_ih,
                         const ffi::AnyBuffer& W_hh, const ffi::AnyBuffer& b_ih, const ffi::AnyBuffer& b_hh,
                         const ffi::AnyBuffer& W_hr, const ffi::AnyBuffer& lengths, std::vector<int64_t>& lengths64,
                         pyrnn::ForwardArgs<Real>& a) {
  if (cell < 0 || cell >= int64_t(std::size(pyrnn::kCells))) return "unknown cell kind";
  a.cell = pyrnn::CellKind(cell);
  const auto xd = x.dimensions(), hd = W_hh.dimensions();
  if (xd.size() != 3 || hd.size() != 2) return "x must be 3-D and W_hh 2-D";
  a.T = xd[0], a.B = xd[1], a.I = xd[2];
  const bool proj = present & kWhr;
  a.P = proj ? W_hr.dimensions()[0] : 0;
  a.H = proj ? W_hr.dimensions()[1] : hd[1];
  const int64_t G = pyrnn::gates_of(a.cell), Ho = a.P ? a.P : a.H;
  auto count = [](const ffi::AnyBuffer& b) { return int64_t(b.element_count()); };
  if (count(W_ih) != G * a.H * a.I || count(W_hh) != G * a.H * Ho) return "weights of the wrong size";
  if ((present & kH0) && count(h0) != a.B * Ho) return "h0 of the wrong size";
  if ((present & kC0) && count(c0) != a.B * a.H) return "c0 of the wrong size";
  if ((present & kBias) && (count(b_ih) != G * a.H || count(b_hh) != G * a.H)) return "biases of the wrong size";
  const bool l64 = lengths.element_type() == ffi::DataType::S64;
  if ((present & kLengths) && (count(lengths) != a.B || (!l64 && lengths.element_type() != ffi::DataType::S32)))
    return "lengths must be int32 or int64 [B]";
  a.x = data_of<Real>(x);
  a.h0 = (present & kH0) ? data_of<Real>(h0) : nullptr;
  a.c0 = (present & kC0) ? data_of<Real>(c0) : nullptr;
  a.W_ih = data_of<Real>(W_ih), a.W_hh = data_of<Real>(W_hh);
  a.b_ih = (present & kBias) ? data_of<Real>(b_ih) : nullptr;
  a.b_hh = (present & kBias) ? data_of<Real>(b_hh) : nullptr;
  a.W_hr = proj ? data_of<Real>(W_hr) : nullptr;
  a.lengths = nullptr;
  if (present & kLengths) {
    if (l64) {
      a.lengths = data_of<int64_t>(lengths);
    } else {  // JAX's default integers (without jax_enable_x64)
      const int32_t* l = data_of<int32_t>(lengths);
      lengths64.assign(l, l + a.B);
      a.lengths = lengths64.data();
    }
  }
  a.reverse = reverse;
  if (a.lengths)
    for (int64_t b = 0; b < a.B; ++b)
      if (a.lengths[b] < 1 || a.lengths[b] > a.T) return "lengths must lie in [1, T]";
  return "";
}

template <class Real>
ffi::Error forward_typed(int64_t cell, int64_t present, bool reverse, bool training, const ffi::AnyBuffer* in,
                         ffi::AnyBuffer& y, ffi::AnyBuffer& h_n, ffi::AnyBuffer& c_n, ffi::AnyBuffer& residual) {
  pyrnn::ForwardArgs<Real> a;
  std::vector<int64_t> lengths64;
  std::string err = forward_args<Real>(cell, present, reverse, in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7],
                                       in[8], lengths64, a);
  if (!err.empty()) return ffi::Error::InvalidArgument("pyrnn_sequence_fwd: " + err);
  const int64_t Ho = a.P ? a.P : a.H;
  if (int64_t(y.element_count()) != a.T * a.B * Ho || int64_t(h_n.element_count()) != a.B * Ho ||
      (a.cell == pyrnn::CellKind::Lstm && int64_t(c_n.element_count()) != a.B * a.H))
    return ffi::Error::InvalidArgument("pyrnn_sequence_fwd: outputs of the wrong size");
  a.y = data_of<Real>(y), a.h_n = data_of<Real>(h_n);
  a.c_n = a.cell == pyrnn::CellKind::Lstm ? data_of<Real>(c_n) : nullptr;
  if (a.lengths) std::memset(a.y, 0, y.size_bytes());  // zero past each length
  const pyrnn::EnvSnapshot env(pyrnn::EnvSnapshot::kLastRead);  // (no getenv here: no GIL guards it)
  try {
    if (training) {
      pyrnn::sequence_forward_residual<Real>(a, residual.untyped_data(), int64_t(residual.size_bytes()),
                                             pyrnn::get_num_threads());
    } else {
      pyrnn::sequence_forward<Real>(a, false, pyrnn::get_num_threads());
    }
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("pyrnn_sequence_fwd: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error sequence_fwd(ffi::AnyBuffer x, ffi::AnyBuffer h0, ffi::AnyBuffer c0, ffi::AnyBuffer W_ih,
                        ffi::AnyBuffer W_hh, ffi::AnyBuffer b_ih, ffi::AnyBuffer b_hh, ffi::AnyBuffer W_hr,
                        ffi::AnyBuffer lengths, ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> h_n,
                        ffi::Result<ffi::AnyBuffer> c_n, ffi::Result<ffi::AnyBuffer> residual, int64_t cell,
                        int64_t present, int64_t reverse, int64_t training) {
  const ffi::AnyBuffer in[9] = {x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths};
  if (x.element_type() == ffi::DataType::F32)
    return forward_typed<float>(cell, present, reverse, training, in, *y, *h_n, *c_n, *residual);
  if (x.element_type() == ffi::DataType::F64)
    return forward_typed<double>(cell, present, reverse, training, in, *y, *h_n, *c_n, *residual);
  return ffi::Error::InvalidArgument("pyrnn_sequence_fwd: x must be float32 or float64");
}

template <class Real>
ffi::Error backward_typed(int64_t cell, int64_t present, bool reverse, const ffi::AnyBuffer& residual,
                          const ffi::AnyBuffer* in, const ffi::AnyBuffer& y, const ffi::AnyBuffer& dy,
                          const ffi::AnyBuffer& dh_n, const ffi::AnyBuffer& dc_n, ffi::AnyBuffer* out) {
  pyrnn::ForwardArgs<Real> a;
  std::vector<int64_t> lengths64;
  std::string err = forward_args<Real>(cell, present, reverse, in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7],
                                       in[8], lengths64, a);
  if (!err.empty()) return ffi::Error::InvalidArgument("pyrnn_sequence_bwd: " + err);
  const int64_t Ho = a.P ? a.P : a.H;
  if (int64_t(y.element_count()) != a.T * a.B * Ho || int64_t(dy.element_count()) != a.T * a.B * Ho ||
      int64_t(dh_n.element_count()) != a.B * Ho ||
      (dc_n.element_count() && int64_t(dc_n.element_count()) != a.B * a.H))
    return ffi::Error::InvalidArgument("pyrnn_sequence_bwd: y or its cotangents of the wrong size");
  a.y = const_cast<Real*>(data_of<Real>(y));
  // Every gradient starts zeroed: the kernel adds into some and skips rows past the lengths.
  for (int k = 0; k < 8; ++k)
    if (out[k].element_count()) std::memset(out[k].untyped_data(), 0, out[k].size_bytes());
  pyrnn::BackwardArgs<Real> g;
  g.dy = data_of<Real>(dy), g.dh_n = data_of<Real>(dh_n), g.dc_n = data_of<Real>(dc_n);
  g.dx = data_of<Real>(out[0]), g.dh0 = data_of<Real>(out[1]), g.dc0 = data_of<Real>(out[2]);
  g.dW_ih = data_of<Real>(out[3]), g.dW_hh = data_of<Real>(out[4]);
  g.db_ih = data_of<Real>(out[5]), g.db_hh = data_of<Real>(out[6]), g.dW_hr = data_of<Real>(out[7]);
  const int64_t G = pyrnn::gates_of(a.cell), H = a.H, lstm = a.cell == pyrnn::CellKind::Lstm;
  const bool want_dx = !(present & kNoDx);
  const int64_t bias = (present & kBias) ? G * H : 0, want[8] = {want_dx * a.T * a.B * a.I, a.B * Ho, lstm * a.B * H,
                                                                 G * H * a.I,     G * H * Ho, bias,
                                                                 bias,            a.P * H};
  for (int k = 0; k < 8; ++k)
    if (int64_t(out[k].element_count()) != want[k])
      return ffi::Error::InvalidArgument("pyrnn_sequence_bwd: gradient output " + std::to_string(k) +
                                         " of the wrong size");
  if (a.B == 0) return ffi::Error::Success();  // an empty batch: every gradient is zero
  if (!(present & kBias)) g.db_ih = g.db_hh = nullptr;
  if (!(present & kWhr)) g.dW_hr = nullptr;
  if (!lstm) g.dc0 = nullptr;
  if (!want_dx) g.dx = nullptr;  // the kernel skips dx = dG W_ih
  const pyrnn::EnvSnapshot env(pyrnn::EnvSnapshot::kLastRead);
  try {
    pyrnn::WorkspacePtr<Real> ws =
        pyrnn::workspace_from_residual<Real>(a, residual.untyped_data(), int64_t(residual.size_bytes()));
    pyrnn::sequence_backward<Real>(*ws, a, g, pyrnn::get_num_threads());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("pyrnn_sequence_bwd: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error sequence_bwd(ffi::AnyBuffer residual, ffi::AnyBuffer x, ffi::AnyBuffer h0, ffi::AnyBuffer c0,
                        ffi::AnyBuffer W_ih, ffi::AnyBuffer W_hh, ffi::AnyBuffer b_ih, ffi::AnyBuffer b_hh,
                        ffi::AnyBuffer W_hr, ffi::AnyBuffer lengths, ffi::AnyBuffer y, ffi::AnyBuffer dy,
                        ffi::AnyBuffer dh_n, ffi::AnyBuffer dc_n, ffi::Result<ffi::AnyBuffer> dx,
                        ffi::Result<ffi::AnyBuffer> dh0, ffi::Result<ffi::AnyBuffer> dc0,
                        ffi::Result<ffi::AnyBuffer> dW_ih, ffi::Result<ffi::AnyBuffer> dW_hh,
                        ffi::Result<ffi::AnyBuffer> db_ih, ffi::Result<ffi::AnyBuffer> db_hh,
                        ffi::Result<ffi::AnyBuffer> dW_hr, int64_t cell, int64_t present, int64_t reverse) {
  const ffi::AnyBuffer in[9] = {x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths};
  ffi::AnyBuffer out[8] = {*dx, *dh0, *dc0, *dW_ih, *dW_hh, *db_ih, *db_hh, *dW_hr};
  if (x.element_type() == ffi::DataType::F32)
    return backward_typed<float>(cell, present, reverse, residual, in, y, dy, dh_n, dc_n, out);
  if (x.element_type() == ffi::DataType::F64)
    return backward_typed<double>(cell, present, reverse, residual, in, y, dy, dh_n, dc_n, out);
  return ffi::Error::InvalidArgument("pyrnn_sequence_bwd: x must be float32 or float64");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PyrnnSequenceFwd, sequence_fwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Arg<ffi::AnyBuffer>()  // c0
                                  .Arg<ffi::AnyBuffer>()  // W_ih
                                  .Arg<ffi::AnyBuffer>()  // W_hh
                                  .Arg<ffi::AnyBuffer>()  // b_ih
                                  .Arg<ffi::AnyBuffer>()  // b_hh
                                  .Arg<ffi::AnyBuffer>()  // W_hr
                                  .Arg<ffi::AnyBuffer>()  // lengths
                                  .Ret<ffi::AnyBuffer>()  // y
                                  .Ret<ffi::AnyBuffer>()  // h_n
                                  .Ret<ffi::AnyBuffer>()  // c_n
                                  .Ret<ffi::AnyBuffer>()  // residual
                                  .Attr<int64_t>("cell")
                                  .Attr<int64_t>("present")
                                  .Attr<int64_t>("reverse")
                                  .Attr<int64_t>("training"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(PyrnnSequenceBwd, sequence_bwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // residual
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Arg<ffi::AnyBuffer>()  // c0
                                  .Arg<ffi::AnyBuffer>()  // W_ih
                                  .Arg<ffi::AnyBuffer>()  // W_hh
                                  .Arg<ffi::AnyBuffer>()  // b_ih
                                  .Arg<ffi::AnyBuffer>()  // b_hh
                                  .Arg<ffi::AnyBuffer>()  // W_hr
                                  .Arg<ffi::AnyBuffer>()  // lengths
                                  .Arg<ffi::AnyBuffer>()  // y
                                  .Arg<ffi::AnyBuffer>()  // dy
                                  .Arg<ffi::AnyBuffer>()  // dh_n
                                  .Arg<ffi::AnyBuffer>()  // dc_n
                                  .Ret<ffi::AnyBuffer>()  // dx
                                  .Ret<ffi::AnyBuffer>()  // dh0
                                  .Ret<ffi::AnyBuffer>()  // dc0
                                  .Ret<ffi::AnyBuffer>()  // dW_ih
                                  .Ret<ffi::AnyBuffer>()  // dW_hh
                                  .Ret<ffi::AnyBuffer>()  // db_ih
                                  .Ret<ffi::AnyBuffer>()  // db_hh
                                  .Ret<ffi::AnyBuffer>()  // dW_hr
                                  .Attr<int64_t>("cell")
                                  .Attr<int64_t>("present")
                                  .Attr<int64_t>("reverse"));

void register_xla_ffi(py::module_& m) {
  py::dict targets;
  targets["pyrnn_sequence_fwd"] = py::capsule(reinterpret_cast<void*>(PyrnnSequenceFwd));
  targets["pyrnn_sequence_bwd"] = py::capsule(reinterpret_cast<void*>(PyrnnSequenceBwd));
  m.attr("xla_ffi_targets") = targets;
}
