"""The entry points hide the libraries' warnings that a user can do nothing about, and only those."""

from __future__ import annotations

import warnings

from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from autocritic.entry import quiet_libraries


def wrapping_warnings(backbone) -> list[str]:
    """What a user sees of wrapping a model in LoRA under the entry points' filters (Python hides DeprecationWarnings
    raised outside __main__)."""
    model = AutoModelForCausalLM.from_pretrained(backbone)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        quiet_libraries()
        get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
    return [str(warning.message) for warning in caught]


def test_wrapping_a_model_in_lora_warns_the_user_of_nothing(tiny_backbone):
    assert wrapping_warnings(tiny_backbone) == []


def test_other_warnings_still_reach_the_user():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries()
        warnings.warn("`labels` is deprecated", FutureWarning, stacklevel=1)
    assert [str(warning.message) for warning in caught] == ["`labels` is deprecated"]
