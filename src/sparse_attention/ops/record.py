"""What every result file records about the ops: the machine, the CPU kernel's build, and what ran."""

from __future__ import annotations

import os

import torch

from ..utils.machine import machine_info
from .attention.cpu import build_info
from .dispatch import dispatch_record

__all__ = ["ISA_CAP_VARIABLES", "cpu_kernel_info", "dispatch_record", "machine_with_kernel"]


#: Variables that hold PyTorch's own CPU kernels to an instruction set (recorded with results).
ISA_CAP_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu_kernel_info() -> dict:
    """:func:`build_info` plus the ISA PyTorch's dense kernels use and any ISA caps set, for result files."""
    info = build_info()
    info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info["isa_caps"] = {name: os.environ[name] for name in ISA_CAP_VARIABLES if name in os.environ}
    return info


def machine_with_kernel(device: torch.device | str = "cpu") -> dict:
    """:func:`~sparse_attention.utils.machine.machine_info` plus, on CPU, ``cpu_kernel``
    (:func:`cpu_kernel_info`: the ISA the kernel was built for), as every result file records it."""
    machine = machine_info(device)
    if torch.device(device).type == "cpu":
        machine["cpu_kernel"] = cpu_kernel_info()
    return machine
