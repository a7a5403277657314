#include "mooncake_connector/model.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include <unistd.h>

#include "mooncake_connector/connector.h"
#include "mooncake_connector/value_format.h"

namespace mooncake_connector {
namespace {

namespace fs = std::filesystem;

// A store of its own per test: "memory://model-test-<test>-<n><path>".
std::string UniqueUrl(std::string_view path = "/org/model") {
  static std::atomic<int> counter{0};
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return "memory://model-test-" + std::string(info->name()) + "-" + std::to_string(counter++) +
         std::string(path);
}

std::unique_ptr<Connector> Open(const std::string& url) {
  Result<std::unique_ptr<Connector>> c = Connector::Create(url);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

// The connector of another model in the same store.
std::string SameStore(const std::string& url, std::string_view path) {
  size_t host_end = url.find('/', std::string_view("memory://").size());
  return url.substr(0, host_end) + std::string(path);
}

Tensor Filled(DType dtype, Shape shape, int seed) {
  Tensor t = *Tensor::Allocate(dtype, std::move(shape));
  for (uint64_t i = 0; i < t.nbytes(); ++i) t.data()[i] = static_cast<std::byte>((i * 31 + seed * 7 + 1) & 0xff);
  return t;
}

bool SameTensor(const Tensor& a, const TensorView& b) {
  return a.dtype() == b.dtype && a.shape() == b.shape && a.nbytes() == b.nbytes &&
         (a.nbytes() == 0 || std::memcmp(a.data(), b.data, a.nbytes()) == 0);
}

bool Contains(std::string_view text, std::string_view fragment) {
  return text.find(fragment) != std::string_view::npos;
}

#define EXPECT_STATUS(expr, code_, fragment)                                             \
  do {                                                                                   \
    ::mooncake_connector::Status st_ = (expr);                                           \
    EXPECT_EQ(st_.code(), ::mooncake_connector::StatusCode::code_) << st_;               \
    EXPECT_TRUE(Contains(st_.message(), fragment)) << st_ << " lacks '" << (fragment) << "'"; \
  } while (0)

// Drains a reader; fails the test on an error.
std::vector<NamedTensor> ReadAll(ModelReader& reader, size_t* batches = nullptr) {
  std::vector<NamedTensor> out;
  size_t n = 0;
  while (true) {
    Result<std::vector<NamedTensor>> batch = reader.NextBatch();
    EXPECT_TRUE(batch.ok()) << batch.status();
    if (!batch.ok() || batch->empty()) break;
    ++n;
    for (NamedTensor& t : *batch) out.push_back(std::move(t));
  }
  if (batches != nullptr) *batches = n;
  return out;
}

// The first error NextBatch gives while draining (OK if none).
Status DrainError(ModelReader& reader) {
  while (true) {
    Result<std::vector<NamedTensor>> batch = reader.NextBatch();
    if (!batch.ok()) return batch.status();
    if (batch->empty()) return Status::Ok();
  }
}

// ---------------------------------------------------------------- manifest

ManifestPart SampleRankPart() {
  ManifestPart p;
  p.tool = "mooncake-connector 9.9.9";
  p.created = "2024-05-01T12:00:00Z";
  p.state = SaveState::kComplete;
  p.rank = 1;
  p.world_size = 2;
  p.tensors = {
      {"model.embed_tokens.weight", DType::kBF16, {4, 3}, 24, 0x0123456789abcdefULL, ""},
      {"lm_head.weight", DType::kBF16, {4, 3}, 24, 0x0123456789abcdefULL, "model.embed_tokens.weight"},
      {"scale", DType::kF32, {}, 4, 0xffffffffffffffffULL, ""},
      {"empty", DType::kF16, {0, 3}, 0, 0x2d06800538d394c2ULL, ""},
      {"big", DType::kBF16, {1024, 4096}, 8388608, 0, ""},
  };
  return p;
}

ManifestPart SampleFilesPart() {
  ManifestPart p;
  p.tool = "mooncake-connector 9.9.9";
  p.created = "2024-05-01T12:00:00Z";
  p.state = SaveState::kSaving;
  p.world_size = 1;
  p.files = {{"config.json", 120, 0xaabbccddeeff0011ULL}, {"sub/tokenizer.model", 0, 7}};
  return p;
}

void ExpectSamePart(const ManifestPart& a, const ManifestPart& b) {
  EXPECT_EQ(a.format_version, b.format_version);
  EXPECT_EQ(a.tool, b.tool);
  EXPECT_EQ(a.created, b.created);
  EXPECT_EQ(a.state, b.state);
  EXPECT_EQ(a.rank, b.rank);
  EXPECT_EQ(a.world_size, b.world_size);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    EXPECT_EQ(a.tensors[i].name, b.tensors[i].name);
    EXPECT_EQ(a.tensors[i].dtype, b.tensors[i].dtype);
    EXPECT_EQ(a.tensors[i].shape, b.tensors[i].shape);
    EXPECT_EQ(a.tensors[i].nbytes, b.tensors[i].nbytes);
    EXPECT_EQ(a.tensors[i].checksum, b.tensors[i].checksum);
    EXPECT_EQ(a.tensors[i].alias_of, b.tensors[i].alias_of);
  }
  ASSERT_EQ(a.files.size(), b.files.size());
  for (size_t i = 0; i < a.files.size(); ++i) {
    EXPECT_EQ(a.files[i].path, b.files[i].path);
    EXPECT_EQ(a.files[i].size, b.files[i].size);
    EXPECT_EQ(a.files[i].checksum, b.files[i].checksum);
  }
}

TEST(ModelManifest, RankPartRoundTrips) {
  ManifestPart part = SampleRankPart();
  std::string text = EncodeManifest(part);
  EXPECT_TRUE(Contains(text, "\"xxh3\": \"0123456789abcdef\"")) << text;
  EXPECT_TRUE(Contains(text, "\"dtype\": \"BF16\"")) << text;
  Result<ManifestPart> back = ParseManifest(text);
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSamePart(*back, part);
  EXPECT_EQ(EncodeManifest(*back), text);
  // Aliases count once.
  EXPECT_EQ(part.StoredBytes(), 24u + 4u + 0u + 8388608u);
}

TEST(ModelManifest, FilesPartRoundTrips) {
  ManifestPart part = SampleFilesPart();
  std::string text = EncodeManifest(part);
  Result<ManifestPart> back = ParseManifest(text);
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSamePart(*back, part);
  EXPECT_FALSE(back->rank.has_value());
  EXPECT_EQ(back->state, SaveState::kSaving);
  EXPECT_EQ(EncodeManifest(*back), text);
  EXPECT_EQ(part.StoredBytes(), 120u);
}

// A manifest with the given members after the common ones.
std::string Manifest(const std::string& members, const std::string& state = "complete",
                     const std::string& format = "mooncake-connector-model-manifest", int version = 1) {
  return "{\"format\": \"" + format + "\", \"format_version\": " + std::to_string(version) +
         ", \"tool\": \"t\", \"created\": \"c\", \"state\": \"" + state + "\", " + members + "}";
}

std::string RankWith(const std::string& tensors, int rank = 0, int world = 1) {
  return Manifest("\"world_size\": " + std::to_string(world) + ", \"rank\": " + std::to_string(rank) +
                  ", \"tensors\": [" + tensors + "]");
}

std::string FilesWith(const std::string& files) {
  return Manifest("\"world_size\": 1, \"files\": [" + files + "]");
}

std::string TensorJson(const std::string& name, const std::string& dtype = "F32",
                       const std::string& shape = "[2, 3]", const std::string& nbytes = "24",
                       const std::string& xxh3 = "00000000000000ff", const std::string& extra = "") {
  return "{\"name\": \"" + name + "\", \"dtype\": \"" + dtype + "\", \"shape\": " + shape +
         ", \"nbytes\": " + nbytes + ", \"xxh3\": \"" + xxh3 + "\"" + extra + "}";
}

std::string FileJson(const std::string& path, const std::string& xxh3 = "0000000000000001") {
  return "{\"path\": \"" + path + "\", \"size\": 3, \"xxh3\": \"" + xxh3 + "\"}";
}

TEST(ModelManifest, HandWrittenManifestsParse) {
  // The helpers build valid manifests: the rejections below differ in one thing.
  Result<ManifestPart> rank = ParseManifest(
      RankWith(TensorJson("a") + ", " + TensorJson("b", "F32", "[2, 3]", "24", "00000000000000ff",
                                                    ", \"alias_of\": \"a\"")));
  ASSERT_TRUE(rank.ok()) << rank.status();
  EXPECT_EQ(rank->tensors.size(), 2u);
  EXPECT_EQ(rank->tensors[1].alias_of, "a");
  Result<ManifestPart> files = ParseManifest(FilesWith(FileJson("config.json") + ", " + FileJson("a/b.txt")));
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(files->files.size(), 2u);
}

TEST(ModelManifest, RejectsMalformed) {
  struct Case {
    std::string text;
    std::string fragment;
  };
  const std::string alias = ", \"alias_of\": \"a\"";
  const std::vector<Case> cases = {
      {"", "not a JSON object"},
      {"{\"format\": ", "not a JSON object"},
      {"not json at all", "not a JSON object"},
      {"[1, 2]", "not a JSON object"},
      {Manifest("\"world_size\": 1, \"files\": []", "complete", "safetensors"), "unknown format 'safetensors'"},
      {RankWith(TensorJson("a", "F32", "[2, 3]", "25")), "nbytes does not match dtype x shape"},
      {RankWith(TensorJson("a", "BF16", "[2, 3]", "24")), "nbytes does not match dtype x shape"},
      {RankWith(TensorJson("a", "F32", "[]", "8")), "nbytes does not match dtype x shape"},
      {RankWith(TensorJson("a", "F32", "[2, 3]", "24", "0123456789ABCDEF")), "not 16 lowercase hex digits"},
      {RankWith(TensorJson("a", "F32", "[2, 3]", "24", "0123456789abcdeg")), "not 16 lowercase hex digits"},
      {RankWith(TensorJson("a", "F32", "[2, 3]", "24", "ff")), "not 16 hex digits"},
      {RankWith(TensorJson("a", "F32", "[2, 3]", "24", "0123456789abcdef0")), "not 16 hex digits"},
      {RankWith(TensorJson("a") + ", " + TensorJson("a")), "tensor 'a' is listed twice"},
      {RankWith(TensorJson("b", "F32", "[2, 3]", "24", "00000000000000ff", alias)), "which is not stored"},
      {RankWith(TensorJson("a") + ", " +
                TensorJson("b", "F32", "[2, 3]", "24", "00000000000000ff", alias) + ", " +
                TensorJson("c", "F32", "[2, 3]", "24", "00000000000000ff", ", \"alias_of\": \"b\"")),
       "tensor 'c' is an alias of 'b', which is not stored"},
      {RankWith(TensorJson("a") + ", " + TensorJson("b", "I32", "[2, 3]", "24", "00000000000000ff", alias)),
       "differs from 'a'"},
      {RankWith(TensorJson("a") + ", " + TensorJson("b", "F32", "[3, 2]", "24", "00000000000000ff", alias)),
       "differs from 'a'"},
      {RankWith(TensorJson("a"), 1, 1), "rank 1 is not below world_size"},
      {RankWith(TensorJson("a"), 2, 2), "rank 2 is not below world_size"},
      {RankWith(TensorJson("a"), 0, 0), "world_size 0 is out of range"},
      {FilesWith(FileJson("../etc/passwd")), "'..' component"},
      {FilesWith(FileJson("sub/../../x")), "'..' component"},
      {FilesWith(FileJson("/etc/passwd")), "absolute path"},
      {FilesWith(FileJson("config.json") + ", " + FileJson("config.json", "0000000000000002")),
       "file 'config.json' is listed twice"},
      {Manifest("\"world_size\": 1, \"files\": [], \"x\": [[[[[1]]]]]"), "nests too deeply"},
      {RankWith(TensorJson("a", "F32", "[[[2]], 3]")), "nests too deeply"},
      {Manifest("\"world_size\": 1, \"files\": []", "done"), "unknown state 'done'"},
      {Manifest("\"world_size\": 1, \"files\": []", "Complete"), "unknown state 'Complete'"},
      {Manifest("\"world_size\": 1"), "lacks \"files\""},
      {RankWith(TensorJson("a", "F99")), "tensor 'a'"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    EXPECT_STATUS(ParseManifest(c.text).status(), kDataLoss, c.fragment);
    EXPECT_STATUS(ParseManifest(c.text).status(), kDataLoss, "invalid model manifest");
  }
}

TEST(ModelManifest, NewerFormatVersionIsUnimplemented) {
  std::string text = Manifest("\"world_size\": 1, \"files\": []", "complete",
                              "mooncake-connector-model-manifest", 3);
  Status s = ParseManifest(text).status();
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented) << s;
  EXPECT_TRUE(Contains(s.message(), "version 3")) << s;
  // Version 1 (values without the marker) is still read.
  Result<ManifestPart> v1 = ParseManifest(Manifest("\"world_size\": 1, \"files\": []", "complete",
                                                   "mooncake-connector-model-manifest", 1));
  ASSERT_TRUE(v1.ok()) << v1.status();
  EXPECT_EQ(v1->format_version, 1);
}

// ---------------------------------------------------------------- save and load

struct Sample {
  std::vector<Tensor> storage;
  std::vector<NamedTensorView> views;
};

// a (F32), a_tied (alias of a), b (BF16), c (0-d I64), d (U8), e (empty F16).
Sample MakeSample(int seed = 0) {
  Sample s;
  s.storage = {Filled(DType::kF32, {4, 8}, seed + 1), Filled(DType::kBF16, {3, 5}, seed + 2),
               Filled(DType::kI64, {}, seed + 3), Filled(DType::kU8, {100}, seed + 4),
               Filled(DType::kF16, {0, 3}, seed + 5)};
  s.views = {{"a", s.storage[0].view()},
             {"a_tied", s.storage[0].view()},
             {"b", s.storage[1].view()},
             {"c", s.storage[2].view()},
             {"d", s.storage[3].view()},
             {"e", s.storage[4].view()}};
  return s;
}

const TensorView* Find(const Sample& s, const std::string& name) {
  for (const NamedTensorView& v : s.views) {
    if (v.name == name) return &v.tensor;
  }
  return nullptr;
}

TEST(Model, OpenNeedsAModelName) {
  auto c = Open("memory://model-test-noname");
  EXPECT_EQ(Model::Open(*c).status().code(), StatusCode::kInvalidArgument);
  auto d = Open(UniqueUrl());
  Model m = *Model::Open(*d);
  EXPECT_EQ(m.name(), "org/model");
  EXPECT_EQ(m.TensorKey(3, "w"), "org/model/keys/rank_3/w");
  EXPECT_EQ(m.FileKey("sub/a"), "org/model/files/sub/a");
  EXPECT_EQ(m.ManifestKey(0), "org/model/manifest/rank_0.json");
  EXPECT_EQ(m.ManifestKey(std::nullopt), "org/model/manifest/files.json");
}

TEST(Model, AModelThatVanishesAfterItWasSeenIsLostNotMissing) {
  // What a master restart does to a model this process saved: the manifest
  // and the values are gone from the store.
  const std::string url = UniqueUrl();
  auto c = Open(url);
  Model m = *Model::Open(*c);
  Sample s = MakeSample();
  ASSERT_TRUE(m.SaveStateDict(0, s.views).ok());
  Store& store = c->store();

  // Only the manifest lost: loaded by the remembered one, checksums checked.
  ASSERT_TRUE(store.Remove(m.ManifestKey(0)).ok());
  std::unique_ptr<ModelReader> reader = *m.OpenReader(0);
  EXPECT_TRUE(reader->has_manifest());
  EXPECT_EQ(ReadAll(*reader).size(), s.views.size());

  // Tensors lost too: DataLoss naming them (aliases are not stored values).
  ASSERT_TRUE(store.Remove(m.TensorKey(0, "b")).ok());
  ASSERT_TRUE(store.Remove(m.TensorKey(0, "d")).ok());
  Status lost = m.OpenReader(0).status();
  EXPECT_STATUS(lost, kDataLoss, "has lost its manifest and 2 of its 5 tensors");
  EXPECT_STATUS(lost, kDataLoss, "'b', 'd'");
  EXPECT_STATUS(lost, kDataLoss, "the master restarted");

  // Another connector never saw it: to that one the model was never saved
  // (b and d are gone, the rest loads by listing).
  auto other = Open(url);
  Model fresh = *Model::Open(*other);
  std::unique_ptr<ModelReader> listed = *fresh.OpenReader(0);
  EXPECT_FALSE(listed->has_manifest());

  // Removing the model forgets it; saving again loads as ever.
  ASSERT_TRUE(m.Remove().ok());
  EXPECT_EQ(m.OpenReader(0).status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(m.SaveStateDict(0, s.views).ok());
  ASSERT_TRUE(store.Remove(m.ManifestKey(0)).ok());
  EXPECT_EQ(ReadAll(**m.OpenReader(0)).size(), s.views.size());
  // A manifest seen by reading (not by saving) is remembered as well.
  ASSERT_TRUE(m.SaveStateDict(0, s.views).ok());
  ASSERT_TRUE(fresh.ReadManifest(0).ok());
  ASSERT_TRUE(store.Remove(m.ManifestKey(0)).ok());
  ASSERT_TRUE(store.Remove(m.TensorKey(0, "a")).ok());
  EXPECT_STATUS(fresh.OpenReader(0).status(), kDataLoss, "1 of its 5 tensors");
}

TEST(Model, SaveAndReadBackInBatches) {
  auto c = Open(UniqueUrl());
  Model m = *Model::Open(*c);
  Sample s = MakeSample();
  ASSERT_TRUE(m.SaveStateDict(0, s.views).ok());

  // Aliases are not stored.
  std::vector<std::string> keys = *c->store().List(m.TensorKey(0, ""));
  EXPECT_EQ(keys, (std::vector<std::string>{m.TensorKey(0, "a"), m.TensorKey(0, "b"), m.TensorKey(0, "c"),
                                            m.TensorKey(0, "d"), m.TensorKey(0, "e")}));
  std::optional<ManifestPart> part = *m.ReadManifest(0);
  ASSERT_TRUE(part.has_value());
  EXPECT_EQ(part->state, SaveState::kComplete);
  ASSERT_EQ(part->tensors.size(), 6u);
  EXPECT_EQ(part->tensors[1].alias_of, "a");

  LoadOptions options;
  options.batch_bytes = 100;  // [a, a_tied], [b, c], [d, e]
  std::vector<std::pair<uint64_t, uint64_t>> progress;
  options.progress = [&](uint64_t done, uint64_t total) { progress.emplace_back(done, total); };
  std::unique_ptr<ModelReader> reader = *m.OpenReader(0, options);
  EXPECT_TRUE(reader->has_manifest());
  EXPECT_EQ(reader->total_bytes(), 128u + 30u + 8u + 100u);
  size_t batches = 0;
  std::vector<NamedTensor> got = ReadAll(*reader, &batches);
  EXPECT_EQ(batches, 3u);
  ASSERT_EQ(got.size(), s.views.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].name, s.views[i].name);
    EXPECT_TRUE(SameTensor(got[i].tensor, s.views[i].tensor)) << got[i].name;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(got[i].tensor.data()) % kBufferAlignment, 0u) << got[i].name;
  }
  EXPECT_EQ(got[0].tensor.data(), got[1].tensor.data());  // a_tied shares a's storage
  EXPECT_EQ(got[5].tensor.shape(), (Shape{0, 3}));
  EXPECT_EQ(got[3].tensor.shape(), Shape{});
  ASSERT_FALSE(progress.empty());
  EXPECT_EQ(progress.back().first, reader->total_bytes());
  // Drained: stays empty.
  EXPECT_TRUE(reader->NextBatch()->empty());
}

// NextBatch allocates the next batch's storage on another thread while it
// fetches: every tensor must still get storage of its own (aliases share
// their target's, across batches too), and a reader dropped mid-way must
// wait for that thread.
TEST(Model, ConcurrentPreparationOfTheNextBatchKeepsTensorsApart) {
  auto c = Open(UniqueUrl());
  Model m = *Model::Open(*c);
  std::vector<Tensor> owned;
  std::vector<NamedTensorView> views;
  for (int i = 0; i < 24; ++i) {
    owned.push_back(Filled(i % 3 == 0 ? DType::kF32 : DType::kBF16, {static_cast<int64_t>(16 + 8 * (i % 5)), 4}, i));
  }
  for (int i = 0; i < 24; ++i) views.push_back({"t" + std::to_string(i), owned[i].view()});
  for (int i : {2, 11, 19}) views.push_back({"tied_to_" + std::to_string(i), owned[i].view()});
  ASSERT_TRUE(m.SaveStateDict(0, views).ok());
  for (uint64_t batch_bytes : {uint64_t{1}, uint64_t{300}, uint64_t{1000}, uint64_t{1} << 20}) {
    LoadOptions options;
    options.batch_bytes = batch_bytes;
    options.prepare_next_batch = true;  // whatever this machine's cores
    std::unique_ptr<ModelReader> reader = *m.OpenReader(0, options);
    std::vector<NamedTensor> got = ReadAll(*reader);
    ASSERT_EQ(got.size(), views.size());
    std::map<const std::byte*, std::string> storage;
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].name, views[i].name);
      EXPECT_TRUE(SameTensor(got[i].tensor, views[i].tensor)) << got[i].name << " at batch_bytes " << batch_bytes;
      if (i < 24) EXPECT_TRUE(storage.emplace(got[i].tensor.data(), got[i].name).second) << got[i].name;
    }
    for (size_t i = 24; i < got.size(); ++i) {
      EXPECT_TRUE(storage.count(got[i].tensor.data()) == 1) << got[i].name << " shares no stored tensor";
    }
  }
  for (int taken = 0; taken < 3; ++taken) {  // dropped while the next batch is being prepared
    LoadOptions options;
    options.batch_bytes = 200;
    options.prepare_next_batch = true;
    std::unique_ptr<ModelReader> reader = *m.OpenReader(0, options);
    for (int i = 0; i < taken; ++i) ASSERT_TRUE(reader->NextBatch().ok());
  }
}

TEST(Model, LoadIntoCallerBuffers) {
  auto c = Open(UniqueUrl());
  Model m = *Model::Open(*c);
  Sample s = MakeSample(3);
  ASSERT_TRUE(m.SaveStateDict(0, s.views).ok());
  std::unique_ptr<ModelReader> reader = *m.OpenReader(0);

  std::vector<std::byte> tied(128, std::byte{0}), b(30, std::byte{0}), c0(8, std::byte{0}), e;
  std::vector<TensorDestination> dests = {
      {"a_tied", DType::kF32, {4, 8}, tied},
      {"b", DType::kBF16, {3, 5}, b},
      {"c", DType::kI64, {}, c0},
      {"e", DType::kF16, {0, 3}, MutableBytes(e)},
  };
  Result<std::vector<std::string>> missed = reader->LoadInto(dests);
  ASSERT_TRUE(missed.ok()) << missed.status();
  EXPECT_EQ(*missed, (std::vector<std::string>{"a", "d"}));
  EXPECT_EQ(std::memcmp(tied.data(), Find(s, "a")->data, 128), 0);
  EXPECT_EQ(std::memcmp(b.data(), Find(s, "b")->data, 30), 0);
  EXPECT_EQ(std::memcmp(c0.data(), Find(s, "c")->data, 8), 0);

  // Both names of one storage, in one call.
  std::vector<std::byte> a1(128), a2(128);
  std::vector<TensorDestination> both = {{"a", DType::kF32, {4, 8}, a1}, {"a_tied", DType::kF32, {4, 8}, a2}};
  missed = (*m.OpenReader(0))->LoadInto(both);
  ASSERT_TRUE(missed.ok()) << missed.status();
  EXPECT_EQ(*missed, (std::vector<std::string>{"b", "c", "d", "e"}));
  EXPECT_EQ(std::memcmp(a1.data(), Find(s, "a")->data, 128), 0);
  EXPECT_EQ(std::memcmp(a2.data(), Find(s, "a")->data, 128), 0);
}

TEST(Model, LoadIntoRejectsBadDestinations) {
  auto c = Open(UniqueUrl());
  Model m = *Model::Open(*c);
  Sample s = MakeSample();
  ASSERT_TRUE(m.SaveStateDict(0, s.views).ok());
  std::unique_ptr<ModelReader> reader = *m.OpenReader(0);
  std::vector<std::byte> buf(128);

  std::vector<TensorDestination> unknown = {{"nope", DType::kF32, {4, 8}, buf}};
  EXPECT_STATUS(reader->LoadInto(unknown).status(), kNotFound, "no tensor 'nope'");
  std::vector<TensorDestination> shape = {{"a", DType::kF32, {8, 4}, buf}};
  EXPECT_STATUS(reader->LoadInto(shape).status(), kInvalidArgument, "[4, 8]");
  std::vector<TensorDestination> dtype = {{"a", DType::kI32, {4, 8}, buf}};
  EXPECT_STATUS(reader->LoadInto(dtype).status(), kInvalidArgument, "stored as F32");
  std::vector<TensorDestination> size = {{"a", DType::kF32, {4, 8}, MutableBytes(buf).first(100)}};
  EXPECT_STATUS(reader->LoadInto(size).status(), kInvalidArgument, "holds 100 bytes");
}

TEST(Model, SaveRejectsBadInput) {
  auto c = Open(UniqueUrl());
  Model m = *Model::Open(*c);
  Sample s = MakeSample();
  std::vector<NamedTensorView> twice = {s.views[0], s.views[0]};
  EXPECT_STATUS(m.SaveStateDict(0, twice), kInvalidArgument, "given twice");
  SaveOptions two;
  two.world_size = 2;
  EXPECT_STATUS(m.SaveStateDict(2, s.views, two), kInvalidArgument, "not below world_size");
  std::vector<FileContent> bad = {{"../x", {}}};
  EXPECT_FALSE(m.SaveFiles(bad).ok());
  EXPECT_EQ(m.OpenReader(0).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(m.OpenReader(-1).status().code(), StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------- resume

TEST(Model, UnfinishedSaveIsRefusedAndResumed) {
  auto c = Open(UniqueUrl());
  Model m = *Model::Open(*c);
  Sample s = MakeSample();
  ASSERT_TRUE(m.SaveStateDict(0, s.views).ok());

  ManifestPart part = **m.ReadManifest(0);
  part.state = SaveState::kSaving;
  std::string text = EncodeManifest(part);
  ASSERT_TRUE(c->store()
                  .Put(m.ManifestKey(0), ConstBytes(reinterpret_cast<const std::byte*>(text.data()), text.size()))
                  .ok());
  EXPECT_STATUS(m.OpenReader(0).status(), kFailedPrecondition, "is not complete");
  ModelInfo info = *m.Inspect();
  EXPECT_FALSE(info.complete);

  // Saving again skips what is stored and publishes the part as complete.
  std::vector<std::pair<uint64_t, uint64_t>> progress;
  SaveOptions options;
  options.progress = [&](uint64_t done, uint64_t total) { progress.emplace_back(done, total); };
  ASSERT_TRUE(m.SaveStateDict(0, s.views, options).ok());
  ASSERT_FALSE(progress.empty());
  EXPECT_EQ(progress.front().first, progress.front().second);  // all skipped
  EXPECT_EQ((*m.ReadManifest(0))->state, SaveState::kComplete);
  EXPECT_TRUE(m.Inspect()->complete);
  std::unique_ptr<ModelReader> reader = *m.OpenReader(0);
  std::vector<NamedTensor> got = ReadAll(*reader);
  ASSERT_EQ(got.size(), s.views.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(SameTensor(got[i].tensor, s.views[i].tensor));
}

TEST(Model, ResaveRewritesChangesAndDropsStaleKeys) {
  auto c = Open(UniqueUrl());
  Model m = *Model::Open(*c);
  Sample s = MakeSample();
  std::vector<std::pair<uint64_t, uint64_t>> progress;
  SaveOptions options;
  options.progress = [&](uint64_t done, uint64_t total) { progress.emplace_back(done, total); };
  ASSERT_TRUE(m.SaveStateDict(0, s.views, options).ok());
  ASSERT_FALSE(progress.empty());
  EXPECT_EQ(progress.front().first, 0u);  // nothing stored before

  // One tensor changed: the others are kept (skipped), the changed one written.
  Tensor b2 = Filled(DType::kBF16, {3, 5}, 99);
  s.views[2].tensor = b2.view();
  progress.clear();
  ASSERT_TRUE(m.SaveStateDict(0, s.views, options).ok());
  ASSERT_FALSE(progress.empty());
  EXPECT_GT(progress.front().first, 0u);
  EXPECT_LT(progress.front().first, progress.front().second);
  EXPECT_EQ(progress.back().first, progress.back().second);
  {
    std::vector<NamedTensor> got = ReadAll(**m.OpenReader(0));
    ASSERT_EQ(got.size(), s.views.size());
    for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(SameTensor(got[i].tensor, s.views[i].tensor)) << got[i].name;
  }

  // A tensor dropped: its key goes.
  std::vector<NamedTensorView> fewer = s.views;
  fewer.erase(fewer.begin() + 4);  // "d"
  ASSERT_TRUE(m.SaveStateDict(0, fewer).ok());
  std::vector<std::string> keys = *c->store().List(m.TensorKey(0, ""));
  EXPECT_EQ(keys, (std::vector<std::string>{m.TensorKey(0, "a"), m.TensorKey(0, "b"), m.TensorKey(0, "c"),
                                            m.TensorKey(0, "e")}));
  ManifestPart part = **m.ReadManifest(0);
  EXPECT_EQ(part.tensors.size(), 5u);
  std::vector<NamedTensor> got = ReadAll(**m.OpenReader(0));
  ASSERT_EQ(got.size(), fewer.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].name, fewer[i].name);
    EXPECT_TRUE(SameTensor(got[i].tensor, fewer[i].tensor)) << got[i].name;
  }
}

TEST(Model, AManifestChangedByAnotherClientIsReadAnew) {
  // A connector remembers the manifest text it last read and skips parsing
  // the same text again; another client's save (another text) is read anew,
  // and so is a manifest replaced by bytes that do not parse.
  const std::string url = UniqueUrl();
  auto reader_side = Open(url), writer_side = Open(url);
  Model reader = *Model::Open(*reader_side), writer = *Model::Open(*writer_side);
  Sample s = MakeSample();
  ASSERT_TRUE(writer.SaveStateDict(0, s.views).ok());
  ASSERT_EQ(ReadAll(**reader.OpenReader(0)).size(), s.views.size());
  ASSERT_EQ(ReadAll(**reader.OpenReader(0)).size(), s.views.size());  // remembered text

  std::vector<NamedTensorView> fewer(s.views.begin(), s.views.begin() + 2);
  ASSERT_TRUE(writer.SaveStateDict(0, fewer).ok());
  std::vector<NamedTensor> got = ReadAll(**reader.OpenReader(0));
  ASSERT_EQ(got.size(), fewer.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(SameTensor(got[i].tensor, fewer[i].tensor)) << got[i].name;

  const std::string junk = "{\"not\": \"a manifest\"}";
  ASSERT_TRUE(writer_side->store().Put(reader.ManifestKey(0), ConstBytes(reinterpret_cast<const std::byte*>(junk.data()), junk.size())).ok());
  Result<std::unique_ptr<ModelReader>> r = reader.OpenReader(0);
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << r.status();
}

// ---------------------------------------------------------------- corruption

// Stores `t` under rank 0's key for `name` as a save of `m` would (with the
// manifest marker), so that only the bytes differ from what was saved.
void PutAsSaved(Connector& c, Model& m, const std::string& name, const TensorView& t) {
  EncodedTensor e = *EncodeTensor(t, m.ValueMetadata(0));
  auto parts = e.parts();
  ASSERT_TRUE(c.store().Put(m.TensorKey(0, name), parts).ok());
}

TEST(Model, CorruptedAndMissingValuesAreDataLoss) {
  auto c = Open(UniqueUrl());
  Model m = *Model::Open(*c);
  Sample s = MakeSample();
  ASSERT_TRUE(m.SaveStateDict(0, s.views).ok());
  EXPECT_TRUE(m.Verify()->problems.empty());

  // Same dtype and shape, one bit flipped.
  Tensor bad = *Tensor::Copy(*Find(s, "b"));
  bad.data()[7] ^= std::byte{0x10};
  PutAsSaved(*c, m, "b", bad.view());
  LoadOptions small;
  small.batch_bytes = 64;
  EXPECT_STATUS(DrainError(**m.OpenReader(0, small)), kDataLoss, "checksum mismatch");
  EXPECT_STATUS(DrainError(**m.OpenReader(0)), kDataLoss, "tensor 'b'");

  LoadOptions unverified;
  unverified.verify = false;
  std::vector<NamedTensor> got = ReadAll(**m.OpenReader(0, unverified));
  ASSERT_EQ(got.size(), s.views.size());
  EXPECT_TRUE(SameTensor(got[2].tensor, bad.view()));
  EXPECT_TRUE(SameTensor(got[0].tensor, *Find(s, "a")));

  Result<VerifyReport> report = m.Verify();
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->problems.size(), 1u);
  EXPECT_TRUE(Contains(report->problems[0], "'b'")) << report->problems[0];
  EXPECT_TRUE(Contains(report->problems[0], "checksum mismatch")) << report->problems[0];
  EXPECT_EQ(report->tensors, 6u);
  std::unique_ptr<ModelReader> checker = *m.OpenReader(0);
  EXPECT_EQ(checker->Check()->size(), 1u);

  // Another dtype under the same key.
  Tensor other = Filled(DType::kI16, {3, 5}, 1);
  PutAsSaved(*c, m, "b", other.view());
  EXPECT_STATUS(DrainError(**m.OpenReader(0, unverified)), kDataLoss, "not the tensor the manifest lists");
  // A value another writer put there (no marker: another header size).
  ASSERT_TRUE(c->Set(m.TensorKey(0, "b"), other.view()).ok());
  EXPECT_STATUS(DrainError(**m.OpenReader(0, unverified)), kDataLoss, "does not match the manifest");

  // Restored, then a value removed.
  PutAsSaved(*c, m, "b", *Find(s, "b"));
  EXPECT_TRUE(DrainError(**m.OpenReader(0)).ok());
  ASSERT_TRUE(c->store().Remove(m.TensorKey(0, "d")).ok());
  EXPECT_STATUS(DrainError(**m.OpenReader(0)), kDataLoss, "not in the store");
  EXPECT_STATUS(DrainError(**m.OpenReader(0, unverified)), kDataLoss, "tensor 'd'");
  report = m.Verify();
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->problems.size(), 1u);
  EXPECT_TRUE(Contains(report->problems[0], "'d'")) << report->problems[0];
}

// ---------------------------------------------------------------- directories

struct ShardTensor {
  std::string name;
  std::string dtype;
  Shape shape;
  std::vector<std::byte> bytes;
};

std::vector<std::byte> Pattern(size_t n, int seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 13 + seed * 5 + 3) & 0xff);
  return v;
}

void WriteBytes(const fs::path& path, const void* data, size_t size) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  ASSERT_TRUE(out.good()) << path;
}

void WriteText(const fs::path& path, const std::string& text) { WriteBytes(path, text.data(), text.size()); }

// A safetensors file written by hand: 8-byte little-endian header length,
// the JSON header (space-padded to 8 bytes), the data.
void WriteShard(const fs::path& path, const std::vector<ShardTensor>& tensors) {
  std::string header = "{\"__metadata__\": {\"format\": \"pt\"}";
  std::vector<std::byte> data;
  for (const ShardTensor& t : tensors) {
    std::string shape;
    for (size_t i = 0; i < t.shape.size(); ++i) shape += (i ? "," : "") + std::to_string(t.shape[i]);
    header += ", \"" + t.name + "\": {\"dtype\": \"" + t.dtype + "\", \"shape\": [" + shape +
              "], \"data_offsets\": [" + std::to_string(data.size()) + ", " +
              std::to_string(data.size() + t.bytes.size()) + "]}";
    data.insert(data.end(), t.bytes.begin(), t.bytes.end());
  }
  header += "}";
  while (header.size() % 8 != 0) header += ' ';
  std::string file(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  file += header;
  file.append(reinterpret_cast<const char*>(data.data()), data.size());
  WriteBytes(path, file.data(), file.size());
}

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("mc-model-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

struct HfDir {
  TempDir dir;
  std::vector<ShardTensor> tensors;  // in name order
  std::vector<std::byte> tokenizer;
  std::string config = "{\"hidden_size\": 3, \"model_type\": \"test\"}\n";
};

void MakeHfDir(HfDir& h, bool index_names_ghost = false) {
  ShardTensor w{"layer.0.weight", "BF16", {2, 3}, Pattern(12, 1)};
  ShardTensor bias{"layer.0.bias", "F32", {3}, Pattern(12, 2)};
  ShardTensor head{"lm_head.weight", "F32", {2, 2}, Pattern(16, 3)};
  ShardTensor empty{"empty", "F32", {0, 3}, {}};
  const std::string s1 = "model-00001-of-00002.safetensors", s2 = "model-00002-of-00002.safetensors";
  WriteShard(h.dir.path() / s1, {w, bias});
  WriteShard(h.dir.path() / s2, {head, empty});
  h.tensors = {empty, bias, w, head};
  std::string index = "{\"metadata\": {\"total_size\": 40}, \"weight_map\": {\"layer.0.weight\": \"" + s1 +
                      "\", \"layer.0.bias\": \"" + s1 + "\", \"lm_head.weight\": \"" + s2 + "\", \"" +
                      (index_names_ghost ? "ghost" : "empty") + "\": \"" + s2 + "\"}}";
  WriteText(h.dir.path() / "model.safetensors.index.json", index);
  WriteText(h.dir.path() / "config.json", h.config);
  h.tokenizer.resize(256);
  for (size_t i = 0; i < 256; ++i) h.tokenizer[i] = static_cast<std::byte>(255 - i);
  WriteBytes(h.dir.path() / "sub" / "tokenizer.model", h.tokenizer.data(), h.tokenizer.size());
  WriteText(h.dir.path() / ".git" / "x", "not a model file");
  WriteText(h.dir.path() / "pytorch_model.bin", "old weights");
}

std::vector<std::byte> Slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(s.size());
  if (!s.empty()) std::memcpy(out.data(), s.data(), s.size());
  return out;
}

TEST(Model, SaveDirectoryStoresShardsAndFiles) {
  HfDir h;
  MakeHfDir(h);
  auto c = Open(UniqueUrl());
  Model m = *Model::Open(*c);
  SaveOptions options;
  uint64_t last_done = 0, last_total = 0;
  options.progress = [&](uint64_t done, uint64_t total) {
    last_done = done;
    last_total = total;
  };
  Status saved = m.SaveDirectory(h.dir.path().string(), options);
  ASSERT_TRUE(saved.ok()) << saved;
  EXPECT_EQ(last_done, last_total);

  // Tensors: every shard's, in name order, bit-exact.
  std::unique_ptr<ModelReader> reader = *m.OpenReader(0);
  std::vector<NamedTensor> got = ReadAll(*reader);
  ASSERT_EQ(got.size(), h.tensors.size());
  for (size_t i = 0; i < got.size(); ++i) {
    const ShardTensor& want = h.tensors[i];
    EXPECT_EQ(got[i].name, want.name);
    EXPECT_EQ(DTypeName(got[i].tensor.dtype()), want.dtype) << want.name;
    EXPECT_EQ(got[i].tensor.shape(), want.shape) << want.name;
    ASSERT_EQ(got[i].tensor.nbytes(), want.bytes.size()) << want.name;
    if (!want.bytes.empty()) EXPECT_EQ(std::memcmp(got[i].tensor.data(), want.bytes.data(), want.bytes.size()), 0);
  }

  // Files: everything but hidden ones, shards and other weight formats.
  std::vector<std::string> files = *c->store().List(m.FileKey(""));
  EXPECT_EQ(files, (std::vector<std::string>{m.FileKey("config.json"), m.FileKey("model.safetensors.index.json"),
                                             m.FileKey("sub/tokenizer.model")}));
  ModelInfo info = *m.Inspect();
  EXPECT_TRUE(info.complete);
  EXPECT_EQ(info.files, 3u);
  EXPECT_EQ(info.tensors, 4u);

  Result<std::vector<std::string>> pulled = c->PullFiles();
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ(*pulled, (std::vector<std::string>{"config.json", "model.safetensors.index.json", "sub/tokenizer.model"}));
  fs::path local = *c->GetLocalDir();
  EXPECT_EQ(Slurp(local / "sub" / "tokenizer.model"), h.tokenizer);
  EXPECT_EQ(Slurp(local / "config.json"), Slurp(h.dir.path() / "config.json"));
  EXPECT_EQ(Slurp(local / "model.safetensors.index.json"), Slurp(h.dir.path() / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(local / ".git"));
  EXPECT_FALSE(fs::exists(local / "pytorch_model.bin"));
  EXPECT_TRUE(m.Verify()->problems.empty());
}

TEST(Model, SaveDirectoryChecksTheIndex) {
  HfDir h;
  MakeHfDir(h, /*index_names_ghost=*/true);
  auto c = Open(UniqueUrl());
  Model m = *Model::Open(*c);
  EXPECT_STATUS(m.SaveDirectory(h.dir.path().string()), kInvalidArgument, "'ghost'");
  EXPECT_EQ(m.SaveDirectory((h.dir.path() / "nope").string()).code(), StatusCode::kNotFound);
}

// ---------------------------------------------------------------- inspect and list

TEST(Model, InspectAndListModels) {
  const std::string url = UniqueUrl("/org/full");
  auto full = Open(url);
  auto partial = Open(SameStore(url, "/org/partial"));
  auto bare = Open(SameStore(url, "/org/bare"));
  auto org = Open(SameStore(url, "/org"));
  Sample s = MakeSample();

  Model mf = *Model::Open(*full);
  ASSERT_TRUE(mf.SaveStateDict(0, s.views).ok());
  std::vector<FileContent> files = {{"config.json", std::as_bytes(std::span("{}", 2))}};
  ASSERT_TRUE(mf.SaveFiles(files).ok());
  ModelInfo info = *mf.Inspect();
  EXPECT_TRUE(info.has_manifest);
  EXPECT_TRUE(info.complete);
  EXPECT_TRUE(info.problems.empty()) << info.problems[0];
  EXPECT_EQ(info.world_size, 1);
  EXPECT_EQ(info.ranks, std::vector<int>{0});
  EXPECT_EQ(info.tensors, 6u);
  EXPECT_EQ(info.files, 1u);
  EXPECT_EQ(info.bytes, 128u + 30u + 8u + 100u + 2u);
  EXPECT_EQ(info.tool, ToolVersion());
  EXPECT_EQ(info.parts.size(), 2u);

  Model mp = *Model::Open(*partial);
  SaveOptions two;
  two.world_size = 2;
  ASSERT_TRUE(mp.SaveStateDict(0, s.views, two).ok());
  info = *mp.Inspect();
  EXPECT_TRUE(info.has_manifest);
  EXPECT_FALSE(info.complete);
  EXPECT_EQ(info.world_size, 2);
  ASSERT_EQ(info.problems.size(), 1u);
  EXPECT_TRUE(Contains(info.problems[0], "rank 1")) << info.problems[0];

  // Keys in SGLang's layout, no manifest.
  Tensor x = Filled(DType::kF32, {2, 2}, 5), y = Filled(DType::kI8, {7}, 6);
  ASSERT_TRUE(bare->Set("org/bare/keys/rank_0/x", x.view()).ok());
  ASSERT_TRUE(bare->Set("org/bare/keys/rank_0/y", y.view()).ok());

  Result<std::vector<ModelInfo>> listed = ListModels(*org);
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 3u);
  EXPECT_EQ((*listed)[0].name, "org/bare");
  EXPECT_FALSE((*listed)[0].has_manifest);
  EXPECT_FALSE((*listed)[0].complete);
  EXPECT_EQ((*listed)[0].tensors, 2u);
  EXPECT_EQ((*listed)[0].ranks, std::vector<int>{0});
  EXPECT_EQ((*listed)[1].name, "org/full");
  EXPECT_TRUE((*listed)[1].complete);
  EXPECT_EQ((*listed)[2].name, "org/partial");
  EXPECT_FALSE((*listed)[2].complete);

  Model mb = *Model::Open(*bare);
  std::unique_ptr<ModelReader> reader = *mb.OpenReader(0);
  EXPECT_FALSE(reader->has_manifest());
  std::vector<NamedTensor> got = ReadAll(*reader);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].name, "x");
  EXPECT_TRUE(SameTensor(got[0].tensor, x.view()));
  EXPECT_EQ(got[1].name, "y");
  EXPECT_TRUE(SameTensor(got[1].tensor, y.view()));
  EXPECT_EQ(mb.Verify().status().code(), StatusCode::kFailedPrecondition);
  // LoadInto without a manifest reads and checks each value.
  std::vector<std::byte> xb(16);
  std::vector<TensorDestination> dest = {{"x", DType::kF32, {2, 2}, xb}};
  Result<std::vector<std::string>> missed = (*mb.OpenReader(0))->LoadInto(dest);
  ASSERT_TRUE(missed.ok()) << missed.status();
  EXPECT_EQ(*missed, std::vector<std::string>{"y"});
  EXPECT_EQ(std::memcmp(xb.data(), x.data(), 16), 0);
  std::vector<TensorDestination> wrong = {{"x", DType::kF32, {4}, xb}};
  EXPECT_EQ((*mb.OpenReader(0))->LoadInto(wrong).status().code(), StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------- remove

TEST(Model, RemoveLeavesNestedModels) {
  const std::string url = UniqueUrl("/org/model");
  auto c = Open(url);
  auto n = Open(SameStore(url, "/org/model/nested"));
  Model m = *Model::Open(*c);
  Model nested = *Model::Open(*n);
  Sample s = MakeSample();
  ASSERT_TRUE(m.SaveStateDict(0, s.views).ok());
  std::vector<FileContent> files = {{"config.json", std::as_bytes(std::span("{}", 2))},
                                    {"sub/t.txt", std::as_bytes(std::span("abc", 3))}};
  ASSERT_TRUE(m.SaveFiles(files).ok());
  ASSERT_TRUE(nested.SaveStateDict(0, s.views).ok());
  ASSERT_TRUE(nested.SaveFiles(files).ok());

  Result<uint64_t> removed = m.Remove();
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_EQ(*removed, 2u + 5u + 2u);  // manifests, tensors, files
  std::vector<std::string> left = *c->store().List("org/model/");
  EXPECT_EQ(left.size(), 9u);
  for (const std::string& key : left) {
    EXPECT_EQ(key.rfind("org/model/nested/", 0), 0u) << key;
  }
  EXPECT_FALSE(m.ReadManifest(0)->has_value());
  EXPECT_EQ(m.Inspect().status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(nested.Inspect()->complete);
  std::vector<NamedTensor> got = ReadAll(**nested.OpenReader(0));
  EXPECT_EQ(got.size(), s.views.size());
  EXPECT_STATUS(m.Remove().status(), kNotFound, "no model 'org/model'");
  EXPECT_EQ(*nested.Remove(), 9u);
}

// ---------------------------------------------------------------- threads

TEST(Model, ValuesSavedWithAManifestAreNotLoadedWithoutIt) {
  // What a master restart in the middle of a save, or a remove cut short,
  // leaves: some values, no manifest. A connector that never saw the model
  // must not take them for a whole (manifest-less, SGLang-style) model.
  const std::string url = UniqueUrl();
  auto c = Open(url);
  Model m = *Model::Open(*c);
  Sample s = MakeSample();
  ASSERT_TRUE(m.SaveStateDict(0, s.views).ok());
  ASSERT_TRUE(c->store().Remove(m.ManifestKey(0)).ok());
  ASSERT_TRUE(c->store().Remove(m.TensorKey(0, "c")).ok());
  auto other = Open(url);
  Model fresh = *Model::Open(*other);
  std::unique_ptr<ModelReader> reader = *fresh.OpenReader(0);
  EXPECT_FALSE(reader->has_manifest());
  Status st = DrainError(*reader);
  EXPECT_STATUS(st, kDataLoss, "was saved with a manifest ('org/model/manifest/rank_0.json') that is not in");
  EXPECT_STATUS(st, kDataLoss, "not loading what is left as a whole model");
}

TEST(Model, ModelsOfManifestFormatVersion1StillLoadAndAreRewrittenOnResave) {
  // Version 1 values carry no marker. Rebuilt here from a save: values set
  // plainly, the manifest part written back as version 1.
  auto c = Open(UniqueUrl());
  Model m = *Model::Open(*c);
  Sample s = MakeSample();
  ASSERT_TRUE(m.SaveStateDict(0, s.views).ok());
  ManifestPart part = **m.ReadManifest(0);
  for (const NamedTensorView& v : s.views) {
    if (v.name != "a_tied") ASSERT_TRUE(c->Set(m.TensorKey(0, v.name), v.tensor).ok());
  }
  part.format_version = 1;
  const std::string v1 = EncodeManifest(part);
  ASSERT_TRUE(c->store().Put(m.ManifestKey(0), ConstBytes(reinterpret_cast<const std::byte*>(v1.data()), v1.size()))
                  .ok());
  std::vector<NamedTensor> got = ReadAll(**m.OpenReader(0));
  ASSERT_EQ(got.size(), s.views.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(SameTensor(got[i].tensor, s.views[i].tensor));
  EXPECT_TRUE(m.Verify()->problems.empty());
  // Saved again: every value is written anew with the marker (none skipped),
  // and the part is the current version.
  ASSERT_TRUE(m.SaveStateDict(0, s.views).ok());
  EXPECT_EQ((*m.ReadManifest(0))->format_version, kManifestFormatVersion);
  EXPECT_EQ(ReadAll(**m.OpenReader(0)).size(), s.views.size());
  EXPECT_TRUE(m.Verify()->problems.empty());
}

TEST(Model, ALoadDuringARemoveIsWholeOrAnErrorNeverShorter) {
  // One thread saves and removes the model again and again; another loads it
  // through a second connector (which never saw it, so it cannot rely on a
  // remembered manifest). Every load is the whole model or an error: never
  // what a listing finds of a model being removed.
  const std::string url = UniqueUrl();
  auto writer_connector = Open(url);
  auto reader_connector = Open(url);
  Model writer = *Model::Open(*writer_connector);
  Model reader = *Model::Open(*reader_connector);
  std::vector<Tensor> storage;
  std::vector<NamedTensorView> views;
  for (int i = 0; i < 12; ++i) storage.push_back(Filled(DType::kF32, {4, 4}, i));
  for (int i = 0; i < 12; ++i) views.push_back({"w" + std::to_string(i / 10) + std::to_string(i % 10), storage[i].view()});
  std::atomic<bool> stop{false};
  std::atomic<int> whole{0}, shorter{0}, errors{0};
  std::thread churn([&] {
    for (int round = 0; round < 150; ++round) {
      EXPECT_TRUE(writer.SaveStateDict(0, views).ok());
      EXPECT_TRUE(writer.Remove().ok());
    }
    stop = true;
  });
  while (!stop) {
    Result<std::unique_ptr<ModelReader>> r = reader.OpenReader(0);
    if (!r.ok()) {
      ++errors;
      continue;
    }
    size_t n = 0;
    bool failed = false;
    while (true) {
      Result<std::vector<NamedTensor>> batch = (*r)->NextBatch();
      if (!batch.ok()) {
        failed = true;
        break;
      }
      if (batch->empty()) break;
      n += batch->size();
    }
    if (failed) ++errors;
    else if (n == views.size()) ++whole;
    else ++shorter;
  }
  churn.join();
  EXPECT_EQ(shorter.load(), 0) << whole.load() << " whole loads, " << errors.load() << " errors";
  EXPECT_GT(whole.load() + errors.load(), 0);
}

TEST(Model, ConcurrentReadersAndInspect) {
  auto c = Open(UniqueUrl());
  Model m = *Model::Open(*c);
  std::vector<Tensor> storage;
  std::vector<NamedTensorView> views;
  for (int i = 0; i < 24; ++i) {
    storage.push_back(Filled(i % 2 ? DType::kBF16 : DType::kF32, {8, 3 + i}, i));
  }
  for (int i = 0; i < 24; ++i) views.push_back({"layers." + std::to_string(i) + ".weight", storage[i].view()});
  views.push_back({"tied", storage[0].view()});
  ASSERT_TRUE(m.SaveStateDict(0, views).ok());

  std::atomic<int> failures{0};
  std::atomic<bool> readers_done{false};
  auto read = [&] {
    for (int round = 0; round < 15; ++round) {
      LoadOptions options;
      options.batch_bytes = 200 + 97 * round;
      Result<std::unique_ptr<ModelReader>> reader = m.OpenReader(0, options);
      if (!reader.ok()) {
        ++failures;
        continue;
      }
      size_t i = 0;
      while (true) {
        Result<std::vector<NamedTensor>> batch = (*reader)->NextBatch();
        if (!batch.ok()) {
          ++failures;
          break;
        }
        if (batch->empty()) break;
        for (const NamedTensor& t : *batch) {
          if (i >= views.size() || t.name != views[i].name || !SameTensor(t.tensor, views[i].tensor)) ++failures;
          ++i;
        }
      }
      if (i != views.size()) ++failures;
    }
  };
  std::thread a(read), b(read);
  std::thread inspector([&] {
    Model mine = m;
    int rounds = 0;
    while (!readers_done.load() || rounds < 3) {
      Result<ModelInfo> info = mine.Inspect();
      if (!info.ok() || !info->complete || info->tensors != views.size()) ++failures;
      ++rounds;
    }
  });
  a.join();
  b.join();
  readers_done = true;
  inspector.join();
  EXPECT_EQ(failures.load(), 0);
}

}  // namespace
}  // namespace mooncake_connector

namespace mooncake_connector {
namespace {

TEST(Model, NamesThatAreNotUtf8AreInvalidArgument) {
  auto c = Open(UniqueUrl());
  Model m = *Model::Open(*c);
  Tensor t = Filled(DType::kF32, {4}, 1);
  std::vector<NamedTensorView> tensors = {{"w\xe9", t.view()}};
  EXPECT_STATUS(m.SaveStateDict(0, tensors), kInvalidArgument, "UTF-8");
  std::string bytes = "x";
  std::vector<FileContent> files = {
      {"caf\xe9.txt", ConstBytes(reinterpret_cast<const std::byte*>(bytes.data()), bytes.size())}};
  EXPECT_STATUS(m.SaveFiles(files), kInvalidArgument, "UTF-8");
  std::vector<FileContent> traversal = {
      {"../x", ConstBytes(reinterpret_cast<const std::byte*>(bytes.data()), bytes.size())}};
  EXPECT_STATUS(m.SaveFiles(traversal), kInvalidArgument, "../x");
  EXPECT_TRUE(c->List("")->empty());  // nothing written
}

TEST(Model, SaveDirectoryRefusesBadFileNamesBeforeWritingAndReportsMonotonicProgress) {
  auto c = Open(UniqueUrl());
  Model m = *Model::Open(*c);
  TempDir dir;
  std::vector<std::byte> w = Pattern(16, 2);
  WriteShard(dir.path() / "model.safetensors", {{"w", "F32", {4}, w}});
  WriteText(dir.path() / "config.json", "{\"a\": 1}");
  std::vector<std::pair<uint64_t, uint64_t>> progress;
  SaveOptions options;
  options.progress = [&](uint64_t done, uint64_t total) { progress.emplace_back(done, total); };
  ASSERT_TRUE(m.SaveDirectory(dir.path().string(), options).ok());
  ASSERT_FALSE(progress.empty());
  for (size_t i = 0; i < progress.size(); ++i) {
    EXPECT_EQ(progress[i].second, 16u + 8u) << i;
    if (i > 0) EXPECT_GE(progress[i].first, progress[i - 1].first) << i;
  }
  EXPECT_EQ(progress.back().first, 24u);

  auto c2 = Open(UniqueUrl());
  Model m2 = *Model::Open(*c2);
  WriteText(dir.path() / "caf\xe9.txt", "latin-1 name");
  EXPECT_STATUS(m2.SaveDirectory(dir.path().string()), kInvalidArgument, "UTF-8");
  EXPECT_TRUE(c2->List("")->empty());
}

}  // namespace
}  // namespace mooncake_connector
