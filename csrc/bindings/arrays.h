// Array helpers shared by the bindings.
#pragma once
#include <pybind11/numpy.h>

#include <chrono>
#include <optional>
#include <string>
#include <thread>
#if defined(__GLIBCXX__)
#include <cxxabi.h>
#endif

#include "pyrnn/api.h"

namespace pyrnn_bindings {

// Whether `a` holds elements of `dt`: equivalence, not identity (an unpickled
// array's float32 dtype is not the float32 singleton); a non-native byte order
// is not equivalent.
inline bool has_dtype(const pybind11::array& a, const pybind11::dtype& dt) {
  return pybind11::detail::npy_api::get().PyArray_EquivTypes_(a.dtype().ptr(), dt.ptr());
}

// Refuses pickling (and copy/deepcopy) with a TypeError at every protocol.
// These objects hold raw buffers; without this, protocols 0 and 1 (copyreg)
// called pybind11's base constructor, which aborted the process.
inline void refuse_pickle(const pybind11::object& cls) {
  pybind11::setattr(cls, "__reduce_ex__",
                    pybind11::cpp_function(
                        [](pybind11::handle self, pybind11::handle) -> pybind11::object {
                          const pybind11::handle type = pybind11::type::of(self);
                          throw pybind11::type_error("cannot pickle '" + std::string(pybind11::str(type.attr("__module__"))) +
                                                     "." + std::string(pybind11::str(type.attr("__qualname__"))) +
                                                     "' object");
                        },
                        pybind11::is_method(cls)));
}

// The GIL released for a scope, as pybind11::gil_scoped_release, but a thread
// that cannot take it back is parked. During interpreter shutdown CPython ends
// a daemon thread that asks for the GIL (pthread_exit, which unwinds the
// thread's stack): through gil_scoped_release's destructor, implicitly
// noexcept, that unwind called std::terminate (a daemon thread inside a kernel
// when the program ended aborted the process, 16 of 20 runs), and letting it
// through would run the callers' destructors (their NumPy arrays' Py_DECREF)
// without the GIL while the interpreter finalizes. So the thread sleeps until
// the process exits, never touching Python again, as CPython 3.14 parks such
// threads itself; an unwind already under way (a kernel that threw) is no
// exception.
class GilRelease {
 public:
  GilRelease() : state_(PyEval_SaveThread()) {}
  ~GilRelease() {
#if defined(__GLIBCXX__)
    try {
      PyEval_RestoreThread(state_);
    } catch (abi::__forced_unwind&) {
      for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
    }
#else
    PyEval_RestoreThread(state_);
#endif
  }
  GilRelease(const GilRelease&) = delete;
  GilRelease& operator=(const GilRelease&) = delete;

 private:
  PyThreadState* state_;
};

// Releases the GIL for a kernel call, having read the environment the kernels
// consult while it was still held (pyrnn::EnvSnapshot: getenv without the GIL
// races os.environ's updates in other threads). Members are built in order.
struct KernelCall {
  pyrnn::EnvSnapshot env;
  GilRelease nogil;
};

// A failed argument check: ValueError.
inline void require(bool ok, const std::string& what) {
  if (!ok) throw pybind11::value_error(what);
}

inline std::string shape_str(const pybind11::array& a) {
  std::string s = "(";
  for (pybind11::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// `a` has dtype `dt` (TypeError otherwise), is C-contiguous and has `shape` (ValueError).
inline void check_array(const char* name, const pybind11::array& a, const pybind11::dtype& dt,
                        std::initializer_list<int64_t> shape) {
  if (!has_dtype(a, dt))
    throw pybind11::type_error(std::string(name) + ": expected " + std::string(pybind11::str(dt)) + ", got " +
                               std::string(pybind11::str(a.dtype())));
  bool ok = a.ndim() == pybind11::ssize_t(shape.size()) && (a.flags() & pybind11::array::c_style);
  int d = 0;
  for (int64_t s : shape) ok = ok && a.shape(d++) == s;
  if (!ok) {
    std::string want = "(";
    d = 0;
    for (int64_t s : shape) want += (d++ ? ", " : "") + std::to_string(s);
    throw pybind11::value_error(std::string(name) + ": expected a C-contiguous array of shape " + want +
                                (shape.size() == 1 ? ",)" : ")") + ", got " + shape_str(a));
  }
}

// None, or the object as an array (TypeError when it is neither).
inline std::optional<pybind11::array> opt_array(const pybind11::object& o) {
  if (o.is_none()) return std::nullopt;
  pybind11::array a = pybind11::array::ensure(o);
  if (!a)
    throw pybind11::type_error("expected an array or None, got " + std::string(pybind11::str(pybind11::type::of(o))));
  return a;
}

// The data of an optional array as T*, or null.
template <class T>
T* ptr(const std::optional<pybind11::array>& a) {
  return a ? static_cast<T*>(const_cast<void*>(a->data())) : nullptr;
}

// Weight precision of packed weights by name: "same" (the weights' dtype),
// "int8", "bf16"; the reduced ones need float32 weights.
inline pyrnn::WeightPrecision parse_precision(const std::string& name, bool f64) {
  using P = pyrnn::WeightPrecision;
  const P p = name == "int8" ? P::Int8 : name == "bf16" ? P::BF16 : P::Same;
  if (p == P::Same && name != "same")
    throw pybind11::value_error("precision: expected 'same', 'int8' or 'bf16', got '" + name + "'");
  if (p != P::Same && f64) throw pybind11::type_error("precision " + name + " needs float32 weights, got float64");
  return p;
}
inline const char* precision_name(pyrnn::WeightPrecision p) {
  return p == pyrnn::WeightPrecision::Int8 ? "int8" : p == pyrnn::WeightPrecision::BF16 ? "bf16" : "same";
}

}  // namespace pyrnn_bindings
