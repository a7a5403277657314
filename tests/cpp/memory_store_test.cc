#include "mooncake_connector/memory_store.h"

#include <gtest/gtest.h>

#include "store_conformance.h"

namespace mooncake_connector {
namespace {

using testing::StoreConformance;
using testing::StoreFactory;

INSTANTIATE_TEST_SUITE_P(
    Memory, StoreConformance,
    ::testing::Values(StoreFactory{"Private", [] { return NewMemoryStore(); }},
                      StoreFactory{"OneShard", [] { return NewMemoryStore({.num_shards = 1}); }},
                      StoreFactory{"Named", [] { return *OpenNamedMemoryStore("conformance", {}); }}),
    [](const auto& info) { return info.param.name; });

ConstBytes Bytes(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }

TEST(MemoryStore, CapacityLimitIsResourceExhaustedAndChangesNothing) {
  auto store = NewMemoryStore({.capacity_bytes = 10}, "small");
  ASSERT_TRUE(store->Put("a", Bytes("123456")).ok());
  Status s = store->Put("b", Bytes("123456"));
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("small"), std::string_view::npos) << s;
  EXPECT_FALSE(*store->Exists("b"));
  // Replacing a value counts only the difference.
  EXPECT_TRUE(store->Put("a", Bytes("1234567890")).ok());
  EXPECT_EQ(store->Put("a", Bytes("12345678901")).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(*store->GetSize("a"), 10u);
  // Removing frees the space.
  ASSERT_TRUE(store->Remove("a").ok());
  EXPECT_TRUE(store->Put("b", Bytes("123456")).ok());
}

TEST(MemoryStore, ViewsShareTheValueAsItWasWhenTaken) {
  auto store = NewMemoryStore();
  ASSERT_TRUE(store->Put("a", Bytes("first")).ok());
  std::vector<std::string_view> keys = {"a", "missing", ""};
  std::vector<Result<Buffer>> views = store->BatchView(keys);
  ASSERT_TRUE(views[0].ok()) << views[0].status();
  EXPECT_EQ(views[1].status().code(), StatusCode::kNotFound);
  EXPECT_EQ(views[2].status().code(), StatusCode::kInvalidArgument);
  // Overwritten and removed: the view still holds what it viewed.
  ASSERT_TRUE(store->Put("a", Bytes("second!")).ok());
  ASSERT_TRUE(store->Remove("a").ok());
  EXPECT_EQ(std::string_view(reinterpret_cast<const char*>(views[0]->data()), views[0]->size()), "first");
}

TEST(MemoryStore, PinnedValuesNeedTheCudaDriver) {
  Result<std::shared_ptr<Store>> pinned = OpenNamedMemoryStore("pinned-test", {.pinned = true});
  if (pinned.ok()) GTEST_SKIP() << "this machine has a CUDA driver (the GPU tests cover pinned stores)";
  EXPECT_EQ(pinned.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(pinned.status().message().find("CUDA driver"), std::string_view::npos) << pinned.status();
  // Asking for pinned values of a store already open without them is refused.
  auto plain = *OpenNamedMemoryStore("pinned-test-plain", {});
  EXPECT_EQ(OpenNamedMemoryStore("pinned-test-plain", {.pinned = true}).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(MemoryStore, NamedStoresAreSharedByNameOnly) {
  auto a1 = *OpenNamedMemoryStore("shared-a", {});
  auto a2 = *OpenNamedMemoryStore("shared-a", {});
  auto b = *OpenNamedMemoryStore("shared-b", {});
  ASSERT_TRUE(a1->Put("k", Bytes("v")).ok());
  EXPECT_TRUE(*a2->Exists("k"));
  EXPECT_FALSE(*b->Exists("k"));
  EXPECT_EQ(a1->url(), "memory://shared-a");
  EXPECT_EQ(OpenNamedMemoryStore("shared-a", {.capacity_bytes = 5}).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(MemoryStore, NamedStoreIsReleasedWithItsLastUser) {
  {
    auto s = *OpenNamedMemoryStore("transient", {});
    ASSERT_TRUE(s->Put("k", Bytes("v")).ok());
  }
  auto again = *OpenNamedMemoryStore("transient", {});
  EXPECT_FALSE(*again->Exists("k"));
}

TEST(MemoryStore, GetReturnsACopy) {
  auto store = NewMemoryStore();
  ASSERT_TRUE(store->Put("k", Bytes("abc")).ok());
  Buffer first = *store->Get("k");
  first.data()[0] = std::byte{'X'};
  Buffer second = *store->Get("k");
  EXPECT_EQ(static_cast<char>(second.data()[0]), 'a');
}

}  // namespace
}  // namespace mooncake_connector
