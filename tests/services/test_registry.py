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


def test_run_dir_in_service_arguments_at_any_depth():
    from hpcray.services.manager import with_run_dir

    args = {"model_path": "{run_dir}/data/models/bert", "n": 2, "vep": {"cache": "{run_dir}/c"},
            "extra": ["--dir", "{run_dir}"], "flag": None}
    assert with_run_dir(args, "/lus/runs/r1") == {
        "model_path": "/lus/runs/r1/data/models/bert", "n": 2, "vep": {"cache": "/lus/runs/r1/c"},
        "extra": ["--dir", "/lus/runs/r1"], "flag": None}


def test_a_method_only_the_local_replicas_serve_never_goes_to_a_remote_endpoint():
    from hpcray.remote.base import RemoteResult
    from hpcray.remote.federation import Federation, Instance
    from hpcray.services.replica import ServiceRequestError

    seen = []

    def answer(name):
        def call(method, payload, timeout):
            seen.append((name, method))
            return RemoteResult(name, 0.0, 0.0, 0.001, True)
        return call

    federation = Federation("annotator", [
        Instance("local", "local", 8, 1.0, answer("local")),
        Instance("mirror", "vep_rest", 8, 1.0, answer("mirror"), methods=("annotate",))])
    only_remote = Federation("r", [Instance("m", "vep_rest", 1, 1.0, answer("m"),
                                            methods=("annotate",))])
    try:
        for _ in range(20):
            assert federation.call("contigs", None).result == "local"
        assert {federation.call("annotate", {}).result for _ in range(40)} == {"local", "mirror"}
        with pytest.raises(ServiceRequestError, match="no instance serves 'x'"):
            only_remote.call("x", None)
    finally:
        federation.close()
        only_remote.close()
