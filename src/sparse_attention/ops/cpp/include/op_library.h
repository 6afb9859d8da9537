// What every op's C++ includes from PyTorch, and how it registers its functions.
//
// The functions go to PyTorch's dispatcher under the extension's own namespace (torch.ops.<name>,
// name = TORCH_EXTENSION_NAME: op, instruction-set level and content hash), so an extension needs
// neither pybind11 nor Python.h. That matters for build time: parsing torch/extension.h took most
// of a translation unit's compile, ATen and torch/library.h take a fraction of it, and every op
// is compiled at four instruction-set levels. For the same reason the ops include only the ATen
// functions they call (ATen/ops/<name>.h) instead of all of them (ATen/ATen.h): an op that needs
// another one adds its header here.
#pragma once

// Tensor methods only from Tensor.h; free functions only from the per-op headers below.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

// TORCH_LIBRARY pastes its namespace into identifiers, which would stop TORCH_EXTENSION_NAME
// from expanding; one more macro level expands it first.
#define SA_LIBRARY_EXPANDED(ns, m) TORCH_LIBRARY(ns, m)
#define SA_OP_LIBRARY(m) SA_LIBRARY_EXPANDED(TORCH_EXTENSION_NAME, m)
