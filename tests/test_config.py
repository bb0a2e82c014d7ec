"""Config: YAML + dotted overrides, strict validation with one clear line per problem."""

import pytest

from ampo.cli import DEMO_RECIPE, RECIPES
from ampo.config import ConfigError, config_key, load_config, parse_overrides
from ampo.losses import LOSSES


def test_defaults_and_demo_recipe_validate():
    c = load_config()
    assert c.train.loss == "ampo" and c.select.strategy == "optselect"
    demo = load_config(DEMO_RECIPE)
    assert demo.model.lora and demo.rounds >= 1
    ifeval = load_config(RECIPES["ifeval"])  # a bundled prompt set, the ifeval reward, a benchmark
    assert ifeval.data.prompts == "builtin-ifeval" and ifeval.score.reward.startswith("ifeval")


def test_ifeval_specs_are_checked_at_config_time():
    c = load_config(overrides=["data.prompts=builtin-ifeval", "score.reward=ifeval:loose=0.5,degeneracy=0.1",
                               "eval.benchmarks=[ifeval, ifbench]", "eval.benchmark_limit=0"])
    assert c.eval.benchmarks == ["ifeval", "ifbench"]


def test_overrides_are_typed_and_nested(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("select:\n  k: 2\ntrain:\n  hparams: {beta: 2}\n")
    c = load_config(path, ["select.k=5", "train.hparams.gamma=1", "train.learning_rate=1e-5", "generate.n=8"])
    assert c.select.k == 5
    assert c.train.hparams == {"beta": 2.0, "gamma": 1.0}
    assert c.train.learning_rate == 1e-5


def test_parse_overrides():
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["nokey"])


@pytest.mark.parametrize("overrides,fragment", [
    (["select.kk=3"], "unknown config key 'select.kk'"),
    (["bogus=1"], "unknown config key 'bogus'"),
    (["select.k=three"], "config 'select.k': expected int"),
    (["model.lora=maybe"], "config 'model.lora': expected bool"),
    (["train.loss=mrpo"], "needs 2 reference models"),
    (["train.loss=nope"], "config 'train.loss': unknown 'nope'"),
    (["select.strategy=nope"], "config 'select.strategy': unknown 'nope'"),
    (["select.strategy=sweet_spot"], "config 'select.k': strategy 'sweet_spot' selects exactly one negative"),
    (["select.strategy=best_worst", "select.k=2"], "strategy 'best_worst' selects exactly one negative"),
    (["select.k=8", "generate.n=8"], "config 'select.k': 8 negatives need generate.n >= 9"),
    (["train.hparams.zeta=1"], "'zeta' is not a hyperparameter of loss 'ampo'"),
    (["train.loss=ipo", "train.hparams.per_token=3"], "'train.hparams.per_token': expected bool, got 3"),
    (["train.hparams.beta=big"], "'train.hparams.beta': expected a number, got 'big'"),
    (["train.loss=swepo", "train.hparams.dev_fn=true"], "'train.hparams.dev_fn': expected str, got True"),
    (["train.hparams.eos_reg=budget"], "'train.hparams.eos_reg': must be one of none, targeted, independent"),
    (["generate.backend=tgi"], "config 'generate.backend'"),
    (["train.loss=gpo", "train.hparams.form=triple"], "'train.hparams.form': must be one of pair, group"),
    (["train.loss=gpo", "train.hparams.clamp=big"], "'train.hparams.clamp': expected a number, got 'big'"),
    (["train.loss=gpo", "train.hparams.clamp=0"], "'train.hparams': hyperparameter clamp must be > 0, got 0"),
    (["train.loss=gpo", "train.hparams.beta=0"], "'train.hparams': hyperparameter beta must be > 0"),
    (["train.loss=mmpo", "train.hparams.target=judge"], "'train.hparams.target': must be one of reward, pref"),
    (["train.loss=tripo", "train.hparams.length_norm=1"], "'train.hparams.length_norm': expected bool, got 1"),
    (["train.loss=tripo", "train.hparams.alpha=-1"], "'train.hparams': hyperparameter alpha must be >= 0"),
    (["train.loss=tripo", "select.k=1"], "'select.k': loss 'tripo' needs at least 2 negatives per group, got 1"),
    (["train.loss=pro", "train.hparams.sft_weight=lots"], "'train.hparams.sft_weight': expected a number"),
    (["train.loss=ipo", "train.hparams.beta=0"], "'train.hparams': hyperparameter beta must be > 0"),
    (["generate.batching=paged"], "config 'generate.batching'"),
    (["generate.dtype=float16"], "config 'generate.dtype'"),
    (["generate.batch_rows=4"], "config 'generate.batch_rows': must hold one prompt's generate.n = 8"),
    (["train.curriculum=steps"], "config 'train.curriculum': must be one of none, groups, pairs, got 'steps'"),
    (["train.curriculum=pairs", "train.loss=tripo"], "'pairs' trains pairs (one negative each); loss 'tripo' needs 2"),
    (["train.curriculum=pairs", "train.loss=mrpo", "train.extra_references=[x]"],
     "'pairs' moves one reference forward each stage"),
    (["train.curriculum=pairs", "train.loss=dpo", "train.extra_references=[x]"],
     "cannot be used with train.extra_references"),
    (["train.curriculum=pairs", "select.strategy=best_worst", "select.k=1"],
     "'pairs' needs at least 2 negatives per prompt to order its pairs, got 1"),
])
def test_bad_config_fails_with_one_line(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=overrides)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_single_reference_losses_need_no_extra_paths():
    # the round's starting policy is always the first reference
    assert load_config(overrides=["train.loss=dpo"]).train.loss == "dpo"


def test_mrpo_with_extra_reference_is_accepted():
    c = load_config(overrides=["train.loss=mrpo", "train.extra_references=[/some/model]"])
    assert c.train.extra_references == ["/some/model"]


def test_config_key_is_order_independent_for_dicts():
    assert config_key({"a": 1, "b": 2}) == config_key({"b": 2, "a": 1})
    assert config_key({"a": 1}) != config_key({"a": 2})


def test_hparams_accept_numbers_flags_and_names():
    c = load_config(overrides=["train.loss=swepo", "train.hparams.dev_fn=abs", "train.hparams.beta=0.5"])
    assert c.train.hparams == {"dev_fn": "abs", "beta": 0.5}
    c = load_config(overrides=["train.loss=ipo", "train.hparams.per_token=true"])
    assert c.train.hparams == {"per_token": True}


def test_new_loss_hyperparameters_are_accepted():
    c = load_config(overrides=["train.loss=gpo", "train.hparams.form=group", "train.hparams.clamp=1000",
                               "train.hparams.center=0.5"])
    assert c.train.hparams == {"form": "group", "clamp": 1000.0, "center": 0.5}
    c = load_config(overrides=["train.loss=mmpo", "train.hparams.target=pref"])
    assert c.train.hparams == {"target": "pref"}
    c = load_config(overrides=["train.loss=tripo", "train.hparams.length_norm=true", "select.k=2"])
    assert c.train.hparams == {"length_norm": True}


def test_sweet_spot_with_one_negative_and_dpo_is_accepted():
    c = load_config(DEMO_RECIPE, ["select.strategy=sweet_spot", "select.k=1", "train.loss=dpo"])
    assert c.select.strategy == "sweet_spot" and c.select.k == 1


def test_curriculum_keeps_its_yes_no_form():
    """`true` keeps meaning whole groups easy -> hard; `false` none; pairs works with any loss a
    pair satisfies and with strategy `all` (which takes every candidate whatever select.k says)."""
    assert load_config(overrides=["train.curriculum=true"]).train.curriculum == "groups"
    assert load_config(overrides=["train.curriculum=false"]).train.curriculum == "none"
    assert load_config().train.curriculum == "none"
    for loss in ("dpo", "ampo", "simpo", "gpo", "mmpo"):
        assert load_config(overrides=["train.curriculum=pairs", f"train.loss={loss}"]).train.curriculum == "pairs"
    assert load_config(overrides=["train.curriculum=pairs", "select.strategy=all", "select.k=1"])


def test_a_full_finetune_does_not_inherit_the_lora_learning_rate(tmp_path, caplog):
    """`model.lora: false` with no `train.learning_rate` anywhere gets its loss's full fine-tune
    default (logged, with its source); a rate set in the YAML, a flag or an override is kept; LoRA
    has its own defaults."""
    import logging

    from ampo.losses.rates import FULL_FINETUNE, LORA

    caplog.set_level(logging.INFO, logger="ampo")
    assert load_config(overrides=["model.lora=false", "train.loss=dpo"]).train.learning_rate == 1e-6
    assert "train.learning_rate is not set: using 1e-06, the full fine-tune default for dpo (DPO (Rafailov" in caplog.text
    caplog.clear()
    assert load_config(overrides=["train.loss=dpo"]).train.learning_rate == LORA["dpo"].value == 3e-4
    assert "train.learning_rate is not set: using 0.0003, the LoRA default for dpo (docs/losses.md" in caplog.text
    caplog.clear()
    assert load_config(overrides=["train.loss=dpo", "train.learning_rate=1e-3"]).train.learning_rate == 1e-3
    assert "learning_rate" not in caplog.text  # a rate that is set: no line
    assert load_config(overrides=["model.lora=false", "train.loss=simpo"]).train.learning_rate == 5e-7
    assert load_config(overrides=["model.lora=false", "train.loss=pro"]).train.learning_rate == 5e-6
    assert set(FULL_FINETUNE) == set(LORA) == set(LOSSES)
    for name, rate in FULL_FINETUNE.items():  # full fine-tunes train 1e-7..1e-5; every default says where it is from
        assert 1e-7 <= rate.value <= 1e-5 and rate.source and LORA[name].source, name
    assert load_config(overrides=["model.lora=false", "train.learning_rate=5e-4"]).train.learning_rate == 5e-4
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("model: {lora: false}\ntrain: {learning_rate: 2.0e-6}\n")
    assert load_config(yaml_file).train.learning_rate == 2e-6
    assert load_config().train.learning_rate == LORA["ampo"].value  # LoRA, the default loss


def test_the_docs_print_the_default_learning_rates_the_code_uses():
    from pathlib import Path

    from ampo.losses.rates import FULL_FINETUNE, LORA

    text = (Path(__file__).parents[1] / "docs" / "losses.md").read_text()
    for name, rate in FULL_FINETUNE.items():
        assert f"| {name} | {rate.value:g} | {rate.source} | {LORA[name].value:g} |" in text, name
