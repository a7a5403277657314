// libFuzzer target: ParseManifest on arbitrary bytes must return a Status,
// never crash, hang or read out of bounds; and a manifest that parses must
// survive EncodeManifest -> ParseManifest and re-encode to the same text.
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

#include "mooncake_connector/model.h"

using namespace mooncake_connector;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Copy into an exactly-sized heap buffer so that ASan sees overreads.
  std::unique_ptr<char[]> copy(new char[size == 0 ? 1 : size]);
  if (size > 0) std::memcpy(copy.get(), data, size);
  Result<ManifestPart> part = ParseManifest(std::string_view(copy.get(), size));
  if (!part.ok()) {
    StatusCode code = part.status().code();
    if (code != StatusCode::kDataLoss && code != StatusCode::kUnimplemented) abort();
    return 0;
  }
  std::string encoded = EncodeManifest(*part);
  Result<ManifestPart> again = ParseManifest(encoded);
  if (!again.ok()) abort();  // our own output must parse
  if (EncodeManifest(*again) != encoded) abort();  // and be a fixed point
  if (again->StoredBytes() != part->StoredBytes()) abort();
  return 0;
}
