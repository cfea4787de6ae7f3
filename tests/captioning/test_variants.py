"""Prompt-length variants: bounds, quoted text and entities kept, nothing invented, LLM retry/fallback, sampling."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from captioning.variants import (
    DETERMINISTIC_VERSION,
    MIN_DISTINCT_FACTS,
    VARIANT_KINDS,
    TransformersTextGenerator,
    VariantConfig,
    Variants,
    build_prompt,
    chat_generator,
    check_variant,
    clean_output,
    expansion_pairs,
    fact_count,
    invented_words,
    medium_floor,
    required_quotes,
    rewrite,
    rewrite_batch,
    same_text,
    sample_length,
    select_prompt,
    split_tags,
    validate_distribution,
    variant_limit,
)

CFG = VariantConfig()

CAPTIONS = {
    "quote_and_entity": (
        'A red tram passes the Eiffel Tower at dusk, its destination sign reading "PLACE DU TROCADÉRO". Pedestrians '
        "in winter coats cross the wet cobblestones, and warm light spills from café windows along the avenue.",
        [], ["Eiffel Tower", "Paris"]),
    "ocr_line_and_entity_in_quote": (
        "Close-up of a hand-painted shop sign above a doorway in Lisbon's Alfama district. The sign reads "
        '"PASTELARIA ALFAMA" in blue letters on white tiles, framed by a weathered green door and a potted geranium.',
        ["PASTELARIA ALFAMA"], ["Lisbon", "Alfama"]),
    "very_short": ("A black cat.", [], []),
    "long_quote": (
        'A protest banner reads "WE WILL NOT BE MOVED FROM THIS LAND OUR GRANDPARENTS FARMED FOR A HUNDRED YEARS" '
        "above a crowd gathered in the main square of Oaxaca on a bright afternoon.",
        [], ["Oaxaca"]),
    "very_long": (
        "A vertical oil painting titled The Harvest by Jean-François Millet shows three peasant women gleaning wheat "
        "in a golden field under a hazy sky; behind them, a distant farm with haystacks, carts and workers stretches "
        "to the horizon, while a mounted overseer watches from the right edge of the canvas. The palette is earthy "
        "brown and ochre, the brushwork soft, and the figures are monumental, bent low in the foreground with their "
        "faces shaded by bonnets, hands reaching for the stalks left behind by the reapers. The scene is calm but "
        "heavy with labour. A small signature in the lower left corner reads \"J. F. Millet\", and the gilded frame "
        "is chipped at one corner, revealing pale wood beneath the paint.",
        [], ["The Harvest", "Jean-François Millet"]),
    "ocr_lines_not_quoted_in_caption": (
        "Storefront at night with a neon sign that says OPEN 24 HOURS in pink letters.",
        ["OPEN 24 HOURS", "ATM"], ["Tokyo"]),
    "quote_with_punctuation": (
        "A chalkboard menu outside a small bakery lists the day's offers in looping white chalk, the top line "
        "reading “Coffee, tea. Cake!” above hand-drawn croissants; a bicycle leans against the brick wall, and a "
        "striped awning shades the window display of breads, tarts and jars of jam on wooden shelves.",
        [], []),
    "many_entities_no_quote": (
        "Aerial view of the Golden Gate Bridge spanning the strait between San Francisco and Marin County, with fog "
        "rolling over the Marin Headlands, container ships in the bay, sailboats near Alcatraz Island, and the city "
        "skyline catching the low orange light of early morning.",
        [], ["Golden Gate Bridge", "San Francisco", "Marin County", "Alcatraz Island"]),
}


def _words(text: str) -> int:
    return len(text.split())


def _copies(v: Variants, quotes, entities) -> list[tuple[str, str]]:
    """Pairs of variants with the same words, except pairs made only of the text every variant must keep."""
    def kept_only(text):
        for q in sorted(quotes, key=len, reverse=True):  # a quote may hold a shorter one
            text = text.replace(q, " ")
        for e in entities:
            text = re.sub(re.escape(e), " ", text, flags=re.IGNORECASE)
        return not re.search(r"\w", text)

    present = [k for k in VARIANT_KINDS if getattr(v, k)]
    return [(a, b) for i, a in enumerate(present) for b in present[i + 1:]
            if same_text(getattr(v, a), getattr(v, b)) and not (kept_only(getattr(v, a)) and kept_only(getattr(v, b)))]


@pytest.mark.parametrize("name", sorted(CAPTIONS))
def test_deterministic_variants_pass_checks_and_invent_nothing(name):
    caption, quoted, entities = CAPTIONS[name]
    v = rewrite(caption, quoted, entities, CFG)
    quotes = required_quotes(caption, quoted)
    assert v.backend == "deterministic" and v.model == "" and v.prompt_version == DETERMINISTIC_VERSION
    assert v.fallback_reason is None
    full = v.long if v.long_is_distinct else v.medium
    assert full.startswith(" ".join(caption.split()))
    if not v.long_is_distinct:  # no copy: an empty long and the reason
        assert v.long == "" and "medium holds the whole caption" in v.long_note
    else:
        assert v.long_note is None
    if fact_count(caption, quoted, entities) >= MIN_DISTINCT_FACTS:
        assert v.long_is_distinct, v
        assert _copies(v, quotes, entities) == [], v
    for kind in VARIANT_KINDS:
        text = getattr(v, kind)
        if kind == "long" and not v.long_is_distinct:
            continue
        assert check_variant(kind, text, quotes, entities, CFG, caption=full) == [], (kind, text)
        assert invented_words(text, caption, quoted, entities) == set(), (kind, text)
        for q in quotes:
            assert q in text, (kind, q, text)
    hi = CFG.medium_bounds[1]
    assert _words(v.short) <= max(CFG.short_max_words, sum(_words(q) for q in quotes))
    assert medium_floor(_words(full), CFG) <= _words(v.medium) <= max(hi, variant_limit("medium", quotes, entities,
                                                                                         CFG))
    assert all(t == t.lower() for t in split_tags(v.tags) if not t.startswith('"'))
    assert len(split_tags(v.tags)) <= variant_limit("tags", quotes, entities, CFG)


def test_specific_shapes():
    v = rewrite(*CAPTIONS["very_short"], CFG)
    assert (v.short, v.medium, v.long, v.tags) == ("A black cat", "A black cat.", "", "black, cat")
    assert not v.long_is_distinct and v.long_note == ("medium holds the whole caption (3 words): the caption states "
                                                      "1 fact (a distinct long needs 3)")

    caption, quoted, entities = CAPTIONS["long_quote"]
    quote = required_quotes(caption)[0]
    v = rewrite(caption, quoted, entities, CFG)
    assert _words(quote) > CFG.short_max_words
    assert v.short == f'"{quote}"'  # the documented rule: the quote alone, uncut

    caption, quoted, entities = CAPTIONS["very_long"]
    v = rewrite(caption, quoted, entities, CFG)
    assert _words(v.long) > 100 and _words(v.short) <= 12
    assert 20 <= _words(v.medium) <= 40
    assert "The Harvest" in v.medium and "Jean-François Millet" in v.medium and '"J. F. Millet"' in v.medium
    assert '"J. F. Millet"' in v.short  # never cut inside quotes, though it holds sentence-like periods

    caption, quoted, entities = CAPTIONS["quote_with_punctuation"]
    v = rewrite(caption, quoted, entities, CFG)
    assert "“Coffee, tea. Cake!”" in v.short and "“Coffee, tea. Cake!”" in v.medium
    assert '"Coffee, tea. Cake!"' in split_tags(v.tags)

    # OCR lines absent from the caption are appended to long, so every variant can keep them
    caption, quoted, entities = CAPTIONS["ocr_lines_not_quoted_in_caption"]
    v = rewrite(caption, quoted, entities, CFG)
    assert v.long.endswith('"ATM", Tokyo.')
    assert split_tags(v.tags)[:3] == ['"OPEN 24 HOURS"', '"ATM"', "tokyo"]

    # an entity inside the quote is kept by the quote; the other one is the short prompt's entity
    caption, quoted, entities = CAPTIONS["ocr_line_and_entity_in_quote"]
    v = rewrite(caption, quoted, entities, CFG)
    assert "Lisbon" in v.short and '"PASTELARIA ALFAMA"' in v.short


def test_short_keeps_the_first_entity_that_fits():
    caption, quoted, entities = CAPTIONS["many_entities_no_quote"]
    v = rewrite(caption, quoted, entities, CFG)
    assert "Golden Gate Bridge" in v.short
    assert all(e in v.medium for e in entities)


def test_checks_report_problems():
    quotes, entities = ["OPEN 24 HOURS"], ["Tokyo"]
    assert check_variant("short", "", quotes, entities, CFG) == ["short is empty"]
    assert any("misses quoted text" in p for p in check_variant("short", "A sign in Tokyo", quotes, entities, CFG))
    assert any("misses quoted text" in p for p in check_variant("short", "A sign OPEN 24 in Tokyo", quotes, [], CFG))
    thirteen = 'one two three four five six seven eight nine ten "OPEN 24 HOURS" Tokyo'
    assert any("limit 12" in p for p in check_variant("short", thirteen, quotes, entities, CFG))
    assert any("none of the key entities" in p for p in check_variant("short", '"OPEN 24 HOURS"', quotes,
                                                                        entities, CFG))
    long_quote = " ".join(f"w{i}" for i in range(15))
    assert check_variant("short", f'"{long_quote}"', [long_quote], ["Tokyo"], CFG) == []  # quote fills the budget
    assert any("limit 15" in p for p in check_variant("short", f'A "{long_quote}"', [long_quote], [], CFG))
    medium = "A storefront at night in Tokyo with a neon sign that says " + '"OPEN 24 HOURS"' + " in pink letters."
    assert any("bounds 20-40" in p for p in check_variant("medium", medium, quotes, entities, CFG))
    assert check_variant("medium", medium, quotes, entities, CFG, caption=medium) == []  # caption shorter than 20
    assert any("misses key entity" in p for p in check_variant("medium", medium.replace("Tokyo", "Osaka"), quotes,
                                                                 entities, CFG, caption=medium))
    assert any("not lowercase" in p for p in check_variant("tags", '"OPEN 24 HOURS", Tokyo', quotes, [], CFG))
    assert any("duplicate" in p for p in check_variant("tags", '"OPEN 24 HOURS", sign, sign', quotes, [], CFG))
    assert any("empty tag" in p for p in check_variant("tags", '"OPEN 24 HOURS", , sign', quotes, [], CFG))
    many = ", ".join(f"t{i}" for i in range(17))
    assert any("limit 16" in p for p in check_variant("tags", many, [], [], CFG))
    assert split_tags('"Hello, world", sign') == ['"Hello, world"', "sign"]
    # with the caption, its own quotes are required too, and they lift short's limit (the asset passes OCR lines only)
    caption, quoted, entities = CAPTIONS["long_quote"]
    v = rewrite(caption, quoted, entities, CFG)
    assert not v.long_is_distinct and v.medium.startswith(caption)  # one sentence: one fact
    assert check_variant("short", v.short, [], entities, CFG, caption=v.medium) == []
    assert any("limit 12" in p for p in check_variant("short", v.short, [], entities, CFG))
    assert any("misses quoted" in p for p in check_variant("medium", "x " * 25, [], [], CFG, caption=v.medium))


def test_deterministic_is_deterministic_and_order_free():
    items = [{"caption": c, "quoted": q, "entities": e} for c, q, e in CAPTIONS.values()]
    a = rewrite_batch(items, CFG)
    b = rewrite_batch(list(reversed(items)), CFG)
    assert a == list(reversed(b))
    assert a == rewrite_batch([(i["caption"], i["quoted"], i["entities"]) for i in items], CFG)


def test_bounds_follow_config():
    caption, quoted, entities = CAPTIONS["very_long"]
    cfg = VariantConfig(short_max_words=6, medium_target_words=50, medium_tolerance=5, max_tags=5)
    v = rewrite(caption, quoted, entities, cfg)
    quotes = required_quotes(caption, quoted)
    assert all(check_variant(k, getattr(v, k), quotes, entities, cfg, caption=v.long) == [] for k in VARIANT_KINDS)
    assert 45 <= _words(v.medium) <= 55 and _words(v.short) <= 6 and len(split_tags(v.tags)) == 5


def test_empty_caption_is_an_error():
    with pytest.raises(ValueError, match="empty caption"):
        rewrite("   ", [], [], CFG)


# ---------------------------------------------------------------------------------------------------- LLM backend


def _kind_of(prompt: str) -> str:
    task = re.search(r"Rewrite the caption below as (.*)\.\n", prompt).group(1)
    return "tags" if "tags" in task else "short" if "short" in task else "medium"


GOOD = {
    "tags": 'Tram, "PLACE DU TROCADÉRO", eiffel tower, paris, dusk',
    "short": 'Short: A tram by the Eiffel Tower, sign "PLACE DU TROCADÉRO"',
    "medium": ('At dusk in Paris, a red tram rolls past the Eiffel Tower with its sign showing "PLACE DU TROCADÉRO" '
               "while pedestrians in coats cross wet cobblestones under warm café light."),
}


def test_llm_good_output_is_used():
    caption, quoted, entities = CAPTIONS["quote_and_entity"]
    calls = []

    def complete(messages, **params):
        calls.append((messages, params))
        return GOOD[_kind_of(messages[0]["content"])]

    cfg = VariantConfig(backend="openai")
    v = rewrite(caption, quoted, entities, cfg, generator=chat_generator(complete, model="qwen3-8b", temperature=0))
    assert v.fallback_reason is None and v.backend == "openai" and v.model == "qwen3-8b"
    assert v.prompt_version == "v1"
    assert v.tags == 'tram, "PLACE DU TROCADÉRO", eiffel tower, paris, dusk'  # lowercased, quoted tag untouched
    assert v.short == GOOD["short"].removeprefix("Short: ")
    assert v.medium == GOOD["medium"] and v.long == rewrite(caption, quoted, entities).long
    assert len(calls) == 3 and calls[0][1] == {"model": "qwen3-8b", "temperature": 0}
    prompt = calls[0][0][0]["content"]
    assert '"PLACE DU TROCADÉRO"' in prompt and "Eiffel Tower; Paris" in prompt and caption[:40] in prompt


def test_llm_bad_output_retries_once_then_falls_back():
    caption, quoted, entities = CAPTIONS["quote_and_entity"]
    rounds: list[list[str]] = []

    def generate(prompts):
        rounds.append(prompts)
        if len(rounds) == 1:  # first round: short drops the quote, medium and tags are fine
            return ["A tram by the Eiffel Tower" if _kind_of(p) == "short" else GOOD[_kind_of(p)] for p in prompts]
        return ["Still no quote, Eiffel Tower" for _ in prompts]

    cfg = VariantConfig(backend="openai")
    v = rewrite(caption, quoted, entities, cfg, generator=generate)
    assert len(rounds) == 2 and len(rounds[0]) == 3 and len(rounds[1]) == 1
    assert "rejected" in rounds[1][0] and "misses quoted text 'PLACE DU TROCADÉRO'" in rounds[1][0]
    det = rewrite(caption, quoted, entities, CFG)
    assert v.short == det.short and v.medium == GOOD["medium"]
    assert v.fallback_reason.startswith("short: short misses quoted text 'PLACE DU TROCADÉRO'")
    assert "medium" not in v.fallback_reason and "tags" not in v.fallback_reason


def test_llm_answers_with_labels_or_file_stems_are_rejected_like_captions():
    caption, quoted, entities = CAPTIONS["quote_and_entity"]
    rounds: list[list[str]] = []

    def generate(prompts):
        rounds.append(prompts)
        bad = {"tags": GOOD["tags"], "short": 'Title: tram_photo, "PLACE DU TROCADÉRO", Eiffel Tower',
               "medium": GOOD["medium"]}
        return [bad[_kind_of(p)] for p in prompts]

    v = rewrite(caption, quoted, entities, VariantConfig(backend="openai"), generator=generate)
    assert len(rounds) == 2 and len(rounds[1]) == 1 and "field label 'Title:'" in rounds[1][0]
    assert "file-stem text 'tram_photo'" in rounds[1][0]
    assert v.short == rewrite(caption, quoted, entities, CFG).short and "field label" in v.fallback_reason
    assert v.medium == GOOD["medium"] and v.medium_note is None  # 27 words: within the bounds, nothing to explain


def test_llm_retry_success_has_no_fallback_and_batch_is_one_call_per_round():
    items = [CAPTIONS["quote_and_entity"], CAPTIONS["very_short"]]
    rounds = []

    def generate(prompts):
        rounds.append(len(prompts))
        if len(rounds) == 1:
            return ["" for _ in prompts]  # empty answers everywhere
        return [GOOD[_kind_of(p)] if "TROCADÉRO" in p else {"tags": "cat", "short": "A cat", "medium": "A black cat."}[
            _kind_of(p)] for p in prompts]

    out = rewrite_batch(items, VariantConfig(backend="openai"), generator=generate)
    assert rounds == [6, 6]
    assert [v.fallback_reason for v in out] == [None, None]
    assert out[1].short == "A cat" and out[1].medium == "A black cat."
    assert out[1].long == "" and not out[1].long_is_distinct  # a one-fact caption has no distinct long
    assert out[0].long == rewrite(*CAPTIONS["quote_and_entity"]).long and out[0].long_is_distinct


def test_llm_errors():
    with pytest.raises(ValueError, match="generator returned 1 outputs for 3 prompts"):
        rewrite("A black cat.", config=VariantConfig(backend="openai"), generator=lambda p: ["x"])
    with pytest.raises(ValueError, match="needs generator"):
        rewrite("A black cat.", config=VariantConfig(backend="openai"))
    with pytest.raises(ValueError, match="model_path"):
        rewrite("A black cat.", config=VariantConfig(backend="transformers"))
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        TransformersTextGenerator("/nonexistent/rewriter")
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        rewrite("A black cat.", config=VariantConfig(backend="transformers", model_path="/nonexistent/rewriter"))
    with pytest.raises(ValueError, match="only"):
        build_prompt("long", "A black cat.", [], [], CFG)
    assert clean_output("tags", 'Tags: Cat, cat, "OK Go", Black') == 'cat, "OK Go", black'


def _tiny_causal_lm(path) -> None:
    """A randomly initialised 2-layer Qwen2 with a byte-level BPE tokenizer trained here, saved like a real model."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([c for c, _, _ in CAPTIONS.values()] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<pad>")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=fast.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(path)


def test_transformers_backend_gibberish_falls_back(tmp_path):
    _tiny_causal_lm(tmp_path)
    caption, quoted, entities = CAPTIONS["quote_and_entity"]
    cfg = VariantConfig(backend="transformers", model_path=str(tmp_path), max_new_tokens=8, batch_size=2)
    v = rewrite(caption, quoted, entities, cfg)  # the generator is built from the path, prompts batched 2 by 2
    det = rewrite(caption, quoted, entities, CFG)
    assert v.backend == "transformers" and v.model == str(tmp_path)
    assert v.fallback_reason is not None and "after 1 retry" in v.fallback_reason
    for kind in ("tags", "short", "medium"):
        assert f"{kind}: " in v.fallback_reason
        assert getattr(v, kind) == getattr(det, kind)
    quotes = required_quotes(caption, quoted)
    assert all(check_variant(k, getattr(v, k), quotes, entities, cfg, caption=v.long) == [] for k in VARIANT_KINDS)

    gen = TransformersTextGenerator(tmp_path, max_new_tokens=4, batch_size=2)
    prompts = ["short prompt", "a much longer prompt with more words in it", "third"]
    plain = gen(prompts)
    assert len(plain) == 3 and all(isinstance(o, str) for o in plain)
    assert gen.tokenizer.padding_side == "left"
    assert gen([prompts[1]]) == [plain[1]]  # left padding: a batched prompt decodes as it does alone
    gen.tokenizer.chat_template = "{% for m in messages %}<|user|> {{ m['content'] }}\n{% endfor %}<|assistant|> "
    chat = gen(prompts)  # the chat-template path
    assert len(chat) == 3 and all(isinstance(o, str) for o in chat)


# ------------------------------------------------------------------------------------------- distribution, pairs


def test_distribution_validation():
    assert validate_distribution({"short": 0.5, "long": 0.5}) == {"tags": 0.0, "short": 0.5, "medium": 0.0,
                                                                   "long": 0.5}
    for bad, msg in [({"short": 0.5, "long": 0.6}, "sum to 1"), ({"short": -0.1, "long": 1.1}, "non-negative"),
                     ({"huge": 1.0}, "unknown"), ({"short": float("nan"), "long": 1.0}, "non-negative")]:
        with pytest.raises(ValueError, match=msg):
            validate_distribution(bad)
        with pytest.raises(ValueError, match=msg):
            VariantConfig(length_distribution=bad)
    with pytest.raises(ValueError, match="backend"):
        VariantConfig(backend="vllm")
    with pytest.raises(ValueError, match="prompt_version"):
        VariantConfig(prompt_version="v0")


def test_sampling_frequencies():
    dist = CFG.length_distribution
    rng = random.Random(1234)
    n = 20000
    draws = [sample_length(dist, rng) for _ in range(n)]
    for kind, p in dist.items():
        assert abs(draws.count(kind) / n - p) < 0.015, kind
    assert draws == [sample_length(dist, r) for r in [random.Random(1234)] for _ in range(n)]  # seeded: repeatable

    skewed = {"short": 0.8, "long": 0.2}
    gen = np.random.default_rng(7)
    draws = [sample_length(skewed, gen) for _ in range(5000)]
    assert set(draws) == {"short", "long"} and abs(draws.count("short") / 5000 - 0.8) < 0.03

    v = rewrite(*CAPTIONS["quote_and_entity"])
    kind, text = select_prompt(v, {"medium": 1.0}, rng)
    assert (kind, text) == ("medium", v.medium)
    kind, text = select_prompt({"tags": "a, b", "short": "s", "medium": "m", "long": "l"}, {"tags": 1.0}, rng)
    assert (kind, text) == ("tags", "a, b")


def test_expansion_pairs():
    items = [CAPTIONS["quote_and_entity"], CAPTIONS["very_short"], CAPTIONS["long_quote"]]
    variants = rewrite_batch(items, CFG)
    rows = [{"sample_id": f"id{i}", "short": v.short, "medium": v.medium, "long": v.long}
            for i, v in enumerate(variants)]
    assert [v.long_is_distinct for v in variants] == [True, False, False]
    rows.append({"sample_id": "empty", "short": "", "long": "A caption."})
    rows.append(Variants(tags="t", short="A dog", medium="m", long="A dog running.", backend="deterministic",
                         model="", prompt_version="x"))  # object rows work; no sample_id -> ""
    pairs = expansion_pairs(rows)
    assert [p["sample_id"] for p in pairs] == ["id0", "id2", ""]  # "A black cat" == "A black cat." is skipped
    assert pairs[0] == {"short": variants[0].short, "long": variants[0].long, "sample_id": "id0"}
    assert pairs[1] == {"short": variants[2].short, "long": variants[2].medium, "sample_id": "id2"}  # no long
    assert all(p["short"] != p["long"] for p in pairs)


def test_random_captions_always_pass_checks():
    """Seeded fuzz: odd punctuation, abbreviations, quotes anywhere, entities in any case, tight bounds."""
    vocab = ("a the red tram cat sign with and of in on at reads reading St. Mt. U.S. J. blue close-up, ; : — ( ) "
             "city river bridge old market stall vendor selling fruits under striped awning children").split()
    ents = ["Eiffel Tower", "Paris", "St. Mark's Square", "Venice", "New York", "Dr. Who"]
    rng = random.Random(0)
    items = []
    for _ in range(300):
        toks = [rng.choice(vocab) for _ in range(rng.randint(0, 90))]
        for _ in range(rng.randint(0, 3)):
            quote = " ".join(rng.choice(vocab + ["Hello.", "NO", "ENTRY!"]) for _ in range(rng.choice([1, 3, 14, 25])))
            toks.insert(rng.randint(0, len(toks)), rng.choice(['"%s"', "“%s”"]) % quote)
        entities = rng.sample(ents, rng.randint(0, 3))
        for e in entities:
            if rng.random() < 0.7:
                toks.insert(rng.randint(0, len(toks)), e if rng.random() < 0.5 else e.lower())
        quoted = [rng.choice(["EXIT", "OPEN 24 HOURS", "No parking, ever."])] if rng.random() < 0.3 else []
        items.append((" ".join(toks) or "A cat.", quoted, entities))
    for cfg in (CFG, VariantConfig(short_max_words=3, medium_target_words=8, medium_tolerance=2, max_tags=2)):
        for (caption, quoted, entities), v in zip(items, rewrite_batch(items, cfg), strict=True):
            quotes = required_quotes(caption, quoted)
            full = v.long if v.long_is_distinct else v.medium
            assert v.long_is_distinct or (v.long == "" and v.long_note)
            if cfg == CFG and fact_count(caption, quoted, entities) >= MIN_DISTINCT_FACTS:  # never a copy
                # (with 2 tags and 3-word shorts, the same two words can be both the best tags and the short)
                assert _copies(v, quotes, entities) == [], (caption, v)
            for kind in VARIANT_KINDS:
                text = getattr(v, kind)
                if kind == "long" and not v.long_is_distinct:
                    continue
                assert check_variant(kind, text, quotes, entities, cfg, caption=full) == [], (caption, kind, text)
                assert invented_words(text, caption, quoted, entities) == set(), (caption, kind, text)


def test_medium_is_medium_where_the_facts_allow_and_says_why_where_not():
    rich = ("A red tram on a wet street. A landscape colour photograph, mostly grey with red and dark blue. Vivid "
            "colours, cool tones, high contrast, a lighter top half, red in the centre, grey around the edges, fine "
            "texture throughout. Taken in Lisbon on 3 May 2019.")
    v = rewrite(rich, (), ["Lisbon"])
    n_long, n_medium = len(v.long.split()), len(v.medium.split())
    assert n_long > 40 or n_long == len(rich.split())
    assert 20 <= n_medium <= 30 < n_long and v.medium_note is None  # facts dropped down to the target, not one
    assert v.long_is_distinct and not same_text(v.medium, v.long) and not same_text(v.short, v.medium)
    assert "Lisbon" in v.medium and invented_words(v.medium, rich) == set()
    # 36 words of caption, five facts: dropping the least important one leaves ~30 words
    fits = ("A red tram on a wet street. A landscape colour photograph, mostly grey with red and dark blue. Vivid "
            "colours, cool tones, a lighter top half, fine texture throughout.")
    v = rewrite(fits)
    assert 20 <= len(v.medium.split()) < len(v.long.split()) and v.medium_note is None
    # a 12-word caption: a distinct long and a short medium, with the reason instead of filler
    few = "A backpack. A square colour image, mostly light grey with dark grey."
    v = rewrite(few)
    assert v.long_is_distinct and len(v.medium.split()) < 20
    assert v.medium_note == ("medium has 6 words, under the 20-40 bounds: the whole caption has 12 words (3 facts)")
    assert invented_words(v.medium, few) == set()


def test_medium_flag_check_fails_without_the_note_and_on_a_needless_one():
    from captioning.checks import variant_problems

    v = rewrite("A backpack. A square colour image, mostly light grey with dark grey.")
    row = {"sample_id": "s", "tags": v.tags, "short": v.short, "medium": v.medium, "long": v.long,
           "long_is_distinct": v.long_is_distinct, "medium_note": v.medium_note, "quoted": [], "entities": []}
    assert variant_problems(row) == []
    assert [c for c, _ in variant_problems(dict(row, medium_note=None))] == ["medium_flag"]
    long_medium = " ".join(["word"] * 25)
    assert "medium_flag" in [c for c, _ in variant_problems(dict(row, medium=long_medium, long=long_medium + " more"))]


def test_position_words_alone_are_not_tags():
    v = rewrite("A cat. A dark square colour image, mostly brown with black; vivid colours, brown in the centre, "
                "black at the top, a lighter top half.")
    tags = split_tags(v.tags)
    assert not {"centre", "top", "edges"} & set(tags) and "lighter top half" in tags and "vivid colours" in tags
