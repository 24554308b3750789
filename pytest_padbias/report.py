"""JSON for CI and pytest-html extras for reviewers. No torch here."""
from __future__ import annotations

import base64
import contextlib
import html
import json
import os
import tempfile
from pathlib import Path

PROPERTY = "padbias_checks"
RUN_PROPERTY = "padbias_run"
TARGET_PROPERTY = "padbias_target"  # the target id of a test run once per model (several models)


def html_extras(results) -> list[dict]:
    """pytest-html 4 extras for a list of CheckResults: a summary line and each figure."""
    try:
        from pytest_html import extras
    except ImportError:  # the plugin works without pytest-html; extras are then ignored
        return []
    out = []
    for r in results:
        verdict = "PASS" if r.passed else "FAIL"
        limit = "" if r.limit is None else f" (limit {r.limit:g})"
        out.append(extras.html(
            f'<div class="padbias-check" data-check="{html.escape(r.check)}" data-passed="{str(r.passed).lower()}">'
            f"<b>{html.escape(r.check)}</b> {verdict}: {html.escape(r.summary)}{html.escape(limit)}</div>"
        ))
        for fig in r.figures:
            out.append(extras.png(base64.b64encode(fig.png).decode("ascii"), name=fig.title))
    return out


def outcome_of(reports: list) -> str:
    """One outcome for a test from its setup/call/teardown reports."""
    outcomes = [(r.when, r.outcome) for r in reports]
    if any(o == "failed" and w != "call" for w, o in outcomes):
        return "error"
    if any(o == "failed" for _w, o in outcomes):
        return "failed"
    # An expected failure (a paper claim known not to hold here) is neither a pass nor a skip.
    if any(w == "call" and hasattr(r, "wasxfail") for r, (w, _o) in zip(reports, outcomes)):
        return "xfailed" if any(o == "skipped" for w, o in outcomes if w == "call") else "xpassed"
    if any(o == "skipped" for _w, o in outcomes):
        return "skipped"
    return "passed"


def reason_of(reports: list) -> str | None:
    """Why a test did not pass, in one line: the failure's message (setup, call or
    teardown), else the xfail reason, else the skip reason; None when it passed."""
    for r in reports:
        if r.outcome == "failed":
            crash = getattr(r.longrepr, "reprcrash", None)
            return _first_line(crash.message if crash is not None else r.longrepr).removeprefix("Failed: ")
    for r in reports:
        if r.when == "call" and hasattr(r, "wasxfail") and r.outcome == "skipped":
            return _first_line(r.wasxfail) or "expected to fail"
    for r in reports:
        if r.outcome == "skipped":
            reason = r.longrepr[2] if isinstance(r.longrepr, tuple) and len(r.longrepr) == 3 else r.longrepr
            return _first_line(reason).removeprefix("Skipped: ")
    return None


def _first_line(text) -> str:
    lines = str(text if text is not None else "").strip().splitlines()
    return lines[0][:300] if lines else ""


def json_entry(nodeid: str, reports: list, checks: list) -> dict:
    """A test's JSON entry; ``reason`` only when it did not pass."""
    entry = {"nodeid": nodeid, "outcome": outcome_of(reports), "checks": checks}
    if entry["outcome"] not in ("passed", "xpassed"):
        reason = reason_of(reports)
        if reason:
            entry["reason"] = reason
    return entry


def build_document(run: dict, entries: dict[str, dict]) -> dict:
    """The JSON document: run metadata first, then one entry per test in run order."""
    keys = ("model", "weights", "weights_sha256", "input_size", "device", "seed", "torch_version", "padbias_version")
    doc = {k: run.get(k) for k in keys}
    doc["tests"] = list(entries.values())
    return doc


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def report_basename(folder, model: str, input_size, weights: str, device: str | None = None, taken=()) -> Path:
    """``folder/padbias-<model>-<HxW>[-<weights>][-<device>]`` without suffix, made unique
    against reports of another model already in the folder (never overwrite someone
    else's) and against the names in ``taken`` (the other models of the same run)."""
    size = "x".join(map(str, input_size)) if input_size else "default-size"
    name = f"padbias-{_slug(model)}-{size}"
    if weights != "default":
        name += f"-{_slug(Path(weights).stem if weights != 'none' else 'random-init')}"
    if device:
        name += f"-{_slug(device)}"
    folder = Path(folder)
    candidate, n = folder / name, 1
    while candidate.name in taken or not _same_model(candidate, model, device):
        n += 1
        candidate = folder / f"{name}-{n}"
    return candidate


def with_suffix(base: Path, suffix: str) -> Path:
    # Not Path.with_suffix: model specs such as "tiny.py:model" put dots in the name.
    return base.parent / (base.name + suffix)


def _same_model(base: Path, model: str, device: str | None = None) -> bool:
    """True when the report files at ``base`` are free or belong to ``model`` (on ``device``)."""
    json_path, html_path = with_suffix(base, ".json"), with_suffix(base, ".html")
    if not json_path.exists():
        return not html_path.exists()
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return doc.get("model") == model and (device is None or doc.get("device") == device)


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write via a temporary file in the same folder and rename, so a killed run never
    leaves half a report behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_leftovers(path.parent, f".{path.name}.", ".tmp")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def stage_html(final: str | os.PathLike) -> Path:
    """Where pytest-html should write the page ``final``: the same file name in a fresh
    hidden folder beside it (``.<name>.<pid>.partial``), so its ``assets/`` land there too.

    pytest-html opens the page with ``open("w")`` and writes it in place, and rewrites its
    ``assets/`` files as tests finish: a run killed meanwhile would leave a truncated page
    (or truncated figures) where the previous good report was. :func:`publish_html` moves
    the finished page into place by one rename. Folders of runs that were killed (their
    process is gone) are removed here.
    """
    import shutil

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = f".{final.name}.", ".partial"
    _remove_dead_leftovers(final.parent, prefix, suffix)
    folder = final.parent / f"{prefix}{os.getpid()}{suffix}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    return folder / final.name


def publish_html(staged: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move a page written at ``staged`` (by :func:`stage_html`) to ``final``: its assets
    file by file, then the page, each by an atomic rename; then drop the staging folder.

    pytest-html names figure files after the test id, so two reports in one folder (two
    models through the same suite) would share and overwrite them: each page's assets go
    to ``assets/<page name>/`` and the page's references are rewritten to match (a file
    whose reference is not found keeps pytest-html's ``assets/<file>``)."""
    import re
    import shutil

    staged, final = Path(staged), Path(final)
    try:
        if staged.is_file():
            assets = staged.parent / "assets"
            files = sorted(assets.iterdir()) if assets.is_dir() else []
            if files:
                page, own = staged.read_text(encoding="utf-8"), f"{final.stem}/"
                pattern = re.compile("assets/(" + "|".join(re.escape(f.name) for f in files) + r")(?=[\"'&<\s])")
                found = set(pattern.findall(page))
                staged.write_text(pattern.sub(lambda m: f"assets/{own}{m.group(1)}", page), encoding="utf-8")
                (final.parent / "assets" / own).mkdir(parents=True, exist_ok=True)
                for f in files:
                    os.replace(f, final.parent / "assets" / (own if f.name in found else "") / f.name)
            os.replace(staged, final)
    finally:
        shutil.rmtree(staged.parent, ignore_errors=True)


def discard_html(staged: str | os.PathLike) -> None:
    """Drop a staging folder without publishing (the page may be incomplete)."""
    import shutil

    shutil.rmtree(Path(staged).parent, ignore_errors=True)


def _remove_dead_leftovers(folder: Path, prefix: str, suffix: str) -> None:
    """Remove ``<prefix><pid>[.*]<suffix>`` temporary files and folders whose process is gone
    (a killed run's); a live process' (a concurrent run's) are left alone."""
    import shutil

    for old in folder.iterdir():
        if old.name.startswith(prefix) and old.name.endswith(suffix) and len(old.name) > len(prefix) + len(suffix):
            pid = old.name[len(prefix) : -len(suffix)].split(".")[0]
            if pid.isdigit() and not _alive(int(pid)):
                if old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        old.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def dumps(doc: dict) -> str:
    return json.dumps(doc, indent=2, allow_nan=False, default=_plain) + "\n"


def _plain(obj):
    # numpy/torch scalars and tuples reach us from the analyses: write them as numbers/lists.
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
