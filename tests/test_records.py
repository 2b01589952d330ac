"""records.py: reading tolerates any line; appends keep whole lines even in damaged files."""
from __future__ import annotations

import warnings

import pytest

from bench.records import append_record, config_key, done_keys, latest_by_key, read_records

BAD_LINES = [
    b"\xff\xfe not utf-8 \x80",
    b'{"key": "x", "status": "ok"\xc3',  # torn inside a multi-byte sequence
    b'{"key": "b", "sta',
    b"null",
    b"42",
    b"[]",
    b'"a string"',
    b'{"status": "ok"}',
    b'{"key": 7, "status": "ok"}',
    b"[" * 100_000,
]


def _write(path, lines: list[bytes], tail: bytes = b"") -> None:
    path.write_bytes(b"\n".join(lines) + b"\n" + tail)


def test_read_records_skips_every_bad_line_with_one_warning_each(tmp_path):
    path = tmp_path / "r.jsonl"
    good = [b'{"key": "a", "status": "failed"}', b'{"key": "a", "status": "ok"}']
    _write(path, [good[0], *BAD_LINES, b"", b"   ", good[1]])
    with pytest.warns(UserWarning) as caught:
        recs = read_records(path)
    assert [r["status"] for r in recs] == ["failed", "ok"]
    messages = [str(w.message) for w in caught]
    assert len(messages) == len(BAD_LINES)
    for lineno, msg in enumerate(messages, 2):
        assert msg.startswith(f"{path}:{lineno}:")


def test_done_and_latest_never_raise_on_bad_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    _write(path, [*BAD_LINES, b'{"key": "a", "status": "ok"}', b'{"key": "b", "status": "failed"}'])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert done_keys(path) == {"a"}
        assert set(latest_by_key(read_records(path))) == {"a", "b"}


def test_latest_by_key_skips_non_records():
    with pytest.warns(UserWarning, match="without a string 'key'"):
        latest = latest_by_key([None, 42, [], {"status": "ok"}, {"key": "a", "status": "ok"}])
    assert list(latest) == ["a"]


def test_torn_tail_cut_in_a_file_with_invalid_utf8(tmp_path):
    path = tmp_path / "r.jsonl"
    _write(path, [b'{"key": "a", "status": "ok"}', b"\xff\xfe junk"], tail=b'{"key": "b", "st\xe2\x82')
    append_record(path, {"key": "c", "status": "ok"})
    assert path.read_bytes().endswith(b'\n{"key": "c", "status": "ok"}\n')
    assert b'"b"' not in path.read_bytes()
    with pytest.warns(UserWarning, match=":2:"):
        assert [r["key"] for r in read_records(path)] == ["a", "c"]


def test_tail_that_is_a_whole_record_is_kept(tmp_path):
    """read_records counts a last line missing only its newline, so appending must not drop it."""
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"key": "a", "status": "ok"}')
    assert done_keys(path) == {"a"}
    append_record(path, {"key": "c", "status": "ok"})
    assert [r["key"] for r in read_records(path)] == ["a", "c"]


def test_append_round_trip_and_key_stability(tmp_path):
    path = tmp_path / "sub" / "r.jsonl"
    append_record(path, {"key": config_key({"b": 1, "a": (1, 2)}), "status": "ok", "x": 1.5})
    [rec] = read_records(path)
    assert rec["key"] == config_key({"a": [1, 2], "b": 1}) and len(rec["key"]) == 16
