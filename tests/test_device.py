"""The precision a CPU run picks, and the hardware class a time budget names: the same on every CPU
class, since RESNETLAB_CPU_BF16 overrides what /proc/cpuinfo says."""

import pytest
import torch

from resnetlab import device as dev
from resnetlab.errors import UserError

CPU = torch.device("cpu")


@pytest.mark.parametrize("forced, expected", [("0", "fp32"), ("1", "bf16")])
def test_cpu_precision_follows_the_override(monkeypatch, forced, expected):
    monkeypatch.setenv(dev.CPU_BF16_ENV, forced)
    assert dev.resolve_precision("auto", CPU) == expected
    assert dev.precision_reason(expected, "auto", CPU) == f"{expected}: RESNETLAB_CPU_BF16={forced} says so"


def test_cpu_precision_without_override_follows_the_flags(monkeypatch):
    monkeypatch.delenv(dev.CPU_BF16_ENV, raising=False)
    for has, expected in [(True, "bf16"), (False, "fp32")]:
        monkeypatch.setattr(dev, "_cpu_flags_bf16", lambda has=has: has)
        assert dev.resolve_precision("auto", CPU) == expected
        assert dev.precision_reason(expected, "auto", CPU).startswith(f"{expected}: this CPU has")


def test_an_explicit_precision_wins_and_fp16_is_refused_on_cpu(monkeypatch):
    monkeypatch.setenv(dev.CPU_BF16_ENV, "0")
    assert dev.resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(UserError, match="fp16 is for GPUs"):
        dev.resolve_precision("fp16", CPU)


def test_hardware_class_names_the_flags_the_override_and_the_vector_kernels(monkeypatch):
    isa = torch.backends.cpu.get_cpu_capability()
    threads = torch.get_num_threads()
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(dev, "_cpu_flags_bf16", lambda: True)
    monkeypatch.setenv(dev.CPU_BF16_ENV, "0")  # a bf16 CPU forced to fp32 must not read as the fp32 class
    assert dev.hardware_class(CPU, "fp32") == (
        f"CPU with AVX-512 BF16/AMX, RESNETLAB_CPU_BF16=0 ({dev.platform.machine()} {isa}, {threads} threads), fp32")
    monkeypatch.setenv(dev.CPU_BF16_ENV, "1")  # agrees with the flags: nothing to say
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert dev.hardware_class(CPU, "bf16") == (
        f"CPU with AVX-512 BF16/AMX ({dev.platform.machine()} {isa}, ONEDNN_MAX_CPU_ISA=AVX2, {threads} threads), bf16")
    monkeypatch.setattr(dev, "_cpu_flags_bf16", lambda: False)
    monkeypatch.delenv(dev.CPU_BF16_ENV)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert dev.hardware_class(CPU, "fp32").startswith(f"CPU without AVX-512 BF16/AMX ({dev.platform.machine()} {isa},")
