"""transformers_llm in this process (no Ray): requests that arrive together are generated
together, each stopping on its own, with streaming, and LoRA adapters chosen per request
answer as peft does. Batches are gated by size (a long collection window that closes as soon
as the batch is full), so the machine's load cannot change what is batched."""

from __future__ import annotations

import asyncio

import pytest

from hpcray.errors import ServiceRequestError

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pytest.importorskip("peft", reason="peft is installed by the test extra")
    from hpcray.models.tiny import build_tiny_decoder, build_tiny_lora

    root = tmp_path_factory.mktemp("tllm")
    base = build_tiny_decoder(root / "tiny-llama", dim=128, layers=2, context=256)
    return base, {f"a{i}": build_tiny_lora(base, root / f"lora{i}", seed=i) for i in (1, 2)}


def make(base, **options):
    from hpcray.deployments.transformers_llm import TransformersLLM

    return TransformersLLM(str(base), max_new_tokens=8, **options)


PROMPTS = [f"gene {i} dose cell" for i in range(16)]


def test_sixteen_requests_are_one_batch_with_the_answers_of_one_at_a_time(models):
    base, _ = models
    alone, batched = make(base, max_batch_size=1), make(base, max_batch_size=16,
                                                        batch_wait_ms=30_000)

    async def main():
        one = [await alone.generate({"prompt": p}) for p in PROMPTS]
        together = await asyncio.gather(*(batched.generate({"prompt": p}) for p in PROMPTS))
        return one, together

    one, together = asyncio.run(main())
    assert batched.batch_counts() == {"batches": 1, "sequences": 16, "largest": 16}
    assert alone.batch_counts()["largest"] == 1
    assert [r["text"] for r in together] == [r["text"] for r in one]
    assert [r["prompt_tokens"] for r in together] == [r["prompt_tokens"] for r in one]


def test_each_request_stops_on_its_own_in_a_shared_batch(models):
    base, _ = models
    alone, llm = make(base, max_batch_size=1), make(base, max_batch_size=4, batch_wait_ms=30_000)

    async def main():
        longest = await alone.generate({"prompt": "cell", "max_tokens": 12, "ignore_eos": True})
        text = longest["text"]
        stop = text[4:6]
        return longest, await asyncio.gather(
            llm.generate({"prompt": "cell", "max_tokens": 3, "ignore_eos": True}),
            llm.generate({"prompt": "cell", "max_tokens": 12, "ignore_eos": True}),
            llm.generate({"prompt": "cell", "max_tokens": 12, "stop": [stop],
                          "ignore_eos": True}),
            llm.generate({"prompt": "cell", "max_tokens": 7, "ignore_eos": True})), stop

    longest, (short, full, stopped, seven), stop = asyncio.run(main())
    assert llm.batch_counts()["largest"] == 4  # the four shared one generate call
    assert (short["completion_tokens"], short["finish_reason"]) == (3, "length")
    assert (seven["completion_tokens"], seven["finish_reason"]) == (7, "length")
    assert full["text"] == longest["text"] and full["completion_tokens"] == 12
    assert longest["text"].startswith(short["text"])
    assert stopped["finish_reason"] == "stop" and stop not in stopped["text"]
    assert longest["text"].startswith(stopped["text"])


def test_streams_give_pieces_then_usage_and_join_to_the_answer(models):
    base, _ = models
    alone, llm = make(base, max_batch_size=1), make(base, max_batch_size=2, batch_wait_ms=30_000)

    async def collect(payload):
        return [item async for item in llm.generate_stream(payload)]

    async def main():
        whole = await alone.generate({"prompt": "dose", "max_tokens": 8, "ignore_eos": True})
        a, b = await asyncio.gather(
            collect({"prompt": "dose", "max_tokens": 8, "ignore_eos": True}),
            collect({"prompt": "cell", "max_tokens": 5, "ignore_eos": True}))
        return whole, a, b

    whole, a, b = asyncio.run(main())
    assert len(a) > 2  # pieces, not one block
    assert a[-1] == {"usage": {"prompt_tokens": whole["prompt_tokens"],
                               "completion_tokens": 8}}
    assert "".join(p.get("text", "") for p in a) == whole["text"]
    assert a[-2]["finish_reason"] == "length" and b[-1]["usage"]["completion_tokens"] == 5


def test_n_seeds_and_refused_fields(models):
    base, _ = models
    llm = make(base)

    async def main():
        draw = {"prompt": "x", "n": 2, "temperature": 1.0, "seed": 5, "ignore_eos": True}
        return await llm.generate(draw), await llm.generate(draw)

    two, again = asyncio.run(main())
    assert len(two["choices"]) == 2 and two == again  # the same seed, the same draw
    assert two["completion_tokens"] == 16  # both choices, 8 tokens each
    for field, value in (("presence_penalty", 0.5), ("logprobs", 1),
                         ("response_format", {"type": "json_object"})):
        with pytest.raises(ServiceRequestError, match="transformers_llm cannot honour") as info:
            asyncio.run(llm.generate({"prompt": "x", field: value}))
        assert info.value.field == field
    with pytest.raises(ServiceRequestError, match="context of 256 tokens") as info:
        asyncio.run(llm.generate({"prompt": "cell " * 300}))
    assert info.value.field == "max_tokens"


def test_adapters_in_one_batch_answer_as_peft_does(models):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, adapters = models
    llm = make(base, adapters={k: str(v) for k, v in adapters.items()}, max_batch_size=3,
               batch_wait_ms=30_000)

    async def main():
        return await asyncio.gather(*(llm.generate({"prompt": "cell dose", "adapter": a})
                                      for a in (None, "a1", "a2")))

    got = [r["text"] for r in asyncio.run(main())]
    assert llm.batch_counts()["largest"] == 3  # three adapters, one generate call
    assert llm.adapters() == ["a1", "a2"]
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    ids = tokenizer("cell dose", return_tensors="pt")
    expected = []
    with torch.no_grad():
        for name in (None, "a1", "a2"):
            model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
            if name:
                model = PeftModel.from_pretrained(model, adapters[name])
            new = model.generate(**ids, max_new_tokens=8, do_sample=False)
            expected.append(tokenizer.decode(new[0, ids.input_ids.shape[1]:],
                                             skip_special_tokens=True))
    assert len(set(expected)) == 3 and got == expected
    with pytest.raises(ServiceRequestError, match="no adapter 'a3'; adapters: a1, a2"):
        asyncio.run(llm.generate({"prompt": "x", "adapter": "a3"}))


def test_an_adapter_added_at_run_time_answers_as_when_loaded_at_start(models):
    base, adapters = models
    at_start = make(base, adapters={"a2": str(adapters["a2"])})
    later = make(base)  # no adapter at all yet

    async def main():
        before = await later.generate({"prompt": "cell dose"})
        added = await later.add_adapter({"name": "a2", "path": str(adapters["a2"])})
        return (before, added, await later.generate({"prompt": "cell dose", "adapter": "a2"}),
                await later.generate({"prompt": "cell dose"}),
                await at_start.generate({"prompt": "cell dose", "adapter": "a2"}))

    before, added, adapted, plain, expected = asyncio.run(main())
    assert added == {"adapters": ["a2"]}
    assert adapted["text"] == expected["text"] != before["text"]
    assert plain["text"] == before["text"]  # the base model is unchanged for other requests
    with pytest.raises(ServiceRequestError, match="already loaded") as info:
        asyncio.run(later.add_adapter({"name": "a2", "path": str(adapters["a2"])}))
    assert info.value.field == "name"
