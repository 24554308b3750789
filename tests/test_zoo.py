"""Fast tests of the trained zoo: data determinism, geometry, and the atomic, locked cache."""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys

import pytest
import torch

from pytest_padbias import letters_data, zoo
from pytest_padbias.geometry import is_even, uneven_layers
from pytest_padbias.result import PadbiasError

#: A tiny training budget: a fraction of a second per model.
TINY = dict(n_train=52, epochs=1, width=2, batch_size=26)


def test_letters_are_deterministic_and_balanced():
    x1, y1 = zoo.letters("train", 28, 78, data_seed=5)
    letters_data._letters_split.cache_clear()
    x2, y2 = zoo.letters("train", 28, 78, data_seed=5)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (78, 1, 28, 28) and x1.dtype == torch.float32
    assert 0.0 <= float(x1.min()) and float(x1.max()) <= 1.0 and float(x1.max()) > 0.9
    assert torch.bincount(y1, minlength=26).tolist() == [3] * 26
    other, _ = zoo.letters("train", 28, 78, data_seed=6)
    test, _ = zoo.letters("test", 28, 78, data_seed=5)
    assert not torch.equal(x1, other) and not torch.equal(x1, test)


def test_each_class_mixes_capitals_and_small_letters_as_emnist_letters_does(monkeypatch):
    drawn = []
    glyph = letters_data._glyph

    def recording(font, letter, stroke):
        drawn.append(letter)
        return glyph(font, letter, stroke)

    monkeypatch.setattr(letters_data, "_glyph", recording)
    letters_data._letters_split.cache_clear()
    _x, y = zoo.letters("train", 28, 520, data_seed=7)
    letters_data._letters_split.cache_clear()
    assert [d.upper() for d in drawn] == [zoo.LETTERS[k] for k in y.tolist()]  # a small letter keeps its capital's class
    small = sum(d.islower() for d in drawn) / len(drawn)
    assert abs(small - letters_data.LOWERCASE_SHARE) < 0.07, small


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


def test_the_zoo_option_defaults_leave_the_budget_to_the_profile():
    """The suites' --padbias-zoo-* overrides default to None: the profile decides."""
    from pytest_padbias.options import OPTIONS

    assert OPTIONS["zoo-profile"][1] == "quick"
    assert all(OPTIONS[f"zoo-{k}"][1] is None for k in ("seeds", "epochs", "train-images"))
    quick = zoo.letters_budget("quick")
    assert (quick.n_train, quick.max_epochs, quick.width) == (zoo.DEFAULT_TRAIN, zoo.DEFAULT_EPOCHS, zoo.DEFAULT_WIDTH)
    report = zoo.letters_budget("report")
    assert (report.n_train, report.n_test, report.seeds, report.lr) == (60000, 10000, 3, 1e-3)  # the report's protocol
    custom = zoo.letters_budget("report", seeds=2, epochs=5, train_images=6000)
    assert (custom.seeds, custom.max_epochs, custom.n_train, custom.n_val) == (2, 5, 6000, 1000)
    with pytest.raises(PadbiasError, match="zoo profile 'huge' is not accepted; use one of quick, report"):
        zoo.letters_budget("huge")


def _suite_cells(seed):
    """The (size, mode, seed, batch norm) cells the letters suites train for one seed when
    Table 3's claim is not selected (its batch-norm models are then left out)."""
    from pytest_padbias.padding import PADDING_MODES

    return [(s, m, seed, False) for m in PADDING_MODES for s in zoo.SIZES]


def test_the_zoo_options_reach_the_suites_models(pytester, monkeypatch, tmp_path):
    """--padbias-zoo-profile/-seeds/-epochs/-train-images and --padbias-seed choose which
    zoo models the suites train (here for the PAN claim on letters CNNs of every mode)."""
    from pathlib import Path

    monkeypatch.setenv("PADBIAS_ZOO_DIR", str(tmp_path))
    suite = Path(__file__).resolve().parent.parent / "suites" / "test_padding_aware_neurons.py"
    pytester.runpytest_subprocess(str(suite), "-k", "trained_with_reflect", "-p", "no:cacheprovider", "--padbias-seed=5",
                                  "--padbias-zoo-seeds=1", "--padbias-zoo-epochs=1", "--padbias-zoo-train-images=260")
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    budget = zoo.letters_budget("quick", seeds=1, epochs=1, train_images=260).train_kwargs()
    expected = set()
    for cell in _suite_cells(5):
        expected.add(zoo.cache_path(zoo.letters_config("letters", *cell, **budget), tmp_path).name)
    assert set(files) == expected  # seed 5 only, 260 images, 1 epoch, no batch norm: nothing else was trained
    info = zoo.train_info(tmp_path / files[0])
    assert info["epochs"] == 1 and info["stopped"] == "max epochs" and info["val_loss"] > 0
    assert 0 < float(info["train_cpu_seconds"]) and float(info["train_seconds"]) > 0


@pytest.mark.parametrize("option, message", [
    ("--padbias-zoo-profile=huge", "*'huge' is not a zoo profile; accepted: quick, report*"),
    ("--padbias-zoo-data=/no/such/folder", "*zoo data folder /no/such/folder does not exist*EMNIST/raw*"),
])
def test_bad_zoo_options_are_usage_errors(pytester, option, message):
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess(option, "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_a_model_trained_among_others_has_the_weights_it_has_alone(tmp_path):
    """A seed's weights do not depend on what trains beside it: the same model trained in a
    pool of two processes (next to another model) and alone is bit-identical."""
    from functools import partial

    jobs = [partial(zoo.trained_model, "letters", 28, mode, 3, cache_dir=tmp_path / "pool", **TINY)
            for mode in ("zeros", "circular")]
    zoo.train_in_parallel(jobs, workers=2)
    pooled = zoo.trained_model("letters", 28, "zeros", 3, cache_dir=tmp_path / "pool", **TINY)
    alone = zoo.trained_model("letters", 28, "zeros", 3, cache_dir=tmp_path / "alone", **TINY)
    assert pooled.zoo_info["origin"] == "cached" and alone.zoo_info["origin"] == "trained"
    for k, v in alone.state_dict().items():
        assert torch.equal(v, pooled.state_dict()[k]), k


def test_emnist_letters_from_disk_train_a_model_of_their_own(tmp_path):
    """--padbias-zoo-data: letters read from torchvision's EMNIST layout (upright, labels
    0..25), and the data's digest in the cache key, so synthetic and EMNIST models never
    share a file."""
    import numpy as np

    from pytest_padbias import emnist

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(130, 28, 28), dtype=np.uint8)
    labels = np.arange(130) % 26
    emnist.write_letters_idx(tmp_path / "data", images[:104], labels[:104], images[104:], labels[104:], gz=True)
    x, y = zoo.letters("train", 29, 40, data=tmp_path / "data")
    assert x.shape == (40, 1, 29, 29) and set(y.tolist()) <= set(range(26))
    raw = images[:104].astype(np.float32) / 255.0
    for image, label in zip(x[:, 0, :28, :28].numpy(), y.tolist()):  # each is an upright (transposed) training image
        hits = [i for i in range(104) if np.array_equal(raw[i].T, image)]
        assert hits and labels[hits[0]] == label
    val, _ = zoo.letters("val", 28, 40, data=tmp_path / "data")
    train_set = {im.tobytes() for im in x[:, 0, :28, :28].numpy()}
    assert not train_set & {im.tobytes() for im in val[:, 0].numpy()}  # disjoint draws
    m = zoo.trained_model("letters", 28, "zeros", 0, cache_dir=tmp_path / "zoo", data=tmp_path / "data",
                          n_train=40, n_val=26, epochs=1, width=2, batch_size=20)
    assert m.zoo_info["config"]["data"] == f"emnist:{emnist.data_digest(tmp_path / 'data')}"
    synthetic = zoo.trained_model("letters", 28, "zeros", 0, cache_dir=tmp_path / "zoo", n_train=40, n_val=26, epochs=1,
                                  width=2, batch_size=20)
    assert synthetic.zoo_info["path"] != m.zoo_info["path"] and synthetic.zoo_info["config"]["data"] == "synthetic"
    with pytest.raises(PadbiasError, match="60 train images asked of EMNIST letters"):
        zoo.letters("train", 28, 60, data=tmp_path / "data")


def test_missing_jobs_list_exactly_the_models_not_yet_cached(tmp_path):
    """The suites' one training pool is built from ``missing_jobs``: every cell of a cold
    cache, none of a warm one (so a warm run starts no process)."""
    from pytest_padbias.letters_zoo import LettersZoo

    budget = zoo.LettersBudget(seeds=1, n_train=52, n_val=26, n_test=26, max_epochs=1, width=2, batch_size=26)
    letters = LettersZoo(budget, [0], cache_dir=tmp_path)
    cells = letters.cells(modes=("zeros", "circular"))
    assert len(letters.missing_jobs(cells)) == len(cells) == 4
    letters.missing_jobs(cells)[0]()
    assert len(letters.missing_jobs(cells)) == 3
    zoo.train_in_parallel(letters.missing_jobs(cells), workers=1)
    assert letters.missing_jobs(cells) == []


def test_missing_jobs_leave_out_table_3s_models_when_its_claim_is_not_run(tmp_path):
    """A run without Table 3's claim does not train its batch-norm models nor its extra seeds."""
    from pytest_padbias.letters_zoo import LettersZoo

    budget = zoo.LettersBudget(seeds=1, n_train=52, n_val=26, n_test=26, max_epochs=1, width=2, batch_size=26,
                               batch_norm_seeds=3)
    letters = LettersZoo(budget, [0], cache_dir=tmp_path)
    without = {(job.args[1], job.args[2], job.args[3], job.args[4]) for job in letters.missing_jobs(batch_norm=False)}
    with_bn = {(job.args[1], job.args[2], job.args[3], job.args[4]) for job in letters.missing_jobs()}
    assert without == set(letters.cells()) and len(without) == 8
    assert with_bn - without == {(s, "zeros", seed, bn) for s in zoo.SIZES for seed in (0, 1, 2) for bn in (True, False)
                                 if bn or seed > 0}


def test_training_saves_standard_layout_weights_from_a_channels_last_loop(tmp_path):
    """The loop trains in channels-last order for speed; the cached weights are plain
    contiguous tensors, as a user loading the file into their own model expects."""
    from safetensors.torch import load_file

    model = zoo.trained_model("letters", 29, "reflect", 1, cache_dir=tmp_path, **TINY)
    saved = load_file(model.zoo_info["path"])
    assert saved and all(v.is_contiguous() for v in saved.values())
    assert any(v.dim() == 4 for v in saved.values())  # the conv kernels, which trained channels-last


def test_table3_cells_take_the_profiles_extra_seeds_and_an_override_sets_all():
    """Table 3's cheap zero-padded cells train ``batch_norm_seeds`` seeds (quick: 5, after the
    3 of every cell); ``--padbias-zoo-seeds`` sets both, so a 1-seed check stays 1 seed."""
    from pytest_padbias.letters_zoo import LettersZoo

    quick = zoo.letters_budget("quick")
    assert (quick.seeds, quick.batch_norm_seeds) == (3, 5)
    letters = LettersZoo(quick, range(2, 5))
    assert letters.batch_norm_seeds == (2, 3, 4, 5, 6)
    assert {seed for _, _, seed, _ in letters.table3_cells()} == {2, 3, 4, 5, 6}
    assert len(letters.table3_cells()) == 5 * 2 * 2
    one = zoo.letters_budget("quick", seeds=1)
    assert (one.seeds, one.batch_norm_seeds) == (1, 1)
    assert LettersZoo(one, [7]).batch_norm_seeds == (7,)
    assert zoo.letters_budget("report").batch_norm_seeds == 3
