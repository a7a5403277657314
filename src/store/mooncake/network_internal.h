// Small network helpers for the Mooncake backend: a bounded reachability
// probe and the master's admin HTTP endpoints.
#pragma once

#include <chrono>
#include <string>

#include "mooncake_connector/status.h"

namespace mooncake_connector::mooncake {

// OK if a TCP connection to `address` ("host:port" or "[v6]:port") opens
// within `timeout`; Unavailable naming `what` and the address otherwise.
Status ProbeTcp(const std::string& address, std::chrono::milliseconds timeout,
                const std::string& what);

// The body of GET http://`host_port``path`. Unavailable on connection
// failure or timeout, Internal on a non-200 answer.
Result<std::string> HttpGet(const std::string& host_port, const std::string& path,
                            std::chrono::milliseconds timeout);

// "host" of "host:port" / "[v6]:port".
std::string HostOf(const std::string& address);

}  // namespace mooncake_connector::mooncake
