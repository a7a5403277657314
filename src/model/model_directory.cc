// Saving a Hugging Face style folder: its safetensors shards as rank 0's
// tensors, its other files as the model's files; links checked.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model_internal.h"
#include "mooncake_connector/model.h"
#include "mooncake_connector/value_format.h"

namespace mooncake_connector {
namespace {

// A read-only mapping of a whole file.
class MappedFile {
 public:
  static Result<std::unique_ptr<MappedFile>> Open(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NotFound("cannot open '" + path + "': " + std::strerror(errno));
    struct stat st{};
    if (::fstat(fd, &st) != 0) {
      int e = errno;
      ::close(fd);
      return Internal("cannot stat '" + path + "': " + std::strerror(e));
    }
    auto f = std::unique_ptr<MappedFile>(new MappedFile());
    f->size_ = static_cast<size_t>(st.st_size);
    if (f->size_ > 0) {
      void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        int e = errno;
        ::close(fd);
        return ResourceExhausted("cannot map '" + path + "': " + std::strerror(e));
      }
      f->data_ = static_cast<std::byte*>(p);
    }
    f->fd_ = fd;  // kept to notice a change of the file while it is saved
    f->mtime_ = st.st_mtim;
    return f;
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(data_, size_);
    if (fd_ >= 0) ::close(fd_);
  }
  ConstBytes bytes() const { return {data_, size_}; }

  // InvalidArgument naming `name` when the file was truncated or rewritten
  // since it was mapped: its bytes are no longer the ones being saved (and
  // pages past a new end cannot be read at all).
  Status Unchanged(const std::string& name) const {
    struct stat st{};
    if (::fstat(fd_, &st) != 0) return Internal("cannot stat '" + name + "': " + std::strerror(errno));
    if (static_cast<size_t>(st.st_size) == size_ && st.st_mtim.tv_sec == mtime_.tv_sec &&
        st.st_mtim.tv_nsec == mtime_.tv_nsec) {
      return Status::Ok();
    }
    return InvalidArgument("'" + name + "' changed while it was being saved (" + std::to_string(st.st_size) +
                           " bytes now, " + std::to_string(size_) + " when the save began): the save stops "
                           "unfinished; save again once the folder is stable");
  }

 private:
  MappedFile() = default;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
  int fd_ = -1;
  struct timespec mtime_{};
};

bool IsOtherWeightFormat(const std::string& name) {
  for (const char* ext : {".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx"}) {
    size_t n = std::strlen(ext);
    if (name.size() >= n && name.compare(name.size() - n, n, ext) == 0) return true;
  }
  return false;
}

// Where a link in a saved folder may point: inside the folder, and for a
// Hugging Face cache snapshot (REPO/snapshots/REV, whose files are relative
// links into REPO/blobs) inside that repository's blobs.
Result<std::vector<std::filesystem::path>> LinkAreas(const std::filesystem::path& top) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path root = fs::canonical(top, ec);
  if (ec) return NotFound("cannot resolve '" + top.string() + "': " + ec.message());
  std::vector<fs::path> areas = {root};
  if (root.parent_path().filename() == "snapshots") areas.push_back(root.parent_path().parent_path() / "blobs");
  return areas;
}

bool IsWithin(const std::filesystem::path& path, const std::filesystem::path& area) {
  std::filesystem::path rel = path.lexically_relative(area);
  return !rel.empty() && *rel.begin() != "..";
}

// A link met while saving a folder: it must resolve, must not lead back into
// a folder it sits in (a loop), and must stay inside the folder (or the
// cache's blobs) unless `anywhere`, so that saving a folder never uploads a
// file the folder only points at by accident (a key, a home directory).
Status CheckLink(const std::filesystem::path& link, const std::string& rel,
                 const std::vector<std::filesystem::path>& areas, bool anywhere) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path target = fs::canonical(link, ec);
  if (ec) return NotFound("'" + rel + "' is a link that does not resolve: " + ec.message());
  fs::path parent = fs::canonical(link.parent_path(), ec);
  if (!ec && fs::is_directory(target, ec) && (parent == target || IsWithin(parent, target))) {
    return InvalidArgument("'" + rel + "' links to '" + target.string() + "', a folder it is inside (a loop)");
  }
  if (anywhere) return Status::Ok();
  for (const fs::path& area : areas) {
    if (target == area || IsWithin(target, area)) return Status::Ok();
  }
  return InvalidArgument("'" + rel + "' links to '" + target.string() + "', outside the folder '" +
                         areas.front().string() +
                         "': copy it in, or allow links outside the folder (--follow-links-outside)");
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

Status Model::SaveDirectory(const std::string& dir, const SaveOptions& options) {
  MC_ASSIGN_OR_RETURN(Connector::InUse in_use, Use());
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return NotFound("'" + dir + "' is not a directory");
  std::vector<std::string> shards, others;
  fs::path top = fs::path(dir).lexically_normal();
  if (!top.has_filename() && top.has_parent_path() && top != top.root_path()) top = top.parent_path();  // "dir/"
  MC_ASSIGN_OR_RETURN(std::vector<fs::path> link_areas, LinkAreas(top));
  for (auto it = fs::recursive_directory_iterator(top, fs::directory_options::follow_directory_symlink, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    // The name as the user sees it in the folder, never the link's target.
    std::string rel = it->path().lexically_relative(top).generic_string();
    std::string base = it->path().filename().string();
    if (!base.empty() && base[0] == '.') {  // hidden files and folders (.git, .cache)
      if (it->is_directory()) it.disable_recursion_pending();
      continue;
    }
    if (it->is_symlink()) {
      MC_RETURN_IF_ERROR(CheckLink(it->path(), rel, link_areas, options.links_outside));
    }
    if (!it->is_regular_file()) continue;
    if (EndsWith(base, ".safetensors")) {
      shards.push_back(rel);
    } else if (!IsOtherWeightFormat(base)) {
      others.push_back(rel);
    }
  }
  if (ec) return Internal("listing '" + dir + "': " + ec.message());
  if (shards.empty()) return InvalidArgument("'" + dir + "' has no *.safetensors weights");
  // Every name is checked before anything is written.
  for (const std::string& rel : others) MC_RETURN_IF_ERROR(CheckFileToSave(rel));
  std::sort(shards.begin(), shards.end());
  std::sort(others.begin(), others.end());

  std::vector<std::unique_ptr<MappedFile>> mapped;
  std::vector<NamedTensorView> tensors;
  std::map<std::string, std::string> shard_of;
  for (const std::string& rel : shards) {
    MC_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> f, MappedFile::Open(dir + "/" + rel));
    Result<std::vector<NamedTensorLayout>> layout = ParseSafetensors(f->bytes());
    if (!layout.ok()) return layout.status().WithContext("shard '" + rel + "'");
    for (NamedTensorLayout& e : *layout) {
      ConstBytes data = f->bytes().subspan(e.layout.data_begin, e.layout.data_end - e.layout.data_begin);
      MC_ASSIGN_OR_RETURN(TensorView view, MakeTensorView(e.layout.dtype, e.layout.shape, data));
      if (!shard_of.emplace(e.name, rel).second) {
        return InvalidArgument("tensor '" + e.name + "' is in both '" + shard_of[e.name] + "' and '" + rel + "'");
      }
      tensors.push_back({e.name, view});
    }
    mapped.push_back(std::move(f));
  }
  // Safetensors orders a file's tensors by name; keep that order overall.
  std::stable_sort(tensors.begin(), tensors.end(),
                   [](const NamedTensorView& a, const NamedTensorView& b) { return a.name < b.name; });
  std::vector<std::unique_ptr<MappedFile>> file_maps;
  std::vector<FileContent> files;
  for (const std::string& rel : others) {
    MC_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> f, MappedFile::Open(dir + "/" + rel));
    if (EndsWith(rel, "model.safetensors.index.json")) {
      MC_RETURN_IF_ERROR(CheckShardIndex(f->bytes(), shard_of, rel));
    }
    files.push_back({rel, f->bytes()});
    file_maps.push_back(std::move(f));
  }
  uint64_t tensor_bytes = 0;
  for (const NamedTensorView& t : tensors) tensor_bytes += t.tensor.nbytes;
  SaveOptions tensor_options = options;
  SaveOptions file_options = options;
  if (options.progress) {
    // One progress over both parts.
    uint64_t file_bytes = 0;
    for (const FileContent& f : files) file_bytes += f.bytes.size();
    tensor_options.progress = [&, file_bytes](uint64_t done, uint64_t total) {
      options.progress(done, total + file_bytes);
    };
    file_options.progress = [&, tensor_bytes](uint64_t done, uint64_t total) {
      options.progress(tensor_bytes + done, tensor_bytes + total);
    };
  }
  tensor_options.world_size = 1;
  tensor_options.layout = ModelLayout::kCheckpoint;  // the checkpoint's own names, unsharded
  file_options.world_size = 1;
  // A shard truncated or rewritten under the save stops it at the next
  // batch with its name, instead of transfers failing on pages past its end.
  auto unchanged = [&, caller = options.check_sources]() -> Status {
    for (size_t i = 0; i < mapped.size(); ++i) MC_RETURN_IF_ERROR(mapped[i]->Unchanged(shards[i]));
    for (size_t i = 0; i < file_maps.size(); ++i) MC_RETURN_IF_ERROR(file_maps[i]->Unchanged(others[i]));
    return caller ? caller() : Status::Ok();
  };
  tensor_options.check_sources = unchanged;
  file_options.check_sources = unchanged;
  MC_RETURN_IF_ERROR(SaveStateDict(0, tensors, tensor_options));
  return SaveFiles(files, file_options);
}

Status CheckShardIndex(ConstBytes index, const std::map<std::string, std::string>& shard_of,
                       const std::string& where) {
  using nlohmann::json;
  json j = json::parse(index.begin(), index.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
    return InvalidArgument("'" + where + "' has no weight_map object");
  }
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (shard_of.count(it.key()) == 0) {
      return InvalidArgument("'" + where + "' names tensor '" + it.key() + "', which no shard holds");
    }
  }
  if (j["weight_map"].size() != shard_of.size()) {
    return InvalidArgument("the shards hold " + std::to_string(shard_of.size()) + " tensors but '" + where +
                           "' names " + std::to_string(j["weight_map"].size()));
  }
  return Status::Ok();
}

}  // namespace mooncake_connector
