// Connector URLs: scheme://[host[:port]][/path][?key=value&...]
// The path (without its leading '/') names a model or key prefix; query
// options configure the backend. Path and query are percent-decoded.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "mooncake_connector/export.h"
#include "mooncake_connector/status.h"

namespace mooncake_connector {

struct Url {
  std::string scheme;  // lower case, e.g. "memory", "mooncake"
  std::string host;    // may be empty; IPv6 literals keep their brackets
  std::optional<uint16_t> port;
  std::string path;    // decoded, no leading '/'
  std::map<std::string, std::string> query;  // decoded

  // "host:port", "host" or "".
  std::string Authority() const;
  // Canonical form; ParseUrl(u.ToString()) == u.
  std::string ToString() const;
  bool operator==(const Url&) const = default;
};

// InvalidArgument with the reason for a malformed URL (no "://", bad scheme,
// bad port, bad percent escape, repeated query key).
MC_EXPORT Result<Url> ParseUrl(std::string_view text);

// Parses "4gb", "512MB", "1.5g", "65536", "0": binary units (k = 1024) with
// optional "b"/"ib" suffix, case-insensitive. InvalidArgument otherwise.
MC_EXPORT Result<uint64_t> ParseByteSize(std::string_view text);

}  // namespace mooncake_connector
