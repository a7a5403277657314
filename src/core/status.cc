#include "mooncake_connector/status.h"

namespace mooncake_connector {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kNotFound: return "NotFound";
    case StatusCode::kInvalidArgument: return "InvalidArgument";
    case StatusCode::kUnavailable: return "Unavailable";
    case StatusCode::kDeadlineExceeded: return "DeadlineExceeded";
    case StatusCode::kAlreadyExists: return "AlreadyExists";
    case StatusCode::kDataLoss: return "DataLoss";
    case StatusCode::kResourceExhausted: return "ResourceExhausted";
    case StatusCode::kInternal: return "Internal";
    case StatusCode::kUnimplemented: return "Unimplemented";
    case StatusCode::kFailedPrecondition: return "FailedPrecondition";
    case StatusCode::kAborted: return "Aborted";
  }
  return "Unknown";
}

Status::Status(StatusCode code, std::string message) {
  if (code != StatusCode::kOk) {
    state_ = std::make_shared<const State>(State{code, std::move(message)});
  }
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string out(StatusCodeName(code()));
  if (!message().empty()) {
    out += ": ";
    out += message();
  }
  return out;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  std::string msg(context);
  msg += ": ";
  msg += message();
  return Status(code(), std::move(msg));
}

std::ostream& operator<<(std::ostream& os, const Status& s) {
  return os << s.ToString();
}

#define MC_DEFINE_STATUS_FACTORY(Name)         \
  Status Name(std::string message) {           \
    return Status(StatusCode::k##Name, std::move(message)); \
  }
MC_DEFINE_STATUS_FACTORY(NotFound)
MC_DEFINE_STATUS_FACTORY(InvalidArgument)
MC_DEFINE_STATUS_FACTORY(Unavailable)
MC_DEFINE_STATUS_FACTORY(DeadlineExceeded)
MC_DEFINE_STATUS_FACTORY(AlreadyExists)
MC_DEFINE_STATUS_FACTORY(DataLoss)
MC_DEFINE_STATUS_FACTORY(ResourceExhausted)
MC_DEFINE_STATUS_FACTORY(Internal)
MC_DEFINE_STATUS_FACTORY(Unimplemented)
MC_DEFINE_STATUS_FACTORY(FailedPrecondition)
MC_DEFINE_STATUS_FACTORY(Aborted)
#undef MC_DEFINE_STATUS_FACTORY

}  // namespace mooncake_connector
