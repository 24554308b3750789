"""EMNIST letters read offline from the files ``torchvision.datasets.EMNIST`` reads.

``torchvision.datasets.EMNIST(DIR, split="letters", train=...)`` reads
``DIR/EMNIST/raw/emnist-letters-{train,test}-{images-idx3,labels-idx1}-ubyte``: raw IDX
files, big-endian, unsigned bytes. Here each may also be gzipped (``.gz``, as NIST ships
them); the uncompressed file wins when both exist, as it is the one torchvision reads.
Nothing is ever downloaded.

Orientation: torchvision returns the images exactly as stored (no transpose), and
EMNIST stores them transposed, so its letters look mirrored and rotated; ``load_letters``
matches torchvision, and ``upright=True`` transposes them back to upright letters.
Labels: the letters split is 1..26 for A..Z (torchvision's class 0 "N/A" is never
used); ``load_letters`` returns 0..25.

Every problem with the files is a :class:`~pytest_padbias.result.PadbiasError` of one
sentence naming the file and what was expected. Nothing here imports torch.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import zlib
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from .result import PadbiasError

SPLITS = ("train", "test")
SIDE = 28
LETTERS = 26
LAYOUT = "DIR/EMNIST/raw/emnist-letters-{train,test}-{images-idx3,labels-idx1}-ubyte[.gz]"
_UBYTE = 0x08
_CHUNK = 1 << 20

# The four files, in the fixed order the digest hashes them.
_NAMES = {f"{split}_{kind}": f"emnist-letters-{split}-{kind}-idx{ndim}-ubyte"
          for split in SPLITS for kind, ndim in (("images", 3), ("labels", 1))}
_EXPECTED = {3: f"an idx3 ubyte file of {SIDE}x{SIDE} images", 1: "an idx1 ubyte file of labels"}


def letters_files(root: str | Path) -> dict[str, Path]:
    """The four EMNIST letters files under ``root``, keyed ``train_images``,
    ``train_labels``, ``test_images``, ``test_labels``.

    ``root`` is the folder given to torchvision (holding ``EMNIST/raw/``); the ``EMNIST``
    folder or the ``raw`` folder itself is accepted too. Each file may be gzipped
    (``.gz``); the uncompressed one is preferred when both exist. All four must be there,
    even to load one split: the zoo trains on one and tests on the other, and
    :func:`data_digest` covers them all.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise PadbiasError(f"EMNIST data folder {root} does not exist or is not a folder; expected {LAYOUT} "
                           f"with DIR = {root}, as torchvision.datasets.EMNIST(DIR, split='letters') reads")
    raw = _raw_folder(root)
    files = {}
    for key, name in _NAMES.items():
        plain, packed = raw / name, raw / f"{name}.gz"
        if not (plain.is_file() or packed.is_file()):
            raise PadbiasError(f"EMNIST letters file {plain} (or {packed.name}) is missing; expected all four "
                               f"emnist-letters-{{train,test}}-{{images-idx3,labels-idx1}}-ubyte[.gz] files in {raw}, "
                               f"laid out as {LAYOUT}")
        files[key] = plain if plain.is_file() else packed
    return files


def _raw_folder(root: Path) -> Path:
    """The first of root/EMNIST/raw, root/raw (root is the EMNIST folder) and root (root is
    the raw folder) that holds any letters file."""
    for folder in (root / "EMNIST" / "raw", root / "raw", root):
        if any((folder / n).is_file() or (folder / f"{n}.gz").is_file() for n in _NAMES.values()):
            return folder
    stray = _stray_files(root)
    where = f"; found {stray[0]} instead, move the files to {root / 'EMNIST' / 'raw'}" if stray else ""
    raise PadbiasError(f"no EMNIST letters files in {root / 'EMNIST' / 'raw'}: expected {LAYOUT} with DIR = {root} "
                       f"(or DIR's EMNIST or raw folder itself), as torchvision.datasets.EMNIST(DIR, split='letters') "
                       f"reads{where}")


def _stray_files(root: Path) -> list[Path]:
    """Letters files a few levels below ``root`` in the wrong folders, to say where they are.
    Shallow on purpose: ``root`` may be a big folder."""
    for depth in range(4):
        found = sorted(root.glob("*/" * depth + "emnist-letters-*"))
        if found:
            return found
    return []


@contextlib.contextmanager
def _decoded(path: Path) -> Iterator[IO[bytes]]:
    """``path``'s decoded bytes as a stream (gunzipped for ``.gz``); an unreadable file or
    broken gzip becomes a PadbiasError naming it."""
    packed = path.name.endswith(".gz")
    try:
        with (gzip.open(path, "rb") if packed else open(path, "rb")) as stream:
            yield stream
    except (OSError, EOFError, zlib.error) as exc:
        what = "not a valid gzip file" if packed else "not readable"
        raise PadbiasError(f"EMNIST file {path} is {what} ({exc.__class__.__name__}: {exc}); "
                           f"expected {_EXPECTED[3 if 'idx3' in path.name else 1]}") from None


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array in IDX file ``path``: magic 00 00 08 ``ndim``, then ``ndim``
    big-endian uint32 sizes, then exactly their product of bytes."""
    # Read into a bytearray, so the array below is writable without a copy (torch.from_numpy
    # warns on read-only arrays, and the real train images are 98 MB).
    data = bytearray()
    with _decoded(path) as stream:
        while chunk := stream.read(_CHUNK):
            data += chunk
    expected = _EXPECTED[ndim]
    magic = bytes([0, 0, _UBYTE, ndim])
    if data[:4] != magic:
        hint = f", and it looks gzipped: name it {path.name}.gz" if data[:2] == b"\x1f\x8b" else ""
        raise PadbiasError(f"EMNIST file {path} is not {expected}: its magic number is {data[:4].hex() or 'missing'}, "
                           f"expected {magic.hex()}{hint}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise PadbiasError(f"EMNIST file {path} is truncated: expected a {header}-byte IDX header, found {len(data)} bytes")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    if ndim == 3 and dims[1:] != (SIDE, SIDE):
        raise PadbiasError(f"EMNIST file {path} holds {dims[1]}x{dims[2]} images, expected {expected}")
    size = header + int(np.prod(dims))
    if len(data) != size:
        state = "truncated" if len(data) < size else "longer than its header says"
        raise PadbiasError(f"EMNIST file {path} is {state}: expected {size} bytes for {'x'.join(map(str, dims))} "
                           f"values, found {len(data)}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def load_letters(root: str | Path, split: str, upright: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of the EMNIST letters ``split`` ("train" or "test") under ``root``.

    ``images`` is uint8 ``[N, 28, 28]``, equal to ``torchvision.datasets.EMNIST(root,
    split="letters").data`` (EMNIST's stored, transposed orientation), or upright letters
    with ``upright=True``; ``labels`` is int64 0..25 for A..Z (torchvision's minus 1).
    """
    if split not in SPLITS:
        raise PadbiasError(f"EMNIST letters split {split!r} is not one of {', '.join(SPLITS)}")
    files = letters_files(root)
    images_path, labels_path = files[f"{split}_images"], files[f"{split}_labels"]
    images, labels = _read_idx(images_path, 3), _read_idx(labels_path, 1)
    if len(images) != len(labels) or not len(images):
        raise PadbiasError(f"EMNIST file {images_path} holds {len(images)} images but {labels_path} holds "
                           f"{len(labels)} labels; expected one label per image, and at least one")
    outside = np.flatnonzero((labels < 1) | (labels > LETTERS))
    if outside.size:
        i = int(outside[0])
        raise PadbiasError(f"EMNIST file {labels_path} has label {labels[i]} at index {i}; expected the letters "
                           f"split's labels 1..{LETTERS} for A..Z")
    if upright:
        images = np.ascontiguousarray(images.transpose(0, 2, 1))
    return images, labels.astype(np.int64) - 1


_DIGESTS: dict[tuple, str] = {}


def data_digest(root: str | Path) -> str:
    """SHA-256 (hex) of the decoded contents of the four letters files under ``root``, for a
    training cache key: a gzipped and an uncompressed copy of the same data agree.

    Streams the files (a few seconds for the real EMNIST) and remembers the result in this
    process per (resolved path, mtime, size) of each file.
    """
    files = letters_files(root)
    key = tuple(_stat_key(path) for path in files.values())
    if key not in _DIGESTS:
        _DIGESTS[key] = _hash_files(files)
    return _DIGESTS[key]


def _stat_key(path: Path) -> tuple[str, int, int]:
    resolved = path.resolve()
    stat = resolved.stat()
    return str(resolved), stat.st_mtime_ns, stat.st_size


def _hash_files(files: dict[str, Path]) -> str:
    # One digest per file, then a digest of the named digests: file boundaries cannot
    # shift between two different sets and collide.
    total = hashlib.sha256()
    for key, path in files.items():
        one = hashlib.sha256()
        with _decoded(path) as stream:
            while chunk := stream.read(_CHUNK):
                one.update(chunk)
        total.update(f"{key}={one.hexdigest()}\n".encode())
    return total.hexdigest()


def write_letters_idx(root: str | Path, images_train, labels_train, images_test, labels_test,
                      gz: bool = False) -> dict[str, Path]:
    """Write a letters set under ``root/EMNIST/raw/`` as torchvision reads it (``.gz``
    files with ``gz=True``); return the paths, keyed as :func:`letters_files`.

    Takes what :func:`load_letters` returns: images uint8 ``[N, 28, 28]`` in torchvision's
    orientation (which is the files' own, so they are written as given) and labels 0..25,
    written as 1..26.
    """
    raw = Path(root).expanduser() / "EMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, images, labels in (("train", images_train, labels_train), ("test", images_test, labels_test)):
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = _checked_set(split, images, labels)
    written = {}
    for key, name in _NAMES.items():
        payload = _idx_bytes(arrays[key])
        path = raw / (f"{name}.gz" if gz else name)
        path.write_bytes(gzip.compress(payload, compresslevel=6, mtime=0) if gz else payload)
        written[key] = path
    return written


def _checked_set(split: str, images, labels) -> tuple[np.ndarray, np.ndarray]:
    """``images`` and ``labels`` as the uint8 arrays to write (labels shifted to 1..26)."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 3 or images.shape[1:] != (SIDE, SIDE) or images.dtype != np.uint8:
        raise ValueError(f"{split} images must be uint8 [N, {SIDE}, {SIDE}], got {images.dtype} {list(images.shape)}")
    if labels.shape != (len(images),) or labels.dtype.kind not in "iu":
        raise ValueError(f"{split} labels must be {len(images)} integers, got {labels.dtype} {list(labels.shape)}")
    if labels.size and (labels.min() < 0 or labels.max() >= LETTERS):
        raise ValueError(f"{split} labels must be 0..{LETTERS - 1} for A..Z, got {labels.min()}..{labels.max()}")
    return images, (labels + 1).astype(np.uint8)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, _UBYTE, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + np.ascontiguousarray(array).tobytes()
