// The Python module fastdl._C: build facts and the CPU ISA switch. The ops
// themselves register with the dispatcher (TORCH_LIBRARY_FRAGMENT in each
// csrc/<op>/<op>.cpp) when this library loads, and are called as torch.ops.fastdl.*.
#include <pybind11/pybind11.h>
#include <torch/headeronly/version.h>

#include <c10/util/Exception.h>

#include "common/cpu_isa.h"
#include "common/thread_scratch.h"
#include "xnor/xnor_conv2d.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastdl compiled kernels: build information and CPU ISA selection";
  m.attr("torch_version") = TORCH_VERSION;
#ifdef FASTDL_WITH_CUDA
  m.attr("cuda_compiled") = true;
#else
  m.attr("cuda_compiled") = false;
#endif
  m.def("best_cpu_isa", [] { return fastdl::cpu_isa_name(fastdl::best_cpu_isa()); },
        "The fastest CPU vector path this machine supports: 'scalar', 'avx2' or 'avx512'.");
  m.def("cpu_isa", [] { return fastdl::cpu_isa_name(fastdl::cpu_isa()); },
        "The CPU vector path the kernels use now.");
  m.def(
      "set_cpu_isa",
      [](const std::string& name) {
        try {
          fastdl::set_cpu_isa(name);
        } catch (const c10::Error& e) {
          throw py::value_error(e.what_without_backtrace());
        }
      },
      py::arg("name"), "Force the CPU vector path: 'scalar', 'avx2' or 'avx512'.");
  m.def("xnor_cpu_kernel_path", [] { return fastdl::xnor::cpu_kernel_path(); },
        "The popcount method the CPU binary convolution uses now: 'avx512-vpopcntdq', "
        "'avx2-pshufb' or 'scalar-swar'.");
  m.def("set_scratch_poison", [](bool on) { fastdl::set_scratch_poison(on); }, py::arg("on"),
        "Fill the CPU kernels' reused per-thread scratch with NaN bytes whenever it is handed "
        "out (for tests: a read of scratch a kernel did not write then shows in its results).");
  // Surface a bad FASTDL_ISA at import, not at the first op call.
  try {
    fastdl::cpu_isa();
  } catch (const c10::Error& e) {
    throw py::value_error(e.what_without_backtrace());
  }
}
