"""Where the sample corpus, the demo config and the probe's labelled examples are: the checkout's `examples/`
when running from one, else the installed `atelier_examples` package (pyproject maps it onto `examples/`)."""

from __future__ import annotations

from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1] / "examples"


def examples_dir() -> Path:
    """The examples folder (corpus/, probe/, demo.yaml).

    Raises:
        FileNotFoundError: neither a checkout nor the installed package has it.
    """
    if (_CHECKOUT / "corpus").is_dir():
        return _CHECKOUT
    from importlib.resources import files

    try:
        installed = Path(str(files("atelier_examples")))
    except ModuleNotFoundError:
        raise FileNotFoundError(f"no sample corpus: neither {_CHECKOUT} nor an installed atelier_examples") from None
    if not (installed / "corpus").is_dir():
        raise FileNotFoundError(f"the installed atelier_examples at {installed} has no corpus/")
    return installed
