"""rlmin.checkpoint: atomic saves, weights_only loads, fallback past damaged files, RNG state."""

import io
import random
import warnings

import numpy as np
import pytest
import torch

from rlmin import checkpoint as ck
from rlmin.checkpoint import (
    CheckpointError,
    capture_rng_state,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    restore_rng_state,
    save_checkpoint,
)


def _payload(step: int) -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {
        "step": step,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "obs_mean": torch.arange(3.0),
        "config": {"model": {"d": 8, "backbone": "mingru"}, "lrs": [1e-4, 2e-4], "name": None},
        "rng": capture_rng_state(),
        "tb": {"global_step": step, "tags": ("a", "b")},
    }


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def test_round_trip_and_latest(tmp_path):
    p = _payload(7)
    path = save_checkpoint(tmp_path, 7, p)
    assert path == tmp_path / "checkpoints" / "step_00000007.pt"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000007.pt"
    _assert_same(load_checkpoint(path), p)
    # the raw file also loads with weights_only=True directly
    torch.load(path, weights_only=True)
    loaded, lpath = load_latest(tmp_path)
    assert lpath == path
    _assert_same(loaded, p)


def test_pruning_keeps_newest(tmp_path):
    for step in [1, 2, 10, 3, 20]:  # out of order on purpose: order is by step number
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000010.pt", "step_00000020.pt"]
    assert load_latest(tmp_path)[0]["step"] == 20
    for step in [30, 40]:
        save_checkpoint(tmp_path, step, {"step": step}, keep=None)
    assert len(list_checkpoints(tmp_path)) == 4


def test_crash_mid_save_leaves_previous(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"step": 1})
    real_save = torch.save

    def half_save(obj, f, *a, **k):
        buf = io.BytesIO()
        real_save(obj, buf)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        raise OSError("simulated crash (disk full)")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(tmp_path, 2, {"step": 2, "w": torch.zeros(1000)})
    monkeypatch.undo()

    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["latest", "step_00000001.pt"]  # no half file, no temp left behind
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000001.pt"
    payload, path = load_latest(tmp_path)
    assert payload["step"] == 1 and path.name == "step_00000001.pt"


def test_truncated_newest_falls_back_with_warning(tmp_path):
    save_checkpoint(tmp_path, 1, {"step": 1, "w": torch.ones(100)})
    p2 = save_checkpoint(tmp_path, 2, {"step": 2, "w": torch.ones(100)})
    data = p2.read_bytes()
    p2.write_bytes(data[: len(data) // 2])

    with pytest.raises(CheckpointError, match="step_00000002.pt.*truncated or corrupt"):
        load_checkpoint(p2)
    with pytest.warns(RuntimeWarning, match="step_00000002.pt"):
        payload, path = load_latest(tmp_path)
    assert payload["step"] == 1 and path.name == "step_00000001.pt"


def test_all_corrupt_raises_listing_tried(tmp_path):
    for step in (1, 2):
        p = save_checkpoint(tmp_path, step, {"step": step})
        p.write_bytes(b"not a checkpoint at all")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError) as ei:
            load_latest(tmp_path)
    msg = str(ei.value)
    assert "step_00000001.pt" in msg and "step_00000002.pt" in msg and "could be loaded" in msg


def test_no_checkpoints_says_never_saved(tmp_path):
    with pytest.raises(CheckpointError, match="never saved"):
        load_latest(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(CheckpointError, match="never saved"):
        load_latest(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "checkpoints" / "step_00000001.pt")


class _Evil:
    pass


@pytest.mark.parametrize("obj", [_Evil(), print, np.zeros(3)], ids=["instance", "function", "ndarray"])
def test_arbitrary_objects_refused(tmp_path, obj):
    # written behind save_checkpoint's back, as a foreign or old file would be
    (tmp_path / "checkpoints").mkdir()
    path = tmp_path / "checkpoints" / "step_00000001.pt"
    torch.save({"step": 1, "x": obj}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "refused to load" in msg and str(path) in msg, msg
    assert "holds Python code" in msg and "never runs code" in msg, msg
    # not torch's advice (retry with weights_only=False), not "corrupt ... Delete it"
    assert "weights_only=False" not in msg and "corrupt" not in msg and "Delete" not in msg, msg


@pytest.mark.parametrize("wording", [
    "Weights only load failed. Unsupported global: GLOBAL builtins.print was not an allowed global",
    "Weights only load failed. Trying to load unsupported GLOBAL posix.system whose module posix "
    "is blocked.",
])
def test_refusal_does_not_depend_on_torchs_wording(tmp_path, monkeypatch, wording):
    import pickle

    path = tmp_path / "step_00000001.pt"
    torch.save({"step": 1}, path)

    def refuse(*args, **kwargs):
        raise pickle.UnpicklingError(wording + " Check the recorded stack trace ... "
                                     "weights_only=False ...")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(CheckpointError, match="holds Python code") as info:
        load_checkpoint(path)
    assert "weights_only=False" not in str(info.value)


def test_disk_full_says_so(tmp_path, monkeypatch):
    import errno

    def full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match="no space left on device"):
        save_checkpoint(tmp_path, 1, {"step": 1})
    with pytest.raises(CheckpointError, match="no space left on device"):
        ck.atomic_torch_save({"x": 1}, tmp_path / "policy.pt")
    assert not list(tmp_path.rglob(".tmp-*")), "a temp file was left behind"


def test_save_refuses_unsafe_payload_and_names_it(tmp_path):
    save_checkpoint(tmp_path, 1, {"step": 1})
    with pytest.raises(CheckpointError, match=r"payload\['stats'\]\['mean'\] is a numpy.ndarray"):
        save_checkpoint(tmp_path, 2, {"step": 2, "stats": {"mean": np.zeros(3)}})
    with pytest.raises(CheckpointError, match="numpy.float64"):
        save_checkpoint(tmp_path, 3, {"step": np.float64(3.0)})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001.pt"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_00000001.pt"]


def _draw():
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.random.rand(3).tolist() + [np.random.randn()],
        torch.rand(3).tolist() + torch.randn(1).tolist(),
    )


def test_rng_capture_restore_through_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leave a cached gaussian in python's state
    np.random.randn()
    state = capture_rng_state()
    expected = _draw()
    _draw()  # move everything on

    save_checkpoint(tmp_path, 5, {"rng": state})
    loaded, _ = load_latest(tmp_path)  # weights_only=True inside
    restore_rng_state(loaded["rng"])
    assert _draw() == expected


def test_checkpoint_error_is_runtime_error():
    assert issubclass(ck.CheckpointError, RuntimeError)
