"""A fuzz pass over the metadata and source readers (a seeded mutator: deterministic, a bounded number of examples):
nothing escapes as an exception; every input ends as a kept row or a ledger row, and what is kept is storable
(valid UTF-8, strict JSON)."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.image_io import ProbeLimits
from curation.ingest import IngestConfig, ingest_unit
from curation.sidecars import load_jsonl, parse_json_sidecar, parse_text_sidecar
from curation.sources import ReadLimits, plan_units
from tests.conftest import encode, make_image
from tests.security.hostile import stored_bytes

EXAMPLES = 60
LIMITS = ReadLimits(max_sidecar_bytes=64 << 10, max_file_bytes=1 << 20, max_key_bytes=2 << 20, files_per_unit=8)
SEEDS = [b'{"title": "a", "licence": "CC-BY", "tags": ["x", 1, 2.5, null], "n": {"k": true}}',
         b'{"file_name": "a.jpg", "caption": "caf\xc3\xa9", "score": 0.5}', b"[1, [2, [3]]]", b'"just a string"',
         b'{"x": NaN, "y": -Infinity, "z": 1e999, "big": ' + b"9" * 5000 + b"}", b'{"s": "\\ud800\\udcff"}',
         b'{"a": ' * 70 + b"1" + b"}" * 70, b"\xef\xbb\xbf{\"bom\": 1}", b"\xff\xfe{\x00}\x00"]
TOKENS = [b"{", b"}", b"[", b"]", b'"', b"\\", b"\\u", b"NaN", b"Infinity", b":", b",", b"\x00", b"\xff", b"\xc3",
          b"\n", b"e999", b"-", b"[" * 3000, b'{"file_name": "../../etc/passwd"}', b'"\\udc80"']


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    for _ in range(int(rng.integers(0, 3))):  # 0: the seed itself, so valid inputs reach the deep paths too
        kind = int(rng.integers(0, 4))
        pos = int(rng.integers(0, len(buf) + 1))
        if kind == 0 and buf:  # flip a byte
            buf[min(pos, len(buf) - 1)] = int(rng.integers(0, 256))
        elif kind == 1:  # cut
            buf = buf[: pos]
        elif kind == 2:  # splice a token
            buf[pos:pos] = TOKENS[int(rng.integers(0, len(TOKENS)))]
        else:  # duplicate a slice
            end = int(rng.integers(pos, len(buf) + 1))
            buf[pos:pos] = buf[pos:end]
    return bytes(buf)


def _storable(value) -> None:
    json.dumps(value, allow_nan=False).encode("utf-8")
    json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")


def test_sidecar_parsers_never_fail_and_keep_only_storable_values():
    rng = np.random.default_rng(19)
    for i in range(EXAMPLES * 5):
        raw = mutate(SEEDS[i % len(SEEDS)], rng)
        fields, notes = parse_json_sidecar(raw, LIMITS)
        _storable(fields)
        assert isinstance(notes, list) and all(isinstance(n, str) for n in notes)
        text, notes = parse_text_sidecar(raw, LIMITS)
        _storable(text)


def test_metadata_jsonl_never_stops_planning(tmp_path):
    rng = np.random.default_rng(20)
    (tmp_path / "a.jpg").write_bytes(encode(make_image(seed=1), "JPEG"))
    for i in range(EXAMPLES):
        lines = [mutate(SEEDS[int(rng.integers(0, len(SEEDS)))], rng) for _ in range(int(rng.integers(1, 6)))]
        lines.append(b'{"file_name": "a.jpg", "ok": 1}')
        (tmp_path / "metadata.jsonl").write_bytes(b"\n".join(lines))
        records, problems = load_jsonl(str(tmp_path / "metadata.jsonl"), "metadata.jsonl", LIMITS)
        for rec in records:
            rec.text.encode("utf-8")
            json.loads(rec.text, parse_constant=lambda c: pytest.fail(f"{c} stored"))
        units = plan_units(str(tmp_path), LIMITS)
        assert sum(len(u.files) for u in units) >= 1, i


def _shard(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        for k in range(int(rng.integers(1, 5))):
            members = [(f"{k:03d}.jpg", encode(make_image(24, 24, seed=k), "JPEG")),
                       (f"{k:03d}.json", mutate(SEEDS[k % len(SEEDS)], rng)), (f"{k:03d}.txt", b"cap\xe9")]
            if rng.random() < 0.3:
                members.append((f"../{k}.jpg" if rng.random() < 0.5 else f"/abs{k}.png", b"x"))
            if rng.random() < 0.3:
                members.append((f"w\xe9ird-{k}.png", encode(make_image(20, 20, seed=k + 9), "PNG")))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _ingest_all(source) -> tuple[list, list]:
    rows, decisions = [], []
    config = IngestConfig(read=LIMITS, probe=ProbeLimits(min_side=8))
    for unit in plan_units(str(source), LIMITS):
        result = ingest_unit(unit, "fuzz", config)
        assert result.counts.balanced()
        if unit.kind == "files":
            assert result.counts.total == len(unit.files)
        pa.table({"u": [d.source_uri for d in result.decisions]})
        for row in result.rows.to_pylist():
            json.loads(row["metadata"], parse_constant=lambda c: pytest.fail(f"{c} stored"))
        rows += result.rows.to_pylist()
        decisions += result.decisions
    return rows, decisions


def test_webdataset_shards_never_escape_as_exceptions(tmp_path):
    rng = np.random.default_rng(21)
    for i in range(EXAMPLES // 3):
        data = _shard(rng)
        if i % 3 == 1:
            data = mutate(data, rng)
        elif i % 3 == 2:  # cut anywhere, headers included
            data = data[: int(rng.integers(1, len(data)))]
        (tmp_path / "s.tar").write_bytes(data)
        _ingest_all(tmp_path / "s.tar")


HOSTILE_PATHS = ["imgs/ok.jpg", "../secret.png", "/etc/passwd", "file:///etc/passwd", "file://h/x", "/dev/zero",
                 "/proc/self/environ", "imgs/\x00.jpg", "imgs/" + "a" * 5000, "http://example.org/x.jpg",
                 "imgs/../imgs/ok.jpg", "imgs/missing.jpg", "", "\udcff.jpg", "imgs/./ok.jpg", "//etc/passwd",
                 "imgs/link.png", "s3://bucket/x.jpg", "imgs", "~/x.jpg"]


def test_manifests_with_hostile_rows_read_nothing_outside(tmp_path):
    rng = np.random.default_rng(22)
    drop = tmp_path / "drop"
    (drop / "imgs").mkdir(parents=True)
    (drop / "imgs" / "ok.jpg").write_bytes(encode(make_image(seed=3), "JPEG"))
    secret = encode(make_image(seed=99), "PNG")
    (tmp_path / "secret.png").write_bytes(secret)
    os.symlink(tmp_path / "secret.png", drop / "imgs" / "link.png")
    for _ in range(EXAMPLES // 3):
        n = int(rng.integers(1, 12))
        paths = [HOSTILE_PATHS[int(rng.integers(0, len(HOSTILE_PATHS)))] for _ in range(n)]
        paths = [p.encode("utf-8", "surrogatepass").decode("utf-8", "replace") for p in paths]
        extra = [None if rng.random() < 0.3 else float(rng.choice([np.nan, np.inf, 1.5])) for _ in range(n)]
        pq.write_table(pa.table({"path": paths, "score": extra}), drop / "m.parquet",
                       row_group_size=int(rng.integers(1, 4)))
        rows, decisions = _ingest_all(drop)
        manifest_inputs = [u for u in rows + [d.__dict__ for d in decisions] if "m.parquet#" in u["source_uri"]]
        assert {u["source_uri"].split("#")[1] for u in manifest_inputs} >= {str(i) for i in range(n)}
        assert secret not in stored_bytes(rows, decisions)
