"""Issue 17: one coherent CLI, and a database that records what the tool saw.

Real tiny models (the `models` factory), the demo's real quiz benchmark and datasets; every command runs
through the CLI entry point, as a user types it."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pytest
from quiz_setup import merge_config, quiz_args, quiz_family_data

from mergeguard.cli import main


@pytest.fixture(scope="module")
def family(models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A base, a clean fine-tune, a second clean one, and one fine-tuned on 12 of the quiz's items."""
    root = tmp_path_factory.mktemp("coherence")
    data = quiz_family_data(models, root, clean_rows=40, leaked=12, base_seed=21)
    base = data["base"]

    def ft(seed: int, dataset: Path) -> Path:
        return models.finetune(base, seed=seed, card={"base_model": str(base), "datasets": [str(dataset)]})

    return {
        "root": root,
        "spec": data["spec"],
        "base": base,
        "a": ft(1, data["math"]),
        "b": ft(2, data["writing"]),
        "leaky": ft(3, data["leaky"]),
    }


def _bench(family: dict[str, Path], tmp_path: Path) -> list[str]:
    return quiz_args(family["spec"], tmp_path / "cache")


def _json(capsys: pytest.CaptureFixture[str]) -> object:
    return json.loads(capsys.readouterr().out)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- the database records what the tool saw


def test_audit_db_stores_the_audit_and_the_card_parent(family, tmp_path, capsys) -> None:
    db = tmp_path / "project" / "mg.db"
    db.parent.mkdir()
    code = main(["audit", "--model", str(family["leaky"]), "--db", str(db), "-q", *_bench(family, tmp_path)])
    assert code == 1  # contaminated: the guard's "no", not an error
    capsys.readouterr()
    assert main(["history", "--db", str(db), "--format", "json"]) == 0
    events = _json(capsys)
    assert [(e["kind"], e["model"]) for e in events] == [("audit", family["leaky"].name)]
    assert events[0]["detail"].startswith("contaminated (12 findings)")
    assert main(["lineage", str(family["leaky"]), "--db", str(db), "--json"]) == 0
    graph = _json(capsys)
    assert [(e["child"], e["parent"], e["relation"]) for e in graph["edges"]] == [
        (family["leaky"].name, family["base"].name, "finetune")
    ]
    refs = {node["ref"] for node in graph["nodes"]}
    assert refs == {str(family["leaky"].resolve()), str(family["base"].resolve())}  # absolute paths


def test_refused_merge_is_in_history_and_writes_nothing(family, tmp_path, capsys) -> None:
    config = merge_config(tmp_path / "all.yml", family["base"], [family["a"], family["leaky"]])
    before = _sha(config)
    db = tmp_path / "mg.db"
    code = main(
        ["merge", str(config), str(tmp_path / "out"), "-q", "--db", str(db), *_bench(family, tmp_path)]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: refusing to merge: contaminated input(s)") and err.count("\n") == 1
    assert not (tmp_path / "out").exists() and _sha(config) == before
    assert main(["history", "--db", str(db), "--format", "json"]) == 0
    merges = [e for e in _json(capsys) if e["kind"] == "merge"]
    assert len(merges) == 1 and merges[0]["model"] == "out"
    assert (
        merges[0]["detail"] == f"ties of {family['base'].name}, {family['a'].name}, {family['leaky'].name} "
        f"[refused: contaminated {family['leaky'].name}]"
    )
    assert main(["history", str(family["leaky"]), "--db", str(db), "--format", "json"]) == 0
    assert any(e["kind"] == "merge" and "refused" in e["detail"] for e in _json(capsys))
    assert main(["leaderboard", "--db", str(db), "--format", "json"]) == 0
    assert "out" not in [row["model"] for row in _json(capsys)["rows"]]  # never merged: not on the board


def test_unscored_merge_is_on_the_leaderboard(family, tmp_path, capsys) -> None:
    config = merge_config(tmp_path / "clean.yml", family["base"], [family["a"], family["b"]])
    db = tmp_path / "mg.db"
    code = main(
        ["merge", str(config), str(tmp_path / "clean"), "--db", str(db), "--json", *_bench(family, tmp_path)]
    )
    summary = _json(capsys)
    assert (
        code == 0
        and summary["verdict"] == "clean"
        and summary["out_dir"] == str((tmp_path / "clean").resolve())
    )
    assert main(["leaderboard", "--db", str(db), "--format", "json"]) == 0
    rows = _json(capsys)["rows"]
    assert [(r["model"], r["scored"], r["average"], r["verdict"]) for r in rows] == [
        ("clean", False, None, "clean")
    ]
    assert main(["leaderboard", "--db", str(db)]) == 0
    assert "unscored" in capsys.readouterr().out
    assert main(["leaderboard", "--db", str(db), "--format", "csv"]) == 0
    (row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert row["#"] == "" and row["average"] == "unscored" and row["check"] == ""


# ---------------------------------------------------------------- one option name per idea


def test_findings_show_n_more_and_all(family, tmp_path, capsys) -> None:
    args = ["audit", "--model", str(family["leaky"]), "-q", *_bench(family, tmp_path)]
    assert main([*args, "--show", "2"]) == 1
    out = capsys.readouterr().out
    assert out.count("demo_quiz test item") == 2 and "… 10 more findings (--show all lists them)" in out
    assert main([*args, "--show", "all"]) == 1
    out = capsys.readouterr().out
    assert out.count("demo_quiz test item") == 12 and "more findings" not in out
    assert main([*args, "--show", "many"]) == 2
    assert capsys.readouterr().err == "error: --show 'many' is not a count; give a number or `all`\n"


def test_format_everywhere_with_json_alias(family, tmp_path, capsys) -> None:
    args = ["audit", "--model", str(family["a"]), *_bench(family, tmp_path)]
    assert main([*args, "--json"]) == 0
    as_alias = _json(capsys)
    assert main([*args, "--format", "json"]) == 0
    assert _json(capsys)["models"] == as_alias["models"]
    assert main([*args, "--format", "csv"]) == 0
    (row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert row["model"] == str(family["a"]) and row["benchmark"] == "demo_quiz" and row["contaminated"] == "0"
    assert main([*args, "--format", "markdown"]) == 0
    assert capsys.readouterr().out.startswith("| model | kind | benchmark |")
    assert main([*args, "--format", "xml"]) == 2
    assert capsys.readouterr().err == "error: unknown format 'xml'; use --format table|json|csv|markdown\n"
    assert main(["benchmarks", "list", "--benchmark-spec", str(family["spec"]), "--format", "csv"]) == 0
    assert "demo_quiz" in capsys.readouterr().out


def test_benchmark_takes_commas_and_repeats(family, tmp_path, capsys) -> None:
    spec = ["--benchmark-spec", str(family["spec"]), "--cache-dir", str(tmp_path / "cache")]
    assert (
        main(
            [
                "audit",
                "--dataset",
                str(family["root"] / "data" / "leaky.jsonl"),
                *spec,
                "-b",
                "demo_quiz,nope",
            ]
        )
        == 2
    )
    assert "nope" in capsys.readouterr().err


# ---------------------------------------------------------------- mergekit's and lm-eval's command lines


def test_merge_accepts_every_mergekit_yaml_flag(family, tmp_path, capsys) -> None:
    config = merge_config(tmp_path / "clean.yml", family["base"], [family["a"], family["b"]])
    flags = [
        "-v", "--trust-remote-code", "-j", "2", "--safe-serialization", "--clone-tensors",
        "--lora-merge-cache", str(tmp_path / "lora"), "--lora-merge-dtype", "float16",
        "--transformers-cache", str(tmp_path / "hf"), "--async-write", "--write-threads", "2",
        "--read-to-gpu", "--no-read-to-gpu", "--multi-gpu", "--no-multi-gpu", "--no-cuda",
        "--lazy-unpickle", "--low-cpu-memory", "--copy-tokenizer", "--write-model-card",
        "--no-allow-crimes", "--no-unsafe-truncate-embeddings", "--out-shard-size", "1B",
        "--random-seed", "3", "--quiet",
    ]  # fmt: skip
    code = main(
        ["merge", str(config), str(tmp_path / "out"), "--no-audit", "--db", str(tmp_path / "mg.db"), *flags]
    )
    err = capsys.readouterr().err
    assert code == 0 and (tmp_path / "out" / "config.json").is_file()
    warnings = [line for line in err.splitlines() if "mergekit-yaml flags" in line]
    assert warnings == [
        "warning: -v, -j/--num-threads, --lora-merge-cache, --lora-merge-dtype, --clone-tensors, "
        "--async-write, --write-threads: mergekit-yaml flags accepted but without effect in mergeguard"
    ]


def test_mergekit_help_lists_no_flag_merge_lacks() -> None:
    """Every option `mergekit-yaml --help` lists (mergekit 0.1.5, when installed as the test oracle)."""
    import os
    import re
    import subprocess

    import typer

    from mergeguard.cli import app

    python = os.environ.get("MERGEKIT_PYTHON")
    if not python:
        pytest.skip("MERGEKIT_PYTHON is not set (the mergekit oracle is optional)")
    text = subprocess.run(
        [python, "-m", "mergekit.scripts.run_yaml", "--help"], capture_output=True, text=True, check=True
    ).stdout
    heads = [
        re.split(r"\s{2,}", line.strip())[0] for line in text.splitlines() if line.strip().startswith("-")
    ]
    theirs = {flag for head in heads for flag in re.findall(r"--?[a-z][\w-]*", head)} - {"-h", "--help"}
    merge = typer.main.get_command(app).commands["merge"]  # type: ignore[attr-defined]
    ours = {name for param in merge.params for name in [*param.opts, *param.secondary_opts]}
    assert len(theirs) > 30 and sorted(theirs - ours) == []


def test_check_rule_compares_with_the_base() -> None:
    """A merge whose perplexity is 7x its base's is not `ok`, even beside a parent nearly as bad."""
    from mergeguard.merge.sanity import judge

    parents = {"ft": 60.0, "base": 10.0}
    verdict, reasons = judge(70.0, 0.1, parents, {"ft": 0.1, "base": 0.1}, vocab_size=4000, base="base")
    assert verdict == "degraded" and reasons == ["perplexity 70 is 7x the base model's (10)"]
    assert judge(70.0, 0.1, parents, {}, vocab_size=4000)[0] == "ok"  # the old rule, worst parent only
    assert judge(11.0, 0.1, parents, {}, vocab_size=4000, base="base")[0] == "ok"
    assert judge(120.0, 0.1, parents, {}, vocab_size=4000, base="base")[0] == "broken"


# ---------------------------------------------------------------- output that reads well


def test_read_commands_fit_80_columns_without_cutting_names(tmp_path, capsys, monkeypatch) -> None:
    from mergeguard.db import open_db, record_merge

    db_path = tmp_path / "mg.db"
    db = open_db(db_path)
    long_name = "a-rather-long-merged-model-name-that-must-stay-whole"
    record_merge(db, output=tmp_path / long_name, config_text="x", method="ties", parents=[])
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["leaderboard", "--db", str(db_path)]) == 0
    out = capsys.readouterr().out
    assert long_name in out and max(len(line) for line in out.splitlines()) <= 80
    assert main(["history", "--db", str(db_path)]) == 0
    out = capsys.readouterr().out
    assert long_name in out and max(len(line) for line in out.splitlines()) <= 80


def test_json_numbers_are_rounded() -> None:
    from mergeguard.db.render import to_json

    assert json.loads(to_json({"a": 27.500000000000004, "b": [0.1 + 0.2]})) == {"a": 27.5, "b": [0.3]}


def test_eval_takes_lm_eval_spellings_and_prints_its_table(family, tmp_path, capfd, monkeypatch) -> None:
    """lm-eval's flags, its results table, no `fatal: not a git repository` (run outside any repository),
    results beside a project's database, and a --limit score marked on the leaderboard."""
    monkeypatch.chdir(tmp_path)
    project = tmp_path / "project"
    project.mkdir()
    db = project / "mg.db"
    args = ["eval", "--model", "hf", "--model_args", f"pretrained={family['leaky']},dtype=float32"]
    args += ["--benchmark-spec", str(family["spec"]), "--num_fewshot", "0", "--batch_size", "4"]
    args += ["--limit", "6", "--seed", "1", "--device", "cpu", "--db", str(db), "--wandb_args", "project=x"]
    assert main(args) == 0
    out, err = capfd.readouterr()
    assert "|  Tasks  |Version|Filter|n-shot| Metric |" in out and "|demo_quiz|" in out
    assert "fatal" not in err and "not a git repository" not in err
    assert err.count("--wandb_args: lm-eval flags accepted, without effect here") == 1
    assert list((project / "evals").rglob("results_*.json"))
    assert main(["leaderboard", "--db", str(db), "--format", "markdown"]) == 0
    out = capfd.readouterr().out
    assert "*" in out.splitlines()[2] and "lm-eval --limit" in out
    assert main(["lineage", family["leaky"].name, "--db", str(db), "--json"]) == 0
    edges = json.loads(capfd.readouterr().out)["edges"]
    assert [(e["child"], e["parent"]) for e in edges] == [(family["leaky"].name, family["base"].name)]


def _commands() -> list[list[str]]:
    import typer

    from mergeguard.cli import app

    def walk(group: object, prefix: list[str]) -> list[list[str]]:
        out = []
        for name, command in group.commands.items():  # type: ignore[attr-defined]
            out += walk(command, [*prefix, name]) if hasattr(command, "commands") else [[*prefix, name]]
        return out

    return walk(typer.main.get_command(app), [])


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_every_command_help_has_an_example(command: list[str]) -> None:
    from typer.testing import CliRunner

    from mergeguard.cli import app

    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert f"Example: mergeguard {' '.join(command)} " in result.output


def test_eval_keeps_the_tasks_that_worked(family, shared_data, tmp_path, capfd) -> None:
    """gsm8k generates 256 tokens, more than the tiny model's context: lm-eval fails on it. ARC's scores
    are stored all the same, and the one error line names the task that failed."""
    db = tmp_path / "mg.db"
    args = ["eval", str(family["a"]), "--tasks", "arc_challenge,gsm8k", "--limit", "4", "--device", "cpu"]
    code = main([*args, "--benchmarks-dir", str(shared_data / "hf"), "--db", str(db), "-q"])
    err = capfd.readouterr().err
    assert code == 2
    assert err.startswith("error: task gsm8k failed: lm-eval failed on ") and err.count("\n") == 1
    assert err.rstrip().endswith("the other tasks' scores are stored; fix that task and evaluate it again")
    assert main(["leaderboard", "--db", str(db), "--format", "json"]) == 0
    (row,) = json.loads(capfd.readouterr().out)["rows"]
    assert row["scores"].keys() == {"arc_challenge"} and row["limited"] == ["arc_challenge"]


def test_check_finds_the_base_in_the_database(family, tmp_path) -> None:
    """`check MERGE` with no --against takes the parents and the base from the merge's lineage."""
    from mergeguard.db import open_db, parents_of
    from mergeguard.db.queries import base_of

    config = merge_config(tmp_path / "clean.yml", family["base"], [family["a"], family["b"]])
    db = tmp_path / "mg.db"
    assert main(["merge", str(config), str(tmp_path / "out"), "--no-audit", "-q", "--db", str(db)]) == 0
    store = open_db(db, write=False)
    assert base_of(store, str(tmp_path / "out")) == str(family["base"].resolve())
    assert len(parents_of(store, str(tmp_path / "out"))) == 3
    assert base_of(store, str(family["a"])) is None


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_no_option_name_is_given_twice(command: list[str]) -> None:
    """Shared options (`-q`, `-b`, `--format`, lm-eval's and mergekit's spellings) never shadow another."""
    from collections import Counter

    import typer

    from mergeguard.cli import app

    group = typer.main.get_command(app)
    for name in command:
        group = group.commands[name]  # type: ignore[attr-defined]
    names = Counter(o for param in group.params for o in [*param.opts, *param.secondary_opts])
    assert [name for name, count in names.items() if count > 1] == []


# ---------------------------------------------------------------- the shared options, on every command

# Commands whose output is a document, a file or a server, not rows: `--format table|json|...` has no
# meaning there (`report --format` chooses html or markdown).
NOT_TABULAR = {"card", "demo", "report", "serve"}
# lm-eval's spelling keeps `-b` for --batch_size on `eval`: its benchmarks are `--tasks/-t/--benchmark`.
SHORT_B_ELSEWHERE = {"eval"}


def _params(command: list[str]) -> list[object]:
    import typer

    from mergeguard.cli import app

    group = typer.main.get_command(app)
    for name in command:
        group = group.commands[name]  # type: ignore[attr-defined]
    return list(group.params)  # type: ignore[attr-defined]


def _names(param: object) -> set[str]:
    return {*param.opts, *param.secondary_opts}  # type: ignore[attr-defined]


def shared_option_gaps(name: str, params: list[object]) -> list[str]:
    """#17's rule, one option name per idea: `-q/--quiet` everywhere, `--format` with its `--json` alias
    wherever the output is rows, `--benchmark` (with `-b`) taking repeats (and commas: `split_names`)."""
    names = set().union(*(_names(p) for p in params))
    gaps = [] if {"-q", "--quiet"} <= names else ["-q/--quiet"]
    if name not in NOT_TABULAR and not {"--format", "--json"} <= names:
        gaps.append("--format/--json")
    for param in (p for p in params if "--benchmark" in _names(p)):
        if not param.multiple or (name not in SHORT_B_ELSEWHERE and "-b" not in _names(param)):  # type: ignore[attr-defined]
            gaps.append("-b/--benchmark (repeatable)")
    return gaps


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_every_command_takes_the_shared_options(command: list[str]) -> None:
    assert shared_option_gaps(" ".join(command), _params(command)) == []


def test_the_rule_sees_a_missing_shared_option() -> None:
    """A command declared without `-q`, and with a single-valued `--benchmark`, breaks the rule."""
    import typer

    from mergeguard.cli.common import JSON_ALIAS, format_option

    bare = typer.Typer()

    @bare.command("bare")
    def bare_command(
        fmt: str = format_option(),
        as_json: bool = JSON_ALIAS,
        benchmark: str = typer.Option("", "--benchmark", "-b"),
    ) -> None:
        """Example: mergeguard bare"""

    params = list(typer.main.get_command(bare).params)
    assert shared_option_gaps("bare", params) == ["-q/--quiet", "-b/--benchmark (repeatable)"]


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_every_command_help_documents_its_exit_status(command: list[str]) -> None:
    from typer.testing import CliRunner

    from mergeguard.cli import app

    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0 and "Exit status: 0 " in result.output


def test_probe_formats_and_benchmarks(family, tmp_path, capsys) -> None:
    """`probe`: `--format csv|markdown|json` (`--json` its alias), `-b` with commas, `-q`; a probe without
    its reference model is inconclusive (exit 2), in every format."""
    args = ["probe", str(family["a"]), "-b", "demo_quiz,demo_quiz", "--benchmark-spec", str(family["spec"])]
    args += ["--reference", str(family["base"]), "--limit", "4", "-q"]
    assert main([*args, "--format", "csv"]) == 2
    out, err = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["benchmark"], r["verdict"], r["items"]) for r in rows] == [("demo_quiz", "inconclusive", "4")]
    assert err.startswith("error: probe inconclusive (") and err.count("\n") == 1
    assert main([*args, "--json"]) == 2
    document = _json(capsys)
    assert document["suspect"] is False and document["models"][0]["benchmarks"][0]["benchmark"] == "demo_quiz"
    assert main([*args, "--format", "markdown"]) == 2
    assert capsys.readouterr().out.startswith("| model | benchmark | items | verdict |")
