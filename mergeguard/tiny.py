"""Tiny but real causal language models, built in code.

Tests, the demo and the perf scripts need models that `transformers` loads offline: a real `config.json`,
real safetensors weights (one file or sharded with an index), and a real tokenizer. Nothing here downloads.
A "fine-tune" is the base plus small seeded deltas, written tensor by tensor.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from safetensors import safe_open
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

if TYPE_CHECKING:
    from transformers import PretrainedConfig

ARCHITECTURES = ("llama", "mistral", "qwen2", "gemma", "phi3", "gpt2")

_CORPUS = """
The quick brown fox jumps over the lazy dog. A merge of two fine-tuned models inherits what each parent saw.
Question: What is the capital of France? Answer: Paris is the capital of France.
Which of the following is a prime number? 2, 4, 6, 8. The answer is 2 because it has two divisors.
Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.
How many clips did Natalia sell altogether in April and May? She sold 48 + 24 = 72 clips.
Write a short poem about the sea. The sea is wide, the sea is deep, the waves roll in while sailors sleep.
Explain why the sky is blue. Sunlight is scattered by molecules in the air, and blue light scatters most.
Give three tips for staying healthy: eat a balanced diet, exercise regularly, and get enough sleep.
Translate the sentence into French. Summarize the article in one paragraph. Classify the following animals.
Models are trained on data; evaluation data must stay unseen, or the scores measure memory, not skill.
0 1 2 3 4 5 6 7 8 9 10 100 1000 + - * / = ( ) [ ] { } < > ! ? . , ; : ' " # $ % & @
"""


def training_corpus() -> list[str]:
    """A small embedded English corpus, enough to train a byte-level BPE tokenizer."""
    return [line.strip() for line in _CORPUS.strip().splitlines() if line.strip()]


def train_tokenizer(out_dir: str | Path, vocab_size: int = 512) -> Path:
    """Train a byte-level BPE tokenizer locally with `tokenizers` and save it the way transformers expects."""
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|pad|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus() * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=specials[0], eos_token=specials[0], pad_token=specials[1]
    )
    fast.save_pretrained(out)
    return out


def _config(
    arch: str, vocab_size: int, hidden: int, layers: int, heads: int, kv_heads: int, inter: int
) -> PretrainedConfig:
    import transformers as tf

    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": 1,
    }
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=256, **common)
    decoder: dict[str, Any] = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": inter,
        "max_position_embeddings": 256,
        **common,
    }
    if arch == "llama":
        return tf.LlamaConfig(tie_word_embeddings=False, **decoder)
    if arch == "mistral":
        return tf.MistralConfig(tie_word_embeddings=False, **decoder)
    if arch == "qwen2":
        return tf.Qwen2Config(tie_word_embeddings=True, **decoder)
    if arch == "gemma":
        return tf.GemmaConfig(head_dim=hidden // heads, tie_word_embeddings=True, **decoder)
    if arch == "phi3":
        decoder["num_key_value_heads"] = heads
        return tf.Phi3Config(
            tie_word_embeddings=False,
            pad_token_id=1,
            **{k: v for k, v in decoder.items() if k != "pad_token_id"},
        )
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


def build_model(
    out_dir: str | Path,
    arch: str = "llama",
    *,
    seed: int = 0,
    tokenizer_dir: str | Path | None = None,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    dtype: str = "float32",
    shard_size: str | int | None = None,
    card: dict[str, Any] | None = None,
) -> Path:
    """Build a randomly initialised (seeded) model of `arch` and save it with safetensors.

    `shard_size` (e.g. "40KB") splits the weights into several files with `model.safetensors.index.json`.
    `tokenizer_dir` is copied in (train one with `train_tokenizer`); without it, one is trained here.
    """
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = _config(arch, vocab_size, hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model = model.to(getattr(torch, dtype))
    kwargs: dict[str, Any] = {"safe_serialization": True}
    if shard_size is not None:
        kwargs["max_shard_size"] = shard_size
    model.save_pretrained(out, **kwargs)
    if tokenizer_dir is None:
        train_tokenizer(out, vocab_size=vocab_size)
    else:
        copy_tokenizer(tokenizer_dir, out)
    if card is not None:
        write_card(out, **card)
    return out


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def copy_tokenizer(src: str | Path, dst: str | Path) -> None:
    """Copy the tokenizer files of a saved tokenizer from `src` into `dst`."""
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)


def weight_files(folder: str | Path) -> list[Path]:
    """The safetensors files of a saved model, in index order."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    return sorted(folder.glob("*.safetensors"))


def finetune_variant(
    base_dir: str | Path,
    out_dir: str | Path,
    *,
    seed: int,
    scale: float = 0.01,
    card: dict[str, Any] | None = None,
) -> Path:
    """A "fine-tune" of `base_dir`: every floating tensor plus seeded Gaussian deltas of std `scale`.

    The file layout (single file or shards with the same index) and all non-weight files are kept.
    """
    import torch
    from safetensors.torch import save_file

    base, out = Path(base_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for item in base.iterdir():
        if item.is_file() and item.suffix != ".safetensors" and item.name != "README.md":
            shutil.copy2(item, out / item.name)
    generator = torch.Generator().manual_seed(seed)
    for path in weight_files(base):
        tensors = {}
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata()
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                tensor = handle.get_tensor(name)
                if tensor.is_floating_point():
                    noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * scale
                    tensor = (tensor.float() + noise).to(tensor.dtype)
                tensors[name] = tensor.contiguous()
        save_file(tensors, out / path.name, metadata=metadata)
    if card is not None:
        write_card(out, **card)
    return out


def write_card(
    folder: str | Path,
    *,
    datasets: list[str] | None = None,
    base_model: str | list[str] | None = None,
    body: str = "",
    **metadata: Any,
) -> Path:
    """Write `README.md` with YAML front matter (`datasets:`, `base_model:`, anything else given)."""
    meta: dict[str, Any] = dict(metadata)
    if base_model is not None:
        meta["base_model"] = base_model
    if datasets is not None:
        meta["datasets"] = list(datasets)
    path = Path(folder) / "README.md"
    front = yaml.safe_dump(meta, sort_keys=False).strip()
    path.write_text(f"---\n{front}\n---\n\n{body or '# Model card'}\n", encoding="utf-8")
    return path


def train_finetune(
    base_dir: str | Path,
    out_dir: str | Path,
    texts: list[str],
    steps: int,
    seed: int,
    lr: float,
    card: dict[str, Any] | None = None,
    *,
    block_size: int = 32,
    batch_size: int = 4,
    threads: int | None = 1,
) -> Path:
    """Fine-tune `base_dir` for real on `texts` (next-token loss, AdamW, CPU) and save it to `out_dir`.

    Unlike `finetune_variant`'s random deltas, this moves the weights the way training does, so the family
    and sanity checks can be calibrated on genuine fine-tunes. A few hundred steps of a tiny model take
    little time. The result keeps the base's dtype and tokenizer; `card` writes a model card. `threads` caps
    torch's CPU threads during the loop (restored after): tiny models run fastest on one thread, and many
    threads on a busy machine make each step much slower.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, out = Path(base_dir), Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=False)  # tiny models need no code
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text)["input_ids"] + [eos]
    while len(ids) < block_size + 2:
        ids = ids * 2
    data = torch.tensor(ids, dtype=torch.long)
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto", trust_remote_code=False)
    dtype = next(model.parameters()).dtype
    model = model.float().train()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for _ in range(steps):
            starts = torch.randint(0, len(data) - block_size, (batch_size,), generator=generator)
            batch = torch.stack([data[s : s + block_size] for s in starts.tolist()])
            loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    finally:
        torch.set_num_threads(previous_threads)
    out.mkdir(parents=True, exist_ok=True)
    model.eval().to(dtype).save_pretrained(out, safe_serialization=True)
    copy_tokenizer(base, out)
    if card is not None:
        write_card(out, **card)
    return out
