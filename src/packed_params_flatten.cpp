// torch.compile support for torch's LinearPackedParamsBase TorchBind class, the packed
// params of the dynamic linear ops. Dynamo traces a TorchBind object only when it has an
// __obj_flatten__ method, whose result builds the object's fake (qlgrad's fake class,
// registered in Python) and is guarded on at every call of the compiled function. torch
// defines none for this class, so qlgrad adds one when it loads, unless torch has one.

#include "packed_params.h"
#include "packed_weight.h"

#include <ATen/core/builtin_function.h>
#include <ATen/core/custom_class.h>
#include <torch/custom_class.h>

#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>

namespace qlgrad::detail {
namespace {

// What a compiled graph knows of a packed weight: its kind, its shape, and the sizes of the
// flat tensors that qlgrad::_linear_dynamic_with_weight returns beside its output (fbgemm's packing depends on the
// CPU).
struct PackedShape {
  WeightKind kind;
  int64_t in_features;
  int64_t out_features;
  int64_t values_numel;
  int64_t description_numel;
  int64_t scale_numel;
  int64_t zero_point_numel;
};

PackedShape shape_of(const PackedParams& packed) {
  const auto weight = uncached_weight(packed);
  return {kind_of(weight),
          weight.in_features(),
          weight.out_features(),
          weight.values.numel(),
          weight.blocked ? 6 : 3,
          weight.scale.numel(),
          weight.zero_point ? weight.zero_point->numel() : 0};
}

// The shape of each packed-params object, found once: unpack() copies the whole weight (for
// engines other than fbgemm), and __obj_flatten__ runs on every call of a compiled function. An entry holds a weak
// reference (the memory of a destroyed object stays allocated while it exists, so its
// address is never reused meanwhile) and is swept on the next miss once its object is gone.
class ShapeTable {
 public:
  PackedShape shape(const PackedParams& packed) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto found = entries_.find(packed.get());
      if (found != entries_.end()) {
        return found->second.shape;
      }
    }
    // Unpacking runs without the lock, so that it never blocks other objects.
    const PackedShape shape = shape_of(packed);
    std::lock_guard<std::mutex> lock(mutex_);
    std::erase_if(entries_, [](const auto& entry) { return entry.second.object.expired(); });
    entries_.insert_or_assign(packed.get(), Entry{c10::weak_intrusive_ptr<LinearPackedParamsBase>(packed), shape});
    return shape;
  }

 private:
  struct Entry {
    c10::weak_intrusive_ptr<LinearPackedParamsBase> object;
    PackedShape shape;
  };
  std::mutex mutex_;
  std::unordered_map<const LinearPackedParamsBase*, Entry> entries_;
};

using Field = std::tuple<std::string, std::string>;
using IntField = std::tuple<std::string, int64_t>;
using Flattened = std::tuple<Field, IntField, IntField, IntField, IntField, IntField, IntField>;

// The weight's kind and shape, and the sizes of its stored tensors: what the fake kernels need.
Flattened flatten(const PackedParams& packed) {
  static ShapeTable table;
  const PackedShape shape = table.shape(packed);
  return {Field{"kind", kind_name(shape.kind)},
          IntField{"in_features", shape.in_features},
          IntField{"out_features", shape.out_features},
          IntField{"values_numel", shape.values_numel},
          IntField{"description_numel", shape.description_numel},
          IntField{"scale_numel", shape.scale_numel},
          IntField{"zero_point_numel", shape.zero_point_numel}};
}

void add_flatten_method() {
  using Method = decltype(flatten);
  const c10::ClassTypePtr& type = c10::getCustomClassType<PackedParams>();
  if (type->findMethod("__obj_flatten__") != nullptr) {
    return;  // torch's own, or an earlier copy of libqlgrad's
  }
  auto method = std::make_unique<torch::jit::BuiltinOpFunction>(
      type->name()->qualifiedName() + ".__obj_flatten__",
      c10::inferFunctionSchemaSingleReturn<Method>("__obj_flatten__", ""),
      [](torch::jit::Stack& stack) { torch::detail::BoxedProxy<Flattened, Method>()(stack, flatten); });
  // A class does not own its methods: the registry keeps this one alive.
  type->addMethod(method.get());
  torch::registerCustomClassMethod(std::move(method));
}

const bool flatten_method_added = (add_flatten_method(), true);

} // namespace
} // namespace qlgrad::detail
