"""Tiny models with real architectures, random weights and tokenizers trained here, saved with
`save_pretrained` so they load through exactly the code path of a user's checkpoint.
Nothing is downloaded: the tokenizer is trained on text generated below.

    python -m hpcray.models.tiny DIR        # writes DIR/tiny-gpt2 and DIR/tiny-bert
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

_WORDS = (
    "cell", "dose", "radiation", "gene", "pathway", "repair", "damage", "signal", "protein",
    "response", "low", "high", "image", "model", "service", "node", "task", "variant",
    "sample", "enrichment", "replicate", "control", "treated", "exposure", "level", "time",
    "hour", "marker", "channel", "nucleus", "membrane", "mitochondria",
)


# "role: content" lines, then "assistant:" when a reply is wanted
_CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}assistant:{% endif %}")


def corpus(lines: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 16))) + "."
            for _ in range(lines)]


def build_tiny_causal_lm(path: str | Path, *, layers: int = 2, dim: int = 64,
                         context: int = 128, seed: int = 0) -> Path:
    """GPT-2 architecture, byte-level BPE tokenizer trained locally."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus(), vocab_size=400, min_frequency=1,
                            special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>",
                                        bos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                        model_max_length=context)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template = _CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=context, n_embd=dim,
                        n_layer=layers, n_head=2, bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_decoder(path: str | Path, architecture: str = "llama", *, layers: int = 2,
                       dim: int = 64, context: int = 256, seed: int = 0,
                       extra_text: list[str] | None = None,
                       initializer_range: float = 0.3) -> Path:
    """Llama or Mistral architecture (what LoRA fine-tuning starts from), random weights, a
    byte-level BPE tokenizer trained here on the corpus and `extra_text` (e.g. the QA set).
    The weights are drawn wider than a real model's initialisation (0.02): a tiny random
    model's output layer is otherwise too small for LoRA on the layers below it to move its
    answers."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        PreTrainedTokenizerFast,
    )

    kinds = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig,
                                                                   MistralForCausalLM)}
    if architecture not in kinds:
        raise ValueError(f"architecture {architecture!r}: one of {', '.join(kinds)}")
    config_cls, model_cls = kinds[architecture]
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus() + list(extra_text or []), vocab_size=600, min_frequency=1,
                            special_tokens=["<s>", "</s>", "<unk>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", model_max_length=context)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template = _CHAT_TEMPLATE
    torch.manual_seed(seed)
    options = {"sliding_window": None} if architecture == "mistral" else {}
    config = config_cls(vocab_size=len(tokenizer), hidden_size=dim, intermediate_size=2 * dim,
                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=context, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
                        initializer_range=initializer_range, **options)
    model_cls(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_lora(base: str | Path, path: str | Path, *, rank: int = 8, seed: int = 1,
                    scale: float = 1.0) -> Path:
    """A LoRA adapter (peft) for a tiny decoder from `build_tiny_decoder`, on the attention
    and MLP projections, with random weights in both factors (a fresh adapter's B is zero,
    which would leave the model unchanged), so that each adapter answers differently."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path = Path(path)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                        "up_proj", "down_proj"])
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, weight in peft_model.named_parameters():
            if "lora_" in name:
                weight.copy_(torch.randn_like(weight) * scale / weight.shape[-1] ** 0.5)
    peft_model.save_pretrained(str(path))
    return path


def build_tiny_encoder(path: str | Path, *, layers: int = 2, dim: int = 32,
                       seed: int = 0) -> Path:
    """BERT architecture, WordPiece tokenizer trained locally (a sentence encoder's shape)."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(corpus(), vocab_size=300, min_frequency=1)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]",
                                        pad_token="[PAD]", cls_token="[CLS]",
                                        sep_token="[SEP]", mask_token="[MASK]",
                                        model_max_length=128)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=dim, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * dim,
                        max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else "tiny-models")
    print(build_tiny_causal_lm(root / "tiny-gpt2"))
    print(build_tiny_encoder(root / "tiny-bert"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
