"""What ``build_run`` needs from a model: the ``Encoder`` protocol, and the real one.

``build_run`` receives an encoder (by default ``TransformersEncoder.load(config)``, which loads
the transformers model and encodes with ``pipelines.encode.encode_to_folder``, or on the Celery
workers with ``--distributed``). Anything with the same attributes and ``encode`` method works:
tests drive the whole pipeline (split, templates, map, distances, manifest, publish) with a
small torch-free fake (tests/fake_encoder.py) in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, runtime_checkable

from llm_maps.errors import LLMMapsError
from llm_maps.jobs import redis_url
from pipelines.distributed import encode_distributed
from pipelines.encode import EncodeResult, encode_to_folder
from pipelines.models import LoadedModel, load_model

if TYPE_CHECKING:
    from llm_maps.config import BuildConfig


@runtime_checkable
class Encoder(Protocol):
    """A model that writes the run's encodings.

    ``encode`` writes ``out_dir/encodings/layer_<k>.npy`` (float16 ``[N, hidden_size]``, row i =
    prompt i, the state at its last token, keeping the last ``max_length`` tokens) for every k in
    ``layers`` (already normalised to ``0..num_layers``) and returns an ``EncodeResult``. The
    attributes may be plain attributes or properties.
    """

    @property
    def num_layers(self) -> int: ...  # hidden_states indices are 0..num_layers

    @property
    def hidden_size(self) -> int: ...

    @property
    def max_positions(self) -> int | None: ...  # the longest input the model takes (None: unknown)

    @property
    def device(self) -> str: ...  # recorded in the manifest

    @property
    def dtype(self) -> str: ...

    @property
    def info(self) -> dict[str, Any]: ...  # provenance: manifest["model_info"] (revision, file_sha256, ...)

    @property
    def tokenizer(self) -> Any: ...  # for prompt templates (chat templates, EOS); None when there is none

    def encode(self, prompts: Sequence[str], out_dir: Path, *, layers: Sequence[int], add_eos: bool,
               max_length: int | None, batch_tokens: int | None, progress: bool,
               log: Callable[[str], Any]) -> "EncodeResult": ...


@dataclass
class TransformersEncoder:
    """The real encoder: a transformers causal LM (``pipelines.models.load_model``)."""

    loaded: "LoadedModel"
    model_spec: str
    distributed: bool = False
    chunk_size: int = 512
    spec: dict[str, Any] | None = None  # how distributed workers load the model

    @classmethod
    def load(cls, config: "BuildConfig") -> "TransformersEncoder":
        """Load ``config.model`` (weights only when encoding here, not ``--distributed``)."""
        if config.distributed:
            if not redis_url():
                raise LLMMapsError("--distributed: set REDIS_URL to the Redis the `llm-maps worker` processes use")
        layers = [] if isinstance(config.layers, str) else list(config.layers or [])  # "all": every layer
        checks = layers + ([config.default_layer] if config.default_layer is not None else [])
        loaded = load_model(config.model, gguf_file=config.gguf_file, revision=config.revision, dtype=config.dtype,
                            device=config.device, layers_check=checks, weights=not config.distributed)
        spec = {"model": str(config.model), "gguf_file": config.gguf_file, "revision": config.revision,
                "dtype": config.dtype, "device": config.device}
        return cls(loaded=loaded, model_spec=str(config.model), distributed=config.distributed,
                   chunk_size=config.chunk_size, spec=spec)

    @property
    def num_layers(self) -> int:
        return self.loaded.num_layers

    @property
    def hidden_size(self) -> int:
        return int(self.loaded.model.config.hidden_size)

    @property
    def max_positions(self) -> int | None:
        return self.loaded.max_positions

    @property
    def n_params(self) -> int:
        """The model's parameter count (tied weights once): the manifest's ``n_params``. Without
        weights (a ``--distributed`` client) the model is built from its config on the meta
        device, which allocates nothing. Optional for other encoders (not in ``Encoder``)."""
        model = self.loaded.model
        if not hasattr(model, "parameters"):
            import torch
            from transformers import AutoModelForCausalLM

            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(model.config)
        return int(sum(p.numel() for p in model.parameters()))

    @property
    def device(self) -> str:
        return self.loaded.device

    @property
    def dtype(self) -> str:
        return self.loaded.dtype

    @property
    def info(self) -> dict[str, Any]:
        return self.loaded.info

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    def encode(self, prompts: Sequence[str], out_dir: Path, *, layers: Sequence[int], add_eos: bool,
               max_length: int | None, batch_tokens: int | None, progress: bool,
               log: Callable[[str], Any]) -> "EncodeResult":
        if self.distributed:
            log(f"encoding {len(prompts)} prompts with {self.model_spec} on the workers of REDIS_URL, "
                f"layers {list(layers)}, into {out_dir}")
            result, info = encode_distributed(self.loaded, list(prompts), out_dir, layers=layers, add_eos=add_eos,
                                              max_length=max_length, batch_tokens=batch_tokens,
                                              chunk_size=self.chunk_size, progress=progress, log=log,
                                              spec=self.spec or {})
            result.device, result.dtype = info.pop("device"), info.pop("dtype")
            result.distributed = info
            return result
        log(f"encoding {len(prompts)} prompts with {self.model_spec} on {self.device} ({self.dtype}), "
            f"layers {list(layers)}, into {out_dir}")
        return encode_to_folder(self.loaded, list(prompts), out_dir, layers=layers, add_eos=add_eos,
                                max_length=max_length, batch_tokens=batch_tokens, progress=progress)

