"""The UQ methods' own arithmetic (training runs are in test_uq_runs.py)."""

from __future__ import annotations


def test_laplace_prior_precision_by_marginal_likelihood_matches_the_closed_form():
    """With every curvature h and |theta|^2 = s, the optimum solves
    lam^2 + h lam - P h / s = 0."""
    import math

    import torch

    from hpcray.pipelines.uq.methods import marglik_prior_precision

    p, h, s = 100, 10.0, 1.0
    curvature = [torch.full((60,), h), torch.full((40,), h)]
    mode = [torch.full((60,), math.sqrt(s / p)), torch.full((40,), math.sqrt(s / p))]
    expected = (-h + math.sqrt(h * h + 4 * p * h / s)) / 2  # 27.0
    assert abs(marglik_prior_precision(curvature, mode) / expected - 1) < 0.07
    # a larger adapter norm asks for a weaker prior
    assert marglik_prior_precision(curvature, [m * 3 for m in mode]) < expected


def test_laplace_curvature_and_the_linearised_predictive_on_a_tiny_llama(tmp_path):
    """The GLM predictive is the mode's softmax when the posterior is a point (a huge
    prior) and less confident than it when the posterior is wide; the GGN's draws are
    reproducible by seed and differ from the empirical Fisher's true-answer gradients."""
    import torch

    from hpcray.models.tiny import build_tiny_decoder
    from hpcray.pipelines.uq.data import read_qa, split
    from hpcray.pipelines.uq.methods import (
        MethodOptions,
        _Model,
        adapter_params,
        laplace_curvature,
        laplace_glm_predict,
    )
    from hpcray.pipelines.uq.synthetic import write_qa

    items = read_qa(write_qa(tmp_path / "qa.jsonl", n=40))
    train, test = split(items, 0.25, 0)
    model_dir = build_tiny_decoder(tmp_path / "llama", "llama")
    base = _Model(str(model_dir), MethodOptions(epochs=1), "cpu")
    model = base.adapter(0, 0.0)
    base.train(model, train, 0)
    params = adapter_params(model)

    ggn = laplace_curvature(base, model, train, "ggn", seed=3)
    assert [c.shape for c in ggn] == [p.shape for p in params]
    assert all(bool((c >= 0).all()) for c in ggn) and sum(float(c.sum()) for c in ggn) > 0
    again = laplace_curvature(base, model, train, "ggn", seed=3)
    assert all(torch.equal(a, b) for a, b in zip(ggn, again, strict=True))
    empirical = laplace_curvature(base, model, train, "empirical", seed=3)
    assert not all(torch.allclose(a, b) for a, b in zip(ggn, empirical, strict=True))

    before = [p.detach().clone() for p in params]
    at_mode = base.option_probs(model, test)
    point = laplace_glm_predict(base, model, ggn, 1e12, test, 0, seed=0)
    wide = laplace_glm_predict(base, model, ggn, 1.0, test, 0, seed=0)
    for mode_row, point_row, wide_row in zip(at_mode, point, wide, strict=True):
        assert max(abs(a - b) for a, b in zip(mode_row, point_row, strict=True)) < 2e-3
        assert abs(sum(wide_row) - 1) < 1e-6
    # a wide posterior spreads the probability: the mean top probability falls
    top = [max(r) for r in at_mode]
    assert sum(max(r) for r in wide) / len(wide) < sum(top) / len(top) - 0.02
    # the adapter is left at its mode
    assert all(torch.equal(p, q) for p, q in zip(params, before, strict=True))


def test_saved_adapters_served_from_one_replica_give_the_tasks_predictions(tmp_path):
    """An ensemble's members and a LoRA task's adapter, saved by the task, loaded together
    by one transformers_llm replica: its `score` per adapter gives the task's own option
    probabilities (the ensemble's: the members' mean)."""
    import asyncio
    import math
    from pathlib import Path

    from hpcray.deployments.transformers_llm import TransformersLLM

    from hpcray.models.tiny import build_tiny_decoder
    from hpcray.pipelines.uq.data import read_qa, split
    from hpcray.pipelines.uq.methods import MethodOptions, prompt, run_method
    from hpcray.pipelines.uq.synthetic import write_qa

    items = read_qa(write_qa(tmp_path / "qa.jsonl", n=40))
    train, test = split(items, 0.25, 0)
    model_dir = str(build_tiny_decoder(tmp_path / "llama", "llama"))
    options = MethodOptions(epochs=1, ensemble=2)
    ensemble = run_method(model_dir, "ensemble", 0, train, test, options, "cpu",
                          save_to=tmp_path / "ensemble")
    lora = run_method(model_dir, "lora", 1, train, test, options, "cpu",
                      save_to=tmp_path / "lora")
    assert [Path(p).name for p in ensemble["adapters"]] == ["member0", "member1"]
    adapters = {Path(p).name: p for p in ensemble["adapters"]} | {"lora": lora["adapters"][0]}
    replica = TransformersLLM(model_dir, adapters=adapters)

    def softmax(scores):
        top = max(scores)
        exp = [math.exp(s - top) for s in scores]
        return [e / sum(exp) for e in exp]

    async def served(adapter):
        return [softmax((await replica.score({"prompt": prompt(item), "options": list(item.options),
                                              "adapter": adapter}))["logprobs"])
                for item in test]

    members = [asyncio.run(served(name)) for name in ("member0", "member1")]
    mean = [[(a + b) / 2 for a, b in zip(r0, r1, strict=True)]
            for r0, r1 in zip(*members, strict=True)]
    for got, want in ((mean, ensemble["probs"]), (asyncio.run(served("lora")), lora["probs"])):
        assert len(got) == len(want) == len(test)
        for row, expected in zip(got, want, strict=True):
            assert max(abs(a - b) for a, b in zip(row, expected, strict=True)) < 1e-4
    assert members[0] != members[1]  # the members do differ
