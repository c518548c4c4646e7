"""Every key of every stage config, fed a wrong type and (where it has a range or a list of valid
names) a value outside it, must be refused with a ConfigError naming the dotted key.

The keys are found by walking the stage dataclasses of pipeline/config.py recursively
(tests/params_walk.py), so a field added later is fuzzed too; a number without a rule fails
``test_every_number_has_a_range`` unless it is listed in ``UNBOUNDED`` here.
"""
from __future__ import annotations

import copy

import pytest

from pipeline.config import AnnotateConfig, CorpusConfig, DistillConfig, from_dict
from pipeline.config_rules import RULES
from pipeline.errors import ConfigError
from pipeline.rules import Range
from tests.params_walk import CORPUS, KEYS, STAGES, Key, out_of_range, with_value, wrong_types

UNBOUNDED = {(CorpusConfig, "word_col"), (CorpusConfig, "label_col")}  # negative = from the end


def refused(key: Key, value, names: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(STAGES[key.section][0], with_value(key, value), key.section)
    assert str(info.value).startswith(f"{names}: "), (value, str(info.value))


def test_the_bases_are_valid():
    for cls, base in STAGES.values():
        from_dict(cls, copy.deepcopy(base), "x")


@pytest.mark.parametrize("key", KEYS, ids=[k.dotted for k in KEYS])
def test_wrong_type_names_the_key(key):
    for value, names in wrong_types(key):
        refused(key, value, names)


CASES = [(key, value, names) for key in KEYS for value, names in out_of_range(key)]


@pytest.mark.parametrize("key, value, names", CASES,
                         ids=[f"{k.dotted}={v!r}" for k, v, _ in CASES])
def test_out_of_range_names_the_key(key, value, names):
    refused(key, value, names)


def test_every_number_has_a_range():
    numbers = {(k.owner, k.name) for k in KEYS if k.tp in (int, float)}
    missing = sorted(f"{owner.__name__}.{name}" for owner, name in numbers - set(RULES) - UNBOUNDED)
    assert not missing, f"add a Range to pipeline.config_rules.RULES (or UNBOUNDED here): {missing}"
    assert len(KEYS) > 100 and len(CASES) > 50


@pytest.mark.parametrize("section, message", [
    ({"kd": {"lam": 2}}, "distill.kd.lam: must be in [0, 1], got 2.0"),
    ({"batch_tokens": 0}, "distill.batch_tokens: must be >= 1, got 0"),
    ({"workers": -1}, "distill.workers: must be >= 0, got -1"),
    ({"optim": {"epochs": 0}}, "distill.optim.epochs: must be >= 1, got 0"),
    ({"optim": {"lr": "fast"}}, "distill.optim.lr: expected a number, got 'fast'"),
    ({"kd": {"method": "postrior"}}, "(did you mean 'posterior'?)"),
    ({"kd": {"schedule": "anneel"}}, "(did you mean 'anneal'?)"),
    ({"kd": {"lamda": 0.1}}, "distill.kd.lamda: unknown key (did you mean 'lam'?)"),
    ({"kd": {"method": "topk", "options": {"kk": 2}}},
     "distill.kd.options: unknown option(s) ['kk'] of KD method 'topk'; valid: ['k']"),
    ({"labels": ["O", "B-X", "O"]}, "distill.labels: 'O' is listed twice"),
    ({"model": {"encoder": {"dropout": 1.0}}}, "distill.model.encoder.dropout: must be in [0, 1)"),
    ({"optim": {"lr": float("nan")}}, "distill.optim.lr: expected a finite number, got nan"),
])
def test_the_issue_examples(section, message):
    with pytest.raises(ConfigError) as info:
        from_dict(DistillConfig, section, "distill")
    assert message in str(info.value)


def test_valid_spellings_are_accepted():
    cfg = from_dict(DistillConfig, {"optim": {"lr": "1e-3", "epochs": 1}, "kd": None,
                                    "model": {"encoder": {"kind": "bilstm"}}}, "distill")
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float) and cfg.kd.method == "posterior"
    corpus = from_dict(CorpusConfig, {**CORPUS, "scheme": "bio", "convert_to": "bioes"}, "c")
    assert (corpus.scheme, corpus.convert_to) == ("bio", "bioes")


def test_cuda_without_a_gpu_is_one_clear_line():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match=r"^annotate.device: 'cuda' asked for, but torch sees no "
                                          r"CUDA GPU\(s\) on this machine; use auto or cpu$"):
        from_dict(AnnotateConfig, {"device": "cuda"}, "annotate")


def test_range_checks_and_rule_examples_agree():
    """Each Range's ``bad`` values lie outside it and its bounds inside (so the fuzz above feeds
    values that must be refused, and nothing valid is refused)."""
    for rule in {id(r): r for r in RULES.values() if isinstance(r, Range)}.values():
        for bound, open_ in ((rule.lo, rule.lo_open), (rule.hi, rule.hi_open)):
            if bound is not None and not open_:
                rule.check(bound, "k")
        for bad in rule.bad:
            with pytest.raises(ConfigError, match=r"^k: must be "):
                rule.check(bad, "k")
