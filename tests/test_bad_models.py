"""Bad models and bad outputs never pass a gate by accident.

The guarantee this file proves, for each of the four gates (no_uneven_padding,
shift_robust, max_pans, no_blind_spot) run through the plugin on a user's own
``padbias_model``:

* a model the gate can analyse gives the right verdict: grouped and depthwise convs,
  dilated convs (uneven padding accounts for dilation, checked against gradients), the
  channels_last memory format (same values as the default format), a model left in
  training mode (the gates run it in eval mode and give it back in training mode), a
  tuple/dict/detection output where the gate does not look at the output
  (no_uneven_padding, max_pans) or where a ``padbias_score`` fixture is given;
* a model the gate cannot analyse fails the test with one specific sentence naming the
  gate, what is wrong with the model and what is accepted, never a torch traceback:
  a forward that raises (gate, stage, input shape, exception type and message), NaN or
  infinite outputs or activations, tuple outputs (GoogLeNet-style aux logits: refused,
  wrap the model to return the logits), dict and detection outputs without a
  ``padbias_score`` fixture, no convolution, Conv1d/Conv3d models for the gates that need
  2-D images, parameters on the meta device (stand-in for another device), images on
  another device than the model;
* an error inside pytest-padbias itself is reported as an internal error with our
  traceback, distinguishable from the model's.
"""
import json

import hypothesis  # noqa: F401
import pytest
import scipy.ndimage  # noqa: F401
import torch

# Loaded once here rather than by every in-process inner run (pytester forgets them after each).
import pytest_padbias.blindspot_gate  # noqa: F401
import pytest_padbias.blindspots  # noqa: F401
import pytest_padbias.model_checks  # noqa: F401
import pytest_padbias.pan_figures  # noqa: F401
import pytest_padbias.pan_gate  # noqa: F401
import pytest_padbias.pans  # noqa: F401
import pytest_padbias.shift_figures  # noqa: F401
import pytest_padbias.shift_gate  # noqa: F401
import pytest_padbias.shifts  # noqa: F401

CONFTEST = r'''
import pytest
import torch
import torch.nn as nn

KIND = {kind!r}


def head(c):
    return [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]


def base():
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), *head(8))


def _deep_in_user_code(x):
    raise ValueError(f"deliberate failure in forward on {{tuple(x.shape)}}")


class Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = base()

    def forward(self, x):
        return _deep_in_user_code(self.body[0](x))


class Aux(nn.Module):
    """GoogLeNet-style: (logits, aux1, aux2) even in eval mode."""
    def __init__(self):
        super().__init__()
        self.body = base()

    def forward(self, x):
        y = self.body(x)
        return y, 0.5 * y, 2 * y


class Seg(nn.Module):
    """Segmentation-style: {{'out': [N, classes, H, W]}}."""
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 3, padding=1))

    def forward(self, x):
        return {{"out": self.body(x)}}


class Detector(nn.Module):
    """torchvision detection-style: one dict of boxes, scores, labels per image."""
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))

    def forward(self, x):
        heat = self.body(x).sigmoid()
        out = []
        for h in heat:
            score, where = h.flatten().max(0)
            y, x0 = divmod(int(where), h.shape[-1])
            out.append({{"boxes": torch.tensor([[x0, y, x0 + 1, y + 1]], dtype=torch.float32) * 2,
                         "scores": score[None], "labels": torch.ones(1, dtype=torch.int64)}})
        return out


def grouped(dense=False):
    torch.manual_seed(0)
    g1, g2 = nn.Conv2d(3, 12, 3, stride=2, padding=1, groups=3), nn.Conv2d(12, 12, 3, padding=1, groups=12)
    if dense:  # the same function with block-diagonal dense weights
        d1, d2 = nn.Conv2d(3, 12, 3, stride=2, padding=1), nn.Conv2d(12, 12, 3, padding=1)
        with torch.no_grad():
            d1.weight.zero_(); d2.weight.zero_()
            for o in range(12):
                d1.weight[o, o // 4] = g1.weight[o, 0]
                d2.weight[o, o] = g2.weight[o, 0]
            d1.bias.copy_(g1.bias); d2.bias.copy_(g2.bias)
        g1, g2 = d1, d2
    torch.manual_seed(1)
    return nn.Sequential(g1, nn.ReLU(), g2, *head(12))


def trained(mode):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
                      nn.Conv2d(8, 8, 3, padding=1), *head(8))
    with torch.no_grad():
        m[1].running_mean.uniform_(-1, 1)
        m[1].running_var.uniform_(0.5, 2)
    return m.train(mode)


def build(kind):
    torch.manual_seed(0)
    if kind in ("base", "mixed_devices"):
        return base()
    if kind == "raises":
        return Raises()
    if kind in ("nan", "inf"):
        m = base()
        with torch.no_grad():
            m[-1].bias[3] = float(kind)
        return m
    if kind == "nan_conv":
        m = base()
        with torch.no_grad():
            m[0].bias[0] = float("nan")
        return m
    if kind == "tuple":
        return Aux()
    if kind in ("dict", "dict_with_score"):
        return Seg()
    if kind in ("detection", "detection_with_score"):
        return Detector()
    if kind == "no_conv":
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 33 * 33, 10))
    if kind == "conv1d":
        return nn.Sequential(nn.Conv1d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 10))
    if kind == "conv3d":
        return nn.Sequential(nn.Conv3d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 10))
    if kind in ("grouped", "grouped_dense"):
        return grouped(dense=kind == "grouped_dense")
    if kind == "dilated":
        return nn.Sequential(nn.Conv2d(3, 8, 3, stride=3, padding=2, dilation=2), nn.ReLU(),
                             nn.Conv2d(8, 8, 3, padding=2, dilation=2), *head(8))
    if kind == "channels_last":
        return base().to(memory_format=torch.channels_last)
    if kind == "meta":
        return base().to("meta")
    if kind in ("train", "train_eval"):
        return trained(kind == "train")
    if kind == "score_raises":
        return Seg()
    if kind == "internal_bug":
        return base()
    raise ValueError(kind)


# A 1x1 PNG instead of drawing each figure: drawing is most of a tiny model's gate time,
# and the figures are tested elsewhere; the figures are still built from the results.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082")


@pytest.fixture(autouse=True)
def _no_drawing(monkeypatch):
    for module in ("figures", "uneven_padding", "pan_figures", "shift_figures"):
        monkeypatch.setattr(f"pytest_padbias.{{module}}.to_png", lambda fig, dpi=100: PNG)


@pytest.fixture
def padbias_model():
    model = build(KIND)
    was_training = model.training
    yield model
    # The gates run after the test body; the model must come back in the mode it was given in.
    assert model.training == was_training, "a gate left the model in another train/eval mode"


if KIND == "mixed_devices":
    @pytest.fixture
    def padbias_images():
        return torch.randn(4, 3, 33, 33, device="meta")  # stand-in for images on a GPU, model on the CPU

if KIND == "dict_with_score":
    @pytest.fixture
    def padbias_score(padbias_model):
        return lambda x: padbias_model(x)["out"].softmax(1)[:, 1].mean((1, 2))

if KIND == "score_raises":
    @pytest.fixture
    def padbias_score(padbias_model):
        return lambda x: padbias_model(x)["boxes"]

if KIND == "internal_bug":
    import functools

    @pytest.fixture(autouse=True)
    def _bug_in_pytest_padbias(monkeypatch):
        # A C-level call raising inside the PAN census: the exception comes from our code.
        # (prepare_rows: every counting kernel's first step; a partial binds no self)
        monkeypatch.setattr("pytest_padbias.pans_scan.LayerScan.prepare_rows", functools.partial(divmod, 1, 0))

if KIND == "detection_with_score":
    @pytest.fixture
    def padbias_score(padbias_model):
        return lambda x: torch.stack([d["scores"].max() for d in padbias_model(x)])
'''

INNER = """
from pytest_padbias import padbias

@padbias.{marker}
def test_gate(padbias_model):
    pass
"""

GATES = {
    "no_uneven_padding": "no_uneven_padding",
    "shift_robust": "shift_robust(0.05, max_shift=2)",
    "max_pans": "max_pans(1.0)",
    "no_blind_spot": "no_blind_spot(ratio=0.05)",
}
GATE_ORDER = tuple(GATES)

ARGS = ["--padbias-images=4", "--padbias-max-examples=5", "-p", "no:cacheprovider", "-p", "no:randomly"]

P = "passed"
COULD_NOT = "could not check this model: "


def could_not(gate, text):
    return ("failed", f"@padbias.{gate} {COULD_NOT}{text}")


#: kind -> per gate: "passed", or the pieces (in order) of the line the failure message must contain.
U, S, M, B = GATE_ORDER
ALL_PASS = {g: P for g in GATES}
NOT_FINITE = {U: P, S: [COULD_NOT, "the model returned NaN or infinite logits for ", " 33x33 views; shift robustness needs finite outputs"],
              M: P, B: [COULD_NOT, "the model returned NaN or infinite logits for 1 of 1 stimulus placements; detectability needs finite outputs"]}
TUPLE = [COULD_NOT, "the model returned a tuple of 3 (a tensor of shape (", "tuple outputs are refused rather than guessed at",
         "gate a wrapper module that returns the logits", "or give a score_fn (the padbias_score fixture)"]
DICT = [COULD_NOT, "the model returned a dict with keys ['out'], not [N, classes] logits; give a score_fn (the padbias_score fixture) mapping"]
DETECTION = [COULD_NOT, "the model returned a list of ", "(dict", "not [N, classes] logits; give a score_fn (the padbias_score fixture) mapping"]
META_TRACE = [COULD_NOT, "the model cannot run on a 33x33 input (RuntimeError: Tensor.item() cannot be called on meta tensors); the padding trace runs the model on the meta device",
              "gate its convolutional part"]
CONV1D = [COULD_NOT, "its first convolution 0 is a Conv1d, which takes 1-D signals [N, C, L]; ", " needs a model of 2-D images [N, C, H, W] (no_uneven_padding analyses Conv1d models)"]
CONV3D = [COULD_NOT, "its first convolution 0 is a Conv3d, which takes volumes [N, C, D, H, W]; ", " needs a model of 2-D images [N, C, H, W]"]
META = [COULD_NOT, "the model's parameters are on the meta device, which holds no values, and ", " runs the model on images; give it real weights"]
MIXED = [COULD_NOT, "padbias_images are on meta but the model is on cpu; give images on the model's device"]

MATRIX = {
    "base": ALL_PASS,
    "raises": {
        U: [COULD_NOT, "the model cannot run on a 33x33 input (ValueError: deliberate failure in forward on (1, 8, 17, 17))"],
        S: [COULD_NOT, "the model cannot evaluate 33x33 views (ValueError: deliberate failure in forward on ("],
        M: [COULD_NOT, "the model raised ValueError while running the PAN census on an input of shape [", ", 3, 33, 33]: deliberate failure in forward on ("],
        B: [COULD_NOT, "the model raised ValueError while scoring stimulus placements on an input of shape [1, 3, 33, 33]: deliberate failure in forward on (1, 8, 17, 17)"],
    },
    "nan": NOT_FINITE,  # NaN logits from the head: the conv activations (all max_pans reads) are finite
    "inf": NOT_FINITE,
    "nan_conv": {**NOT_FINITE, M: [COULD_NOT, "layer 0 produced NaN or infinite activations; the PAN census needs finite conv outputs"]},
    "tuple": {U: P, S: TUPLE, M: P, B: TUPLE},  # the output does not matter to the padding trace or the PAN census
    "dict": {U: P, S: DICT, M: P, B: DICT},
    "dict_with_score": ALL_PASS,
    "detection": {U: META_TRACE, S: DETECTION, M: P, B: DETECTION},
    "detection_with_score": {U: META_TRACE, S: P, M: P, B: P},
    "score_raises": {U: P, S: [COULD_NOT, "the padbias_score function raised KeyError while evaluating shifted views: 'boxes'"], M: P,
                     B: [COULD_NOT, "the padbias_score function raised KeyError while scoring stimulus placements: 'boxes'"]},
    "no_conv": {U: [COULD_NOT, "the model has no convolution layer (nn.Conv1d/Conv2d), so it has no padding to analyse"], S: P,
                M: [COULD_NOT, "the model has no Conv2d layer with a kernel of at least 2 pixels on a side"], B: P},
    "conv1d": {U: P, S: CONV1D, M: CONV1D, B: CONV1D},
    "conv3d": {U: [COULD_NOT, "the model's first convolution is a 3-D convolution; pytest-padbias analyses the padding of 1-D and 2-D convolutions only"],
               S: CONV3D, M: CONV3D, B: CONV3D},
    "grouped": ALL_PASS,
    "dilated": ALL_PASS,  # at 34x34, even by construction (see test_dilated_strided_conv_verdict_by_construction)
    "channels_last": ALL_PASS,
    "meta": {U: P, S: META, M: META, B: META},  # the padding trace runs on meta anyway
    "mixed_devices": {U: P, S: MIXED, M: MIXED, B: P},  # no_blind_spot makes its own inputs on the model's device
    "train": ALL_PASS,  # run in eval mode and given back in training mode (the conftest's fixture checks)
    "internal_bug": {U: P, S: P, M: ["@padbias.max_pans: internal error in pytest-padbias, TypeError: divmod expected 2 arguments"], B: P},
}


def run_cell(pytester, kind, gates, size=33, extra=()):
    """One inner run of ``kind`` with one test per gate; the result and the JSON document."""
    pytester.makeconftest(CONFTEST.format(kind=kind))
    pytester.makepyfile(test_inner_gate="from pytest_padbias import padbias\n" + "".join(
        f"\n@padbias.{GATES[g]}\ndef test_{g}(padbias_model):\n    pass\n" for g in gates))
    out = pytester.path / "run.json"
    result = pytester.runpytest(*ARGS, f"--padbias-input-size={size}", f"--padbias-json={out}", *extra)
    return result, json.loads(out.read_text())


def line_with(text, pieces):
    """The first line of ``text`` holding every piece, in order, or None."""
    for line in text.splitlines():
        at = 0
        for piece in pieces:
            at = line.find(piece, at)
            if at < 0:
                break
            at += len(piece)
        else:
            return line
    return None


@pytest.mark.parametrize("gate", GATE_ORDER)
@pytest.mark.parametrize("kind", list(MATRIX))
def test_matrix(pytester, kind, gate):
    expected = MATRIX[kind][gate]
    result, doc = run_cell(pytester, kind, [gate], size=34 if kind == "dilated" else 33)
    text = result.stdout.str()
    (entry,) = doc["tests"]
    if expected == P:
        result.assert_outcomes(passed=1)
        (check,) = entry["checks"]
        assert check["check"] == gate and check["passed"] is True
        return
    result.assert_outcomes(failed=1)
    assert entry["outcome"] == "failed" and entry["checks"] == []
    pieces = [f"@padbias.{gate} {expected[0]}", *expected[1:]] if expected[0] == COULD_NOT else expected
    assert line_with(text, pieces), f"no line with {pieces!r} in:\n{text}"
    if kind == "internal_bug":  # our own bug: visible, with our traceback
        assert "This is a bug in pytest-padbias, not in the model" in text and "pytest_padbias/pans_scan.py" in text
    else:  # one sentence, no traceback of the model or of torch
        assert "Traceback" not in text and "torch/nn/modules" not in text and "conftest.py:" not in text


def _values(doc):
    return {e["nodeid"].split("::test_")[1]: (e["outcome"], [c["value"] for c in e["checks"]]) for e in doc["tests"]}


@pytest.mark.parametrize("kind, reference", [
    ("grouped", "grouped_dense"),  # grouped/depthwise convs = the same convs with block-diagonal dense weights
    ("channels_last", "base"),
    ("train", "train_eval"),  # a model in training mode is judged in eval mode
])
def test_same_verdict_and_values_as_the_reference_model(pytester, kind, reference):
    _result, doc = run_cell(pytester, kind, GATE_ORDER)
    _result, ref = run_cell(pytester, reference, GATE_ORDER)
    got, want = _values(doc), _values(ref)
    assert set(got) == set(GATE_ORDER)
    for gate in GATE_ORDER:
        assert got[gate][0] == want[gate][0] == "passed", gate
        assert got[gate][1] == pytest.approx(want[gate][1], rel=1e-5, abs=1e-6), gate


@pytest.mark.parametrize("size, outcome", [(32, "failed"), (34, "passed")])
def test_dilated_strided_conv_verdict_by_construction(pytester, size, outcome):
    """Conv 3x3, dilation 2 (span 5), stride 3, padding 2. At 32: 11 windows, the last ends
    at padded row 34 of 0..35, so 2 padding rows on top but 1 at the bottom. At 34: 12
    windows end at padded row 37, the last of 0..37: even. Ignoring the dilation (span 3)
    would give the opposite verdict at both sizes."""
    result, _doc = run_cell(pytester, "dilated", [U], size=size)
    result.assert_outcomes(**{outcome: 1})
    if outcome == "failed":
        result.stdout.fnmatch_lines(["*@padbias.no_uneven_padding failed: uneven padding at input size 32x32: 1 of 2 conv/pool ops*",
                                     "*0 (conv2d, kernel 3x3, stride 3x3, on 32x32) reads 2 padding row(s) on top but 1 at the bottom*"])


@pytest.mark.parametrize("op", ["conv", "max_pool"])
def test_uneven_padding_with_dilation_agrees_with_gradients(op):
    """Ground truth without the geometry code: a window op reads its padded input evenly iff
    the rows it reads (non-zero gradient) are mirror-symmetric."""
    import torch.nn as nn

    from pytest_padbias.geometry import trace_padding

    for k, d, s, p in [(3, 2, 3, 2), (3, 2, 2, 1), (3, 3, 2, 3), (2, 2, 2, 1), (5, 2, 4, 4)]:
        if op == "max_pool" and p > k // 2:
            continue  # max_pool2d wants padding <= half the kernel
        layer = nn.Conv2d(1, 1, k, stride=s, padding=p, dilation=d) if op == "conv" else nn.MaxPool2d(k, s, p, d)
        for n in range(12, 30):
            *_, record = trace_padding(nn.Sequential(nn.Conv2d(1, 1, 1), layer), (n, n))  # the 1x1 conv reads no padding
            x = torch.zeros(1, 1, n + 2 * p, n + 2 * p, requires_grad=True)
            if op == "conv":
                torch.nn.functional.conv2d(x, torch.ones(1, 1, k, k), stride=s, dilation=d).sum().backward()
            else:  # every pixel of the pool's windows, as unfold lists them
                torch.nn.functional.unfold(x, k, dilation=d, stride=s).sum().backward()
            rows = x.grad[0, 0].abs().sum(1) > 0
            assert record.uneven == (not torch.equal(rows, rows.flip(0))), (op, k, d, s, p, n, record)
