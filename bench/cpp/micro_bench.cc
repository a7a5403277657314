// Micro-benchmarks of the pieces every load and save goes through: the value
// format (encode, decode, parse), the chunk header, the checksum, and the copy
// out of staging memory into destinations that are reused, fresh, or fresh and
// pre-faulted. `make bench-micro` runs them; they are for comparing changes in
// one run, not absolute figures.
#include <benchmark/benchmark.h>
#include <sys/mman.h>

#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "core/hash_internal.h"
#include "mooncake_connector/connector.h"
#include "mooncake_connector/store.h"
#include "mooncake_connector/value_format.h"
#include "store/mooncake/chunked_value_internal.h"

namespace mc = mooncake_connector;

namespace {

std::vector<std::byte> RandomBytes(size_t n) {
  std::vector<std::byte> out(n);
  std::mt19937_64 rng(42);
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t v = rng();
    std::memcpy(out.data() + i, &v, 8);
  }
  return out;
}

mc::TensorView View(const std::vector<std::byte>& bytes) {
  // A bf16 matrix of the given bytes, 1024 columns wide.
  int64_t cols = 1024, rows = static_cast<int64_t>(bytes.size() / 2 / 1024);
  return mc::TensorView{mc::DType::kBF16, {rows, cols}, bytes.data(), bytes.size()};
}

mc::Buffer Joined(const mc::EncodedTensor& e) {
  mc::Buffer b = mc::Buffer::Allocate(e.size()).value();
  std::memcpy(b.data(), e.header.data(), e.header.size());
  std::memcpy(b.data() + e.header.size(), e.data.data(), e.data.size());
  return b;
}

void BM_EncodeTensorHeader(benchmark::State& state) {
  std::vector<std::byte> bytes = RandomBytes(1 << 20);
  std::map<std::string, std::string> metadata{{"mooncake_connector.manifest", "org/model/__manifest__/0"}};
  for (auto _ : state) {
    mc::Result<mc::EncodedTensor> e = mc::EncodeTensor(View(bytes), metadata);
    benchmark::DoNotOptimize(e);
  }
}
BENCHMARK(BM_EncodeTensorHeader);

void BM_DecodeTensor(benchmark::State& state) {
  std::vector<std::byte> bytes = RandomBytes(static_cast<size_t>(state.range(0)));
  mc::Buffer value = Joined(mc::EncodeTensor(View(bytes)).value());
  for (auto _ : state) {
    mc::Result<mc::Tensor> t = mc::DecodeTensor(value);  // shares the value's memory
    benchmark::DoNotOptimize(t);
  }
}
BENCHMARK(BM_DecodeTensor)->Arg(1 << 16)->Arg(16 << 20);

void BM_ParseTensorValue(benchmark::State& state) {
  std::vector<std::byte> bytes = RandomBytes(1 << 16);
  mc::Buffer value = Joined(mc::EncodeTensor(View(bytes), {{"k", "v"}}).value());
  for (auto _ : state) {
    std::map<std::string, std::string> metadata;
    mc::Result<mc::TensorLayout> layout = mc::ParseTensorValue(value.bytes(), &metadata);
    benchmark::DoNotOptimize(layout);
  }
}
BENCHMARK(BM_ParseTensorValue);

void BM_ChunkHeaderRoundTrip(benchmark::State& state) {
  mc::mooncake::ChunkHeader h;
  h.total_size = 1ull << 30;
  h.chunk_size = 16 << 20;
  h.num_chunks = 64;
  h.generation = 0x1234567890abcdefull;
  h.checksum = 42;
  for (auto _ : state) {
    auto encoded = h.Encode();
    auto parsed = mc::mooncake::ParseChunkHeader(mc::ConstBytes(encoded.data(), encoded.size()));
    benchmark::DoNotOptimize(parsed);
  }
}
BENCHMARK(BM_ChunkHeaderRoundTrip);

void BM_Xxh3(benchmark::State& state) {
  std::vector<std::byte> bytes = RandomBytes(static_cast<size_t>(state.range(0)));
  for (auto _ : state) benchmark::DoNotOptimize(mc::Xxh3(mc::ConstBytes(bytes.data(), bytes.size())));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_Xxh3)->Arg(1 << 16)->Arg(1 << 20)->Arg(16 << 20);

// The copy out of a staging slot: into memory touched before, into fresh pages
// (each first touch a page fault), into fresh pages mapped with MAP_POPULATE
// (the faults taken up front, in the kernel, in one go), and into fresh
// memory advised to use transparent huge pages (one fault per 2 MiB).
enum class Destination { kReused, kFresh, kPopulated, kHugePages };

void CopyOut(benchmark::State& state, Destination where) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<std::byte> staging = RandomBytes(n);
  std::vector<std::byte> reused(n, std::byte{1});
  for (auto _ : state) {
    std::byte* dst = reused.data();
    void* mapped = nullptr;
    if (where != Destination::kReused) {
      int flags = MAP_PRIVATE | MAP_ANONYMOUS | (where == Destination::kPopulated ? MAP_POPULATE : 0);
      mapped = mmap(nullptr, n, PROT_READ | PROT_WRITE, flags, -1, 0);
      if (mapped == MAP_FAILED) {
        state.SkipWithError("mmap failed");
        break;
      }
      // Transparent huge pages where the kernel offers them (madvise mode).
      if (where == Destination::kHugePages) madvise(mapped, n, MADV_HUGEPAGE);
      dst = static_cast<std::byte*>(mapped);
    }
    mc::GetIntoRequest r{"k", mc::MutableBytes(dst, n)};
    r.CopyAt(0, mc::ConstBytes(staging.data(), n));
    benchmark::DoNotOptimize(dst);
    benchmark::ClobberMemory();
    if (mapped != nullptr) munmap(mapped, n);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(n));
}
void BM_CopyIntoReused(benchmark::State& s) { CopyOut(s, Destination::kReused); }
void BM_CopyIntoFresh(benchmark::State& s) { CopyOut(s, Destination::kFresh); }
void BM_CopyIntoPopulated(benchmark::State& s) { CopyOut(s, Destination::kPopulated); }
void BM_CopyIntoHugePages(benchmark::State& s) { CopyOut(s, Destination::kHugePages); }
BENCHMARK(BM_CopyIntoReused)->Arg(16 << 20);
BENCHMARK(BM_CopyIntoFresh)->Arg(16 << 20);
BENCHMARK(BM_CopyIntoPopulated)->Arg(16 << 20);
BENCHMARK(BM_CopyIntoHugePages)->Arg(16 << 20);

// memory:// put and get of a value, through the Store interface.
void BM_MemoryStorePutGet(benchmark::State& state) {
  auto c = mc::Connector::Create("memory://micro-bench").value();
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<std::byte> value = RandomBytes(n);
  std::vector<std::byte> out(n);
  for (auto _ : state) {
    mc::Status put = c->store().Put("k", mc::ConstBytes(value.data(), n));
    mc::Result<uint64_t> got = c->store().GetInto("k", mc::MutableBytes(out.data(), n));
    benchmark::DoNotOptimize(put);
    benchmark::DoNotOptimize(got);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(n) * 2);
}
BENCHMARK(BM_MemoryStorePutGet)->Arg(100)->Arg(1 << 20)->Arg(16 << 20);

}  // namespace

BENCHMARK_MAIN();
