"""Where the sample corpus, the demo config and the probe's labelled examples are: the checkout's `examples/`
when running from one, else the installed `atelier_examples` package (pyproject maps it onto `examples/`)."""

from __future__ import annotations

from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1] / "examples"


def examples_dir(strict: bool = True) -> Path:
    """The examples folder (corpus/, probe/, demo.yaml).

    Args:
        strict: False for a default that may never be used (the probe's labelled folders): the checkout's path
            when nothing has the examples, instead of an error at import time.

    Raises:
        FileNotFoundError: (strict) neither a checkout nor the installed package has it.
    """
    if (_CHECKOUT / "corpus").is_dir():
        return _CHECKOUT
    from importlib.resources import files

    try:
        installed = Path(str(files("atelier_examples")))
    except ModuleNotFoundError:
        installed = None
    if installed is not None and (installed / "corpus").is_dir():
        return installed
    if not strict:
        return _CHECKOUT
    raise FileNotFoundError(f"no sample corpus: neither {_CHECKOUT} nor an installed atelier_examples has one")
