"""Optional dependencies: imported where they are used, and named with their pip command when missing.

The base install (torch, numpy, tqdm, matplotlib) starts every command and runs every
selection method and kernel. A few features need an extra of ``pyproject.toml``:
``safetensors`` (LM weights and checkpoints) and ``tokenizers`` (the BPE tokenizer, MiniLM)
come with ``sparse-attention[real]``. No module of this package imports an optional package
at its top level; code that needs one calls :func:`require` where it uses it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: The extra of ``pyproject.toml`` that installs each optional package (by import name).
EXTRAS = {"safetensors": "real", "tokenizers": "real", "onnx": "export", "onnxscript": "export",
          "onnxruntime": "export", "transformers": "hf"}


def install_command(package: str) -> str:
    """The pip command that installs ``package`` (its extra of this project when it has one)."""
    extra = EXTRAS.get(package)
    return f"pip install 'sparse-attention[{extra}]'" if extra else f"pip install {package}"


class MissingDependency(ImportError):
    """An optional package that a feature needs is not installed.

    ``str(err)`` is one line naming the feature, the package and the pip command;
    :meth:`for_command` words it for a command of the CLI.
    """

    def __init__(self, package: str, feature: str) -> None:
        self.package = package
        self.feature = feature
        self.install = install_command(package)
        super().__init__(f"{feature} needs the {package!r} package: {self.install}", name=package)

    def for_command(self, command: str) -> str:
        return f"sparse-attention {command} needs the {self.package!r} package for {self.feature}: {self.install}"


def require(module: str, feature: str) -> ModuleType:
    """``import module``; :class:`MissingDependency` when its top-level package is not installed.

    ``feature`` says what needs it (``"the BPE tokenizer"``). An import error raised from
    inside an installed package (one of its own dependencies missing) is left as it is.
    """
    package = module.partition(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if (err.name or "").partition(".")[0] != package:
            raise
        raise MissingDependency(package, feature) from err
