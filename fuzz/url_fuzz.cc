// libFuzzer target: ParseUrl never crashes, and what it accepts round-trips
// through Url::ToString().
#include <string_view>

#include "mooncake_connector/url.h"

using namespace mooncake_connector;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  Result<Url> url = ParseUrl(text);
  if (url.ok()) {
    Result<Url> again = ParseUrl(url->ToString());
    if (!again.ok() || !(*again == *url)) __builtin_trap();
  }
  (void)ParseByteSize(text);
  return 0;
}
