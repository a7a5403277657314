#include "mooncake_connector/url.h"

#include <gtest/gtest.h>

namespace mooncake_connector {
namespace {

TEST(Url, ParsesEveryPart) {
  Url u = *ParseUrl("Mooncake://10.0.0.1:50051/org/model-7b?replica_num=2&pin=hard");
  EXPECT_EQ(u.scheme, "mooncake");
  EXPECT_EQ(u.host, "10.0.0.1");
  EXPECT_EQ(u.port, 50051);
  EXPECT_EQ(u.path, "org/model-7b");
  EXPECT_EQ(u.query, (std::map<std::string, std::string>{{"pin", "hard"}, {"replica_num", "2"}}));
  EXPECT_EQ(u.Authority(), "10.0.0.1:50051");
}

TEST(Url, MinimalForms) {
  Url bare = *ParseUrl("mooncake://");
  EXPECT_EQ(bare.host, "");
  EXPECT_FALSE(bare.port);
  EXPECT_EQ(bare.path, "");
  Url named = *ParseUrl("memory://cache");
  EXPECT_EQ(named.host, "cache");
  Url path_only = *ParseUrl("mooncake:///my-model");
  EXPECT_EQ(path_only.host, "");
  EXPECT_EQ(path_only.path, "my-model");
  Url v6 = *ParseUrl("mooncake://[::1]:8080/m");
  EXPECT_EQ(v6.host, "[::1]");
  EXPECT_EQ(v6.port, 8080);
}

TEST(Url, DecodesPercentEscapes) {
  Url u = *ParseUrl("memory://s/a%20b%2Fc?k%3D=v%26w");
  EXPECT_EQ(u.path, "a b/c");
  EXPECT_EQ(u.query.at("k="), "v&w");
}

TEST(Url, RejectsMalformed) {
  for (const char* bad : {"", "memory", "memory:/x", "://x", "1mem://", "me m://", "mooncake://h:0",
                          "mooncake://h:65536", "mooncake://h:x", "mooncake://h:", "mooncake://[::1",
                          "memory://s/%zz", "memory://s/%4", "memory://s?a=1&a=2", "memory://s?=1",
                          "mooncake://user@h:1"}) {
    Result<Url> r = ParseUrl(bad);
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  }
}

TEST(Url, RoundTrips) {
  for (const char* text : {"memory://", "memory://name", "mooncake://h:1/m", "mooncake://[::1]:2/a/b",
                           "memory://x/sp%20ace?opt=a%26b&z=1", "mooncake:///deep/path/"}) {
    Url u = *ParseUrl(text);
    Result<Url> again = ParseUrl(u.ToString());
    ASSERT_TRUE(again.ok()) << u.ToString();
    EXPECT_EQ(*again, u) << text << " -> " << u.ToString();
  }
  EXPECT_EQ(ParseUrl("memory://x/sp%20ace?z=1")->ToString(), "memory://x/sp%20ace?z=1");
}

TEST(ByteSize, Units) {
  EXPECT_EQ(*ParseByteSize("0"), 0u);
  EXPECT_EQ(*ParseByteSize("65536"), 65536u);
  EXPECT_EQ(*ParseByteSize("4gb"), 4ull << 30);
  EXPECT_EQ(*ParseByteSize("512MB"), 512ull << 20);
  EXPECT_EQ(*ParseByteSize("1.5g"), 3ull << 29);
  EXPECT_EQ(*ParseByteSize("2 KiB"), 2048u);
  EXPECT_EQ(*ParseByteSize("1t"), 1ull << 40);
  for (const char* bad : {"", "gb", "-1", "4xb", "1e3", "99999999999999t"}) {
    EXPECT_FALSE(ParseByteSize(bad).ok()) << bad;
  }
}

}  // namespace
}  // namespace mooncake_connector
