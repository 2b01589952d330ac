"""records.py: reading tolerates any line; appends keep whole lines even in damaged files."""
from __future__ import annotations

import warnings

import pytest

import json

from bench.records import append_record, config_key, done_keys, latest_by_key, read_records, record_config

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


def test_read_records_skips_every_bad_line_with_one_warning_for_the_file(tmp_path):
    """One warning per file, however many bad lines: it counts them and names the first few
    by line number (a file of bad lines once printed a warning line for each)."""
    path = tmp_path / "r.jsonl"
    good = [b'{"key": "a", "status": "failed"}', b'{"key": "a", "status": "ok"}']
    _write(path, [good[0], *BAD_LINES, b"", b"   ", good[1]])
    with pytest.warns(UserWarning) as caught:
        recs = read_records(path)
    assert [r["status"] for r in recs] == ["failed", "ok"]
    [msg] = [str(w.message) for w in caught]
    assert msg.startswith(f"{path}: ignoring {len(BAD_LINES)} bad record line(s): line 2: ")
    assert "; line 3: " in msg and "; line 4: " in msg and "line 5: " not in msg
    assert msg.endswith(f"and {len(BAD_LINES) - 3} more")


def test_twenty_thousand_bad_lines_give_one_short_warning(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"garbage\n" * 20_000 + b'{"key": "a", "status": "ok"}\n')
    with pytest.warns(UserWarning) as caught:
        assert len(read_records(path)) == 1
    assert len(caught) == 1 and len(str(caught[0].message)) < 500


def test_a_warning_prints_once_on_one_line():
    """The CLIs' warnings: ``warning: MESSAGE``, no source line of tnbench's own code, and a
    message given twice in one command (a file read by the resume and by the report) once;
    a recorder of warnings (pytest.warns) still gets each."""
    import warnings

    from bench.errors import one_line_warnings

    before = warnings.formatwarning
    try:
        one_line_warnings()
        texts = [warnings.formatwarning("r.jsonl: ignoring 1 bad\n record line(s)", UserWarning, "bench/x.py", 9)
                 for _ in range(2)]
        with pytest.warns(UserWarning, match="again"):
            warnings.warn("again")
    finally:
        warnings.formatwarning = before
    assert texts == ["warning: r.jsonl: ignoring 1 bad record line(s)\n", ""]


def _signed(**fields) -> dict:
    """A record whose key is the hash of its own config, as the runner writes it."""
    rec = {"network": "fc2", "dataset": "mnist", "method": "svd", "seed": 0, **fields}
    return {**rec, "key": config_key(record_config(rec))}


def _line(rec: dict) -> bytes:
    return json.dumps(rec).encode()


REC_A = _signed(status="ok", acc_after_finetune=97.5)
OK_A, KEY_A = _line(REC_A), REC_A["key"]


def test_forged_or_incomplete_done_records_are_not_trusted(tmp_path):
    """A minimal forged ``{"key": K, "status": "ok"}`` (or one with a NaN accuracy, a skip
    without a reason, or fields that do not hash to its key) no longer marks its job done: it
    runs again, with one warning for them all."""
    path = tmp_path / "r.jsonl"
    skip = _signed(status="skipped", error="budget unreachable")
    fit = _signed(status="ok", seed=1, fit_only=True, fit_rel_error=0.5)
    moved = {**_signed(status="ok", acc_after_finetune=99.0), "key": _signed(seed=2)["key"]}  # another job's key
    edited = {**REC_A, "seed": 5}                                                     # a field changed by hand
    _write(path, [OK_A, b'{"key": "forged", "status": "ok"}', _line(_signed(status="ok", seed=3)),
                  _line(skip), _line(_signed(status="skipped", seed=4)), _line(fit), _line(moved)])
    with pytest.warns(UserWarning, match="4 record\\(s\\) marked done lack the fields a record has or do not hash"):
        assert done_keys(path) == {KEY_A, skip["key"], fit["key"]}
    path.write_bytes(_line(edited) + b"\n")
    with pytest.warns(UserWarning, match="1 record"):
        assert done_keys(path) == set()


def test_done_and_latest_never_raise_on_bad_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    _write(path, [*BAD_LINES, OK_A, b'{"key": "b", "status": "failed"}'])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert done_keys(path) == {KEY_A}
        assert set(latest_by_key(read_records(path))) == {KEY_A, "b"}


def test_latest_by_key_skips_non_records():
    with pytest.warns(UserWarning, match="without a string 'key'"):
        latest = latest_by_key([None, 42, [], {"status": "ok"}, {"key": "a", "status": "ok"}])
    assert list(latest) == ["a"]


def test_an_untrusted_record_never_supersedes_a_trusted_one(tmp_path):
    """A record marked done that this code did not write (here: an ok record of job A copied
    with a NaN accuracy, appended after A's real one) is ignored by the resume, the sweep's
    index and the report alike: A stays done, with its real accuracy, and does not run again."""
    from bench.records import RecordIndex
    from bench.report_frames import records_frame

    path = tmp_path / "r.jsonl"
    nan = {**REC_A, "acc_after_finetune": float("nan")}
    _write(path, [OK_A, _line(nan), b'{"key": "forged", "status": "ok"}'])
    with pytest.warns(UserWarning, match="1 record\\(s\\) marked done after a trusted record .*the trusted one stands"):
        assert done_keys(path) == {KEY_A}
    with pytest.warns(UserWarning, match="1 record\\(s\\) marked done after a trusted record"):
        assert RecordIndex(path).refresh().done() == {KEY_A}
    with pytest.warns(UserWarning, match="1 record\\(s\\) marked done after a trusted record"):
        frame = records_frame(path).set_index("key")
    assert frame.loc[KEY_A, "acc_after_finetune"] == REC_A["acc_after_finetune"]


def test_torn_tail_cut_in_a_file_with_invalid_utf8(tmp_path):
    path = tmp_path / "r.jsonl"
    _write(path, [b'{"key": "a", "status": "ok"}', b"\xff\xfe junk"], tail=b'{"key": "b", "st\xe2\x82')
    append_record(path, {"key": "c", "status": "ok"})
    assert path.read_bytes().endswith(b'\n{"key": "c", "status": "ok"}\n')
    assert b'"b"' not in path.read_bytes()
    with pytest.warns(UserWarning, match="ignoring 1 bad record line.*line 2: "):
        assert [r["key"] for r in read_records(path)] == ["a", "c"]


def test_tail_that_is_a_whole_record_is_kept(tmp_path):
    """read_records counts a last line missing only its newline, so appending must not drop it."""
    path = tmp_path / "r.jsonl"
    path.write_bytes(OK_A)
    assert done_keys(path) == {KEY_A}
    append_record(path, {"key": "c", "status": "ok"})
    assert [r["key"] for r in read_records(path)] == [KEY_A, "c"]


def test_append_round_trip_and_key_stability(tmp_path):
    path = tmp_path / "sub" / "r.jsonl"
    append_record(path, {"key": config_key({"b": 1, "a": (1, 2)}), "status": "ok", "x": 1.5})
    [rec] = read_records(path)
    assert rec["key"] == config_key({"a": [1, 2], "b": 1}) and len(rec["key"]) == 16


# --- appends that cannot lose or half-write a record (issue 23) ------------------------------
def test_every_line_ending_convention_is_read_and_never_cut_away(tmp_path):
    """LF, CRLF and lone-CR files hold the same records; an append keeps them all (a CR-only
    file used to read as one torn line, and the next append truncated every record away)."""
    for sep in (b"\n", b"\r\n", b"\r"):
        path = tmp_path / f"runs{len(sep)}{sep[-1]}.jsonl"
        path.write_bytes(sep.join([b'{"key": "a", "status": "ok"}', b'{"key": "b", "status": "ok"}']) + sep)
        assert [r["key"] for r in read_records(path)] == ["a", "b"]
        append_record(path, {"key": "c", "status": "ok"})
        assert [r["key"] for r in read_records(path)] == ["a", "b", "c"]


def test_torn_tail_after_cr_lines_is_the_only_thing_cut(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_bytes(b'{"key": "a"}\r{"key": "b"}\r{"key": "c", "sta')
    append_record(path, {"key": "d"})
    assert path.read_bytes() == b'{"key": "a"}\r{"key": "b"}\r{"key": "d"}\n'


def test_a_short_then_failed_write_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    """A nearly full disk: the first write lands one byte, the next raises ENOSPC. The append
    raises one line naming the file and the cause, and the file keeps exactly its records."""
    import errno
    import os

    from bench.records import RecordWriteError

    path = tmp_path / "runs.jsonl"
    append_record(path, {"key": "a", "status": "ok"})
    before = path.read_bytes()
    real_write, calls = os.write, []

    def full_disk(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:1]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(RecordWriteError) as err:
        append_record(path, {"key": "b", "status": "ok"})
    monkeypatch.setattr(os, "write", real_write)
    message = str(err.value)
    assert str(path) in message and "No space left on device" in message and "\n" not in message
    assert len(calls) == 2 and path.read_bytes() == before
    assert [r["key"] for r in read_records(path)] == ["a"]


def test_a_short_write_that_goes_on_lands_the_whole_line(tmp_path, monkeypatch):
    import os

    path = tmp_path / "runs.jsonl"
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))  # 3 bytes a call
    append_record(path, {"key": "a", "status": "ok"})
    monkeypatch.setattr(os, "write", real_write)
    assert read_records(path) == [{"key": "a", "status": "ok"}]


def test_records_path_that_is_no_regular_file_is_refused_in_one_line(tmp_path):
    from bench.records import RecordWriteError

    folder = tmp_path / "runs.jsonl"
    folder.mkdir()
    with pytest.raises(RecordWriteError, match="runs.jsonl: Is a directory"):
        append_record(folder, {"key": "a"})
    link = tmp_path / "null.jsonl"
    link.symlink_to("/dev/null")
    with pytest.raises(RecordWriteError, match="null.jsonl: not a regular file"):
        append_record(link, {"key": "a"})


# --- the sweep's index of one records file ------------------------------------------------------
def test_record_index_equals_a_full_read_and_reads_each_byte_once(tmp_path):
    """``RecordIndex`` gives what ``done_keys`` / ``latest_by_key`` give, reading only what
    was appended since; a torn tail is left for later, a shrunk or replaced file read again."""
    from bench.records import RecordIndex

    path = tmp_path / "r.jsonl"
    skip = _signed(status="skipped", seed=1, error="budget unreachable")
    failed = _signed(status="failed", seed=2, error="boom")
    _write(path, [OK_A, _line(failed)])
    index = RecordIndex(path).refresh()
    assert index.done() == done_keys(path) == {KEY_A}
    append_record(path, skip)  # another writer
    append_record(path, {**REC_A, "status": "failed", "error": "rerun"})  # supersedes A
    assert index.is_done(skip["key"]) and not index.is_done(KEY_A)
    assert index.latest == latest_by_key(read_records(path))
    assert index.bytes_read == path.stat().st_size and index.reads == 3
    with open(path, "ab") as f:  # a torn tail: not taken, and not counted as read past
        f.write(b'{"key": "half')
    index.refresh()
    assert index.bytes_read == path.stat().st_size and set(index.latest) == {KEY_A, skip["key"], failed["key"]}
    index.append(_signed(status="ok", seed=3, acc_after_finetune=90.0))  # the append cuts the torn tail
    assert index.latest == latest_by_key(read_records(path)) and len(index.latest) == 4
    path.write_bytes(_line(skip) + b"\n")  # rewritten by hand: read again from the start
    assert index.refresh().latest == {skip["key"]: skip} and index.done() == {skip["key"]}
    path.unlink()
    assert index.refresh().latest == {} and index.done() == set()


def test_record_index_pickles_to_its_path_only(tmp_path):
    import pickle

    from bench.records import RecordIndex

    path = tmp_path / "r.jsonl"
    _write(path, [OK_A])
    index = RecordIndex(path).refresh()
    copy = pickle.loads(pickle.dumps(index))
    assert copy.path == path and copy.latest == {} and copy.refresh().done() == {KEY_A}


def test_mend_cuts_a_torn_tail_keeps_whole_lines_and_creates_nothing(tmp_path):
    from bench.records import mend_records

    path = tmp_path / "runs.jsonl"
    mend_records(path)
    assert not path.exists()
    append_record(path, {"key": "a", "status": "ok"})
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"key": "torn", "sta')  # a writer killed mid-line
    mend_records(path)
    assert path.read_bytes() == whole
    path.write_bytes(whole + b'{"key": "b", "status": "ok"}')  # whole record, line end missing
    mend_records(path)
    assert path.read_bytes() == whole + b'{"key": "b", "status": "ok"}\n'


def test_a_resume_with_nothing_to_run_still_cuts_a_torn_tail(tmp_path, tiny_suite):
    """A sweep killed mid-append after its last job: the resume runs nothing, and its file must
    still end in whole lines (the chaos 'local' mode met one left behind)."""
    from bench.cli import main

    suite = tiny_suite(methods=["dense"])
    assert main(["--suite", str(suite), "--out", str(tmp_path), "--no-progress"]) == 0
    path = tmp_path / suite.stem / "runs.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"key": "torn", "status": "o')
    assert main(["--suite", str(suite), "--out", str(tmp_path), "--no-progress"]) == 0
    assert path.read_bytes() == whole
