// Stores a tensor and a string on the embedded store and reads them back,
// using only the installed public headers.
#include <cstdio>
#include <cstring>

#include "mooncake_connector/connector.h"

using namespace mooncake_connector;

int main() {
  Result<std::unique_ptr<Connector>> connector = Connector::Create("memory://example/my-model");
  if (!connector.ok()) {
    std::fprintf(stderr, "%s\n", connector.status().ToString().c_str());
    return 1;
  }
  Connector& c = **connector;

  Result<Tensor> weight = Tensor::Allocate(DType::kF32, {2, 3});
  if (!weight.ok()) return 1;
  for (int i = 0; i < 6; ++i) reinterpret_cast<float*>(weight->data())[i] = 0.5f * i;
  if (Status s = c.Set("my_model_weight", weight->view()); !s.ok()) {
    std::fprintf(stderr, "set: %s\n", s.ToString().c_str());
    return 1;
  }
  if (Status s = c.SetStr("config_json", R"({"hidden_size": 1024})"); !s.ok()) return 1;

  Result<std::optional<Tensor>> back = c.Get("my_model_weight");
  Result<std::optional<std::string>> config = c.GetStr("config_json");
  if (!back.ok() || !*back || !config.ok() || !*config) {
    std::fprintf(stderr, "read back failed\n");
    return 1;
  }
  bool same = std::memcmp((*back)->data(), weight->data(), weight->nbytes()) == 0;
  std::printf("tensor %s [%lld, %lld] bit-exact: %s; config: %s\n",
              std::string(DTypeName((*back)->dtype())).c_str(),
              static_cast<long long>((*back)->shape()[0]), static_cast<long long>((*back)->shape()[1]),
              same ? "yes" : "NO", (*config)->c_str());
  return same ? 0 : 1;
}
