"""The precision rule (``auto``: a rule of the hardware, never of its load), ``fastest``'s timing probe, and the
numerics record every run writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from hscl.engine.runtime import precision as precision_module
from hscl.engine.runtime.config import load_config
from hscl.engine.runtime.precision import (
    cpu_bf16_flags,
    cpu_has_native_bf16,
    cpu_model,
    describe_numerics,
    numerics_record,
    resolve_precision,
)

CPU = torch.device("cpu")

# trimmed /proc/cpuinfo of three CPUs: Sapphire Rapids (AMX + AVX512-BF16), Cooper Lake (AVX512-BF16 only),
# Skylake-SP (AVX-512 without bf16) and an AMD EPYC with AVX2 only
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
COOPER_LAKE = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8380H CPU @ 2.90GHz
flags\t\t: fpu sse sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16
"""
SKYLAKE = """processor\t: 0
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags\t\t: fpu sse sse2 avx avx2 avx512f avx512bw avx512cd avx512dq avx512vl
"""
EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse sse2 avx avx2 fma bmi2 sha_ni
processor\t: 1
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse sse2 avx avx2 fma bmi2 sha_ni
"""


def _convnet() -> nn.Module:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8 * 8, 5)

        def forward(self, x):
            h = self.conv(x).flatten(1)
            return h, self.fc(h)

    return Net()


@pytest.mark.parametrize(
    ("cpuinfo", "flags"),
    [(SAPPHIRE_RAPIDS, ["amx_bf16", "avx512_bf16"]), (COOPER_LAKE, ["avx512_bf16"]), (SKYLAKE, []), (EPYC_AVX2, [])],
)
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, flags):
    assert cpu_bf16_flags(cpuinfo) == flags
    assert cpu_has_native_bf16(cpuinfo) is bool(flags)


def test_cpu_model_is_the_model_name_line():
    assert cpu_model(SAPPHIRE_RAPIDS) == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu_model(EPYC_AVX2) == "AMD EPYC 7B12"


def test_without_proc_cpuinfo_torchs_capability_helpers_answer(monkeypatch):
    monkeypatch.setattr(precision_module, "_read_cpuinfo", lambda: None)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert cpu_bf16_flags() == ["avx512_bf16"] and cpu_has_native_bf16()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert not cpu_has_native_bf16()


def _no_timing(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("timed a step")

    monkeypatch.setattr(precision_module, "_probe", fail)


def test_auto_on_the_cpu_is_a_rule_of_the_flags_not_a_timing(monkeypatch):
    _no_timing(monkeypatch)
    net, mlp = _convnet(), nn.Sequential(nn.Linear(4, 4))
    assert resolve_precision("auto", net, None, CPU, cpuinfo=SAPPHIRE_RAPIDS) == ("bf16-mixed", True)
    assert resolve_precision("auto", net, None, CPU, cpuinfo=COOPER_LAKE) == ("bf16-mixed", True)
    assert resolve_precision("auto", mlp, None, CPU, cpuinfo=SAPPHIRE_RAPIDS) == ("bf16-mixed", False)
    assert resolve_precision("auto", net, None, CPU, cpuinfo=EPYC_AVX2) == ("32-true", False)
    assert resolve_precision("auto", net, None, CPU, cpuinfo=SKYLAKE) == ("32-true", False)
    # pinned settings need no timing either; several processes change nothing
    assert resolve_precision("32", net, None, CPU, cpuinfo=SAPPHIRE_RAPIDS) == ("32-true", False)
    assert resolve_precision("auto", net, None, CPU, processes=4, cpuinfo=COOPER_LAKE) == ("bf16-mixed", True)
    with pytest.warns(UserWarning, match="no native bf16"):
        assert resolve_precision("bf16", net, None, CPU, cpuinfo=EPYC_AVX2) == ("bf16-mixed", True)
    with pytest.raises(ValueError, match=r"train.precision=16 \(fp16-mixed\) is for CUDA GPUs"):
        resolve_precision("16", net, None, CPU)
    with pytest.raises(ValueError, match=r"precision must be one of auto, fastest, bf16, 16, 32, got 'fp16'"):
        resolve_precision("fp16", net, None, CPU)


def test_fastest_times_the_candidates_and_keeps_the_fastest(monkeypatch):
    timed = []
    timings = {(False, False): 0.30, (False, True): 0.20, (True, True): 0.25}

    def fake_probe(model, sample, bf16, channels_last, steps=3):
        timed.append((bf16, channels_last))
        return timings[(bf16, channels_last)]

    monkeypatch.setattr(precision_module, "_probe", fake_probe)
    net, sample = _convnet(), torch.randn(4, 1, 8, 8)
    assert resolve_precision("fastest", net, sample, CPU, cpuinfo=EPYC_AVX2) == ("32-true", True)
    assert timed[:2] == [(False, False), (False, True)]  # float32, float32 channels-last, then bf16 if oneDNN has it
    timed.clear()
    timings[(False, False)] = 0.01
    assert resolve_precision("fastest", net, sample, CPU, cpuinfo=SAPPHIRE_RAPIDS) == ("32-true", False)
    assert len(timed) >= 2
    # several processes could each time differently: the auto rule instead
    timed.clear()
    assert resolve_precision("fastest", net, sample, CPU, processes=2, cpuinfo=SAPPHIRE_RAPIDS) == ("bf16-mixed", True)
    assert timed == []
    with pytest.raises(ValueError, match="needs the model and a sample batch"):
        resolve_precision("fastest", net, None, CPU)


def test_fastest_really_times_on_this_cpu():
    got = resolve_precision("fastest", _convnet(), torch.randn(8, 1, 8, 8), CPU)
    assert got in {("32-true", False), ("32-true", True), ("bf16-mixed", True)}


def test_fastest_on_cuda_is_the_capability_rule(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    _no_timing(monkeypatch)
    assert resolve_precision("fastest", _convnet(), None, torch.device("cuda")) == ("16-mixed", True)


def test_config_takes_fastest_and_names_the_allowed_values():
    assert load_config(None, ["train.precision=fastest"]).train.precision == "fastest"
    with pytest.raises(ValueError, match=r"train\.precision must be one of auto, fastest, bf16, 16, 32, got 'fp32'"):
        load_config(None, ["train.precision=fp32"])


def test_numerics_record_on_the_cpu():
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    record = numerics_record("32-true", False, "cpu", setting="auto")
    assert record["precision"] == "32-true" and record["setting"] == "auto"
    assert record["channels_last"] is False and record["tf32"] is False  # TF32 is a CUDA setting
    assert record["torch"] == torch.__version__ and record["device"] == "cpu"
    assert "gpu" not in record
    if text:  # this machine's model name line and bf16 flags, read independently
        names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
        assert record["cpu"] == names[0]
        flags = set(re.findall(r"\b(?:amx_bf16|avx512_bf16)\b", text))
        assert record["cpu_bf16_flags"] == sorted(flags)
    json.dumps(record)  # it goes into JSON files as it is


def test_numerics_record_on_cuda_reads_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    record = numerics_record("bf16-mixed", True, torch.device("cuda"), setting="auto", tf32=True)
    assert (record["gpu"], record["gpu_capability"], record["tf32"]) == ("NVIDIA H200", "9.0", True)
    assert describe_numerics(record).startswith("bf16-mixed (auto), channels-last, TF32; GPU NVIDIA H200; torch ")


def test_describe_numerics_names_the_cpu_and_its_bf16_flags():
    record = {
        "setting": "32",
        "precision": "32-true",
        "channels_last": False,
        "tf32": False,
        "torch": "2.5.1",
        "device": "cpu",
        "cpu": "AMD EPYC 7B12",
        "cpu_bf16_flags": [],
    }
    assert describe_numerics(record) == "32-true (32); CPU AMD EPYC 7B12 (no native bf16); torch 2.5.1"
