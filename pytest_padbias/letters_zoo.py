"""One run's letters classifiers: which to train, trained together, evaluated once.

The reproducibility suites ask for the same models many times (Table 1's models are also
Table 2's, Figure 9's and the PAN suite's). :class:`LettersZoo` holds, for one budget, one
set of seeds and one data source, every model, test batch and logit tensor it has computed,
so a suite fixture owns them (two runs with other budgets or data never share a result).
:meth:`LettersZoo.train_all` trains every model the suites need up-front, one process per
core (:func:`pytest_padbias.zoo.train_in_parallel`).
"""
from __future__ import annotations

import functools

from . import zoo
from .padding import PADDING_MODES


class LettersZoo:
    """Letters classifiers of ``budget`` (:class:`pytest_padbias.zoo.LettersBudget`) for
    ``seeds``, trained on ``data`` (None: synthetic letters; else an EMNIST root), on
    ``device``; ``cache_dir`` None is the zoo's default cache."""

    def __init__(self, budget, seeds, data=None, device: str = "cpu", cache_dir=None, profile: str = "quick"):
        self.budget, self.seeds, self.data, self.device = budget, tuple(seeds), data, device
        #: Table 3's seeds: ``seeds`` and, when the budget asks for more, the following ones
        first_extra = self.seeds[-1] + 1 if self.seeds else 0
        self.batch_norm_seeds = self.seeds + tuple(range(first_extra, first_extra + budget.batch_norm_seeds - len(self.seeds)))
        self.cache_dir, self.profile = cache_dir, profile
        self.data_name = zoo.data_name(data)
        self._models: dict = {}
        self._tests: dict = {}
        self._logits: dict = {}
        #: analyses of these models (e.g. border-shift maps), for :func:`pytest_padbias.result.cached_analysis`
        self.results: dict = {}

    def describe(self) -> dict:
        """The budget and data every claim on these models records."""
        b = self.budget
        return {"profile": self.profile, "data": "EMNIST letters" if self.data else "synthetic letters (offline)",
                "data_digest": self.data_name, "seeds": list(self.seeds),
                "batch_norm_seeds": list(self.batch_norm_seeds), "train_images": b.n_train,
                "validation_images": b.n_val, "test_images": b.n_test, "max_epochs": b.max_epochs}

    def _job(self, size, mode, seed, batch_norm):
        return functools.partial(zoo.trained_model, "letters", size, mode, seed, batch_norm, cache_dir=self.cache_dir,
                                 data=self.data, **self.budget.train_kwargs())

    def cells(self, modes=PADDING_MODES, sizes=zoo.SIZES, batch_norm=False, seeds=None):
        return [(size, mode, seed, batch_norm) for seed in (self.seeds if seeds is None else seeds)
                for mode in modes for size in sizes]

    def table3_cells(self):
        """Table 3's models: zero padding with and without batch norm, ``batch_norm_seeds``."""
        return (self.cells(modes=("zeros",), seeds=self.batch_norm_seeds)
                + self.cells(modes=("zeros",), batch_norm=True, seeds=self.batch_norm_seeds))

    def missing_jobs(self, cells=None, batch_norm: bool = True) -> list:
        """Training jobs (picklable) of the models of ``cells`` (default: Tables 1 and 2's,
        and Table 3's unless ``batch_norm`` is False) that the cache does not hold yet, for
        :func:`pytest_padbias.zoo.train_in_parallel`."""
        if cells is None:
            cells = list(dict.fromkeys(self.cells() + (self.table3_cells() if batch_norm else [])))
        kwargs = self.budget.train_kwargs()
        return [self._job(*cell) for cell in cells
                if not zoo.is_cached(zoo.letters_config("letters", *cell, data=self.data, **kwargs), self.cache_dir)]

    def train_all(self, cells=None, workers=None) -> None:
        """Train (or find in the cache) every model of ``cells`` (default: Tables 1-3's);
        a warm cache starts no process."""
        zoo.train_in_parallel(self.missing_jobs(cells), workers)

    def model(self, size, mode, seed, batch_norm=False):
        key = (size, mode, seed, batch_norm)
        if key not in self._models:
            self._models[key] = self._job(*key)(device=self.device)
        return self._models[key]

    def test(self, size, n=None):
        """The held-out test batch at ``size`` (``n`` images, default the budget's)."""
        key = (size, n or self.budget.n_test)
        if key not in self._tests:
            x, y = zoo.test_batch(size, key[1], data=self.data)
            self._tests[key] = (x.to(self.device), y.to(self.device))
        return self._tests[key]

    def logits(self, train_size, mode, seed, test_size, batch_norm=False):
        """The model's logits on the test batch, computed once for accuracy and perplexity."""
        import torch

        key = (train_size, mode, seed, test_size, batch_norm)
        if key not in self._logits:
            x, _y = self.test(test_size)
            model = self.model(train_size, mode, seed, batch_norm)
            with torch.inference_mode():  # batches of 512 keep the activations in cache
                self._logits[key] = torch.cat([model(chunk) for chunk in torch.split(x, 512)]).cpu()
        return self._logits[key]

    def accuracy(self, train_size, mode, seed, test_size=None, batch_norm=False) -> float:
        """Test accuracy in percent (tested at the training size unless ``test_size``)."""
        test_size = train_size if test_size is None else test_size
        _x, y = self.test(test_size)
        hits = self.logits(train_size, mode, seed, test_size, batch_norm).argmax(1) == y.cpu()
        return 100.0 * float(hits.float().mean())

    def perplexity(self, size, seed, batch_norm) -> float:
        """exp(mean cross-entropy) of the zero-padded model trained and tested at ``size``."""
        import torch
        import torch.nn.functional as F

        return float(torch.exp(F.cross_entropy(self.logits(size, "zeros", seed, size, batch_norm), self.test(size)[1].cpu())))

    def training(self, cells) -> dict:
        """Epochs used and final validation loss of each model of ``cells``, for the claims' details."""
        out = {}
        for size, mode, seed, bn in cells:
            info = self.model(size, mode, seed, bn).zoo_info.get("train", {})
            out[f"{size}x{size} {mode}{' bn' if bn else ''} seed {seed}"] = {
                k: info.get(k) for k in zoo.TRAINING_RECORD if k in info}
        return out
