// CUDA emulator (tests/cuda_emu): nvcuda::wmma with every lane holding the whole tile.
// Loads, stores and products are warp-wide calls (each waits for the warp's lanes, as
// the real ones require them all), so a lane's store of the tile cannot overwrite what
// a lane wrote after the call.
#pragma once
#include <type_traits>

namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = rows * cols;
  T x[num_elements];  // the whole tile, row-major
};

template <typename Use, int M, int N, int K, typename T, typename Layout, typename V>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, const V& value) {
  for (auto& v : f.x) v = T(value);
}

template <typename F, typename P>
void load_tile(F& f, const P* p, unsigned ldm, bool row_major) {
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = row_major ? p[r * ldm + c] : p[c * ldm + r];
  __syncwarp();
}

template <typename Use, int M, int N, int K, typename T, typename Layout, typename P>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const P* p, unsigned ldm) {
  load_tile(f, p, ldm, std::is_same_v<Layout, row_major>);
}

template <int M, int N, int K, typename T, typename P>
void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const P* p, unsigned ldm, layout_t layout) {
  load_tile(f, p, ldm, layout == mem_row_major);
}

template <int M, int N, int K, typename T, typename P>
void store_matrix_sync(P* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
  __syncwarp();
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = P(f.x[r * N + c]);
  __syncwarp();
}

// Every lane holds the same tiles (the real call requires the same pointers from all
// lanes), so the warp's first live lane computes the product and the others copy it.
template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB, typename TC>
void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC>& c) {
  using Result = fragment<accumulator, M, N, K, TC>;
  __syncwarp();  // every lane holds a, b and c
  Result out;
  if (::emu::is_warp_leader()) {
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) {
        float sum = static_cast<float>(c.x[m * N + n]);
        for (int k = 0; k < K; ++k) sum += static_cast<float>(a.x[m * K + k]) * static_cast<float>(b.x[k * N + n]);
        out.x[m * N + n] = TC(sum);
      }
    ::emu::warp_published() = &out;
  }
  __syncwarp();  // the leader's product is done
  d = *static_cast<const Result*>(::emu::warp_published());
  __syncwarp();  // every lane has copied it before the leader's frame goes
}

}  // namespace nvcuda::wmma
