// Forward declarations of twin's public types, for headers that only name them.
#pragma once

#include <cstdint>

namespace twin {
enum class dtype : std::uint8_t;
struct device;
template <class V>
class BasicTensorView;
using TensorView = BasicTensorView<void>;
using ConstTensorView = BasicTensorView<const void>;
class Tensor;
class StateDict;
template <class T>
struct tensor_adapter;
class TaskVector;
struct TensorMergeArgs;
struct MergeOptions;
struct WeightAverage;
struct TaskArithmetic;
struct Ties;
struct DareLinear;
struct DareTies;
struct Breadcrumbs;
class AnyMerger;
class ExclusiveModule;
struct SvdCompressor;
struct MagnitudeSparsifier;
class TwinModel;
class DynamicFuser;
class Router;
struct RouterConfig;
struct TwinModelFile;
struct RouterTrainOptions;
struct RouterTrainReport;
}  // namespace twin
