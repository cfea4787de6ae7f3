"""Concept vocabulary and matching: whole words, case, multi-word leftmost-longest, plurals, corpus n-grams."""

from __future__ import annotations

from curation.concepts import ConceptVocabulary, frequent_ngrams, match_concepts, match_corpus, tokenize


def vocab(*concepts: str) -> ConceptVocabulary:
    return ConceptVocabulary.from_lines(concepts)


def test_whole_words_case_and_separators():
    v = vocab("dog", "cat", "product shot")
    assert match_concepts("A HOTDOG and a Catalog", v) == []  # never inside a word
    assert match_concepts("Dog! cat?", v) == ["dog", "cat"]
    assert match_concepts(["product_shot", "PRODUCT-SHOT", "product  shot"], v) == ["product shot"]
    assert match_concepts("product photo, shot glass", v) == []  # a multi-word concept needs adjacent words


def test_longest_match_first_and_fields_separate():
    v = vocab("stock", "stock photo", "photo", "black and white", "white")
    assert match_concepts("stock photo of a black and white cat", v) == ["stock photo", "black and white"]
    assert match_concepts("white stock", v) == ["white", "stock"]
    # a concept never spans two metadata fields
    assert match_concepts(["stock", "photo"], v) == ["stock", "photo"]


def test_plurals_and_order_of_first_occurrence():
    v = vocab("puppy", "box", "dog", "product shot", "glass")
    assert match_concepts("Puppies, dogs and boxes; product shots", v) == ["puppy", "dog", "box", "product shot"]
    assert match_concepts("glass glasses", v) == ["glass"]
    assert match_concepts("dogs", v, plurals=False) == []
    assert match_concepts("dog dog dog", v) == ["dog"]


def test_vocabulary_file_comments_and_shipped_list(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("# a comment\n\nSelfie\n  sports car  \n#dog\n", encoding="utf-8")
    v = ConceptVocabulary.from_file(path)
    assert v.names() == ["selfie", "sports car"] and v.max_words == 2 and "Sports Car" in v and "dog" not in v
    v.save(tmp_path / "out.txt")
    assert ConceptVocabulary.from_file(tmp_path / "out.txt") == v
    shipped = ConceptVocabulary.shipped()
    assert 150 <= len(shipped) <= 300
    for concept in ("product shot", "selfie", "meme", "stock photo", "screenshot", "logo", "dog", "food"):
        assert concept in shipped


def test_corpus_ngrams_are_stopword_filtered_and_counted_once_per_sample():
    texts = [["Red sneakers on a white background", "sneakers"]] * 12 + [["the of and"]] * 30 + [["a cat"]] * 3
    counts = frequent_ngrams(texts)
    assert counts[("red", "sneakers")] == 12 and counts[("sneakers",)] == 12  # once per sample
    assert ("of",) not in counts and ("on", "a") not in counts and ("sneakers", "on") not in counts
    assert counts[("white", "background")] == 12 and ("background", "on") not in counts
    v = ConceptVocabulary.from_corpus(texts, min_count=10, include_shipped=False)
    assert "red sneakers" in v and "cat" not in v and "the" not in v
    assert "sneakers on a white" not in v  # longer than 3 words
    full = ConceptVocabulary.from_corpus(texts, min_count=10)
    assert "selfie" in full and "red sneakers" in full
    assert match_corpus(["red sneakers!", "nothing here"], v) == [["red sneakers"], []]
    assert tokenize("Café_Olé 2024") == ["café", "olé", "2024"]
