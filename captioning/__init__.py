"""OCR engines (`ocr`), captioners (`captioner`, `grounding`, `visual_facts`, `openai_client`) and prompt-length
variants (`variants`). Imports neither dagster nor ray; the `ocr_annotations`, `captions` and `prompt_variants` assets
run them on Ray actors."""
