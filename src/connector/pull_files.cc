// Connector::PullFiles: a model's files from the store into the local dir.
#include "connector/local_files_internal.h"
#include "mooncake_connector/connector.h"

namespace mooncake_connector {

Result<std::vector<std::string>> Connector::PullFiles(
    const std::optional<std::vector<std::string>>& allow,
    const std::optional<std::vector<std::string>>& ignore) {
  MC_ASSIGN_OR_RETURN(std::string dir, GetLocalDir());
  const std::string prefix = model_name() + "/files/";
  MC_ASSIGN_OR_RETURN(std::vector<std::string> keys, List(prefix));
  struct File {
    std::string key;
    std::string relative;
  };
  std::vector<File> chosen;
  for (std::string& key : keys) {
    std::string relative = key.substr(prefix.size());
    if (!PassesFilter(allow, ignore, key, relative)) continue;
    // Every name is checked before anything is written.
    MC_RETURN_IF_ERROR(CheckStoredFileName(relative));
    chosen.push_back({std::move(key), std::move(relative)});
  }
  std::vector<std::string> written;
  for (const File& f : chosen) {
    MC_ASSIGN_OR_RETURN(std::optional<Buffer> bytes, GetBytes(f.key));
    if (!bytes) continue;  // removed since it was listed
    MC_RETURN_IF_ERROR(WriteFileUnder(dir, f.relative, bytes->bytes()).WithContext("pulling '" + f.key + "'"));
    written.push_back(f.relative);
  }
  return written;
}

}  // namespace mooncake_connector
