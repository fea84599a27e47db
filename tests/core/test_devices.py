"""metis_cli.core.devices on the CPU: device names and their errors, the MPS policy (macOS version
mocked), the TF32 policy (PyTorch's process-wide flags, settable without a GPU)."""

from __future__ import annotations

import pytest
import torch

from metis_cli.core import devices
from metis_cli.errors import InputError


def test_cpu_and_auto_without_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize(
    "name,match",
    [
        ("gpu", "unknown device 'gpu'"),
        ("cuda", "CUDA is not available"),
        ("cuda:1", "CUDA is not available"),
        ("mps", "MPS is not available"),
        ("meta", "unsupported device type 'meta'"),
    ],
)
def test_bad_or_missing_devices_are_input_errors(monkeypatch, name, match):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    with pytest.raises(InputError, match=match):
        devices.resolve_device(name)


def test_cuda_index_beyond_the_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(InputError, match="only 2 CUDA device"):
        devices.resolve_device("cuda:2")
    assert devices.resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize(
    "system,release,auto,explicit_ok",
    [
        ("Darwin", "14.2.1", "mps", True),
        ("Darwin", "15.0", "mps", True),
        ("Darwin", "13.6", "cpu", False),
        ("Darwin", "", "cpu", False),
        ("Linux", "", "cpu", False),
    ],
)
def test_mps_only_from_macos_14(monkeypatch, system, release, auto, explicit_ok):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "mps_available", lambda: True)
    monkeypatch.setattr(devices.platform, "system", lambda: system)
    monkeypatch.setattr(devices.platform, "mac_ver", lambda: (release, ("", "", ""), ""))
    assert devices.resolve_device("auto") == torch.device(auto)
    if explicit_ok:
        assert devices.resolve_device("mps") == torch.device("mps")
    else:
        with pytest.raises(InputError, match="needs macOS 14"):
            devices.resolve_device("mps")


@pytest.fixture
def tf32_flags():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _set(matmul: bool, cudnn: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


def test_fp32_on_cuda_turns_tf32_off(tf32_flags):
    _set(True, True)  # cuDNN's default is TF32 on
    devices.apply_precision(torch.device("cuda"), torch.float32)
    assert devices.tf32_state() == {"matmul": False, "cudnn": False}
    devices.apply_precision(torch.device("cuda:0"), torch.float32, allow_tf32=True)
    assert devices.tf32_state() == {"matmul": True, "cudnn": True}


@pytest.mark.parametrize(
    "device,dtype",
    [("cpu", torch.float32), ("cuda", torch.bfloat16), ("cuda", torch.float16), ("mps", torch.float32)],
)
def test_precision_policy_leaves_other_modes_alone(tf32_flags, device, dtype):
    _set(True, False)
    devices.apply_precision(torch.device(device), dtype)
    assert devices.tf32_state() == {"matmul": True, "cudnn": False}


def test_dtypes_by_name():
    assert devices.DTYPES == {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
