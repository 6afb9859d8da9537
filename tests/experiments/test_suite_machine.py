"""Result files say which CPU kernel build produced them."""

from sparse_attention.ops.record import machine_with_kernel


def test_cpu_results_record_the_kernel_build():
    machine = machine_with_kernel("cpu")
    assert machine["device"] == "cpu"
    assert {"isa_level", "compile_flags", "cpu_flags"} <= set(machine["cpu_kernel"])
