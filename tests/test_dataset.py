"""--padbias-dataset: ImageFolder matching, the evaluation transform, accuracy, clear errors."""
from pathlib import Path

import numpy as np
import pytest

from pytest_padbias.dataset import evaluate, labelled_folder, load_batch
from pytest_padbias.result import PadbiasError

SUITES = Path(__file__).resolve().parent.parent / "suites"
CATEGORIES = ["tench", "Egyptian cat", "espresso", "space shuttle", "motor scooter"]


def _photo_folder(root: Path, layout: dict[str, list[str]]) -> Path:
    """An ImageFolder of skimage photographs: {class folder: [photo names]}."""
    import skimage.data as data
    from PIL import Image

    for cls, names in layout.items():
        (root / cls).mkdir(parents=True)
        for i, name in enumerate(names):
            img = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
            Image.fromarray(np.asarray(img)).save(root / cls / f"{name}-{i}.png")
    return root


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    return _photo_folder(tmp_path_factory.mktemp("imagefolder"), {
        "Egyptian_cat": ["chelsea", "chelsea"], "espresso": ["coffee"], "space shuttle": ["rocket"],
        "motor scooter": ["motorcycle", "motorcycle", "motorcycle"],
    })


def test_folders_named_after_categories_map_to_their_output_index(photo_folder):
    folder = labelled_folder(photo_folder, CATEGORIES)
    assert folder.matched_by == "category name"
    assert sorted({t for _p, t in folder.samples}) == [1, 2, 3, 4]
    assert all(CATEGORIES[t].lower().replace(" ", "") in Path(p).parent.name.lower().replace("_", "").replace(" ", "")
               for p, t in folder.samples)


def test_folders_in_class_order_when_there_is_one_per_output(photo_folder):
    folder = labelled_folder(photo_folder, None, num_outputs=4)
    assert folder.matched_by == "folder order"
    assert [t for _p, t in folder.samples] == [0, 0, 1, 2, 2, 2, 3]  # Egyptian_cat x2, espresso, motor scooter x3, space shuttle


def test_unmatched_folders_are_a_clear_error(photo_folder):
    with pytest.raises(PadbiasError, match=r"cannot match its 4 class folders to the model's 1000 outputs.*unknown: Egyptian_cat"):
        labelled_folder(photo_folder, ["tench"] * 1000)


def test_an_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "cls").mkdir()
    with pytest.raises(PadbiasError, match=r"--padbias-dataset .*one sub-folder of images"):
        labelled_folder(tmp_path, CATEGORIES)
    with pytest.raises(PadbiasError, match="not a folder"):
        labelled_folder(tmp_path / "missing", CATEGORIES)


def test_an_unreadable_image_is_named(tmp_path):
    (tmp_path / "espresso").mkdir()
    (tmp_path / "espresso" / "broken.jpg").write_bytes(b"not a jpeg")
    folder = labelled_folder(tmp_path, CATEGORIES)
    with pytest.raises(PadbiasError, match=r"cannot read image .*broken\.jpg"):
        load_batch([p for p, _t in folder.samples], (224, 224), (0.5,) * 3, (0.5,) * 3)


def test_limit_draws_across_classes_with_the_seed(photo_folder):
    a = labelled_folder(photo_folder, CATEGORIES, limit=4, seed=0)
    assert len(a.samples) == 4 and len({t for _p, t in a.samples}) == 4  # one per class first
    assert a.samples == labelled_folder(photo_folder, CATEGORIES, limit=4, seed=0).samples
    picks = {tuple(labelled_folder(photo_folder, CATEGORIES, limit=5, seed=s).samples) for s in range(6)}
    assert len(picks) > 1  # the seed chooses which images


def test_the_evaluation_transform_scales_with_the_size(photo_folder):
    from PIL import Image

    path = next(p for p, _t in labelled_folder(photo_folder, CATEGORIES).samples if "coffee" in p)
    x = load_batch([path], (225, 225), (0.0,) * 3, (1.0,) * 3)
    assert x.shape == (1, 3, 225, 225)
    with Image.open(path) as im:  # coffee is 400 x 600: shorter side to 257, centre crop 225
        ref = np.asarray(im.convert("RGB").resize((386, 257), Image.BILINEAR)) / 255.0
    top, left = (257 - 225) // 2, (386 - 225) // 2
    centre = ref[top : top + 225, left : left + 225].transpose(2, 0, 1)
    assert np.abs(x[0].numpy() - centre).mean() < 0.02


def test_accuracy_counts_the_top1_and_top5_hits(photo_folder):
    import torch

    class Fixed(torch.nn.Module):
        """Predicts class 2 first, then 1, 3, 4, 0 for every image."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.tensor([[0.0, 4, 5, 3, 2]]).repeat(len(x), 1) + self.w

    folder = labelled_folder(photo_folder, CATEGORIES)
    top1, top5 = evaluate(Fixed(), folder, (64, 64), (0.5,) * 3, (0.5,) * 3, batch_size=3)
    targets = np.array([t for _p, t in folder.samples])
    assert top1.tolist() == (targets == 2).tolist()
    assert top5.all()


def test_the_suite_measures_accuracy_at_both_sizes(pytester, photo_folder):
    """The suite's 224-vs-225 claim runs on a user's folder and records both accuracies."""
    import json

    out = pytester.path / "run.json"
    result = pytester.runpytest_subprocess(
        str(SUITES / "test_mind_the_pad.py"), "-k", "even_padding_gives_higher_accuracy", "-p", "no:cacheprovider",
        f"--padbias-dataset={photo_folder}", f"--padbias-json={out}", "--padbias-images=2",
    )
    result.assert_outcomes(passed=1)
    test = json.loads(out.read_text())["tests"][0]
    measured = test["checks"][0]["details"]["measured"]
    assert measured["images"] == 7 and set(measured) >= {"224x224", "225x225"}
    assert 0 <= measured["224x224"]["top1"] <= measured["224x224"]["top5"] <= 100


def test_the_suite_skips_the_accuracy_claim_without_a_dataset(pytester):
    result = pytester.runpytest_subprocess(
        str(SUITES / "test_mind_the_pad.py"), "-k", "even_padding_gives_higher_accuracy", "-p", "no:cacheprovider", "-rs",
    )
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*needs labelled images: --padbias-dataset PATH*"])


@pytest.mark.parametrize("value, message", [
    ("does/not/exist", "dataset folder does/not/exist does not exist"),
    ("", "the dataset path is empty"),
])
def test_a_bad_dataset_option_is_a_usage_error(pytester, value, message):
    pytester.makepyfile(test_inner_dataset="def test_nothing():\n    pass\n")
    result = pytester.runpytest(f"--padbias-dataset={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--padbias-dataset*{message}*"])
