"""Causal LM from a local checkpoint directory with Hugging Face transformers, CPU or GPU.

The same code loads a real checkpoint (Llama, Mistral, ...) and the tiny test model: only
local files are read (`local_files_only=True`); nothing is fetched from a hub.

Requests batch: those that arrive within `batch_wait_ms` of each other (and all that queued
while a batch ran) are generated together, left-padded, up to `max_batch_size` sequences, each
stopping on its own (end of sequence, its `max_tokens`, its `stop` strings). Requests whose
sampling settings differ go in separate batches. LoRA adapters (peft) are chosen per request,
several in one batch. Streams get their pieces step by step from the same batch."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcray import llm
from hpcray.errors import ServiceRequestError

log = logging.getLogger("hpcray.deployments.transformers_llm")

HONOURS = frozenset({"max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "n",
                     "ignore_eos"})
_END = object()


class PromptTooLong(ServiceRequestError):
    """The prompt does not fit the model's context: the caller's fault (HTTP 400)."""


@dataclass
class _Job:
    """One request: where its answer goes (a future, or a queue of pieces for a stream)."""

    req: llm.GenerationRequest
    ids: list[int]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future | None = None
    pieces: asyncio.Queue | None = None
    cancelled: bool = False
    rows: list[_Row] = field(default_factory=list)

    def send(self, item: Any) -> None:
        """From the batch thread to the caller's loop."""
        if self.pieces is not None:
            self.loop.call_soon_threadsafe(self.pieces.put_nowait, item)

    def resolve(self, value: Any = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if self.future is not None and not self.future.done():
                if error is not None:
                    self.future.set_exception(error)
                else:
                    self.future.set_result(value)

        self.loop.call_soon_threadsafe(settle)

    @property
    def key(self) -> tuple:
        """Requests with the same key can share a `generate` call."""
        r = self.req
        return (r.temperature > 0, r.temperature, r.top_p, r.top_k, r.seed, r.ignore_eos)


@dataclass
class _Row:
    job: _Job
    index: int
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of `text` already streamed
    finish: str | None = None


@dataclass
class _Call:
    """Work for the model's own thread (nothing else runs the model meanwhile)."""

    fn: Any
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future

    def run(self) -> None:
        try:
            value, error = self.fn(), None
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            value, error = None, exc

        def settle() -> None:
            if not self.future.done():
                if error is not None:
                    self.future.set_exception(error)
                else:
                    self.future.set_result(value)

        self.loop.call_soon_threadsafe(settle)


class TransformersLLM:
    max_ongoing_requests = 256  # Serve may hand this many at once; the batcher groups them

    def __init__(self, model_path: str, device: str = "auto", max_new_tokens: int = 64,
                 dtype: str = "auto", adapters: dict[str, str] | None = None,
                 max_batch_size: int = 32, batch_wait_ms: float = 5.0) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(model_path, local_files_only=True,
                                                     dtype=dtype)
        self._adapters = sorted(adapters or {})
        if adapters:
            from peft import PeftModel

            for name, path in adapters.items():
                if not (Path(path) / "adapter_config.json").is_file():
                    raise FileNotFoundError(f"adapter {name!r}: no adapter_config.json in {path}")
            first, *rest = adapters.items()
            model = PeftModel.from_pretrained(model, first[1], adapter_name=first[0])
            for name, path in rest:
                model.load_adapter(path, adapter_name=name)
        self.model = model.to(device).eval()
        config = model.config
        self.context = int(getattr(config, "max_position_embeddings", None)
                           or getattr(config, "n_positions", 2048))
        eos = model.generation_config.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.max_new_tokens = max_new_tokens
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1e3
        self.name = model_path
        self.counts = {"batches": 0, "sequences": 0, "largest": 0}
        self._queue: queue.SimpleQueue[_Job | _Call | None] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._batches, name="hpcray-llm-batcher",
                                        daemon=True)
        self._worker.start()

    # -- requests --------------------------------------------------------------------------
    def _job(self, payload: Any, stream: bool) -> _Job:
        req = llm.parse_request(payload, backend="transformers_llm", honours=HONOURS,
                                max_new_tokens=self.max_new_tokens,
                                adapters=set(self._adapters))
        if req.messages is not None:
            text = self.tokenizer.apply_chat_template(req.messages, tokenize=False,
                                                      add_generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tokenizer(req.prompt)["input_ids"]
        if len(ids) + req.max_tokens > self.context:
            raise PromptTooLong(f"prompt has {len(ids)} tokens; with max_tokens="
                                f"{req.max_tokens} that exceeds the model's context of "
                                f"{self.context} tokens", field="max_tokens")
        loop = asyncio.get_running_loop()
        job = _Job(req, ids, loop)
        if stream:
            job.pieces = asyncio.Queue()
        else:
            job.future = loop.create_future()
        return job

    async def generate(self, payload: Any) -> dict[str, Any]:
        job = self._job(payload, stream=False)
        self._queue.put(job)
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True
            raise

    chat = generate

    async def generate_stream(self, payload: Any) -> AsyncIterator[dict[str, Any]]:
        """Pieces as the batch makes them, then the token counts. Closing it early stops its
        sequences at the next step."""
        job = self._job(payload, stream=True)
        self._queue.put(job)
        try:
            while (item := await job.pieces.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.cancelled = True

    chat_stream = generate_stream

    def adapters(self, _payload: Any = None) -> list[str]:
        return list(self._adapters)

    async def add_adapter(self, payload: Any) -> dict[str, Any]:
        """Load a LoRA adapter from a local directory at run time: {"name": ..., "path": ...};
        on the model's thread, between batches."""
        name, path = llm.parse_new_adapter(payload, self._adapters)
        loop = asyncio.get_running_loop()
        call = _Call(lambda: self._load_adapter(name, path), loop, loop.create_future())
        self._queue.put(call)
        await call.future
        return {"adapters": list(self._adapters)}

    def _load_adapter(self, name: str, path: str) -> None:
        if self._adapters:
            self.model.load_adapter(path, adapter_name=name)
        else:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name).eval()
        self._adapters = sorted([*self._adapters, name])

    async def score(self, payload: Any) -> dict[str, Any]:
        """{"prompt", "options", "adapter"?} -> the summed log-probability of each option
        after the prompt (llm.parse_score): multiple-choice answers, as the UQ pipeline
        scores them, from any of the replica's adapters."""
        prompt, options, adapter, separator = llm.parse_score(payload, set(self._adapters))
        loop = asyncio.get_running_loop()
        call = _Call(lambda: self._score(prompt, options, adapter, separator), loop,
                     loop.create_future())
        self._queue.put(call)
        return {"logprobs": await call.future}

    def _score(self, prompt: str, options: list[str], adapter: str | None,
               separator: str) -> list[float]:
        import torch

        tok = self.tokenizer
        head = tok(prompt, add_special_tokens=False)["input_ids"]
        seqs = [head + tok(separator + o, add_special_tokens=False)["input_ids"]
                for o in options]
        width = max(len(s) for s in seqs)
        if width > self.context:
            raise PromptTooLong(f"prompt and option have {width} tokens; the model's context "
                                f"is {self.context}", field="options")
        pad = tok.pad_token_id
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=self.device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs],
                            device=self.device)
        extra = {"adapter_names": [adapter or "__base__"] * len(seqs)} if self._adapters else {}
        with torch.no_grad():
            logits = self.model(input_ids=ids, attention_mask=mask, **extra).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        picked = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        return [float(picked[i, len(head) - 1:len(s) - 1].sum()) for i, s in enumerate(seqs)]

    def batch_counts(self, _payload: Any = None) -> dict[str, int]:
        """`generate` calls made, sequences generated, and the most in one call."""
        return dict(self.counts)

    def check_health(self) -> None:
        if not self._worker.is_alive():
            raise RuntimeError("the batching thread of transformers_llm stopped")

    def shutdown(self) -> None:
        self._queue.put(None)

    # -- the batching thread -----------------------------------------------------------------
    def _batches(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            if isinstance(first, _Call):
                first.run()
                continue
            jobs, calls = [first], []
            rows = first.req.n
            deadline = time.monotonic() + self.batch_wait_s
            while rows < self.max_batch_size:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)
                    break
                if isinstance(job, _Call):
                    calls.append(job)  # after this batch
                    continue
                jobs.append(job)
                rows += job.req.n
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                if not job.cancelled:
                    groups.setdefault(job.key, []).append(job)
            for group in groups.values():
                self._run(group)
            for call in calls:
                call.run()

    def _run(self, jobs: list[_Job]) -> None:
        import torch
        from transformers import GenerationConfig, StoppingCriteriaList

        req = jobs[0].req
        rows = [_Row(job, i) for job in jobs for i in range(job.req.n)]
        for row in rows:
            row.job.rows.append(row)
        try:
            batch = self.tokenizer.pad({"input_ids": [r.job.ids for r in rows]},
                                       return_tensors="pt").to(self.device)
            sampling = req.temperature > 0
            longest = max(r.job.req.max_tokens for r in rows)
            config = GenerationConfig(
                max_new_tokens=longest, do_sample=sampling,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self._eos) or None,
                # ignore_eos: the end-of-sequence token is never drawn, so nothing stops early
                min_new_tokens=longest if req.ignore_eos else None,
                **({"temperature": req.temperature, "top_p": req.top_p,
                    "top_k": req.top_k or None} if sampling else {}))
            extra: dict[str, Any] = {}
            if self._adapters:
                extra["adapter_names"] = [r.job.req.adapter or "__base__" for r in rows]
            if req.seed is not None:
                torch.manual_seed(req.seed)
            with torch.no_grad():
                self.model.generate(**batch, generation_config=config,
                                    stopping_criteria=StoppingCriteriaList(
                                        [_RowStops(self, rows, req.ignore_eos)]), **extra)
        except Exception as exc:  # noqa: BLE001 - every request of the batch hears of it
            log.exception("generation failed for a batch of %d sequences", len(rows))
            for job in jobs:
                job.send(exc)
                job.resolve(error=exc)
            return
        self.counts["batches"] += 1
        self.counts["sequences"] += len(rows)
        self.counts["largest"] = max(self.counts["largest"], len(rows))
        for job in jobs:
            made = 0
            for row in job.rows:
                if row.finish is None:  # generate ended first: its own max_tokens was larger
                    row.finish = "length"
                    row.text = self._decode(row.tokens)
                made += len(row.tokens)
                if job.pieces is not None:
                    job.send(llm.piece(row.index, row.text[row.sent:], row.finish))
            if job.pieces is not None:
                job.send(llm.usage(len(job.ids), made))
                job.send(_END)
            else:
                job.resolve(llm.result([{"index": r.index, "text": r.text,
                                         "finish_reason": r.finish, "tokens": len(r.tokens)}
                                        for r in job.rows], len(job.ids)))

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


class _RowStops:
    """Called by `generate` after each step with every sequence so far: takes each row's new
    token, streams its new text, and says which rows are done (end of sequence, their own
    max_tokens, a stop string, or a caller that left)."""

    def __init__(self, owner: TransformersLLM, rows: list[_Row], ignore_eos: bool) -> None:
        self.owner, self.rows = owner, rows
        self.eos = set() if ignore_eos else owner._eos

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        new = input_ids[:, -1].tolist()
        done = []
        for row, token in zip(self.rows, new, strict=True):
            if row.finish is None:
                self._step(row, token)
            done.append(row.finish is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _step(self, row: _Row, token: int) -> None:
        job = row.job
        if job.cancelled:
            row.finish = "abort"
            return
        if token in self.eos:
            row.finish = "stop"
            row.text = self.owner._decode(row.tokens)
        else:
            row.tokens.append(token)
            if job.pieces is None and not job.req.stop \
                    and len(row.tokens) < job.req.max_tokens:
                return  # nothing to stream or check: decoded once at the end
            row.text = self.owner._decode(row.tokens)
            for stop in job.req.stop:
                at = row.text.find(stop)
                if at >= 0:
                    row.text, row.finish = row.text[:at], "stop"
                    break
            if row.finish is None and len(row.tokens) >= job.req.max_tokens:
                row.finish = "length"
        if job.pieces is None or row.finish is not None or row.text.endswith("\ufffd"):
            return  # not streamed; the last piece goes with the finish; half a character
        # text that may yet turn out to begin a stop string is held back
        ready = len(row.text) - max((len(s) - 1 for s in job.req.stop), default=0)
        if ready > row.sent:
            job.send(llm.piece(row.index, row.text[row.sent:ready]))
            row.sent = ready
