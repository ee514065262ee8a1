"""Hypothesis fuzzing of the parsers that read user files: split files, class-name files and result JSONs.

Whatever the bytes, a parser either returns a valid value or raises its documented error (DataError /
ResultError) naming the file; it never raises anything else, and a split file never yields a path outside
the image folder.
"""

from __future__ import annotations

import json
import posixpath
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlprompt.data.base import DataError
from vlprompt.data.folder import read_classnames_file, read_split_json
from vlprompt.leaderboards.select import load_results_tolerant, select_results
from vlprompt.runs.results import SCHEMA, ResultError, load_result

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_json_scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | st.text(max_size=12)
_json = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=20)
_paths = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["../x.jpg", "a/../../x.jpg", "/etc/passwd", "C:\\x.jpg", "a/./b.jpg", "..", ".", "a\\..\\..\\b",
                     "ok/1.jpg", "", "  ", "a/b/../c.jpg", "\\\\server\\share\\x.jpg"]),
)
_entry = st.one_of(st.tuples(_paths, st.integers(-2, 4), st.text(max_size=6)).map(list), _json)
_split = st.one_of(
    st.fixed_dictionaries({s: st.lists(_entry, max_size=5) for s in ("train", "val", "test")}),
    _json,
)


def _write(data: bytes, suffix: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix="vlp-fuzz-"))
    p = d / f"file{suffix}"
    p.write_bytes(data)
    return p


@SETTINGS
@given(st.one_of(_split.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200)))
def test_split_file_parser(data: bytes) -> None:
    path = _write(data, ".json")
    try:
        items, classnames = read_split_json(path)
    except DataError as exc:
        assert str(path) in str(exc)
        return
    assert classnames and all(isinstance(c, str) for c in classnames)
    for rows in items.values():
        for rel, label in rows:
            assert 0 <= label < len(classnames)
            norm = posixpath.normpath(rel)
            assert not norm.startswith(("/", "../")) and norm != ".." and ":" not in rel[:2]  # never outside the root


@SETTINGS
@given(st.one_of(
    st.lists(st.tuples(st.text(max_size=8), st.text(max_size=10)), max_size=6).map(
        lambda rows: "\n".join(f"{a} {b}" for a, b in rows).encode()),
    st.dictionaries(st.text(max_size=6), _json_scalars, max_size=4).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=120),
))
def test_classnames_file_parser(data: bytes) -> None:
    path = _write(data, ".txt")
    try:
        mapping = read_classnames_file(path)
    except DataError as exc:
        assert str(path) in str(exc)
        return
    assert mapping and all(isinstance(k, str) and isinstance(v, str) and v for k, v in mapping.items())


def _valid_result() -> dict:
    return {
        "schema": SCHEMA, "protocol": "base2new", "benchmark": "toy", "dataset": "d", "learner": "coop",
        "learner_config": {}, "backbone": {"model": "m"}, "data": {}, "shots": 16, "seeds": [1],
        "per_seed": [{"seed": 1, "metrics": {"base": 1.0, "new": 2.0}}], "summary": {"base": 1.0, "n_seeds": 1},
        "config": {}, "command": "vlprompt fit", "versions": {}, "device": "cpu", "wall_seconds": 1.0,
        "created": "2026-01-01T00:00:00+00:00", "git": {},
    }


@st.composite
def _mutated_result(draw) -> bytes:
    r = _valid_result()
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(sorted(r) + ["extra"]))
        if draw(st.booleans()):
            r.pop(key, None)
        else:
            r[key] = draw(_json)
    text = json.dumps(r)
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    return text.encode()


@SETTINGS
@given(st.one_of(_mutated_result(), st.binary(max_size=120)))
def test_result_json_parser_and_leaderboard_selection(data: bytes) -> None:
    path = _write(data, ".json")
    try:
        load_result(path)
    except ResultError as exc:
        assert str(path) in str(exc)
    results, skipped = load_results_tolerant(path.parent)
    assert len(results) + len(skipped) == 1
    rows, left_out = select_results(results)  # never raises on anything load_results_tolerant let through
    assert len(rows) + len(left_out) == len(results)
