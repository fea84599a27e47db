"""Strict loading (`metis_cli.assets.checkpoint`) on a small module: every layout problem is one line
naming the file and the key; nothing is ignored silently."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from metis_cli.assets.checkpoint import build_on_meta, load_file_into, load_state, read_header, read_tensors
from metis_cli.errors import CheckpointError


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)
        self.register_buffer("scale", torch.empty(4))  # persistent buffer: a state-dict entry

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.lin(x)) * self.scale


def _reference() -> tuple[Small, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ref = Small()
    state = {k: torch.randn(v.shape, generator=g) for k, v in ref.state_dict().items()}
    ref.load_state_dict(state)
    return ref.eval(), state


def _write(tmp_path: Path, tensors: dict[str, torch.Tensor], name: str = "w.safetensors") -> Path:
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _load_error(path: Path, **kw) -> str:
    with pytest.raises(CheckpointError) as info:
        load_file_into(build_on_meta(Small), path, **kw)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    return msg


def test_meta_built_module_loads_and_works(tmp_path: Path) -> None:
    ref, state = _reference()
    module = load_file_into(build_on_meta(Small), _write(tmp_path, state)).eval()
    assert not any(t.is_meta for t in module.state_dict().values())
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(module(x), ref(x), rtol=0, atol=0)
    assert module.lin.weight.requires_grad  # still an ordinary parameter


def test_renamed_key(tmp_path: Path) -> None:
    _, state = _reference()
    state["lin.weights"] = state.pop("lin.weight")
    msg = _load_error(_write(tmp_path, state))
    assert "missing" in msg and "lin.weight" in msg
    assert "unexpected" in msg and "lin.weights" in msg


def test_missing_key(tmp_path: Path) -> None:
    _, state = _reference()
    del state["norm.bias"]
    msg = _load_error(_write(tmp_path, state))
    assert "missing" in msg and "norm.bias" in msg and "unexpected" not in msg


def test_missing_buffer_key(tmp_path: Path) -> None:
    _, state = _reference()
    del state["scale"]
    assert "scale" in _load_error(_write(tmp_path, state))


def test_extra_key(tmp_path: Path) -> None:
    _, state = _reference()
    state["head.weight"] = torch.zeros(2, 2)
    msg = _load_error(_write(tmp_path, state))
    assert "unexpected" in msg and "head.weight" in msg and "missing" not in msg


def test_reshaped_key(tmp_path: Path) -> None:
    _, state = _reference()
    state["lin.weight"] = torch.zeros(4, 4)
    msg = _load_error(_write(tmp_path, state))
    assert "lin.weight" in msg and "[4, 3]" in msg and "[4, 4]" in msg


def test_tolerated_extra_key_passes(tmp_path: Path) -> None:
    ref, state = _reference()
    key = "diff_estimator.embed_tokens.weight"
    state[key] = torch.zeros(0, 256)
    path = _write(tmp_path, state)
    _load_error(path)  # not tolerated unless named
    module = load_file_into(build_on_meta(Small), path, tolerated_extra=[key])
    assert key not in module.state_dict()
    x = torch.randn(3, 3)
    torch.testing.assert_close(module.eval()(x), ref(x), rtol=0, atol=0)


def test_dtype_cast(tmp_path: Path) -> None:
    _, state = _reference()
    module = load_file_into(build_on_meta(Small), _write(tmp_path, state), dtype=torch.bfloat16)
    assert {t.dtype for t in module.state_dict().values()} == {torch.bfloat16}


def test_load_state_names_the_source() -> None:
    _, state = _reference()
    del state["lin.bias"]
    with pytest.raises(CheckpointError, match=r"^my-source: .*lin\.bias"):
        load_state(build_on_meta(Small), state, source="my-source")


def test_state_not_covered_by_the_file() -> None:
    """A non-persistent buffer would stay on the meta device: refused."""

    class WithNonPersistent(Small):
        def __init__(self):
            super().__init__()
            self.register_buffer("table", torch.empty(3), persistent=False)

    _, state = _reference()
    with pytest.raises(CheckpointError, match="table"):
        load_state(build_on_meta(WithNonPersistent), state, source="src")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"hello world, this is not a checkpoint\n",
        struct.pack("<Q", 2) + b"[]",
        struct.pack("<Q", 15) + b'{"a": {"x": 1}}',
        struct.pack("<Q", 8) + b"not json",
    ],
    ids=["empty", "text", "json-list", "entry-without-dtype", "not-json"],
)
def test_not_a_safetensors_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(content)
    for fn in (read_header, read_tensors):
        with pytest.raises(CheckpointError, match="not a safetensors file") as info:
            fn(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    _load_error(path)


def test_pickle_file_is_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"lin.weight": torch.zeros(4, 3)}, path)
    _load_error(path)


def test_truncated_file(tmp_path: Path) -> None:
    _, state = _reference()
    path = _write(tmp_path, state)
    path.write_bytes(path.read_bytes()[:-8])
    assert read_header(path)["lin.weight"] == ("F32", (4, 3))  # header intact, data short
    _load_error(path)


def test_missing_file(tmp_path: Path) -> None:
    msg = _load_error(tmp_path / "absent.safetensors")
    assert "not found" in msg
