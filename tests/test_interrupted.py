"""Interrupted and parallel runs lose nothing.

A run SIGKILLed while it trains a zoo model, or while it writes the JSON or the pytest-html
page (with its ``assets/`` folder or ``--self-contained-html``), leaves no half-written
cache entry or report: what is visible afterwards is the previous complete file (or a new
complete one), never a truncated one, and never another model's report (or the figures
in its ``assets/``) overwritten. Its
lock dies with it and its temporary files are hidden and removed by the next run, which
then succeeds by itself. Two processes, and ``-n 2`` xdist workers, that need the same zoo
model train it once and share one valid cache file.

The kills are real: a child process (``python -c`` or pytest) is stopped with SIGKILL at the
dangerous moment, which a test-only wrapper in the child makes last (it writes half the
file, drops a marker file and waits); nothing in the library knows about these tests.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_padbias import zoo

TINY = dict(n_train=52, epochs=1, width=2, batch_size=26)
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="error")


def wait_for(marker: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until ``marker`` exists; fail with the child's output if it ends first."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the child ended (rc {proc.returncode}) before {marker.name}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{marker.name} did not appear within {timeout} s")
        time.sleep(0.02)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)  # reaped: its pid is gone, as after a real crash
    assert proc.returncode == -signal.SIGKILL


def lock_is_free(lock: Path) -> bool:
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return True


# --------------------------------------------------------------------------- zoo
#: Train the tiny model of ``argv[1]`` (cache dir) and ``argv[3]`` (seed); with
#: ``argv[2] == "train"`` stop after the first batch, with ``"save"`` after half the
#: safetensors file is written, touch ``argv[4]`` and wait to be killed. With ``"wait"``,
#: wait for the file ``argv[5]``, touch ``argv[4]`` and ask for the model.
ZOO_CHILD = """
import os, sys, time, types
from pathlib import Path
from pytest_padbias import zoo

cache, moment, seed, marker = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])

def stop():
    marker.write_text(moment)
    time.sleep(300)
    raise SystemExit("not killed")

class HalfThenStop:
    def __init__(self, f): self.f = f
    def __enter__(self): return self
    def __exit__(self, *exc): return self.f.__exit__(*exc)
    def __getattr__(self, name): return getattr(self.f, name)
    def write(self, data):
        self.f.write(data[: len(data) // 2]); self.f.flush(); stop()

def progress(done, total):
    if moment == "train":
        stop()

if moment == "wait":
    while not Path(sys.argv[5]).exists():
        time.sleep(0.01)
    marker.write_text(moment)
if moment == "save":
    real_fdopen = os.fdopen
    zoo.os = types.SimpleNamespace(**{**vars(os), "fdopen": lambda *a, **k: HalfThenStop(real_fdopen(*a, **k))})
m = zoo.trained_model("letters", 28, "zeros", seed, cache_dir=cache, progress=progress, **%r)
print(m.zoo_info["origin"])
""" % (TINY,)


def zoo_child(cache, moment, seed, marker, after=""):
    return subprocess.Popen([sys.executable, "-c", ZOO_CHILD, str(cache), moment, str(seed), str(marker), str(after)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def test_killed_during_training_leaves_no_cache_entry_and_the_next_run_trains(tmp_path):
    cache = tmp_path / "zoo"
    child = zoo_child(cache, "train", 5, tmp_path / "training")
    wait_for(tmp_path / "training", child)
    (lock,) = cache.glob("*.lock")
    assert not lock_is_free(lock)  # held by the child while it trains
    kill(child)
    assert lock_is_free(lock), "the killed process' flock outlived it"
    assert sorted(p.name for p in cache.iterdir()) == [lock.name]  # no weights file, no temporary file
    m = zoo.trained_model("letters", 28, "zeros", 5, cache_dir=cache, **TINY)  # the stale lock file does not block
    assert m.zoo_info["origin"] == "trained"
    path = Path(m.zoo_info["path"])
    assert zoo.load_verified(path, m.zoo_info["config"]) is not None
    assert sorted(p.name for p in cache.iterdir()) == sorted([lock.name, path.name])


def test_killed_while_saving_leaves_no_cache_entry_and_the_waiting_process_trains(tmp_path):
    cache = tmp_path / "zoo"
    writer = zoo_child(cache, "save", 6, tmp_path / "saving")
    # A second run wanting the same model: it asks once the writer holds the lock.
    waiter = zoo_child(cache, "wait", 6, tmp_path / "waiting", after=tmp_path / "saving")
    wait_for(tmp_path / "saving", writer)
    (partial,) = cache.glob("*.tmp")
    assert partial.stat().st_size > 0 and zoo.load_verified(partial) is None  # really half a file
    assert not list(cache.glob("*.safetensors"))
    wait_for(tmp_path / "waiting", waiter)
    time.sleep(0.5)
    assert waiter.poll() is None  # blocked on the lock the writer holds
    kill(writer)
    out, err = waiter.communicate(timeout=180)
    assert waiter.returncode == 0, err
    assert out.split() == ["trained"]  # it found no whole file, trained, and saved its own
    (weights,) = cache.glob("*.safetensors")
    assert zoo.load_verified(weights) is not None
    assert not list(cache.glob("*.tmp")), "the killed writer's temporary file was not cleaned up"
    again = zoo.trained_model("letters", 28, "zeros", 6, cache_dir=cache, **TINY)
    assert again.zoo_info["origin"] == "cached"


PARALLEL_TESTS = """
import json, os, time
from pathlib import Path
from pytest_padbias import zoo

SYNC = Path(os.environ["PADBIAS_TEST_SYNC"])

def need_the_model(name):
    me = os.environ.get("PYTEST_XDIST_WORKER", "main")
    (SYNC / f"ready-{name}").write_text(me)
    deadline = time.monotonic() + 120
    while len(list(SYNC.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # both workers ask for the model at the same moment
    m = zoo.trained_model("letters", 29, "zeros", 11, **%r)
    (SYNC / f"origin-{name}.json").write_text(json.dumps([me, m.zoo_info["origin"], m.zoo_info["path"]]))

def test_first_needs_the_model():
    need_the_model("first")

def test_second_needs_the_model():
    need_the_model("second")
""" % (TINY,)


def test_two_xdist_workers_needing_the_same_model_train_it_once(pytester, monkeypatch, tmp_path):
    pytest.importorskip("xdist")
    cache, sync = tmp_path / "zoo", tmp_path / "sync"
    sync.mkdir()
    monkeypatch.setenv("PADBIAS_ZOO_DIR", str(cache))
    monkeypatch.setenv("PADBIAS_TEST_SYNC", str(sync))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    pytester.makepyfile(test_inner_zoo_parallel=PARALLEL_TESTS)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    runs = [json.loads((sync / f"origin-{n}.json").read_text()) for n in ("first", "second")]
    assert sorted(r[0] for r in runs) == ["gw0", "gw1"]
    assert sorted(r[1] for r in runs) == ["cached", "trained"]  # trained once, by one worker
    (weights,) = cache.glob("*.safetensors")
    assert {r[2] for r in runs} == {str(weights)} and zoo.load_verified(weights) is not None
    assert not list(cache.glob("*.tmp"))


# --------------------------------------------------------------------------- reports
from test_report import GATED, TINY as TINY_MODELS  # noqa: E402  the same tiny project as the report tests

#: Child-process source: a file wrapper whose first write writes half the text, drops
#: the marker file ``MARKER_PATH`` (an expression in the child) and waits to be killed.
HALF_THEN_STOP = """
class HalfThenStop:
    def __init__(self, f): self.f = f
    def __enter__(self): return self
    def __exit__(self, *exc): return self.f.__exit__(*exc)
    def __getattr__(self, name): return getattr(self.f, name)
    def write(self, text):
        import pathlib, time
        self.f.write(text[: len(text) // 2]); self.f.flush()
        pathlib.Path(MARKER_PATH).write_text("written")
        time.sleep(300)
        raise SystemExit("not killed")
"""


#: Test-only: the first write of pytest-html's page (``Path.open("w")``) writes half the
#: text, touches $PADBIAS_KILL_MARKER and waits to be killed.
KILL_CONFTEST = """
import os, pathlib, time

MARKER = os.environ.get("PADBIAS_KILL_MARKER")

""" + HALF_THEN_STOP.replace("MARKER_PATH", "MARKER") + """

if MARKER:
    real_open = pathlib.Path.open
    def open_(self, mode="r", *args, **kwargs):
        f = real_open(self, mode, *args, **kwargs)
        return HalfThenStop(f) if "w" in mode and self.suffix == ".html" else f
    pathlib.Path.open = open_
"""
ARGS = ["--padbias-report-dir=reports", "--padbias-images=2", "--padbias-input-size=33", "-p", "no:cacheprovider"]


def visible(folder: Path) -> dict[str, bytes]:
    """Every file a reader of the report folder sees (hidden temporaries excluded)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def assert_complete(files: dict[str, bytes], model: str) -> None:
    pages = [n for n in files if n.endswith(".html")]
    docs = [n for n in files if n.endswith(".json")]
    assert pages and docs
    for n in docs:
        doc = json.loads(files[n])
        if doc["model"] == model:
            assert [t["nodeid"] for t in doc["tests"]] == ["test_inner_gated.py::test_gated"]
    for n in pages:
        assert files[n].rstrip().endswith(b"</html>"), f"{n} is truncated"
        for ref in re.findall(rb'assets/[^"&<\s]+', files[n]):
            assert ref.decode() in files, f"{n} refers to the missing {ref.decode()}"


#: Write ``argv[2]`` to ``argv[1]`` with the plugin's write_atomic, stopping (marker
#: ``argv[3]``) after half the text reached the temporary file.
JSON_CHILD = """
import os, sys, time, types
from pathlib import Path
from pytest_padbias import report

""" + HALF_THEN_STOP.replace("MARKER_PATH", "sys.argv[3]") + """

real_fdopen = os.fdopen
report.os = types.SimpleNamespace(**{**vars(os), "fdopen": lambda *a, **k: HalfThenStop(real_fdopen(*a, **k))})
report.write_atomic(sys.argv[1], sys.argv[2])
"""


def test_a_run_killed_while_writing_its_json_leaves_the_previous_file(tmp_path):
    from pytest_padbias.report import dumps, write_atomic

    path = tmp_path / "reports" / "padbias-m-33x33.json"
    old, new = dumps({"model": "m", "tests": []}), dumps({"model": "m", "tests": [{"nodeid": "t" * 5000}]})
    write_atomic(path, old)
    child = subprocess.Popen([sys.executable, "-c", JSON_CHILD, str(path), new, str(tmp_path / "writing")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    wait_for(tmp_path / "writing", child)
    (partial,) = path.parent.glob(".*")
    assert 0 < partial.stat().st_size < len(new)  # killed with half the new text written
    kill(child)
    assert path.read_text() == old and json.loads(old)
    write_atomic(path, new)  # the next run
    assert path.read_text() == new
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "the killed run's temporary file is left"


@pytest.mark.parametrize("self_contained, killed_model", [
    (False, "tiny.py:other"),  # another model's first run, with the assets/ folder
    (True, "tiny.py:uneven"),  # the same model again, page self-contained
])
def test_a_run_killed_while_pytest_html_writes_leaves_the_previous_report(pytester, self_contained, killed_model):
    pytester.makepyfile(tiny=TINY_MODELS, test_inner_gated=GATED, conftest=KILL_CONFTEST)
    mode = ["--self-contained-html"] if self_contained else []
    pytester.runpytest("--padbias-model=tiny.py:uneven", *ARGS, *mode).assert_outcomes(passed=1)
    reports = pytester.path / "reports"
    before = visible(reports)
    assert_complete(before, "tiny.py:uneven")
    assert any(n.startswith("assets/") for n in before) != self_contained

    marker = pytester.path / "writing"
    child = subprocess.Popen([sys.executable, "-m", "pytest", f"--padbias-model={killed_model}", *ARGS, *mode],
                             cwd=pytester.path, env=dict(ENV, PADBIAS_KILL_MARKER=str(marker)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(marker, child)
    (staging,) = reports.glob(".*.partial")
    assert list(staging.glob("*.html")), "pytest-html did not write into the staging folder"
    kill(child)

    after = visible(reports)
    for name, data in after.items():
        if name in before and data != before[name]:
            # Only the killed model's own JSON may have been replaced (JSON goes first), by a whole file.
            assert name.endswith(".json") and json.loads(data)["model"] == killed_model, name
    new = sorted(set(after) - set(before))
    if killed_model == "tiny.py:other":
        assert new == ["padbias-tiny.py_other-33x33.json"]  # whole, and no page yet
        assert json.loads(after[new[0]])["model"] == "tiny.py:other"
    else:
        assert new == []

    # The next run recovers by itself: same names, whole files, the killed run's leftovers gone.
    pytester.runpytest(f"--padbias-model={killed_model}", *ARGS, *mode).assert_outcomes(passed=1)
    final = visible(reports)
    assert_complete(final, killed_model)
    assert not list(reports.glob(".*")), "a killed run's temporary folder was not cleaned up"
    if killed_model == "tiny.py:other":
        assert {n: final[n] for n in before} == before  # the first model's report, figures included, is untouched
        assert sorted(n for n in set(final) - set(before) if "/" not in n) == [
            "padbias-tiny.py_other-33x33.html", "padbias-tiny.py_other-33x33.json"]
    else:
        assert set(final) == set(before)
