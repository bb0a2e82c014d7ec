"""Offline benchmark data and checks: pinned files, Punkt sentence counts as NLTK gives them,
no downloads, and `ampo evaluate --responses` refusing bad files cleanly."""

import json
import shutil

import nltk
import pytest

from ampo.cli import main
from ampo.ifeval import bench, offline
from ampo.ifeval.bench import BENCHMARKS, check_hash, data_path, load_items, sha256_file


@pytest.mark.parametrize("name,rows", [("ifeval", 541), ("ifbench", 300)])
def test_benchmark_files_have_the_pinned_hashes(name, rows):
    path = data_path(name)
    assert sha256_file(path) == BENCHMARKS[name].sha256
    items = load_items(name)
    assert len(items) == rows == BENCHMARKS[name].rows
    assert len({it.key for it in items}) == rows
    assert all(len(it.instruction_id_list) == len(it.kwargs) >= 1 for it in items)
    assert all(v is not None for it in items for kw in it.kwargs for v in kw.values())


def test_a_different_file_is_refused_in_one_line(tmp_path):
    copy = tmp_path / "input_data.jsonl"
    shutil.copy(data_path("ifeval"), copy)
    with copy.open("a") as f:
        f.write("\n")
    with pytest.raises(ValueError) as e:
        check_hash(copy, BENCHMARKS["ifeval"].sha256)
    assert "refusing a different benchmark file" in str(e.value) and "\n" not in str(e.value)


# NLTK's own documented answers (nltk.tokenize.sent_tokenize, nltk.data doctests)
NLTK_ANSWERS = [
    ("Good muffins cost $3.88\nin New York.  Please buy me\ntwo of them.\n\nThanks.", 3),
    ("Hello! How are you?", 2),
    ("Hello.  This is a test.  It works!", 3),
]
# abbreviations, initials, decimals, ellipses: NLTK must agree with the independent Punkt
# implementation whose parameters it now reads
HARDER = [
    "Dr. Smith went home. He was tired.",
    "Mr. and Mrs. Smith arrived at 5 p.m. yesterday. They left at noon.",
    "The U.S. economy grew 3.5% in Q2. Analysts e.g. at J.P. Morgan were surprised.",
    "I saw it... It was huge! Was it? Yes.",
    "See Fig. 3 and Eq. 2 for details. Results are in Sec. 4.",
]


@pytest.mark.parametrize("text,count", NLTK_ANSWERS)
def test_sentence_counts_are_nltks(text, count):
    assert offline.count_sentences(text) == count


@pytest.mark.parametrize("text", HARDER)
def test_sentence_counts_agree_with_the_punkt_package(text):
    import punkt

    assert offline.count_sentences(text) == len(punkt.sent_tokenize(text))


def test_punkt_files_are_written_once_into_ampos_folder(tmp_path, monkeypatch):
    root = offline.ensure_punkt(tmp_path)
    folder = root / "tokenizers" / "punkt_tab" / "english"
    assert sorted(p.name for p in folder.iterdir()) == sorted(offline.PUNKT_FILES)
    stamp = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    offline.ensure_punkt(tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamp
    from nltk.tokenize.punkt import load_punkt_params
    from punkt.data import english

    monkeypatch.setattr(nltk.data, "path", [str(root)])  # NLTK reads only from its data path
    params = load_punkt_params(nltk.data.find("tokenizers/punkt_tab/english/"))
    assert params.abbrev_types == set(english.ABBREV_TYPES)
    assert params.collocations == set(english.COLLOCATIONS)
    assert dict(params.ortho_context) == dict(english.ORTHO_CONTEXT)


def test_nltk_never_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("NLTK tried to download")

    monkeypatch.setattr(nltk, "download", refuse)
    offline.prepare()
    assert offline.registry("ifbench") and offline.count_sentences("One. Two.") == 2


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_scores_a_responses_file_by_key_or_prompt(tmp_path, capsys):
    items = load_items("ifeval")
    rows = [{"key": items[0].key, "response": "no commas here"},
            {"prompt": items[1].prompt + "  ", "response": "Also none"}]
    out = tmp_path / "out"
    assert main(["-q", "evaluate", "--benchmark", "ifeval", "--responses", str(_write(tmp_path / "r.jsonl", rows)),
                 "--output", str(out), "--bootstrap", "50"]) == 0
    assert "IFEval: 2 of 541 prompts" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc",
                "avg_prompt_inst_strict_acc", "avg_prompt_inst_strict_acc_ci", "per_instruction_type"):
        assert key in metrics
    assert metrics["model_card_metric"] == "avg_prompt_inst_strict_acc"
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["key"] for r in results] == [items[0].key, items[1].key]
    assert [len(r["follow_instruction_list_strict"]) for r in results] == [len(items[0].instruction_id_list),
                                                                          len(items[1].instruction_id_list)]


@pytest.mark.parametrize("rows,needle", [
    ([{"key": 424242, "response": "x"}], "row 1: field 'key': unknown key 424242"),
    ([{"prompt": "Not an IFEval prompt.", "response": "x"}], "row 1: field 'prompt': not a prompt"),
    ([{"response": "x"}], "row 1: needs a 'key' or a 'prompt'"),
    ([{"key": 1000, "response": "x"}, {"key": 1000, "response": "y"}], "row 2: duplicate: key 1000"),
    ([{"key": 1000}], "row 1: field 'response': missing"),
    ([{"key": 1000, "prompt": "Something else", "response": "x"}], "does not match the prompt of key 1000"),
])
def test_bad_responses_files_are_refused_without_output(tmp_path, capsys, rows, needle):
    bad = _write(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "out"
    assert main(["-q", "evaluate", "--benchmark", "ifeval", "--responses", str(bad), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and str(bad) in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_unknown_benchmark_is_refused():
    with pytest.raises(ValueError, match="unknown benchmark"):
        bench.benchmark_file("mmlu")
