"""Fast tests of the trained zoo: data determinism, geometry, and the atomic, locked cache."""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys

import pytest
import torch

from pytest_padbias import zoo
from pytest_padbias.geometry import is_even, uneven_layers
from pytest_padbias.result import PadbiasError

#: A tiny training budget: a fraction of a second per model.
TINY = dict(n_train=52, epochs=1, width=2, batch_size=26)


def test_letters_are_deterministic_and_balanced():
    x1, y1 = zoo.letters("train", 28, 78, data_seed=5)
    zoo._letters_split.cache_clear()
    x2, y2 = zoo.letters("train", 28, 78, data_seed=5)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (78, 1, 28, 28) and x1.dtype == torch.float32
    assert 0.0 <= float(x1.min()) and float(x1.max()) <= 1.0 and float(x1.max()) > 0.9
    assert torch.bincount(y1, minlength=26).tolist() == [3] * 26
    other, _ = zoo.letters("train", 28, 78, data_seed=6)
    test, _ = zoo.letters("test", 28, 78, data_seed=5)
    assert not torch.equal(x1, other) and not torch.equal(x1, test)


def test_29_is_the_28_image_with_a_background_row_and_column():
    x28, y28 = zoo.letters("test", 28, 26)
    x29, y29 = zoo.letters("test", 29, 26)
    assert x29.shape[-2:] == (29, 29) and torch.equal(y28, y29)
    assert torch.equal(x29[..., :28, :28], x28)
    assert float(x29[..., 28, :].abs().max()) == 0.0 and float(x29[..., :, 28].abs().max()) == 0.0


def test_bad_arguments_are_named():
    with pytest.raises(PadbiasError, match="size=30"):
        zoo.letters("train", 30, 10)
    with pytest.raises(PadbiasError, match="no zoo model named 'mnist'"):
        zoo.trained_model("mnist", 28)
    with pytest.raises(PadbiasError, match="padding_mode='edge'"):
        zoo.letters_cnn("edge")


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_28_pads_unevenly_and_29_evenly(mode, batch_norm):
    model = zoo.letters_cnn(mode, batch_norm)
    uneven = uneven_layers(model, (28, 28))
    strided = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert [u.layer for u in uneven] == strided and len(strided) == 2
    assert all(u.pad_read == (1, 0, 1, 0) for u in uneven)  # top/left only
    assert is_even(model, (29, 29)) and not uneven_layers(model, (29, 29))
    assert model(torch.zeros(2, 1, 28, 28)).shape == model(torch.zeros(2, 1, 29, 29)).shape == (2, 26)


def test_trained_model_is_cached_and_deterministic(tmp_path):
    a = zoo.trained_model("letters", 29, "circular", 3, cache_dir=tmp_path / "a", **TINY)
    b = zoo.trained_model("letters", 29, "circular", 3, cache_dir=tmp_path / "b", **TINY)
    c = zoo.trained_model("letters", 29, "circular", 3, cache_dir=tmp_path / "a", **TINY)
    assert a.zoo_info["origin"] == b.zoo_info["origin"] == "trained" and c.zoo_info["origin"] == "cached"
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]) and torch.equal(v, c.state_dict()[k]), k
    other_seed = zoo.trained_model("letters", 29, "circular", 4, cache_dir=tmp_path / "a", **TINY)
    assert not torch.equal(other_seed.state_dict()["0.1.weight"], a.state_dict()["0.1.weight"])
    assert not a.training
    files = sorted(p.name for p in (tmp_path / "a").iterdir() if p.suffix == ".safetensors")
    assert len(files) == 2 and all(f.startswith("letters-29-circular-nobn-s") for f in files)
    x, y = zoo.test_batch(29, 52)
    assert 0.0 <= zoo.accuracy(a, x, y) <= 1.0 and zoo.predictions(a, x).shape == (52,)


def test_the_env_var_chooses_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PADBIAS_ZOO_DIR", str(tmp_path / "env"))
    assert zoo.zoo_dir() == tmp_path / "env"
    assert zoo.zoo_dir(tmp_path / "arg") == tmp_path / "arg"
    m = zoo.trained_model("letters", 28, "zeros", 0, **TINY)
    assert m.zoo_info["path"].startswith(str(tmp_path / "env"))
    monkeypatch.delenv("PADBIAS_ZOO_DIR")
    assert zoo.zoo_dir() == zoo.Path.home() / ".cache" / "pytest-padbias" / "zoo"


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_a_corrupt_cache_file_is_detected_and_replaced(tmp_path, damage):
    first = zoo.trained_model("letters", 28, "reflect", 1, cache_dir=tmp_path, **TINY)
    path = zoo.Path(first.zoo_info["path"])
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # one byte inside the last tensor: the header still parses
        path.write_bytes(data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:])
    elif damage == "garbage":
        path.write_bytes(b"not a safetensors file")
    else:
        path.write_bytes(b"")
    assert zoo.load_verified(path) is None
    again = zoo.trained_model("letters", 28, "reflect", 1, cache_dir=tmp_path, **TINY)
    assert again.zoo_info["origin"] == "trained"
    assert zoo.load_verified(path) is not None
    for k, v in first.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_a_file_of_another_config_is_not_taken(tmp_path):
    m = zoo.trained_model("letters", 28, "zeros", 0, cache_dir=tmp_path, **TINY)
    path = zoo.Path(m.zoo_info["path"])
    config = dict(m.zoo_info["config"], seed=99)
    assert zoo.load_verified(path, config) is None
    assert zoo.load_verified(path, m.zoo_info["config"]) is not None


def _train_in_child(cache_dir, queue):
    m = zoo.trained_model("letters", 29, "zeros", 7, cache_dir=cache_dir, **TINY)
    queue.put(m.zoo_info["origin"])


def test_two_processes_training_the_same_model_produce_one_valid_file(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_train_in_child, args=(str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    origins = sorted(queue.get(timeout=5) for _ in procs)
    assert origins == ["cached", "trained"]  # the lock made the second wait and read the first's file
    files = [p for p in tmp_path.iterdir() if p.suffix == ".safetensors"]
    assert len(files) == 1 and zoo.load_verified(files[0]) is not None
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_a_subprocess_reads_the_file_this_process_trained(tmp_path):
    m = zoo.trained_model("letters", 28, "replicate", 2, cache_dir=tmp_path, **TINY)
    code = ("import json, sys; from pytest_padbias import zoo; "
            f"m = zoo.trained_model('letters', 28, 'replicate', 2, cache_dir=sys.argv[1], **{TINY!r}); "
            "print(json.dumps(m.zoo_info['origin']))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONWARNINGS="error"))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == "cached"
    assert m.zoo_info["origin"] == "trained"


def test_the_zoo_option_defaults_are_the_zoo_defaults():
    """The suites' --padbias-zoo-* defaults must hit the same cache entries as zoo's own."""
    from pytest_padbias.options import OPTIONS

    assert OPTIONS["zoo-epochs"][1] == zoo.DEFAULT_EPOCHS
    assert OPTIONS["zoo-train-images"][1] == zoo.DEFAULT_TRAIN


def test_the_zoo_options_reach_the_suites_models(pytester, monkeypatch, tmp_path):
    """--padbias-zoo-seeds/-epochs/-train-images and --padbias-seed choose which zoo models
    the suites train (here: the PAN claim on letters CNNs of every padding mode)."""
    from pathlib import Path

    monkeypatch.setenv("PADBIAS_ZOO_DIR", str(tmp_path))
    suite = Path(__file__).resolve().parent.parent / "suites" / "test_padding_aware_neurons.py"
    pytester.runpytest_subprocess(str(suite), "-k", "trained_with_reflect", "-p", "no:cacheprovider", "--padbias-seed=5",
                                  "--padbias-zoo-seeds=1", "--padbias-zoo-epochs=1", "--padbias-zoo-train-images=260")
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    expected = {zoo.cache_path(zoo._config("letters", 29, mode, 5, False, 260, 1, zoo.DEFAULT_WIDTH, zoo.DEFAULT_BATCH,
                                           zoo.DEFAULT_LR), tmp_path).name for mode in ("zeros", "reflect", "replicate", "circular")}
    assert set(files) == expected  # seed 5 only, 260 images, 1 epoch: nothing else was trained
