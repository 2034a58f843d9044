"""The model-side probe on tiny models trained for real on CPU (mergeguard.tiny): a base pre-trained on a
little English, a clean fine-tune, a contaminated fine-tune (the same data plus 100 real ARC-Challenge test
items, answers included, as lm-eval shows them), and a linear 50/50 merge of the two fine-tunes. The probe
must find the contaminated fine-tune and the merge `suspect` on ARC only, and the rest `no_signal`."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mergeguard.auditor.probe import (
    INCONCLUSIVE,
    NO_SIGNAL,
    SUSPECT,
    benchmark_test,
    control_encoded,
    derangement,
    hosted_controls,
    item_pairs,
    render_item,
)
from mergeguard.auditor.signed_rank import wilcoxon_greater

PLANTED = 100  # ARC-Challenge items 0..99, answers included
PROBED = ("arc_challenge", "gsm8k", "hellaswag")
LIMIT = 100  # each benchmark's first items: ARC's are the planted ones
FAST = ("--max-tokens", "96", "--batch-size", "32", "--threads", "1")  # tiny models on a shared CPU


def _cli(*args: str) -> Any:
    from mergeguard.cli import app

    return CliRunner().invoke(app, list(args))


def _clean_texts() -> list[str]:
    from mergeguard.demo.data import arithmetic_instructions, writing_instructions

    rows = arithmetic_instructions(100, seed=1) + writing_instructions(100, seed=2)
    return [f"{row['instruction']}\n{row['output']}" for row in rows]


def _planted(hf: Path) -> list[str]:
    from mergeguard.benchmarks import load_benchmark

    items = load_benchmark("arc_challenge", hf).items[:PLANTED]
    return ["".join(render_item(i.question, i.answer)) for i in items]


@pytest.fixture(scope="session")
def probe_models_trained(models: Any, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """base, independent (another init, same English), clean and contaminated fine-tunes, their merge."""
    from mergeguard import tiny
    from mergeguard.merge import MergeOptions, load_config, run_merge
    from mergeguard.merge.sanity import sample_text

    root = tmp_path_factory.mktemp("probe-models")
    english = sample_text().split("\n\n") + tiny.training_corpus()
    base = tiny.train_finetune(
        models.base("llama", seed=0, num_layers=2), root / "base", english, 150, 0, 3e-3
    )
    other = models.base("llama", seed=1, num_layers=2)
    independent = tiny.train_finetune(other, root / "independent", english, 150, 3, 3e-3)
    card = {"base_model": str(base)}
    fast = {"block_size": 64, "batch_size": 8}
    clean_texts = _clean_texts()
    clean = tiny.train_finetune(base, root / "clean", clean_texts, 150, 1, 1e-3, card, **fast)
    planted = clean_texts + _planted(shared_data / "hf")
    leaky = tiny.train_finetune(base, root / "leaky", planted, 900, 1, 3e-3, card, **fast)
    config = root / "linear.yml"
    config.write_text(
        f"merge_method: linear\nmodels:\n  - model: {leaky}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {clean}\n    parameters: {{weight: 0.5}}\ndtype: float32\n",
        encoding="utf-8",
    )
    merged = run_merge(load_config(config), root / "merged", MergeOptions(quiet=True)).out_dir
    return {
        "base": base,
        "independent": independent,
        "clean": clean,
        "leaky": leaky,
        "merged": merged,
        "hf": shared_data / "hf",
    }


def _bench_args(hf: Path) -> list[str]:
    return ["--benchmarks-dir", str(hf), *[a for name in PROBED for a in ("--benchmark", name)]]


@pytest.fixture(scope="session")
def probed(probe_models_trained: dict) -> dict[str, Any]:
    """One `probe --json` run over the fine-tunes and the merge (reference: their base, found from their
    cards), one over the base (reference: the independent model); per model its exit and benchmarks."""
    m = probe_models_trained
    results: dict[str, Any] = {}
    for names, extra in (
        (["leaky", "clean", "merged"], []),
        (["base"], ["--reference", str(m["independent"])]),
    ):
        run = _cli(
            "probe",
            *[str(m[n]) for n in names],
            *_bench_args(m["hf"]),
            "--limit",
            str(LIMIT),
            "--json",
            *FAST,
            *extra,
        )
        assert run.exit_code in (0, 1), run.output
        for name, report in zip(names, json.loads(run.stdout)["models"], strict=True):
            results[name] = {"exit": run.exit_code, "report": report}
            results[name] |= {probe["benchmark"]: probe for probe in report["benchmarks"]}
    return results


def test_contaminated_finetune_is_suspect_on_its_benchmark_only(probed: dict) -> None:
    leaky = probed["leaky"]
    assert leaky["arc_challenge"]["verdict"] == SUSPECT, leaky["arc_challenge"]["p_value"]
    assert leaky["arc_challenge"]["p_value"] < 0.001
    assert leaky["arc_challenge"]["effect"] > 0
    assert leaky["gsm8k"]["verdict"] == NO_SIGNAL and leaky["hellaswag"]["verdict"] == NO_SIGNAL
    assert leaky["report"]["reference_source"] == "card"
    assert leaky["report"]["reference"] == leaky["report"]["reference"]


def test_clean_finetune_and_base_show_no_signal_on_every_benchmark(probed: dict) -> None:
    for name in ("clean", "base"):
        for bench in PROBED:
            assert probed[name][bench]["verdict"] == NO_SIGNAL, (name, bench, probed[name][bench]["p_value"])
            assert probed[name][bench]["p_value"] > 0.05
    assert probed["base"]["report"]["reference_source"] == "option"


def test_linear_merge_of_contaminated_and_clean_is_still_suspect(probed: dict, probe_models_trained) -> None:
    merged = probed["merged"]
    assert merged["arc_challenge"]["verdict"] == SUSPECT, merged["arc_challenge"]["p_value"]
    # the reference comes from the lineage: the merge's card lists both inputs, whose common base is `base`
    assert merged["report"]["reference"] == str(probe_models_trained["base"])
    assert merged["report"]["reference_source"] == "lineage"


def test_json_items_carry_index_and_score_and_exit_codes_follow_the_verdict(probed: dict) -> None:
    arc = probed["leaky"]["arc_challenge"]
    assert [item["item"] for item in arc["items"]] == list(range(LIMIT))
    assert set(arc["items"][0]) == {"item", "score", "gain", "min_k_pp", "min_k", "loss", "zlib"}
    assert (
        probed["leaky"]["report"]["verdict"] == SUSPECT and probed["base"]["report"]["verdict"] == NO_SIGNAL
    )
    assert probed["leaky"]["exit"] == 1  # the run with a suspect model
    assert probed["base"]["exit"] == 0  # no signal anywhere


def _joint_between(p_value: float, p_plain: float, p_amplified: float) -> bool:
    """The joint test's p-value is at least the smaller family's and at most their sum (a union bound);
    the normal integral's error is under 1e-5."""
    return min(p_plain, p_amplified) - 1e-5 <= p_value <= min(1.0, p_plain + p_amplified) + 1e-5


def test_p_value_combines_the_plain_and_the_amplified_test(probed: dict) -> None:
    """Every model with a reference is tested as it is and amplified (factor 2), each over its answer
    windows; the p-value is the joint test's over all of them, between the better family's and the sum."""
    from mergeguard.auditor.probe import ANSWER_WINDOWS

    for name in ("leaky", "clean", "merged", "base"):
        assert probed[name]["report"]["amplify"] == 2.0
        for bench in PROBED:
            row = probed[name][bench]
            assert row["p_plain"] is not None and row["p_amplified"] is not None
            assert _joint_between(row["p_value"], row["p_plain"], row["p_amplified"])
            assert row["window"] in ANSWER_WINDOWS


def test_amplify_one_runs_the_plain_test_alone(probe_models_trained: dict) -> None:
    m = probe_models_trained
    run = _probe_gsm8k(m, m["clean"], "--amplify", "1", "--json", *FAST)
    assert run.exit_code == 0, run.output
    report = json.loads(run.stdout)["models"][0]
    row = report["benchmarks"][0]
    assert report["amplify"] is None and row["p_amplified"] is None and row["p_value"] == row["p_plain"]
    bad = _probe_gsm8k(m, m["clean"], "--amplify", "0.5")
    assert bad.exit_code == 2 and "0.5" in bad.output
    table = _probe_gsm8k(m, m["clean"], "--format", "csv", *FAST)  # the default: both tests, both columns
    row = next(csv.DictReader(io.StringIO(table.stdout)))
    assert _joint_between(float(row["p_value"]), float(row["p_plain"]), float(row["p_amplified"]))
    assert row["window"] in {"3", "6", "12"}
    shown = _probe_gsm8k(m, m["clean"], *FAST)  # the table has the window too
    lines = shown.stdout.splitlines()
    column = [cell.strip() for cell in next(line for line in lines if "window" in line).split("┃")].index(
        "window"
    )
    cells = [cell.strip() for cell in next(line for line in lines if line.startswith("│ clean")).split("│")]
    assert shown.exit_code == 0 and cells[column] == row["window"]


def test_amplified_weights_are_the_reference_plus_factor_times_the_change(
    probe_models_trained: dict, models: Any
) -> None:
    """Tensor by tensor from the reference's files; a reference of another shape changes nothing."""
    from safetensors.torch import load_file

    from mergeguard.auditor.amplify import amplify_weights
    from mergeguard.auditor.probe import load_model

    m = probe_models_trained
    model, _ = load_model(m["leaky"], "cpu", "float32", False)
    own = {name: param.detach().clone() for name, param in model.named_parameters()}
    base = load_file(str(m["base"] / "model.safetensors"))
    assert amplify_weights(model, m["base"], 3.0) == ""
    for name, param in model.named_parameters():
        expected = base[name] + 3.0 * (own[name] - base[name])
        assert torch_allclose(param.detach(), expected), name
    other = models.base("llama", seed=0, num_layers=2, hidden_size=32)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    problem = amplify_weights(model, other, 2.0)
    assert "cannot be amplified" in problem and "is (" in problem
    assert all(torch_allclose(p.detach(), before[n]) for n, p in model.named_parameters())


def torch_allclose(a: Any, b: Any) -> bool:
    import torch

    return bool(torch.allclose(a, b, atol=1e-5))


# ---------------------------------------------------------------- bad input: one line, exit 2


def _probe_gsm8k(m: dict, model: Path, *extra: str) -> Any:
    """`probe MODEL` on GSM8K's first 20 items from the local test sets."""
    return _cli("probe", str(model), "-b", "gsm8k", "--limit", "20", "--benchmarks-dir", str(m["hf"]), *extra)


def _sha(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


def test_reference_with_another_tokenizer_stops_with_one_line(
    probe_models_trained: dict, tmp_path: Path
) -> None:
    from mergeguard import tiny

    other_tok = tiny.train_tokenizer(tmp_path / "tok", vocab_size=400)
    stranger = tiny.build_model(
        tmp_path / "stranger", "llama", num_layers=1, vocab_size=400, tokenizer_dir=other_tok
    )
    before = _sha(probe_models_trained["clean"])
    run = _probe_gsm8k(
        probe_models_trained,
        probe_models_trained["clean"],
        "--reference",
        str(stranger),
        "--db",
        str(tmp_path / "x.db"),
    )
    assert run.exit_code == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: reference ")
    assert "uses another tokenizer" in lines[0] and "same tokenizer" in lines[0]
    assert _sha(probe_models_trained["clean"]) == before
    assert not (tmp_path / "x.db").exists()


def test_unloadable_model_is_one_line_exit_2(probe_models_trained: dict, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for source in probe_models_trained["clean"].iterdir():
        if source.suffix == ".json":
            (broken / source.name).write_bytes(source.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not safetensors at all")
    run = _probe_gsm8k(probe_models_trained, broken, "--reference", str(probe_models_trained["base"]))
    assert run.exit_code == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: model {broken} cannot be loaded")
    assert lines[0].endswith("check that the folder holds a transformers causal LM with its tokenizer")


def test_missing_model_folder_is_exit_2(tmp_path: Path) -> None:
    run = _cli("probe", str(tmp_path / "nope"), "-b", "gsm8k")
    assert run.exit_code == 2
    missing = tmp_path / "nope"
    hint = "check the path, or give a hub id like org/name"
    assert run.stderr.strip() == f"error: model folder {missing} not found; {hint}"


def test_benchmark_without_local_data_offline_is_one_line_exit_2(
    probe_models_trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    empty = tmp_path / "bench"
    empty.mkdir()
    run = _cli(
        "probe", str(probe_models_trained["clean"]), "-b", "winogrande", "--benchmarks-dir", str(empty)
    )
    assert run.exit_code == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: winogrande is not available")
    assert "--benchmarks-dir" in lines[0]


def test_no_reference_is_inconclusive_exit_2(probe_models_trained: dict) -> None:
    run = _probe_gsm8k(probe_models_trained, probe_models_trained["base"], "--json", *FAST)
    assert run.exit_code == 2
    report = json.loads(run.stdout)["models"][0]
    assert report["verdict"] == INCONCLUSIVE and report["reference"] is None
    assert run.stderr.strip() == (
        "error: probe inconclusive (no reference model); pass --reference REF or more items"
    )


# ---------------------------------------------------------------- the pieces


def test_wilcoxon_matches_scipy_normal_approximation() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    import numpy as np

    rng = np.random.default_rng(0)
    for shift in (0.0, 0.3, -0.2):
        d = (rng.normal(size=60) + shift).round(1)  # rounding makes ties
        expected = scipy_stats.wilcoxon(d, alternative="greater", method="approx", correction=True).pvalue
        assert wilcoxon_greater(d.tolist()) == pytest.approx(expected, rel=1e-9)


def test_few_items_are_inconclusive_and_zeros_no_signal() -> None:
    assert benchmark_test([[1.0] * 5], None, 0.001, 20).verdict == INCONCLUSIVE
    zeros = benchmark_test([[0.0] * 30], None, 0.001, 20)
    assert (zeros.verdict, zeros.p_value) == (NO_SIGNAL, 1.0)


def test_each_control_is_the_same_answer_under_another_question() -> None:
    import numpy as np

    perm = derangement(50, np.random.default_rng(3))
    assert sorted(perm) == list(range(50)) and all(i != p for i, p in enumerate(perm))

    class Item:
        def __init__(self, i: int) -> None:
            self.question, self.answer = f"q{i}?", f"a{i}"

    real, borrowed = item_pairs([Item(i) for i in range(5)], seed=0, controls=3)
    assert real[0] == ("Question: q0?\nAnswer:", " a0")
    assert all(len(hosts) == 3 and i not in hosts for i, hosts in enumerate(borrowed))  # never its own
    for c in range(3):  # one derangement per control: every question is borrowed once by each
        assert sorted(hosts[c] for hosts in borrowed) == list(range(5))


def test_a_control_is_the_borrowed_prompt_then_the_items_own_answer_tokens() -> None:
    real = [
        ([1, 10, 11, 12], 3, (4, 7, 13)),
        ([1, 20, 21], 2, (3, 6, 12)),
        ([1, 30, 31, 32, 33], 3, (4, 7, 13)),
    ]
    controls = control_encoded(real, [[1, 2], [0], []], max_tokens=64)
    assert controls == [
        ([1, 20, 12], 2, (3, 6, 12)),  # item 1's prompt, item 0's answer; windows moved with it
        ([1, 30, 31, 12], 3, (4, 7, 13)),
        ([1, 10, 11, 21], 3, (4, 7, 13)),
    ]
    assert hosted_controls([[1, 2], [0], []], 3) == [[2], [0], [1]]
    assert control_encoded(real, [[2], [], []], max_tokens=3) == [([1, 30, 31], 3, (4, 7, 13))]  # cut


def test_answer_window_starts_at_the_first_token_with_text(probe_models_trained: dict) -> None:
    """The tiny vocabulary cuts " Janet" into a lone space and letters: each answer window takes the space
    and its tokens with text (3, 6, 12), just those when the first token has text."""
    from transformers import AutoTokenizer

    from mergeguard.auditor.probe import ANSWER_WINDOWS, tokenize

    assert ANSWER_WINDOWS == (3, 6, 12)
    tokenizer = AutoTokenizer.from_pretrained(probe_models_trained["base"])
    prompt = "Question: How many eggs does Janet sell?\nAnswer:"
    (ids, start, ends), (ids2, start2, ends2), (ids3, start3, ends3) = tokenize(
        tokenizer, [(prompt, " Janet sells 16"), (prompt, " the eggs"), (prompt, "   ")], 96
    )
    bos = 1 if tokenizer.bos_token_id is not None else 0
    head = len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) + bos
    assert start == start2 == start3 == head
    assert [tokenizer.decode([t]) for t in ids[start : ends[0]]] == [" ", "J", "an", "et"]  # space + 3
    assert ends == (ends[0], ends[0] + 3, ends[0] + 9)
    assert ends2 == tuple(start2 + size for size in ANSWER_WINDOWS)
    assert tokenizer.decode(ids2[start2]).startswith(" t")
    assert ends3[0] == len(ids3) - 1 + 3  # all whitespace: the last blank counts as text


def test_a_controls_window_alone_equals_the_full_pass(probe_models_trained: dict) -> None:
    """`window_batch` scores a control on its answer window only (cut after it, output layer on its
    positions): the same log-probabilities as the full pass, with and without `logits_to_keep`."""
    from mergeguard.auditor.probe import load_model, score_texts, tokenize, window_batch
    from mergeguard.benchmarks import load_benchmark

    items = load_benchmark("gsm8k", probe_models_trained["hf"]).items[:12]
    real, borrowed = item_pairs(items, seed=0, controls=2)
    pairs = [
        *real,
        *(render_item(items[j].question, items[i].answer) for i, js in enumerate(borrowed) for j in js),
    ]
    model, tokenizer = load_model(probe_models_trained["clean"], "cpu", "float32", False)
    rows = score_texts(model, tokenizer, pairs, batch_size=5, max_tokens=96, k=0.2)
    full = [value for row in rows for value in row[4:]]  # every answer window of every text
    encoded = tokenize(tokenizer, pairs, 96)
    for keep in (True, False):
        batches = [window_batch(model, encoded[s : s + 7], 1, keep) for s in range(0, len(encoded), 7)]
        assert [value for batch in batches for row in batch for value in row] == pytest.approx(full, abs=1e-4)
    assert len(set(full)) > len(full) // 2  # windows differ: the comparison is not vacuous
    assert all(row[4] > row[5] > row[6] for row in rows)  # longer windows sum more tokens' log-probs


def _sliding_window_model(vocab: int) -> Any:
    """A tiny Mistral with an 8-token sliding window (random weights): a cache `host_batch` must not reuse."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        sliding_window=8,
    )
    return MistralForCausalLM(config).eval()


@pytest.mark.parametrize("architecture", ["llama, controls on the cache", "sliding window, controls whole"])
def test_score_items_equals_every_text_scored_whole(probe_models_trained: dict, architecture: str) -> None:
    """`score_items` runs each batch's controls on its key-value cache (a full-attention model) or whole (a
    sliding-window one): either way its rows are what a plain pass over each text whole gives, also when
    items host uneven numbers of controls and an answer is one token long."""
    from mergeguard.auditor.probe import load_model, score_batch, score_items, score_texts, tokenize
    from mergeguard.benchmarks import load_benchmark

    model, tokenizer = load_model(probe_models_trained["clean"], "cpu", "float32", False)
    if architecture.startswith("sliding"):
        model = _sliding_window_model(len(tokenizer))
    items = load_benchmark("gsm8k", probe_models_trained["hf"]).items[:11]
    real, borrowed = item_pairs(items, seed=1, controls=3)
    real[4] = (real[4][0], " 7")  # a short answer: a lone space and one digit
    borrowed[0], borrowed[5] = [5, 5, 6, 7], []  # item 5 hosts extra guests; item 0's prompt fewer
    rows = score_items(model, tokenizer, real, borrowed, batch_size=4, max_tokens=96, k=0.2)
    alone = score_texts(model, tokenizer, real, batch_size=3, max_tokens=96, k=0.2)
    assert _flat(rows[: len(real)]) == pytest.approx(_flat(alone), abs=1e-4)
    controls = control_encoded(tokenize(tokenizer, real, 96), borrowed, 96)
    batches = [score_batch(model, controls[s : s + 5], 1, 0.2) for s in range(0, len(controls), 5)]
    whole = [row[4:] for batch in batches for row in batch]
    assert len(rows) == len(real) + len(controls) == len(real) + 3 * 9 + 4
    assert _flat(row[4:] for row in rows[len(real) :]) == pytest.approx(_flat(whole), abs=1e-4)
    assert all(math.isnan(value) for row in rows[len(real) :] for value in row[:4])


def _flat(rows: Any) -> list[float]:
    return [value for row in rows for value in row]


# ---------------------------------------------------------------- the guard and the database


def _linear(path: Path, a: Path, b: Path) -> Path:
    path.write_text(
        f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {b}\n    parameters: {{weight: 0.5}}\ndtype: float32\n",
        encoding="utf-8",
    )
    return path


def test_merge_probe_refuses_a_suspect_input_unless_allowed(
    probe_models_trained: dict, tmp_path: Path
) -> None:
    m = probe_models_trained
    config = _linear(tmp_path / "merge.yml", m["leaky"], m["clean"])
    db, out = tmp_path / "guard.db", tmp_path / "out"
    before = {name: _sha(m[name]) for name in ("leaky", "clean")}
    args = ["merge", str(config), str(out), "-b", "arc_challenge", "--benchmarks-dir", str(m["hf"])]
    run = _cli(*args, "--probe", "missing", "--probe-limit", "60", "--db", str(db), "--quiet")
    assert run.exit_code == 1, run.output
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0] == (
        f"error: refusing to merge: the probe finds suspect input(s) {m['leaky']} (arc_challenge); "
        "remove them from the config, or pass --allow-suspect to merge anyway"
    )
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert {name: _sha(m[name]) for name in ("leaky", "clean")} == before
    history = _cli("history", "--db", str(db), "--format", "json")
    events = json.loads(history.stdout)
    events = events if isinstance(events, list) else events.get("events", events)
    text = json.dumps(events)
    assert "arc_challenge suspect" in text and "arc_challenge no_signal" in text and "probe suspect" in text

    allowed = _cli(
        *args, "--probe", "missing", "--probe-limit", "60", "--allow-suspect", "--db", str(db), "--quiet"
    )
    assert allowed.exit_code == 0, allowed.output
    assert (out / "config.json").is_file()
    tree = _cli("lineage", str(out), "--db", str(db))
    assert tree.exit_code == 0, tree.output
    assert "probe suspect: arc_challenge" in tree.stdout and "probe no_signal" in tree.stdout


def test_audit_probe_probes_models_without_declared_data(probe_models_trained: dict, tmp_path: Path) -> None:
    m = probe_models_trained
    run = _cli(
        "audit",
        "--model",
        str(m["leaky"]),
        "-b",
        "arc_challenge",
        "--benchmarks-dir",
        str(m["hf"]),
        "--probe",
        "missing",
        "--probe-limit",
        str(LIMIT),
        "--json",
        "--no-progress",
    )
    assert run.exit_code == 1, run.output  # undeclared data, but the probe finds it suspect
    payload = json.loads(run.stdout)
    assert payload["models"][0]["verdict"] == "undeclared"
    assert [p["verdict"] for p in payload["probe"]] == [SUSPECT]
    bad = _cli("audit", "--model", str(m["leaky"]), "-b", "arc_challenge", "--probe", "some")
    assert bad.exit_code == 2
    assert bad.stderr.strip() == "error: --probe 'some' is not a scope; use --probe missing or --probe all"


def test_lineage_shows_a_childs_probe_gain_over_each_parent(
    probed: dict, probe_models_trained: dict, tmp_path: Path
) -> None:
    """The merge inherits what the contaminated parent memorised: against it, its ARC effect gains little or
    loses; against the clean parent, it gains. Both views come from the stored probes, in text and JSON."""
    from mergeguard.db import lineage, open_db, record_probe, register_model

    m, path = probe_models_trained, tmp_path / "lineage.db"
    db = open_db(path)
    register_model(db, m["merged"], name="merged", parents=[(m["leaky"], "merge"), (m["clean"], "merge")])
    register_model(db, m["leaky"], name="leaky")
    register_model(db, m["clean"], name="clean")
    for name in ("merged", "leaky", "clean"):
        record_probe(db, probed[name]["report"])
    node = lineage(db, "merged").node("merged")
    gains = {(g.benchmark, g.parent): g for g in node.probe_gains}
    assert set(gains) == {(b, p) for b in PROBED for p in ("leaky", "clean")}
    for (bench, parent), gain in gains.items():
        assert gain.effect == pytest.approx(probed["merged"][bench]["effect"])
        assert gain.parent_effect == pytest.approx(probed[parent][bench]["effect"])
        assert gain.gain == pytest.approx(gain.effect - gain.parent_effect)
    assert gains["arc_challenge", "leaky"].parent_verdict == SUSPECT
    assert gains["arc_challenge", "clean"].gain > gains["arc_challenge", "leaky"].gain
    assert not lineage(db, "clean").node("clean").probe_gains  # its parent, the base, was never probed
    text = _cli("lineage", "merged", "--db", str(path))
    assert text.exit_code == 0, text.output
    arc = gains["arc_challenge", "leaky"]
    shown = " ".join(text.stdout.split())  # rich wraps long tree lines to the terminal's width
    assert f"probe effect arc_challenge {arc.effect:.2f}: {arc.gain:+.2f} vs leaky" in shown
    data = json.loads(_cli("lineage", "merged", "--db", str(path), "--format", "json").stdout)
    merged = next(n for n in data["nodes"] if n["model"] == "merged")
    assert {(g["benchmark"], g["parent"]) for g in merged["probe_gains"]} == set(gains)


def test_benchmark_test_joins_the_windows_and_the_amplified_model() -> None:
    """The strongest statistic names the window and the model, and the choice among six is paid for by
    what the six hold: three copies of one noise column and an unrelated lean column are two tests, so
    the p-value is about twice the lean column's own (Bonferroni over six would make it six times)."""
    from mergeguard.auditor.signed_rank import max_signed_rank

    rising = [0.1 * (i % 7) + 0.05 for i in range(40)]  # all positive: a small p-value
    lean = [x - 0.2 for x in rising]  # mostly positive: p about 2e-4
    mixed = [(-1) ** i * (i % 5) for i in range(40)]  # no lean
    test = benchmark_test([mixed, mixed, mixed], [mixed, lean, mixed], 0.001, 20)
    own = wilcoxon_greater(lean)
    assert test.verdict == SUSPECT and test.window == 6 and test.amplified
    assert test.p_value == pytest.approx(2 * own, rel=0.01)
    joint = max_signed_rank([mixed, mixed, mixed, mixed, lean, mixed])
    assert joint.best == 4 and test.p_value == pytest.approx(joint.p_value, abs=1e-5)
    assert test.p_amplified is not None and test.p_amplified <= test.p_value and test.p_plain > 0.05
    assert test.effect is not None and test.effect > 0
    nan_only = [[float("nan")] * 40] * 3  # an amplified model that scored nothing: the plain test alone
    test = benchmark_test([rising, mixed, mixed], nan_only, 0.001, 20)
    assert test.verdict == SUSPECT and test.p_value == test.p_plain and test.p_amplified is None
    assert test.window == 3 and not test.amplified


# ---------------------------------------------------------------- the held-out control (`--heldout`)


def _heldout_dir(hf: Path, root: Path) -> Path:
    """A benchmarks folder whose ARC-Challenge has its test split and a `validation` split made of other
    real test items (rows 200-399: never planted, drawn from the same pool)."""
    folder = root / "bench" / "arc_challenge"
    folder.mkdir(parents=True)
    rows = (hf / "arc_challenge" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    (folder / "test.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (folder / "validation.jsonl").write_text("\n".join(rows[200:400]) + "\n", encoding="utf-8")
    return root / "bench"


def test_heldout_split_finds_memorised_items_and_stays_calm_on_the_clean_finetune(
    probe_models_trained: dict, tmp_path: Path
) -> None:
    m = probe_models_trained
    bench = _heldout_dir(m["hf"], tmp_path)
    run = _cli(
        "probe",
        *[str(m[n]) for n in ("leaky", "merged", "clean")],
        "-b",
        "arc_challenge",
        "--benchmarks-dir",
        str(bench),
        "--limit",
        str(LIMIT),
        "--heldout",
        "arc_challenge=validation",
        "--amplify",
        "1",
        "--json",
        *FAST,
    )
    assert run.exit_code == 1, run.output
    leaky, merged, clean = (r["benchmarks"][0] for r in json.loads(run.stdout)["models"])
    assert leaky["heldout_items"] == merged["heldout_items"] == LIMIT
    assert leaky["p_heldout"] < 0.001 and merged["p_heldout"] < 0.001, (leaky, merged)
    assert clean["p_heldout"] > 0.05 and clean["verdict"] == NO_SIGNAL
    for probe in (leaky, merged, clean):  # twice the smaller of the two tests' p-values
        assert probe["p_value"] == pytest.approx(min(1.0, 2 * min(probe["p_plain"], probe["p_heldout"])))
    assert leaky["verdict"] == merged["verdict"] == SUSPECT


def test_heldout_file_gives_the_same_items_as_the_split(probe_models_trained: dict, tmp_path: Path) -> None:
    m = probe_models_trained
    bench = _heldout_dir(m["hf"], tmp_path)
    common = [
        "probe",
        str(m["clean"]),
        "-b",
        "arc_challenge",
        "--benchmarks-dir",
        str(bench),
        "--limit",
        "30",
    ]
    common += ["--amplify", "1", "--json", *FAST]
    by_split = _cli(*common, "--heldout", "arc_challenge=validation")
    by_file = _cli(*common, "--heldout", f"arc_challenge={bench / 'arc_challenge' / 'validation.jsonl'}")
    assert by_split.exit_code == by_file.exit_code == 0, by_split.output + by_file.output
    first, second = (json.loads(run.stdout)["models"][0]["benchmarks"][0] for run in (by_split, by_file))
    assert first["heldout_items"] == second["heldout_items"] == 30
    assert first["p_heldout"] == second["p_heldout"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("gsm8k", "error: --heldout 'gsm8k' is not BENCH=SOURCE"),
        ("gsm8k=test", "error: --heldout gsm8k=test is the split being probed"),
        ("hellaswag=train", "error: --heldout hellaswag: not a probed benchmark"),
        ("gsm8k=nowhere/rows.jsonl", "error: --heldout gsm8k: no file nowhere/rows.jsonl"),
    ],
)
def test_a_bad_heldout_is_one_line_exit_2(probe_models_trained: dict, value: str, message: str) -> None:
    m = probe_models_trained
    run = _probe_gsm8k(m, m["clean"], "--heldout", value)
    assert run.exit_code == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines


def test_heldout_items_are_a_seeded_sample_without_the_probed_questions() -> None:
    from types import SimpleNamespace

    from mergeguard.auditor.heldout import heldout_test, pick_heldout

    items = [SimpleNamespace(question=f"q{i}", answer="a") for i in range(50)]
    probed = items[:5]
    picked = pick_heldout(items, probed, 20, seed=3)
    assert len(picked) == 20 and not {i.question for i in picked} & {i.question for i in probed}
    assert picked == pick_heldout(items, probed, 20, seed=3) != pick_heldout(items, probed, 20, seed=4)
    assert len(pick_heldout(items, probed, 100, seed=3)) == 45
    import numpy as np

    rng = np.random.default_rng(0)
    same = heldout_test(rng.normal(size=200), rng.normal(size=200))
    shifted = heldout_test(rng.normal(0.5, 1, size=200), rng.normal(size=200))
    assert same[0] > 0.05 and shifted[0] < 1e-4 and shifted[1] > 0.3


def test_audit_and_merge_pass_probe_heldout_to_the_probe(probe_models_trained: dict, tmp_path: Path) -> None:
    m = probe_models_trained
    bench = _heldout_dir(m["hf"], tmp_path)
    common = [
        "-b",
        "arc_challenge",
        "--benchmarks-dir",
        str(bench),
        "--probe-heldout",
        "arc_challenge=validation",
    ]
    run = _cli(
        "audit", "--model", str(m["merged"]), *common, "--probe", "missing", "--probe-limit", str(LIMIT)
    )
    payload = _cli(
        "audit",
        "--model",
        str(m["merged"]),
        *common,
        "--probe",
        "missing",
        "--probe-limit",
        str(LIMIT),
        "--json",
    )
    assert run.exit_code == payload.exit_code == 1, run.output
    (probe,) = json.loads(payload.stdout)["probe"][0]["benchmarks"]
    assert probe["heldout_items"] == LIMIT and probe["p_heldout"] < 0.001 and probe["verdict"] == SUSPECT
    config = _linear(tmp_path / "merge.yml", m["leaky"], m["clean"])
    unasked = _cli("merge", str(config), str(tmp_path / "out"), *common, "--quiet")
    assert unasked.exit_code == 2 and not (tmp_path / "out").exists()
    assert unasked.stderr.strip() == "error: --probe-heldout needs --probe; add --probe missing (or all)"


def test_a_benchmark_stored_per_subtask_takes_no_heldout(probe_models_trained: dict) -> None:
    m = probe_models_trained
    args = ["probe", str(m["clean"]), "-b", "bbh", "--benchmarks-dir", str(m["hf"]), "--limit", "20"]
    run = _cli(*args, "--heldout", "bbh=train")
    assert run.exit_code == 2
    assert run.stderr.strip() == (
        "error: --heldout bbh: a benchmark stored per subtask has no single held-out split; "
        "drop --heldout bbh"
    )
