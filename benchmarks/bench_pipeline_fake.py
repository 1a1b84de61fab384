"""The whole build pipeline (sources, split, templates, encode, map, distances, manifest, publish)
with the torch-free fake encoder of the tests, side by side with a tiny random transformers model
(the encoder `build` loads by default), on the same data, imports warmed first.

    python benchmarks/bench_pipeline_fake.py [--rows 200] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()

    from conftest import build_tiny_model, dolly_rows, write_jsonl
    from fake_encoder import FakeEncoder
    from llm_maps.config import BuildConfig
    from pipelines.build import build_run
    from pipelines.encoder import TransformersEncoder

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = write_jsonl(tmp_path / "d.jsonl", dolly_rows(args.rows))
        model = build_tiny_model("gpt_neox", tmp_path / "model")
        base = BuildConfig(data=[str(data)], model=str(model), template="dolly", projection="pca",
                           layers=[1, 3], k=5, progress=False)
        real = TransformersEncoder.load(base)  # loaded once: time the pipeline, not the model load
        encoders = {"fake (torch-free)": FakeEncoder(), "tiny gpt_neox (transformers)": real}
        times: dict[str, list[float]] = {name: [] for name in encoders}
        for name, enc in encoders.items():  # warm-up: imports, sklearn, first forward
            build_run(base.replace(out=str(tmp_path / "warm")), encoder=enc, log=lambda m: None)
        for i in range(args.repeat):
            for name, enc in encoders.items():
                start = time.perf_counter()
                build_run(base.replace(out=str(tmp_path / f"r{i}")), encoder=enc, log=lambda m: None)
                times[name].append(time.perf_counter() - start)
        print(f"build_run on {args.rows} Dolly-format rows, PCA map, layers [1, 3], k=5; "
              f"median of {args.repeat} (seconds)")
        for name, ts in times.items():
            print(f"  {name:<30} {statistics.median(ts) * 1000:8.1f} ms")
        fake, real_t = (statistics.median(t) for t in times.values())
        print(f"  ratio (transformers / fake)    {real_t / fake:8.1f}x")


if __name__ == "__main__":
    main()
