// Error model: every fallible operation returns a Status or a Result<T>.
// No exceptions cross this library's public API.
#pragma once

#include <cassert>
#include <memory>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include "mooncake_connector/export.h"

namespace mooncake_connector {

// Codes chosen for a networked key-value store. Stable: the Python layer maps
// each one to an exception class.
enum class StatusCode : int {
  kOk = 0,
  kNotFound = 1,           // key does not exist
  kInvalidArgument = 2,    // caller error: bad key, URL, dtype, buffer size
  kUnavailable = 3,        // backend unreachable or not set up; retry may work
  kDeadlineExceeded = 4,   // operation did not finish within its time bound
  kAlreadyExists = 5,      // create-only operation found an existing key
  kDataLoss = 6,           // stored bytes are corrupt or truncated
  kResourceExhausted = 7,  // capacity limit or out of memory
  kInternal = 8,           // a bug or a backend failure with no better code
  kUnimplemented = 9,      // backend does not support the operation
  kFailedPrecondition = 10,  // object state forbids it (e.g. closed store)
  kAborted = 11,           // lost a race with a concurrent writer; retry
};

MC_EXPORT std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] MC_EXPORT Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message);

  static Status Ok() { return Status(); }

  bool ok() const { return state_ == nullptr; }
  StatusCode code() const { return ok() ? StatusCode::kOk : state_->code; }
  // Empty for OK.
  std::string_view message() const {
    return ok() ? std::string_view() : std::string_view(state_->message);
  }
  // "NotFound: key 'x'" or "OK".
  std::string ToString() const;

  // Returns a copy whose message is "<context>: <message>".
  Status WithContext(std::string_view context) const;

  bool operator==(const Status& other) const {
    return code() == other.code() && message() == other.message();
  }

 private:
  struct State {
    StatusCode code;
    std::string message;
  };
  // Null when OK, so an OK status costs one pointer and no allocation.
  std::shared_ptr<const State> state_;
};

MC_EXPORT std::ostream& operator<<(std::ostream& os, const Status& s);

// Factory helpers, one per code.
MC_EXPORT Status NotFound(std::string message);
MC_EXPORT Status InvalidArgument(std::string message);
MC_EXPORT Status Unavailable(std::string message);
MC_EXPORT Status DeadlineExceeded(std::string message);
MC_EXPORT Status AlreadyExists(std::string message);
MC_EXPORT Status DataLoss(std::string message);
MC_EXPORT Status ResourceExhausted(std::string message);
MC_EXPORT Status Internal(std::string message);
MC_EXPORT Status Unimplemented(std::string message);
MC_EXPORT Status FailedPrecondition(std::string message);
MC_EXPORT Status Aborted(std::string message);

// Either a value or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT
    assert(!std::get<Status>(v_).ok() && "Result built from an OK Status");
    if (std::get<Status>(v_).ok()) v_ = Internal("Result built from OK Status");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  // OK when a value is held.
  Status status() const { return ok() ? Status() : std::get<Status>(v_); }

  // REQUIRES: ok().
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace mooncake_connector

#define MC_CONCAT_INNER_(a, b) a##b
#define MC_CONCAT_(a, b) MC_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (a Status) is not OK.
#define MC_RETURN_IF_ERROR(expr)                                   \
  do {                                                             \
    ::mooncake_connector::Status mc_status_ = (expr);              \
    if (!mc_status_.ok()) return mc_status_;                       \
  } while (0)

// `lhs = value of expr` (a Result<T>), or returns its Status.
#define MC_ASSIGN_OR_RETURN(lhs, expr) \
  MC_ASSIGN_OR_RETURN_IMPL_(MC_CONCAT_(mc_result_, __LINE__), lhs, expr)
#define MC_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()
