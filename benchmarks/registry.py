"""The one list of benchmarks mergeguard knows: the Open LLM Leaderboard's test sets, v1 and v2.

Sources for the facts below:
- hub ids, configs, splits, lm-eval task names, metrics and few-shot counts: lm-evaluation-harness 0.4.13's
  task configs (`lm_eval/tasks/{arc,hellaswag,mmlu,truthfulqa,winogrande,gsm8k}` for v1 and
  `lm_eval/tasks/leaderboard/*` for v2) and the leaderboard's About page
  (https://huggingface.co/docs/leaderboards/open_llm_leaderboard/about).
- v2 random baselines (score normalization, https://huggingface.co/docs/leaderboards/open_llm_leaderboard/
  normalization): 0 for generative tasks (IFEval, MATH), 1/number-of-choices for multiple choice: GPQA 0.25,
  MMLU-Pro 0.1, BBH and MuSR per subtask (BBH counts: the `doc_to_choice` lists of lm-eval's
  `leaderboard/bbh_mc/*.yaml`; MuSR: murder mysteries 2, object placements 5, team allocation 3 choices).
  v1 was not normalized (raw scores); v1 entries carry their chance level for reference only.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from mergeguard.errors import BenchmarkError

SUITES = ("v1", "v2")


@dataclass(frozen=True)
class BenchmarkSpec:
    """What a benchmark is, where its rows live, and how the leaderboard scored it.

    `configs` are the hub configs (for BBH, one per subtask); `split` is the split that is scored.
    `source_text` says which part of an item is shared source material rather than the test itself (a
    rule of `items.SOURCE_RULES`: IFEval's quoted passages, MMLU's reading passages); a training example
    that holds only that part quotes the same source, it has not seen the test. HellaSwag contexts and ARC
    questions are the test's own question (the gold ending / answer completes them): no source text.
    `twin_items`: the items come in pairs built to differ in a trigger word or two (WinoGrande), so the
    text two items share is test text of both, not a passage that identifies neither.
    `subsets`/`subsets_from` describe benchmarks stored as one file per subtask: BBH's subtasks are hub
    configs (`"config"`), MuSR's are hub splits (`"split"`). `row_filter` keeps only rows whose fields equal
    the given values (MATH-hard: Level 5). `data_files`/`fields` serve custom YAML benchmarks.
    """

    name: str
    hf_id: str
    configs: tuple[str, ...]
    split: str
    suites: tuple[str, ...]
    lm_eval_task: str
    metric: str
    num_fewshot: int
    random_baseline: float
    contained_in: tuple[str, ...] = ()
    id_field: str | None = None
    description: str = ""
    row_format: str = ""
    row_filter: tuple[tuple[str, str], ...] = ()
    subsets: tuple[str, ...] = ()
    subsets_from: str = ""
    subset_baselines: tuple[tuple[str, float], ...] = ()
    data_files: tuple[str, ...] = ()
    fields: tuple[tuple[str, str], ...] = ()
    source_text: str = ""
    twin_items: bool = False

    @property
    def format(self) -> str:
        """The row format (a key of `items.CONVERTERS`, or "custom")."""
        return self.row_format or self.name

    @property
    def is_custom(self) -> bool:
        return self.row_format == "custom"

    def baseline_for(self, subset: str | None = None) -> float:
        """The random-guess score that normalizes a subtask's score (the benchmark's if not per subtask)."""
        return dict(self.subset_baselines).get(subset or "", self.random_baseline)

    def hub_parts(self) -> list[tuple[str | None, str, str | None]]:
        """(config, split, subset) triples to load from the hub, in item order."""
        if self.subsets_from == "config":
            return [(subset, self.split, subset) for subset in self.subsets]
        if self.subsets_from == "split":
            config = self.configs[0] if self.configs else None
            return [(config, subset, subset) for subset in self.subsets]
        if not self.configs:
            return [(None, self.split, None)]
        subset_per_config = len(self.configs) > 1
        return [(config, self.split, config if subset_per_config else None) for config in self.configs]


# BBH: the 27 lukaemon/bbh subtasks. The leaderboard (leaderboard_bbh) scores 24 of them as multiple choice;
# dyck_languages, multistep_arithmetic_two and word_sorting are generative and not in leaderboard_bbh.
BBH_CHOICES: dict[str, int] = {
    "boolean_expressions": 2,
    "causal_judgement": 2,
    "date_understanding": 6,
    "disambiguation_qa": 3,
    "formal_fallacies": 2,
    "geometric_shapes": 11,
    "hyperbaton": 2,
    "logical_deduction_five_objects": 5,
    "logical_deduction_seven_objects": 7,
    "logical_deduction_three_objects": 3,
    "movie_recommendation": 6,
    "navigate": 2,
    "object_counting": 19,
    "penguins_in_a_table": 5,
    "reasoning_about_colored_objects": 18,
    "ruin_names": 6,
    "salient_translation_error_detection": 6,
    "snarks": 2,
    "sports_understanding": 2,
    "temporal_sequences": 4,
    "tracking_shuffled_objects_five_objects": 5,
    "tracking_shuffled_objects_seven_objects": 7,
    "tracking_shuffled_objects_three_objects": 3,
    "web_of_lies": 2,
}
BBH_SUBTASKS: tuple[str, ...] = tuple(
    sorted([*BBH_CHOICES, "dyck_languages", "multistep_arithmetic_two", "word_sorting"])
)
BBH_BASELINES = tuple((name, 1 / n) for name, n in BBH_CHOICES.items())

MUSR_CHOICES: dict[str, int] = {"murder_mysteries": 2, "object_placements": 5, "team_allocation": 3}
MUSR_BASELINES = tuple((name, 1 / n) for name, n in MUSR_CHOICES.items())


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


_SPECS: tuple[BenchmarkSpec, ...] = (
    # ---- leaderboard v1 ----
    BenchmarkSpec(
        name="arc_challenge",
        hf_id="allenai/ai2_arc",
        configs=("ARC-Challenge",),
        split="test",
        suites=("v1",),
        lm_eval_task="arc_challenge",
        metric="acc_norm",
        num_fewshot=25,
        random_baseline=0.25,
        id_field="id",
        description="AI2 Reasoning Challenge, challenge set: grade-school science multiple choice.",
        row_format="arc",
    ),
    BenchmarkSpec(
        name="arc_easy",
        hf_id="allenai/ai2_arc",
        configs=("ARC-Easy",),
        split="test",
        suites=(),
        lm_eval_task="arc_easy",
        metric="acc_norm",
        num_fewshot=25,
        random_baseline=0.25,
        id_field="id",
        description="AI2 Reasoning Challenge, easy set (not on the leaderboard; guarded all the same).",
        row_format="arc",
    ),
    BenchmarkSpec(
        name="hellaswag",
        hf_id="Rowan/hellaswag",
        configs=(),
        split="validation",
        suites=("v1",),
        lm_eval_task="hellaswag",
        metric="acc_norm",
        num_fewshot=10,
        random_baseline=0.25,
        id_field="ind",
        description="HellaSwag: pick the ending of an everyday scene (validation split is the scored one).",
    ),
    BenchmarkSpec(
        name="mmlu",
        hf_id="cais/mmlu",
        configs=("all",),
        split="test",
        suites=("v1",),
        lm_eval_task="mmlu",
        metric="acc",
        num_fewshot=5,
        random_baseline=0.25,
        source_text="lines_before_last",
        description="MMLU: 57 subjects of four-choice questions.",
    ),
    BenchmarkSpec(
        name="truthfulqa_mc",
        hf_id="truthfulqa/truthful_qa",
        configs=("multiple_choice",),
        split="validation",
        suites=("v1",),
        lm_eval_task="truthfulqa_mc2",
        metric="acc",
        num_fewshot=0,
        random_baseline=0.0,
        description="TruthfulQA multiple choice; the leaderboard reports mc2 (acc of truthfulqa_mc2).",
    ),
    BenchmarkSpec(
        name="winogrande",
        hf_id="allenai/winogrande",
        configs=("winogrande_xl",),
        split="validation",
        suites=("v1",),
        lm_eval_task="winogrande",
        metric="acc",
        num_fewshot=5,
        random_baseline=0.5,
        twin_items=True,
        description="WinoGrande: fill the blank with one of two options.",
    ),
    BenchmarkSpec(
        name="gsm8k",
        hf_id="openai/gsm8k",
        configs=("main",),
        split="test",
        suites=("v1",),
        lm_eval_task="gsm8k",
        metric="exact_match",
        num_fewshot=5,
        random_baseline=0.0,
        description="GSM8K grade-school math word problems (answer: worked solution ending in #### N).",
    ),
    # ---- leaderboard v2 ----
    BenchmarkSpec(
        name="ifeval",
        hf_id="google/IFEval",
        configs=(),
        split="train",
        suites=("v2",),
        lm_eval_task="leaderboard_ifeval",
        metric="prompt_level_strict_acc",
        num_fewshot=0,
        random_baseline=0.0,
        id_field="key",
        source_text="paragraphs",
        description="IFEval: prompts with verifiable instructions; the leaderboard averages "
        "prompt_level_strict_acc and inst_level_strict_acc. No gold answer. (lm-eval 0.4.13 reads the "
        "same rows from wis-k/instruction-following-eval.)",
    ),
    BenchmarkSpec(
        name="bbh",
        hf_id="SaylorTwift/bbh",
        configs=BBH_SUBTASKS,
        split="test",
        suites=("v2",),
        lm_eval_task="leaderboard_bbh",
        metric="acc_norm",
        num_fewshot=3,
        random_baseline=_mean([b for _, b in BBH_BASELINES]),
        description="BIG-Bench Hard: 27 subtask files (same rows as lukaemon/bbh); leaderboard_bbh scores 24 "
        "of them and normalizes each with its own 1/choices baseline (random_baseline is their mean).",
        subsets=BBH_SUBTASKS,
        subsets_from="config",
        subset_baselines=BBH_BASELINES,
    ),
    BenchmarkSpec(
        name="math_hard",
        hf_id="DigitalLearningGmbH/MATH-lighteval",
        configs=("default",),
        split="test",
        suites=("v2",),
        lm_eval_task="leaderboard_math_hard",
        metric="exact_match",
        num_fewshot=4,
        random_baseline=0.0,
        contained_in=("math",),
        description="MATH, Level 5 problems of the test split (the leaderboard read lighteval/MATH-Hard; "
        "lm-eval 0.4.13 filters DigitalLearningGmbH/MATH-lighteval to Level 5: the same 1324 rows).",
        row_format="math",
        row_filter=(("level", "Level 5"),),
    ),
    BenchmarkSpec(
        name="math",
        hf_id="DigitalLearningGmbH/MATH-lighteval",
        configs=("default",),
        split="test",
        suites=(),
        lm_eval_task="hendrycks_math",
        metric="exact_match",
        num_fewshot=4,
        random_baseline=0.0,
        description="The whole MATH test split, all levels (math_hard is its Level 5 part).",
    ),
    BenchmarkSpec(
        name="gpqa_diamond",
        hf_id="Idavidrein/gpqa",
        configs=("gpqa_diamond",),
        split="train",
        suites=("v2",),
        lm_eval_task="leaderboard_gpqa_diamond",
        metric="acc_norm",
        num_fewshot=0,
        random_baseline=0.25,
        contained_in=("gpqa_main", "gpqa_extended"),
        id_field="Record ID",
        description="GPQA diamond: graduate-level science questions (gated on the hub; keep it private).",
        row_format="gpqa",
    ),
    BenchmarkSpec(
        name="gpqa_main",
        hf_id="Idavidrein/gpqa",
        configs=("gpqa_main",),
        split="train",
        suites=("v2",),
        lm_eval_task="leaderboard_gpqa_main",
        metric="acc_norm",
        num_fewshot=0,
        random_baseline=0.25,
        contained_in=("gpqa_extended",),
        id_field="Record ID",
        description="GPQA main set (contains diamond).",
        row_format="gpqa",
    ),
    BenchmarkSpec(
        name="gpqa_extended",
        hf_id="Idavidrein/gpqa",
        configs=("gpqa_extended",),
        split="train",
        suites=("v2",),
        lm_eval_task="leaderboard_gpqa_extended",
        metric="acc_norm",
        num_fewshot=0,
        random_baseline=0.25,
        id_field="Record ID",
        description="GPQA extended set (contains main and diamond).",
        row_format="gpqa",
    ),
    BenchmarkSpec(
        name="musr",
        hf_id="TAUR-Lab/MuSR",
        configs=("default",),
        split="murder_mysteries+object_placements+team_allocation",
        suites=("v2",),
        lm_eval_task="leaderboard_musr",
        metric="acc_norm",
        num_fewshot=0,
        random_baseline=_mean([b for _, b in MUSR_BASELINES]),
        description="MuSR: multistep soft reasoning over long narratives; each subtask is a hub split and a "
        "local file (`musr/<subtask>.jsonl`), normalized with its own 1/choices baseline.",
        subsets=tuple(MUSR_CHOICES),
        subsets_from="split",
        subset_baselines=MUSR_BASELINES,
    ),
    BenchmarkSpec(
        name="mmlu_pro",
        hf_id="TIGER-Lab/MMLU-Pro",
        configs=("default",),
        split="test",
        suites=("v2",),
        lm_eval_task="leaderboard_mmlu_pro",
        metric="acc",
        num_fewshot=5,
        random_baseline=0.1,
        contained_in=("mmlu",),
        id_field="question_id",
        description="MMLU-Pro: ten-option questions; part of them are MMLU questions with added options "
        "(their `src` starts with `ori_mmlu`).",
    ),
)

REGISTRY: dict[str, BenchmarkSpec] = {spec.name: spec for spec in _SPECS}


def get_spec(name: str) -> BenchmarkSpec:
    """The registry entry for `name`, or a BenchmarkError that suggests the closest names."""
    try:
        return REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(REGISTRY), n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}?" if close else f"known: {', '.join(REGISTRY)}"
        raise BenchmarkError(f"unknown benchmark {name!r}", hint=hint) from None


def suite_names(suite: str) -> list[str]:
    """Benchmark names of a leaderboard suite: "v1", "v2", or "all" (every registered benchmark)."""
    if suite == "all":
        return list(REGISTRY)
    if suite not in SUITES:
        raise BenchmarkError(f"unknown suite {suite!r}", hint="use v1, v2 or all")
    return [name for name, spec in REGISTRY.items() if suite in spec.suites]
