// Model::PullFiles, and the check of a stored file against its manifest entry.
#include "connector/local_files_internal.h"
#include "core/hash_internal.h"
#include "mooncake_connector/model.h"

namespace mooncake_connector {
namespace {

// Whether `part` still lists `f` as it was.
bool SameEntry(const ManifestPart& part, const ManifestFile& f) {
  for (const ManifestFile& g : part.files) {
    if (g.path == f.path) return g.size == f.size && g.checksum == f.checksum;
  }
  return false;
}

}  // namespace

Result<Buffer> Model::ReadCheckedFile(const ManifestFile& f) {
  Result<Buffer> got = connector_->store().Get(FileKey(f.path));
  if (got.status().code() == StatusCode::kNotFound) {
    return DataLoss("file '" + f.path + "' is in the manifest but not in the store");
  }
  if (!got.ok()) return got.status().WithContext("reading file '" + f.path + "'");
  if (got->size() != f.size) {
    return DataLoss("file '" + f.path + "' differs from the manifest (" + std::to_string(got->size()) +
                    " bytes stored, the manifest says " + std::to_string(f.size) + ")");
  }
  if (Xxh3(got->bytes()) != f.checksum) {
    return DataLoss("file '" + f.path + "' differs from the manifest (its checksum does not match)");
  }
  return got;
}

Result<std::vector<std::string>> Model::PullFiles(const std::optional<std::vector<std::string>>& allow,
                                                  const std::optional<std::vector<std::string>>& ignore) {
  MC_ASSIGN_OR_RETURN(Connector::InUse in_use, Use());
  MC_ASSIGN_OR_RETURN(std::string dir, connector_->GetLocalDir());
  const std::string prefix = FileKey("");
  MC_ASSIGN_OR_RETURN(std::optional<ManifestPart> part, ReadManifest(std::nullopt));
  // Every file is read (and, with a manifest, checked) before any is
  // written, so a pull that fails leaves the directory as it was.
  std::vector<std::pair<std::string, Buffer>> pulled;
  if (part) {
    // The files the manifest lists; values under files/ it does not list
    // are not the model's.
    if (part->state != SaveState::kComplete) {
      return FailedPrecondition("the files of model '" + name_ +
                                "' are not completely saved (their manifest part says 'saving'): a save is "
                                "under way or was interrupted; save them again");
    }
    std::vector<const ManifestFile*> chosen;
    for (const ManifestFile& f : part->files) {
      if (!PassesFilter(allow, ignore, prefix + f.path, f.path)) continue;
      MC_RETURN_IF_ERROR(CheckStoredFileName(f.path));
      chosen.push_back(&f);
    }
    for (const ManifestFile* file : chosen) {
      const ManifestFile& f = *file;
      Result<Buffer> got = ReadCheckedFile(f);
      if (got.status().code() == StatusCode::kDataLoss) {
        // Another save may have replaced the files since the manifest was
        // read: say so rather than call its bytes damaged.
        Result<std::optional<ManifestPart>> now = ReadManifest(std::nullopt);
        if (now.ok() && (!*now || (*now)->state != SaveState::kComplete || !SameEntry(**now, f))) {
          return Aborted("the files of model '" + name_ + "' changed during the pull (a concurrent save or "
                         "remove): pull again");
        }
        return got.status().WithContext("model '" + name_ + "' (verify it, or save it again)");
      }
      MC_RETURN_IF_ERROR(got.status());
      pulled.emplace_back(f.path, std::move(*got));
    }
  } else {
    // Without a manifest (SGLang's own layout): what listing finds.
    MC_ASSIGN_OR_RETURN(std::vector<std::string> keys, connector_->List(prefix));
    std::vector<std::string> chosen;
    for (std::string& key : keys) {
      std::string relative = key.substr(prefix.size());
      if (!PassesFilter(allow, ignore, key, relative)) continue;
      MC_RETURN_IF_ERROR(CheckStoredFileName(relative));
      chosen.push_back(std::move(key));
    }
    for (const std::string& key : chosen) {
      MC_ASSIGN_OR_RETURN(std::optional<Buffer> bytes, connector_->GetBytes(key));
      if (!bytes) continue;  // removed since it was listed
      pulled.emplace_back(key.substr(prefix.size()), std::move(*bytes));
    }
  }
  std::vector<std::string> written;
  for (const auto& [relative, bytes] : pulled) {
    MC_RETURN_IF_ERROR(
        WriteFileUnder(dir, relative, bytes.bytes()).WithContext("pulling '" + prefix + relative + "'"));
    written.push_back(relative);
  }
  return written;
}

}  // namespace mooncake_connector
