// fpdev: a PrivateUse1 test backend with the fallback mechanics of PyTorch's MPS backend.
//
// There is no Mac here, so the live probe is tested against this backend instead. What it
// reproduces (see /work/shared/mps-facts.md §1-3, §10):
//   * a boxed backend fallback chosen once, at load time, from FPDEV_ENABLE_FALLBACK:
//     an error fallback (NotImplementedError) or a CPU fallback (TORCH_WARN_ONCE, then
//     at::native::cpu_fallback, so the profiler shows aten::_to_cpu under the op);
//   * a few ops registered straight to the CPU fallback, one of them composite (linalg_svd);
//   * native kernels that never go through _to_cpu: the memory is ordinary host memory, so a
//     kernel wraps it as CPU tensors (from_blob) and calls the CPU implementation;
//   * TORCH_CHECK refusals like MPS's (no float64; mm only for floating inputs).
//
// Keep the two `TORCH_LIBRARY_IMPL(aten, PrivateUse1, m)` blocks at the end as plain
// `m.impl("name", ...)` lines: tests/test_fpdev_backend.py parses them and compares them
// with NATIVE_OPS / EXPLICIT_FALLBACK_OPS in tests/fpdev/__init__.py.

#include <ATen/EmptyTensor.h>
#include <ATen/InferSize.h>
#include <ATen/TensorUtils.h>
#include <ATen/core/Tensor.h>
#include <ATen/record_function.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/max_pool2d_with_indices.h>
#include <ATen/ops/max_pool2d_with_indices_backward.h>
#include <ATen/native/CPUFallback.h>
#include <ATen/native/Resize.h>
#include <ATen/ops/_local_scalar_dense.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/copy.h>
#include <ATen/ops/fill.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/zero.h>
#include <c10/core/Allocator.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace fpdev {
namespace {

constexpr c10::DeviceType kType = c10::DeviceType::PrivateUse1;
const c10::Device kDevice(kType, 0);

// ---------------------------------------------------------------------------------------------
// Environment: read once, when the library is loaded (like PYTORCH_ENABLE_MPS_FALLBACK).

const char* env_at_load() {
  static const char* value = std::getenv("FPDEV_ENABLE_FALLBACK");
  return value;
}

// FPDEV_RELEASE names an operator list (a release such as 2.8.0, or a file): tests.fpdev then
// registers that release's MPS kernels at runtime (configure below) instead of the fixed set.
const char* release_at_load() {
  static const char* value = std::getenv("FPDEV_RELEASE");
  return value;
}

bool release_mode() {
  return release_at_load() != nullptr && release_at_load()[0] != '\0';
}

// MPS uses std::stoi, which throws on a non-numeric value; strtol reads that as 0 instead.
bool fallback_enabled_at_load() {
  static const bool enabled = env_at_load() != nullptr && std::strtol(env_at_load(), nullptr, 10) != 0;
  return enabled;
}

// ---------------------------------------------------------------------------------------------
// Allocator: plain host memory, tagged with the fpdev device so tensors report device fpdev.

void free_host(void* ptr) {
  c10::free_cpu(ptr);
}

struct HostAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t nbytes) override {
    void* ptr = nbytes == 0 ? nullptr : c10::alloc_cpu(nbytes);
    return {ptr, ptr, &free_host, kDevice};
  }
  c10::DeleterFnPtr raw_deleter() const override {
    return &free_host;
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    if (count != 0) {
      std::memcpy(dest, src, count);
    }
  }
};

HostAllocator g_allocator;
REGISTER_ALLOCATOR(c10::DeviceType::PrivateUse1, &g_allocator)

// ---------------------------------------------------------------------------------------------
// Device guard. Kernels run synchronously on the calling thread, so an event is complete as
// soon as it is recorded; it still has to exist and belong to fpdev streams, because the
// autograd engine records and blocks on events of the backward pass's device.

struct Event {
  std::chrono::steady_clock::time_point recorded;
};

thread_local c10::StreamId t_current_stream = 0;
std::atomic<c10::StreamId> g_next_stream{1};

void check_index(c10::DeviceIndex index) {
  TORCH_CHECK(index == -1 || index == 0, "fpdev has a single device (index 0), got index ", static_cast<int>(index));
}

struct GuardImpl final : c10::impl::DeviceGuardImplInterface {
  c10::DeviceType type() const override {
    return kType;
  }
  c10::Device exchangeDevice(c10::Device device) const override {
    check_index(device.index());
    return kDevice;
  }
  c10::Device getDevice() const override {
    return kDevice;
  }
  void setDevice(c10::Device device) const override {
    check_index(device.index());
  }
  void uncheckedSetDevice(c10::Device /*device*/) const noexcept override {}
  c10::Stream getStream(c10::Device /*device*/) const override {
    return c10::Stream(c10::Stream::UNSAFE, kDevice, t_current_stream);
  }
  c10::Stream getDefaultStream(c10::Device /*device*/) const override {
    return c10::Stream(c10::Stream::UNSAFE, kDevice, 0);
  }
  c10::Stream getStreamFromGlobalPool(c10::Device device, bool /*isHighPriority*/) const override {
    return getNewStream(device, 0);
  }
  c10::Stream getNewStream(c10::Device /*device*/, int /*priority*/) const override {
    return c10::Stream(c10::Stream::UNSAFE, kDevice, g_next_stream.fetch_add(1));
  }
  c10::Stream exchangeStream(c10::Stream stream) const override {
    const c10::Stream previous(c10::Stream::UNSAFE, kDevice, t_current_stream);
    t_current_stream = stream.id();
    return previous;
  }
  c10::DeviceIndex deviceCount() const noexcept override {
    return 1;
  }
  void record(void** event, const c10::Stream& stream, const c10::DeviceIndex device_index,
              const c10::EventFlag /*flag*/) const override {
    TORCH_CHECK(stream.device_type() == kType, "fpdev event recorded on a ", stream.device_type(), " stream");
    check_index(device_index);
    if (*event == nullptr) {
      *event = new Event();
    }
    static_cast<Event*>(*event)->recorded = std::chrono::steady_clock::now();
  }
  void block(void* /*event*/, const c10::Stream& stream) const override {
    TORCH_CHECK(stream.device_type() == kType, "fpdev event blocked on a ", stream.device_type(), " stream");
  }
  bool queryEvent(void* /*event*/) const override {
    return true;
  }
  void destroyEvent(void* event, const c10::DeviceIndex /*device_index*/) const noexcept override {
    delete static_cast<Event*>(event);
  }
  void synchronizeEvent(void* /*event*/) const override {}
  double elapsedTime(void* start, void* end, const c10::DeviceIndex /*device_index*/) const override {
    TORCH_CHECK(start != nullptr && end != nullptr, "Both events must be recorded before calculating elapsed time.");
    const auto delta = static_cast<Event*>(end)->recorded - static_cast<Event*>(start)->recorded;
    return std::chrono::duration<double, std::milli>(delta).count();
  }
  bool queryStream(const c10::Stream& /*stream*/) const override {
    return true;
  }
  void synchronizeStream(const c10::Stream& /*stream*/) const override {}
  void synchronizeDevice(const c10::DeviceIndex /*device_index*/) const override {}
  void recordDataPtrOnStream(const c10::DataPtr& /*data_ptr*/, const c10::Stream& /*stream*/) const override {}
};

C10_REGISTER_GUARD_IMPL(PrivateUse1, GuardImpl);

// ---------------------------------------------------------------------------------------------
// Checks that mirror MPS's refusals.

void check_dtype(c10::ScalarType dtype) {
  TORCH_CHECK_TYPE(dtype != c10::ScalarType::Double,
                   "Cannot convert a fpdev Tensor to float64 dtype as the fpdev framework doesn't support "
                   "float64. Please use float32 instead.");
  TORCH_CHECK_TYPE(dtype != c10::ScalarType::ComplexDouble,
                   "Trying to convert ComplexDouble to the fpdev backend but it does not have support for that dtype.");
}

// ---------------------------------------------------------------------------------------------
// Host aliases: fpdev memory is host memory, so a CPU tensor over the same bytes lets a kernel
// run the CPU implementation in place, without at::_to_cpu and without a copy.

at::Tensor host(const at::Tensor& t) {
  if (!t.defined() || t.is_cpu()) {
    return t;
  }
  TORCH_CHECK(t.device().type() == kType, "fpdev kernel got a tensor on ", t.device());
  if (t.numel() == 0) {
    return at::detail::empty_strided_cpu(t.sizes(), t.strides(), t.scalar_type());
  }
  return at::from_blob(t.mutable_data_ptr(), t.sizes(), t.strides(), t.options().device(c10::kCPU));
}

// Operands of a compute kernel: fpdev tensors, or CPU scalars (0-dim), as on CUDA and MPS.
at::Tensor operand(const at::Tensor& t) {
  TORCH_CHECK(!t.is_cpu() || t.dim() == 0,
              "Expected all tensors to be on the same device, but found at least two devices, fpdev:0 and cpu!");
  return host(t);
}

c10::intrusive_ptr<c10::TensorImpl> new_impl(c10::Storage storage, caffe2::TypeMeta dtype) {
  return c10::make_intrusive<c10::TensorImpl>(std::move(storage), c10::DispatchKeySet(c10::DispatchKey::PrivateUse1),
                                              dtype);
}

void release_host_storage(void* ctx) {
  delete static_cast<c10::Storage*>(ctx);
}

// Moves a freshly allocated CPU result onto fpdev without copying: the fpdev storage keeps the
// CPU storage alive and frees it when it goes.
at::Tensor adopt(const at::Tensor& cpu, std::initializer_list<at::Tensor> inputs) {
  for (const auto& input : inputs) {
    TORCH_INTERNAL_ASSERT(!input.defined() || !cpu.is_alias_of(input), "fpdev: CPU kernel returned an alias");
  }
  check_dtype(cpu.scalar_type());
  const c10::Storage& source = cpu.storage();
  auto* keep = new c10::Storage(source);
  c10::DataPtr data(source.mutable_data(), keep, &release_host_storage, kDevice);
  c10::Storage storage(c10::Storage::use_byte_size_t(), source.nbytes(), std::move(data), &g_allocator, true);
  auto impl = new_impl(std::move(storage), cpu.dtype());
  impl->set_sizes_and_strides(cpu.sizes(), cpu.strides(), cpu.storage_offset());
  return at::Tensor(std::move(impl));
}

// A view keeps its base's key set (autograd keys included, or not for inference tensors).
at::Tensor alias_of(const at::Tensor& self) {
  return at::Tensor(c10::make_intrusive<c10::TensorImpl>(c10::TensorImpl::VIEW, c10::Storage(self.storage()),
                                                         self.key_set(), self.dtype()));
}

// ---------------------------------------------------------------------------------------------
// What every device needs: allocation, copies, views, resize, item().

at::Tensor fp_empty_memory_format(at::IntArrayRef size, std::optional<at::ScalarType> dtype,
                               std::optional<at::Layout> layout, std::optional<at::Device> device,
                               std::optional<bool> /*pin_memory*/, std::optional<at::MemoryFormat> memory_format) {
  const auto scalar_type = dtype.value_or(c10::get_default_dtype_as_scalartype());
  check_dtype(scalar_type);
  TORCH_CHECK(layout.value_or(at::kStrided) == at::kStrided, "fpdev only has strided tensors");
  check_index(device.value_or(kDevice).index());
  const c10::DispatchKeySet keys(c10::DispatchKey::PrivateUse1);
  return at::detail::empty_generic(size, &g_allocator, keys, scalar_type, memory_format);
}

at::Tensor fp_empty_strided(at::IntArrayRef size, at::IntArrayRef stride, std::optional<at::ScalarType> dtype,
                         std::optional<at::Layout> layout, std::optional<at::Device> device,
                         std::optional<bool> /*pin_memory*/) {
  const auto scalar_type = dtype.value_or(c10::get_default_dtype_as_scalartype());
  check_dtype(scalar_type);
  TORCH_CHECK(layout.value_or(at::kStrided) == at::kStrided, "fpdev only has strided tensors");
  check_index(device.value_or(kDevice).index());
  const c10::DispatchKeySet keys(c10::DispatchKey::PrivateUse1);
  return at::detail::empty_strided_generic(size, stride, &g_allocator, keys, scalar_type);
}

at::Tensor fp_copy_from(const at::Tensor& self, const at::Tensor& dst, bool /*non_blocking*/) {
  TORCH_CHECK(self.is_cpu() || self.device().type() == kType, "fpdev cannot copy from ", self.device());
  TORCH_CHECK(dst.is_cpu() || dst.device().type() == kType, "fpdev cannot copy to ", dst.device());
  if (dst.device().type() == kType) {
    check_dtype(dst.scalar_type());
  }
  if (dst.numel() != 0) {
    host(dst).copy_(host(self));
  }
  return dst;
}

void grow_storage(const c10::Storage& storage, size_t nbytes) {
  TORCH_CHECK(storage.resizable(), "Trying to resize storage that is not resizable");
  c10::DataPtr fresh = g_allocator.allocate(nbytes);
  if (storage.nbytes() != 0) {
    std::memcpy(fresh.get(), storage.data(), storage.nbytes());
  }
  storage.unsafeGetStorageImpl()->set_data_ptr_noswap(std::move(fresh));
  storage.unsafeGetStorageImpl()->set_nbytes(nbytes);
}

const at::Tensor& fp_resize_(const at::Tensor& self, at::IntArrayRef size,
                          std::optional<at::MemoryFormat> memory_format) {
  auto* impl = self.unsafeGetTensorImpl();
  if (self.sizes() != size) {
    impl->set_sizes_contiguous(size);
  }
  if (self.numel() != 0) {
    const size_t needed =
        at::detail::computeStorageNbytes(self.sizes(), self.strides(), self.dtype().itemsize(), self.storage_offset());
    if (needed > self.storage().nbytes()) {
      grow_storage(self.storage(), needed);
    }
  }
  if (memory_format.has_value()) {
    TORCH_CHECK(*memory_format != at::MemoryFormat::Preserve, "Unsupported memory format Preserve");
    impl->empty_tensor_restride(*memory_format);
  }
  return self;
}

at::Tensor fp_copy_from_and_resize(const at::Tensor& self, const at::Tensor& dst) {
  fp_resize_(dst, self.sizes(), std::nullopt);
  return fp_copy_from(self, dst, false);
}

at::Tensor fp_as_strided(const at::Tensor& self, at::IntArrayRef size, at::IntArrayRef stride,
                      std::optional<int64_t> storage_offset) {
  auto result = alias_of(self);
  at::native::setStrided(result, size, stride, storage_offset.value_or(self.storage_offset()));
  return result;
}

at::Tensor fp_reshape_alias(const at::Tensor& self, at::IntArrayRef size, at::IntArrayRef stride) {
  return fp_as_strided(self, size, stride, std::nullopt);
}

at::Tensor fp_view(const at::Tensor& self, at::IntArrayRef size) {
  const auto shape = at::infer_size_dv(size, self.numel());
  const auto stride = at::detail::computeStride(self.sizes(), self.strides(), shape);
  TORCH_CHECK(stride.has_value(),
              "view size is not compatible with input tensor's size and stride (at least one dimension spans "
              "across two contiguous subspaces). Use .reshape(...) instead.");
  return fp_as_strided(self, shape, *stride, std::nullopt);
}

at::Scalar fp_local_scalar_dense(const at::Tensor& self) {
  return at::_local_scalar_dense(host(self));
}

// ---------------------------------------------------------------------------------------------
// Native compute kernels: enough for a small MLP's forward pass (linear = t + addmm, relu) and
// for some in-place updates. Each calls the CPU kernel on host aliases.

at::Tensor fp_add(const at::Tensor& self, const at::Tensor& other, const at::Scalar& alpha) {
  return adopt(at::add(operand(self), operand(other), alpha), {self, other});
}

at::Tensor& fp_add_out(const at::Tensor& self, const at::Tensor& other, const at::Scalar& alpha, at::Tensor& out) {
  TORCH_CHECK(out.device().type() == kType, "add.out: out must be on fpdev, got ", out.device());
  const auto result = at::add(operand(self), operand(other), alpha);
  at::native::resize_output(out, result.sizes());
  host(out).copy_(result);
  return out;
}

at::Tensor& fp_add_(at::Tensor& self, const at::Tensor& other, const at::Scalar& alpha) {
  host(self).add_(operand(other), alpha);
  return self;
}

at::Tensor fp_mul(const at::Tensor& self, const at::Tensor& other) {
  return adopt(at::mul(operand(self), operand(other)), {self, other});
}

at::Tensor& fp_mul_(at::Tensor& self, const at::Tensor& other) {
  host(self).mul_(operand(other));
  return self;
}

at::Tensor fp_relu(const at::Tensor& self) {
  return adopt(at::relu(host(self)), {self});
}

at::Tensor fp_mm(const at::Tensor& self, const at::Tensor& mat2) {
  TORCH_CHECK(self.is_floating_point() && mat2.is_floating_point(),
              "fpdev device does not support mm for non-float inputs");
  return adopt(at::mm(operand(self), operand(mat2)), {self, mat2});
}

at::Tensor fp_addmm(const at::Tensor& self, const at::Tensor& mat1, const at::Tensor& mat2, const at::Scalar& beta,
                 const at::Scalar& alpha) {
  return adopt(at::addmm(operand(self), operand(mat1), operand(mat2), beta, alpha), {self, mat1, mat2});
}

at::Tensor& fp_fill_(at::Tensor& self, const at::Scalar& value) {
  host(self).fill_(value);
  return self;
}

at::Tensor& fp_zero_(at::Tensor& self) {
  host(self).zero_();
  return self;
}

// A kernel that sends its input to the CPU itself and warns, without the backend fallback: MPS's
// nonzero before macOS 13.0 (Indexing.mm nonzero_fallback). No at::_to_cpu: the round trip is
// .to("cpu") and back, as there. For the live notes (tests/test_live_notes.py; render helper).
at::Tensor fp_nonzero(const at::Tensor& self) {
  TORCH_WARN_ONCE("fpdev: nonzero op is supported natively starting from macOS 13.0. ",
                  "Falling back on CPU. This may have performance implications.");
  return at::nonzero(self.to("cpu")).to(self.device());
}

// ---------------------------------------------------------------------------------------------
// The two boxed fallbacks, shaped like mps_fallback / mps_error_fallback.

void cpu_fallback(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  TORCH_WARN_ONCE("The operator '", op.schema().operator_name(),
                  "' is not currently supported on the fpdev backend and will fall back to run on the CPU. "
                  "This may have performance implications.");
  at::native::cpu_fallback(op, stack);
}

void error_fallback(const c10::OperatorHandle& op, torch::jit::Stack* /*stack*/) {
  TORCH_CHECK_NOT_IMPLEMENTED(
      false, "The operator '", op.schema().operator_name(),
      "' is not currently implemented for the fpdev device. If you want this op to be considered for addition "
      "please comment on https://github.com/pytorch/pytorch/issues/141287 and mention use-case, that resulted in "
      "missing op as well as commit hash fpdev. As a temporary fix, you can set the environment variable "
      "`FPDEV_ENABLE_FALLBACK=1` to use the CPU as a fallback for this op. WARNING: this will be slower than "
      "running natively on fpdev.");
}


// ---------------------------------------------------------------------------------------------
// fpdev as release V (FPDEV_RELEASE): kernels registered at runtime from names sent by Python.

// An op with an MPS kernel in V: the CPU computation, run without a warning and out of the
// profiler's sight. cpu_fallback does the argument moving; the guard hides its _to_cpu and
// copy events, so the call looks like any native kernel (an aten::X event with no _to_cpu).
// cpu_fallback sends results to the device of the *first* tensor argument, which can be a CPU
// scalar (`1 - x` is rsub(x, tensor(1)) ... `where(c, 0.0, x)`); an MPS kernel returns MPS
// tensors, so without a Device argument the results go to fpdev whenever an input is there.
void native_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  at::DisableRecordFunctionGuard unseen;
  const auto n_args = op.schema().arguments().size();
  bool device_arg = false;
  bool on_fpdev = false;
  for (size_t i = stack->size() - n_args; i < stack->size(); ++i) {
    const auto& arg = (*stack)[i];
    if (arg.isDevice()) {
      device_arg = true;
    } else if (arg.isTensor()) {
      on_fpdev |= arg.toTensor().defined() && arg.toTensor().device().type() == kType;
    } else if (arg.isTensorList()) {
      for (const auto& t : arg.toTensorVector()) {
        on_fpdev |= t.defined() && t.device().type() == kType;
      }
    }
  }
  at::native::cpu_fallback(op, stack);
  if (device_arg || !on_fpdev) {
    return;
  }
  const auto n_returns = op.schema().returns().size();
  for (size_t i = stack->size() - n_returns; i < stack->size(); ++i) {
    auto& ret = (*stack)[i];
    if (ret.isTensor() && ret.toTensor().defined() && ret.toTensor().is_cpu()) {
      ret = ret.toTensor().to(kDevice);
    } else if (ret.isTensorList()) {
      auto tensors = ret.toTensorVector();
      for (auto& t : tensors) {
        if (t.defined() && t.is_cpu()) {
          t = t.to(kDevice);
        }
      }
      ret = c10::IValue(c10::List<at::Tensor>(tensors));
    }
  }
}

// A CPU tensor over the same bytes as an fpdev tensor (whole storage, same offset), so a view
// computed on it maps back onto the fpdev storage.
at::Tensor host_view(const at::Tensor& t) {
  const c10::Storage& storage = t.storage();
  c10::Storage cpu(c10::Storage::use_byte_size_t(), storage.nbytes(),
                   c10::DataPtr(storage.mutable_data(), c10::Device(c10::kCPU)), nullptr, false);
  auto out = at::empty({0}, t.options().device(c10::kCPU));
  out.set_(cpu, t.storage_offset(), t.sizes(), t.strides());
  return out;
}

// A native view op of V: the CPU op computes the view's geometry on a host view of the first
// tensor argument; the result is an fpdev view of the same storage with that geometry.
void view_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  at::DisableRecordFunctionGuard unseen;
  const auto& schema = op.schema();
  const auto n = schema.arguments().size();
  const size_t first = stack->size() - n;
  at::Tensor base;
  for (size_t i = first; i < stack->size(); ++i) {
    auto& arg = (*stack)[i];
    if (arg.isTensor() && arg.toTensor().defined() && arg.toTensor().device().type() == kType) {
      base = arg.toTensor();
      arg = host_view(base);
      break;
    }
  }
  TORCH_CHECK(base.defined(), "fpdev view kernel of ", schema.operator_name(), ": no fpdev tensor argument");
  TORCH_CHECK(schema.returns().size() == 1, "fpdev view kernel of ", schema.operator_name(), ": one result expected");
  op.redispatchBoxed(c10::DispatchKeySet(c10::DispatchKey::CPU), stack);
  const at::Tensor cpu = torch::jit::pop(*stack).toTensor();
  auto impl = c10::make_intrusive<c10::TensorImpl>(c10::TensorImpl::VIEW, c10::Storage(base.storage()),
                                                   base.key_set(), cpu.dtype());
  at::Tensor out(std::move(impl));
  at::native::setStrided(out, cpu.sizes(), cpu.strides(), cpu.storage_offset());
  torch::jit::push(*stack, out);
}

// MPS's error kernel for _slow_conv2d_forward (MPSFallback.mm): reached only when the input
// is on another device than the weight; it never computes.
at::Tensor error_slow_conv2d_forward(const at::Tensor& self, const at::Tensor& weight, at::IntArrayRef /*kernel_size*/,
                                     const std::optional<at::Tensor>& /*bias*/, at::IntArrayRef /*stride*/,
                                     at::IntArrayRef /*padding*/) {
  TORCH_CHECK(self.device() == weight.device(), "slow_conv2d_forward_mps: input(device='", self.device(),
              "') and weight(device=", weight.device(), "')  must be on the same device");
  TORCH_INTERNAL_ASSERT(false, "slow_conv2d_forward_mps should not be called for fpdev tensors");
}

at::Tensor adopt_or_undefined(const at::Tensor& cpu) {
  return cpu.defined() ? adopt(cpu, {}) : cpu;
}

// Device routes (DEVICE_ROUTES in tests/fpdev/release.py): _convolution sends a PrivateUse1
// input to convolution_overrideable where MPS reaches _mps_convolution(_transpose); these run
// the CPU convolution natively, standing for the MPS kernels V has.
at::Tensor route_convolution(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool transposed,
                             at::IntArrayRef output_padding, int64_t groups) {
  at::DisableRecordFunctionGuard unseen;
  std::optional<at::Tensor> cpu_bias;
  if (bias.has_value() && bias->defined()) {
    cpu_bias = host(*bias);
  }
  return adopt(at::convolution(host(input), host(weight), cpu_bias, stride, padding, dilation, transposed,
                               output_padding, groups),
               {});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> route_convolution_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool transposed, at::IntArrayRef output_padding, int64_t groups,
    std::array<bool, 3> output_mask) {
  at::DisableRecordFunctionGuard unseen;
  const int64_t channels = transposed ? weight.size(1) * groups : weight.size(0);
  const std::vector<int64_t> bias_sizes{channels};
  auto [gi, gw, gb] = at::convolution_backward(host(grad_output), host(input), host(weight),
                                               at::OptionalIntArrayRef(bias_sizes), stride, padding, dilation,
                                               transposed, output_padding, groups, output_mask);
  return {adopt_or_undefined(gi), adopt_or_undefined(gw), adopt_or_undefined(gb)};
}

// linear_backward has an MPS kernel and no CPU one (linear's derivative when linear itself has a
// kernel, as on MPS): the same three gradients, computed on the host.
std::tuple<at::Tensor, at::Tensor, at::Tensor> mps_only_linear_backward(const at::Tensor& self,
                                                                        const at::Tensor& grad_output,
                                                                        const at::Tensor& weight,
                                                                        std::array<bool, 3> output_mask) {
  at::DisableRecordFunctionGuard unseen;
  const auto input = host(self);
  const auto grad = host(grad_output);
  const auto w = host(weight);
  at::Tensor gi, gw, gb;
  if (output_mask[0]) {
    gi = at::matmul(grad, w);
  }
  const auto grad2d = grad.reshape({-1, grad.size(-1)});
  if (output_mask[1]) {
    gw = grad2d.t().matmul(input.reshape({-1, input.size(-1)}));
  }
  if (output_mask[2]) {
    gb = grad2d.sum(0);
  }
  return {adopt_or_undefined(gi), adopt_or_undefined(gw), adopt_or_undefined(gb)};
}

// max_pool2d_backward: MPS kernel only (MPS has max_pool2d itself); the CPU computes it from
// max_pool2d_with_indices.
at::Tensor mps_only_max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& self,
                                        at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation, bool ceil_mode) {
  at::DisableRecordFunctionGuard unseen;
  const auto input = host(self);
  const auto indices = std::get<1>(at::max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode));
  return adopt(at::max_pool2d_with_indices_backward(host(grad_output), input, kernel_size, stride, padding, dilation,
                                                    ceil_mode, indices),
               {});
}

std::vector<std::unique_ptr<torch::Library>>& libraries() {
  static std::vector<std::unique_ptr<torch::Library>> libs;
  return libs;
}

// The hand-written device basics: a native V registers these, not the generic kernel.
bool register_basic(torch::Library& lib, const std::string& name) {
  if (name == "empty.memory_format") lib.impl(name.c_str(), TORCH_FN(fp_empty_memory_format));
  else if (name == "empty_strided") lib.impl(name.c_str(), TORCH_FN(fp_empty_strided));
  else if (name == "_copy_from") lib.impl(name.c_str(), TORCH_FN(fp_copy_from));
  else if (name == "_copy_from_and_resize") lib.impl(name.c_str(), TORCH_FN(fp_copy_from_and_resize));
  else if (name == "resize_") lib.impl(name.c_str(), TORCH_FN(fp_resize_));
  else if (name == "as_strided") lib.impl(name.c_str(), TORCH_FN(fp_as_strided));
  else if (name == "_reshape_alias") lib.impl(name.c_str(), TORCH_FN(fp_reshape_alias));
  else if (name == "view") lib.impl(name.c_str(), TORCH_FN(fp_view));
  else if (name == "_local_scalar_dense") lib.impl(name.c_str(), TORCH_FN(fp_local_scalar_dense));
  else return false;
  return true;
}

// kinds: native, view, explicit (CPU fallback whatever the variable), error, route.
// Returns how many names were registered. Only in release mode, and once per process.
int64_t configure(const std::vector<std::pair<std::string, std::string>>& kernels) {
  TORCH_CHECK(release_mode(), "fpdev.configure needs FPDEV_RELEASE set when the library loads");
  TORCH_CHECK(libraries().empty(), "fpdev is already configured");
  auto lib = std::make_unique<torch::Library>(torch::Library::IMPL, "aten",
                                              std::make_optional(c10::DispatchKey::PrivateUse1), __FILE__, __LINE__);
  int64_t count = 0;
  for (const auto& [name, kind] : kernels) {
    if (kind == "native") {
      if (!register_basic(*lib, name)) {
        lib->impl(name.c_str(), torch::CppFunction::makeFromBoxedFunction<&native_kernel>());
      }
    } else if (kind == "view") {
      if (!register_basic(*lib, name)) {
        lib->impl(name.c_str(), torch::CppFunction::makeFromBoxedFunction<&view_kernel>());
      }
    } else if (kind == "explicit") {
      lib->impl(name.c_str(), torch::CppFunction::makeFromBoxedFunction<&cpu_fallback>());
    } else if (kind == "error") {
      TORCH_CHECK(name == "_slow_conv2d_forward", "fpdev knows no error kernel for ", name);
      lib->impl(name.c_str(), TORCH_FN(error_slow_conv2d_forward));
    } else if (kind == "route") {
      if (name == "convolution_overrideable") lib->impl(name.c_str(), TORCH_FN(route_convolution));
      else if (name == "convolution_backward_overrideable") lib->impl(name.c_str(), TORCH_FN(route_convolution_backward));
      else if (name == "linear_backward") lib->impl(name.c_str(), TORCH_FN(mps_only_linear_backward));
      else if (name == "max_pool2d_backward") lib->impl(name.c_str(), TORCH_FN(mps_only_max_pool2d_backward));
      else TORCH_CHECK(false, "fpdev knows no device route for ", name);
    } else {
      TORCH_CHECK(false, "unknown fpdev kernel kind '", kind, "' for ", name);
    }
    ++count;
  }
  libraries().push_back(std::move(lib));
  return count;
}

}  // namespace

TORCH_LIBRARY_IMPL(_, PrivateUse1, m) {
  if (fallback_enabled_at_load()) {
    m.fallback(torch::CppFunction::makeFromBoxedFunction<&cpu_fallback>());
  } else {
    m.fallback(torch::CppFunction::makeFromBoxedFunction<&error_fallback>());
  }
}

// Native kernels (NATIVE_OPS); in release mode, configure() registers V's kernels instead.
TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  if (release_mode()) return;
  m.impl("empty.memory_format", fp_empty_memory_format);
  m.impl("empty_strided", fp_empty_strided);
  m.impl("_copy_from", fp_copy_from);
  m.impl("_copy_from_and_resize", fp_copy_from_and_resize);
  m.impl("resize_", fp_resize_);
  m.impl("as_strided", fp_as_strided);
  m.impl("_reshape_alias", fp_reshape_alias);
  m.impl("view", fp_view);
  m.impl("_local_scalar_dense", fp_local_scalar_dense);
  m.impl("add.Tensor", fp_add);
  m.impl("add.out", fp_add_out);
  m.impl("add_.Tensor", fp_add_);
  m.impl("mul.Tensor", fp_mul);
  m.impl("mul_.Tensor", fp_mul_);
  m.impl("relu", fp_relu);
  m.impl("mm", fp_mm);
  m.impl("addmm", fp_addmm);
  m.impl("fill_.Scalar", fp_fill_);
  m.impl("zero_", fp_zero_);
  m.impl("nonzero", fp_nonzero);
}

// Explicit CPU fallbacks (EXPLICIT_FALLBACK_OPS): they run on the CPU whatever the variable says.
TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  if (release_mode()) return;
  m.impl("linalg_svd", torch::CppFunction::makeFromBoxedFunction<&cpu_fallback>());
  m.impl("linalg_svd.U", torch::CppFunction::makeFromBoxedFunction<&cpu_fallback>());
  m.impl("col2im", torch::CppFunction::makeFromBoxedFunction<&cpu_fallback>());
  m.impl("embedding_renorm_", torch::CppFunction::makeFromBoxedFunction<&cpu_fallback>());
}

}  // namespace fpdev

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "fpdev test backend: PrivateUse1 with MPS's fallback mechanics";
  module.def("fallback_enabled", &fpdev::fallback_enabled_at_load,
             "Whether FPDEV_ENABLE_FALLBACK selected the CPU fallback when the library was loaded.");
  module.def(
      "env_at_load", [] { return fpdev::env_at_load() == nullptr ? std::string() : std::string(fpdev::env_at_load()); },
      "FPDEV_ENABLE_FALLBACK as read when the library was loaded ('' if unset).");
  module.def(
      "release_at_load",
      [] { return fpdev::release_at_load() == nullptr ? std::string() : std::string(fpdev::release_at_load()); },
      "FPDEV_RELEASE as read when the library was loaded ('' if unset: the fixed kernel set).");
  module.def("configure", &fpdev::configure,
             "Register release V's kernels: [(op name without aten::, kind)], kind in native, view, "
             "explicit, error, route. Only with FPDEV_RELEASE set at load, once.");
}
