"""PEFT's matching rules, reproduced in adapterkit.kinds.patterns, checked against PEFT itself."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from peft import IA3Config as PeftIA3Config
from peft import LoraConfig as PeftLoraConfig
from peft.tuners.ia3.model import IA3Model
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils.other import get_pattern_key

from adapterkit.errors import ConfigError
from adapterkit.kinds import LoraConfig
from adapterkit.kinds.patterns import matches_feedforward, matches_target, pattern_key

PARTS = ("model", "layers", "0", "1", "12", "self_attn", "q_proj", "v_proj", "proj", "mlp", "down_proj", "fc")
names = st.lists(st.sampled_from(PARTS), min_size=1, max_size=5).map(".".join)
suffixes = st.lists(st.sampled_from(PARTS), min_size=1, max_size=2).map(".".join)
regexes = st.sampled_from([r".*q_proj", r"model\..*", r".*\.(q|v)_proj", r"^model.layers.0.q_proj", "q_proj", r".*proj", r"[", r"layers.1.*"])
valid_regexes = regexes.filter(lambda r: r != "[")


@given(name=names, targets=st.lists(suffixes, min_size=1, max_size=3, unique=True))
def test_target_list_rule_matches_peft(name, targets):
    config = PeftLoraConfig(target_modules=targets)
    assert matches_target(tuple(config.target_modules), name) == bool(check_target_module_exists(config, name))


@given(name=names, regex=valid_regexes)
def test_target_regex_rule_matches_peft(name, regex):
    config = PeftLoraConfig(target_modules=regex)
    assert matches_target(regex, name) == bool(check_target_module_exists(config, name))


@given(name=names, keys=st.lists(st.one_of(suffixes, valid_regexes), min_size=0, max_size=4, unique=True))
def test_pattern_key_matches_peft(name, keys):
    ours = pattern_key(keys, name)
    assert (ours if ours is not None else name) == get_pattern_key(keys, name)


def test_invalid_regex_key_matches_nothing_and_config_rejects_it():
    # PEFT raises re.error deep inside injection; adapterkit's LoraConfig refuses the config up front.
    with pytest.raises(re.error):
        get_pattern_key(["["], "model.q")
    assert pattern_key(["[", "q"], "model.q") == "q"
    with pytest.raises(ConfigError) as info:
        LoraConfig.from_dict({"peft_type": "LORA", "rank_pattern": {"[": 2}})
    assert info.value.code == "config-invalid" and "rank_pattern" in info.value.key


def test_caret_key_matches_the_whole_module_name():
    # REFERENCE.md says keys starting with "^" never match; PEFT 0.21.2 matches them against the full name.
    assert get_pattern_key(["^model.layers.0.q_proj"], "model.layers.0.q_proj") == "^model.layers.0.q_proj"
    assert pattern_key(["^model.layers.0.q_proj"], "model.layers.0.q_proj") == "^model.layers.0.q_proj"
    assert pattern_key(["^layers.0.q_proj"], "model.layers.0.q_proj") is None


@given(name=names, ff=st.one_of(st.lists(suffixes, min_size=1, max_size=3, unique=True), valid_regexes))
def test_ia3_feedforward_rule_matches_peft(name, ff):
    targets = ff if isinstance(ff, str) else list(ff)
    config = PeftIA3Config(target_modules=targets, feedforward_modules=ff)
    ours = matches_feedforward(ff if isinstance(ff, str) else tuple(ff), name)
    assert ours == IA3Model._check_target_module_feedforward(config, name)
