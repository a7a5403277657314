#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <optional>
#include <string>

#include "mooncake_connector/mooncake_store.h"
#include "mooncake_connector/url.h"

namespace mooncake_connector {
namespace {

using Env = std::map<std::string, std::string>;
using Options = std::map<std::string, std::string>;
using namespace std::chrono_literals;

// An injected environment: never the process's.
EnvLookup FakeEnv(Env env) {
  return [env = std::move(env)](const std::string& name) -> std::optional<std::string> {
    auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
}

Result<MooncakeConfig> Config(const std::string& url, Env env, Options options = {}) {
  return MooncakeConfigFrom(*ParseUrl(url), options, FakeEnv(std::move(env)));
}

MooncakeConfig MustConfig(const std::string& url, Env env, Options options = {}) {
  Result<MooncakeConfig> c = Config(url, std::move(env), std::move(options));
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : MooncakeConfig{};
}

void ExpectInvalid(const Result<MooncakeConfig>& r, const std::string& needle) {
  ASSERT_FALSE(r.ok()) << "expected InvalidArgument naming " << needle;
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status();
  EXPECT_NE(std::string(r.status().message()).find(needle), std::string::npos) << r.status();
}

const Env kMaster = {{"MOONCAKE_MASTER", "10.0.0.1:50051"}};

TEST(MooncakeConfig, Defaults) {
  MooncakeConfig c = MustConfig("mooncake:///model", kMaster);
  EXPECT_EQ(c.master_address, "10.0.0.1:50051");
  EXPECT_EQ(c.client_address, "");
  EXPECT_EQ(c.protocol, "tcp");
  EXPECT_EQ(c.device_name, "");
  EXPECT_EQ(c.metadata_server, "P2PHANDSHAKE");
  EXPECT_EQ(c.local_hostname, "localhost");
  EXPECT_EQ(c.global_segment_size, uint64_t{4} << 30);
  EXPECT_EQ(c.local_buffer_size, uint64_t{64} << 20);
  EXPECT_EQ(c.replica_num, 1);
  EXPECT_EQ(c.pin, PinMode::kNone);
  EXPECT_EQ(c.metrics_port, 9003);
  EXPECT_EQ(c.chunk_size, uint64_t{16} << 20);
  EXPECT_EQ(c.transfer_slots, 4);
  EXPECT_EQ(c.read_threads, 0);  // automatic
  EXPECT_EQ(c.connect_timeout, 5000ms);
  EXPECT_EQ(c.library, "");
}

TEST(MooncakeConfig, EveryEnvironmentVariableApplies) {
  MooncakeConfig c = MustConfig("mooncake:///m",
                                {{"MOONCAKE_MASTER", "master.example:7000"},
                                 {"MOONCAKE_CLIENT", "127.0.0.1:50052"},
                                 {"MOONCAKE_PROTOCOL", "rdma"},
                                 {"MOONCAKE_DEVICE", "mlx5_0"},
                                 {"MOONCAKE_TE_META_DATA_SERVER", "http://meta:8080/metadata"},
                                 {"MOONCAKE_LOCAL_HOSTNAME", "node-3"},
                                 {"MOONCAKE_GLOBAL_SEGMENT_SIZE", "512mb"},
                                 {"MOONCAKE_LOCAL_BUFFER_SIZE", "1gb"},
                                 {"MOONCAKE_REPLICA_NUM", "3"},
                                 {"MOONCAKE_MASTER_METRICS_PORT", "9100"},
                                 {"MOONCAKE_PIN", "hard"},
                                 {"MOONCAKE_CHUNK_SIZE", "4mb"},
                                 {"MOONCAKE_CONNECT_TIMEOUT", "500ms"},
                                 {"MOONCAKE_STORE_LIBRARY", "/opt/mooncake/libmooncake_store.so"}});
  EXPECT_EQ(c.master_address, "master.example:7000");
  EXPECT_EQ(c.client_address, "127.0.0.1:50052");
  EXPECT_EQ(c.protocol, "rdma");
  EXPECT_EQ(c.device_name, "mlx5_0");
  EXPECT_EQ(c.metadata_server, "http://meta:8080/metadata");
  EXPECT_EQ(c.local_hostname, "node-3");
  EXPECT_EQ(c.global_segment_size, uint64_t{512} << 20);
  EXPECT_EQ(c.local_buffer_size, uint64_t{1} << 30);
  EXPECT_EQ(c.replica_num, 3);
  EXPECT_EQ(c.metrics_port, 9100);
  EXPECT_EQ(c.pin, PinMode::kHard);
  EXPECT_EQ(c.chunk_size, uint64_t{4} << 20);
  EXPECT_EQ(c.connect_timeout, 500ms);
  EXPECT_EQ(c.library, "/opt/mooncake/libmooncake_store.so");
}

TEST(MooncakeConfig, GlobalSegmentSizeZeroMeansPureClient) {
  EXPECT_EQ(MustConfig("mooncake://", {{"MOONCAKE_MASTER", "h:1"}, {"MOONCAKE_GLOBAL_SEGMENT_SIZE", "0"}})
                .global_segment_size,
            0u);
}

TEST(MooncakeConfig, PinModes) {
  for (auto [text, mode] : {std::pair{"none", PinMode::kNone}, std::pair{"soft", PinMode::kSoft},
                            std::pair{"hard", PinMode::kHard}}) {
    EXPECT_EQ(MustConfig("mooncake://", {{"MOONCAKE_MASTER", "h:1"}, {"MOONCAKE_PIN", text}}).pin, mode)
        << text;
    EXPECT_EQ(MustConfig("mooncake://", kMaster, {{"pin", text}}).pin, mode) << text;
  }
}

TEST(MooncakeConfig, ConnectTimeoutUnits) {
  auto timeout = [](const char* text) {
    return MustConfig("mooncake://", {{"MOONCAKE_MASTER", "h:1"}, {"MOONCAKE_CONNECT_TIMEOUT", text}})
        .connect_timeout;
  };
  EXPECT_EQ(timeout("500ms"), 500ms);
  EXPECT_EQ(timeout("2s"), 2000ms);
  EXPECT_EQ(timeout("1m"), 60000ms);
  EXPECT_EQ(timeout("250"), 250ms);
  EXPECT_EQ(timeout("1.5s"), 1500ms);
}

TEST(MooncakeConfig, EmptyEnvironmentValuesAreIgnored) {
  MooncakeConfig c = MustConfig("mooncake://", {{"MOONCAKE_MASTER", "h:1"},
                                                {"MOONCAKE_PROTOCOL", ""},
                                                {"MOONCAKE_REPLICA_NUM", ""}});
  EXPECT_EQ(c.protocol, "tcp");
  EXPECT_EQ(c.replica_num, 1);
}

TEST(MooncakeConfig, UrlMasterOverridesEnvironment) {
  MooncakeConfig c = MustConfig("mooncake://192.168.1.5:50051/model", kMaster);
  EXPECT_EQ(c.master_address, "192.168.1.5:50051");
  MooncakeConfig v6 = MustConfig("mooncake://[::1]:7/model", {});
  EXPECT_EQ(v6.master_address, "[::1]:7");
}

TEST(MooncakeConfig, UrlHostWithoutPortIsInvalid) {
  ExpectInvalid(Config("mooncake://masterhost/model", kMaster), "port");
  ExpectInvalid(Config("mooncake://masterhost/model", kMaster), "masterhost");
  // mooncake://MODEL is a common slip for mooncake:///MODEL: the message says so.
  ExpectInvalid(Config("mooncake://llama-3-8b", kMaster), "mooncake:///llama-3-8b");
  ExpectInvalid(Config("mooncake://org/model", kMaster), "mooncake:///org/model");
}

TEST(MooncakeConfig, EmptyAuthorityTakesTheMasterFromTheEnvironment) {
  MooncakeConfig c = MustConfig("mooncake:///org/model-7b", kMaster);
  EXPECT_EQ(c.master_address, kMaster.at("MOONCAKE_MASTER"));
  EXPECT_EQ(ParseUrl("mooncake:///org/model-7b")->path, "org/model-7b");
}

TEST(MooncakeConfig, OptionsOverrideEnvironmentAndUrl) {
  MooncakeConfig c = MustConfig("mooncake://u:1/m",
                                {{"MOONCAKE_MASTER", "e:1"},
                                 {"MOONCAKE_PROTOCOL", "rdma"},
                                 {"MOONCAKE_REPLICA_NUM", "2"},
                                 {"MOONCAKE_CONNECT_TIMEOUT", "2s"},
                                 {"MOONCAKE_CHUNK_SIZE", "8mb"}},
                                {{"master", "o:1"},
                                 {"protocol", "tcp"},
                                 {"replica_num", "4"},
                                 {"connect_timeout", "300ms"},
                                 {"chunk_size", "1mb"},
                                 {"transfer_slots", "8"},
                                 {"read_threads", "3"},
                                 {"metrics_port", "9200"},
                                 {"global_segment_size", "1gb"},
                                 {"local_buffer_size", "32mb"},
                                 {"device", "eth0"},
                                 {"metadata_server", "etcd://x:2379"},
                                 {"local_hostname", "me"},
                                 {"library", "/lib.so"},
                                 {"client", "c:2"}});
  EXPECT_EQ(c.master_address, "o:1");
  EXPECT_EQ(c.protocol, "tcp");
  EXPECT_EQ(c.replica_num, 4);
  EXPECT_EQ(c.connect_timeout, 300ms);
  EXPECT_EQ(c.chunk_size, uint64_t{1} << 20);
  EXPECT_EQ(c.transfer_slots, 8);
  EXPECT_EQ(c.read_threads, 3);
  EXPECT_EQ(c.metrics_port, 9200);
  EXPECT_EQ(c.global_segment_size, uint64_t{1} << 30);
  EXPECT_EQ(c.local_buffer_size, uint64_t{32} << 20);
  EXPECT_EQ(c.device_name, "eth0");
  EXPECT_EQ(c.metadata_server, "etcd://x:2379");
  EXPECT_EQ(c.local_hostname, "me");
  EXPECT_EQ(c.library, "/lib.so");
  EXPECT_EQ(c.client_address, "c:2");
}

TEST(MooncakeConfig, UnknownOptionIsInvalid) {
  Result<MooncakeConfig> r = Config("mooncake://", kMaster, {{"replicas", "2"}});
  ExpectInvalid(r, "replicas");
  ExpectInvalid(r, "replica_num");  // lists the known ones
}

TEST(MooncakeConfig, BadOptionValuesNameTheOption) {
  for (auto [name, value] : {std::pair{"replica_num", "0"}, std::pair{"replica_num", "65"},
                             std::pair{"replica_num", "two"}, std::pair{"pin", "maybe"},
                             std::pair{"chunk_size", "1kb"}, std::pair{"connect_timeout", "soon"},
                             std::pair{"connect_timeout", "5h"}, std::pair{"connect_timeout", "-1s"},
                             std::pair{"global_segment_size", "lots"},
                             std::pair{"local_buffer_size", "-1"}, std::pair{"metrics_port", "0"},
                             std::pair{"metrics_port", "65536"}, std::pair{"transfer_slots", "0"},
                             std::pair{"read_threads", "-1"}, std::pair{"read_threads", "17"}}) {
    SCOPED_TRACE(std::string(name) + "=" + value);
    ExpectInvalid(Config("mooncake://", kMaster, {{name, value}}), name);
  }
}

TEST(MooncakeConfig, BadEnvironmentValuesNameTheVariable) {
  for (auto [name, value] : {std::pair{"MOONCAKE_REPLICA_NUM", "0"}, std::pair{"MOONCAKE_PIN", "maybe"},
                             std::pair{"MOONCAKE_CHUNK_SIZE", "1kb"},
                             std::pair{"MOONCAKE_CONNECT_TIMEOUT", "soon"},
                             std::pair{"MOONCAKE_GLOBAL_SEGMENT_SIZE", "lots"},
                             std::pair{"MOONCAKE_LOCAL_BUFFER_SIZE", "lots"},
                             std::pair{"MOONCAKE_MASTER_METRICS_PORT", "http"}}) {
    SCOPED_TRACE(std::string(name) + "=" + value);
    ExpectInvalid(Config("mooncake://", {{"MOONCAKE_MASTER", "h:1"}, {name, value}}), name);
  }
}

TEST(MooncakeConfig, ChunkSizeLowerBound) {
  EXPECT_EQ(MustConfig("mooncake://", kMaster, {{"chunk_size", "4kb"}}).chunk_size, 4096u);
  ExpectInvalid(Config("mooncake://", kMaster, {{"chunk_size", "4095"}}), "chunk_size");
}

TEST(MooncakeConfig, NoMasterNoClientIsInvalid) {
  Result<MooncakeConfig> r = Config("mooncake:///model", {});
  ExpectInvalid(r, "MOONCAKE_MASTER");
  ExpectInvalid(r, "mooncake-connector standalone");
  // Settings other than master/client do not help.
  ExpectInvalid(Config("mooncake:///model", {{"MOONCAKE_PROTOCOL", "tcp"}}), "MOONCAKE_MASTER");
}

TEST(MooncakeConfig, ClientOnlyIsAccepted) {
  MooncakeConfig c = MustConfig("mooncake:///model", {{"MOONCAKE_CLIENT", "127.0.0.1:50052"}});
  EXPECT_EQ(c.client_address, "127.0.0.1:50052");
  EXPECT_EQ(c.master_address, "");
  MooncakeConfig o = MustConfig("mooncake:///model", {}, {{"client", "127.0.0.1:50053"}});
  EXPECT_EQ(o.client_address, "127.0.0.1:50053");
}

TEST(MooncakeConfig, MasterFromOptionOnly) {
  EXPECT_EQ(MustConfig("mooncake://", {}, {{"master", "m:9"}}).master_address, "m:9");
}

}  // namespace
}  // namespace mooncake_connector
