// The conformance suite every Store backend passes. A backend's test file
// instantiates it with a factory:
//
//   INSTANTIATE_TEST_SUITE_P(Memory, StoreConformance,
//       ::testing::Values(StoreFactory{"memory", [] { return NewMemoryStore(); }}));
//
// Each test gets a fresh key prefix, so a factory may return a shared store.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>

#include "mooncake_connector/store.h"

namespace mooncake_connector::testing {

struct StoreFactory {
  std::string name;
  std::function<std::shared_ptr<Store>()> make;
};

class StoreConformance : public ::testing::TestWithParam<StoreFactory> {
 protected:
  void SetUp() override;
  // A key unique to this test.
  std::string Key(std::string_view suffix) const { return prefix_ + std::string(suffix); }

  std::shared_ptr<Store> store_;
  std::string prefix_;
};

}  // namespace mooncake_connector::testing
