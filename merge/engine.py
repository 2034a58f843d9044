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
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mergeguard.errors import ConfigError, MergeguardError
from mergeguard.merge.arch import infer_architecture
from mergeguard.merge.config import MergeConfig, config_models
from mergeguard.merge.io import ModelReader, ShardWriter, agreed_buffer, parse_size
from mergeguard.merge.layout import out_dtype, output_layout, promoted_dtype, tensor_seed
from mergeguard.merge.lora import apply_lora
from mergeguard.merge.memory import tune_malloc
from mergeguard.merge.methods import MergeMethod, get_method
from mergeguard.merge.methods.base import MergeInputs
from mergeguard.merge.numpy_stream import numpy_kernel, stream_numpy, workers_help_early
from mergeguard.merge.options import MergeOptions, MergeResult, Progress, under_way
from mergeguard.merge.output import (
    check_out_dir,
    check_tokenizer,
    discard,
    finish_folder,
    local_inputs,
    refuse_overlap,
    remove_stale_temps,
    replace_folder,
    temp_path,
)
from mergeguard.merge.plan import MergePlan, SourceModel, TensorTask, build_plan
from mergeguard.merge.tokenizer import build_vocabulary, needs_alignment
from mergeguard.merge.workers import WorkerPool, machine_cores
from mergeguard.refs import parse_model_ref, read_config, resolve_model

__all__ = [  # the options, progress and result types and the output layout live beside, re-exported here
    "MergeOptions",
    "MergeResult",
    "Progress",
    "WorkerPool",
    "out_dtype",
    "output_layout",
    "preflight",
    "promoted_dtype",
    "run_merge",
    "tensor_seed",
]

PREFETCH_BUDGET = 96 * 2**20  # bytes of raw inputs of two consecutive tensors held at once


def _open_models(
    config: MergeConfig, options: MergeOptions, scratch: Callable[[], Path], out_dir: Path
) -> dict[str, SourceModel]:
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
            path = apply_lora(path, parsed.lora, scratch(), allow_pickle=options.allow_pickle)
        reader = ModelReader(path, allow_pickle=options.allow_pickle)
        model_config = read_config(path)
        models[ref] = SourceModel(
            ref, path, reader, model_config, infer_architecture(reader.names(), model_config)
        )
    return models


def preflight(config: MergeConfig, out_dir: str | Path, options: MergeOptions) -> None:
    """The cheap checks of a merge's options (output folder, --strict, device), before any other work."""
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


def run_merge(
    config: MergeConfig,
    out_dir: str | Path,
    options: MergeOptions | None = None,
    pool: WorkerPool | None = None,
) -> MergeResult:
    """Merge `config` into `out_dir`; every config/model problem is raised before any weights are read.

    `pool`: the worker processes of the numpy kernels, owned by the caller (who may have started them
    early); None: the merge makes its own, started early when the merge will likely want them.
    """
    options = options or MergeOptions()
    start = time.perf_counter()
    out_dir = Path(out_dir).expanduser().absolute()
    preflight(config, out_dir, options)
    method = get_method(config.merge_method)
    own = pool is None
    pool = WorkerPool() if pool is None else pool
    try:
        if own and options.backend != "torch" and workers_help_early(config, options.device):
            pool.start()  # after the cheap checks: a refused merge starts none
        models, plan, written = _merge_into(config, method, out_dir, options, pool)
    finally:
        if own:
            pool.close()
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


def _merge_into(
    config: MergeConfig, method: MergeMethod, out_dir: Path, options: MergeOptions, pool: WorkerPool
) -> tuple[dict[str, SourceModel], MergePlan, int]:
    """Open, plan, stream and finish the merge in a temporary folder that replaces `out_dir` at the end:
    (the input models, the plan, the bytes written)."""
    tmp = temp_path(out_dir, "tmp")
    scratch_dir = temp_path(out_dir, "lora")

    def scratch() -> Path:
        scratch_dir.mkdir(parents=True, exist_ok=True)
        return scratch_dir

    models: dict[str, SourceModel] = {}
    try:
        models = _open_models(config, options, scratch, out_dir)
        plan = _plan(config, method, models, options, scratch)
        tokenizer_from = check_tokenizer(config, models, plan)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out_dir.parent)  # left by runs that were killed (their process is gone)
        discard(tmp)
        tmp.mkdir()
        written = _stream(config, method, models, plan, tmp, options, pool)
        finish_folder(config, models, plan, tmp, tokenizer_from, options)
        check_out_dir(out_dir, (), options.force)  # again: OUT may have changed while the merge ran
        replace_folder(tmp, out_dir)
    finally:
        for model in models.values():
            model.reader.close()
        discard(tmp)
        discard(scratch_dir)
    return models, plan, written


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
    if config.tokenizer is not None and needs_alignment(config.tokenizer, models):
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


def _stream(
    config: MergeConfig,
    method: Any,
    models: dict[str, SourceModel],
    plan: MergePlan,
    out: Path,
    options: MergeOptions,
    pool: WorkerPool,
) -> int:
    """Read, merge and write every planned tensor, overlapping the three stages.

    numpy kernels run the merge when they can (no torch import, tensors spread over `pool`'s processes);
    else torch does.
    """
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
        return stream_numpy(config, method, kernel, models, plan, out, options, pool)
    pool.close()  # the torch path runs in this process: workers started early are not needed
    under_way(options, models, pool)
    import torch

    threads = torch.get_num_threads()
    # one core stays free for the reader and writer threads, on which torch's own parallelism would wait
    torch.set_num_threads(max(1, min(threads, machine_cores() - 1)))
    try:
        with torch.inference_mode():
            return _stream_tensors(config, method, models, plan, out, options)
    finally:
        torch.set_num_threads(threads)


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
