"""Fine-tuning-based UQ methods over one causal LM checkpoint, with PEFT LoRA.

Every method trains LoRA adapters on the training questions (the loss is on the right
option's tokens after the prompt) and predicts, per test question, probabilities over its
options: the softmax of each option's summed log-likelihood. The methods differ in how they
get those probabilities:

- `lora`: one adapter; its softmax is the confidence (the baseline).
- `ensemble`: K adapters from K seeds; their probabilities averaged.
- `laplace`: one adapter, then a diagonal Laplace approximation over the LoRA parameters
  (a GGN curvature of the training loss plus a prior precision); the predictive of the
  network linearised at the adapter (Laplace-LoRA's).
- `mc_dropout`: one adapter trained with LoRA dropout, kept on at prediction time; the
  average over passes (a cheaper Bayesian alternative).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from hpcray.errors import SpecError
from hpcray.pipelines.uq.data import QAItem

if TYPE_CHECKING:
    import torch

Method = Literal["lora", "ensemble", "laplace", "mc_dropout"]
METHODS: tuple[str, ...] = get_args(Method)


@dataclass
class MethodOptions:
    epochs: int = 3
    batch: int = 8
    lr: float = 1e-2
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    ensemble: int = 3  # adapters of an ensemble
    samples: int = 8  # passes (mc_dropout) or adapters drawn (laplace with predictive "sample")
    # the Gaussian prior on LoRA parameters (1/variance), or "marglik": chosen per task by
    # the Laplace approximation's marginal likelihood (docs/pipelines/uq.md)
    prior_precision: float | str = 100.0
    curvature: str = "ggn"  # Laplace's: "ggn" (sampled Fisher) or "empirical" (true labels)
    # Laplace's predictive: "glm" (the network linearised at the adapter, the posterior
    # pushed to the option scores) or "sample" (adapters drawn from the posterior)
    predictive: str = "glm"
    max_length: int = 256
    target_modules: str | list[str] | None = "all-linear"  # None: PEFT's per-model default


def prompt(item: QAItem) -> str:
    return f"Question: {item.question}\nAnswer:"


def check_causal_lm(model_dir: str | Path) -> dict[str, Any]:
    """The checkpoint's config, if it is a causal LM that PEFT can put LoRA on; a clear
    error naming the directory otherwise (before anything runs)."""
    path = Path(model_dir)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise SpecError(f"model {path}: no config.json; give a Hugging Face checkpoint "
                        "directory (save_pretrained)")
    config = json.loads(config_file.read_text())
    architectures = config.get("architectures") or []
    if not any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in architectures):
        raise SpecError(f"model {path}: not a causal LM (architectures: "
                        f"{', '.join(architectures) or 'none'}); UQ fine-tuning needs a "
                        "decoder such as LlamaForCausalLM or MistralForCausalLM")
    return config


def device_for_task() -> str:
    """The accelerator Ray gave this task (CUDA_VISIBLE_DEVICES, ROCR_VISIBLE_DEVICES or
    ZE_AFFINITY_MASK is set by Ray for it), else the CPU. ROCm builds of torch answer to
    `cuda`; Intel GPUs (Aurora) to `xpu`."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return "xpu"
    return "cpu"


class _Model:
    """A base model and its tokenizer, loaded once per task; adapters come and go."""

    def __init__(self, model_dir: str, options: MethodOptions, device: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.options, self.device = options, device
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        # PreTrainedModel.to is wrapped by functools.wraps, whose stub drops the bound self
        self.base = model.to(device)  # type: ignore[arg-type]
        self.base.requires_grad_(False)

    def adapter(self, seed: int, dropout: float):
        """A fresh LoRA adapter on the base model."""
        import torch
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(seed)
        config = LoraConfig(r=self.options.lora_rank, lora_alpha=self.options.lora_alpha,
                            lora_dropout=dropout, target_modules=self.options.target_modules,
                            task_type="CAUSAL_LM")
        model = get_peft_model(self.base, config)
        return model

    def encode(self, pairs: list[tuple[str, str]]):
        """Token ids of prompt + answer, with the answer's positions marked for the loss."""
        import torch

        tok = self.tokenizer
        ids, labels = [], []
        for text, answer in pairs:
            p = tok(text, add_special_tokens=False)["input_ids"]
            a = tok(" " + answer, add_special_tokens=False)["input_ids"]
            seq = (p + a)[-self.options.max_length:]
            keep = min(len(a), len(seq))
            ids.append(seq)
            labels.append([-100] * (len(seq) - keep) + seq[len(seq) - keep:])
        width = max(len(s) for s in ids)
        pad = tok.pad_token_id
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in ids])
        label_ids = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids])
        return input_ids.to(self.device), label_ids.to(self.device), mask.to(self.device)

    def answer_logprob(self, model, pairs: list[tuple[str, str]], *,
                       sampled: torch.Generator | None = None):
        """Summed log-probability of each answer given its prompt. With `sampled`, of
        tokens drawn from the model at the answer's positions instead (the Fisher's
        Monte-Carlo targets)."""
        import torch

        input_ids, labels, mask = self.encode(pairs)
        logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        logp = torch.log_softmax(logits, dim=-1)
        keep = target != -100
        if sampled is not None:
            drawn = torch.multinomial(logp.detach().exp().flatten(0, 1), 1,
                                      generator=sampled).view(target.shape)
            target = torch.where(keep, drawn, target)
        picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * keep).sum(dim=1)

    def train(self, model, items: list[QAItem], seed: int) -> list[float]:
        import random

        import torch

        opt = torch.optim.AdamW(adapter_params(model), lr=self.options.lr)
        rng = random.Random(seed)
        losses = []
        model.train()
        for _ in range(self.options.epochs):
            order = list(items)
            rng.shuffle(order)
            for start in range(0, len(order), self.options.batch):
                batch = order[start:start + self.options.batch]
                pairs = [(prompt(i), i.options[i.answer]) for i in batch]
                loss = -self.answer_logprob(model, pairs).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
        return losses

    def option_probs(self, model, items: list[QAItem], *, dropout: bool = False
                     ) -> list[list[float]]:
        import torch

        model.train(dropout)  # dropout on only for MC dropout's passes
        out = []
        with torch.no_grad():
            for start in range(0, len(items), self.options.batch):
                chunk = items[start:start + self.options.batch]
                pairs = [(prompt(item), o) for item in chunk for o in item.options]
                scores = self.answer_logprob(model, pairs).tolist()
                for item in chunk:
                    mine = torch.tensor(scores[:len(item.options)])
                    scores = scores[len(item.options):]
                    out.append(torch.softmax(mine, dim=0).tolist())
        return out


def adapter_params(model) -> list:
    """The LoRA parameters: the only trainable ones (the base model is frozen)."""
    return [p for p in model.parameters() if p.requires_grad]


def _mean(rows: list[list[list[float]]]) -> list[list[float]]:
    return [[sum(r[q][o] for r in rows) / len(rows) for o in range(len(rows[0][q]))]
            for q in range(len(rows[0]))]


def run_method(model_dir: str, method: str, seed: int, train: list[QAItem],
               test: list[QAItem], options: MethodOptions | None = None,
               device: str | None = None, save_to: str | Path | None = None
               ) -> dict[str, Any]:
    """One task of the search: train, predict, and say how long each part took. With
    `save_to`, every adapter trained is saved there (peft's format), so that a model service
    can load them all beside the base model: `member<k>` for an ensemble, `adapter` for the
    other methods (Laplace's is its mean, MC dropout's the one trained with dropout)."""
    import torch

    if method not in METHODS:
        raise SpecError(f"unknown UQ method {method!r}; methods: {', '.join(METHODS)}")
    options = options or MethodOptions()
    device = device or device_for_task()
    start = time.perf_counter()
    torch.manual_seed(seed)
    base = _Model(model_dir, options, device)
    loaded = time.perf_counter()
    losses: list[float] = []
    prior = None
    if method == "ensemble":
        members = []
        for k in range(options.ensemble):
            model = base.adapter(seed * 1000 + k, options.lora_dropout)
            losses += base.train(model, train, seed * 1000 + k)
            members.append(base.option_probs(model, test))
            _save(model, save_to, f"member{k}")
            model.unload()  # the base model back without this adapter
        probs = _mean(members)
    else:
        dropout = max(options.lora_dropout, 0.1) if method == "mc_dropout" else \
            options.lora_dropout
        model = base.adapter(seed, dropout)
        losses = base.train(model, train, seed)
        _save(model, save_to, "adapter")
        if method == "lora":
            probs = base.option_probs(model, test)
        elif method == "mc_dropout":
            probs = _mean([base.option_probs(model, test, dropout=True)
                           for _ in range(options.samples)])
        else:
            probs, prior = _laplace(base, model, train, test, options, seed)
    done = time.perf_counter()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return {"method": method, "seed": seed, "model": model_dir, "device": device,
            "prior_precision": prior if method == "laplace" else None,
            "probs": probs, "answers": [i.answer for i in test], "ids": [i.id for i in test],
            "final_loss": sum(losses[-5:]) / max(1, len(losses[-5:])),
            "load_s": loaded - start, "train_predict_s": done - loaded,
            "peak_gpu_memory_gb": peak,
            "adapters": sorted(str(p) for p in Path(save_to).iterdir()) if save_to else []}


def _save(model, save_to: str | Path | None, name: str) -> None:
    if save_to is not None:
        model.save_pretrained(Path(save_to) / name)


def marglik_prior_precision(curvature, mode) -> float:
    """The prior precision that maximises the Laplace approximation's log marginal
    likelihood, as a function of the prior alone (the data fit at the mode is fixed):
    -(lam/2)|theta|^2 + (P/2) log lam - (1/2) sum log(H_i + lam), on a log grid from 1e-4
    to 1e6. `curvature` and `mode`: per-tensor diagonals and values."""
    import torch

    h = torch.cat([c.flatten().double() for c in curvature])
    norm2 = float(sum((m.double() ** 2).sum() for m in mode))
    grid = torch.logspace(-4, 6, 201, dtype=torch.float64)
    scores = [-(lam / 2) * norm2 + h.numel() / 2 * torch.log(lam)
              - 0.5 * torch.log(h + lam).sum() for lam in grid]
    return float(grid[int(torch.stack(scores).argmax())])


def laplace_curvature(base: _Model, model, train: list[QAItem], kind: str, seed: int):
    """Diagonal curvature of the training loss at the adapter, one backward pass per
    question: the sum over questions of their squared gradients. `ggn`: the gradients of
    answer tokens drawn from the model (a Monte-Carlo estimate of the generalised
    Gauss-Newton diagonal, which is the Fisher for this softmax likelihood); `empirical`: of
    the true answers (the empirical Fisher, small where the model already fits)."""
    import torch

    params = adapter_params(model)
    curvature = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    generator = torch.Generator(device=params[0].device).manual_seed(seed) \
        if kind == "ggn" else None
    model.eval()
    for item in train:
        logp = base.answer_logprob(model, [(prompt(item), item.options[item.answer])],
                                   sampled=generator)
        grads = torch.autograd.grad(-logp.sum(), params)
        for c, g in zip(curvature, grads, strict=True):
            c += g.detach().float() ** 2
    return curvature


def _laplace(base: _Model, model, train: list[QAItem], test: list[QAItem],
             options: MethodOptions, seed: int) -> tuple[list[list[float]], float]:
    """Diagonal Laplace over the LoRA parameters around the trained adapter. Returns the
    predictions and the prior precision used."""
    curvature = laplace_curvature(base, model, train, options.curvature, seed)
    prior = laplace_prior(options.prior_precision, curvature, model)
    predict = PREDICTIVES[options.predictive]
    return predict(base, model, curvature, prior, test, options.samples, seed), prior


def laplace_prior(prior_precision: float | str, curvature, model) -> float:
    """The fixed prior precision, or the marginal likelihood's choice for this adapter."""
    if prior_precision == "marglik":
        return marglik_prior_precision(curvature, [p.detach() for p in adapter_params(model)])
    return float(prior_precision)


GLM_DRAWS = 2000  # draws of the option scores per question (cheap: C numbers each)


def laplace_glm_predict(base: _Model, model, curvature, prior: float, test: list[QAItem],
                        samples: int, seed: int) -> list[list[float]]:
    """The linearised (GLM) predictive: each question's option scores s are Gaussian with
    mean s(mode) and covariance J diag(1 / (curvature + prior)) J^T, J the Jacobian of s
    over the LoRA parameters (one backward pass per option); the probabilities are the
    softmax averaged over draws of s. Sampling the network's weights instead
    (`laplace_predict`) moves it where the linearisation behind the curvature does not
    hold, and underfits (docs/pipelines/uq.md). `samples` is unused: draws of s are cheap."""
    import torch

    del samples
    params = adapter_params(model)
    variance = torch.cat([(1.0 / (c + prior)).flatten() for c in curvature])
    generator = torch.Generator(device="cpu").manual_seed(seed)
    model.eval()
    out = []
    for item in test:
        scores = base.answer_logprob(model, [(prompt(item), o) for o in item.options])
        rows = []
        for k in range(len(item.options)):
            grads = torch.autograd.grad(scores[k], params, retain_graph=k + 1 < len(scores))
            rows.append(torch.cat([g.flatten().float() for g in grads]))
        jacobian = torch.stack(rows)
        cov = ((jacobian * variance) @ jacobian.T).double().cpu()
        cov += 1e-9 * torch.eye(len(rows), dtype=cov.dtype)
        mean = scores.detach().double().cpu()
        draws = mean + torch.randn(GLM_DRAWS, len(rows), generator=generator,
                                   dtype=cov.dtype) @ torch.linalg.cholesky(cov).T
        out.append(torch.softmax(draws, dim=-1).mean(dim=0).tolist())
    return out


def laplace_predict(base: _Model, model, curvature, prior: float, test: list[QAItem],
                    samples: int, seed: int) -> list[list[float]]:
    """Option probabilities averaged over `samples` adapters drawn from the posterior
    N(mode, 1 / (curvature + prior)); the adapter is back at its mode afterwards."""
    import torch

    params = adapter_params(model)
    mean = [p.detach().clone() for p in params]
    std = [(1.0 / torch.sqrt(c + prior)).to(p.dtype) for c, p in zip(curvature, params,
                                                                      strict=True)]
    generator = torch.Generator(device=mean[0].device).manual_seed(seed)
    draws = []
    try:
        for _ in range(samples):
            with torch.no_grad():
                for p, m, s in zip(params, mean, std, strict=True):
                    p.copy_(m + s * torch.randn(m.shape, generator=generator, device=m.device,
                                                dtype=m.dtype))
            draws.append(base.option_probs(model, test))
    finally:
        with torch.no_grad():
            for p, m in zip(params, mean, strict=True):
                p.copy_(m)
    return _mean(draws)


PREDICTIVES = {"glm": laplace_glm_predict, "sample": laplace_predict}
