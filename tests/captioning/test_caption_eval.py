"""bench/caption_eval.py: its grounding measures on known text, and a run on real weights where a GPU has them.

The `gpu` test needs `ATELIER_CAPTION_MODEL` (a local Qwen-VL directory) and CUDA; it is skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from captioning.captioner import CaptionerConfig, CaptionInput

SPEC = importlib.util.spec_from_file_location("caption_eval", Path(__file__).parents[2] / "bench" / "caption_eval.py")
caption_eval = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(caption_eval)


def test_ocr_grounding_tells_missing_from_altered():
    lines = ["OPEN 24 HOURS", "EXIT", "Café Lumière"]
    raw = 'A diner sign reads "Open 24 Hours", a door says "EXIT" and an awning "Cafe Lumiere".'
    missing, altered = caption_eval.ocr_grounding(raw, lines)
    assert missing == [] and altered == ["OPEN 24 HOURS", "Café Lumière"]
    assert caption_eval.ocr_grounding("A plain door.", ["EXIT"]) == (["EXIT"], [])


def test_invented_entities_are_names_in_no_input():
    inp = CaptionInput("a", caption_eval.text_card("EXIT"), [("EXIT", 0.9)], {"sidecar": {"title": "Door sign"}})
    found = caption_eval.invented_entities('A door at Grand Central Terminal with a sign reading "EXIT".', inp)
    assert found == ["Grand Central Terminal"]


def test_grounded_baseline_on_the_fixed_set():
    report = caption_eval.evaluate(CaptionerConfig(), caption_eval.fixed_set())
    assert report["images"] == report["captioned"] == len(caption_eval.fixed_set())
    assert report["ocr_lines"] == len(caption_eval.CARDS) and report["ocr_missing"] == report["ocr_altered"] == 0
    assert report["invented_entities"] == 0 and report["check_problems"] == {} and report["failures"] == {}
    assert report["images_per_s"] > 0 and 1 <= report["words"]["min"] <= report["words"]["max"]


@pytest.mark.gpu
def test_production_vlm_on_the_fixed_set():
    torch = pytest.importorskip("torch")
    model_dir = os.environ.get("ATELIER_CAPTION_MODEL")
    if not model_dir or not Path(model_dir, "config.json").is_file():
        pytest.skip("set ATELIER_CAPTION_MODEL to a local Qwen-VL directory to evaluate it")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    report = caption_eval.main(["--model-path", model_dir, "--device", "cuda", "--out",
                                str(Path(os.environ.get("OUT", "/tmp")) / "caption_eval.json")])
    assert report["captioned"] >= 0.9 * report["images"]  # a real VLM captions nearly everything
    assert report["ocr_missing"] <= report["ocr_lines"] // 2  # the appended OCR repair is not doing all the work
    assert report["check_problems"].get("field_label", 0) == 0  # labels never survive the clean-up
