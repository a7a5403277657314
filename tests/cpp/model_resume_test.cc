// A model's saves resumed, rewritten and raced by other clients, and stored
// bytes that are corrupted or missing. The rest of saving and loading is in
// model_test.cc.
#include <gtest/gtest.h>

#include "core/hash_internal.h"
#include "mooncake_connector/connector.h"
#include "mooncake_connector/model.h"
#include "mooncake_connector/value_format.h"
#include "model_test_util.h"

namespace mooncake_connector {
namespace {

using namespace model_test;

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

// While a save runs, the stored manifest says "saving" and lists what is in;
// after the last batch the complete manifest is the next one written.
TEST(Model, TheManifestFollowsASaveBatchByBatch) {
  auto c = Open(UniqueUrl());
  Model m = *Model::Open(*c);
  Sample s = MakeSample();
  std::vector<std::pair<SaveState, size_t>> seen;
  SaveOptions options;
  options.batch_bytes = 1;  // one value per batch: a (and a_tied), b, c, d, e
  options.progress = [&](uint64_t, uint64_t) {
    std::optional<ManifestPart> part = *m.ReadManifest(0);
    ASSERT_TRUE(part.has_value());
    seen.emplace_back(part->state, part->tensors.size());
  };
  ASSERT_TRUE(m.SaveStateDict(0, s.views, options).ok());
  using P = std::pair<SaveState, size_t>;
  EXPECT_EQ(seen, (std::vector<P>{P{SaveState::kSaving, 0}, P{SaveState::kSaving, 1}, P{SaveState::kSaving, 2},
                                  P{SaveState::kSaving, 3}, P{SaveState::kSaving, 4}, P{SaveState::kSaving, 4}}));
  std::optional<ManifestPart> part = *m.ReadManifest(0);
  EXPECT_EQ(part->state, SaveState::kComplete);
  EXPECT_EQ(part->tensors.size(), 6u);
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
  uint64_t save_id = 0;  // the save that wrote `name`'s value, by the manifest
  Result<std::optional<ManifestPart>> manifest = m.ReadManifest(0);
  ASSERT_TRUE(manifest.ok() && manifest->has_value()) << manifest.status();
  for (const ManifestTensor& entry : (*manifest)->tensors) {
    if (entry.name == name) save_id = entry.save_id;
  }
  EncodedTensor e = *EncodeTensor(t, m.ValueMetadata(0, save_id));
  auto parts = e.parts();
  ASSERT_TRUE(c.store().Put(m.TensorKey(0, name), parts).ok());
}

// An F32 tensor of `halves` / 2 checksum pieces (manifest format 4).
Tensor PiecesLong(int halves, int seed) {
  return Filled(DType::kF32, {static_cast<int64_t>(kTensorChecksumPiece * halves / 2 / 4096), 1024}, seed);
}

TEST(Model, ATensorLargerThanAChecksumPieceIsCheckedPieceByPiece) {
  // Manifest format 4: a tensor of 2.5 pieces has the checksum of its pieces'
  // checksums (memory:// hashes the pieces on several threads while it
  // copies them); a bit flipped in its second piece is caught by every kind
  // of load and by Verify.
  const std::string url = UniqueUrl();
  auto c = Open(url);
  Model m = *Model::Open(*c);
  Tensor big = PiecesLong(5, 3);
  Tensor small = Filled(DType::kBF16, {3, 5}, 4);
  std::vector<NamedTensorView> views = {{"big", big.view()}, {"small", small.view()}};
  ASSERT_TRUE(m.SaveStateDict(0, views).ok());
  ManifestPart part = **m.ReadManifest(0);
  EXPECT_EQ(part.format_version, 4);
  EXPECT_EQ(part.checksum_piece, kTensorChecksumPiece);
  const ConstBytes all(big.data(), big.nbytes());
  EXPECT_EQ(part.tensors[0].checksum, Xxh3Pieces(all, kTensorChecksumPiece));
  EXPECT_NE(part.tensors[0].checksum, Xxh3(all));
  EXPECT_EQ(part.tensors[1].checksum, Xxh3(ConstBytes(small.data(), small.nbytes())));

  auto load_into = [&](Model& model) -> Status {
    Tensor a = *Tensor::Allocate(DType::kF32, big.shape()), b = *Tensor::Allocate(DType::kBF16, small.shape());
    std::vector<TensorDestination> to = {{"big", DType::kF32, big.shape(), MutableBytes(a.data(), a.nbytes())},
                                         {"small", DType::kBF16, small.shape(), MutableBytes(b.data(), b.nbytes())}};
    Result<std::vector<std::string>> missing = (*model.OpenReader(0))->LoadInto(to);
    if (!missing.ok()) return missing.status();
    EXPECT_TRUE(missing->empty());
    EXPECT_TRUE(SameTensor(a, big.view()));
    EXPECT_TRUE(SameTensor(b, small.view()));
    return Status::Ok();
  };
  std::vector<NamedTensor> got = ReadAll(**m.OpenReader(0));
  ASSERT_EQ(got.size(), 2u);
  EXPECT_TRUE(SameTensor(got[0].tensor, big.view()));
  EXPECT_TRUE(load_into(m).ok());
  EXPECT_TRUE(m.Verify()->problems.empty());
  // Saved again unchanged: nothing written (the checksums compared are the pieces').
  SaveOptions again;
  uint64_t written = 0;
  again.written_bytes = &written;
  ASSERT_TRUE(m.SaveStateDict(0, views, again).ok());
  EXPECT_EQ(written, 0u);
  EXPECT_EQ((*m.ReadManifest(0))->tensors[0].save_id, part.tensors[0].save_id);

  Tensor bad = *Tensor::Copy(big.view());
  bad.data()[kTensorChecksumPiece + 12345] ^= std::byte{0x04};
  PutAsSaved(*c, m, "big", bad.view());
  EXPECT_STATUS(DrainError(**m.OpenReader(0)), kDataLoss, "checksum mismatch in tensor 'big'");
  auto fresh = Open(url);  // a connector that has checked nothing yet
  Model other = *Model::Open(*fresh);
  EXPECT_STATUS(load_into(other), kDataLoss, "checksum mismatch in tensor 'big'");
  Result<VerifyReport> report = m.Verify();
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->problems.size(), 1u);
  EXPECT_TRUE(Contains(report->problems[0], "'big'")) << report->problems[0];
}

TEST(Model, ModelsOfManifestFormatVersion3StillLoadAndAreRewrittenOnResave) {
  // Version 3 checksums are of a tensor's bytes at once, whatever its size.
  const std::string url = UniqueUrl();
  auto c = Open(url);
  Model m = *Model::Open(*c);
  Tensor big = PiecesLong(3, 5);
  std::vector<NamedTensorView> views = {{"big", big.view()}};
  ASSERT_TRUE(m.SaveStateDict(0, views).ok());
  ManifestPart part = **m.ReadManifest(0);
  part.format_version = 3;
  part.checksum_piece = 0;
  part.tensors[0].checksum = Xxh3(ConstBytes(big.data(), big.nbytes()));
  const std::string v3 = EncodeManifest(part);
  EXPECT_FALSE(Contains(v3, "xxh3_piece")) << v3;
  ASSERT_TRUE(c->store().Put(m.ManifestKey(0), ConstBytes(reinterpret_cast<const std::byte*>(v3.data()), v3.size()))
                  .ok());
  auto fresh = Open(url);
  Model other = *Model::Open(*fresh);
  std::vector<NamedTensor> got = ReadAll(**other.OpenReader(0));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_TRUE(SameTensor(got[0].tensor, big.view()));
  EXPECT_TRUE(other.Verify()->problems.empty());
  // Saved again: written anew as version 4.
  ASSERT_TRUE(other.SaveStateDict(0, views).ok());
  ManifestPart now = **other.ReadManifest(0);
  EXPECT_EQ(now.format_version, kManifestFormatVersion);
  EXPECT_NE(now.tensors[0].save_id, part.tensors[0].save_id);
  EXPECT_EQ(now.tensors[0].checksum, Xxh3Pieces(ConstBytes(big.data(), big.nbytes()), kTensorChecksumPiece));
  EXPECT_EQ(ReadAll(**other.OpenReader(0)).size(), 1u);
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
  EXPECT_STATUS((*m.OpenReader(0))->LoadAll().status(), kDataLoss, "checksum mismatch in tensor 'b'");

  LoadOptions unverified;
  unverified.verify = false;
  std::vector<NamedTensor> got = ReadAll(**m.OpenReader(0, unverified));
  ASSERT_EQ(got.size(), s.views.size());
  EXPECT_TRUE(SameTensor(got[2].tensor, bad.view()));
  EXPECT_TRUE(SameTensor(got[0].tensor, *Find(s, "a")));
  Result<std::vector<NamedTensor>> all = (*m.OpenReader(0, unverified))->LoadAll();
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), s.views.size());
  EXPECT_TRUE(SameTensor((*all)[2].tensor, bad.view()));
  EXPECT_TRUE(SameTensor((*all)[0].tensor, *Find(s, "a")));

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
  EXPECT_STATUS(DrainError(**m.OpenReader(0, unverified)), kDataLoss, "not the value the manifest lists");
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
  // Inspect's count of what is gone, then the tensor by name.
  ASSERT_EQ(report->problems.size(), 2u);
  EXPECT_TRUE(Contains(report->problems[0], "damaged: 1 of its 5 values are gone")) << report->problems[0];
  EXPECT_TRUE(Contains(report->problems[1], "'d'")) << report->problems[1];
  ModelInfo info = *m.Inspect();
  EXPECT_FALSE(info.complete);
  EXPECT_EQ(info.missing, 1u);
}

}  // namespace
}  // namespace mooncake_connector
