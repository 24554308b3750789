"""EMNIST letters read from torchvision's folder layout: the same arrays torchvision
reads, gz or not, one digest for the same data, and one-sentence errors naming the file."""
from __future__ import annotations

import gzip
import os
import shutil

import numpy as np
import pytest

from pytest_padbias.emnist import data_digest, letters_files, load_letters, write_letters_idx
from pytest_padbias.result import PadbiasError

RAW = ("EMNIST", "raw")
TRAIN_IMAGES = "emnist-letters-train-images-idx3-ubyte"
TRAIN_LABELS = "emnist-letters-train-labels-idx1-ubyte"
TEST_IMAGES = "emnist-letters-test-images-idx3-ubyte"
TEST_LABELS = "emnist-letters-test-labels-idx1-ubyte"


def tiny_set(seed: int = 0):
    """52 train images (each letter twice), 26 test (each once), random noise plus a bright
    mark at a place that moves under a transpose, so any flip or transpose shows."""
    rng = np.random.default_rng(seed)
    arrays = []
    for count in (52, 26):
        labels = rng.permutation(np.arange(count) % 26)
        images = rng.integers(0, 128, size=(count, 28, 28), dtype=np.uint8)
        images[np.arange(count), labels, 27 - labels] = 255
        arrays += [images, labels]
    return arrays


@pytest.fixture
def plain_root(tmp_path):
    root = tmp_path / "plain"
    write_letters_idx(root, *tiny_set())
    return root


@pytest.fixture
def gz_root(tmp_path):
    root = tmp_path / "gz"
    write_letters_idx(root, *tiny_set(), gz=True)
    return root


def raw_file(root, name):
    return root.joinpath(*RAW, name)


def raises_naming(path, func, *args):
    """``func(*args)`` raises a one-sentence PadbiasError naming ``path``; return its message."""
    with pytest.raises(PadbiasError) as info:
        func(*args)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


@pytest.mark.parametrize("train", [True, False])
def test_reads_what_torchvision_reads(plain_root, train):
    from torchvision.datasets import EMNIST

    dataset = EMNIST(str(plain_root), split="letters", train=train, download=False)
    images, labels = load_letters(plain_root, "train" if train else "test")
    assert images.dtype == np.uint8 and images.shape == (52 if train else 26, 28, 28)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(images, dataset.data.numpy())
    np.testing.assert_array_equal(labels, dataset.targets.numpy() - 1)
    for i in (0, 7, len(dataset) - 1):  # what it returns per item, as a PIL image
        image, target = dataset[i]
        np.testing.assert_array_equal(np.asarray(image), images[i])
        assert target == labels[i] + 1 and dataset.classes[target] == "abcdefghijklmnopqrstuvwxyz"[labels[i]]


def test_written_as_given_and_upright_transposes(plain_root):
    images_train, labels_train, images_test, labels_test = tiny_set()
    images, labels = load_letters(plain_root, "test")
    np.testing.assert_array_equal(images, images_test)
    np.testing.assert_array_equal(labels, labels_test)
    upright, _ = load_letters(plain_root, "test", upright=True)
    np.testing.assert_array_equal(upright, images_test.transpose(0, 2, 1))
    assert upright.flags.c_contiguous and upright.flags.writeable and images.flags.writeable


def test_gz_same_arrays_and_digest(plain_root, gz_root):
    assert all(p.name.endswith(".gz") for p in letters_files(gz_root).values())
    for split in ("train", "test"):
        for ours, theirs in zip(load_letters(gz_root, split), load_letters(plain_root, split)):
            np.testing.assert_array_equal(ours, theirs)
    digest = data_digest(plain_root)
    assert len(digest) == 64 and digest == data_digest(gz_root)


def test_one_byte_changes_the_digest(tmp_path, plain_root):
    images_train, labels_train, images_test, labels_test = tiny_set()
    images_test = images_test.copy()
    images_test[3, 10, 11] ^= 1
    other = tmp_path / "other"
    write_letters_idx(other, images_train, labels_train, images_test, labels_test)
    assert data_digest(other) != data_digest(plain_root)


def test_digest_recomputed_when_a_file_changes(plain_root):
    before = data_digest(plain_root)
    path = raw_file(plain_root, TEST_LABELS)
    data = bytearray(path.read_bytes())
    data[8] = data[8] % 26 + 1  # another valid label
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new mtime even on a coarse clock
    assert data_digest(plain_root) != before


@pytest.mark.parametrize("parts", [(), ("EMNIST",), RAW])
def test_root_emnist_or_raw_folder(plain_root, parts):
    files = letters_files(plain_root.joinpath(*parts))
    assert sorted(files) == ["test_images", "test_labels", "train_images", "train_labels"]
    assert all(p.parent == plain_root.joinpath(*RAW) for p in files.values())


def test_uncompressed_preferred_over_gz(tmp_path):
    root = tmp_path / "both"
    write_letters_idx(root, *tiny_set(seed=1), gz=True)
    write_letters_idx(root, *tiny_set(seed=2))
    assert not any(p.name.endswith(".gz") for p in letters_files(root).values())
    np.testing.assert_array_equal(load_letters(root, "train")[0], tiny_set(seed=2)[0])


def test_missing_file(plain_root):
    raw_file(plain_root, TEST_LABELS).unlink()
    message = raises_naming(raw_file(plain_root, TEST_LABELS), load_letters, plain_root, "train")
    assert "EMNIST/raw" in message


def test_missing_folder(tmp_path):
    raises_naming(tmp_path / "nowhere", letters_files, tmp_path / "nowhere")


def test_wrong_folder_layout(plain_root):
    # The files one level too high (EMNIST/ without raw/): say where they are and where they go.
    wrong = plain_root / "EMNIST"
    for path in (wrong / "raw").iterdir():
        shutil.move(str(path), wrong / path.name)
    (wrong / "raw").rmdir()
    message = raises_naming(plain_root / "EMNIST" / "raw", load_letters, plain_root, "train")
    assert "DIR/EMNIST/raw/emnist-letters-" in message
    assert f"found {wrong / TEST_IMAGES} instead, move the files to {plain_root / 'EMNIST' / 'raw'}" in message
    raises_naming(wrong / TEST_IMAGES, data_digest, plain_root.parent)  # found two levels down too


def patched(path, offset, value):
    data = bytearray(path.read_bytes())
    data[offset] = value
    path.write_bytes(bytes(data))


def test_truncated_images(plain_root):
    path = raw_file(plain_root, TRAIN_IMAGES)
    path.write_bytes(path.read_bytes()[:-100])
    message = raises_naming(path, load_letters, plain_root, "train")
    expected = 16 + 52 * 28 * 28
    assert "truncated" in message and f"expected {expected} bytes" in message and f"found {expected - 100}" in message


def test_wrong_magic(plain_root):
    path = raw_file(plain_root, TRAIN_IMAGES)
    patched(path, 3, 1)  # says idx1: a labels file
    message = raises_naming(path, load_letters, plain_root, "train")
    assert "idx3 ubyte file of 28x28 images" in message and "00000801" in message


def test_wrong_image_size(plain_root):
    path = raw_file(plain_root, TEST_IMAGES)
    patched(path, 11, 27)  # rows 27
    message = raises_naming(path, load_letters, plain_root, "test")
    assert "27x28" in message


def test_gzipped_without_suffix(gz_root):
    path = raw_file(gz_root, TEST_IMAGES)
    shutil.move(str(path) + ".gz", path)
    message = raises_naming(path, load_letters, gz_root, "test")
    assert f"name it {TEST_IMAGES}.gz" in message


def test_count_mismatch(plain_root):
    shutil.copy(raw_file(plain_root, TRAIN_LABELS), raw_file(plain_root, TEST_LABELS))
    message = raises_naming(raw_file(plain_root, TEST_LABELS), load_letters, plain_root, "test")
    assert "26 images" in message and "52 labels" in message and TEST_IMAGES in message


@pytest.mark.parametrize("damage", ["flipped", "truncated", "not gzip"])
def test_corrupt_gzip(gz_root, damage):
    path = raw_file(gz_root, TRAIN_IMAGES + ".gz")
    data = path.read_bytes()
    broken = {"flipped": data[:40] + bytes(b ^ 0xFF for b in data[40:60]) + data[60:],
              "truncated": data[: len(data) // 2], "not gzip": b"hello, not gzip"}[damage]
    path.write_bytes(broken)
    message = raises_naming(path, load_letters, gz_root, "train")
    assert "not a valid gzip file" in message
    raises_naming(path, data_digest, gz_root)


@pytest.mark.parametrize("label", [0, 27])
def test_label_outside_letters(plain_root, label):
    path = raw_file(plain_root, TRAIN_LABELS)
    patched(path, 8 + 5, label)
    message = raises_naming(path, load_letters, plain_root, "train")
    assert f"label {label} at index 5" in message and "1..26" in message


def test_unknown_split(plain_root):
    with pytest.raises(PadbiasError, match="'validation' is not one of train, test"):
        load_letters(plain_root, "validation")


def test_writer_refuses_bad_arrays(tmp_path):
    images_train, labels_train, images_test, labels_test = tiny_set()
    with pytest.raises(ValueError, match="0..25"):
        write_letters_idx(tmp_path, images_train, labels_train + 1, images_test, labels_test)
    with pytest.raises(ValueError, match=r"uint8 \[N, 28, 28\]"):
        write_letters_idx(tmp_path, images_train[:, :27], labels_train, images_test, labels_test)
