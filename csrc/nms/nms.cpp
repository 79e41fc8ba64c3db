// Schemas of the NMS ops. Kernels: nms_cpu.cpp, nms_cuda.cu. Fake (shape)
// kernels and the Python API: fastdl/ops/nms.py.
#include "nms/nms.h"

#include <torch/library.h>

#include "common/checks.h"

namespace fastdl {

void check_nms_inputs(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                      const at::Tensor* idxs, double iou_threshold) {
  check_shape(op, "boxes", boxes, {-1, 4}, "(N, 4)");
  check_shape(op, "scores", scores, {-1}, "(N,)");
  check_same_size(op, "boxes", boxes, 0, "scores", scores, 0);
  check_same_dtype(op, "boxes", boxes, "scores", scores);
  check_same_device(op, "boxes", boxes, "scores", scores);
  if (idxs != nullptr) {
    check_shape(op, "idxs", *idxs, {-1}, "(N,)");
    check_same_size(op, "boxes", boxes, 0, "idxs", *idxs, 0);
    check_dtype(op, "idxs", *idxs, {c10::kLong, c10::kInt});
    check_same_device(op, "boxes", boxes, "idxs", *idxs);
  }
  check_in_range(op, "iou_threshold", iou_threshold, 0.0, 1.0);
  TORCH_CHECK_VALUE(boxes.size(0) <= kMaxNmsBoxes, "fastdl.", op, ": at most ", kMaxNmsBoxes,
                    " boxes are supported, got ", boxes.size(0));
}

}  // namespace fastdl

TORCH_LIBRARY_FRAGMENT(fastdl, m) {
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
}
