// The entries an op's per-ISA kernel set gives for the register-tiled products of
// common/simd/tile_product.inc (the LSTM's and the GRU's recurrences take them): declared
// inside the op's kernel list with FASTDL_TILE_PRODUCT_KERNEL_LIST(T), defined in its
// per-ISA files with FASTDL_TILE_PRODUCT_DEFINE_KERNELS(Set, impl, T), impl being the
// ISA's namespace, which includes tile_product.inc after loops.inc.
#pragma once

#include <cstdint>

#include "common/prefetch.h"

#define FASTDL_TILE_PRODUCT_KERNEL_LIST(T)                                                   \
  /* Columns [k_begin, k_end) of src (value (row, k) at row * row_stride + k) packed   */ \
  /* as the tiles read rows (rows x cols), tiles part, part + parts, ... only.          */ \
  static void pack_rows(const T* src, int64_t row_stride, int64_t rows, int64_t cols,       \
                        int64_t k_begin, int64_t k_end, int64_t part, int64_t parts,         \
                        T* pack);                                                           \
  /* out (rows, columns) = addend (or 0 if null) + pack (rows x k_size, packed by      */ \
  /* pack_rows) x a matrix packed in blocks of product_block columns, [block][k][col]; */ \
  /* partial: rows * product_block values of scratch.                                   */ \
  static int64_t product_block(T);                                                          \
  static void packed_times_panel(const T* panel, int64_t k_size, int64_t rows,              \
                                 const T* pack, int64_t columns, const T* addend,           \
                                 int64_t addend_stride, T* out, int64_t out_stride,         \
                                 T* partial);

#define FASTDL_TILE_PRODUCT_DEFINE_KERNELS(Set, impl, T)                                      \
  void Set::pack_rows(const T* src, int64_t row_stride, int64_t rows, int64_t cols,         \
                      int64_t k_begin, int64_t k_end, int64_t part, int64_t parts, T* pack) { \
    impl::pack_rows<T>(src, row_stride, rows, cols, k_begin, k_end, part, parts, pack);       \
  }                                                                                          \
  int64_t Set::product_block(T) { return 4 * impl::Vec<T>::kWidth; }                        \
  void Set::packed_times_panel(const T* panel, int64_t k_size, int64_t rows, const T* pack, \
                               int64_t columns, const T* addend, int64_t addend_stride,      \
                               T* out, int64_t out_stride, T* partial) {                     \
    impl::packed_times_panel<T>(panel, k_size, rows, pack, columns, addend, addend_stride,    \
                                out, out_stride, partial);                                   \
  }
