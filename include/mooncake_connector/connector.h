// The connector: SGLang's BaseKVConnector API over any store.
//
//   auto c = Connector::Create("memory://");
//   c.value()->Set("w", tensor.view());
//   Result<std::optional<Tensor>> t = c.value()->Get("w");
//
// Thread safety: every method but Close() may be called from many threads.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <string_view>
#include <vector>

#include "mooncake_connector/export.h"
#include "mooncake_connector/status.h"
#include "mooncake_connector/store.h"
#include "mooncake_connector/tensor.h"
#include "mooncake_connector/url.h"

namespace mooncake_connector {

struct ConnectorOptions {
  // Where loaded tensors go: "cpu", "cuda" or "cuda:N". The C++ core reads
  // into host memory; the Python layer moves tensors to a CUDA device.
  std::string device = "cpu";
  // Backend options; they override the URL's query options of the same name.
  std::map<std::string, std::string> options;
};

// The URL schemes Create accepts, e.g. {"memory"}.
MC_EXPORT std::vector<std::string> SupportedSchemes();

class MC_EXPORT Connector {
 public:
  // Opens the store the URL names. InvalidArgument for a malformed URL, an
  // unknown scheme (the message lists the supported ones), an unknown option
  // or an unsupported device.
  static Result<std::unique_ptr<Connector>> Create(std::string_view url,
                                                   const ConnectorOptions& options = {});
  ~Connector();  // Close()s
  Connector(const Connector&) = delete;
  Connector& operator=(const Connector&) = delete;

  // Stores a tensor (value format: docs/value_format.md), replacing any value.
  Status Set(std::string_view key, const TensorView& tensor);
  // Stores UTF-8 text, replacing any value. InvalidArgument if not UTF-8, or
  // if the bytes form a tensor value (so that Get and GetStr never confuse
  // one kind of value for the other).
  Status SetStr(std::string_view key, std::string_view value);
  // Stores raw bytes (file contents, foreign blobs), replacing any value.
  Status SetBytes(std::string_view key, ConstBytes value);
  // nullopt for a missing key; DataLoss when the value is not a tensor value.
  Result<std::optional<Tensor>> Get(std::string_view key);
  // nullopt for a missing key; DataLoss when the value is a tensor value or
  // not UTF-8.
  Result<std::optional<std::string>> GetStr(std::string_view key);
  // The raw value; nullopt for a missing key.
  Result<std::optional<Buffer>> GetBytes(std::string_view key);
  // Keys starting with `prefix`, sorted.
  Result<std::vector<std::string>> List(std::string_view prefix);
  Result<bool> Exists(std::string_view key);
  // true if the key existed and is gone, false if it did not exist.
  Result<bool> Remove(std::string_view key);

  // A private temporary directory, created on first use and deleted (with
  // everything in it) by Close().
  Result<std::string> GetLocalDir();

  // Releases the store and deletes the local dir. Idempotent. Afterwards every
  // other method fails with FailedPrecondition. Operations under way on
  // other threads end as they would have (the store goes when the last of
  // them ends).
  Status Close();
  bool closed() const { return closed_.load(); }

  // An operation under way, held while it uses store(): Close() leaves the
  // store in place until none is held.
  class MC_EXPORT InUse {
   public:
    InUse(InUse&& other) noexcept : c_(std::exchange(other.c_, nullptr)) {}
    InUse& operator=(InUse&&) = delete;
    ~InUse();

   private:
    friend class Connector;
    explicit InUse(Connector* c) : c_(c) {}
    Connector* c_;
  };
  // FailedPrecondition (`what` is closed) once closed; `what` defaults to
  // "connector for '<url>'".
  Result<InUse> Use(std::string_view what = {});

  const Url& url() const { return url_; }
  // The URL path: the model name or key prefix.
  const std::string& model_name() const { return url_.path; }
  const std::string& device() const { return device_; }
  // REQUIRES: an InUse held (Use()).
  Store& store() { return *store_; }

 private:
  Connector(Url url, std::string device, std::shared_ptr<Store> store);

  const Url url_;
  const std::string device_;
  std::shared_ptr<Store> store_;  // dropped by Close() or the last InUse after it
  std::atomic<bool> closed_{false};
  std::mutex use_mutex_;
  int in_use_ = 0;
  std::mutex local_dir_mutex_;
  std::string local_dir_;
};

// "cpu", "cpu:N", "cuda" or "cuda:N" (N up to 3 digits).
MC_EXPORT bool IsSupportedDevice(std::string_view device);

// True if `text` is well-formed UTF-8 (no overlong forms, no surrogates).
MC_EXPORT bool IsValidUtf8(std::string_view text);

}  // namespace mooncake_connector
