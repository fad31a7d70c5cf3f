"""What the publish check costs: ``python -m bench.publish_check [--small] [--json]``.

A node checks every upload before publishing it (``p2pagent.models.publish_check``): the
archive read without running it, then a spawned child that loads the file and runs one batch
on its metadata's example inputs. This measures that check per model file, and beside it, in
the same run, the baseline: loading the same file and running the same batch in this
process (what a node pays anyway at the first Infer of a model). The difference is what the
check adds to a push: a fresh interpreter with torch, and the archive read.

Target (ours, the issue sets none): the check adds at most 5 s to a push beyond the
in-process load and run, for each file. The child's peak RSS is reported (the largest of the
run: ``RUSAGE_CHILDREN``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from p2pagent.inference import demo_model, loading
from p2pagent.inference.formats import ModelFormat
from p2pagent.inference.runner import BatchRunner
from p2pagent.inference.spec import DYNAMIC, ModelSpec
from p2pagent.models.publish_check import EXAMPLE_DYNAMIC, check_model
from p2pagent.testing.uploads import safetensors_like

#: Most seconds the check may add to a push beyond the in-process load and run.
TARGET_EXTRA_S = 5.0


@dataclass(frozen=True)
class Row:
    file: str
    mib: float
    in_process_s: float
    check_s: float

    @property
    def extra_s(self) -> float:
        return self.check_s - self.in_process_s


def _in_process(path: Path, fmt: str, spec: dict[str, object]) -> float:
    start = time.perf_counter()
    s = ModelSpec.from_dict(spec)
    model = loading.load_model("bench", path, s, "cpu", ModelFormat.parse(fmt))
    inputs = [
        torch.zeros([EXAMPLE_DYNAMIC if d == DYNAMIC else d for d in p.shape], dtype=p.torch_dtype)
        for p in s.inputs
    ]
    BatchRunner(torch.device("cpu")).run(model, [inputs])
    return time.perf_counter() - start


def _cases(out: Path, small: bool) -> list[tuple[str, Path, str, dict[str, object]]]:
    files = demo_model.write_all(out)
    spec = json.loads(files["metadata"].read_text())
    noop = json.loads(files["noop_metadata"].read_text())
    cases = [
        ("demo torchscript", files["torchscript"], "torchscript", spec),
        ("demo torch.export", files["torch_export"], "export", spec),
        ("demo safetensors", files["safetensors"], "safetensors", spec),
    ]
    mib = 16 if small else 256
    blob = out / "blob.safetensors"
    blob.write_bytes(safetensors_like(mib << 20, seed=1))
    cases.append((f"{mib} MiB safetensors (noop)", blob, "safetensors", noop))
    if not small:
        large = demo_model.write_large(out)
        meta = json.loads((out / "demo-large.metadata.json").read_text())
        cases.append(("large torchscript", large, "torchscript", meta))
    return cases


async def _measure(args: argparse.Namespace) -> tuple[list[Row], float]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, path, fmt, spec in _cases(Path(tmp), args.small):
            base, check = [], []
            for _ in range(args.rounds):
                base.append(_in_process(path, fmt, spec))
                check.append(
                    await check_model(path, fmt, spec, timeout_s=300, memory_bytes=8 << 30)
                )
            mib = round(path.stat().st_size / 2**20, 1)
            rows.append(Row(label, mib, statistics.median(base), statistics.median(check)))
    child_rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return rows, child_rss_mib


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--small", action="store_true", help="demo files and 16 MiB only")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows, rss = asyncio.run(_measure(args))
    targets = [
        {
            "name": f"publish check of {r.file}: seconds beyond in-process load+run",
            "measured": round(r.extra_s, 2),
            "target": TARGET_EXTRA_S,
            "met": r.extra_s <= TARGET_EXTRA_S,
        }
        for r in rows
    ]
    if args.json:
        doc = {"rows": [asdict(r) for r in rows], "child_peak_rss_mib": rss, "targets": targets}
        print(json.dumps(doc))
        return
    print("| file | MiB | in-process load+run s | publish check s |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r.file} | {r.mib} | {r.in_process_s:.2f} | {r.check_s:.2f} |")
    print(f"\nchecking child's peak RSS (largest of the run): {rss:.0f} MiB\n")
    print("| target | measured | met |")
    print("|---|---:|---|")
    for t in targets:
        met = "yes" if t["met"] else "no"
        print(f"| {t['name']} <= {t['target']} s | {t['measured']} s | {met} |")


if __name__ == "__main__":
    main()
