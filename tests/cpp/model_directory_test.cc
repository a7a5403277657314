// Saving a Hugging Face folder (shards, index, other files) and what a bad
// folder gets. The state-dict save and load paths are in model_test.cc.
#include "mooncake_connector/model.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "mooncake_connector/connector.h"
#include "mooncake_connector/value_format.h"
#include "model_test_util.h"

namespace mooncake_connector {
namespace {

namespace fs = std::filesystem;
using namespace model_test;

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

  Result<std::vector<std::string>> pulled = m.PullFiles();
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
