#include "mooncake_connector/tensor.h"

#include <gtest/gtest.h>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "core/pages_internal.h"
#include "mooncake_connector/dlpack.h"

namespace mooncake_connector {
namespace {

TEST(DType, NamesRoundTripAndSizesAreRight) {
  for (DType d : kAllDTypes) {
    EXPECT_EQ(*ParseDType(DTypeName(d)), d);
  }
  EXPECT_EQ(ItemSize(DType::kBF16), 2u);
  EXPECT_EQ(ItemSize(DType::kF8E5M2), 1u);
  EXPECT_EQ(ItemSize(DType::kU64), 8u);
  EXPECT_EQ(DTypeName(DType::kF8E4M3), "F8_E4M3");
  EXPECT_EQ(ParseDType("F4").status().code(), StatusCode::kInvalidArgument);
}

TEST(Tensor, SizesAndOverflow) {
  EXPECT_EQ(*NumElements({}), 1u);
  EXPECT_EQ(*NumElements({3, 0, 2}), 0u);
  EXPECT_EQ(*NumBytes(DType::kF32, {2, 3}), 24u);
  EXPECT_FALSE(NumElements({-1}).ok());
  EXPECT_FALSE(NumBytes(DType::kF64, {int64_t{1} << 62}).ok());
  EXPECT_FALSE(NumElements({int64_t{1} << 40, int64_t{1} << 40}).ok());
}

TEST(Tensor, AllocateIsAlignedAndCopyIsDeep) {
  Tensor t = *Tensor::Allocate(DType::kI32, {5});
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % kBufferAlignment, 0u);
  EXPECT_EQ(t.nbytes(), 20u);
  for (int i = 0; i < 5; ++i) reinterpret_cast<int32_t*>(t.data())[i] = i;
  Tensor c = *Tensor::Copy(t.view());
  reinterpret_cast<int32_t*>(t.data())[0] = 99;
  EXPECT_EQ(reinterpret_cast<int32_t*>(c.data())[0], 0);
  EXPECT_EQ(c.shape(), Shape{5});
}

TEST(Tensor, FromBufferChecksTheSize) {
  Buffer b = *Buffer::Allocate(12);
  EXPECT_TRUE(Tensor::FromBuffer(DType::kF32, {3}, b).ok());
  EXPECT_EQ(Tensor::FromBuffer(DType::kF32, {4}, b).status().code(), StatusCode::kInvalidArgument);
}

TEST(Tensor, ZeroDimAndEmpty) {
  Tensor scalar = *Tensor::Allocate(DType::kF64, {});
  EXPECT_EQ(scalar.nbytes(), 8u);
  EXPECT_EQ(scalar.ndim(), 0);
  Tensor empty = *Tensor::Allocate(DType::kF16, {4, 0});
  EXPECT_EQ(empty.nbytes(), 0u);
}

TEST(DLPack, ExportImportRoundTripSharesMemory) {
  for (DType d : kAllDTypes) {
    Tensor t = *Tensor::Allocate(d, {2, 3});
    std::memset(t.data(), 0x5a, t.nbytes());
    dlpack::ManagedTensor* m = dlpack::ToDLPack(t);
    EXPECT_EQ(m->dl_tensor.ndim, 2);
    EXPECT_EQ(m->dl_tensor.shape[1], 3);
    Result<Tensor> back = dlpack::FromDLPack(m);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->dtype(), d);
    EXPECT_EQ(back->shape(), (Shape{2, 3}));
    EXPECT_EQ(back->data(), t.data());
  }
}

TEST(DLPack, DeleterRunsOnceWhenTheLastCopyGoes) {
  static int deleted = 0;
  deleted = 0;
  static float data[6] = {1, 2, 3, 4, 5, 6};
  static int64_t shape[2] = {2, 3};
  auto* m = new dlpack::ManagedTensor{};
  m->dl_tensor = {data, {dlpack::kCPU, 0}, 2, {dlpack::kFloat, 32, 1}, shape, nullptr, 0};
  m->deleter = [](dlpack::ManagedTensor* self) { ++deleted; delete self; };
  {
    Tensor t = *dlpack::FromDLPack(m);
    Tensor copy = t;
    EXPECT_EQ(reinterpret_cast<float*>(copy.data())[5], 6.0f);
    EXPECT_EQ(deleted, 0);
  }
  EXPECT_EQ(deleted, 1);
}

TEST(DLPack, RejectsDeviceStridesAndUnknownTypesAndStillDeletes) {
  static int deleted = 0;
  deleted = 0;
  static float data[6] = {};
  static int64_t shape[2] = {2, 3};
  static int64_t transposed[2] = {1, 2};
  auto make = [](dlpack::Device dev, dlpack::DataType type, int64_t* strides) {
    auto* m = new dlpack::ManagedTensor{};
    m->dl_tensor = {data, dev, 2, type, shape, strides, 0};
    m->deleter = [](dlpack::ManagedTensor* self) { ++deleted; delete self; };
    return m;
  };
  EXPECT_FALSE(dlpack::FromDLPack(make({dlpack::kCUDA, 0}, {dlpack::kFloat, 32, 1}, nullptr)).ok());
  EXPECT_FALSE(dlpack::FromDLPack(make({dlpack::kCPU, 0}, {dlpack::kFloat, 32, 1}, transposed)).ok());
  EXPECT_FALSE(dlpack::FromDLPack(make({dlpack::kCPU, 0}, {5, 64, 1}, nullptr)).ok());
  EXPECT_EQ(deleted, 3);
}

}  // namespace
}  // namespace mooncake_connector

namespace mooncake_connector {
namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAsan = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAsan = true;
#else
constexpr bool kAsan = false;
#endif
#else
constexpr bool kAsan = false;
#endif

TEST(Buffer, LargeBuffersFreedAreReusedForTheSameSizeClass) {
  if (kAsan) GTEST_SKIP() << "large buffers are not kept under AddressSanitizer";
  // A loader that drops each batch of tensors gets the same (touched) memory
  // back for tensors of the same shape.
  std::byte* first;
  {
    Buffer a = *Buffer::Allocate((size_t{3} << 20) + 100);
    first = a.data();
    std::memset(a.data(), 7, a.size());
  }
  Buffer again = *Buffer::Allocate((size_t{3} << 20) + 200);  // same class
  EXPECT_EQ(again.data(), first);
  Buffer other = *Buffer::Allocate(size_t{5} << 20);  // another class: fresh memory
  EXPECT_NE(other.data(), first);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(other.data()) % kBufferAlignment, 0u);
  // A buffer shared by slices goes back only when the last one goes.
  std::byte* held = other.data();
  Buffer slice = other.Slice(10, 100);
  other = Buffer();
  Buffer meanwhile = *Buffer::Allocate(size_t{5} << 20);
  EXPECT_NE(meanwhile.data(), held);
}

// The VmFlags line of /proc/self/smaps for the mapping that holds `p`.
std::string VmFlagsOf(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  const auto at = reinterpret_cast<uintptr_t>(p);
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    unsigned long long from = 0, to = 0;
    if (std::sscanf(line.c_str(), "%llx-%llx ", &from, &to) == 2) {  // a mapping's first line
      inside = from <= at && at < to;
    } else if (inside && line.starts_with("VmFlags:")) {
      return line;
    }
  }
  return "";
}

// Whether the mapping that holds `p` is advised to use huge pages.
bool Advised(const void* p) { return (VmFlagsOf(p) + " ").find(" hg ") != std::string::npos; }

TEST(Buffer, LargeBuffersAskForHugePagesOn2MiBBoundaries) {
  if (kAsan) GTEST_SKIP() << "large buffers are malloc'd under AddressSanitizer";
  // Fresh memory is filled one fault per page: a block of 2 MiB or more
  // starts on a huge-page boundary and is advised to use huge pages (the
  // kernel takes the advice where transparent huge pages are on).
  Buffer big = *Buffer::Allocate((size_t{7} << 20) + 12345);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(big.data()) % (size_t{2} << 20), 0u);
  std::memset(big.data(), 1, big.size());
  std::string flags = VmFlagsOf(big.data());
  ASSERT_FALSE(flags.empty()) << "no mapping in /proc/self/smaps holds the buffer";
  EXPECT_NE((flags + " ").find(" hg "), std::string::npos) << flags;
  Buffer small = *Buffer::Allocate(size_t{1} << 20);  // below a huge page: as before
  EXPECT_FALSE(Advised(small.data()));
}

TEST(Pages, AdviceCoversTheWholeHugePagesInsideARangeAndNothingElse) {
  // Someone else's memory (a caller's destination): 8 MiB on a 2 MiB
  // boundary, then a range starting 12345 bytes into it.
  constexpr size_t kMiB = size_t{1} << 20;
  auto* raw = static_cast<std::byte*>(
      mmap(nullptr, 10 * kMiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(raw, MAP_FAILED);
  std::byte* base = raw + (kHugePage - reinterpret_cast<uintptr_t>(raw) % kHugePage) % kHugePage;
  std::memset(base, 7, kMiB);  // touched before: its bytes stay
  ASSERT_FALSE(Advised(base));
  AdviseHugePages(base + 12345, 3 * kMiB);  // holds no whole huge page
  EXPECT_FALSE(Advised(base + 2 * kMiB));
  AdviseHugePages(base + 12345, 6 * kMiB);  // holds [2, 6) MiB
  EXPECT_FALSE(Advised(base));
  EXPECT_TRUE(Advised(base + 2 * kMiB));
  EXPECT_TRUE(Advised(base + 6 * kMiB - 1));
  EXPECT_FALSE(Advised(base + 6 * kMiB));
  EXPECT_EQ(base[0], std::byte{7});
  EXPECT_EQ(base[kMiB - 1], std::byte{7});
  munmap(raw, 10 * kMiB);
}

TEST(Pages, PrefaultMapsTheWholePagesOfItsRangesAndChangesNoByte) {
  if (!PrefaultWanted()) GTEST_SKIP() << "MOONCAKE_CONNECTOR_PREFAULT=0";
  constexpr size_t kMiB = size_t{1} << 20;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  constexpr size_t kSize = 20 * kMiB;
  auto* base = static_cast<std::byte*>(
      mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(base, MAP_FAILED);
  // Ordinary pages, so that a fault maps one page, whatever THP is set to.
  ASSERT_EQ(madvise(base, kSize, MADV_NOHUGEPAGE), 0);
  std::vector<unsigned char> resident(kSize / page);
  auto count = [&] {
    EXPECT_EQ(mincore(base, kSize, resident.data()), 0);
    return static_cast<size_t>(std::count_if(resident.begin(), resident.end(), [](unsigned char c) { return c & 1; }));
  };
  base[page + 5] = std::byte{7};  // touched before: its byte stays
  ASSERT_EQ(count(), 1u);
  // Two ranges, out of address order; the first and last pages of the
  // mapping are only partly inside them: left alone.
  std::span<std::byte> ranges[] = {{base + 12 * kMiB, kSize - 12 * kMiB - 100}, {base + 100, 12 * kMiB - 100}};
  {
    PrefaultAhead prefault(ranges, 2);
    EXPECT_GT(prefault.pieces(), 2u);
    for (int i = 0; i < 1000 && prefault.done() < prefault.pieces() && !prefault.refused(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (prefault.refused()) {
      munmap(base, kSize);
      GTEST_SKIP() << "this kernel does not populate on advice (MADV_POPULATE_WRITE is Linux 5.14+)";
    }
    ASSERT_EQ(prefault.done(), prefault.pieces());
  }
  count();
  EXPECT_FALSE(resident.front() & 1);
  EXPECT_FALSE(resident.back() & 1);
  for (size_t p = 1; p + 1 < resident.size(); ++p) ASSERT_TRUE(resident[p] & 1) << "page " << p;
  EXPECT_EQ(base[page + 5], std::byte{7});
  EXPECT_TRUE(std::all_of(base + page + 6, base + kSize - page, [](std::byte b) { return b == std::byte{0}; }));
  munmap(base, kSize);
}

}  // namespace
}  // namespace mooncake_connector
