#include "mooncake_connector/connector.h"

#include <stdlib.h>

#include <filesystem>
#include <system_error>

#include "mooncake_connector/memory_store.h"
#include "mooncake_connector/mooncake_store.h"
#include "mooncake_connector/value_format.h"

namespace mooncake_connector {
namespace {

using Options = std::map<std::string, std::string>;

Status CheckKnownOptions(const Url& url, const Options& options,
                         std::initializer_list<std::string_view> known) {
  for (const auto& [name, value] : options) {
    bool ok = false;
    for (std::string_view k : known) ok = ok || name == k;
    if (!ok) {
      std::string list;
      for (std::string_view k : known) list += (list.empty() ? "" : ", ") + std::string(k);
      return InvalidArgument("unknown option '" + name + "' for " + url.scheme + "://" +
                             " (known: " + (list.empty() ? "none" : list) + ")");
    }
  }
  return Status::Ok();
}

Result<std::shared_ptr<Store>> OpenMemory(const Url& url, const Options& options) {
  MC_RETURN_IF_ERROR(CheckKnownOptions(url, options, {"capacity", "pinned"}));
  if (url.port) return InvalidArgument("memory:// URLs take a store name, not a port");
  MemoryStoreOptions store_options;
  if (auto it = options.find("capacity"); it != options.end()) {
    MC_ASSIGN_OR_RETURN(store_options.capacity_bytes, ParseByteSize(it->second));
  }
  if (auto it = options.find("pinned"); it != options.end()) {
    if (it->second != "0" && it->second != "1") {
      return InvalidArgument("memory:// option pinned must be 0 or 1, got '" + it->second + "'");
    }
    store_options.pinned = it->second == "1";
  }
  return OpenNamedMemoryStore(url.host, store_options);
}

Result<std::shared_ptr<Store>> OpenMooncake(const Url& url, const Options& options) {
  MC_ASSIGN_OR_RETURN(MooncakeConfig config, MooncakeConfigFrom(url, options));
  return OpenMooncakeStore(config);
}

struct Backend {
  std::string_view scheme;
  Result<std::shared_ptr<Store>> (*open)(const Url&, const Options&);
};

constexpr Backend kBackends[] = {
    {"memory", &OpenMemory},
    {"mooncake", &OpenMooncake},
};

}  // namespace

std::vector<std::string> SupportedSchemes() {
  std::vector<std::string> out;
  for (const Backend& b : kBackends) out.emplace_back(b.scheme);
  return out;
}

bool IsSupportedDevice(std::string_view device) {
  for (std::string_view kind : {"cpu", "cuda"}) {
    if (device == kind) return true;
    if (device.starts_with(kind) && device.size() > kind.size() + 1 && device[kind.size()] == ':' &&
        device.size() <= kind.size() + 4 &&
        device.substr(kind.size() + 1).find_first_not_of("0123456789") == std::string_view::npos) {
      return true;
    }
  }
  return false;
}

Result<std::unique_ptr<Connector>> Connector::Create(std::string_view text,
                                                     const ConnectorOptions& options) {
  MC_ASSIGN_OR_RETURN(Url url, ParseUrl(text));
  if (!IsSupportedDevice(options.device)) {
    return InvalidArgument("device '" + options.device + "' is not supported; use \"cpu\" or \"cuda[:N]\"");
  }
  Options merged = url.query;
  for (const auto& [k, v] : options.options) merged[k] = v;
  for (const Backend& b : kBackends) {
    if (b.scheme != url.scheme) continue;
    MC_ASSIGN_OR_RETURN(std::shared_ptr<Store> store, b.open(url, merged));
    return std::unique_ptr<Connector>(new Connector(std::move(url), options.device, std::move(store)));
  }
  std::string list;
  for (const std::string& s : SupportedSchemes()) list += (list.empty() ? "" : ", ") + s + "://";
  return InvalidArgument("unsupported URL scheme '" + url.scheme + "://' in '" + std::string(text) +
                         "'; supported: " + list);
}

Connector::Connector(Url url, std::string device, std::shared_ptr<Store> store)
    : url_(std::move(url)), device_(std::move(device)), store_(std::move(store)) {}

Connector::~Connector() { (void)Close(); }

Result<Connector::InUse> Connector::Use(std::string_view what) {
  std::lock_guard lock(use_mutex_);
  if (closed_.load()) {
    return FailedPrecondition((what.empty() ? "connector for '" + url_.ToString() + "'" : std::string(what)) +
                              " is closed");
  }
  ++in_use_;
  return InUse(this);
}

Connector::InUse::~InUse() {
  if (c_ == nullptr) return;
  std::shared_ptr<Store> last;  // dropped outside the lock
  std::lock_guard lock(c_->use_mutex_);
  if (--c_->in_use_ == 0 && c_->closed_.load()) last = std::move(c_->store_);
}

Status Connector::Set(std::string_view key, const TensorView& tensor) {
  MC_ASSIGN_OR_RETURN(InUse in_use, Use());
  MC_ASSIGN_OR_RETURN(EncodedTensor encoded, EncodeTensor(tensor));
  auto parts = encoded.parts();
  return store_->Put(key, parts);
}

Status Connector::SetStr(std::string_view key, std::string_view value) {
  MC_ASSIGN_OR_RETURN(InUse in_use, Use());
  if (!IsValidUtf8(value)) return InvalidArgument("value for '" + std::string(key) + "' is not UTF-8");
  ConstBytes bytes = std::as_bytes(std::span(value.data(), value.size()));
  // Keeps get/getstr unambiguous: no string value ever decodes as a tensor.
  if (ParseTensorValue(bytes).ok()) {
    return InvalidArgument("text for '" + std::string(key) +
                           "' is a valid tensor value (safetensors bytes); store it with set()");
  }
  return store_->Put(key, bytes);
}

Status Connector::SetBytes(std::string_view key, ConstBytes value) {
  MC_ASSIGN_OR_RETURN(InUse in_use, Use());
  return store_->Put(key, value);
}

namespace {
// Get's result with NotFound turned into nullopt.
Result<std::optional<Buffer>> GetOptional(Store& store, std::string_view key) {
  Result<Buffer> value = store.Get(key);
  if (value.ok()) return std::optional<Buffer>(std::move(*value));
  if (value.status().code() == StatusCode::kNotFound) return std::optional<Buffer>();
  return value.status();
}
}  // namespace

Result<std::optional<Tensor>> Connector::Get(std::string_view key) {
  MC_ASSIGN_OR_RETURN(InUse in_use, Use());
  MC_ASSIGN_OR_RETURN(std::optional<Buffer> value, GetOptional(*store_, key));
  if (!value) return std::optional<Tensor>();
  Result<Tensor> tensor = DecodeTensor(*value);
  if (!tensor.ok()) return tensor.status().WithContext("value of key '" + std::string(key) + "'");
  return std::optional<Tensor>(std::move(*tensor));
}

Result<std::optional<std::string>> Connector::GetStr(std::string_view key) {
  MC_ASSIGN_OR_RETURN(InUse in_use, Use());
  MC_ASSIGN_OR_RETURN(std::optional<Buffer> value, GetOptional(*store_, key));
  if (!value) return std::optional<std::string>();
  std::string text(reinterpret_cast<const char*>(value->data()), value->size());
  if (ParseTensorValue(value->bytes()).ok()) {
    return DataLoss("value of key '" + std::string(key) + "' is a tensor; read it with get()");
  }
  if (!IsValidUtf8(text)) {
    return DataLoss("value of key '" + std::string(key) +
                    "' is not UTF-8 text (was it written with set() as a tensor?)");
  }
  return std::optional<std::string>(std::move(text));
}

Result<std::optional<Buffer>> Connector::GetBytes(std::string_view key) {
  MC_ASSIGN_OR_RETURN(InUse in_use, Use());
  return GetOptional(*store_, key);
}

Result<std::vector<std::string>> Connector::List(std::string_view prefix) {
  MC_ASSIGN_OR_RETURN(InUse in_use, Use());
  return store_->List(prefix);
}

Result<bool> Connector::Exists(std::string_view key) {
  MC_ASSIGN_OR_RETURN(InUse in_use, Use());
  return store_->Exists(key);
}

Result<bool> Connector::Remove(std::string_view key) {
  MC_ASSIGN_OR_RETURN(InUse in_use, Use());
  Status s = store_->Remove(key);
  if (s.ok()) return true;
  if (s.code() == StatusCode::kNotFound) return false;
  return s;
}

Result<std::string> Connector::GetLocalDir() {
  MC_ASSIGN_OR_RETURN(InUse in_use, Use());
  std::lock_guard lock(local_dir_mutex_);
  if (local_dir_.empty()) {
    std::error_code ec;
    std::filesystem::path base = std::filesystem::temp_directory_path(ec);
    if (ec) return Internal("no temporary directory: " + ec.message());
    std::string pattern = (base / "mooncake_connector-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) {
      return Internal("cannot create a directory under " + base.string() + ": " +
                      std::error_code(errno, std::generic_category()).message());
    }
    local_dir_ = pattern;
  }
  return local_dir_;
}

Status Connector::Close() {
  std::shared_ptr<Store> store;  // dropped outside the lock, unless in use
  {
    std::lock_guard lock(use_mutex_);
    if (closed_.exchange(true)) return Status::Ok();
    if (in_use_ == 0) store = std::move(store_);
  }
  store.reset();
  std::lock_guard lock(local_dir_mutex_);
  if (!local_dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(local_dir_, ec);
    if (ec) return Internal("cannot remove " + local_dir_ + ": " + ec.message());
    local_dir_.clear();
  }
  return Status::Ok();
}

bool IsValidUtf8(std::string_view text) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = p + text.size();
  while (p < end) {
    unsigned char c = *p;
    if (c < 0x80) {
      ++p;
      continue;
    }
    int extra;
    uint32_t min, cp;
    if ((c & 0xE0) == 0xC0) { extra = 1; min = 0x80; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { extra = 2; min = 0x800; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { extra = 3; min = 0x10000; cp = c & 0x07; }
    else return false;
    if (end - p <= extra) return false;
    for (int i = 1; i <= extra; ++i) {
      if ((p[i] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    p += extra + 1;
  }
  return true;
}

}  // namespace mooncake_connector
