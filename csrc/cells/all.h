// Every cell kind's file: the per-ISA half of the cell table (pyrnn/cells.h).
#pragma once
#include "gru.h"
#include "gru_reset_before.h"
#include "lstm.h"
#include "rnn.h"

#include <stdexcept>
#include <type_traits>

namespace pyrnn {
namespace PYRNN_ISA_NS {

template <class, class = void>
constexpr bool has_projected = false;
template <class C>
constexpr bool has_projected<C, std::void_t<typename C::projected>> = true;

template <class Of, class F>
void call_cell(bool projected, F&& fn) {
  if constexpr (has_projected<Of>)
    if (projected) return fn(typename Of::projected{});
  fn(typename Of::type{});
}

// Calls fn(Cell{}) with the cell struct of `kind` (the projected LSTM when
// `projected`), checking each cell file against the table.
template <class F>
void with_cell(CellKind kind, bool projected, F&& fn) {
  switch (kind) {
#define PYRNN_CELL_CASE(E, PY, name, family, gates)                                                    \
  case CellKind::E: {                                                                                  \
    using Of = CellOf<CellKind::E>;                                                                    \
    static_assert(Of::type::G == gates && Of::type::kKind == CellKind::E, "cell file disagrees with " \
                                                                          "pyrnn/cells.h");            \
    return call_cell<Of>(projected, fn);                                                               \
  }
    PYRNN_CELLS(PYRNN_CELL_CASE)
#undef PYRNN_CELL_CASE
  }
  throw std::invalid_argument("unknown cell kind");
}

}  // namespace PYRNN_ISA_NS
}  // namespace pyrnn
