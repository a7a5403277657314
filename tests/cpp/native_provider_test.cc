#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>

#include "mooncake_connector/mooncake_store.h"
#include "store/mooncake/mooncake_api_internal.h"

namespace mooncake_connector {
namespace {

using namespace std::chrono_literals;

bool Contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

// A loopback port that nothing listens on: bound to port 0, read, closed.
int UnusedPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  EXPECT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  socklen_t len = sizeof addr;
  EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  close(fd);
  return ntohs(addr.sin_port);
}

TEST(NativeProvider, MissingLibraryIsInvalidArgumentNamingThePath) {
  const std::string path = "/nonexistent/libmooncake_store.so";
  Result<mooncake::Api> api = mooncake::LoadNativeMooncakeApi(path);
  ASSERT_FALSE(api.ok());
  EXPECT_EQ(api.status().code(), StatusCode::kInvalidArgument) << api.status();
  EXPECT_TRUE(Contains(api.status().message(), path)) << api.status();
  // A failed load is not cached as a success.
  EXPECT_FALSE(mooncake::LoadNativeMooncakeApi(path).ok());
}

TEST(NativeProvider, LibraryWithoutTheSymbolsIsInvalidArgument) {
  Result<mooncake::Api> api = mooncake::LoadNativeMooncakeApi("libc.so.6");
  ASSERT_FALSE(api.ok());
  EXPECT_EQ(api.status().code(), StatusCode::kInvalidArgument) << api.status();
  EXPECT_TRUE(Contains(api.status().message(), "mooncake_store_create")) << api.status();
  EXPECT_TRUE(Contains(api.status().message(), "libc.so.6")) << api.status();
  Result<mooncake::Api> again = mooncake::LoadNativeMooncakeApi("libc.so.6");
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), StatusCode::kInvalidArgument);
}

TEST(NativeProvider, OpenWithBadLibraryReportsTheLoadError) {
  MooncakeConfig config;
  config.master_address = "127.0.0.1:1";
  config.library = "/nonexistent/libmooncake_store.so";
  Result<std::shared_ptr<Store>> store = OpenMooncakeStore(config);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kInvalidArgument) << store.status();
  EXPECT_TRUE(Contains(store.status().message(), config.library)) << store.status();
}

TEST(MooncakeErrors, MapsCodesToStatuses) {
  struct Case {
    int64_t code;
    StatusCode want;
  };
  for (Case c : {Case{-704, StatusCode::kNotFound}, Case{-705, StatusCode::kAlreadyExists},
                 Case{-706, StatusCode::kUnavailable}, Case{-600, StatusCode::kInvalidArgument},
                 Case{-200, StatusCode::kResourceExhausted}, Case{-703, StatusCode::kUnavailable},
                 Case{-707, StatusCode::kAborted}, Case{-800, StatusCode::kUnavailable},
                 Case{-850, StatusCode::kUnavailable}, Case{-900, StatusCode::kUnavailable},
                 Case{-999, StatusCode::kUnavailable}, Case{-1, StatusCode::kInternal},
                 Case{-10, StatusCode::kInternal}, Case{-799, StatusCode::kInternal},
                 Case{-1000, StatusCode::kInternal}}) {
    SCOPED_TRACE(c.code);
    Status s = mooncake::FromMooncakeError(c.code, "put_from 'layer.0'");
    EXPECT_EQ(s.code(), c.want) << s;
    EXPECT_TRUE(Contains(s.message(), "put_from 'layer.0'")) << s;
    if (c.code != mooncake::kErrObjectNotFound) {
      EXPECT_TRUE(Contains(s.message(), std::to_string(c.code))) << s;
    }
  }
}

TEST(OpenMooncakeStore, UnreachableMasterIsUnavailableQuickly) {
  const std::string address = "127.0.0.1:" + std::to_string(UnusedPort());
  MooncakeConfig config;
  config.master_address = address;
  config.connect_timeout = 300ms;
  mooncake::Api api;  // every function null: the probe must fail before any call
  api.provider = "test provider";
  auto start = std::chrono::steady_clock::now();
  Result<std::shared_ptr<Store>> store = OpenMooncakeStore(config, &api);
  auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kUnavailable) << store.status();
  EXPECT_TRUE(Contains(store.status().message(), address)) << store.status();
  EXPECT_LT(elapsed, 2s);
}

TEST(OpenMooncakeStore, UnreachableClientIsUnavailable) {
  const std::string address = "127.0.0.1:" + std::to_string(UnusedPort());
  MooncakeConfig config;
  config.client_address = address;
  config.connect_timeout = 300ms;
  mooncake::Api api;
  api.provider = "test provider";
  // Non-null so the mode check passes; never called because the probe fails.
  api.setup_dummy = [](mooncake::Handle, uint64_t, uint64_t, const char*) -> int { return -1; };
  auto start = std::chrono::steady_clock::now();
  Result<std::shared_ptr<Store>> store = OpenMooncakeStore(config, &api);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kUnavailable) << store.status();
  EXPECT_TRUE(Contains(store.status().message(), address)) << store.status();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
}

TEST(OpenMooncakeStore, ClientModeWithoutSetupDummyIsUnimplemented) {
  MooncakeConfig config;
  config.client_address = "127.0.0.1:1";
  static mooncake::Api api;  // setup_dummy stays null
  api.provider = "test provider";
  Result<std::shared_ptr<Store>> store = OpenMooncakeStore(config, &api);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kUnimplemented) << store.status();
  EXPECT_TRUE(Contains(store.status().message(), "test provider")) << store.status();

  // The same through the registered default provider.
  SetDefaultMooncakeApi(&api);
  Result<std::shared_ptr<Store>> via_default = OpenMooncakeStore(config);
  SetDefaultMooncakeApi(nullptr);
  ASSERT_FALSE(via_default.ok());
  EXPECT_EQ(via_default.status().code(), StatusCode::kUnimplemented) << via_default.status();
}

TEST(OpenMooncakeStore, NoProviderIsFailedPrecondition) {
  MooncakeConfig config;
  config.master_address = "127.0.0.1:1";
  Result<std::shared_ptr<Store>> store = OpenMooncakeStore(config);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kFailedPrecondition) << store.status();
  EXPECT_TRUE(Contains(store.status().message(), "MOONCAKE_STORE_LIBRARY")) << store.status();
}

}  // namespace
}  // namespace mooncake_connector
