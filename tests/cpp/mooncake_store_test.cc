// The store conformance suite over mooncake://, against a real Mooncake
// master and storage process. The Mooncake client comes from the wheel
// through the Python provider (the only provider this machine has), so the
// binary embeds Python: MC_TEST_PYTHON must name the Python of a venv where
// mooncake_connector and the mooncake wheel are installed. The standalone
// instance is started (and stopped) through mooncake_connector.standalone.
// A missing interpreter, wheel or master fails the run; nothing is skipped.
#include <Python.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <cstring>
#include <iostream>
#include <string>

#include "core/hash_internal.h"
#include "mooncake_connector/connector.h"
#include "mooncake_connector/model.h"
#include "mooncake_connector/mooncake_store.h"
#include "store/mooncake/mooncake_api_internal.h"
#include "store_conformance.h"

namespace mooncake_connector {
namespace {

std::shared_ptr<Store> g_store;
// A client holding the only segment of a second instance: every object it
// writes lies in its own memory, where its reads copy it from.
std::shared_ptr<Store> g_own_store;
// A client of the first instance with 1 MiB chunks: the suite's large values
// (1.5 MiB) are chunked, so batched first writes of chunked values race
// with removes and other writers on a real master.
std::shared_ptr<Store> g_small_chunks_store;

using testing::StoreConformance;
using testing::StoreFactory;

INSTANTIATE_TEST_SUITE_P(Mooncake, StoreConformance,
                         ::testing::Values(StoreFactory{"Real", [] { return g_store; }},
                                           StoreFactory{"RealOwnSegment", [] { return g_own_store; }},
                                           StoreFactory{"RealSmallChunks", [] { return g_small_chunks_store; }}),
                         [](const auto& info) { return info.param.name; });

// g_own_store's table: the wheel's, with its local-replica query counted and
// the last address given for each key kept.
const mooncake::Api* g_wheel = nullptr;
std::mutex g_local_mu;
std::map<std::string, std::pair<std::byte*, uint64_t>> g_local;  // key -> replica in this process
int g_local_found = 0;

int CountedLocalReplicas(mooncake::Handle h, const char** keys, size_t n, const void** addresses, uint64_t* sizes) {
  int rc = g_wheel->batch_local_replicas(h, keys, n, addresses, sizes);
  std::lock_guard lock(g_local_mu);
  for (size_t i = 0; rc == 0 && i < n; ++i) {
    if (addresses[i] == nullptr) continue;
    ++g_local_found;
    g_local[keys[i]] = {static_cast<std::byte*>(const_cast<void*>(addresses[i])), sizes[i]};
  }
  return rc;
}

std::vector<std::byte> Pattern(size_t n, int seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::byte((i * 31 + seed + (i >> 12)) & 0xff);
  return v;
}

TEST(MooncakeOwnSegment, ReadsCopyObjectsFromTheReadersOwnSegment) {
  // A raw object (3 MiB) and a value of two 16 MiB chunks: all three objects
  // are in this client's segment, and a read of a known size copies those
  // whose bytes are checked from there: the chunks (the value's checksum)
  // always, the raw object when the caller hashes it.
  std::vector<std::vector<std::byte>> values = {Pattern(3 << 20, 1), Pattern((20 << 20) + 5, 2)};
  for (bool hashed : {false, true}) {
    for (size_t i = 0; i < values.size(); ++i) {
      ASSERT_TRUE(g_own_store->Put(i == 0 ? "own/v0" : "own/v1", values[i]).ok());
    }
    int before;
    {
      std::lock_guard lock(g_local_mu);
      before = g_local_found;
    }
    std::vector<std::vector<std::byte>> heads(2, std::vector<std::byte>(64)), rests;
    std::vector<uint64_t> hashes(2, 0);
    const std::vector<std::string> keys = {"own/v0", "own/v1"};
    std::vector<GetIntoRequest> requests;
    for (size_t i = 0; i < values.size(); ++i) rests.emplace_back(values[i].size() - 64);
    for (size_t i = 0; i < values.size(); ++i) {
      requests.push_back(GetIntoRequest{keys[i], rests[i], heads[i], hashed ? &hashes[i] : nullptr, /*exact=*/true});
    }
    std::vector<Result<uint64_t>> got = g_own_store->BatchGetInto(requests);
    for (size_t i = 0; i < values.size(); ++i) {
      ASSERT_TRUE(got[i].ok()) << got[i].status();
      EXPECT_EQ(std::memcmp(heads[i].data(), values[i].data(), 64), 0) << i;
      EXPECT_EQ(std::memcmp(rests[i].data(), values[i].data() + 64, rests[i].size()), 0) << i;
      if (hashed) EXPECT_EQ(hashes[i], Xxh3(ConstBytes(values[i]).subspan(64))) << i;
    }
    std::lock_guard lock(g_local_mu);
    EXPECT_EQ(g_local_found - before, hashed ? 3 : 2) << hashed;
  }
}

TEST(MooncakeOwnSegment, ACorruptedLocalReplicaIsDataLoss) {
  // A flipped bit in a chunk, in this client's own memory: the copy fails
  // the value's checksum, so does Mooncake's own read of it; DataLoss.
  const std::string key = "own/corrupt";
  std::vector<std::byte> value = Pattern((20 << 20) + 5, 3);
  ASSERT_TRUE(g_own_store->Put(key, value).ok());
  std::vector<std::byte> head(64), rest(value.size() - 64);
  GetIntoRequest request{key, rest, head, nullptr, /*exact=*/true};
  ASSERT_TRUE(g_own_store->BatchGetInto({&request, 1})[0].ok());
  std::byte* chunk = nullptr;
  {
    std::lock_guard lock(g_local_mu);
    for (auto& [k, where] : g_local) {
      if (k.rfind(key, 0) == 0 && k != key && where.second > 100) chunk = where.first;
    }
  }
  ASSERT_NE(chunk, nullptr);
  chunk[100] ^= std::byte{0x10};
  Result<uint64_t> got = g_own_store->BatchGetInto({&request, 1})[0];
  EXPECT_EQ(got.status().code(), StatusCode::kDataLoss) << got.status();
  Result<Buffer> whole = g_own_store->Get(key);
  EXPECT_EQ(whole.status().code(), StatusCode::kDataLoss) << whole.status();
  chunk[100] ^= std::byte{0x10};
  ASSERT_TRUE(g_own_store->BatchGetInto({&request, 1})[0].ok());
  EXPECT_EQ(std::memcmp(rest.data(), value.data() + 64, rest.size()), 0);
  ASSERT_TRUE(g_own_store->Remove(key).ok());
}

TEST(MooncakeStore, ValuesStripedOverManySmallChunksRoundTrip) {
  // A second client with a tiny chunk size: 300 chunks, several batches.
  Result<MooncakeConfig> config = MooncakeConfigFrom(*ParseUrl("mooncake://"), {{"chunk_size", "4kb"}});
  ASSERT_TRUE(config.ok()) << config.status();
  Result<std::shared_ptr<Store>> store = OpenMooncakeStore(*config);
  ASSERT_TRUE(store.ok()) << store.status();
  std::vector<uint8_t> value(300 * 4096 - 17);
  for (size_t i = 0; i < value.size(); ++i) value[i] = static_cast<uint8_t>(i * 7 + 3);
  ASSERT_TRUE((*store)->Put("striped/small-chunks", std::as_bytes(std::span(value))).ok());
  Result<Buffer> back = g_store->Get("striped/small-chunks");  // read by a client with 16 MB chunks
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), value.size());
  EXPECT_EQ(std::memcmp(back->data(), value.data(), value.size()), 0);
  EXPECT_EQ(*g_store->GetSize("striped/small-chunks"), value.size());
  ASSERT_TRUE(g_store->Remove("striped/small-chunks").ok());
}

TEST(MooncakeStore, ACallersChecksumInPiecesAfterAHeadIsWhatReadsCheck) {
  // A value of a 200-byte head and 40 MiB + 5 of payload (three 16 MiB
  // pieces): the caller's checksum from the head's hash and the payload's
  // pieces' hashes (as a model save gives it) is recorded, and a read that
  // checks the whole value accepts it; a checksum of another kind (the whole
  // value's XXH3, said to be in pieces) is caught by that read.
  const uint64_t chunk = g_store->Features().chunk_bytes;
  ASSERT_EQ(chunk, uint64_t{16} << 20);
  const size_t head = 200;
  std::vector<std::byte> value = Pattern(head + (40 << 20) + 5, 7);
  const ConstBytes all(value);
  Xxh3PieceTasks pieces(chunk);
  pieces.Add(all.subspan(head));
  for (size_t t = 0; t < pieces.tasks(); ++t) pieces.Hash(t);
  std::vector<uint64_t> digests{Xxh3(all.first(head))};
  for (uint64_t d : pieces.Digests(0)) digests.push_back(d);
  ASSERT_EQ(digests.size(), 4u);
  const uint64_t in_pieces = Xxh3OfDigests(digests);
  const ConstBytes parts[] = {all.first(head), all.subspan(head)};
  for (auto [checksum, value_head, ok] : {std::tuple{in_pieces, uint64_t{head}, true},
                                          std::tuple{Xxh3(all), PutRequest::kWholeValue, true},
                                          std::tuple{Xxh3(all), uint64_t{head}, false},
                                          std::tuple{in_pieces, PutRequest::kWholeValue, false}}) {
    PutRequest put{"pieces/value", parts, checksum};
    put.value_xxh3_head = value_head;
    ASSERT_TRUE(g_store->BatchPut({&put, 1}, {})[0].ok());
    Result<Buffer> back = g_store->Get("pieces/value");
    if (!ok) {
      EXPECT_EQ(back.status().code(), StatusCode::kDataLoss) << back.status();
      continue;
    }
    ASSERT_TRUE(back.ok()) << back.status();
    ASSERT_EQ(back->size(), value.size());
    EXPECT_EQ(std::memcmp(back->data(), value.data(), value.size()), 0);
  }
  ASSERT_TRUE(g_store->Remove("pieces/value").ok());
}

TEST(MooncakeStore, ASavedTensorLargerThanAChunkReadsBackWholeThroughAPlainGet) {
  // A model save derives its large values' checksums from its tensors'
  // pieces: a plain get (SGLang's own, which checks the value's checksum)
  // of such a tensor, first saved and then saved over, returns it.
  Result<std::unique_ptr<Connector>> c = Connector::Create("mooncake:///pieces/model");
  ASSERT_TRUE(c.ok()) << c.status();
  Result<Model> m = Model::Open(**c);
  ASSERT_TRUE(m.ok()) << m.status();
  for (int seed : {1, 2}) {
    std::vector<std::byte> big = Pattern((33 << 20) + 6, seed), small = Pattern(1000, seed);
    const NamedTensorView tensors[] = {
        {"big", TensorView{DType::kBF16, {static_cast<int64_t>(big.size() / 2)}, big.data(), big.size()}},
        {"small", TensorView{DType::kU8, {1000}, small.data(), small.size()}}};
    ASSERT_TRUE(m->SaveStateDict(0, tensors).ok());
    for (const NamedTensorView& t : tensors) {
      Result<std::optional<Tensor>> got = (*c)->Get(m->TensorKey(0, t.name));
      ASSERT_TRUE(got.ok()) << t.name << ": " << got.status();
      ASSERT_TRUE(got->has_value()) << t.name;
      ASSERT_EQ((*got)->nbytes(), t.tensor.nbytes) << t.name;
      EXPECT_EQ(std::memcmp((*got)->data(), t.tensor.data, t.tensor.nbytes), 0) << t.name << " " << seed;
    }
  }
  ASSERT_TRUE(m->Remove().ok());
}

TEST(MooncakeStore, ConnectorsShareAClientOnlyWithTheSameSettings) {
  // Same settings: one client. direct_transfers or local_reads apart: a
  // client each, so that each connector reads as it asked.
  auto open = [](std::map<std::string, std::string> options) {
    Result<MooncakeConfig> config = MooncakeConfigFrom(*ParseUrl("mooncake://"), options);
    EXPECT_TRUE(config.ok()) << config.status();
    Result<std::shared_ptr<Store>> store = OpenMooncakeStore(*config);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *store : nullptr;
  };
  std::shared_ptr<Store> a = open({{"chunk_size", "8kb"}}), b = open({{"chunk_size", "8kb"}});
  std::shared_ptr<Store> staged = open({{"chunk_size", "8kb"}, {"direct_transfers", "0"}});
  std::shared_ptr<Store> remote = open({{"chunk_size", "8kb"}, {"local_reads", "0"}});
  ASSERT_TRUE(a && b && staged && remote);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, staged);
  EXPECT_NE(a, remote);
  EXPECT_NE(staged, remote);
}

// Fails the process with the Python error, if any.
PyObject* Check(PyObject* o, const char* what) {
  if (o == nullptr) {
    PyErr_Print();
    std::cerr << "FATAL: " << what << " failed\n";
    std::exit(2);
  }
  return o;
}

}  // namespace
}  // namespace mooncake_connector

int main(int argc, char** argv) {
  using namespace mooncake_connector;
  ::testing::InitGoogleTest(&argc, argv);
  const char* python = std::getenv("MC_TEST_PYTHON");
  if (python == nullptr || *python == '\0') {
    std::cerr << "FATAL: set MC_TEST_PYTHON to the venv's python (make test does)\n";
    return 2;
  }
  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  // The venv's interpreter path makes site-packages of that venv importable.
  PyStatus status = PyConfig_SetBytesString(&config, &config.program_name, python);
  if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(status)) {
    std::cerr << "FATAL: cannot start Python from " << python << "\n";
    return 2;
  }

  PyObject* standalone = Check(PyImport_ImportModule("mooncake_connector.standalone"), "import standalone");
  // A short read lease, as in Mooncake's own CI: removes wait leases out.
  PyObject* start = Check(PyObject_GetAttrString(standalone, "start"), "standalone.start");
  PyObject* args = Py_BuildValue("(s)", "1gb");
  PyObject* kwargs = Py_BuildValue("{s:i}", "lease_ttl_ms", 500);
  PyObject* inst = Check(PyObject_Call(start, args, kwargs), "standalone.start");
  PyObject* env = Check(PyObject_CallMethod(inst, "env", nullptr), "instance.env");
  PyObject *key, *value;
  Py_ssize_t pos = 0;
  while (PyDict_Next(env, &pos, &key, &value)) {
    setenv(PyUnicode_AsUTF8(key), PyUnicode_AsUTF8(value), 1);
  }
  PyObject* impl = Check(PyImport_ImportModule("mooncake_connector._impl"), "import _impl");
  PyObject* capsule = Check(PyObject_CallMethod(impl, "mooncake_api_capsule", nullptr), "capsule");
  auto* api = static_cast<const mooncake::Api*>(PyCapsule_GetPointer(capsule, "mooncake_connector.mooncake_api"));
  Check(reinterpret_cast<PyObject*>(const_cast<mooncake::Api*>(api)), "capsule pointer");
  SetDefaultMooncakeApi(api);

  // The second instance: a master alone, the memory all g_own_store's.
  PyObject* own_kwargs = Py_BuildValue("{s:i,s:i}", "lease_ttl_ms", 500, "storage_processes", 0);
  PyObject* own_inst = Check(PyObject_Call(start, args, own_kwargs), "standalone.start (no storage)");
  std::map<std::string, std::string> own_options = {{"global_segment_size", "512mb"}};
  for (auto [field, attr] : {std::pair{"master", "master_address"}, std::pair{"metrics_port", "metrics_port"}}) {
    PyObject* v = Check(PyObject_GetAttrString(own_inst, attr), attr);
    PyObject* text = Check(PyObject_Str(v), "str");
    own_options[field] = PyUnicode_AsUTF8(text);
  }
  g_wheel = api;
  static mooncake::Api counted = *api;
  counted.batch_local_replicas = &CountedLocalReplicas;

  int rc = 2;
  PyThreadState* saved = PyEval_SaveThread();  // the provider takes the GIL per call
  {
    Result<MooncakeConfig> mc_config = MooncakeConfigFrom(*ParseUrl("mooncake://"), {});
    Result<std::shared_ptr<Store>> store =
        mc_config.ok() ? OpenMooncakeStore(*mc_config) : Result<std::shared_ptr<Store>>(mc_config.status());
    Result<MooncakeConfig> own_config = MooncakeConfigFrom(*ParseUrl("mooncake://"), own_options);
    Result<std::shared_ptr<Store>> own_store = own_config.ok()
                                                   ? OpenMooncakeStore(*own_config, &counted)
                                                   : Result<std::shared_ptr<Store>>(own_config.status());
    Result<MooncakeConfig> small_config = MooncakeConfigFrom(*ParseUrl("mooncake://"), {{"chunk_size", "1mb"}});
    Result<std::shared_ptr<Store>> small_store = small_config.ok()
                                                     ? OpenMooncakeStore(*small_config)
                                                     : Result<std::shared_ptr<Store>>(small_config.status());
    if (!store.ok() || !small_store.ok()) {
      std::cerr << "FATAL: cannot open mooncake://: " << store.status() << " " << small_store.status() << "\n";
    } else if (!own_store.ok()) {
      std::cerr << "FATAL: cannot open mooncake:// with a segment of its own: " << own_store.status() << "\n";
    } else {
      g_store = *store;
      g_own_store = *own_store;
      g_small_chunks_store = *small_store;
      rc = RUN_ALL_TESTS();
      g_store.reset();
      g_own_store.reset();
      g_small_chunks_store.reset();
    }
  }
  PyEval_RestoreThread(saved);
  Check(PyObject_CallMethod(own_inst, "stop", nullptr), "instance.stop");
  Check(PyObject_CallMethod(inst, "stop", nullptr), "instance.stop");
  std::cout.flush();
  // Skip interpreter finalization: Mooncake's client threads may still be
  // winding down, and the process is about to exit anyway.
  std::_Exit(rc);
}
