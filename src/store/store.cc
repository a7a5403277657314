#include "mooncake_connector/store.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "store/deliver_internal.h"

namespace mooncake_connector {

Status ValidateKey(std::string_view key) {
  if (key.empty()) return InvalidArgument("empty key");
  if (key.size() > kMaxKeyBytes) {
    return InvalidArgument("key of " + std::to_string(key.size()) + " bytes exceeds the limit of " +
                           std::to_string(kMaxKeyBytes));
  }
  for (unsigned char c : key) {
    if (c < 0x20 || c == 0x7f) {
      return InvalidArgument("key contains control character 0x" +
                             std::string(1, "0123456789abcdef"[c >> 4]) +
                             std::string(1, "0123456789abcdef"[c & 15]));
    }
  }
  return Status::Ok();
}

Status GetIntoRequest::CheckFits(uint64_t size) const {
  if (partial) {
    const uint64_t end = offset + head.size() + destination.size();
    if (end < offset || size < end) {
      return InvalidArgument("the " + std::to_string(size) + "-byte value of '" + std::string(key) +
                             "' does not hold the bytes [" + std::to_string(offset) + ", " +
                             std::to_string(end) + ") asked for");
    }
    return Status::Ok();
  }
  if (size < head.size()) {
    return InvalidArgument("the " + std::to_string(size) + "-byte value of '" + std::string(key) +
                           "' is shorter than the " + std::to_string(head.size()) +
                           " bytes expected before its data");
  }
  if (size - head.size() > destination.size()) {
    return InvalidArgument("buffer of " + std::to_string(head.size() + destination.size()) +
                           " bytes is too small for the " + std::to_string(size) +
                           "-byte value of '" + std::string(key) + "'");
  }
  return Status::Ok();
}

ConstBytes GetIntoRequest::Clip(uint64_t* at, ConstBytes bytes) const {
  if (!partial) return bytes;
  const uint64_t lo = std::max(*at, offset);
  const uint64_t hi = std::min(*at + bytes.size(), offset + head.size() + destination.size());
  if (lo >= hi) {
    *at = 0;
    return {};
  }
  ConstBytes in = bytes.subspan(static_cast<size_t>(lo - *at), static_cast<size_t>(hi - lo));
  *at = lo - offset;
  return in;
}

namespace {
// Copies bytes [at, at + bytes.size()) of what `r` asks for (its range, for
// a partial read) to head, then destination.
void CopyInRange(const GetIntoRequest& r, uint64_t at, ConstBytes bytes) {
  ForEachPiece(r, at, bytes.size(), [&](MutableBytes piece, bool) {
    std::memcpy(piece.data(), bytes.data(), piece.size());
    bytes = bytes.subspan(piece.size());
  });
}
}  // namespace

void GetIntoRequest::CopyAt(uint64_t at, ConstBytes bytes) const {
  bytes = Clip(&at, bytes);
  CopyInRange(*this, at, bytes);
}

namespace {
// Half of a core's L2 on the machines we know: a copied block is still in
// cache when it is hashed.
constexpr size_t kDeliverBlock = 256 << 10;
}  // namespace

void DeliverAt(const GetIntoRequest& r, uint64_t offset, ConstBytes bytes, Xxh3Stream* data,
               Xxh3Stream* value) {
  if (r.partial) {
    value = nullptr;  // a range cannot check the whole value's hash
    bytes = r.Clip(&offset, bytes);
  }
  if (data == nullptr && value == nullptr) {
    CopyInRange(r, offset, bytes);
    return;
  }
  while (!bytes.empty()) {
    ConstBytes block = bytes.first(std::min(bytes.size(), kDeliverBlock));
    CopyInRange(r, offset, block);
    if (value != nullptr) value->Update(block);
    if (data != nullptr && offset + block.size() > r.head.size()) {
      uint64_t skip = offset < r.head.size() ? r.head.size() - offset : 0;
      data->Update(block.subspan(static_cast<size_t>(skip)));
    }
    offset += block.size();
    bytes = bytes.subspan(block.size());
  }
}

void Gather(std::span<const ConstBytes> parts, uint64_t offset, MutableBytes dst) {
  size_t written = 0;
  for (ConstBytes part : parts) {
    if (written == dst.size()) break;
    if (offset >= part.size()) {
      offset -= part.size();
      continue;
    }
    size_t n = std::min(part.size() - offset, dst.size() - written);
    std::memcpy(dst.data() + written, part.data() + offset, n);
    written += n;
    offset = 0;
  }
}

size_t AppendPieces(std::span<const ConstBytes> parts, uint64_t offset, uint64_t size, std::vector<void*>& buffers,
                    std::vector<size_t>& sizes) {
  size_t appended = 0;
  for (ConstBytes part : parts) {
    if (size == 0) break;
    if (offset >= part.size()) {
      offset -= part.size();
      continue;
    }
    size_t n = static_cast<size_t>(std::min<uint64_t>(part.size() - offset, size));
    // Mooncake only reads through these pointers.
    buffers.push_back(const_cast<std::byte*>(part.data() + offset));
    sizes.push_back(n);
    size -= n;
    offset = 0;
    ++appended;
  }
  return appended;
}

void HashInPlaceAt(const GetIntoRequest& r, uint64_t offset, uint64_t size, Xxh3Stream* data,
                   Xxh3Stream* value) {
  if (data == nullptr && value == nullptr) return;
  ForEachPiece(r, offset, size, [&](MutableBytes piece, bool in_destination) {
    for (size_t at = 0; at < piece.size(); at += kDeliverBlock) {
      ConstBytes block = ConstBytes(piece).subspan(at, std::min(kDeliverBlock, piece.size() - at));
      if (data != nullptr && in_destination) data->Update(block);
      if (value != nullptr) value->Update(block);
    }
  });
}

void Deliver(const GetIntoRequest& r, ConstBytes value) {
  if (r.data_xxh3 == nullptr) {
    r.CopyAt(0, value);
    return;
  }
  Xxh3Stream data(r.data_xxh3_piece);
  DeliverAt(r, 0, value, &data);
  *r.data_xxh3 = data.Digest();
}

void HashDelivered(const GetIntoRequest& r, uint64_t n) {
  if (r.data_xxh3 != nullptr) *r.data_xxh3 = Xxh3Pieces(r.destination.first(static_cast<size_t>(n)), r.data_xxh3_piece);
}

Result<Buffer> Store::Get(std::string_view key) {
  // A writer may replace the value between GetSize and GetInto; a few retries
  // make that race invisible unless the key is rewritten continuously.
  constexpr int kAttempts = 8;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    MC_ASSIGN_OR_RETURN(uint64_t size, GetSize(key));
    MC_ASSIGN_OR_RETURN(Buffer buffer, Buffer::Allocate(size));
    Result<uint64_t> got = GetInto(key, buffer.bytes());
    if (got.ok()) return buffer.Slice(0, *got);
    if (got.status().code() != StatusCode::kInvalidArgument) return got.status();
  }
  return Aborted("value of key '" + std::string(key) + "' kept changing size while being read");
}

StoreFeatures Store::Features() const { return {}; }

Result<Buffer> Store::AllocateForRead(size_t size) const {
  ReadMemory* memory = Features().read_memory;
  return memory != nullptr ? memory->Allocate(size) : Buffer::Allocate(size);
}

std::vector<Result<Buffer>> Store::BatchView(std::span<const std::string_view> keys) {
  return std::vector<Result<Buffer>>(keys.size(), Result<Buffer>(Unimplemented(url() + " holds no values in this process")));
}

Status Store::Put(std::string_view key, std::span<const ConstBytes> parts,
                  const WriteOptions& options) {
  PutRequest request{key, parts};
  return BatchPut({&request, 1}, options)[0];
}

Status Store::Put(std::string_view key, ConstBytes value, const WriteOptions& options) {
  return Put(key, std::span<const ConstBytes>(&value, 1), options);
}

Result<uint64_t> Store::GetInto(std::string_view key, MutableBytes destination) {
  GetIntoRequest request{key, destination};
  return BatchGetInto({&request, 1})[0];
}

Result<bool> Store::Exists(std::string_view key) {
  return BatchExists({&key, 1})[0];
}

}  // namespace mooncake_connector
