#include <dlfcn.h>

#include <algorithm>

#include <cstdio>
#include <mutex>
#include <string>
#include <vector>

#include "core/cuda_internal.h"

namespace mooncake_connector::cuda {
namespace {

// The driver API's types, as cuda.h declares them (ABI-stable since CUDA 4).
using CUresult = int;
using CUdevice = int;
using CUcontext = void*;
using CUdeviceptr = unsigned long long;
constexpr unsigned kMemHostAllocPortable = 0x01;  // CU_MEMHOSTALLOC_PORTABLE
constexpr unsigned kEventDisableTiming = 0x02;    // CU_EVENT_DISABLE_TIMING
constexpr int kPointerMemoryType = 2;             // CU_POINTER_ATTRIBUTE_MEMORY_TYPE
constexpr int kPointerDeviceOrdinal = 9;          // CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
constexpr int kPointerRangeStart = 11;            // CU_POINTER_ATTRIBUTE_RANGE_START_ADDR
constexpr int kPointerRangeSize = 12;             // CU_POINTER_ATTRIBUTE_RANGE_SIZE
constexpr unsigned kMemoryTypeDevice = 2;         // CU_MEMORYTYPE_DEVICE

}  // namespace

struct Driver::Api {
  void* library = nullptr;
  CUresult (*cuInit)(unsigned);
  CUresult (*cuDeviceGetCount)(int*);
  CUresult (*cuDeviceGet)(CUdevice*, int);
  CUresult (*cuDevicePrimaryCtxRetain)(CUcontext*, CUdevice);
  CUresult (*cuCtxPushCurrent)(CUcontext);
  CUresult (*cuCtxPopCurrent)(CUcontext*);
  CUresult (*cuMemHostAlloc)(void**, size_t, unsigned);
  CUresult (*cuMemFreeHost)(void*);
  CUresult (*cuMemHostGetFlags)(unsigned*, void*);
  CUresult (*cuMemcpyHtoDAsync)(CUdeviceptr, const void*, size_t, Stream);
  CUresult (*cuMemcpyDtoDAsync)(CUdeviceptr, CUdeviceptr, size_t, Stream);
  CUresult (*cuMemcpyDtoHAsync)(void*, CUdeviceptr, size_t, Stream);
  CUresult (*cuEventCreate)(Event*, unsigned);
  CUresult (*cuEventDestroy)(Event);
  CUresult (*cuEventRecord)(Event, Stream);
  CUresult (*cuEventSynchronize)(Event);
  CUresult (*cuStreamSynchronize)(Stream);
  CUresult (*cuPointerGetAttribute)(void*, int, CUdeviceptr);
  CUresult (*cuGetErrorName)(CUresult, const char**);
  CUresult (*cuGetErrorString)(CUresult, const char**);

  int device_count = 0;
  mutable std::mutex mu;
  mutable std::vector<CUcontext> contexts;  // primary contexts, retained for good

  template <typename Fn>
  bool Bind(Fn*& fn, const char* name) {
    fn = reinterpret_cast<Fn*>(dlsym(library, name));
    return fn != nullptr;
  }
};

Result<const Driver*> Driver::Get() {
  static const Result<const Driver*> driver = []() -> Result<const Driver*> {
    auto api = std::make_unique<Api>();
    api->library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (api->library == nullptr) {
      const char* why = dlerror();
      return FailedPrecondition(std::string("no CUDA driver on this machine (libcuda.so.1: ") +
                                (why ? why : "not found") + "): loading onto or saving from a GPU needs one");
    }
    const char* missing = nullptr;
    auto bind = [&](auto& fn, const char* name) {
      if (missing == nullptr && !api->Bind(fn, name)) missing = name;
    };
    bind(api->cuInit, "cuInit");
    bind(api->cuDeviceGetCount, "cuDeviceGetCount");
    bind(api->cuDeviceGet, "cuDeviceGet");
    bind(api->cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
    bind(api->cuCtxPushCurrent, "cuCtxPushCurrent_v2");
    bind(api->cuCtxPopCurrent, "cuCtxPopCurrent_v2");
    bind(api->cuMemHostAlloc, "cuMemHostAlloc");
    bind(api->cuMemFreeHost, "cuMemFreeHost");
    bind(api->cuMemHostGetFlags, "cuMemHostGetFlags");
    bind(api->cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2");
    bind(api->cuMemcpyDtoDAsync, "cuMemcpyDtoDAsync_v2");
    bind(api->cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2");
    bind(api->cuEventCreate, "cuEventCreate");
    bind(api->cuEventDestroy, "cuEventDestroy_v2");
    bind(api->cuEventRecord, "cuEventRecord");
    bind(api->cuEventSynchronize, "cuEventSynchronize");
    bind(api->cuStreamSynchronize, "cuStreamSynchronize");
    bind(api->cuPointerGetAttribute, "cuPointerGetAttribute");
    bind(api->cuGetErrorName, "cuGetErrorName");
    bind(api->cuGetErrorString, "cuGetErrorString");
    if (missing != nullptr) {
      return FailedPrecondition(std::string("the CUDA driver (libcuda.so.1) lacks ") + missing +
                                ": it is older than this library supports (CUDA 11 or newer)");
    }
    std::unique_ptr<Driver> d(new Driver(std::move(api)));
    MC_RETURN_IF_ERROR(d->Check(d->api_->cuInit(0), "initialising the CUDA driver"));
    MC_RETURN_IF_ERROR(d->Check(d->api_->cuDeviceGetCount(&d->api_->device_count), "counting CUDA devices"));
    d->api_->contexts.assign(d->api_->device_count, nullptr);
    return static_cast<const Driver*>(d.release());  // lives as long as the process
  }();
  return driver;
}

Driver::Driver(std::unique_ptr<Api> api) : api_(std::move(api)) {}
Driver::~Driver() = default;

Status Driver::Check(int result, const std::string& what) const {
  if (result == 0) return Status::Ok();
  const char* name = nullptr;
  const char* text = nullptr;
  api_->cuGetErrorName(result, &name);
  api_->cuGetErrorString(result, &text);
  std::string message = what + ": " + (name ? name : "CUDA error " + std::to_string(result)) +
                        (text ? std::string(" (") + text + ")" : "");
  // Out of pinned memory is a resource running short; the rest are faults.
  if (result == 2 /* CUDA_ERROR_OUT_OF_MEMORY */) return ResourceExhausted(message);
  return Internal(message);
}

int Driver::DeviceCount() const { return api_->device_count; }

Result<Driver::ContextGuard> Driver::Enter(int device) const {
  if (device < 0 || device >= api_->device_count) {
    return InvalidArgument("CUDA device " + std::to_string(device) + " does not exist (this machine has " +
                           std::to_string(api_->device_count) + ")");
  }
  CUcontext context = nullptr;
  {
    std::lock_guard<std::mutex> lock(api_->mu);
    if (api_->contexts[device] == nullptr) {
      CUdevice handle = 0;
      MC_RETURN_IF_ERROR(Check(api_->cuDeviceGet(&handle, device), "opening CUDA device " + std::to_string(device)));
      MC_RETURN_IF_ERROR(Check(api_->cuDevicePrimaryCtxRetain(&api_->contexts[device], handle),
                               "starting CUDA device " + std::to_string(device)));
    }
    context = api_->contexts[device];
  }
  MC_RETURN_IF_ERROR(Check(api_->cuCtxPushCurrent(context), "entering CUDA device " + std::to_string(device)));
  return ContextGuard(this, device);
}

Driver::ContextGuard::~ContextGuard() {
  if (driver_ == nullptr) return;
  CUcontext popped = nullptr;
  driver_->api_->cuCtxPopCurrent(&popped);
}

Result<PinnedBuffer> Driver::AllocatePinned(uint64_t bytes) const {
  PinnedBuffer out;
  if (bytes == 0) return out;
  void* p = nullptr;
  MC_RETURN_IF_ERROR(Check(api_->cuMemHostAlloc(&p, bytes, kMemHostAllocPortable),
                           "allocating " + std::to_string(bytes) + " bytes of pinned host memory"));
  out.driver_ = this;
  out.data_ = static_cast<std::byte*>(p);
  out.size_ = bytes;
  return out;
}

bool Driver::IsPinned(const std::byte* host) const {
  unsigned flags = 0;
  return api_->cuMemHostGetFlags(&flags, const_cast<std::byte*>(host)) == 0;
}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& other) noexcept {
  if (this != &other) {
    this->~PinnedBuffer();
    driver_ = other.driver_;
    data_ = other.data_;
    size_ = other.size_;
    other.driver_ = nullptr;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

PinnedBuffer::~PinnedBuffer() {
  if (data_ != nullptr) driver_->api_->cuMemFreeHost(data_);
  data_ = nullptr;
}

Status Driver::CheckDeviceMemory(uint64_t pointer, uint64_t bytes, int device) const {
  std::string where = "the memory at 0x" + [&] {
    char text[32];
    std::snprintf(text, sizeof text, "%llx", static_cast<unsigned long long>(pointer));
    return std::string(text);
  }();
  unsigned type = 0;
  if (api_->cuPointerGetAttribute(&type, kPointerMemoryType, pointer) != 0 || type != kMemoryTypeDevice) {
    return InvalidArgument(where + " is not CUDA device memory");
  }
  int ordinal = -1;
  MC_RETURN_IF_ERROR(Check(api_->cuPointerGetAttribute(&ordinal, kPointerDeviceOrdinal, pointer), where));
  if (ordinal != device) {
    return InvalidArgument(where + " is memory of CUDA device " + std::to_string(ordinal) + ", not of device " +
                           std::to_string(device));
  }
  CUdeviceptr start = 0;
  size_t size = 0;
  MC_RETURN_IF_ERROR(Check(api_->cuPointerGetAttribute(&start, kPointerRangeStart, pointer), where));
  MC_RETURN_IF_ERROR(Check(api_->cuPointerGetAttribute(&size, kPointerRangeSize, pointer), where));
  if (pointer - start > size || bytes > size - (pointer - start)) {
    return InvalidArgument(where + " holds " + std::to_string(size - (pointer - start)) + " bytes, not " +
                           std::to_string(bytes));
  }
  return Status::Ok();
}

Status Driver::CopyToDeviceAsync(uint64_t device_pointer, const std::byte* host, uint64_t bytes,
                                 Stream stream) const {
  if (bytes == 0) return Status::Ok();
  return Check(api_->cuMemcpyHtoDAsync(device_pointer, host, bytes, stream), "copying to the GPU");
}

Status Driver::CopyOnDeviceAsync(uint64_t to, uint64_t from, uint64_t bytes, Stream stream) const {
  if (bytes == 0) return Status::Ok();
  return Check(api_->cuMemcpyDtoDAsync(to, from, bytes, stream), "copying on the GPU");
}

Status Driver::CopyToHostAsync(std::byte* host, uint64_t device_pointer, uint64_t bytes, Stream stream) const {
  if (bytes == 0) return Status::Ok();
  return Check(api_->cuMemcpyDtoHAsync(host, device_pointer, bytes, stream), "copying from the GPU");
}

Result<Event> Driver::CreateEvent() const {
  Event e = nullptr;
  MC_RETURN_IF_ERROR(Check(api_->cuEventCreate(&e, kEventDisableTiming), "creating a CUDA event"));
  return e;
}

void Driver::DestroyEvent(Event event) const {
  if (event != nullptr) api_->cuEventDestroy(event);
}

Status Driver::Record(Event event, Stream stream) const {
  return Check(api_->cuEventRecord(event, stream), "recording a CUDA event");
}

Status Driver::Wait(Event event) const {
  return Check(api_->cuEventSynchronize(event), "waiting for a copy between the host and the GPU");
}

Status Driver::Synchronize(Stream stream) const {
  return Check(api_->cuStreamSynchronize(stream), "waiting for the copies between the host and the GPU");
}

PinnedPool& PinnedPool::Get() {
  static PinnedPool* pool = new PinnedPool;
  return *pool;
}

Result<PinnedBuffer> PinnedPool::Take(const Driver& driver, uint64_t bytes) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->size() >= bytes && (best == free_.end() || it->size() < best->size())) best = it;
    }
    if (best != free_.end()) {
      PinnedBuffer out = std::move(*best);
      free_.erase(best);
      return out;
    }
  }
  return driver.AllocatePinned(bytes);
}

void PinnedPool::Give(PinnedBuffer buffer) {
  if (buffer.data() == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  free_.push_back(std::move(buffer));
  std::sort(free_.begin(), free_.end(), [](const PinnedBuffer& a, const PinnedBuffer& b) { return a.size() > b.size(); });
  if (free_.size() > kKeep) free_.resize(kKeep);  // the largest stay
}

}  // namespace mooncake_connector::cuda
