// Saving and loading a model's tensors: batches, inspect, list, remove,
// concurrency. Resume and corruption are in model_resume_test.cc, the
// manifest's format in model_manifest_test.cc, Hugging Face folders in
// model_directory_test.cc.
#include "mooncake_connector/model.h"

#include <gtest/gtest.h>

#include <dlfcn.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "mooncake_connector/connector.h"
#include "mooncake_connector/value_format.h"
#include "model/model_memory_internal.h"
#include "model_test_util.h"

namespace mooncake_connector {
namespace {

using namespace model_test;

// ---------------------------------------------------------------- save and load

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

// LoadAll hands out what draining NextBatch would: every name in stored
// order, the stored bytes in aligned storage, aliases sharing their target's.
TEST(Model, LoadAllReadsTheWholeRankAsNextBatchWould) {
  auto c = Open(UniqueUrl());
  Model m = *Model::Open(*c);
  Sample s = MakeSample(5);
  ASSERT_TRUE(m.SaveStateDict(0, s.views).ok());
  LoadOptions options;
  options.batch_bytes = 100;  // several batches inside its one load
  std::vector<std::pair<uint64_t, uint64_t>> progress;
  options.progress = [&](uint64_t done, uint64_t total) { progress.emplace_back(done, total); };
  std::unique_ptr<ModelReader> reader = *m.OpenReader(0, options);
  Result<std::vector<NamedTensor>> got = reader->LoadAll();
  ASSERT_TRUE(got.ok()) << got.status();
  std::vector<NamedTensor> drained = ReadAll(**m.OpenReader(0));
  ASSERT_EQ(got->size(), s.views.size());
  ASSERT_EQ(drained.size(), s.views.size());
  for (size_t i = 0; i < got->size(); ++i) {
    const NamedTensor& t = (*got)[i];
    EXPECT_EQ(t.name, s.views[i].name);
    EXPECT_EQ(t.name, drained[i].name);
    EXPECT_TRUE(SameTensor(t.tensor, s.views[i].tensor)) << t.name;
    EXPECT_EQ(t.tensor.dtype(), drained[i].tensor.dtype()) << t.name;
    EXPECT_EQ(t.tensor.shape(), drained[i].tensor.shape()) << t.name;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.tensor.data()) % kBufferAlignment, 0u) << t.name;
  }
  EXPECT_EQ((*got)[0].tensor.data(), (*got)[1].tensor.data());  // a_tied shares a's storage
  for (size_t i = 2; i < got->size(); ++i) {
    if ((*got)[i].tensor.nbytes() > 0) EXPECT_NE((*got)[i].tensor.data(), (*got)[0].tensor.data());
  }
  ASSERT_FALSE(progress.empty());
  EXPECT_EQ(progress.back().first, reader->total_bytes());
  EXPECT_EQ(progress.back().second, reader->total_bytes());
  // The whole rank only: not after some of it was read.
  std::unique_ptr<ModelReader> started = *m.OpenReader(0, options);
  ASSERT_TRUE(started->NextBatch().ok());
  EXPECT_STATUS(started->LoadAll().status(), kFailedPrecondition, "nothing was read from yet");

  // Values stored without a manifest (SGLang's save_model): read by listing.
  auto other = Open(SameStore(UniqueUrl(), "/org/plain"));
  Model plain = *Model::Open(*other);
  ASSERT_TRUE(other->Set(plain.TensorKey(0, "x"), *Find(s, "b")).ok());
  Result<std::vector<NamedTensor>> listed = (*plain.OpenReader(0))->LoadAll();
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].name, "x");
  EXPECT_TRUE(SameTensor((*listed)[0].tensor, *Find(s, "b")));
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

// The same with tensors of whole pages, which the preparation faults in on
// helper threads (PrefaultAhead) while the batch before is fetched: every
// byte as saved, and a reader dropped mid-way stops and joins them.
TEST(Model, ConcurrentPreparationFaultsInWholePagesAndKeepsEveryByte) {
  auto c = Open(UniqueUrl());
  Model m = *Model::Open(*c);
  std::vector<Tensor> owned;
  std::vector<NamedTensorView> views;
  for (int i = 0; i < 6; ++i) owned.push_back(Filled(DType::kF32, {64 * (i + 1), 1024}, 100 + i));  // 256 KiB up
  for (int i = 0; i < 6; ++i) views.push_back({"big" + std::to_string(i), owned[i].view()});
  ASSERT_TRUE(m.SaveStateDict(0, views).ok());
  for (uint64_t batch_bytes : {uint64_t{1}, uint64_t{1} << 20, uint64_t{3} << 20}) {
    LoadOptions options;
    options.batch_bytes = batch_bytes;
    options.prepare_next_batch = true;
    std::unique_ptr<ModelReader> reader = *m.OpenReader(0, options);
    std::vector<NamedTensor> got = ReadAll(*reader);
    ASSERT_EQ(got.size(), views.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_TRUE(SameTensor(got[i].tensor, views[i].tensor)) << got[i].name << " at batch_bytes " << batch_bytes;
    }
  }
  for (int taken = 0; taken < 3; ++taken) {
    LoadOptions options;
    options.batch_bytes = 1;  // a tensor per batch: the next one is being faulted in when the reader goes
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

// A load onto a device in groups: each stored tensor filled once, in the
// group that first hands it out, and let go after its last alias.
TEST(Model, DeviceGroupsFillEachStoredTensorOnceAndDropItAfterItsLastUse) {
  auto c = Open(UniqueUrl());
  Model m = *Model::Open(*c);
  Tensor x = Filled(DType::kF32, {4, 8}, 1), y = Filled(DType::kU8, {30}, 2), z = Filled(DType::kU8, {100}, 3);
  std::vector<NamedTensorView> views = {{"x", x.view()}, {"y", y.view()}, {"x_tied", x.view()}, {"z", z.view()}};
  ASSERT_TRUE(m.SaveStateDict(0, views).ok());
  std::unique_ptr<ModelReader> reader = *m.OpenReader(0);
  using Indices = std::vector<size_t>;

  // A group closes once its fills reach group_bytes: one tensor each, but
  // x_tied fills nothing, so z joins its group.
  Result<std::vector<DeviceGroup>> groups = reader->PlanDeviceGroups(1);
  ASSERT_TRUE(groups.ok()) << groups.status();
  ASSERT_EQ(groups->size(), 3u);
  EXPECT_EQ((*groups)[0].fill, Indices{0});
  EXPECT_EQ((*groups)[0].hand_out, Indices{0});
  EXPECT_EQ((*groups)[0].drop, Indices{});  // x_tied still needs x
  EXPECT_EQ((*groups)[1].fill, Indices{1});
  EXPECT_EQ((*groups)[1].hand_out, Indices{1});
  EXPECT_EQ((*groups)[1].drop, Indices{1});
  EXPECT_EQ((*groups)[2].fill, Indices{3});
  EXPECT_EQ((*groups)[2].hand_out, (Indices{2, 3}));
  EXPECT_EQ((*groups)[2].drop, (Indices{0, 3}));

  groups = reader->PlanDeviceGroups(UINT64_MAX);  // all at once
  ASSERT_TRUE(groups.ok()) << groups.status();
  ASSERT_EQ(groups->size(), 1u);
  EXPECT_EQ((*groups)[0].fill, (Indices{0, 1, 3}));
  EXPECT_EQ((*groups)[0].hand_out, (Indices{0, 1, 2, 3}));
  EXPECT_EQ((*groups)[0].drop, (Indices{1, 0, 3}));

  // Without a manifest the dtypes and shapes are unknown until read.
  auto other = Open(SameStore(UniqueUrl(), "/org/plain"));
  Model plain = *Model::Open(*other);
  ASSERT_TRUE(other->Set(plain.TensorKey(0, "w"), y.view()).ok());
  EXPECT_STATUS((*plain.OpenReader(0))->PlanDeviceGroups(1).status(), kFailedPrecondition, "needs a manifest");
}

TEST(Model, PiecesOfATensorReadApartAndCheckedTogether) {
  auto c = Open(UniqueUrl());
  Model m = *Model::Open(*c);
  Sample s = MakeSample(3);
  ASSERT_TRUE(m.SaveStateDict(0, s.views).ok());
  std::unique_ptr<ModelReader> reader = *m.OpenReader(0);
  size_t a = 0;
  while (reader->tensors()[a].name != "a") ++a;
  // Rows [0, 1) and [1, 4) of the 4 x 8 F32 tensor 'a', into one buffer.
  std::vector<std::byte> whole(128, std::byte{0});
  std::vector<TensorPiece> pieces = {{a, 32, MutableBytes(whole).subspan(32)}, {a, 0, MutableBytes(whole).first(32)}};
  std::vector<Status> got = reader->ReadPieces(pieces);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_TRUE(got[0].ok()) << got[0];
  EXPECT_TRUE(got[1].ok()) << got[1];
  EXPECT_EQ(std::memcmp(whole.data(), Find(s, "a")->data, 128), 0);
  EXPECT_TRUE(reader->CheckAssembled(a, whole).ok());
  // A byte changed in between: the checksum of the whole says so.
  whole[100] ^= std::byte{1};
  EXPECT_STATUS(reader->CheckAssembled(a, whole), kDataLoss, "checksum mismatch in tensor 'a'");
  // A piece outside the tensor, and a stored value of another save: named.
  std::vector<TensorPiece> outside = {{a, 120, MutableBytes(whole).first(16)}};
  EXPECT_EQ(reader->ReadPieces(outside)[0].code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(c->SetBytes(m.TensorKey(0, "a"), ConstBytes(whole)).ok());
  std::vector<Status> replaced = reader->ReadPieces(pieces);
  EXPECT_EQ(replaced[0].code(), StatusCode::kDataLoss) << replaced[0];
  EXPECT_EQ(replaced[1].code(), StatusCode::kDataLoss) << replaced[1];
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
  // A tensor in a device's memory is never read as if it were the host's.
  std::vector<NamedTensorView> on_device = s.views;
  on_device[1].on_device = true;
  EXPECT_STATUS(m.SaveStateDict(0, on_device), kInvalidArgument, "in a CUDA device's memory");
  if (dlopen("libcuda.so.1", RTLD_NOW) == nullptr) {  // no driver here (CI): the CUDA save says so
    EXPECT_STATUS(m.SaveStateDictCuda(0, on_device, CudaTarget{}), kFailedPrecondition,
                  "saving from a GPU needs one");
  }
  EXPECT_EQ(m.OpenReader(0).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(m.OpenReader(-1).status().code(), StatusCode::kInvalidArgument);
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


TEST(ModelMemory, CheckedValuesAreRecognisedOnlyWhileTheSameValueIsStored) {
  auto c = Open("memory://checked-values");
  ModelMemory memory;
  Store& store = c->store();
  auto bytes = [](const char* s) { return ConstBytes(reinterpret_cast<const std::byte*>(s), std::strlen(s)); };
  auto view = [&](std::string_view key) {
    std::string_view keys[] = {key};
    return std::move(store.BatchView(keys)[0]).value();
  };
  ASSERT_TRUE(store.Put("k", bytes("header:data")).ok());
  Buffer first = view("k");
  ConstBytes data = first.bytes().subspan(7);
  EXPECT_FALSE(memory.CheckedBefore("k", first, data, 42));
  memory.RememberChecked("k", first, data, 42);
  EXPECT_TRUE(memory.CheckedBefore("k", view("k"), view("k").bytes().subspan(7), 42));  // the same value, lent again
  EXPECT_FALSE(memory.CheckedBefore("k", first, data, 43));                     // another checksum expected
  EXPECT_FALSE(memory.CheckedBefore("k", first, first.bytes(), 42));            // other bytes of it
  EXPECT_FALSE(memory.CheckedBefore("other", first, data, 42));                 // another key

  // Overwritten (same size, other bytes): a new value, not checked.
  ASSERT_TRUE(store.Put("k", bytes("header:DATA")).ok());
  Buffer second = view("k");
  EXPECT_FALSE(memory.CheckedBefore("k", second, second.bytes().subspan(7), 42));
  // Removed, every view dropped, stored again: nothing matches, even where
  // the new value's memory is where the old one was.
  memory.RememberChecked("k", second, second.bytes().subspan(7), 7);
  first = Buffer();
  second = Buffer();
  ASSERT_TRUE(store.Remove("k").ok());
  ASSERT_TRUE(store.Put("k", bytes("header:DATA")).ok());
  Buffer third = view("k");
  EXPECT_FALSE(memory.CheckedBefore("k", third, third.bytes().subspan(7), 7));
}

}  // namespace
}  // namespace mooncake_connector
