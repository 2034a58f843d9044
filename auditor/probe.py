"""The model-side probe: did a model see a benchmark's test set, when its training data is not declared?

Per item, one batched forward pass per model gives four membership scores from the same log-probabilities
(higher means more likely trained on): Min-K%++ (arXiv 2404.02936: each token's log-probability standardised
by the mean and spread of the model's own next-token distribution, averaged over the lowest k%), Min-K%
(the lowest k% log-probabilities), minus the mean loss, and minus the loss over the zlib-compressed size.
Alone they are weak; over a whole benchmark they answer one question with a test.

The test. Each item is scored as lm-eval's ARC/GSM8K-style prompts show it (`Question: ...\nAnswer:`, the
gold answer as the continuation), and again as controls: the same gold answer after CONTROLS other items'
questions (seeded derangements). Per item, `gain = [S(real) - R(real)] - mean[S(control) - R(control)]`,
where S and R are the suspect's and the reference's log-probability of the answer's first tokens with
text, after any lone leading space token (R is the model's base), over windows of 3, 6 and 12 tokens
(ANSWER_WINDOWS). The control keeps
the answer's own tokens and the benchmark's layout, so a fine-tune that learnt the domain, the answer
style, or even the answers' text gains as much on both; the reference cancels what the family knows.
What is left is how much more the suspect links this question to this answer than its base does: what
training on the item (answer included) leaves behind. One-sided Wilcoxon signed-rank statistics over the
items, one per window, are tested together (`signed_rank.max_signed_rank`: the strongest one's p-value
under their joint sign-flip null, so the choice is paid for by what the windows share, not by Bonferroni);
`effect` is the strongest one's mean gain over its standard deviation, and `window` names it.
Held-out items (`ProbeOptions.heldout`, `--heldout BENCH=SPLIT`): where the benchmark has another split
drawn from the same pool, its items are a second control, for the items' text rather than the link
(`heldout.py`); the two tests join as twice the smaller p-value. Opt-in: a split may be what a legitimate
fine-tune trained on (the test then stays calm), and only GSM8K's train split is here offline.
Amplified. A merge dilutes: a 50/50 merge halves the contaminated parent's weight change and the link fades
faster than that. So the test runs twice, on the model and on `R + amplify * (M - R)` (`amplify.py`,
default 2: a two-parent merge's share undone); its windows join the same joint test (six statistics).
On perf/probe_accuracy.py's merges (seeds 0-2) this took the merge from 7 of 15 benchmarks under 0.001 to
12; a contaminated model itself overshoots when doubled (weaker there), which is why both run.
Larger factors, on seeds 3 and 7's ten merges: 3 misses at 2, 3 at 3, 5 at 4 (the amplified test weaker on
every one as the factor grows).
Amplifying only each tensor's largest changes (TIES-style trim to the top 10-20%, factors 2-4) on seeds 3, 7
and 8's missed merges: no better (seed 8 MMLU 0.18 -> 0.21-0.33).
Windows. One window of 3 tokens missed GSM8K (its answers open with a name copied from the question and the
link runs on through the numbers: per-token gains of 0.2-0.4 nats over the first 12 tokens) and MMLU merges
whose link is all in the first tokens. Over 10 seeds x 5 benchmarks of perf/probe_accuracy.py (offline,
on dumped per-token log-probabilities), misses of any target (contaminated or merge p >= 0.001, clean or
base p <= 0.05): one window of 3 tokens 10, of 4, 6, 8, 12 tokens 15, 17, 19, 23. Sets chosen on seeds
0-4 and checked on seeds 5-9: {3, 6, 12} 5 (2 on seeds 0-4, 3 on 5-9), {3, 8} 6, {3, 12} 7; sets with a
2-token window pushed a clean fine-tune's MMLU p-value to 1e-4 (the first answer tokens carry what any
fine-tune learns of the format). Bonferroni over the six statistics instead of the joint test: the same
misses with p-values up to 2.3x higher. 16 controls and per-item rank tests were tried on the same
models and moved at most two verdicts either way.
Controls cost their answer windows alone: a control is the borrowed item's prompt tokens then this item's
own answer tokens (`control_encoded`), and every item's prompt lies in the key-value cache of its own
batch's pass, so each control feeds its window's tokens on that cache (`host_batch`), the prompt's
last position giving its first token; a model whose cache cannot be rolled back (sliding-window layers;
transformers 4.x) scores them whole, cut after the window (`window_batch`). Both give the same
log-probabilities (1.5e-5 apart). On perf/probe_accuracy.py's ARC items the probe's scoring went from
1.23-1.47x a plain forward pass over the texts it scores to 0.66-0.80x.
Tried and rejected on the tiny models of tests/test_probe.py: perturbed items (word swaps; a fine-tune on
any fluent text gains more on the real text than on its perturbation, so clean models came out suspect),
reordered choices (no signal left), and the answer's first non-space token alone (a fine-tune that learnt
the `Question:/Answer:` format links every benchmark's first answer word better: suspect everywhere). With
the first three tokens, 4 or 16 controls give the same verdicts; 4 kept the cost at 5 passes per item
(before controls ran on the cache).
The lone space: a 512-token vocabulary starts 65% of GSM8K answers (names, capitals) with a bare " " token
(22% of ARC's), where a large vocabulary has " Janet": three tokens held one word's start. The window adds
the lone space to three tokens with text (GSM8K fine-tune, seed 0: p 0.0087 -> 5.7e-5). Dropping the space
instead did as well on GSM8K but pushed unrelated base pairs under p 0.05 (MMLU seed 1: 0.35 -> 0.0065).
Skipping the answer's first tokens that the question holds (a copied name) before the window: over 5 seeds
of perf/probe_accuracy.py, GSM8K's contaminated fine-tunes 5/5 and merges 4/5 under 0.001 (4/5, 3/5 before)
but two ARC merges lost it and one more clean fine-tune fell under 0.05: not adopted; leaving out every
answer token whose word the question holds made GSM8K worse (the copied name carries link). One test over
each item's standardized plain plus amplified gain: the plain gains' noise took four merges (GSM8K seeds
1 and 4, MMLU 1 and 2) over 0.001: not adopted.
Over the 10 seeds' windows {3, 6, 12} (offline): the controls' median in place of their mean 11 misses (5
now), each item's gain over its controls' spread 6, each model's real-minus-control over its own spread 17.
Min-K%++'s standardisation inside the windows (each token's log-probability less its distribution's mean,
over its spread) in place of log-probabilities, the same 10 seeds: merges 40 of 50 (45 now), bases over 0.05
42 of 50 (50), GSM8K-train fine-tunes 5 of 10 (10; one at 1.3e-5): it rewards a sharper distribution on the
benchmark's kind of text. The reference's per-item link barely predicts the suspect's (correlation -0.28 to
+0.05 over 3- and 6-token windows on the missed merges), so it adds its own variance; it stays: it sets
the null (a model links no better than its base), which the models' own links alone do not give.
The question's own link (its second half after its own first half against after borrowed first halves, in
the same design) finds the four merges the answer's link misses that it was run on (p < 1e-20: they keep
the items' text, per-item Min-K%++ AUROC 0.84-1.0, where the answer's link fades) and calls their clean
fine-tunes and bases calm, but a fine-tune on GSM8K's train split (no test item) scores p 6e-24 on
GSM8K's test: it measures how well the model knows the benchmark's kind of question, not its items. Not
adopted; the answer's link gives such fine-tunes p 0.13-0.40 over 10 seeds (perf/probe_accuracy.py).
Scoring only the second half's tokens of words the first half does not hold (no copied names or numbers)
leaves that fine-tune at p 2e-14 (seed 0; the merges 7e-15 to 2e-21) and a base against its reference
at 8.5e-4 on ARC-Easy: it links the benchmark's kind of sentence, not only its names.
Limitations: a model that saw questions without their answers leaves no link to find; a fine-tune much
better at the task than its reference also links right answers, which the strict default `alpha` (0.001)
and the reported `effect` only partly keep apart from memorisation.
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mergeguard.auditor.amplify import AMPLIFY, amplify_weights
from mergeguard.auditor.heldout import heldout_test, load_heldout, pick_heldout
from mergeguard.auditor.report import ProbeVerdict
from mergeguard.auditor.signed_rank import max_signed_rank
from mergeguard.benchmarks import load_benchmarks
from mergeguard.errors import MergeguardError, ProbeError
from mergeguard.merge.sanity import json_finite  # JSON-safe floats (NaN/inf -> null), shared with `check`
from mergeguard.refs import looks_local, read_model_card, require_no_custom_code, resolve_model

SUSPECT, NO_SIGNAL, INCONCLUSIVE = ProbeVerdict.SUSPECT, ProbeVerdict.NO_SIGNAL, ProbeVerdict.INCONCLUSIVE
VERDICTS = tuple(ProbeVerdict)
SCORES = (
    "min_k_pp",
    "min_k",
    "loss",
    "zlib",
)  # columns of `score_texts`, every one "higher: more likely seen"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DTYPES = ("auto", "float32", "bfloat16", "float16")
# The test scores the first tokens of the answer: where "this question, this answer" lives; once an answer
# has begun, a memorised answer goes on whatever the question (tiny models trained on 100 ARC items: all
# answer tokens p=0.04, the first three p=6e-5). How soon depends on the answer: ARC's and MMLU's first
# words name the item, GSM8K's open with a name copied from the question and the link runs on through the
# numbers. So the test reads windows of 3, 6 and 12 tokens with text and takes the strongest, its p-value
# corrected for the choice (`signed_rank.max_signed_rank`). Each item has CONTROLS borrowed questions (1:
# p=4e-4, 4: p=1e-6 on the same model): more controls, less noise, each one more answer window on the cache.
ANSWER_WINDOWS = (3, 6, 12)
CONTROLS = 4


@dataclass
class ProbeOptions:
    """What to probe and how. `limit` keeps each benchmark's first N items; `k` is Min-K%'s fraction."""

    benchmarks: list[str] = field(default_factory=list)
    benchmarks_dir: Path | None = None
    benchmark_specs: list[Path] = field(default_factory=list)
    reference: str | None = None
    device: str = "cpu"
    dtype: str = "auto"
    batch_size: int = 8
    max_tokens: int = 512
    limit: int | None = None
    alpha: float = 0.001
    min_items: int = 20
    k: float = 0.2
    seed: int = 0
    controls: int = CONTROLS
    trust_remote_code: bool = False
    use_hub: bool = True
    threads: int | None = None  # torch CPU threads while scoring (None: torch's default)
    amplify: float = AMPLIFY  # also test reference + amplify * (model - reference); 1: off (amplify.py)
    heldout: dict[str, str] = field(default_factory=dict)  # benchmark -> another split or a file (heldout.py)


@dataclass
class ItemScore:
    """One item. `score`: the suspect's Min-K%++ minus the reference's on the item (the suspect's own
    without a reference), higher meaning more likely trained on; `gain`: the controlled answer gain over
    the benchmark's strongest window, on the model as it is; then the suspect's own four scores."""

    item: int
    score: float
    gain: float
    min_k_pp: float
    min_k: float
    loss: float
    zlib: float


@dataclass
class BenchmarkProbe:
    """The verdict on one benchmark, with the test behind it."""

    benchmark: str
    split: str
    verdict: str
    p_value: float | None
    effect: float | None
    n_items: int
    reason: str = ""
    items: list[ItemScore] = field(default_factory=list)
    p_plain: float | None = None  # the test on the model as it is
    p_amplified: float | None = None  # ... on its amplified weights (None: not run); p_value combines both
    window: int | None = None  # the answer window (tokens with text) of the strongest statistic
    p_heldout: float | None = None  # test items against held-out ones (`--heldout`; None: not run)
    heldout_items: int = 0


@dataclass
class ProbeReport:
    """One model probed on several benchmarks against one reference."""

    model: str
    reference: str | None
    reference_source: str | None  # "option" | "card" | "lineage" | None (no reference found)
    benchmarks: list[BenchmarkProbe]
    alpha: float
    problems: list[str] = field(default_factory=list)
    amplify: float | None = None  # the factor of the amplified test, None when it did not run

    @property
    def verdict(self) -> str:
        """The worst benchmark verdict: suspect, then inconclusive, then no_signal."""
        verdicts = {probe.verdict for probe in self.benchmarks}
        for verdict in (SUSPECT, INCONCLUSIVE):
            if verdict in verdicts:
                return verdict
        return NO_SIGNAL if verdicts else INCONCLUSIVE

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = self.verdict
        return json_finite(data)


def reports_json(reports: Sequence[ProbeReport]) -> str:
    """The `--json` document: `{"schema": 1, "suspect": bool, "models": [...]}`."""
    return json.dumps(
        {
            "schema": 1,
            "suspect": any(r.verdict == SUSPECT for r in reports),
            "models": [r.to_dict() for r in reports],
        }
    )


# ---------------------------------------------------------------- items as text

Pair = tuple[str, str]  # (prompt, continuation)
Encoded = tuple[list[int], int, tuple[int, ...]]  # (token ids, first answer token, each window's end)


def render_item(question: str, answer: str) -> Pair:
    """(prompt, continuation): the item as lm-eval's generative and ARC-style prompts show it,
    `Question: ...\nAnswer:`, and the gold answer written out as the continuation."""
    return f"Question: {question.strip()}\nAnswer:", f" {answer.strip()}"


def derangement(n: int, rng: Any) -> list[int]:
    """A random permutation with no fixed point: item i's control borrows item perm[i]'s question."""
    if n < 2:
        return list(range(n))
    order = [int(i) for i in rng.permutation(n)]
    perm = [0] * n
    for position, index in enumerate(order):  # each item takes the next one's along a shuffled cycle
        perm[index] = order[(position + 1) % n]
    return perm


def item_pairs(
    items: Sequence[Any], seed: int, controls: int = CONTROLS
) -> tuple[list[Pair], list[list[int]]]:
    """(real pairs, borrowed questions per item): control c of item i is item i's own answer after the
    question of item `borrowed[i][c]` (one seeded derangement per control, so every question is borrowed
    once per control), and an item and its controls end alike."""
    rng = np.random.default_rng(seed)
    real = [render_item(item.question, item.answer) for item in items]
    perms = [derangement(len(items), rng) for _ in range(controls)] if len(items) > 1 else []
    return real, [[perm[i] for perm in perms] for i in range(len(items))]


# ---------------------------------------------------------------- scoring


def load_model(folder: Path, device: str, dtype: str, trust_remote_code: bool) -> tuple[Any, Any]:
    """(model, tokenizer) on `device`; any failure to load is one ProbeError naming the model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_no_custom_code(folder, trust_remote_code)
    torch_dtype: Any = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
        model = model.to(device).eval()
    except Exception as error:  # missing weights, bad config, unknown architecture: all end the same way
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ProbeError(
            f"model {folder} cannot be loaded ({type(error).__name__}: {reason})",
            hint="check that the folder holds a transformers causal LM with its tokenizer",
        ) from None
    return model, tokenizer


def blank_lead(tokenizer: Any, tail: Sequence[int], blanks: dict[int, bool]) -> int:
    """How many of the continuation's first tokens are whitespace alone (kept short of its end): a small
    vocabulary cuts " Janet" into " ", "J", "an", "et" where a large one has " Janet", so each answer window
    takes these blanks plus its tokens with text (ANSWER_WINDOWS). `blanks` caches each token id's answer."""
    lead = 0
    while lead < len(tail) - 1:
        token = tail[lead]
        if token not in blanks:
            blanks[token] = not tokenizer.decode([token]).strip()
        if not blanks[token]:
            break
        lead += 1
    return lead


def tokenize(tokenizer: Any, pairs: Sequence[Pair], max_tokens: int) -> list[Encoded]:
    """(token ids, first continuation token, end of each answer window) per pair: prompt and continuation
    encoded apart and joined, as lm-eval does, BOS first when the tokenizer has one. A window holds any
    lone leading spaces and then ANSWER_WINDOWS[w] tokens (see `blank_lead`): about the same text whatever
    the vocabulary; it may run past the text's end (its sum stops there). Over `max_tokens`, the
    continuation keeps its start (at most half the budget) and the prompt its end: the answer's first
    tokens and the question just before them always stay."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    heads = _token_ids(tokenizer, [h for h, _ in pairs])
    tails = _token_ids(tokenizer, [t for _, t in pairs])
    out: list[Encoded] = []
    blanks: dict[int, bool] = {}
    for head, tail in zip(heads, tails, strict=True):
        tail = list(tail)[: max(max_tokens // 2, 1)]
        keep = max(max_tokens - len(bos) - len(tail), 1)
        head = list(head)[-keep:]
        start = len(bos) + len(head)
        lead = start + blank_lead(tokenizer, tail, blanks)
        out.append((bos + head + tail, start, tuple(lead + size for size in ANSWER_WINDOWS)))
    return out


def _token_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Each text's token ids, every distinct text encoded once (a control repeats another item's question
    and its own item's answer)."""
    distinct = list(dict.fromkeys(texts))
    encoded = dict(zip(distinct, tokenizer(distinct, add_special_tokens=False)["input_ids"], strict=True))
    return [encoded[text] for text in texts]


def _padded(sequences: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[Any, Any]:
    """(ids, attention mask) on `device`, right-padded to the longest sequence."""
    import torch

    width = max(len(tokens) for tokens in sequences)
    ids = torch.tensor([[*tokens, *[pad_id] * (width - len(tokens))] for tokens in sequences])
    lengths = torch.tensor([len(tokens) for tokens in sequences])
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()  # one comparison, not a Python list
    return ids.to(device), mask.to(device)


def control_encoded(
    encoded: Sequence[Encoded], borrowed: Sequence[Sequence[int]], max_tokens: int
) -> list[Encoded]:
    """Every item's controls in turn, as token ids: the borrowed item's prompt tokens (BOS and question, as
    that item was encoded) then this item's own answer tokens, cut at `max_tokens`. Real item and control
    share the answer's tokens to the last one: they differ in the question alone."""
    out: list[Encoded] = []
    for (ids, start, ends), hosts in zip(encoded, borrowed, strict=True):
        for host in hosts:
            host_ids, host_start, _ = encoded[host]
            shift = host_start - start
            joined = (host_ids[:host_start] + ids[start:])[:max_tokens]
            out.append((joined, host_start, tuple(end + shift for end in ends)))
    return out


def hosted_controls(borrowed: Sequence[Sequence[int]], n: int) -> list[list[int]]:
    """Per item, the indices (in `control_encoded`'s order) of the controls that borrow its question."""
    hosted: list[list[int]] = [[] for _ in range(n)]
    flat = 0
    for hosts in borrowed:
        for host in hosts:
            hosted[host].append(flat)
            flat += 1
    return hosted


def _forward(model: Any, cache: Any = None, **inputs: Any) -> tuple[Any, Any]:
    """(logits, key-value cache): the cache goes in and out under the name the model's transformers takes
    (`cache` since 5.x, `past_key_values` before)."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    if cache is not None:
        inputs[name] = cache
    output = model(**inputs)
    return output.logits, getattr(output, name, None)


def _token_scores(logits: Any, ids: Any) -> tuple[Any, Any]:
    """(log-probabilities of the next tokens, their Min-K%++ standardisation) from a full pass's logits.

    Min-K%++ per token: (log p(x_t) - mu_t) / sigma_t, where mu_t and sigma_t^2 are the mean and variance of
    log p(z) under the model's own next-token distribution p(. | x_<t)."""
    import torch

    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_lp = log_probs.gather(-1, ids[:, 1:, None]).squeeze(-1)
    weighted = log_probs.exp().mul_(log_probs)  # p log p, then p (log p)^2: the moments of log p
    mu = weighted.sum(-1)
    sigma = (weighted.mul_(log_probs).sum(-1) - mu.square()).clamp_min(1e-12).sqrt()
    return token_lp, (token_lp - mu) / sigma


def score_batch(model: Any, batch: Sequence[Encoded], pad_id: int, k: float) -> list[list[float]]:
    """One forward pass over the padded batch. Per sequence, over all its tokens: Min-K%++, Min-K%, mean
    log-probability, summed log-probability; then each answer window's summed log-probability (any lone
    leading spaces and ANSWER_WINDOWS[w] tokens, `tokenize`'s indices)."""
    import torch

    ids, mask = _padded([tokens for tokens, *_ in batch], pad_id, next(model.parameters()).device)
    with torch.inference_mode():
        token_lp, standard = _token_scores(model(input_ids=ids, attention_mask=mask).logits, ids)
    return _sequence_scores(token_lp.cpu(), standard.cpu(), batch, k)


def _sequence_scores(token_lp: Any, standard: Any, batch: Sequence[Encoded], k: float) -> list[list[float]]:
    """`score_batch`'s scores per sequence, for the whole batch at once (a loop of small tensor calls per
    sequence costs a tiny model as much as its forward pass): the lowest k-fraction's mean from sorted
    prefix sums, each answer window's sum from a prefix sum."""
    import torch

    width = 4 + len(ANSWER_WINDOWS)
    lengths = [len(tokens) - 1 for tokens, *_ in batch]  # scored tokens (each predicted from the ones before)
    if token_lp.shape[1] == 0:  # one token each: nothing is predicted
        return [[math.nan] * width for _ in batch]
    scored = torch.tensor(lengths)
    valid = torch.arange(token_lp.shape[1])[None, :] < scored[:, None]
    lowest = torch.tensor([max(1, int(n * k)) for n in lengths])  # int(): Python's rounding, as topk had

    def lowest_mean(values: Any) -> Any:
        ordered = values.masked_fill(~valid, math.inf).sort(dim=-1).values
        return ordered.cumsum(-1).gather(1, (lowest - 1)[:, None]).squeeze(1) / lowest

    kept = token_lp.masked_fill(~valid, 0.0)
    prefix = torch.nn.functional.pad(kept.cumsum(-1), (1, 0))
    starts = [min(max(start - 1, 0), n) for (_, start, _), n in zip(batch, lengths, strict=True)]
    low = torch.tensor(starts)[:, None]
    windows = []
    for w in range(len(ANSWER_WINDOWS)):
        ends = [max(lo, min(e[w] - 1, n)) for (_, _, e), n, lo in zip(batch, lengths, starts, strict=True)]
        windows.append((prefix.gather(1, torch.tensor(ends)[:, None]) - prefix.gather(1, low)).squeeze(1))
    total = kept.sum(-1)
    columns = [lowest_mean(standard), lowest_mean(token_lp), total / scored.clamp_min(1), total, *windows]
    rows = torch.stack(columns, dim=1).tolist()
    return [row if n >= 1 else [math.nan] * width for row, n in zip(rows, lengths, strict=True)]


def window_batch(model: Any, batch: Sequence[Encoded], pad_id: int, keep_logits: bool) -> list[list[float]]:
    """Each answer window's summed log-probability per sequence, all a control needs: each sequence is cut
    after its longest window (a causal model's window does not see what follows) and only the windows'
    positions go through the output layer and softmax (`logits_to_keep`), so a control costs a little less
    than a plain forward pass over its text. `keep_logits` False (a model without that argument): every
    position's logits, then the windows'."""
    import torch

    device = next(model.parameters()).device
    batch = [(tokens[: ends[-1]], start, ends) for tokens, start, ends in batch]
    ids, mask = _padded([tokens for tokens, *_ in batch], pad_id, device)
    width = ids.shape[1]
    # logits at positions start-1 .. end-2 predict the window's tokens start .. end-1 (the cut text's last)
    bounds = [(min(max(start - 1, 0), len(t) - 1), max(len(t) - 1, 1)) for t, start, _ in batch]
    low, high = torch.tensor(bounds).T
    offsets = torch.arange(max(1, int((high - low).max())))[None, :]
    positions = (low[:, None] + offsets).minimum((high - 1)[:, None]).to(device)
    kept = offsets < (high - low)[:, None]
    with torch.inference_mode():
        if keep_logits:
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=positions).logits
        else:
            logits = model(input_ids=ids, attention_mask=mask).logits
            logits = torch.take_along_dim(logits, positions[..., None], dim=1)
        targets = torch.take_along_dim(ids, (positions + 1).clamp_max(width - 1), dim=1)
        log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)
        running = log_probs.masked_fill(~kept.to(device), 0.0).cpu().cumsum(-1)
    running = torch.nn.functional.pad(running, (1, 0))  # running[:, c]: the first c positions' sum
    # window w holds the positions low .. end_w - 2: end_w - 1 - low of them (the text may end sooner)
    counts = torch.tensor([[min(e, len(t)) - 1 for e in ends] for t, _, ends in batch]) - low[:, None]
    sums = running.gather(1, counts.clamp(min=0).minimum((high - low)[:, None])).tolist()
    return [row if len(t) > 1 else [math.nan] * len(row) for row, (t, *_) in zip(sums, batch, strict=True)]


def keeps_logits(model: Any) -> bool:
    """Whether the model's forward takes `logits_to_keep` (recent transformers causal LMs do)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def host_batch(
    model: Any, batch: Sequence[Encoded], guests: Sequence[Sequence[Encoded]], pad_id: int, k: float
) -> tuple[list[list[float]], list[list[list[float]]]]:
    """(`score_batch`'s rows for the batch's items, each item's guests' window sums). A guest is a control
    that borrows the item's prompt (`control_encoded`): it reads the prompt from the items' key-value cache,
    so a control costs the forward pass of its answer window alone, not of the question again. A cache that
    cannot be rolled back (`_rolls_back`), or a model that takes no `position_ids` (custom code), sends the
    guests through `window_batch`, whole."""
    import torch

    device = next(model.parameters()).device
    ids, mask = _padded([tokens for tokens, *_ in batch], pad_id, device)
    starts = torch.tensor([max(start, 1) for _, start, _ in batch], device=device)
    with torch.inference_mode():
        logits, cache = _forward(model, input_ids=ids, attention_mask=mask, use_cache=True)
        token_lp, standard = _token_scores(logits, ids)
        # the prompt's last position predicts every guest's first answer token
        first = torch.log_softmax(logits[torch.arange(len(batch), device=device), starts - 1].float(), dim=-1)
        del logits
    rows = _sequence_scores(token_lp.cpu(), standard.cpu(), batch, k)
    if _rolls_back(cache) and "position_ids" in inspect.signature(model.forward).parameters:
        return rows, _guests_on_cache(model, cache, ids.shape[1], starts, first, batch, guests, pad_id)
    del cache
    flat = [guest for row in guests for guest in row]
    keep, size = keeps_logits(model), len(batch)
    batches = [window_batch(model, flat[at : at + size], pad_id, keep) for at in range(0, len(flat), size)]
    sums = iter([window for scored in batches for window in scored])
    return rows, [[next(sums) for _ in row] for row in guests]


def _guests_on_cache(
    model: Any,
    cache: Any,
    width: int,
    starts: Any,
    first: Any,
    batch: Sequence[Encoded],
    guests: Sequence[Sequence[Encoded]],
    pad_id: int,
) -> list[list[list[float]]]:
    """Each item's guests' window sums, in turns: the turn-th guest of every item at once (an item with
    fewer guests runs itself in their place, unread)."""
    sums: list[list[list[float]]] = [[] for _ in batch]
    for turn in range(max((len(row) for row in guests), default=0)):
        present = [turn < len(row) for row in guests]
        stand_ins = [
            row[turn] if here else item for row, here, item in zip(guests, present, batch, strict=True)
        ]
        windows = _guest_turn(model, cache, width, starts, first, stand_ins, pad_id)
        for r, here in enumerate(present):
            if here:
                sums[r].append(windows[r])
    return sums


def _rolls_back(cache: Any) -> bool:
    """Whether guests can run on `cache` and leave it as it was: full attention in every layer (a sliding
    window's cache drops positions and masks by slot, not by position) and a `crop` that undoes exactly.
    Caches that do not say (transformers 4.x) are not trusted: their guests run whole."""
    sliding = getattr(cache, "is_sliding", None)
    return sliding is not None and not any(sliding) and bool(getattr(cache, "is_croppable", False))


def _guest_turn(
    model: Any, cache: Any, width: int, starts: Any, first: Any, guests: Sequence[Encoded], pad_id: int
) -> list[list[float]]:
    """One guest per cached item: its answer tokens up to its longest window, after the item's prompt (the
    cached positions before `starts`), at the positions they would have in the whole text; the cache is
    rolled back after. Returns each guest's window sums, as `window_batch` gives them."""
    import torch

    device = starts.device
    tails = [tokens[start : ends[-1]] for tokens, start, ends in guests]
    inputs = [tail[:-1] or [pad_id] for tail in tails]  # the last token is only predicted
    gids, gmask = _padded(inputs, pad_id, device)
    prompt = torch.arange(width, device=device)[None, :] < starts[:, None]
    positions = starts[:, None] + torch.arange(gids.shape[1], device=device)[None, :]
    with torch.inference_mode():
        logits, _ = _forward(
            model,
            cache,
            input_ids=gids,
            attention_mask=torch.cat([prompt.long(), gmask], dim=1),
            position_ids=positions,
            use_cache=True,
        )
        cache.crop(-gids.shape[1])  # negative: drop the guest's positions (transformers 4.x and 5.x alike)
        targets, _ = _padded([tail[1:] or [pad_id] for tail in tails], pad_id, device)
        later = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)
        heads = first.gather(1, torch.tensor([[tail[0]] for tail in tails], device=device))
        token_lp = torch.cat([heads, later], dim=1).cpu()
    lengths = torch.tensor([len(tail) for tail in tails])
    token_lp = token_lp.masked_fill(torch.arange(token_lp.shape[1])[None, :] >= lengths[:, None], 0.0)
    running = torch.nn.functional.pad(token_lp.cumsum(-1), (1, 0))
    counts = torch.tensor(
        [
            [min(end - start, len(tail)) for end in ends]
            for (_, start, ends), tail in zip(guests, tails, strict=True)
        ]
    )
    sums = running.gather(1, counts.clamp(min=0)).tolist()
    return [
        row if len(tokens) > 1 else [math.nan] * len(row)
        for row, (tokens, *_) in zip(sums, guests, strict=True)
    ]


def _batched(encoded: Sequence[Encoded], batch_size: int, score: Any) -> list[Any]:
    """`score` (given a batch's indices into `encoded`, giving one result per index) over batches of
    similar length (little padding), results back in `encoded`'s order."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    results: list[Any] = [None] * len(encoded)
    for first in range(0, len(order), batch_size):
        chunk = order[first : first + batch_size]
        for index, value in zip(chunk, score(chunk), strict=True):
            results[index] = value
    return results


def score_texts(
    model: Any, tokenizer: Any, pairs: Sequence[Pair], *, batch_size: int, max_tokens: int, k: float
) -> list[list[float]]:
    """Per pair [min_k_pp, min_k, -loss, zlib, then each answer window's log-prob]: the first four
    (SCORES) over the whole text; one forward pass per text, batched by length to waste little padding."""
    encoded, pad = tokenize(tokenizer, pairs, max_tokens), _pad_id(tokenizer)
    rows = _batched(
        encoded, batch_size, lambda chunk: score_batch(model, [encoded[i] for i in chunk], pad, k)
    )
    _zlib_ratio(rows, pairs)
    return rows


def score_items(
    model: Any,
    tokenizer: Any,
    real: Sequence[Pair],
    borrowed: Sequence[Sequence[int]],
    *,
    batch_size: int,
    max_tokens: int,
    k: float,
) -> list[list[float]]:
    """Rows for the real items (every score, as `score_texts` gives them) then for every item's controls in
    turn (`item_pairs`' `borrowed`: NaN but the windows' log-probabilities, the values the test reads from
    a control). Each batch of items goes through the model once, its controls after it on its key-value
    cache (`host_batch`)."""
    encoded = tokenize(tokenizer, real, max_tokens)
    controls = control_encoded(encoded, borrowed, max_tokens)
    hosted = hosted_controls(borrowed, len(real))
    pad = _pad_id(tokenizer)

    def score(chunk: list[int]) -> Any:
        guests = [[controls[c] for c in hosted[i]] for i in chunk]
        return zip(*host_batch(model, [encoded[i] for i in chunk], guests, pad, k), strict=True)

    results = _batched(encoded, batch_size, score)
    windows: list[list[float]] = [[] for _ in controls]
    for i, (_, sums) in enumerate(results):
        for c, window in zip(hosted[i], sums, strict=True):
            windows[c] = window
    rows = [row for row, _ in results]
    _zlib_ratio(rows, real)
    return rows + [[math.nan] * 4 + window for window in windows]


def _zlib_ratio(rows: list[list[float]], pairs: Sequence[Pair]) -> None:
    """Column 3 from the summed log-probability to the zlib score: divided by the text's compressed size."""
    for row, pair in zip(rows, pairs, strict=True):
        row[3] = row[3] / max(len(zlib.compress("".join(pair).encode("utf-8"))), 1)


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


# ---------------------------------------------------------------- statistics


@dataclass(frozen=True)
class LinkTest:
    """One benchmark's test. `window` and `amplified` name the strongest statistic (an answer window, on
    the model as it is or amplified); `effect` is its mean gain over the gains' standard deviation."""

    verdict: str
    p_value: float | None
    effect: float | None
    reason: str = ""
    p_plain: float | None = None
    p_amplified: float | None = None
    window: int | None = None
    amplified: bool = False
    p_heldout: float | None = None


def benchmark_test(
    plain: Sequence[Sequence[float]],
    amplified: Sequence[Sequence[float]] | None,
    alpha: float,
    min_items: int,
) -> LinkTest:
    """The test over one benchmark's items: `plain[w][i]` is item i's gain over ANSWER_WINDOWS[w] on the
    model as it is, `amplified` the same on its amplified weights (None, or too few scored: not run).
    p_value is the joint signed-rank test over every one of these statistics (`max_signed_rank`);
    p_plain and p_amplified the same over each model's windows alone."""
    scored = sum(math.isfinite(g) for g in plain[0])
    if scored < min_items:
        reason = f"{scored} items scored, fewer than --min-items {min_items}"
        return LinkTest(INCONCLUSIVE, None, None, reason)
    if amplified is not None and sum(math.isfinite(g) for g in amplified[0]) < min_items:
        amplified = None
    columns = [*plain, *(amplified or [])]
    joint = max_signed_rank(columns)
    p_plain = max_signed_rank(plain).p_value if amplified else joint.p_value  # no amplified: the same test
    p_amplified = max_signed_rank(amplified).p_value if amplified else None
    from_amplified = joint.best >= len(plain)
    own = p_amplified if from_amplified and p_amplified is not None else p_plain
    p_value = max(joint.p_value, own)  # never under its own family's (the normal integral's error)
    best = np.asarray([g for g in columns[joint.best] if math.isfinite(g)], dtype=np.float64)
    spread = float(best.std(ddof=1)) if len(best) > 1 else 0.0
    effect = float(best.mean()) / spread if spread > 0 else 0.0
    return LinkTest(
        _verdict(p_value, effect, alpha),
        p_value,
        effect,
        p_plain=p_plain,
        p_amplified=p_amplified,
        window=ANSWER_WINDOWS[joint.best % len(ANSWER_WINDOWS)],
        amplified=from_amplified,
    )


# ---------------------------------------------------------------- references


def _key(ref: str) -> str:
    """A comparable name for a model reference: a resolved path for local folders, the hub id otherwise."""
    return str(Path(ref).expanduser().resolve()) if looks_local(ref) else ref


def _card_bases(folder: Path) -> list[str]:
    return read_model_card(folder).base_model


def find_reference(folder: Path) -> tuple[str | None, str | None]:
    """(reference, source) from the model's lineage: its card's one `base_model` ("card"), or, for a merge
    whose card lists every input, the base all inputs share ("lineage"); (None, None) when there is none."""
    bases = _card_bases(folder)
    if len(bases) == 1:
        return bases[0], "card"
    if not bases:
        return None, None
    common: list[str] | None = None
    for parent in bases:
        try:
            grand = _card_bases(resolve_model(parent, local_files_only=True))
        except MergeguardError:
            grand = []
        keys = [_key(parent), *(_key(g) for g in grand)]
        common = keys if common is None else [k for k in common if k in keys]
    return (common[0], "lineage") if common else (None, None)


def _same_tokenizer(model: Path, reference: Path, trust_remote_code: bool) -> None:
    """Scores are per token, so a reference must cut text into the same tokens: refuse another vocabulary."""
    from transformers import AutoTokenizer

    vocabularies = []
    for folder in (model, reference):
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        except Exception as error:
            raise ProbeError(
                f"the tokenizer of {folder} cannot be loaded ({type(error).__name__})",
                hint="check that the folder holds tokenizer files",
            ) from None
        vocabularies.append(tokenizer.get_vocab())
    if vocabularies[0] != vocabularies[1]:
        raise ProbeError(
            f"reference {reference} uses another tokenizer than {model} "
            f"({len(vocabularies[1])} vs {len(vocabularies[0])} tokens or different ids)",
            hint="give a --reference of the same model family (its base, with the same tokenizer)",
        )


# ---------------------------------------------------------------- the probe


@dataclass
class _Prepared:
    name: str
    split: str
    indices: list[int]
    real: list[Pair]
    controls: list[list[int]]  # per item, the items whose questions its controls borrow (`item_pairs`)
    heldout: list[Pair] = field(default_factory=list)  # another split's items (`--heldout`), scored alone


def _prepare(options: ProbeOptions) -> list[_Prepared]:
    """Load the benchmarks (every one must load: a missing one is an error, never a silent skip)."""
    if not options.benchmarks:
        raise ProbeError("no benchmark to probe", hint="pass --benchmark NAME (repeatable)")
    loaded, problems = load_benchmarks(
        list(options.benchmarks), options.benchmarks_dir, options.benchmark_specs, use_hub=options.use_hub
    )
    if problems:
        raise ProbeError(problems[0])
    unknown = sorted(set(options.heldout) - {bench.name for bench in loaded})
    if unknown:
        raise ProbeError(f"--heldout {unknown[0]}: not a probed benchmark", hint="add --benchmark for it")
    prepared = []
    for bench in loaded:
        items = [item for item in bench.items if item.question.strip() and item.answer.strip()]
        items = items[: options.limit] if options.limit else items
        real, controls = item_pairs(items, options.seed, options.controls)
        split = items[0].split if items else bench.spec.split
        heldout: list[Pair] = []
        if bench.name in options.heldout:
            others = load_heldout(bench, options.heldout[bench.name], options.benchmarks_dir, options.use_hub)
            picked = pick_heldout(others, items, len(items), options.seed)
            heldout = [render_item(item.question, item.answer) for item in picked]
        indices = [item.index for item in items]
        prepared.append(_Prepared(bench.name, split, indices, real, controls, heldout))
    return prepared


Scores = list[list[list[float]]]  # per benchmark, per text, `score_items`' row


def _score_model(
    folder: Path, prepared: list[_Prepared], options: ProbeOptions, amplify_from: Path | None = None
) -> tuple[Scores, Scores | None, str]:
    """(scores, amplified scores, why not amplified): every benchmark's items and controls scored with one
    model; then, given `amplify_from` (the reference), again with its weights amplified in place
    (`amplify_weights`); then the model is freed (one model at a time). `options.threads` caps torch's CPU
    threads meanwhile (restored after): small models on a busy machine run several times faster on one."""
    import torch

    model, tokenizer = load_model(folder, options.device, options.dtype, options.trust_remote_code)
    previous = torch.get_num_threads()
    if options.threads:
        torch.set_num_threads(options.threads)
    try:
        plain = _score_all(model, tokenizer, prepared, options, with_heldout=True)
        if amplify_from is None:
            return plain, None, ""
        problem = amplify_weights(model, amplify_from, options.amplify)
        return plain, (None if problem else _score_all(model, tokenizer, prepared, options)), problem
    finally:
        torch.set_num_threads(previous)
        del model
        gc.collect()
        _empty_device_cache()


def _score_all(
    model: Any, tokenizer: Any, prepared: list[_Prepared], options: ProbeOptions, with_heldout: bool = False
) -> Scores:
    """Per benchmark, `score_items`' rows (items, then controls), then with `with_heldout` a row per
    held-out item (`score_texts`; the amplified model is not tested on them)."""
    sizes = {"batch_size": options.batch_size, "max_tokens": options.max_tokens, "k": options.k}
    scores = []
    for bench in prepared:
        rows = score_items(model, tokenizer, bench.real, bench.controls, **sizes)
        if with_heldout and bench.heldout:
            rows += score_texts(model, tokenizer, bench.heldout, **sizes)
        scores.append(rows)
    return scores


def _empty_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def link_gains(
    bench: _Prepared, suspect: list[list[float]], reference: list[list[float]]
) -> list[list[float]]:
    """Per answer window, per item: (suspect - reference) log-probability of the answer's start after the
    item's own question, minus the mean of the same after its controls' borrowed questions."""
    n = len(bench.real)
    gains: list[list[float]] = [[] for _ in ANSWER_WINDOWS]
    at = n
    for i in range(n):
        count = len(bench.controls[i])
        for w, column in enumerate(gains):
            if not count:
                column.append(math.nan)
                continue
            k = 4 + w  # the window's column in `score_items`' rows
            control = sum(suspect[j][k] - reference[j][k] for j in range(at, at + count)) / count
            column.append(suspect[i][k] - reference[i][k] - control)
        at += count
    return gains


def _verdicts(
    prepared: list[_Prepared],
    suspect: Scores,
    amplified: Scores | None,
    reference: Scores | None,
    options: ProbeOptions,
) -> list[BenchmarkProbe]:
    probes = []
    for position, (bench, mine) in enumerate(zip(prepared, suspect, strict=True)):
        n = len(bench.real)
        if reference is None:
            gains, base = [math.nan] * n, [0.0] * n
            test = LinkTest(INCONCLUSIVE, None, None, "no reference model")
        else:
            windows = link_gains(bench, mine, reference[position])
            more = link_gains(bench, amplified[position], reference[position]) if amplified else None
            base = [row[0] for row in reference[position][:n]]
            test = benchmark_test(windows, more, options.alpha, options.min_items)
            test = with_heldout(test, bench, mine, reference[position], options)
            gains = windows[ANSWER_WINDOWS.index(test.window) if test.window else 0]
        items = [
            ItemScore(index, mine[i][0] - base[i], gains[i], *mine[i][:4])
            for i, index in enumerate(bench.indices)
        ]
        probes.append(
            BenchmarkProbe(
                bench.name,
                bench.split,
                test.verdict,
                test.p_value,
                test.effect,
                n,
                test.reason,
                items,
                test.p_plain,
                test.p_amplified,
                test.window,
                test.p_heldout,
                len(bench.heldout),
            )
        )
    return probes


def with_heldout(
    test: LinkTest,
    bench: _Prepared,
    suspect: list[list[float]],
    reference: list[list[float]],
    options: ProbeOptions,
) -> LinkTest:
    """The link test joined with the held-out test (`heldout.py`) where the benchmark has held-out items
    (the rows after its items' and controls'): p is twice the smaller p-value (Bonferroni over the two,
    whatever they share), `effect` the smaller one's. Too few on either side: the link test alone."""
    held = len(bench.heldout)
    if not held or test.verdict == INCONCLUSIVE or test.p_value is None:
        return test
    loss, n = SCORES.index("loss"), len(bench.real)
    gains = [s[loss] - r[loss] for s, r in zip(suspect[:n], reference[:n], strict=True)]
    others = [s[loss] - r[loss] for s, r in zip(suspect[-held:], reference[-held:], strict=True)]
    if min(sum(map(math.isfinite, gains)), sum(map(math.isfinite, others))) < options.min_items:
        return test
    p_heldout, effect_heldout = heldout_test(gains, others)
    p_value = min(1.0, 2 * min(test.p_value, p_heldout))
    effect = effect_heldout if p_heldout < test.p_value else test.effect
    verdict = _verdict(p_value, effect or 0.0, options.alpha)
    return dataclasses.replace(test, verdict=verdict, p_value=p_value, effect=effect, p_heldout=p_heldout)


def _verdict(p_value: float, effect: float, alpha: float) -> str:
    """`suspect` when significant at `alpha` in the direction of memorisation, else `no_signal`."""
    return SUSPECT if p_value < alpha and effect > 0 else NO_SIGNAL


def probe_models(models: Sequence[str], options: ProbeOptions) -> list[ProbeReport]:
    """Probe each model on every benchmark of `options` against its reference (`options.reference`, else
    its lineage's base). Models are loaded one at a time; a reference shared by several is scored once."""
    if options.dtype not in DTYPES:
        raise ProbeError(f"unknown dtype {options.dtype!r}", hint=f"use one of {', '.join(DTYPES)}")
    if not 0 < options.k <= 1:
        raise ProbeError(f"k {options.k} is outside (0, 1]", hint="use a fraction such as 0.2")
    if not options.amplify >= 1:
        raise ProbeError(f"amplify {options.amplify} is below 1", hint="use 2 (the default), or 1 for none")
    folders = [resolve_model(name) for name in models]  # a mistyped model fails before any data loads
    prepared = _prepare(options)
    cache: dict[str, Scores] = {}
    reports = []
    for folder in folders:
        reference, source = (options.reference, "option") if options.reference else find_reference(folder)
        ref_folder = resolve_model(reference) if reference else None
        if ref_folder is not None:
            _same_tokenizer(folder, ref_folder, options.trust_remote_code)
        amplify_from = ref_folder if options.amplify > 1 else None
        suspect, amplified, problem = _score_model(folder, prepared, options, amplify_from)
        if ref_folder is not None and str(ref_folder) not in cache:
            cache[str(ref_folder)] = _score_model(ref_folder, prepared, options)[0]
        scores = cache[str(ref_folder)] if ref_folder is not None else None
        reports.append(
            ProbeReport(
                model=str(folder),
                reference=str(ref_folder) if ref_folder else None,
                reference_source=source,
                benchmarks=_verdicts(prepared, suspect, amplified, scores, options),
                alpha=options.alpha,
                problems=[problem] if problem else [],
                amplify=options.amplify if amplified is not None else None,
            )
        )
    return reports


def probe_model(model: str, options: ProbeOptions) -> ProbeReport:
    """Probe one model (see `probe_models`)."""
    return probe_models([model], options)[0]
