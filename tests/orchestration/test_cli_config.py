"""Strict `--config` files and exit codes: every mistake is exit code 2 and one line naming it; nothing starts."""

from __future__ import annotations

import typing

import pytest
import yaml

from orchestration import cli
from orchestration.cli.config import (
    MAX_CONFIG_NODES,
    RULES,
    Choice,
    ConfigError,
    config_class,
    configurable_assets,
    load_config,
)


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def _error(tmp_path, capsys, text: str, *extra: str) -> str:
    code = cli.main(["run", "--config", _write(tmp_path, text), "--storage", str(tmp_path / "s"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("text, expected", [
    ("assets:\n  source_image:\n    min_side: 3\n",
     "unknown asset 'source_image' in 'assets'; did you mean 'source_images'?"),
    ("assets:\n  source_images:\n    min_sid: 3\n",
     "unknown field 'min_sid' of assets.source_images; did you mean 'min_side'?"),
    ("asets: {}\n", "unknown section 'asets'; did you mean 'assets'?"),
    ("assets:\n  source_images:\n    files_per_unit: zero\n",
     'assets.source_images.files_per_unit. Value "zero" (str)'),
    ("assets:\n  source_images:\n    files_per_unit: 0\n", "assets.source_images.files_per_unit: must be >= 1, got 0"),
    ("assets:\n  exclusion_signals:\n    nsfw_threshold: -0.2\n", "nsfw_threshold: must be in [0, 1], got -0.2"),
    ("assets:\n  exclusion_signals:\n    stages: [32, -48]\n",
     "assets.exclusion_signals.stages: must be >= 1, got -48"),
    ("assets:\n  training_shards:\n    stage_sizes: {'256': 0}\n", "stage_sizes: must be >= 1, got 0"),
    ("assets:\n  deduplicated_images:\n    semantic_threshold: .nan\n", "nan is not a finite number"),
    ("assets:\n  captions:\n    backend: opnai\n",
     "'opnai' is not one of grounded, transformers, openai; did you mean 'openai'?"),
    ("assets:\n  dit_checkpoint:\n    model_size: XXL\n", "'XXL' is not one of"),
    ("assets:\n  style_embeddings:\n    backend: cds\n", "'cds' is not one of open_nsfw_gram, clip, csd"),
    ("ray: {num_cpu: 2}\n", "unknown field 'num_cpu' of ray; did you mean 'num_cpus'?"),
    ("ray: {num_cpus: 0}\n", "ray.num_cpus: 0 is not a whole number >= 1"),
    ("- a list\n", "expected a mapping with 'assets' and 'ray', found list"),
    ("x: !!python/object/apply:os.system ['echo owned']\n", "could not determine a constructor for the tag"),
    ("assets: {source_images: {min_side: 3}\n", "line 2"),
])
def test_a_bad_config_is_exit_2_with_one_line_naming_it(tmp_path, capsys, text, expected):
    err = _error(tmp_path, capsys, text)
    assert expected in err and err.startswith("curate run: error: "), err


def test_the_disabled_sentinels_stay_valid(tmp_path):
    # -1 switches a pHash test off and a cosine above 1 the semantic one: documented, so accepted
    config = load_config(_write(tmp_path, "assets:\n  deduplicated_images:\n    phash_threshold: -1\n"
                                          "    semantic_threshold: 1.5\n"))
    assert config["assets"]["deduplicated_images"]["phash_threshold"] == -1


def test_an_alias_bomb_is_refused_quickly_without_building_it(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]  # 10^9 leaves
    path = _write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=f"more than {MAX_CONFIG_NODES:,}"):
        load_config(path)
    # a modest use of aliases (one anchor reused a few times) is fine
    ok = _write(tmp_path, "assets:\n  exclusion_signals: &x {stages: [32, 48]}\n  image_features: {batch_size: 4}\n"
                          "ray: {num_cpus: 2}\n")
    assert load_config(ok)["assets"]["exclusion_signals"] == {"stages": [32, 48]}


def test_deep_nesting_and_binary_are_one_line_errors(tmp_path, capsys):
    assert "nested too deeply" in _error(tmp_path, capsys, "assets: " + "[" * 20000 + "]" * 20000 + "\n")
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config(str(tmp_path / "missing.yaml"))


def test_usage_errors_are_exit_2(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    assert cli.main(["run", "--storage", str(afile)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert cli.main(["demo", "--storage", str(afile / "below")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse's own usage errors are 2 as well
        cli.main(["run", "--no-such-flag"])
    assert exc.value.code == 2


def test_version_and_exit_codes_in_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("curate ")
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "exit codes:" in text and "  2  usage or configuration error" in text


def test_the_demo_config_is_valid():
    from orchestration.package_data import examples_dir

    config = load_config(str(examples_dir() / "demo.yaml"))
    assert config["assets"]["source_images"]["files_per_unit"] == 32


def _numeric_or_enumerated(annotation) -> bool:
    if annotation in (int, float):
        return True
    return any(_numeric_or_enumerated(a) for a in typing.get_args(annotation) if a is not type(None))


def test_every_numeric_asset_field_has_a_range():
    """A new int/float field must get its range in RULES (or this fails), so `0` or `-1` can never slip through."""
    missing = []
    for name, op in configurable_assets().items():
        cls = config_class(op)
        for field, info in cls.model_fields.items():
            if _numeric_or_enumerated(info.annotation) and field not in RULES.get(name, {}):
                missing.append(f"{name}.{field}")
        for field in RULES.get(name, {}):
            assert field in cls.model_fields, f"RULES names {name}.{field}, which {cls.__name__} does not have"
    assert not missing, missing
    assert set(RULES) <= set(configurable_assets())


def test_every_default_satisfies_its_rule():
    for name, op in configurable_assets().items():
        cls = config_class(op)
        defaults = cls().model_dump()
        for field, rule in RULES.get(name, {}).items():
            value = defaults[field]
            values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
            for v in values:
                if v is not None and (isinstance(rule, Choice) or not isinstance(v, str)):
                    assert rule.problem(v) is None, (name, field, v)


def test_a_yaml_dump_of_a_valid_config_round_trips(tmp_path):
    data = {"assets": {"source_images": {"min_side": 32, "files_per_unit": 8},
                       "rebalanced_images": {"concept_cap": 4}}, "ray": {"num_cpus": 2}}
    assert load_config(_write(tmp_path, yaml.safe_dump(data))) == data
