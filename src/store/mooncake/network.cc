#include <curl/curl.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>

#include "store/mooncake/network_internal.h"

namespace mooncake_connector::mooncake {
namespace {

struct HostPort {
  std::string host, port;
};

Result<HostPort> Split(const std::string& address) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 == address.size()) {
    return InvalidArgument("address '" + address + "' is not host:port");
  }
  HostPort hp{address.substr(0, colon), address.substr(colon + 1)};
  if (hp.host.size() >= 2 && hp.host.front() == '[' && hp.host.back() == ']') {
    hp.host = hp.host.substr(1, hp.host.size() - 2);
  }
  return hp;
}

// Connects one address with a deadline; true on success.
bool ConnectWithin(const addrinfo* ai, std::chrono::milliseconds timeout, std::string* error) {
  int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
  if (fd < 0) {
    *error = std::strerror(errno);
    return false;
  }
  bool ok = false;
  if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
    ok = true;
  } else if (errno == EINPROGRESS) {
    pollfd p{fd, POLLOUT, 0};
    int r = poll(&p, 1, static_cast<int>(timeout.count()));
    if (r == 0) {
      *error = "timed out";
    } else if (r > 0) {
      int so_error = 0;
      socklen_t len = sizeof so_error;
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len);
      ok = so_error == 0;
      if (!ok) *error = std::strerror(so_error);
    } else {
      *error = std::strerror(errno);
    }
  } else {
    *error = std::strerror(errno);
  }
  close(fd);
  return ok;
}

size_t AppendBody(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

}  // namespace

std::string HostOf(const std::string& address) {
  Result<HostPort> hp = Split(address);
  return hp.ok() ? hp->host : address;
}

Status ProbeTcp(const std::string& address, std::chrono::milliseconds timeout,
                const std::string& what) {
  MC_ASSIGN_OR_RETURN(HostPort hp, Split(address));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* list = nullptr;
  int rc = getaddrinfo(hp.host.c_str(), hp.port.c_str(), &hints, &list);
  if (rc != 0) {
    return Unavailable("cannot resolve " + what + " address " + address + ": " + gai_strerror(rc));
  }
  std::string error = "no address";
  bool ok = false;
  for (addrinfo* ai = list; ai != nullptr && !ok; ai = ai->ai_next) ok = ConnectWithin(ai, timeout, &error);
  freeaddrinfo(list);
  if (ok) return Status::Ok();
  return Unavailable("cannot reach " + what + " at " + address + " within " +
                     std::to_string(timeout.count()) + " ms (" + error + ")");
}

Result<std::string> HttpGet(const std::string& host_port, const std::string& path,
                            std::chrono::milliseconds timeout) {
  static std::once_flag init;
  std::call_once(init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return Internal("curl_easy_init failed");
  std::string url = "http://" + host_port + path, body;
  char error[CURL_ERROR_SIZE] = "";
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &AppendBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(timeout.count()));
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout.count()) * 6);
  curl_easy_setopt(curl, CURLOPT_PROXY, "");  // loopback admin ports: never via a proxy
  CURLcode rc = curl_easy_perform(curl);
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(curl);
  if (rc != CURLE_OK) {
    std::string msg = "GET " + url + " failed: " + (error[0] ? error : curl_easy_strerror(rc));
    if (rc == CURLE_OPERATION_TIMEDOUT) return DeadlineExceeded(msg);
    return Unavailable(msg);
  }
  if (status != 200) return Internal("GET " + url + " answered HTTP " + std::to_string(status));
  return body;
}

}  // namespace mooncake_connector::mooncake
