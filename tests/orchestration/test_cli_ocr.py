"""`curate ocr PATH...`: one JSON line per image (rendered text, an ocr_dev scene word), errors reported per file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from orchestration import cli

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"  # the font tests/captioning/test_ocr.py renders with
OCR_DEV = Path(__file__).resolve().parents[3] / "shared" / "data" / "ocr_dev"
SCENE_WORD = "scene_words/mmocr/1036169.jpg"  # "03/09/2009", printed digits on a sign
LINE = "Invoice 4821 paid on 03/11/2024."


def _render(path: Path, text: str = LINE) -> Path:
    img = Image.new("RGB", (640, 90), (250, 248, 240))
    ImageDraw.Draw(img).text((24, 25), text, font=ImageFont.truetype(FONT, 30), fill=(10, 10, 10))
    img.save(path)
    return path


def _lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_rendered_line_prints_text_lines_scores_and_boxes(tmp_path, capsys):
    path = _render(tmp_path / "line.png")
    assert cli.main(["ocr", str(path)]) == 0
    (record,) = _lines(capsys.readouterr().out)
    assert record["path"] == str(path) and "error" not in record
    assert record["text"] == LINE
    (line,) = record["lines"]
    assert set(line) == {"text", "score", "box", "language"}
    assert line["text"] == LINE and line["language"] == "latin" and 0.6 <= line["score"] <= 1.0
    xs, ys = [p[0] for p in line["box"]], [p[1] for p in line["box"]]
    assert len(line["box"]) == 4 and 0 <= min(xs) < max(xs) <= 640 and 0 <= min(ys) < max(ys) <= 90


def test_min_score_and_second_pass_flags(tmp_path, capsys):
    path = _render(tmp_path / "line.png")
    assert cli.main(["ocr", str(path), "--min-score", "1.01"]) == 0
    (record,) = _lines(capsys.readouterr().out)
    assert record["text"] == "" and record["lines"] == []
    assert cli.main(["ocr", str(path), "--second-pass"]) == 0
    assert _lines(capsys.readouterr().out)[0]["text"] == LINE


@pytest.mark.skipif(not (OCR_DEV / SCENE_WORD).is_file(), reason="ocr_dev data not present")
def test_scene_word_from_ocr_dev(capsys):
    expected = json.loads((OCR_DEV / "gt.json").read_text())[SCENE_WORD]["text"]
    assert cli.main(["ocr", str(OCR_DEV / SCENE_WORD)]) == 0
    (record,) = _lines(capsys.readouterr().out)
    assert record["text"] == expected


def test_directory_expands_sorted_and_a_corrupt_file_fails_at_the_end(tmp_path, capsys):
    folder = tmp_path / "drop"
    (folder / "sub").mkdir(parents=True)
    _render(folder / "b.png", "Second line here")
    _render(folder / "sub" / "c.png", "Third line here")
    good = (folder / "b.png").read_bytes()
    (folder / "a.jpg").write_bytes(good[: len(good) // 3])  # truncated: corrupt
    (folder / "notes.txt").write_text("not an image")  # not an image extension: skipped
    (folder / ".hidden.png").write_bytes(good)  # hidden: skipped
    missing = tmp_path / "missing.png"
    code = cli.main(["ocr", str(folder), str(missing)])
    captured = capsys.readouterr()
    records = _lines(captured.out)
    assert [Path(r["path"]).name for r in records] == ["a.jpg", "b.png", "c.png", "missing.png"]
    corrupt, second, third, gone = records
    assert corrupt["error"] and corrupt["lines"] == [] and corrupt["text"] == ""
    assert gone["error"] == "unreadable"
    assert (second["text"], third["text"]) == ("Second line here", "Third line here")
    assert "error" not in second and "error" not in third
    assert code == 1 and "2 input(s) failed" in captured.err


def test_unusable_backend_is_a_clear_error(tmp_path, capsys):
    path = _render(tmp_path / "line.png")
    assert cli.main(["ocr", str(path), "--backend", "paddleocr"]) == 2
    assert "paddleocr" in capsys.readouterr().err
