// Writing stored files into a connector's local directory (pull_files):
// names come from the store, so they are untrusted. Nothing may land outside
// the directory: no absolute paths, no "..", no symlinks followed.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mooncake_connector/buffer.h"
#include "mooncake_connector/status.h"

namespace mooncake_connector {

// Python's fnmatch.fnmatch on POSIX (no case folding, '*' matches '/', no
// escape character), which SGLang's pull_files uses.
bool FnMatch(std::string_view pattern, std::string_view text);

// SGLang's filter: with `allow`, keep paths matching one of its patterns;
// then drop paths matching one of `ignore`. A pattern counts when it matches
// `key` or `relative` (SGLang matches the whole key; patterns written for the
// file name alone work too).
bool PassesFilter(const std::optional<std::vector<std::string>>& allow,
                  const std::optional<std::vector<std::string>>& ignore, std::string_view key,
                  std::string_view relative);

// OK if `relative` is a safe relative file path: non-empty, not absolute,
// no empty, "." or ".." components. DataLoss naming it otherwise.
Status CheckStoredFileName(std::string_view relative);

// Writes `bytes` to `relative` under the directory `root`, creating parent
// directories. Every component is opened without following symlinks, so a
// symlink planted inside `root` cannot redirect the write; an existing file
// is replaced atomically (written beside it, then renamed).
// REQUIRES: CheckStoredFileName(relative).ok().
Status WriteFileUnder(const std::string& root, std::string_view relative, ConstBytes bytes);

}  // namespace mooncake_connector
