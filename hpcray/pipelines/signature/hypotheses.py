"""Hypotheses from the top gene sets: passages retrieved from a local literature corpus with
the embedding service, then the LLM service asked for a mechanism that cites them by number.
Every hypothesis keeps the passages it was given, and which of them the text cites."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpcray.pipelines.signature.errors import InputError

_WORD = re.compile(r"[a-z0-9]+")
_CITE = re.compile(r"\[(\d+)\]")


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str


@dataclass
class Hypothesis:
    gene_set: str
    rate_ratio: float
    fdr: float
    genes: list[str]
    query: str
    text: str
    passages: list[dict[str, Any]] = field(default_factory=list)  # id, title, text, score, cited
    model_tokens: int = 0


def read_corpus(path: str | Path, max_chars: int = 1200) -> list[Passage]:
    """A JSONL file (one object per line with `text`, and `id`/`pmid`, `title`) or a folder
    of .txt files (one passage each)."""
    path = Path(path)
    passages: list[Passage] = []
    if path.is_dir():
        for f in sorted(path.glob("*.txt")):
            passages.append(Passage(f.stem, f.stem, f.read_text(errors="replace")[:max_chars]))
    elif path.is_file():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{number}: not JSON: {exc.msg}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise InputError(f"{path}:{number}: needs a 'text' string")
            pid = str(obj.get("id") or obj.get("pmid") or number)
            title = str(obj.get("title") or obj.get("title_question") or "")
            passages.append(Passage(pid, title, obj["text"][:max_chars]))
    else:
        raise InputError(f"{path}: literature corpus not found (a .jsonl file or a folder of "
                         ".txt files)")
    if not passages:
        raise InputError(f"{path}: no passages")
    return passages


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def rank(query_vec: list[float], passage_vecs: list[list[float]], query: str,
         passages: list[Passage], lexical_weight: float) -> list[tuple[float, int]]:
    """Score = cosine of the embeddings (normalised by the service) blended with the share
    of query words the passage holds; best first."""
    q_words = _words(query)
    scored = []
    for i, (vec, passage) in enumerate(zip(passage_vecs, passages, strict=True)):
        cosine = sum(a * b for a, b in zip(query_vec, vec, strict=True))
        lexical = len(q_words & _words(passage.title + " " + passage.text)) / max(1, len(q_words))
        scored.append(((1 - lexical_weight) * cosine + lexical_weight * lexical, i))
    return sorted(scored, reverse=True)


def prompt_for(gene_set: str, rate_ratio: float, fdr: float, genes: list[str],
               passages: list[Passage], passage_chars: int) -> str:
    lines = [
        "You are a radiation biologist. Mutations in the genes of a pathway rise with dose.",
        f"Pathway: {gene_set.replace('_', ' ')} (burden x{rate_ratio:.2f} per Gy, "
        f"FDR {fdr:.2g}). Mutated genes: {', '.join(genes[:12])}.",
        "Passages:",
    ]
    for n, p in enumerate(passages, 1):
        lines.append(f"[{n}] {p.text[:passage_chars]}")
    lines.append("State one testable hypothesis for the mechanism in two sentences, citing "
                 "passages as [n].\nHypothesis:")
    return "\n".join(lines)


def generate_hypotheses(top: list[dict[str, Any]], corpus: list[Passage], *, embedding: str,
                        llm: str, passages: int = 3, max_tokens: int = 96,
                        lexical_weight: float = 0.5, passage_chars: int = 500
                        ) -> list[Hypothesis]:
    """top: [{gene_set, rate_ratio, fdr, genes}] best first."""
    import hpcray

    emb = hpcray.service(embedding)
    model = hpcray.service(llm)
    texts = [f"{p.title}. {p.text}" for p in corpus]
    vectors: list[list[float]] = []
    for i in range(0, len(texts), 32):
        vectors += emb.embed(texts[i:i + 32]).result["embeddings"]
    out = []
    for item in top:
        query = f"{item['gene_set'].replace('_', ' ').lower()} {' '.join(item['genes'][:12])}"
        qvec = emb.embed([query]).result["embeddings"][0]
        ranked = rank(qvec, vectors, query, corpus, lexical_weight)[:passages]
        chosen = [corpus[i] for _, i in ranked]
        text, tokens = _ask(model, item, chosen, passage_chars, max_tokens)
        cited = {int(n) for n in _CITE.findall(text)}
        out.append(Hypothesis(
            item["gene_set"], item["rate_ratio"], item["fdr"], list(item["genes"]), query,
            text.strip(),
            [{**asdict(p), "score": round(score, 4), "cited": n in cited, "n": n}
             for n, ((score, _), p) in enumerate(zip(ranked, chosen, strict=True), 1)],
            tokens))
    return out


def _ask(model, item: dict[str, Any], chosen: list[Passage], passage_chars: int,
         max_tokens: int) -> tuple[str, int]:
    """The LLM's answer; a prompt over the model's context is retried with shorter passages
    (down to 100 characters), then fails naming the limit."""
    from hpcray.errors import HpcrayError

    chars = passage_chars
    while True:
        prompt = prompt_for(item["gene_set"], item["rate_ratio"], item["fdr"], item["genes"],
                            chosen, chars)
        try:
            reply = model.generate(prompt, max_tokens=max_tokens).result
            return reply["text"], int(reply.get("completion_tokens", 0))
        except HpcrayError as exc:
            if "context" not in str(exc) or chars <= 100:
                raise
            chars //= 2


def write_hypotheses(out: Path, items: list[Hypothesis]) -> tuple[Path, Path]:
    json_path, md_path = out / "hypotheses.json", out / "hypotheses.md"
    json_path.write_text(json.dumps([asdict(h) for h in items], indent=2) + "\n")
    lines = ["# Hypotheses", "",
             "Generated by the LLM service from the top gene sets of the dose-response "
             "analysis and the passages the embedding service retrieved for each. Verify "
             "every claim against the cited passages.", ""]
    for h in items:
        lines += [f"## {h.gene_set}", "",
                  f"Burden x{h.rate_ratio:.2f} per Gy, FDR {h.fdr:.2g}; genes: "
                  f"{', '.join(h.genes[:15])}.", "", f"> {h.text or '(no text)'}", "",
                  "Passages given to the model:", ""]
        for p in h.passages:
            mark = " (cited)" if p["cited"] else ""
            lines.append(f"{p['n']}. **{p['id']}** {p['title']}{mark}: {p['text'][:240]}")
        lines.append("")
    md_path.write_text("\n".join(lines))
    return json_path, md_path
