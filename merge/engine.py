"""Run a merge: resolve models, plan, stream tensors through the method into shards, finish the folder.

Reading the next tensor's inputs, computing the current one and writing the previous one overlap (a reader
thread and a writer thread around the compute loop); at most a couple of tensors are in flight, so peak
memory is bounded by the largest tensors, not by a shard or a model. Everything is written into a temporary
folder beside OUT_DIR that is renamed at the very end, so a failed merge leaves no OUT_DIR behind. OUT_DIR is
checked before anything is written (`output.check_out_dir`): never an input, the working folder, or an
existing folder other than an earlier merge.
"""

from __future__ import annotations

import functools
import hashlib
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergeguard.errors import ConfigError, MergeguardError
from mergeguard.merge.arch import infer_architecture
from mergeguard.merge.config import MergeConfig, config_models
from mergeguard.merge.io import ModelReader, ShardWriter, agreed_buffer, parse_size
from mergeguard.merge.memory import tune_malloc
from mergeguard.merge.plan import MergePlan, SourceModel, TensorTask, build_plan

PREFETCH_BUDGET = 96 * 2**20  # bytes of raw inputs of two consecutive tensors held at once


@dataclass
class Progress:
    """What a progress callback receives after each tensor."""

    tensors_done: int
    tensors_total: int
    bytes_done: int
    bytes_total: int
    name: str


@dataclass
class MergeOptions:
    """How to run a merge (mergekit's command-line options, under the same names)."""

    device: str = "cpu"
    random_seed: int | None = None
    out_shard_size: int | str = "5B"
    copy_tokenizer: bool = True
    allow_crimes: bool = False
    allow_pickle: bool = False
    strict: bool = False
    force: bool = False
    quiet: bool = False
    lazy_unpickle: bool = False  # accepted for mergekit compatibility; reading is always lazy
    low_cpu_memory: bool = False  # accepted for mergekit compatibility; memory is always bounded
    write_model_card: bool = True
    backend: str = "auto"  # "auto": numpy kernels where they apply, else torch; "numpy" or "torch" to force
    local_files_only: bool = False
    progress: Callable[[Progress], None] | None = None
    unsafe_truncate_embeddings: bool = False  # cut differing vocabularies to the smallest (same ids assumed)
    allow_unknown_keys: bool = False  # read by `load_config` callers; recorded in the result and the card
    mergekit_rounding: bool = False  # round intermediates to half precision as mergekit does (torch path)
    card_datasets: list[str] = field(default_factory=list)  # added to the card's `datasets:` (inherited ones)
    card_section: str = ""  # markdown appended to the card (the guard's contamination section)
    # called once the merge's work is under way (worker processes busy), so that a caller's own checks
    # overlap it; raising there aborts the merge and nothing is written
    on_started: Callable[[], None] | None = None


@dataclass
class MergeResult:
    """What was merged and written: enough for lineage records and a summary line."""

    out_dir: Path
    method: str
    models: dict[str, Path]
    parents: dict[str, dict[str, Any]]
    base_model: str | None
    tensors: int
    bytes: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    unknown_keys: list[str] = field(default_factory=list)  # ignored under --allow-unknown-keys (in the card)


def tensor_seed(seed: int, name: str) -> int:
    """A generator seed from the run seed and the tensor name, independent of processing order."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _open_models(
    config: MergeConfig, options: MergeOptions, scratch: Callable[[], Path], out_dir: Path
) -> dict[str, SourceModel]:
    from mergeguard.merge.output import refuse_overlap
    from mergeguard.refs import parse_model_ref, read_config, resolve_model

    revisions = {m.model: m.revision for m in config.inputs() if m.revision}
    models: dict[str, SourceModel] = {}
    for ref in config_models(config):
        parsed = parse_model_ref(ref, revisions.get(ref))
        path = resolve_model(
            parsed.name if not parsed.lora else type(parsed)(parsed.name, parsed.revision),
            allow_pickle=options.allow_pickle,
            local_files_only=options.local_files_only,
        )
        refuse_overlap(out_dir, [path])  # a hub model's cache folder too, before the adapter is applied
        if parsed.lora:
            from mergeguard.merge.lora import apply_lora

            path = apply_lora(path, parsed.lora, scratch(), allow_pickle=options.allow_pickle)
        reader = ModelReader(path, allow_pickle=options.allow_pickle)
        model_config = read_config(path)
        models[ref] = SourceModel(
            ref, path, reader, model_config, infer_architecture(reader.names(), model_config)
        )
    return models


def preflight(config: MergeConfig, out_dir: str | Path, options: MergeOptions) -> None:
    """The cheap checks of a merge's options (output folder, --strict, device), before any other work."""
    from mergeguard.merge.output import check_out_dir, local_inputs

    check_out_dir(Path(out_dir).expanduser().absolute(), local_inputs(config), options.force)
    if options.strict and config.warnings:
        raise ConfigError(f"{config.warnings[0]} (--strict)", hint="fix the config or drop --strict")
    if options.device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise MergeguardError(f"unknown device `{options.device}`", hint="use --device cpu or --device cuda")
    if options.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise MergeguardError(
                "--device cuda asked for, but no CUDA device is available", hint="use --device cpu"
            )


def run_merge(config: MergeConfig, out_dir: str | Path, options: MergeOptions | None = None) -> MergeResult:
    """Merge `config` into `out_dir`; every config/model problem is raised before any weights are read."""
    from mergeguard.merge.methods import get_method
    from mergeguard.merge.numpy_stream import prestart_workers, release_workers
    from mergeguard.merge.output import check_out_dir, discard, remove_stale_temps, replace_folder, temp_path

    options = options or MergeOptions()
    start = time.perf_counter()
    out_dir = Path(out_dir).expanduser().absolute()
    preflight(config, out_dir, options)
    method = get_method(config.merge_method)
    tmp = temp_path(out_dir, "tmp")
    scratch_dir = temp_path(out_dir, "lora")

    def scratch() -> Path:
        scratch_dir.mkdir(parents=True, exist_ok=True)
        return scratch_dir

    models: dict[str, SourceModel] = {}
    try:
        if options.backend != "torch":  # after the cheap checks (a refused merge starts none), inside the
            prestart_workers(config, options.device)  # try whose `finally` stops unused ones
        models = _open_models(config, options, scratch, out_dir)
        plan = _plan(config, method, models, options, scratch)
        from mergeguard.merge.output import check_tokenizer, finish_folder

        tokenizer_from = check_tokenizer(config, models, plan)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out_dir.parent)  # left by runs that were killed (their process is gone)
        discard(tmp)
        tmp.mkdir()
        written = _stream(config, method, models, plan, tmp, options)
        finish_folder(config, models, plan, tmp, tokenizer_from, options)
        check_out_dir(out_dir, (), options.force)  # again: OUT may have changed while the merge ran
        replace_folder(tmp, out_dir)
    finally:
        release_workers()
        for model in models.values():
            model.reader.close()
        discard(tmp)
        discard(scratch_dir)
    return MergeResult(
        out_dir=out_dir,
        method=method.name,
        models={ref: m.path for ref, m in models.items()},
        parents=plan.slice_weights | {ref: plan.slice_weights.get(ref, {}) for ref in models},
        base_model=config.base_model,
        tensors=len(plan.tasks),
        bytes=written,
        seconds=time.perf_counter() - start,
        warnings=list(config.warnings),
        unknown_keys=list(config.unknown_keys),
    )


def _plan(
    config: MergeConfig,
    method: Any,
    models: dict[str, SourceModel],
    options: MergeOptions,
    scratch: Callable[[], Path],
) -> MergePlan:
    """The tensor plan, with the output vocabulary built first when the config's tokenizer needs the
    inputs' vocabularies aligned (its files go to the scratch folder)."""
    vocabulary = None
    if config.tokenizer is not None:
        from mergeguard.merge.tokenizer import build_vocabulary, needs_alignment

        if needs_alignment(config.tokenizer, models):
            base = config.base_model or config_models(config)[0]
            vocabulary = build_vocabulary(config.tokenizer, models, base, scratch() / "tokenizer")
    return build_plan(
        config,
        method,
        models,
        allow_crimes=options.allow_crimes,
        vocabulary=vocabulary,
        truncate_embeddings=options.unsafe_truncate_embeddings,
    )


def _vocab_inputs(plan: MergePlan, task: TensorTask, raw: dict[tuple[str, str], Any]) -> dict[Any, Any]:
    """A vocabulary tensor's torch inputs, aligned (or truncated) in numpy, in their promoted dtype."""
    import torch

    dtype = functools.reduce(torch.promote_types, [t.dtype for t in raw.values()])
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    arrays = {pair[0]: t.to(wide).numpy() for pair, t in raw.items()}
    done = plan.vocab_inputs(task, arrays)
    return {pair: torch.from_numpy(done[pair[0]]).to(dtype) for pair in raw}


def _apply(method: Any, inputs: Any, out_dtype: Any) -> Any:
    """Run the method on one tensor and bring the result to the CPU in the output dtype."""
    if not inputs.tensors[0].is_floating_point():  # a buffer: copied when the inputs agree (as mergekit)
        tensors = [*inputs.tensors, *([inputs.base] if inputs.base is not None else [])]
        return agreed_buffer(inputs.name, tensors).to(device="cpu", dtype=out_dtype).contiguous()
    result = method.fn(inputs).to(device="cpu", dtype=out_dtype).contiguous()
    check_finite(inputs, result)
    return result


def check_finite(inputs: Any, result: Any) -> None:
    """Refuse a merged tensor with NaN/inf (a float16 overflow, a division by ~0) when its inputs are all
    finite; inputs that already hold such values pass through as the method makes them (as in mergekit)."""
    import torch

    if bool(torch.isfinite(result).all()):
        return
    if not all(bool(torch.isfinite(t).all()) for t in inputs.all_inputs()):
        return
    raise MergeguardError(
        f"the merged tensor {inputs.name} has values NaN or inf although its inputs are finite",
        hint="merge in float32 (`dtype: float32` or `out_dtype: float32`) or use smaller weights",
    )


def output_layout(
    config: MergeConfig, models: dict[str, SourceModel], plan: MergePlan
) -> list[tuple[str, str, tuple[int, ...], int]]:
    """(name, dtype, shape, bytes) of every output tensor in plan order: what the shard writer reserves."""
    import math

    import numpy as np

    from mergeguard.merge.kernels.floats import STORAGE

    layout = []
    for task in plan.tasks:
        dtype = out_dtype(config, models, task)
        itemsize = (STORAGE.get(dtype) or np.dtype(dtype)).itemsize
        layout.append((task.name, dtype, task.shape, math.prod(task.shape) * itemsize))
    return layout


def out_dtype(config: MergeConfig, models: dict[str, SourceModel], task: TensorTask) -> str:
    if config.out_dtype:
        return config.out_dtype
    if config.dtype:
        return config.dtype
    return promoted_dtype([models[ref].reader.dtype(name) for ref, name in task.sources()])


_FLOAT_RANK = ("bfloat16", "float16", "float32", "float64")


def promoted_dtype(dtypes: list[str]) -> str:
    """The dtype mergekit 0.1.5 computes and writes a tensor in without `dtype:` (torch's promotion of its
    inputs): bfloat16 + float32 -> float32, float16 + bfloat16 -> float32; integer buffers stay as stored."""
    floats = [d for d in dtypes if d in _FLOAT_RANK]
    if len(floats) != len(dtypes) or len(set(floats)) == 1:
        return dtypes[0]
    if set(floats) == {"bfloat16", "float16"}:
        return "float32"
    return max(floats, key=_FLOAT_RANK.index)


def _stream(
    config: MergeConfig,
    method: Any,
    models: dict[str, SourceModel],
    plan: MergePlan,
    out: Path,
    options: MergeOptions,
) -> int:
    """Read, merge and write every planned tensor, overlapping the three stages.

    numpy kernels run the merge when they can (no torch import, two tensors at once); else torch does.
    """
    from mergeguard.merge.numpy_stream import numpy_kernel, stream_numpy

    tune_malloc()
    if options.mergekit_rounding and options.backend == "numpy":
        raise MergeguardError(
            "--mergekit-rounding runs the torch methods", hint="drop backend='numpy' (use auto or torch)"
        )
    numpy_ok = options.backend != "torch" and not options.mergekit_rounding
    kernel = numpy_kernel(config, method, models, plan, options) if numpy_ok else None
    if kernel is None and options.backend == "numpy":
        raise MergeguardError(
            f"no numpy kernel can run this `{method.name}` merge", hint="drop backend='numpy' (use auto)"
        )
    if kernel is not None:
        return stream_numpy(config, method, kernel, models, plan, out, options)
    under_way(options, models)
    import torch

    threads = torch.get_num_threads()
    # one core stays free for the reader and writer threads; on a busy 2-core machine torch's own
    # parallelism costs more in synchronisation than it gains (measured: element-wise ops 2-5x slower)
    torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 2) - 1)))
    try:
        with torch.inference_mode():
            return _stream_tensors(config, method, models, plan, out, options)
    finally:
        torch.set_num_threads(threads)


def under_way(options: MergeOptions, models: dict[str, SourceModel]) -> None:
    """The merge has started: run the caller's `on_started` and start the card writer's imports."""
    if options.on_started is not None:
        options.on_started()
    if options.write_model_card:
        modules = ["huggingface_hub.repocard_data"]
        if any((model.path / "README.md").is_file() for model in models.values()):
            modules.append("huggingface_hub.repocard")  # reads the inputs' cards (`read_model_card`)
        warm_imports(modules)


_warming: list[threading.Thread] = []


def warm_imports(modules: list[str]) -> None:
    """Start importing the modules that the model card needs in the background: it is written at the
    end. Called once the merge's own work is under way (the import would otherwise hold the GIL that
    the planning needs); the reads, copies and waits on workers release it."""
    if _warming and _warming[0].is_alive():
        return
    _warming[:] = [threading.Thread(target=_import_quietly, args=(modules,), daemon=True)]
    _warming[0].start()


def _import_quietly(modules: list[str]) -> None:
    """Import `modules` in the background; a failure is left for the real import to report."""
    import importlib

    for module in modules:
        if module in sys.modules:
            continue
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - reported by the foreground import
            return


def _stream_tensors(
    config: MergeConfig,
    method: Any,
    models: dict[str, SourceModel],
    plan: MergePlan,
    out: Path,
    options: MergeOptions,
) -> int:
    import torch

    device = torch.device(options.device)
    compute_dtype = getattr(torch, config.dtype) if config.dtype else None
    seed = options.random_seed if options.random_seed is not None else int.from_bytes(os.urandom(4), "little")
    layout = output_layout(config, models, plan)
    writer = ShardWriter(out, layout, parse_size(options.out_shard_size))
    total_bytes = sum(e[3] for e in layout)

    def read(task: TensorTask) -> dict[tuple[str, str], Any]:
        raw = {pair: models[pair[0]].reader.get(pair[1]) for pair in task.sources()}
        return _vocab_inputs(plan, task, raw) if task.vocab else raw

    sizes = [sum(models[r].reader.nbytes(n) for r, n in t.sources()) for t in plan.tasks]
    pending: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=1)
    failure: list[BaseException] = []

    thread = threading.Thread(
        target=_write_loop, args=(writer, pending, failure), name="mergeguard-writer", daemon=True
    )
    thread.start()
    done_bytes = 0
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergeguard-reader") as pool:
            ahead: Future[dict[tuple[str, str], Any]] | None = (
                pool.submit(read, plan.tasks[0]) if plan.tasks else None
            )
            for i, task in enumerate(plan.tasks):
                raw = ahead.result() if ahead is not None else read(task)
                ahead = None
                # read the next inputs while this one computes, unless both together are big
                if i + 1 < len(plan.tasks) and sizes[i] + sizes[i + 1] <= PREFETCH_BUDGET:
                    ahead = pool.submit(read, plan.tasks[i + 1])
                loaded = _loaded(raw, device, compute_dtype)
                del raw
                result = _merged(method, task, loaded, device, seed, getattr(torch, layout[i][1]))
                del loaded
                if failure:
                    raise failure[0]
                pending.put((task.name, result))
                del result
                done_bytes += layout[i][3]
                if options.progress:
                    options.progress(Progress(i + 1, len(plan.tasks), done_bytes, total_bytes, task.name))
    finally:
        pending.put(None)
        thread.join()
    if failure:
        raise failure[0]
    writer.finish()
    return writer.bytes_written


def _write_loop(
    writer: ShardWriter, pending: queue.Queue[tuple[str, Any] | None], failure: list[BaseException]
) -> None:
    """The writer thread: write each merged tensor in turn until None; after a failure (surfaced in the
    main thread through `failure`) drain the queue without writing, so the compute loop never blocks."""
    import torch

    while True:
        item = pending.get()
        if item is None:
            return
        if failure:
            continue
        try:
            name, tensor = item
            writer.write(name, memoryview(tensor.view(torch.uint8).reshape(-1).numpy()))
        except BaseException as error:  # surfaced in the main thread
            failure.append(error)


def _loaded(raw: dict[tuple[str, str], Any], device: Any, compute_dtype: Any) -> dict[tuple[str, str], Any]:
    """A task's inputs on the device in the compute dtype: the config's `dtype`, else (as mergekit) torch's
    promotion of differing float inputs, else each as stored."""
    import torch

    common = compute_dtype
    kinds = {t.dtype for t in raw.values()}
    if common is None and len(kinds) > 1 and all(k.is_floating_point for k in kinds):
        common = functools.reduce(torch.promote_types, kinds)  # as mergekit, without `dtype:`
    return {pair: t.to(device=device, dtype=common or t.dtype, non_blocking=True) for pair, t in raw.items()}


def _merged(
    method: Any, task: TensorTask, loaded: dict[tuple[str, str], Any], device: Any, seed: int, out_dtype: Any
) -> Any:
    """One output tensor from its loaded inputs (a randomized method gets the tensor's own seeded
    generator), checked against the planned shape."""
    import torch

    from mergeguard.merge.methods.base import MergeInputs

    generator = None
    if method.randomized:
        generator = torch.Generator(device=device).manual_seed(tensor_seed(seed, task.name))
    inputs = MergeInputs(
        tensors=[loaded[pair] for pair in task.inputs],
        params=task.params,
        base=loaded[task.base] if task.base else None,
        base_index=task.base_index,
        options=task.options,
        name=task.name,
        generator=generator,
    )
    result = _apply(method, inputs, out_dtype)
    del inputs
    if tuple(result.shape) != task.shape:
        raise MergeguardError(
            f"merge_method `{method.name}` returned shape {list(result.shape)} for {task.name},"
            f" expected {list(task.shape)}"
        )
    return result
