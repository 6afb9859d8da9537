// What every op's C++ includes from PyTorch, and how it registers its functions.
//
// The functions go to PyTorch's dispatcher under the extension's own namespace (torch.ops.<name>,
// name = TORCH_EXTENSION_NAME: op, instruction-set level and content hash), so an extension needs
// neither pybind11 nor Python.h. That matters for build time: parsing torch/extension.h took most
// of a translation unit's compile, ATen and torch/library.h take a fraction of it, and every op
// is compiled at four instruction-set levels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

// TORCH_LIBRARY pastes its namespace into identifiers, which would stop TORCH_EXTENSION_NAME
// from expanding; one more macro level expands it first.
#define SA_LIBRARY_EXPANDED(ns, m) TORCH_LIBRARY(ns, m)
#define SA_OP_LIBRARY(m) SA_LIBRARY_EXPANDED(TORCH_EXTENSION_NAME, m)
