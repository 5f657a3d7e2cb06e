from __future__ import annotations

import pytest

from hpcray.errors import SpecError
from hpcray.services.registry import check_args, load_class, target_of


def test_short_names_and_import_paths():
    assert target_of("noop") == "hpcray.deployments.noop:Noop"
    assert target_of("mypkg.models:Surrogate") == "mypkg.models:Surrogate"
    assert load_class(target_of("noop")).__name__ == "Noop"


def test_unknown_short_name_lists_candidates():
    with pytest.raises(SpecError, match="unknown deployment 'nop'; built-in: embedding, noop, "
                                         "transformers_llm, vllm_llm"):
        target_of("nop")


def test_missing_module_and_class():
    with pytest.raises(SpecError, match="cannot import 'no_such_module'"):
        load_class("no_such_module:X")
    with pytest.raises(SpecError, match="has no class 'Nope'; classes there: Noop"):
        load_class("hpcray.deployments.noop:Nope")


def test_arguments_the_class_does_not_accept():
    with pytest.raises(SpecError, match="does not accept args .* its parameters: reply"):
        check_args(load_class("hpcray.deployments.noop:Noop"), {"replies": 1}, "svc")
    check_args(load_class("hpcray.deployments.noop:Noop"), {"reply": 1}, "svc")
