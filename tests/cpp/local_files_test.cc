#include "connector/local_files_internal.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace mooncake_connector {
namespace {

namespace fs = std::filesystem;

ConstBytes AsBytes(std::string_view s) {
  return ConstBytes(reinterpret_cast<const std::byte*>(s.data()), s.size());
}

std::string Read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "local_files_test-XXXXXX").string();
    path_ = mkdtemp(pattern.data());
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

TEST(FnMatch, PythonFnmatchSemantics) {
  EXPECT_TRUE(FnMatch("*config.json", "m/files/sub/config.json"));  // '*' crosses '/'
  EXPECT_TRUE(FnMatch("*.json", "a.json"));
  EXPECT_FALSE(FnMatch("*.json", "a.jsonl"));
  EXPECT_TRUE(FnMatch("?.txt", "a.txt"));
  EXPECT_TRUE(FnMatch("[!c]*", "tokenizer.json"));
  EXPECT_FALSE(FnMatch("[!c]*", "config.json"));
  EXPECT_TRUE(FnMatch("*", ".hidden"));           // no special leading period
  EXPECT_TRUE(FnMatch("a\\b", "a\\b"));           // backslash is literal
  EXPECT_FALSE(FnMatch("Config.json", "config.json"));  // case-sensitive
}

TEST(PassesFilter, AllowThenIgnoreOverKeyOrRelativePath) {
  using List = std::vector<std::string>;
  using Patterns = std::optional<List>;
  EXPECT_TRUE(PassesFilter(std::nullopt, std::nullopt, "m/files/x", "x"));
  EXPECT_FALSE(PassesFilter(Patterns(List{}), std::nullopt, "m/files/x", "x"));
  EXPECT_TRUE(PassesFilter(Patterns(List{"x"}), std::nullopt, "m/files/x", "x"));
  EXPECT_TRUE(PassesFilter(Patterns(List{"m/*"}), std::nullopt, "m/files/x", "x"));
  EXPECT_FALSE(PassesFilter(Patterns(List{"*"}), Patterns(List{"*x"}), "m/files/x", "x"));
}

TEST(CheckStoredFileName, RefusesEscapes) {
  for (const char* ok : {"config.json", "a/b/c.txt", "..hidden", "a..b", "dir/.x"}) {
    EXPECT_TRUE(CheckStoredFileName(ok).ok()) << ok;
  }
  for (const char* bad : {"", "/etc/passwd", "..", "../x", "a/../../x", "a//b", "./x", "a/.", "a/"}) {
    Status s = CheckStoredFileName(bad);
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << bad;
  }
}

TEST(WriteFileUnder, CreatesDirectoriesAndReplacesFiles) {
  TempDir d;
  ASSERT_TRUE(WriteFileUnder(d.path(), "a/b/c.bin", AsBytes(std::string("\0\1\2", 3))).ok());
  EXPECT_EQ(Read(d.path() / "a/b/c.bin"), std::string("\0\1\2", 3));
  ASSERT_TRUE(WriteFileUnder(d.path(), "a/b/c.bin", AsBytes("new")).ok());
  EXPECT_EQ(Read(d.path() / "a/b/c.bin"), "new");
  ASSERT_TRUE(WriteFileUnder(d.path(), "empty", AsBytes("")).ok());
  EXPECT_TRUE(fs::exists(d.path() / "empty"));
}

TEST(WriteFileUnder, NeverFollowsSymlinks) {
  TempDir d, outside;
  fs::create_directory_symlink(outside.path(), d.path() / "dir");
  Status s = WriteFileUnder(d.path(), "dir/x", AsBytes("pwned"));
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s;
  EXPECT_TRUE(fs::is_empty(outside.path()));
  std::ofstream(outside.path() / "victim") << "keep";
  fs::create_symlink(outside.path() / "victim", d.path() / "file");
  ASSERT_TRUE(WriteFileUnder(d.path(), "file", AsBytes("new")).ok());
  EXPECT_EQ(Read(outside.path() / "victim"), "keep");
  EXPECT_FALSE(fs::is_symlink(d.path() / "file"));
  EXPECT_EQ(Read(d.path() / "file"), "new");
}

}  // namespace
}  // namespace mooncake_connector
