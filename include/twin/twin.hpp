// twin: Twin-Merging for C++ inference engines. This umbrella header brings in
// everything that runs on the CPU and needs nothing optional; the Eigen and
// xtensor adapters (twin/adapters/) and the CUDA path (twin/backend/cuda/)
// are included explicitly by the hosts that want them.
#pragma once

#include "twin/adapter.hpp"
#include "twin/config.hpp"
#include "twin/convert.hpp"
#include "twin/dtype.hpp"
#include "twin/error.hpp"
#include "twin/fwd.hpp"
#include "twin/metadata.hpp"
#include "twin/parallel.hpp"
#include "twin/random.hpp"
#include "twin/shape.hpp"
#include "twin/state_dict.hpp"
#include "twin/tensor.hpp"
#include "twin/tensor_view.hpp"

#include "twin/merge/any_merger.hpp"
#include "twin/merge/arcee_fusion.hpp"
#include "twin/merge/breadcrumbs.hpp"
#include "twin/merge/dare.hpp"
#include "twin/merge/della.hpp"
#include "twin/merge/gta.hpp"
#include "twin/merge/interpolate.hpp"
#include "twin/merge/karcher.hpp"
#include "twin/merge/merger.hpp"
#include "twin/merge/model_stock.hpp"
#include "twin/merge/multislerp.hpp"
#include "twin/merge/nearswap.hpp"
#include "twin/merge/nuslerp.hpp"
#include "twin/merge/passthrough.hpp"
#include "twin/merge/ram.hpp"
#include "twin/merge/sce.hpp"
#include "twin/merge/selection.hpp"
#include "twin/merge/slerp.hpp"
#include "twin/merge/task_arithmetic.hpp"
#include "twin/merge/task_vector.hpp"
#include "twin/merge/ties.hpp"
#include "twin/merge/weight_average.hpp"

#include "twin/compress/exclusive_module.hpp"
#include "twin/compress/magnitude_sparsifier.hpp"
#include "twin/compress/svd_compressor.hpp"

#include "twin/model/twin_model.hpp"

#include "twin/route/grouping.hpp"
#include "twin/route/labels.hpp"
#include "twin/route/nn.hpp"
#include "twin/route/router.hpp"
#include "twin/route/router_config.hpp"
#include "twin/route/router_training.hpp"
#include "twin/route/routing.hpp"
#include "twin/route/sampling.hpp"

#include "twin/fuse/dynamic_fuser.hpp"
#include "twin/fuse/mixed_batch.hpp"

#include "twin/io/router_file.hpp"
#include "twin/io/safetensors.hpp"
#include "twin/io/twin_model_file.hpp"
