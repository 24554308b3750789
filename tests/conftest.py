"""Shared set-up of the project's own tests.

pytester's in-process runs forget every module first imported during a test; extension
modules (numpy, torch's helpers, greenlet) cannot be imported a second time. Importing
what the plugin loads lazily here, before any test, keeps them loaded for good.
"""
import matplotlib.figure  # noqa: F401
import matplotlib.image  # noqa: F401
import numpy  # noqa: F401
import numpy.random  # noqa: F401
import safetensors.torch  # noqa: F401
import scipy.stats  # noqa: F401
import skimage.data  # noqa: F401
import torch  # noqa: F401
import torchvision  # noqa: F401

import pytest_padbias.images  # noqa: F401
import pytest_padbias.pans_compiled

if pytest_padbias.pans_compiled.available():
    # numba imports parts of itself while it compiles or loads a kernel, into registries
    # that a second import breaks: load the census's kernels once, here.
    _maps = numpy.zeros((2, 1, 4, 4), dtype=numpy.float32)
    _queries = numpy.zeros((1, 8), dtype=numpy.float32)
    pytest_padbias.pans_compiled.compiled_counts(_maps, 0, 1, _queries, [8])
    pytest_padbias.pans_compiled.compiled_statistics(_maps, 0, 1, _queries, [8], numpy.empty((3, 1, 1)))
import pytest_padbias.models  # noqa: F401
import pytest_padbias.uneven_padding  # noqa: F401
