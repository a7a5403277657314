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
#include <cstring>
#include <iostream>
#include <string>

#include "mooncake_connector/mooncake_store.h"
#include "store/mooncake/mooncake_api_internal.h"
#include "store_conformance.h"

namespace mooncake_connector {
namespace {

std::shared_ptr<Store> g_store;

using testing::StoreConformance;
using testing::StoreFactory;

INSTANTIATE_TEST_SUITE_P(Mooncake, StoreConformance,
                         ::testing::Values(StoreFactory{"Real", [] { return g_store; }}),
                         [](const auto& info) { return info.param.name; });

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

  int rc = 2;
  PyThreadState* saved = PyEval_SaveThread();  // the provider takes the GIL per call
  {
    Result<MooncakeConfig> mc_config = MooncakeConfigFrom(*ParseUrl("mooncake://"), {});
    Result<std::shared_ptr<Store>> store =
        mc_config.ok() ? OpenMooncakeStore(*mc_config) : Result<std::shared_ptr<Store>>(mc_config.status());
    if (!store.ok()) {
      std::cerr << "FATAL: cannot open mooncake://: " << store.status() << "\n";
    } else {
      g_store = *store;
      rc = RUN_ALL_TESTS();
      g_store.reset();
    }
  }
  PyEval_RestoreThread(saved);
  Check(PyObject_CallMethod(inst, "stop", nullptr), "instance.stop");
  std::cout.flush();
  // Skip interpreter finalization: Mooncake's client threads may still be
  // winding down, and the process is about to exit anyway.
  std::_Exit(rc);
}
