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
#include <vector>

#include "mooncake_connector/store.h"

namespace mooncake_connector::testing {

struct StoreFactory {
  std::string name;
  std::function<std::shared_ptr<Store>()> make;
  // False for a variant that cannot list (the scripted Mooncake has no
  // master admin port): the listing tests skip it, saying so; the real
  // Mooncake runs them.
  bool lists = true;
};

class StoreConformance : public ::testing::TestWithParam<StoreFactory> {
 protected:
  void SetUp() override;
  // Skips the test (with a message) where the variant cannot list.
  bool CannotList() const { return !GetParam().lists; }
  // A key unique to this test.
  std::string Key(std::string_view suffix) const { return prefix_ + std::string(suffix); }

  std::shared_ptr<Store> store_;
  std::string prefix_;
};

// Two threads BatchPut `keys` (values naming their key, writer and sequence;
// mostly small, some a few KB), one removes them now and then, two
// BatchGetInto them. Counts of reads, reads that were not one whole write of
// their key, and unexpected errors.
struct BatchAttackResult {
  int reads = 0;
  int wrong = 0;
  int errors = 0;
};
BatchAttackResult ConcurrentBatchAttack(Store& store, const std::vector<std::string>& keys, int rounds);

}  // namespace mooncake_connector::testing
