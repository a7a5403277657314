#include "mooncake_connector/url.h"

#include <cctype>
#include <charconv>
#include <cmath>

namespace mooncake_connector {
namespace {

Status BadUrl(std::string_view text, std::string why) {
  return InvalidArgument("invalid URL '" + std::string(text) + "': " + why);
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

Result<std::string> PercentDecode(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out += in[i];
      continue;
    }
    if (i + 2 >= in.size()) return InvalidArgument("truncated percent escape");
    int hi = HexValue(in[i + 1]), lo = HexValue(in[i + 2]);
    if (hi < 0 || lo < 0) return InvalidArgument("bad percent escape");
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

// Escapes everything but unreserved characters and those in `keep`.
std::string PercentEncode(std::string_view in, std::string_view keep) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : in) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' ||
        keep.find(static_cast<char>(c)) != std::string_view::npos) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

}  // namespace

std::string Url::Authority() const {
  if (!port) return host;
  return host + ":" + std::to_string(*port);
}

std::string Url::ToString() const {
  std::string out = scheme + "://" + Authority();
  if (!path.empty()) out += "/" + PercentEncode(path, "/:@");
  char sep = '?';
  for (const auto& [k, v] : query) {
    out += sep;
    out += PercentEncode(k, "") + "=" + PercentEncode(v, ":/@");
    sep = '&';
  }
  return out;
}

Result<Url> ParseUrl(std::string_view text) {
  Url url;
  size_t sep = text.find("://");
  if (sep == std::string_view::npos) return BadUrl(text, "expected scheme://...");
  std::string_view scheme = text.substr(0, sep);
  if (scheme.empty() || !std::isalpha(static_cast<unsigned char>(scheme[0]))) {
    return BadUrl(text, "scheme must start with a letter");
  }
  for (char c : scheme) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '+' && c != '-' && c != '.') {
      return BadUrl(text, "bad character in scheme");
    }
    url.scheme += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  std::string_view rest = text.substr(sep + 3);

  std::string_view query;
  if (size_t q = rest.find('?'); q != std::string_view::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
  }
  std::string_view authority = rest.substr(0, rest.find('/'));
  std::string_view path = rest.substr(authority.size());

  // Host, with IPv6 literals in brackets.
  std::string_view port_text;
  if (authority.starts_with('[')) {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return BadUrl(text, "unclosed '[' in host");
    url.host = std::string(authority.substr(0, close + 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return BadUrl(text, "junk after IPv6 host");
      port_text = after.substr(1);
      if (port_text.empty()) return BadUrl(text, "empty port");
    }
  } else if (size_t colon = authority.rfind(':'); colon != std::string_view::npos) {
    url.host = std::string(authority.substr(0, colon));
    port_text = authority.substr(colon + 1);
    if (port_text.empty()) return BadUrl(text, "empty port");
  } else {
    url.host = std::string(authority);
  }
  if (url.host.find('@') != std::string::npos) return BadUrl(text, "user info is not supported");
  if (!port_text.empty()) {
    unsigned value = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), value);
    if (ec != std::errc() || end != port_text.data() + port_text.size() || value == 0 ||
        value > 65535) {
      return BadUrl(text, "port must be a number from 1 to 65535");
    }
    url.port = static_cast<uint16_t>(value);
  }

  if (path.starts_with('/')) path.remove_prefix(1);
  Result<std::string> decoded_path = PercentDecode(path);
  if (!decoded_path.ok()) return BadUrl(text, std::string(decoded_path.status().message()));
  url.path = std::move(*decoded_path);

  while (!query.empty()) {
    std::string_view item = query.substr(0, query.find('&'));
    query.remove_prefix(std::min(query.size(), item.size() + 1));
    if (item.empty()) continue;
    size_t eq = item.find('=');
    Result<std::string> key = PercentDecode(item.substr(0, eq));
    Result<std::string> value =
        PercentDecode(eq == std::string_view::npos ? std::string_view() : item.substr(eq + 1));
    if (!key.ok() || !value.ok()) return BadUrl(text, "bad percent escape in query");
    if (key->empty()) return BadUrl(text, "empty query option name");
    if (!url.query.emplace(std::move(*key), std::move(*value)).second) {
      return BadUrl(text, "query option given twice");
    }
  }
  return url;
}

Result<uint64_t> ParseByteSize(std::string_view text) {
  auto bad = [&] {
    return InvalidArgument("invalid size '" + std::string(text) +
                           "': expected a number with an optional unit (b, kb, mb, gb, tb)");
  };
  std::string s;
  for (char c : text) {
    if (!std::isspace(static_cast<unsigned char>(c))) {
      s += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
  }
  size_t unit_pos = 0;
  while (unit_pos < s.size() && (std::isdigit(static_cast<unsigned char>(s[unit_pos])) || s[unit_pos] == '.')) {
    ++unit_pos;
  }
  std::string_view number(s.data(), unit_pos), unit(s.data() + unit_pos, s.size() - unit_pos);
  if (number.empty()) return bad();
  double value = 0;
  auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), value);
  if (ec != std::errc() || end != number.data() + number.size()) return bad();
  if (unit.ends_with("ib")) unit.remove_suffix(2);
  else if (unit.ends_with('b')) unit.remove_suffix(1);
  double scale = 1;
  if (unit.empty()) scale = 1;
  else if (unit == "k") scale = 1024.0;
  else if (unit == "m") scale = 1024.0 * 1024;
  else if (unit == "g") scale = 1024.0 * 1024 * 1024;
  else if (unit == "t") scale = 1024.0 * 1024 * 1024 * 1024;
  else return bad();
  double bytes = std::floor(value * scale);
  if (!(bytes < 18446744073709551616.0)) return bad();
  return static_cast<uint64_t>(bytes);
}

}  // namespace mooncake_connector
