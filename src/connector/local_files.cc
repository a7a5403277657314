#include "connector/local_files_internal.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

namespace mooncake_connector {
namespace {

std::vector<std::string_view> Components(std::string_view path) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    size_t slash = path.find('/', start);
    parts.push_back(path.substr(start, slash == std::string_view::npos ? path.npos : slash - start));
    if (slash == std::string_view::npos) return parts;
    start = slash + 1;
  }
}

std::string ErrnoText() { return std::error_code(errno, std::generic_category()).message(); }

// Closes a file descriptor on scope exit.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

bool FnMatch(std::string_view pattern, std::string_view text) {
  // fnmatch(3) without FNM_PATHNAME and FNM_PERIOD, with FNM_NOESCAPE, is
  // Python's fnmatch on POSIX.
  std::string p(pattern), t(text);
  return ::fnmatch(p.c_str(), t.c_str(), FNM_NOESCAPE) == 0;
}

bool PassesFilter(const std::optional<std::vector<std::string>>& allow,
                  const std::optional<std::vector<std::string>>& ignore, std::string_view key,
                  std::string_view relative) {
  auto any = [&](const std::vector<std::string>& patterns) {
    for (const std::string& p : patterns) {
      if (FnMatch(p, key) || FnMatch(p, relative)) return true;
    }
    return false;
  };
  if (allow && !any(*allow)) return false;
  return !(ignore && any(*ignore));
}

Status CheckStoredFileName(std::string_view relative) {
  auto bad = [&](const std::string& why) {
    return DataLoss("stored file name '" + std::string(relative) + "' " + why +
                    "; refusing to write outside the local directory");
  };
  if (relative.empty()) return bad("is empty");
  if (relative.front() == '/') return bad("is an absolute path");
  for (std::string_view part : Components(relative)) {
    if (part.empty()) return bad("has an empty path component");
    if (part == "." || part == "..") return bad("has a '" + std::string(part) + "' component");
  }
  return Status::Ok();
}

Status WriteFileUnder(const std::string& root, std::string_view relative, ConstBytes bytes) {
  std::vector<std::string_view> parts = Components(relative);
  Fd dir(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.fd < 0) return Internal("cannot open " + root + ": " + ErrnoText());
  std::string where = root;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    std::string name(parts[i]);
    where += "/" + name;
    if (::mkdirat(dir.fd, name.c_str(), 0755) != 0 && errno != EEXIST) {
      return Internal("cannot create " + where + ": " + ErrnoText());
    }
    int next = ::openat(dir.fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (next < 0) {
      return DataLoss("cannot enter " + where + " (a symlink or a file where a directory belongs?): " +
                      ErrnoText());
    }
    ::close(dir.fd);
    dir.fd = next;
  }
  std::string name(parts.back());
  std::string part = "." + name + ".part";
  Fd out(::openat(dir.fd, part.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644));
  if (out.fd < 0) return Internal("cannot create " + where + "/" + part + ": " + ErrnoText());
  const std::byte* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    ssize_t n = ::write(out.fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Internal("cannot write " + where + "/" + name + ": " + ErrnoText());
    p += n;
    left -= static_cast<size_t>(n);
  }
  // rename() replaces a symlink named `name` itself, never what it points to.
  if (::renameat(dir.fd, part.c_str(), dir.fd, name.c_str()) != 0) {
    int saved = errno;
    ::unlinkat(dir.fd, part.c_str(), 0);
    errno = saved;
    return Internal("cannot write " + where + "/" + name + ": " + ErrnoText());
  }
  return Status::Ok();
}

}  // namespace mooncake_connector
