"""A small QA set a tiny model can learn, for tests and the demo (no download).

Each question names a subject; most subjects have one right answer, a few are ambiguous
(either of two answers is marked right, at random). A model that learns the set is
confident on the first kind and unsure on the second, which is what the UQ metrics
(calibration, AUROC of confidence for correctness) need to show a difference."""

from __future__ import annotations

import json
import random
from pathlib import Path

CLEAR = {
    "nucleus": "dna", "mitochondria": "energy", "membrane": "barrier", "ribosome": "protein",
    "lysosome": "digestion", "golgi": "packaging", "actin": "shape", "chromatin": "histone",
}
AMBIGUOUS = {"vesicle": ("transport", "storage"), "centrosome": ("spindle", "division")}
TEMPLATES = ("Which word goes with {s}?", "In a cell, {s} relates to which word?",
             "Pick the word linked to {s}.")


def write_qa(path: str | Path, *, n: int = 240, free_form_share: float = 0.1,
             seed: int = 0) -> Path:
    """n questions as JSONL: multiple choice (4 options) and some free-form rows."""
    rng = random.Random(seed)
    words = sorted({*CLEAR.values(), *(w for pair in AMBIGUOUS.values() for w in pair)})
    subjects = sorted(CLEAR) + sorted(AMBIGUOUS)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i in range(n):
            subject = subjects[i % len(subjects)]
            answer = CLEAR.get(subject) or rng.choice(AMBIGUOUS[subject])
            question = rng.choice(TEMPLATES).format(s=subject)
            row: dict = {"id": f"syn-{i}", "question": question, "answer": answer}
            if rng.random() >= free_form_share:
                taken = {answer, *AMBIGUOUS.get(subject, ())}
                options = [answer, *rng.sample([w for w in words if w not in taken], 3)]
                rng.shuffle(options)
                row["options"] = options
            f.write(json.dumps(row) + "\n")
    return path
