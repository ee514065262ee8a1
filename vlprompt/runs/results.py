"""Result JSON files with provenance (schema ``vlprompt.result/1``).

One file per experiment (all seeds): what was run (protocol, benchmark, dataset, learner and its config,
backbone weights with checkpoint sha256, data identity, shots, seeds), what came out (per-seed metrics
and a :func:`~vlprompt.metrics.summarize_seeds` summary) and how (resolved config, command line,
package versions, device, git state, wall time, creation time). Leaderboards are built only from these.
"""

from __future__ import annotations

import csv
import datetime as _dt
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import resource
import secrets
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

import vlprompt
from vlprompt.data.atomic import atomic_path, atomic_write_text
from vlprompt.metrics import harmonic_mean, summarize_seeds

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

SCHEMA = "vlprompt.result/1"

REQUIRED_KEYS: tuple[str, ...] = (
    "schema", "protocol", "benchmark", "dataset", "learner", "learner_config", "backbone", "data", "shots",
    "seeds", "per_seed", "summary", "config", "command", "versions", "device", "wall_seconds", "created", "git",
)

_PACKAGES = {  # key in "versions" -> distribution name
    "vlprompt": "vlprompt",
    "torch": "torch",
    "torchvision": "torchvision",
    "open_clip": "open_clip_torch",
    "lightning": "lightning",
    "timm": "timm",
    "jsonargparse": "jsonargparse",
}

__all__ = [
    "SCHEMA", "REQUIRED_KEYS", "ResultError", "collect_versions", "device_string", "git_state", "image_count",
    "make_result", "peak_rss_mib",
    "write_result", "load_result", "load_results", "print_summary", "summary_notes", "METRIC_NOTES", "PACKAGE_SCHEME", "RESULTS_SCHEME",
    "EXTERNAL_SCHEME", "portable_path", "portable_text", "portable_result", "resolve_recorded_path",
    "migrate_results", "find_absolute_paths", "read_leaderboard_csv",
]


class ResultError(ValueError):
    """A result file is missing, unreadable or does not follow the ``vlprompt.result/1`` schema."""


# --------------------------------------------------------------------------- provenance
def collect_versions() -> dict[str, str]:
    """Versions of python and the packages that shape a result; packages that are not installed are skipped."""
    versions = {"python": platform.python_version()}
    for key, dist in _PACKAGES.items():
        try:
            versions[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            if key == "vlprompt":
                versions[key] = str(getattr(vlprompt, "__version__", "unknown"))
    try:
        import torch  # deferred: torch is heavy; reading and writing results does not need it

        if torch.version.cuda:
            versions["cuda"] = str(torch.version.cuda)
    except ImportError:  # pragma: no cover
        pass
    return versions


def device_string(device: "torch.device | str | None" = None) -> str:
    """Human-readable description of the compute device, e.g. ``"cpu (2 threads, x86_64, Linux 6.1)"`` or
    ``"cuda:0 (NVIDIA H100 80GB HBM3, CUDA 12.4)"``. ``None`` picks CUDA when available, else CPU."""
    import torch  # deferred: torch is heavy; reading and writing results does not need it

    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device) == "gpu":
        device = "cuda"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        return str(device)
    if dev.type == "cuda":
        try:
            idx = dev.index if dev.index is not None else torch.cuda.current_device()
            return f"cuda:{idx} ({torch.cuda.get_device_name(idx)}, CUDA {torch.version.cuda})"
        except (RuntimeError, AssertionError, AttributeError):
            return str(dev)
    if dev.type == "cpu":
        proc = platform.processor() or platform.machine() or "unknown cpu"
        return f"cpu ({torch.get_num_threads()} threads, {proc}, {platform.system()} {platform.release()})"
    return f"{dev} ({platform.platform()})"


def image_count(loaders: Any, key: str) -> dict[str, int]:
    """``{key: number of images}`` over the datasets of ``loaders`` (one loader, a list or a dict of them);
    empty when a dataset has no length (the cost columns then show "—")."""
    if loaders is None:
        return {}
    items = loaders.values() if isinstance(loaders, dict) else loaders if isinstance(loaders, (list, tuple)) else [loaders]
    try:
        total = sum(len(loader.dataset) for loader in items)
    except (TypeError, AttributeError):
        return {}
    return {key: int(total)} if total > 0 else {}


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (``resource.getrusage``; ru_maxrss is KiB on Linux, bytes on
    macOS)."""
    peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return round(peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0, 1)


def git_state(path: str | os.PathLike = ".") -> dict[str, Any]:
    """``{"commit": sha | None, "dirty": bool | None}`` of the git work tree containing ``path``.

    Uses ``git rev-parse HEAD`` and ``git status --porcelain``; outside a repository, or without git,
    both values are ``None``.
    """
    state: dict[str, Any] = {"commit": None, "dirty": None}
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10, check=False
        )
        if head.returncode != 0:
            return state
        state["commit"] = head.stdout.strip() or None
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=path, capture_output=True, text=True, timeout=30, check=False
        )
        if status.returncode == 0:
            state["dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return state


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def parse_created(value: str) -> _dt.datetime:
    """Parse a result's ``created`` (ISO-8601) into an aware UTC datetime; naive values are taken as UTC."""
    ts = _dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=_dt.timezone.utc)
    return ts.astimezone(_dt.timezone.utc)


# --------------------------------------------------------------------------- building and writing
def make_result(
    *,
    protocol: str,
    benchmark: str,
    dataset: str,
    learner: str,
    learner_config: Mapping[str, Any],
    backbone: Mapping[str, Any],
    data: Mapping[str, Any],
    shots: int | None,
    seeds: Sequence[int],
    per_seed: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any],
    command: str,
    wall_seconds: float,
    device: "torch.device | str | None" = None,
) -> dict[str, Any]:
    """Assemble a ``vlprompt.result/1`` dict.

    ``per_seed`` items are ``{"seed": int, "metrics": {name: percent}, ...}`` (extra keys such as
    ``wall_seconds`` and ``epochs`` are kept). Fills ``schema``, ``summary`` (:func:`summarize_seeds` over the
    per-seed metrics), ``versions``, ``device``, ``git`` (of the installed vlprompt source tree) and
    ``created`` (ISO-8601 UTC).
    """
    per_seed_list = [dict(p) for p in per_seed]
    for i, p in enumerate(per_seed_list):
        if not isinstance(p.get("metrics"), Mapping):
            raise ResultError(
                f"vlprompt.runs.results.make_result: per_seed[{i}] = {p!r} has no 'metrics' dict; pass "
                "{'seed': 1, 'metrics': {'base': ..., 'new': ...}} per seed."
            )
    return {
        "schema": SCHEMA,
        "protocol": protocol,
        "benchmark": benchmark,
        "dataset": dataset,
        "learner": learner,
        "learner_config": dict(learner_config),
        "backbone": dict(backbone),
        "data": dict(data),
        "shots": shots,
        "seeds": list(seeds),
        "per_seed": per_seed_list,
        "summary": summarize_seeds([p["metrics"] for p in per_seed_list]),
        "config": dict(config),
        "command": command,
        "versions": collect_versions(),
        "device": device_string(device),
        "wall_seconds": float(wall_seconds),
        "created": _utc_now(),
        "git": git_state(Path(vlprompt.__file__).resolve().parent),
    }


def _json_default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and callable(obj.item):  # 0-d tensors, numpy scalars
        try:
            return obj.item()
        except (ValueError, RuntimeError):
            pass
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return obj.to_dict()
    return str(obj)


_UNSAFE = re.compile(r"[^A-Za-z0-9._+=@-]+")


def safe_name(part: Any) -> str:
    """``part`` as a file-name component: runs outside ``[A-Za-z0-9._+=@-]`` become ``_``, edge dots/underscores go."""
    text = _UNSAFE.sub("_", str(part)).strip("._") or "unknown"
    return text


def write_result(result: Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write ``result`` to ``<out_dir>/<protocol>/<benchmark>/<dataset>/<learner>-<YYYYmmdd-HHMMSS>-<6 hex>.json``.

    The timestamp is the result's ``created`` time (now if absent). Directories are created; JSON is
    written with ``indent=2`` and sorted keys. Returns the path written.
    """
    for key in ("protocol", "benchmark", "dataset", "learner"):
        if not result.get(key):
            raise ResultError(
                f"vlprompt.runs.results.write_result: result has no {key!r} (got {result.get(key)!r}); build it "
                "with vlprompt.runs.results.make_result(...)."
            )
    try:
        stamp = parse_created(result["created"]) if result.get("created") else _dt.datetime.now(_dt.timezone.utc)
    except ValueError:
        stamp = _dt.datetime.now(_dt.timezone.utc)
    folder = Path(out_dir) / safe_name(result["protocol"]) / safe_name(result["benchmark"]) / safe_name(result["dataset"])
    folder.mkdir(parents=True, exist_ok=True)
    # shipped assets by package name, files in the results tree relative to it; the user's own paths as they
    # gave them (see portable_path; `vlprompt leaderboard migrate` removes those before results are published)
    payload = portable_result({k: v for k, v in result.items() if k != "_path"}, results_root=out_dir)
    text = json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n"
    while True:
        name = f"{safe_name(result['learner'])}-{stamp:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}.json"
        path = folder / name
        # written whole to a unique temporary file, then linked into place: a crash never leaves a truncated
        # result, and two runs finishing at once never take the same name (link fails if it exists)
        with atomic_path(folder / f"{name}.partial") as tmp:
            tmp.write_text(text, encoding="utf-8")
        try:
            os.link(folder / f"{name}.partial", path)
        except FileExistsError:  # pragma: no cover - 1 in 16M
            os.unlink(folder / f"{name}.partial")
            continue
        except OSError:  # file systems without hard links
            os.replace(folder / f"{name}.partial", path)
            break
        os.unlink(folder / f"{name}.partial")
        break
    log.info("wrote result %s", path)
    return path


# --------------------------------------------------------------------------- portable paths
#: a file shipped inside the vlprompt package: ``vlprompt:backbones/assets/vlprompt-toyclip.safetensors``
PACKAGE_SCHEME = "vlprompt:"
#: a file inside the results tree the result was written to: ``results:<path relative to that tree>``
RESULTS_SCHEME = "results:"
#: a file outside the package, the results tree and the working directory: ``external:<path below its first two
#: folders>`` (``/tmp/runs/coop-1/seed1/prompts.safetensors`` -> ``external:coop-1/seed1/prompts.safetensors``); the
#: machine's folders are not recorded (the sha256 recorded beside it, where there is one, identifies the file)
EXTERNAL_SCHEME = "external:"

# an absolute POSIX path standing alone or inside a command line: starts at "/" after a space, "=", a quote or
# the start of the text (never after a letter, "." or ":" as in "km/h" or "https://"), two components at least
_ABSOLUTE = re.compile(r"(?:^|(?<=[\s='\"(,\[>`]))/[\w.~+@%-]+(?:/[\w.~+@%-]*)+")
_PACKAGE_ROOT = Path(vlprompt.__file__).resolve().parent  # the installed vlprompt package


def _package_relative(path: Path) -> str | None:
    """``path`` relative to the installed package, also for a path inside *another* checkout's ``vlprompt/``
    (results migrated from a developer's work tree) when the same file exists in this package."""
    try:
        return path.resolve().relative_to(_PACKAGE_ROOT).as_posix()
    except (ValueError, OSError):
        pass
    parts = path.parts
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] == "vlprompt" and i + 1 < len(parts):
            rest = Path(*parts[i + 1:])
            if (_PACKAGE_ROOT / rest).exists():
                return rest.as_posix()
    return None


def portable_path(path: str | os.PathLike, *, results_root: str | os.PathLike | None = None,
                  cwd: str | os.PathLike | None = None, publish: bool = False) -> str:
    """The machine-independent form of ``path`` recorded in results.

    A relative path is kept as given (relative to the run's working directory). An absolute path becomes
    ``vlprompt:<rel>`` inside the vlprompt package (a shipped asset, identified with its checksum beside it) and
    ``results:<rel>`` inside ``results_root``; any other absolute path is the user's own (a weights file, a runs
    folder they named) and is kept as they gave it, so that the result still finds it on their machine. With
    ``publish`` (results about to be committed or shared, :func:`migrate_results`), such a path becomes ``<rel>``
    inside ``cwd`` (default: the current directory), else ``external:<path below its first two folders>``.
    """
    text = os.fspath(path)
    if not text.startswith("/"):
        return text
    p = Path(text)
    rel = _package_relative(p)
    if rel is not None:
        return PACKAGE_SCHEME + rel
    roots = [(results_root, RESULTS_SCHEME)]
    if publish:
        roots.append((cwd if cwd is not None else os.getcwd(), ""))
    for root, scheme in roots:
        if root is None:
            continue
        base = Path(root).resolve()
        for candidate in (p, p.resolve()):  # as written, then with symlinks resolved
            if candidate.is_relative_to(base):
                return scheme + candidate.relative_to(base).as_posix()
    if not publish:
        return text
    # below its first two folders (``/tmp/runs/``, ``/home/<user>/``): what the run named, not the machine's layout
    return EXTERNAL_SCHEME + (Path(*p.parts[3:]).as_posix() if len(p.parts) > 3 else (p.name or "root"))


def portable_text(text: str, **roots: Any) -> str:
    """``text`` with every absolute path in it (a whole value or tokens of a command line) made portable with
    :func:`portable_path`; other text is unchanged."""
    if "/" not in text:
        return text
    return _ABSOLUTE.sub(lambda m: portable_path(m.group(0), **roots), text)


def portable_result(result: Any, *, results_root: str | os.PathLike | None = None,
                    cwd: str | os.PathLike | None = None, publish: bool = False) -> Any:
    """A copy of ``result`` (any JSON value) with every string made portable (:func:`portable_text`)."""
    if isinstance(result, os.PathLike):
        result = os.fspath(result)
    if isinstance(result, str):
        return portable_text(result, results_root=results_root, cwd=cwd, publish=publish)
    if isinstance(result, Mapping):
        return {k: portable_result(v, results_root=results_root, cwd=cwd, publish=publish) for k, v in result.items()}
    if isinstance(result, (list, tuple)):
        return [portable_result(v, results_root=results_root, cwd=cwd, publish=publish) for v in result]
    return result


def resolve_recorded_path(value: str, *, results_root: str | os.PathLike | None = None,
                          cwd: str | os.PathLike | None = None) -> Path | None:
    """The local file a recorded (portable) path names, or ``None`` for ``external:`` names (not recorded)."""
    if value.startswith(PACKAGE_SCHEME):
        return _PACKAGE_ROOT / value[len(PACKAGE_SCHEME):]
    if value.startswith(RESULTS_SCHEME):
        return Path(results_root or ".") / value[len(RESULTS_SCHEME):]
    if value.startswith(EXTERNAL_SCHEME):
        return None
    return Path(cwd or ".") / value


def find_absolute_paths(text: str) -> list[str]:
    """Every absolute filesystem path written in ``text`` (the check that committed results and pages carry
    no machine paths)."""
    return [m.group(0) for m in _ABSOLUTE.finditer(text)]


def migrate_results(folder: str | os.PathLike, *, cwd: str | os.PathLike | None = None,
                    check: bool = False) -> list[Path]:
    """Rewrite every result JSON under ``folder`` to the published path form (:func:`portable_path` with
    ``publish``: no absolute path left), in place and atomically; only path strings change (metrics, checksums
    and keys stay). Returns the files that changed (with ``check``: that would change, nothing written). Raises
    :class:`ResultError` naming the first file that is not a valid result, before anything is written."""
    root = Path(folder)
    # every file is read and checked as a result (size, UTF-8, nesting, schema) before any is rewritten: a bad file
    # is a ResultError naming it, with nothing changed
    loaded = [(path, load_result(path)) for path in sorted(root.rglob("*.json")) if path.is_file()]
    changed = []
    for path, old in loaded:
        new = portable_result(old, results_root=root, cwd=cwd, publish=True)
        if new == old:
            continue
        changed.append(path)
        if not check:
            atomic_write_text(path, json.dumps(new, indent=2, sort_keys=True, default=_json_default) + "\n")
    return changed


# --------------------------------------------------------------------------- loading
def validate_result(result: Any, *, source: str = "<result>") -> None:
    """Raise :class:`ResultError` naming ``source`` if ``result`` is not a ``vlprompt.result/1`` dict."""
    if not isinstance(result, dict):
        raise ResultError(f"{source}: expected a JSON object, got {type(result).__name__}; not a vlprompt result.")
    schema = result.get("schema")
    if schema != SCHEMA:
        raise ResultError(
            f"{source}: schema is {schema!r}, expected {SCHEMA!r}. Only files written by vlprompt.runs.results."
            "write_result belong in a results folder; move other JSON files elsewhere."
        )
    for key in REQUIRED_KEYS:
        if key not in result:
            raise ResultError(
                f"{source}: missing required key {key!r} of schema {SCHEMA!r}; the file is incomplete or was "
                "edited by hand. Re-run the experiment to regenerate it."
            )
    if not isinstance(result["per_seed"], list) or not all(
        isinstance(p, dict) and isinstance(p.get("metrics"), dict) for p in result["per_seed"]
    ):
        raise ResultError(
            f"{source}: 'per_seed' must be a list of {{'seed': ..., 'metrics': {{...}}}} objects, got "
            f"{result['per_seed']!r:.200}. Re-run the experiment to regenerate the file."
        )
    if not isinstance(result["summary"], dict):
        raise ResultError(f"{source}: 'summary' must be an object, got {result['summary']!r:.200}.")
    if not isinstance(result["backbone"], dict):
        raise ResultError(f"{source}: 'backbone' must be an object, got {result['backbone']!r:.200}.")
    try:
        parse_created(result["created"])
    except (TypeError, ValueError) as exc:
        raise ResultError(
            f"{source}: 'created' is {result['created']!r}, not an ISO-8601 time such as "
            "'2025-01-31T12:00:00.000+00:00'; re-run the experiment or fix the value."
        ) from exc
    check_result_values(result, source=source)


#: a result file is a few KB; anything above this is refused unread
MAX_RESULT_BYTES = 16 * 1024 * 1024
#: every metric vlprompt records is a percentage: a value outside this range is a corrupt or forged file
METRIC_RANGE = (0.0, 100.0)
#: seeds are numpy seeds: 0 .. 2**32 - 1
SEED_RANGE = (0, 2**32 - 1)
#: how far a recorded summary may be from the one recomputed from per_seed (rounding of per-seed values)
SUMMARY_TOLERANCE = 0.01


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_result_values(result: dict, *, source: str = "<result>") -> None:
    """The value checks of the result schema (issue 23): types of the keys the leaderboards read, finite
    metrics within :data:`METRIC_RANGE`, ``complete`` a boolean, distinct integer seeds within
    :data:`SEED_RANGE`, and a summary equal (within :data:`SUMMARY_TOLERANCE`) to the one recomputed from
    ``per_seed``. Raises :class:`ResultError` naming ``source``, the key and the value."""
    def fail(what: str) -> None:
        raise ResultError(f"{source}: {what}; the file was damaged or edited by hand. Re-run the experiment to "
                          "regenerate it.")

    for key in ("protocol", "benchmark", "dataset", "learner"):
        if not isinstance(result.get(key), str) or not result[key].strip():
            fail(f"{key!r} must be a non-empty string, got {result.get(key)!r:.80}")
    for key in ("complete", "trainable", "resumed"):
        if key in result and result[key] is not None and not isinstance(result[key], bool):
            fail(f"{key!r} must be true or false, got {result[key]!r:.80}")
    for key in ("versions", "learner_config", "config", "data", "artifacts"):
        if result.get(key) is not None and not isinstance(result[key], dict):
            fail(f"{key!r} must be an object, got {type(result[key]).__name__}")
    init_args = (result.get("learner_config") or {}).get("init_args")
    if init_args is not None and not isinstance(init_args, dict):
        fail(f"'learner_config.init_args' must be an object, got {type(init_args).__name__}")
    per_seed = result["per_seed"]
    if not per_seed:
        fail("'per_seed' is empty")
    seeds = []
    for i, row in enumerate(per_seed):
        seed = row.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
            fail(f"per_seed[{i}].seed is {seed!r:.40}, expected an integer in {SEED_RANGE[0]}..{SEED_RANGE[1]}")
        seeds.append(seed)
        for name, value in row["metrics"].items():
            if not _is_number(value) or not math.isfinite(value) or not METRIC_RANGE[0] <= value <= METRIC_RANGE[1]:
                fail(f"per_seed[{i}].metrics.{name} is {value!r:.40}, expected a finite percentage in "
                     f"{METRIC_RANGE[0]:g}..{METRIC_RANGE[1]:g}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        fail(f"per_seed repeats seed(s) {repeated}: one seed copied is not several runs")
    summary = result["summary"]
    for name, value in summary.items():
        if not _is_number(value) or not math.isfinite(value):
            fail(f"summary.{name} is {value!r:.40}, expected a finite number")
    if summary.get("n_seeds", len(per_seed)) != len(per_seed):
        fail(f"summary.n_seeds is {summary.get('n_seeds')!r} but per_seed has {len(per_seed)} seed(s)")
    try:
        recomputed = summarize_seeds([row["metrics"] for row in per_seed])
    except ValueError as exc:
        fail(f"per_seed cannot be summarised ({exc})")
    for name, value in summary.items():
        if name in recomputed and abs(float(value) - recomputed[name]) > SUMMARY_TOLERANCE:
            fail(f"summary.{name} is {value!r:.40} but per_seed gives {recomputed[name]:.4f}")


def load_result(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate one result file; raises :class:`ResultError` naming the file and the problem."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_RESULT_BYTES:
            raise ResultError(f"{p}: {size} bytes, larger than any result file ({MAX_RESULT_BYTES} bytes at most); "
                              "it is not a vlprompt result. Move it out of the results folder.")
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ResultError(f"{p}: cannot read result file ({exc.strerror or exc}); check the path.") from exc
    except UnicodeDecodeError as exc:
        raise ResultError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start}); the file is corrupt or not a "
                          "result. Delete it and re-run the experiment.") from exc
    try:
        result = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultError(
            f"{p}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); the file is "
            "truncated or corrupt. Delete it and re-run the experiment."
        ) from exc
    except RecursionError as exc:
        raise ResultError(f"{p}: JSON nested too deeply to be a result; the file is corrupt or hostile. Delete it."
                          ) from exc
    validate_result(result, source=str(p))
    return result


def load_results(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """Load and validate every ``*.json`` under ``folder`` (recursive, sorted by path).

    Each dict gets ``"_path"`` (the file's path as a string).
    """
    root = Path(folder)
    if not root.is_dir():
        raise ResultError(
            f"results folder {str(root)!r} does not exist or is not a directory; pass the folder that "
            "`vlprompt fit` wrote results to (its --out / results_dir)."
        )
    results = []
    for path in sorted(root.rglob("*.json")):
        if not path.is_file():
            continue
        result = load_result(path)
        result["_path"] = str(path)
        results.append(result)
    return results


# --------------------------------------------------------------------------- console
_HEADERS = {"base": "base", "new": "new", "hm": "HM"}


def metric_keys(result: Mapping[str, Any]) -> list[str]:
    """Metric names of a result: ``base``, ``new``, ``hm`` first (if present), then others in first-seen order."""
    seen: list[str] = []
    for p in result.get("per_seed", []):
        for k in p.get("metrics", {}):
            if k not in seen:
                seen.append(k)
    if not seen:  # fall back on the summary's mean keys
        summary = result.get("summary", {})
        seen = [k for k in summary if not k.endswith("_std") and k not in {"n_seeds", "hm_seed_mean"}]
    if "base" in seen and "new" in seen and "hm" not in seen:
        seen.append("hm")
    front = [k for k in ("base", "new", "hm") if k in seen]
    return front + [k for k in seen if k not in front]


def _fmt(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.2f}"
    return "-" if value is None else str(value)


def format_mean_std(summary: Mapping[str, Any], key: str, *, missing: str = "-") -> str:
    """``"mean ± std"`` of a summary metric (2 decimals); the bare mean for a single seed; ``missing``
    when the metric is absent or not a number."""
    mean = summary.get(key)
    if isinstance(mean, bool) or not isinstance(mean, (int, float)):
        return missing
    std = summary.get(f"{key}_std")
    n = summary.get("n_seeds")
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not isinstance(n, int) or n < 2:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f}"


def print_summary(result: Mapping[str, Any], console: "Console | None" = None) -> None:
    """Print a rich table of a result: one row per seed, then a bold ``mean`` row (``mean ± std``).

    For base-to-new results the mean row's HM is the harmonic mean of the mean base and new accuracies,
    and its ± is the std of per-seed HMs. Works for any metric keys (e.g. only ``accuracy``).
    """
    console = console or Console(soft_wrap=not sys.stdout.isatty())
    keys = metric_keys(result)
    backbone = result.get("backbone") or {}
    shots = "" if result.get("shots") is None else f", {result.get('shots')} shots"
    title = (f"{result.get('dataset', '?')} / {result.get('learner', '?')} / {backbone.get('model', '?')}"
             f" ({result.get('protocol', '?')}{shots})")
    table = Table(title=title, min_width=len(title))
    table.add_column("seed", justify="right")
    for k in keys:
        table.add_column(_HEADERS.get(k, k), justify="right")
    for p in result.get("per_seed", []):
        metrics = dict(p.get("metrics", {}))
        if "hm" in keys and "hm" not in metrics and "base" in metrics and "new" in metrics:
            metrics["hm"] = harmonic_mean(metrics["base"], metrics["new"])
        table.add_row(str(p.get("seed", "?")), *(_fmt(metrics.get(k)) for k in keys))
    summary = dict(result.get("summary") or {})
    summary.setdefault("n_seeds", len(result.get("per_seed", [])))
    cells = [format_mean_std(summary, k) for k in keys]
    table.add_section()
    table.add_row("mean", *cells, style="bold")
    console.print(table)
    for line in summary_notes(result, keys):
        console.print(line, markup=False, highlight=False)


#: what each metric of a summary means, in one line (printed under the table)
METRIC_NOTES: dict[str, str] = {
    "base": "base: top-1 accuracy on the base (training) classes, %",
    "new": "new: top-1 accuracy on the new (unseen) classes, %",
    "hm": "HM: harmonic mean of base and new, % (mean row: HM of the mean base and new; its std: over the seeds' HMs)",
    "accuracy": "accuracy: top-1 accuracy, %",
    "dice": "dice: Dice of each test image, averaged over the images, % (an empty mask predicted empty counts 100)",
    "iou": "iou: IoU of all test pixels pooled (dataset-level, not per image), %",
    "nsd": "nsd: normalised surface Dice of each test image (boundary within the tolerance, default 2 px), averaged, %",
    "hd95": "hd95: 95th-percentile Hausdorff distance of each test image, averaged, pixels (lower is better)",
}


def summary_notes(result: Mapping[str, Any], keys: Sequence[str] | None = None) -> list[str]:
    """The lines printed under a summary table: the unit and meaning of each metric shown, and whether the
    numbers are a mean over seeds or one seed-independent evaluation."""
    keys = metric_keys(result) if keys is None else keys
    lines = [METRIC_NOTES[k] for k in keys if k in METRIC_NOTES]
    if any(str(k).endswith("_ece") for k in keys):
        lines.append("<set>_ece: expected calibration error of that evaluation set, 15 equal-width confidence bins, %")
    if any(str(k).startswith(("dice_text_", "iou_text_")) for k in keys):
        lines.append("<metric>_text_<control>: the same test images with the prompts replaced (empty: no text; "
                     "shuffled: another image's prompt); close to the real prompts' means the text is barely used")
    val = [float(p["selected_val_dice"]) for p in result.get("per_seed") or []
           if isinstance(p, Mapping) and isinstance(p.get("selected_val_dice"), (int, float))]
    if val:  # segmentation: the validation Dice that chose the kept epoch, beside the test Dice of the table
        line = f"validation Dice of the kept epoch: {sum(val) / len(val):.2f} (mean over seeds), on the validation split"
        data = result.get("data") if isinstance(result.get("data"), Mapping) else {}
        style, test_style = data.get("style"), data.get("test_style")
        if style and test_style and style != test_style:
            line += (f", rendered {style!r}; the test split is rendered {test_style!r}, a domain training never saw "
                     "(docs/segmentation.md: the validation-test gap)")
        lines.append(line)
    if result.get("seed_independent"):
        lines.append("nothing to train: evaluated once; the result holds for every seed (std 0 by construction)")
    elif len(result.get("per_seed") or []) > 1:
        lines.append(f"mean row: mean and std over the {len(result['per_seed'])} seeds")
    return lines


def read_leaderboard_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a built leaderboard's ``results.csv`` (``vlprompt leaderboard build``), as strings;
    ``FileNotFoundError`` naming the file and the command that builds it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; build it with `vlprompt leaderboard build "
                                f"leaderboards/results --out leaderboards`")
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
