// The model manifest's format: round trips, hand-written manifests, and the
// malformed ones a hostile store could hold (model.h: ParseManifest,
// EncodeManifest). The save and load paths are in model_test.cc.
#include "mooncake_connector/model.h"

#include <gtest/gtest.h>

#include <string>
#include <string_view>

#include "model_test_util.h"

namespace mooncake_connector {
namespace {

using namespace model_test;


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
  p.checksum_piece = 0;  // files' checksums are of all their bytes
  return p;
}

void ExpectSamePart(const ManifestPart& a, const ManifestPart& b) {
  EXPECT_EQ(a.format_version, b.format_version);
  EXPECT_EQ(a.tool, b.tool);
  EXPECT_EQ(a.created, b.created);
  EXPECT_EQ(a.state, b.state);
  EXPECT_EQ(a.rank, b.rank);
  EXPECT_EQ(a.world_size, b.world_size);
  EXPECT_EQ(a.checksum_piece, b.checksum_piece);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    EXPECT_EQ(a.tensors[i].name, b.tensors[i].name);
    EXPECT_EQ(a.tensors[i].dtype, b.tensors[i].dtype);
    EXPECT_EQ(a.tensors[i].shape, b.tensors[i].shape);
    EXPECT_EQ(a.tensors[i].nbytes, b.tensors[i].nbytes);
    EXPECT_EQ(a.tensors[i].checksum, b.tensors[i].checksum);
    EXPECT_EQ(a.tensors[i].alias_of, b.tensors[i].alias_of);
  }
  EXPECT_EQ(a.layout, b.layout);
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
      {Manifest("\"world_size\": 1, \"rank\": 0, \"layout\": \"sharded\", \"tensors\": []"),
       "unknown model layout 'sharded'"},
      {Manifest("\"world_size\": 1, \"rank\": 0, \"layout\": 1, \"tensors\": []"), "\"layout\" is not a string"},
      {Manifest("\"world_size\": 2, \"rank\": 0, \"layout\": \"checkpoint\", \"tensors\": []"),
       "checkpoint-layout part has world_size 2"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    EXPECT_STATUS(ParseManifest(c.text).status(), kDataLoss, c.fragment);
    EXPECT_STATUS(ParseManifest(c.text).status(), kDataLoss, "invalid model manifest");
  }
}

TEST(ModelManifest, LayoutRoundTripsAndDefaultsToEngine) {
  ManifestPart part = SampleRankPart();
  EXPECT_TRUE(Contains(EncodeManifest(part), "\"layout\": \"engine\"")) << EncodeManifest(part);
  part.world_size = 1;
  part.rank = 0;
  part.layout = ModelLayout::kCheckpoint;
  std::string text = EncodeManifest(part);
  EXPECT_TRUE(Contains(text, "\"layout\": \"checkpoint\"")) << text;
  Result<ManifestPart> back = ParseManifest(text);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->layout, ModelLayout::kCheckpoint);
  // Parts written before the layout existed are an engine's.
  Result<ManifestPart> old = ParseManifest(RankWith(TensorJson("a")));
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(old->layout, ModelLayout::kEngine);
}

std::vector<ManifestTensor> Sized(std::initializer_list<uint64_t> sizes) {
  std::vector<ManifestTensor> out;
  for (uint64_t n : sizes) {
    out.push_back({"t" + std::to_string(out.size()), DType::kU8, {static_cast<int64_t>(n)}, n, 0, ""});
  }
  return out;
}

TEST(PlanShares, SharesAreDisjointCoverEverythingAndBalance) {
  std::vector<ManifestTensor> tensors = Sized({100, 5, 70, 30, 30, 1, 0, 64, 64, 200, 3});
  for (int world : {1, 2, 3, 4, 16}) {
    for (uint64_t batch : {uint64_t{1}, uint64_t{100}, uint64_t{1} << 30}) {
      SCOPED_TRACE(std::to_string(world) + " loaders, batches of " + std::to_string(batch));
      std::vector<ShareBatch> plan = PlanShares(tensors, world, batch);
      std::vector<uint64_t> covered(tensors.size(), 0);  // bytes, pieces in order
      std::vector<uint64_t> load(world, 0);
      uint64_t largest = 0;
      size_t begin = 0;
      for (const ShareBatch& b : plan) {
        EXPECT_GT(b.end, begin);
        for (const SharePiece& p : b.pieces) {
          EXPECT_GE(p.index, begin);
          EXPECT_LT(p.index, b.end);
          ASSERT_GE(p.owner, 0);
          ASSERT_LT(p.owner, world);
          EXPECT_EQ(p.offset, covered[p.index]) << "pieces of tensor " << p.index << " in order, no gap";
          EXPECT_EQ(p.whole, p.offset == 0 && p.size == tensors[p.index].nbytes);
          covered[p.index] += p.size;
          load[p.owner] += p.size;
          largest = std::max(largest, p.size);
        }
        begin = b.end;
      }
      EXPECT_EQ(begin, tensors.size());
      for (size_t i = 0; i < tensors.size(); ++i) EXPECT_EQ(covered[i], tensors[i].nbytes) << i;
      uint64_t total = 0;
      for (const ManifestTensor& t : tensors) total += t.nbytes;
      for (uint64_t l : load) EXPECT_LE(l, total / world + largest);
      if (world > 1 && batch == 1) EXPECT_LE(largest, (200 + world - 1) / world) << "every tensor split";
    }
  }
}

TEST(PlanShares, ATensorLargerThanAShareIsSplitByRowsAmongTheLoaders) {
  std::vector<ManifestTensor> tensors = Sized({40, 10});
  tensors[0].shape = {10, 4};  // rows of 4 bytes
  tensors.push_back({"t2", DType::kF32, {}, 4, 0, ""});  // a scalar: never split
  std::vector<ShareBatch> plan = PlanShares(tensors, 3, 1 << 20);
  ASSERT_EQ(plan.size(), 1u);
  std::vector<SharePiece> split;
  for (const SharePiece& p : plan[0].pieces) {
    if (p.index == 0) split.push_back(p);
  }
  ASSERT_EQ(split.size(), 3u);  // the share is 18 bytes: 40 > 18
  std::vector<int> owners;
  for (const SharePiece& p : split) {
    EXPECT_FALSE(p.whole);
    EXPECT_EQ(p.offset % 4, 0u);
    EXPECT_EQ(p.size % 4, 0u);
    owners.push_back(p.owner);
  }
  std::sort(owners.begin(), owners.end());
  EXPECT_EQ(owners, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(split[0].size + split[1].size + split[2].size, 40u);
  // Pieces of at least 20 bytes: two.
  std::vector<ShareBatch> two = PlanShares(tensors, 3, 1 << 20, true, 20);
  EXPECT_EQ(std::count_if(two[0].pieces.begin(), two[0].pieces.end(), [](const SharePiece& p) { return p.index == 0; }),
            2);
  std::vector<ShareBatch> none = PlanShares(tensors, 3, 1 << 20, /*split=*/false);
  EXPECT_EQ(none[0].pieces.size(), 3u);
  // Two loaders and a tensor of one row: not split.
  std::vector<ManifestTensor> one = Sized({40});
  one[0].shape = {1, 40};
  std::vector<ShareBatch> whole = PlanShares(one, 2, 1);
  ASSERT_EQ(whole[0].pieces.size(), 1u);
  EXPECT_TRUE(whole[0].pieces[0].whole);
}

TEST(PlanShares, AnAliasReadsItsTargetInItsBatchOnce) {
  std::vector<ManifestTensor> tensors = Sized({10, 10, 10});
  tensors[0].alias_of = "t2";  // before its target
  tensors[1].alias_of = "t2";
  std::vector<ShareBatch> plan = PlanShares(tensors, 2, 1);
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_EQ(plan[0].end, 1u);  // the alias's batch reads its target
  ASSERT_FALSE(plan[0].pieces.empty());
  for (const SharePiece& p : plan[0].pieces) EXPECT_EQ(p.index, 2u);
  EXPECT_EQ(plan[1].end, 3u);  // and nothing is read twice
  EXPECT_TRUE(plan[1].pieces.empty());
}

TEST(ModelManifest, NewerFormatVersionIsUnimplemented) {
  std::string text = Manifest("\"world_size\": 1, \"files\": []", "complete",
                              "mooncake-connector-model-manifest", 5);
  Status s = ParseManifest(text).status();
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented) << s;
  EXPECT_TRUE(Contains(s.message(), "version 5")) << s;
  // Version 3 names the save.
  EXPECT_TRUE(Contains(ParseManifest(Manifest("\"world_size\": 1, \"files\": []", "complete",
                                              "mooncake-connector-model-manifest", 3))
                           .status()
                           .message(),
                       "lacks \"save\""));
  // Version 1 (values without the marker) is still read.
  Result<ManifestPart> v1 = ParseManifest(Manifest("\"world_size\": 1, \"files\": []", "complete",
                                                   "mooncake-connector-model-manifest", 1));
  ASSERT_TRUE(v1.ok()) << v1.status();
  EXPECT_EQ(v1->format_version, 1);
}

}  // namespace
}  // namespace mooncake_connector
