// ModelReader: the public face of ModelReaderImpl (model_reader_internal.h).
#include "model/model_reader_internal.h"
#include "mooncake_connector/model.h"

namespace mooncake_connector {

ModelReader::ModelReader(std::unique_ptr<ModelReaderImpl> impl) : impl_(std::move(impl)) {}
ModelReader::~ModelReader() = default;

const std::vector<ManifestTensor>& ModelReader::tensors() const { return impl_->tensors(); }
bool ModelReader::has_manifest() const { return impl_->has_manifest(); }
uint64_t ModelReader::total_bytes() const { return impl_->total_bytes(); }
Result<std::vector<NamedTensor>> ModelReader::NextBatch() { return impl_->NextBatch(); }
Result<std::vector<NamedTensor>> ModelReader::LoadAll() { return impl_->LoadAll(); }
Result<std::vector<std::string>> ModelReader::LoadInto(std::span<const TensorDestination> destinations) {
  return impl_->LoadInto(destinations);
}
Result<std::vector<std::string>> ModelReader::LoadIntoCuda(std::span<const TensorDestination> destinations,
                                                           const CudaTarget& target) {
  return impl_->LoadIntoCuda(destinations, target);
}
Result<std::vector<DeviceGroup>> ModelReader::PlanDeviceGroups(uint64_t group_bytes) const {
  return impl_->PlanDeviceGroups(group_bytes);
}
Result<std::vector<std::string>> ModelReader::Check() { return impl_->Check(); }
std::vector<Status> ModelReader::ReadPieces(std::span<const TensorPiece> pieces) { return impl_->ReadPieces(pieces); }
Status ModelReader::CheckAssembled(size_t index, ConstBytes data) { return impl_->CheckAssembled(index, data); }
Result<std::vector<ShareBatch>> ModelReader::PlanShares(int world, uint64_t batch_bytes, bool split,
                                                        std::optional<uint64_t> min_piece_bytes) {
  return impl_->PlanShares(world, batch_bytes, split, min_piece_bytes);
}

}  // namespace mooncake_connector
