"""lm-eval's own run options as `mergeguard eval` passes them through, and the parsing of their text forms
(`--seed`, `--model_args`, `--metadata`) the way lm-eval's command line reads them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mergeguard.errors import UsageError


@dataclass
class LmEvalExtras:
    """lm-eval's own run options, passed through as `lm_eval run` takes them (its spellings on `eval`)."""

    model_args: dict[str, Any] = field(default_factory=dict)
    max_batch_size: int | None = None
    apply_chat_template: bool | str = False
    system_instruction: str | None = None
    fewshot_as_multiturn: bool | None = None
    gen_kwargs: str | None = None
    log_samples: bool = False
    seeds: tuple[int, int, int, int] | None = None  # python, numpy, torch, fewshot
    include_path: str | None = None
    use_cache: str | None = None
    cache_requests: str | None = None  # true | refresh | delete
    check_integrity: bool = False
    write_out: bool = False
    predict_only: bool = False
    verbosity: str | None = None
    confirm_run_unsafe_code: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    def evaluate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `lm_eval.simple_evaluate` for these options."""
        out: dict[str, Any] = {
            "max_batch_size": self.max_batch_size,
            "apply_chat_template": self.apply_chat_template,
            "system_instruction": self.system_instruction,
            "gen_kwargs": self.gen_kwargs,
            "use_cache": self.use_cache,
            "cache_requests": self.cache_requests in ("true", "refresh"),
            "rewrite_requests_cache": self.cache_requests == "refresh",
            "delete_requests_cache": self.cache_requests == "delete",
            "check_integrity": self.check_integrity,
            "write_out": self.write_out,
            "predict_only": self.predict_only,
            "confirm_run_unsafe_code": self.confirm_run_unsafe_code,
        }
        if self.fewshot_as_multiturn is not None:
            out["fewshot_as_multiturn"] = self.fewshot_as_multiturn
        if self.verbosity:
            out["verbosity"] = self.verbosity
        if self.metadata:
            out["metadata"] = self.metadata
        if self.seeds is not None:
            python, numpy, torch, fewshot = self.seeds
            out.update(
                random_seed=python,
                numpy_random_seed=numpy,
                torch_random_seed=torch,
                fewshot_random_seed=fewshot,
            )
        return out


def parse_seed(text: str) -> tuple[int, int, int, int]:
    """lm-eval's `--seed`: one integer for all four generators, or `python,numpy,torch,fewshot`."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError as error:
        raise UsageError(f"--seed {text!r} is not a number", hint="give 1234 or 0,1234,1234,1234") from error
    if len(values) == 1:
        values *= 4
    if len(values) != 4:
        raise UsageError(f"--seed {text!r} needs 1 or 4 numbers", hint="give 1234 or 0,1234,1234,1234")
    return values[0], values[1], values[2], values[3]


def parse_key_values(text: str, flag: str) -> dict[str, Any]:
    """lm-eval's `key=value,key=value` (`--model_args`, `--metadata`), values as numbers when they are."""
    out: dict[str, Any] = {}
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        key, sep, value = piece.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} {piece!r} is not key=value", hint=f"write {flag} key=value,key=value")
        out[key.strip()] = _number_or_text(value.strip())
    return out


def _number_or_text(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return {"true": True, "false": False}.get(value.lower(), value)
