"""Question-answer sets for the UQ pipeline, from the formats users have: hpcray's JSONL,
MMLU subject CSVs and PubMedQA JSON. Every item becomes a multiple-choice question (a
free-form one is asked against its reference answer and distractors drawn from the other
answers of the same set), so one scoring path serves all of them: the model's likelihood of
each option's text, softmaxed over the options."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hpcray.errors import SpecError

LETTERS = "ABCDEFGHIJ"
PUBMEDQA_OPTIONS = ("yes", "no", "maybe")


@dataclass(frozen=True)
class QAItem:
    id: str
    question: str
    options: tuple[str, ...]
    answer: int  # index into options
    source: str  # file:line (or file:key) it came from, for error messages and reports


class QAError(SpecError):
    """A QA file the pipeline cannot use; the message names the file and line."""


def read_qa(path: str | Path, *, distractors: int = 3, seed: int = 0) -> list[QAItem]:
    """Every item of a QA file, by its format: .jsonl, .csv (MMLU), .json (PubMedQA)."""
    path = Path(path)
    if not path.is_file():
        raise QAError(f"{path}: no such QA file")
    readers: dict[str, Callable[[Path], list[QAItem]]] = {  # each gives multiple choice
        ".jsonl": lambda p: with_distractors(read_jsonl(p), distractors, seed),
        ".csv": read_mmlu_csv, ".json": read_pubmedqa}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise QAError(f"{path}: unknown QA format {path.suffix!r}; use .jsonl (hpcray), .csv "
                      "(MMLU: question, 4 options, answer letter) or .json (PubMedQA)")
    items = reader(path)
    if not items:
        raise QAError(f"{path}: no questions in the file")
    return items


def read_jsonl(path: Path) -> list[QAItem | _FreeForm]:
    """One object per line: {"question", "answer"} and optionally "options" (then "answer"
    is the right option's text, its letter, or its index) and "id"."""
    out: list[QAItem | _FreeForm] = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise QAError(f"{where}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise QAError(f"{where}: each line must be a JSON object")
            question = row.get("question")
            if not isinstance(question, str) or not question.strip():
                raise QAError(f"{where}: field 'question' is missing or empty")
            if "answer" not in row or row["answer"] in (None, ""):
                raise QAError(f"{where}: field 'answer' is missing or empty")
            item_id = str(row.get("id", f"{path.stem}-{line_no}"))
            options = row.get("options")
            if options is None:
                out.append(_FreeForm(item_id, question.strip(), str(row["answer"]).strip(), where))
                continue
            if (not isinstance(options, list) or len(options) < 2
                    or not all(isinstance(o, str) and o.strip() for o in options)):
                raise QAError(f"{where}: field 'options' must be a list of 2 or more texts")
            out.append(QAItem(item_id, question.strip(), tuple(o.strip() for o in options),
                              _answer_index(row["answer"], options, where), where))
    return out


@dataclass(frozen=True)
class _FreeForm:
    id: str
    question: str
    reference: str
    source: str


def _answer_index(answer: object, options: list[str], where: str) -> int:
    if isinstance(answer, int) and not isinstance(answer, bool):
        if 0 <= answer < len(options):
            return answer
    elif isinstance(answer, str):
        text = answer.strip()
        if len(text) == 1 and text.upper() in LETTERS[:len(options)]:
            return LETTERS.index(text.upper())
        stripped = [o.strip() for o in options]
        if text in stripped:
            return stripped.index(text)
    raise QAError(f"{where}: field 'answer' ({answer!r}) is not one of the options, their "
                  f"letters A-{LETTERS[len(options) - 1]} or an index")


def with_distractors(items: list[QAItem | _FreeForm], k: int, seed: int) -> list[QAItem]:
    """Free-form items become multiple choice: the reference plus k other references of the
    set, in a seeded random order."""
    refs = sorted({i.reference for i in items if isinstance(i, _FreeForm)})
    out: list[QAItem] = []
    for item in items:
        if isinstance(item, QAItem):
            out.append(item)
            continue
        others = [r for r in refs if r != item.reference]
        if len(others) < 1:
            raise QAError(f"{item.source}: a free-form question needs other answers in the set "
                          "to be asked as multiple choice; add options or more questions")
        rng = random.Random(f"{seed}:{item.id}")
        options = [item.reference, *rng.sample(others, min(k, len(others)))]
        rng.shuffle(options)
        out.append(QAItem(item.id, item.question, tuple(options),
                          options.index(item.reference), item.source))
    return out


def read_mmlu_csv(path: Path) -> list[QAItem]:
    """MMLU's own files: no header; question, options A-D, answer letter."""
    out: list[QAItem] = []
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        line_no = 1  # where the row starts (a quoted field may span lines)
        for row in reader:
            where, line_no = f"{path}:{line_no}", reader.line_num + 1
            if not row:
                continue
            if len(row) != 6:
                raise QAError(f"{where}: an MMLU row has 6 fields (question, A, B, C, D, "
                              f"answer), this one has {len(row)}")
            question, *options, answer = (c.strip() for c in row)
            if not answer:
                raise QAError(f"{where}: the answer field is empty")
            if answer.upper() not in "ABCD" or len(answer) != 1:
                raise QAError(f"{where}: answer {answer!r} is not one of A, B, C, D")
            out.append(QAItem(f"{path.stem}-{len(out) + 1}", question, tuple(options),
                              "ABCD".index(answer.upper()), where))
    return out


def read_pubmedqa(path: Path) -> list[QAItem]:
    """PubMedQA's JSON (keyed by PMID): QUESTION with CONTEXTS, answered yes/no/maybe."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise QAError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise QAError(f"{path}: PubMedQA files are one object keyed by PMID")
    out = []
    for pmid, entry in data.items():
        where = f"{path}:{pmid}"
        if not isinstance(entry, dict) or not entry.get("QUESTION"):
            raise QAError(f"{where}: entry has no QUESTION")
        decision = str(entry.get("final_decision", "")).strip().lower()
        if decision not in PUBMEDQA_OPTIONS:
            raise QAError(f"{where}: final_decision {decision!r} is not yes, no or maybe")
        context = " ".join(entry.get("CONTEXTS") or [])
        question = f"{context} {entry['QUESTION']}".strip() if context else entry["QUESTION"]
        out.append(QAItem(f"pubmedqa-{pmid}", question, PUBMEDQA_OPTIONS,
                          PUBMEDQA_OPTIONS.index(decision), where))
    return out


def split(items: list[QAItem], test_share: float, seed: int) -> tuple[list[QAItem], list[QAItem]]:
    """A seeded train/test split: each seed of the search sees its own split."""
    order = list(items)
    random.Random(seed).shuffle(order)
    cut = max(1, round(len(order) * test_share))
    return order[cut:], order[:cut]
