"""Load a causal LM and its tokenizer: hub id, local folder, or GGUF file (cached as safetensors)."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from llm_maps import model_stack
from llm_maps.errors import LLMMapsError


def cache_root() -> Path:
    return Path(os.environ.get("LLM_MAPS_CACHE", Path.home() / ".cache" / "llm-maps"))


@dataclass
class LoadedModel:
    model: object  # transformers PreTrainedModel (causal LM)
    tokenizer: object
    device: str
    dtype: str
    info: dict = field(default_factory=dict)  # provenance for the manifest

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def max_positions(self) -> int | None:
        cfg = self.model.config
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None


def _new_cache_api() -> bool:
    """Whether transformers names the KV cache ``cache`` (forward argument and output field; its
    ``past_key_values`` name is deprecated, removed in 5.40) or still ``past_key_values``."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {})


def kv_cache(output):
    """The KV cache a forward returned, by the name this transformers version uses."""
    return output.cache if _new_cache_api() else output.past_key_values


def with_cache(cache) -> dict:
    """Forward keyword arguments that pass ``cache`` in, by the name this transformers version uses."""
    return {"cache": cache} if _new_cache_api() else {"past_key_values": cache}


# The one place a device and a precision are chosen: every stage (build, score, views, atlas,
# conditions, finetune, the worker, distributed chunks) goes through resolve_device / resolve_dtype.
def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda" when CUDA is available, else "cpu"; a CUDA device that this machine does not
    have is a one-line error."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LLMMapsError(f"--device {device}: CUDA is not available on this machine (use --device cpu or auto)")
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise LLMMapsError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                               f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    elif device != "cpu":
        raise LLMMapsError(f"--device {device}: unknown device (auto, cpu, cuda, cuda:N)")
    return device


def resolve_dtype(dtype: str, device: str):
    """"auto" -> bf16 on CUDA, fp32 on CPU; bf16 and fp16 can be asked for anywhere (CPU bf16 is
    tested on every machine)."""
    import torch

    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise LLMMapsError(f"--dtype: unknown dtype '{dtype}' (auto, float32, bfloat16, float16)")
    return table[dtype]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _looks_local(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or spec.endswith(".gguf") or "\\" in spec


def gguf_to_safetensors(folder: Path, gguf_file: str) -> tuple[Path, str]:
    """Convert a GGUF model once to a safetensors folder in the cache; return (folder, sha256).

    Loading a GGUF de-quantises every tensor (tens of seconds); the cached folder loads instantly.
    ``save_pretrained`` refuses a GGUF-loaded model, so we rebuild it from its config without
    ``quantization_config``, load the state dict and save that.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = folder / gguf_file
    if not path.is_file():
        raise LLMMapsError(f"{path}: GGUF file does not exist")
    sha = _sha256(path)
    target = cache_root() / "gguf" / f"{Path(gguf_file).stem}-{sha[:16]}"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target, sha
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file, dtype=torch.float32)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(model.state_dict())
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    clean.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / "SOURCE").write_text(f"{path}\nsha256={sha}\n", encoding="utf-8")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target, sha


def load_model(model: str, *, gguf_file: str | None = None, revision: str | None = None,
               dtype: str = "auto", device: str = "auto", layers_check: list[int] | None = None,
               trust_remote_code: bool = False, weights: bool = True, any_model: bool = False) -> LoadedModel:
    """Load ``model`` (hub id, folder, or a .gguf file path) for inference.

    ``weights=False``: tokenizer, config and provenance only (``model`` holds just ``.config``;
    device and dtype are left as given) — what a ``build --distributed`` client needs.
    ``any_model=True``: the backbone of any architecture (``AutoModel``: e.g. a sequence-classification
    reward model without its head), for hidden states only."""
    model_stack.require("loading a model")  # one line, not an ImportError from deep inside a stage
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    spec = str(model)
    info: dict = {"model": spec, "revision": revision}
    path = Path(spec).expanduser()
    if spec.endswith(".gguf") and gguf_file is None:
        path, gguf_file = path.parent, path.name
    if gguf_file is not None:
        if not path.is_dir():
            raise LLMMapsError(f"{spec}: model folder does not exist")
        load_from, sha = gguf_to_safetensors(path, gguf_file)
        info.update({"gguf_file": gguf_file, "file_sha256": sha, "converted_to": str(load_from)})
    elif path.exists():
        if not (path / "config.json").exists():
            raise LLMMapsError(f"{path}: not a model folder (no config.json)")
        load_from = path
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        if files:
            info["file_sha256"] = _sha256(files[0]) if files[0].stat().st_size < (1 << 30) else None
    elif _looks_local(spec):
        raise LLMMapsError(f"{spec}: model path does not exist")
    else:
        load_from = spec  # hub id

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars show progress; keep stderr to one line on errors
    dev = resolve_device(device) if weights else device
    torch_dtype = resolve_dtype(dtype, dev) if weights else None
    try:
        config = AutoConfig.from_pretrained(str(load_from), revision=revision,
                                            trust_remote_code=trust_remote_code)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LLMMapsError(f"{spec}: cannot load model config ({first})") from None
    n_layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    for k in layers_check or []:
        if not -n_layers - 1 <= k <= n_layers:
            raise LLMMapsError(f"--layers: layer {k} is out of range for {spec} "
                               f"(hidden_states has indices 0..{n_layers})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(load_from), revision=revision,
                                                  trust_remote_code=trust_remote_code)
        if not weights:
            from types import SimpleNamespace

            if revision is None:
                info["revision"] = getattr(config, "_commit_hash", None)
            try:
                arch = (AutoModel if any_model else AutoModelForCausalLM)._model_mapping[type(config)].__name__
            except Exception:  # noqa: BLE001 - remote code or an unknown config: what the config says
                arch = (getattr(config, "architectures", None) or ["?"])[0]
            info.update({"architecture": arch, "num_layers": n_layers, "hidden_size": int(config.hidden_size)})
            return LoadedModel(model=SimpleNamespace(config=config), tokenizer=tokenizer, device=str(device),
                               dtype=str(dtype), info=info)
        lm = (AutoModel if any_model else AutoModelForCausalLM).from_pretrained(str(load_from), revision=revision, dtype=torch_dtype,
                                                  trust_remote_code=trust_remote_code)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LLMMapsError(f"{spec}: cannot load model ({first})") from None
    lm.to(dev)
    lm.eval()
    if revision is None:
        info["revision"] = getattr(config, "_commit_hash", None)
    info.update({"architecture": type(lm).__name__, "num_layers": n_layers,
                 "hidden_size": int(config.hidden_size)})
    dtype_name = str(torch_dtype).replace("torch.", "")
    return LoadedModel(model=lm, tokenizer=tokenizer, device=dev, dtype=dtype_name, info=info)
