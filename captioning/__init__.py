"""OCR backends, captioners and prompt-length rewriting (issue 5: not built yet)."""
