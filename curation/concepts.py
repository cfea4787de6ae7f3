"""Concept matching for MetaCLIP-style balancing: a vocabulary of concepts and a whole-word matcher over metadata.

A concept is a phrase of 1+ words ("dog", "product shot", "stock photo"). Text and concepts go through the same
tokeniser (lower case, Unicode letters/digits; punctuation, `_` and `-` separate words), so "Product_Shot",
"product-shot" and "PRODUCT SHOT" all match "product shot", while "dog" never matches inside "hotdog". Matching is
greedy leftmost-longest over token n-grams looked up in a hash set: O(tokens x longest concept), no regex per concept.
A light plural rule lets "dogs" / "puppies" / "boxes" match "dog" / "puppy" / "box".

The default vocabulary is the shipped list `concept_vocabulary.txt` (common, often over-represented web concepts)
plus the corpus' own frequent 1-3 grams (`ConceptVocabulary.from_corpus`).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

logger = logging.getLogger(__name__)

_TOKEN = re.compile(r"[^\W_]+")

STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers herself
him himself his how i if in into is it its itself just me more most my myself no nor not now of off on once only or
other our ours ourselves out over own same she should so some such than that the their theirs them themselves then
there these they this those through to too under until up very via was we were what when where which while who whom
why will with would you your yours yourself yourselves s t d ll m re ve don isn aren wasn weren doesn didn won
image images photo photos picture pictures img jpg jpeg png gif webp file new one two get like see use used using
http https www com net org html htm
""".split())
"""English stopwords plus words every alt text has (image, photo, ...): an n-gram that starts or ends with one of
these, or a number, is not a corpus concept. The shipped list is not filtered (it may contain "stock photo")."""


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens (Unicode letters and digits; everything else, `_` included, separates words)."""
    return _TOKEN.findall(text.lower())


def singular(word: str) -> str | None:
    """A conservative singular of an English plural ("puppies" -> "puppy", "boxes" -> "box"), None when not plural."""
    if len(word) <= 3 or not word.endswith("s") or word.endswith(("ss", "us", "is")):
        return None
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("xes", "ches", "shes", "sses", "zes")):
        return word[:-2]
    return word[:-1]


@dataclass(frozen=True)
class ConceptVocabulary:
    """A set of concepts, each stored as its token tuple; the canonical name is the tokens joined by spaces."""

    concepts: frozenset[tuple[str, ...]]
    max_words: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_words", max((len(c) for c in self.concepts), default=0))

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> ConceptVocabulary:
        """Concepts from text lines: one per line, blank lines and lines starting with '#' ignored."""
        concepts = set()
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            tokens = tuple(tokenize(line))
            if tokens:
                concepts.add(tokens)
        return cls(frozenset(concepts))

    @classmethod
    def from_file(cls, path: str | Path) -> ConceptVocabulary:
        """Load a vocabulary file (UTF-8, one concept per line, '#' comments)."""
        return cls.from_lines(Path(path).read_text(encoding="utf-8").splitlines())

    @classmethod
    def shipped(cls) -> ConceptVocabulary:
        """The list shipped with the package (`curation/concept_vocabulary.txt`)."""
        text = resources.files("curation").joinpath("concept_vocabulary.txt").read_text(encoding="utf-8")
        return cls.from_lines(text.splitlines())

    @classmethod
    def from_corpus(cls, texts: Iterable[Sequence[str] | str], min_count: int = 10, max_words: int = 3,
                    max_concepts: int | None = 20_000, include_shipped: bool = True) -> ConceptVocabulary:
        """The default vocabulary: the corpus' frequent n-grams plus (optionally) the shipped list.

        Args:
            texts: per sample, its metadata texts (alt text, title, tags, caption) or one string.
            min_count: an n-gram must occur in at least this many samples (counted once per sample).
            max_words: longest n-gram (1-3 by default).
            max_concepts: keep at most this many corpus n-grams, most frequent first (ties by name).
            include_shipped: add `ConceptVocabulary.shipped()`.

        Returns:
            The vocabulary. N-grams that start or end with a stopword or a number are skipped.
        """
        counts = frequent_ngrams(texts, max_words)
        ranked = sorted(((g, c) for g, c in counts.items() if c >= min_count), key=lambda gc: (-gc[1], gc[0]))
        if max_concepts is not None:
            ranked = ranked[:max_concepts]
        concepts = {g for g, _ in ranked}
        if include_shipped:
            concepts |= cls.shipped().concepts
        logger.info("concept vocabulary: %d corpus n-grams (min count %d) + %s", len(ranked), min_count,
                    "shipped list" if include_shipped else "nothing else")
        return cls(frozenset(concepts))

    def names(self) -> list[str]:
        """Canonical concept names, sorted."""
        return sorted(" ".join(c) for c in self.concepts)

    def save(self, path: str | Path) -> None:
        """Write one concept per line (sorted), loadable with `from_file`."""
        Path(path).write_text("\n".join(self.names()) + "\n", encoding="utf-8")

    def __or__(self, other: ConceptVocabulary) -> ConceptVocabulary:
        return ConceptVocabulary(self.concepts | other.concepts)

    def __len__(self) -> int:
        return len(self.concepts)

    def __contains__(self, concept: str) -> bool:
        return tuple(tokenize(concept)) in self.concepts


def _is_content(token: str) -> bool:
    return token not in STOPWORDS and not token.isdigit() and len(token) > 1


def frequent_ngrams(texts: Iterable[Sequence[str] | str], max_words: int = 3) -> Counter:
    """Samples containing each 1..max_words gram (stopword-bounded n-grams skipped), counted once per sample."""
    counts: Counter = Counter()
    for sample in texts:
        parts = [sample] if isinstance(sample, str) else sample
        grams: set[tuple[str, ...]] = set()
        for part in parts:
            if not part:
                continue
            tokens = tokenize(part)
            for i in range(len(tokens)):
                if not _is_content(tokens[i]):
                    continue
                for n in range(1, max_words + 1):
                    gram = tuple(tokens[i:i + n])
                    if len(gram) < n:
                        break
                    if _is_content(gram[-1]):
                        grams.add(gram)
        counts.update(grams)
    return counts


def match_concepts(texts: Sequence[str] | str, vocabulary: ConceptVocabulary, plurals: bool = True) -> list[str]:
    """The concepts a sample's texts mention: whole words, case-insensitive, leftmost-longest, no overlaps.

    Each text (alt text, title, a tag, a caption) is matched on its own, so a match never spans two fields.

    Args:
        texts: the sample's metadata texts, or one string.
        vocabulary: the concepts.
        plurals: also match a concept whose last word is given in the plural ("product shots").

    Returns:
        Distinct concept names in order of first occurrence.
    """
    found: dict[str, None] = {}
    concepts, longest = vocabulary.concepts, vocabulary.max_words
    for text in [texts] if isinstance(texts, str) else texts:
        if not text:
            continue
        tokens = tokenize(text)
        i = 0
        while i < len(tokens):
            for n in range(min(longest, len(tokens) - i), 0, -1):
                gram = tuple(tokens[i:i + n])
                if gram not in concepts and plurals:
                    last = singular(gram[-1])
                    gram = gram[:-1] + (last,) if last else gram
                if gram in concepts:
                    found[" ".join(gram)] = None
                    i += n
                    break
            else:
                i += 1
    return list(found)


def text_key(texts: Sequence[str] | str) -> str:
    """A sample's metadata texts as one normalised key (tokens, fields in order): two samples with the same words in
    the same fields share it. `rebalance` uses it as the entry of a sample that matches no concept."""
    return " | ".join(" ".join(tokenize(t)) for t in ([texts] if isinstance(texts, str) else texts) if t)


def match_corpus(texts: Iterable[Sequence[str] | str], vocabulary: ConceptVocabulary,
                 plurals: bool = True) -> list[list[str]]:
    """`match_concepts` for every sample: the `concept_lists` argument of `curation.rebalance.rebalance`."""
    return [match_concepts(t, vocabulary, plurals) for t in texts]
