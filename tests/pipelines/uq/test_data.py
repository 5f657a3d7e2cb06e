"""QA readers on the real files in ../shared/data/qa and on bad input."""

from __future__ import annotations

import csv
import json

import pytest

from hpcray.pipelines.uq.data import QAError, read_qa, split
from hpcray.pipelines.uq.synthetic import AMBIGUOUS, CLEAR, write_qa
from tests.conftest import SHARED_DATA

QA = SHARED_DATA / "qa"


def test_mmlu_csv_as_published():
    path = QA / "mmlu" / "anatomy_dev.csv"
    items = read_qa(path)
    with path.open(newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    assert len(items) == len(rows)
    first = items[0]
    assert first.question == rows[0][0].strip() and len(first.options) == 4
    assert first.options[first.answer] == rows[0]["ABCD".index(rows[0][5]) + 1].strip()
    assert first.source == f"{path}:1"


def test_every_mmlu_file_reads():
    for path in sorted((QA / "mmlu").glob("*.csv")):
        assert all(len(i.options) == 4 for i in read_qa(path)), path


def test_pubmedqa_json_yes_no_maybe():
    items = read_qa(QA / "pubmedqa" / "ori_pqal_first100.json")
    assert len(items) == 100
    counts = {o: sum(i.options[i.answer] == o for i in items) for o in ("yes", "no", "maybe")}
    assert counts == {"yes": 58, "no": 26, "maybe": 16}  # as the data's README says
    raw = json.loads((QA / "pubmedqa" / "ori_pqal_first100.json").read_text())
    pmid = next(iter(raw))
    assert items[0].question.endswith(raw[pmid]["QUESTION"])  # asked after its context


def test_jsonl_multiple_choice_and_free_form(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"question": "Q1?", "options": ["a", "b"], "answer": "B"},
            {"question": "Q2?", "options": ["x", "y", "z"], "answer": "z"},
            {"question": "Q3?", "options": ["p", "q"], "answer": 0},
            {"question": "Q4?", "answer": "ref four"},
            {"question": "Q5?", "answer": "ref five"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = read_qa(path)
    assert [i.answer for i in items[:3]] == [1, 2, 0]
    free = items[3]
    assert free.options[free.answer] == "ref four" and "ref five" in free.options


@pytest.mark.parametrize("line, message", [
    ('{"question": "Q?"}', "field 'answer' is missing"),
    ('{"question": "Q?", "answer": ""}', "field 'answer' is missing"),
    ('{"answer": "a"}', "field 'question'"),
    ('{"question": "Q?", "options": ["a", "b"], "answer": "C"}', "is not one of the options"),
    ('{"question": "Q?", "options": ["a"], "answer": "a"}', "2 or more"),
    ('not json', "not JSON"),
])
def test_bad_jsonl_rows_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "ok?", "options": ["a", "b"], "answer": "a"}\n' + line + "\n")
    with pytest.raises(QAError) as info:
        read_qa(path)
    assert f"{path}:2" in str(info.value) and message in str(info.value)


def test_bad_mmlu_rows(tmp_path):
    path = tmp_path / "x_test.csv"
    path.write_text("Q?,a,b,c,d,A\nQ2?,a,b,c,d,\n")
    with pytest.raises(QAError, match=r"x_test.csv:2: the answer field is empty"):
        read_qa(path)
    path.write_text("Q?,a,b,c,A\n")
    with pytest.raises(QAError, match=r":1: an MMLU row has 6 fields"):
        read_qa(path)


def test_unknown_format_and_empty_file(tmp_path):
    with pytest.raises(QAError, match="unknown QA format"):
        (tmp_path / "qa.txt").write_text("x")
        read_qa(tmp_path / "qa.txt")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(QAError, match="no questions"):
        read_qa(tmp_path / "empty.jsonl")


def test_synthetic_set_is_learnable_by_construction(tmp_path):
    items = read_qa(write_qa(tmp_path / "qa.jsonl", n=120))
    assert len(items) == 120
    for item in items:
        subject = next(s for s in (*CLEAR, *AMBIGUOUS) if s in item.question)
        right = item.options[item.answer]
        assert right == CLEAR[subject] if subject in CLEAR else right in AMBIGUOUS[subject]
    train, test = split(items, 0.25, seed=1)
    assert len(test) == 30 and not {i.id for i in train} & {i.id for i in test}
    assert split(items, 0.25, seed=2)[1] != test  # each seed its own split
