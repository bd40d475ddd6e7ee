"""Render benchmark JSON files (``--json`` outputs) as the Markdown tables of ``docs/benchmarks.md``.

Every row carries what it was measured on: device, torch threads, date, commit and the
load average (1 / 5 / 15 min) of the shared machine at the time.

Example:
    python bench/report.py bench/results/cpu/*.json > /tmp/tables.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _load(value: list[float] | None) -> str:
    return " / ".join(f"{x:.1f}" for x in value) if value else "-"


def _where(d: dict[str, Any]) -> str:
    m = d["machine"]
    device = m.get("gpu") or f"{m.get('cpu_cores')}-core CPU"
    return f"{device}, {m.get('torch_threads')} thread(s), {m.get('date')}, commit {m.get('commit')}"


def train_step(d: dict[str, Any]) -> list[str]:
    out = [f"Training step ({_where(d)})", "",
           "| arch | S | batch | mode | attention | bf16 | compiled | step (s) | warm-up step (s) | images/s | peak MiB | load |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in d["results"]:
        for mode in ("reference", "optimised", "optimised_bf16"):
            if mode not in r:
                continue
            x = r[mode]
            out.append(f"| {r['arch']} | {r['image_size']} | {r['batch']} | {mode} | {x['attention']} | {x['bf16']} | "
                       f"{x['compiled']} | {x['step_s_median']:.3f} | {x['warmup_s']:.2f} | {x['images_per_s']:.2f} | "
                       f"{x['peak_memory_mb']:.0f} | {_load(x['load_average'])} |")
        out.append(f"| | | | **speed-up** | | | | | | **{r['speedup']}x** | x{r['memory_ratio']} | |")
        if "speedup_bf16" in r:
            out.append(f"| | | | **speed-up, bf16** | | | | | | **{r['speedup_bf16']}x** | x{r['memory_ratio_bf16']} | |")
    return out


def volume_inference(d: dict[str, Any]) -> list[str]:
    z, y, x = d["volume_zyx"]
    out = [f"Volume inference, {d['arch']} at {d['image_size']} px, {z} x {y} x {x} NIfTI, batch {d.get('batch', d['optimised']['batch'])}, "
           f"CPU bf16 {d.get('cpu_bf16', False)} ({_where(d)})", "",
           "| mode | batch | seconds | slices/s | speed-up | same labels | peak MiB | load |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for mode in ("reference", "optimised", "serial", "proposed"):
        if mode not in d:
            continue
        r = d[mode]
        sp = "1.00x" if mode == "reference" else f"{d['speedup'][mode]}x"
        agree = "-" if mode == "reference" else f"{100 * d['agreement'][mode]:.4f}%"
        out.append(f"| {mode} | {r['batch']} | {r['seconds']:.2f} | {r['slices_per_s']:.3f} | {sp} | {agree} | "
                   f"{r['peak_memory_mb']:.0f} | {_load(r['load_average'])} |")
    stages = d.get("profile", {}).get("stages_s")
    if stages:
        names = list(stages)
        out += ["", f"Busy seconds per stage of `predict` (separate profiled run, wall {d['profile']['wall_s']:.2f} s; "
                    "stages overlap in threads):", "",
                "| " + " | ".join(names) + " |", "| " + " | ".join("---" for _ in names) + " |",
                "| " + " | ".join(f"{stages[n]:.2f}" for n in names) + " |"]
    return out


def embed(d: dict[str, Any]) -> list[str]:
    out = [f"Slice embedding, DINOv2 {d['weights']} (D = {d['dim']}, {d['image_size']} px input) of {d['slices']} "
           f"slices of {d['slice_side']} px ({_where(d)})", "",
           "| mode | batch | seconds | embeddings/s | load |", "| --- | --- | --- | --- | --- |"]
    for mode in ("reference", "optimised"):
        r = d[mode]
        out.append(f"| {mode} ({r['attention']}) | {r['batch']} | {r['seconds']:.2f} | {r['embeddings_per_s']:.2f} | "
                   f"{_load(r['load_average'])} |")
    c = d["cached"]
    if "skipped" not in c:
        out.append(f"| cached (bank index) | - | {c['seconds']:.5f} | {c['embeddings_per_s']:.0f} | - |")
    out.append(f"\nSpeed-up optimised / reference: **{d['speedup']}x**; max |difference| {d['max_abs_difference']:.1e}.")
    return out


def retrieval_index(d: dict[str, Any]) -> list[str]:
    out = [f"Retrieval indexes, k = {d['k']}, faiss {d['faiss']} with {d['faiss_threads']} thread(s) ({_where(d)})", "",
           "| n | D | index | build (s) | query (ms) | batch queries/s | recall@10 | vs reference | load |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in d["results"]:
        ref = r["reference"]
        out.append(f"| {r['n']:.0e} | {r['dim']} | reference (NumPy exact) | - | {ref['query_ms_median']:.3f} | - | "
                   f"1.0 | 1.00x | {_load(r['load_average_start'])} |")
        for kind in ("flat", "ivf", "ivfpq", "ivfpq_refine", "hnsw"):
            if kind not in r:
                continue
            x = r[kind]
            if "skipped" in x:
                out.append(f"| {r['n']:.0e} | {r['dim']} | {kind} | skipped: {x['skipped']} | | | | | |")
                continue
            extra = ", ".join(f"{k}={v}" for k, v in x["settings"].items() if k in ("nlist", "nprobe", "ef_search", "refine") and v)
            out.append(f"| {r['n']:.0e} | {r['dim']} | {kind}{' (' + extra + ')' if extra else ''} | {x['build_s']:.2f} | "
                       f"{x['query_ms_median']:.3f} | {x['batch_queries_per_s']:.0f} | {x['recall_at_10']:.3f} | "
                       f"{x['speedup_vs_reference']}x | {_load(r['load_average_end'])} |")
    for s in d.get("skipped", []):
        out.append(f"| {s['n']:.0e} | {s['dim']} | all | skipped: {s['why']} | | | | | |")
    return out


def rag_segment(d: dict[str, Any]) -> list[str]:
    out = [f"Retrieval-augmented SAM 2 ({d['sam2']['name']}, {d['sam2']['image_size']} px), {d['query_slices']} query "
           f"slices of {d['slice_side']} px ({_where(d)})", "",
           "| k | no cache (s/slice) | precomputed (s/slice) | precompute once (s) | speed-up | same labels | load |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in d["results"]:
        out.append(f"| {r['k']} | {r['reference']['seconds_per_slice']:.3f} | {r['optimised']['seconds_per_slice']:.3f} | "
                   f"{r['optimised']['precompute_s']:.3f} | {r['speedup']}x | {100 * r['agreement']:.2f}% | "
                   f"{_load(r['load_average'])} |")
    return out


def rag_train_step(d: dict[str, Any]) -> list[str]:
    out = [f"Episodic SAM 2 training ({d['sam2']['name']}, {d['sam2']['image_size']} px, peft {d['peft']}, "
           f"{d['trainable_parameters']} trainable), slices of {d['slice_side']} px ({_where(d)})", "",
           "| k | episodes | training iteration (s) | training-free forward (s) | ratio | load |",
           "| --- | --- | --- | --- | --- | --- |"]
    for r in d["results"]:
        out.append(f"| {r['k']} | {r['batch']} | {r['train_iteration_s']:.3f} | {r['reference_forward_s']:.3f} | "
                   f"{r['train_over_forward']}x | {_load(r['load_average'])} |")
    return out


def throughput(d: dict[str, Any]) -> list[str]:
    out = [f"Model throughput, {d['arch']} at {d['image_size']} px, {d['slices']} slices in memory ({_where(d)})", "",
           "| mode | attention | LoRA | batch | bf16 | slices/s | speed-up | same labels | peak MiB | load |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for mode in ("reference", "optimised"):
        r = d[mode]
        sp = "1.00x" if mode == "reference" else f"{d['speedup']}x"
        agree = "-" if mode == "reference" else f"{100 * d['agreement']:.2f}%"
        out.append(f"| {mode} | {r['attention']} | {r['lora']} | {r['batch']} | {r['bf16']} | {r['slices_per_s']:.2f} | "
                   f"{sp} | {agree} | {r['peak_memory_mb']:.0f} | {_load(r['load_average'])} |")
    return out


def gpu_check(d: dict[str, Any]) -> list[str]:
    out = [f"Device checks, {d['arch']} at {d['image_size']} px, batch {d['batch']} ({_where(d)}): "
           f"**{'all passed' if d['ok'] else 'FAILED'}**", "", "| check | result | ok |", "| --- | --- | --- |"]
    for name, c in d["checks"].items():
        detail = ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in c.items()
                           if k not in ("ok", "where"))
        out.append(f"| {name} | {detail} | {c['ok']} |")
    return out


RENDERERS = {"gpu_check": gpu_check, "train_step": train_step, "throughput": throughput, "volume_inference": volume_inference, "embed": embed,
             "retrieval_index": retrieval_index, "rag_segment": rag_segment, "rag_train_step": rag_train_step}


def render(paths: list[Path]) -> str:
    """Markdown for the given result files, in the order given."""
    blocks = []
    for path in paths:
        d = json.loads(Path(path).read_text())
        blocks.append("\n".join([f"<!-- {Path(path).name} -->", *RENDERERS[d["benchmark"]](d)]))
    return "\n\n".join(blocks) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="JSON files written with --json")
    args = parser.parse_args(argv)
    text = render(args.files)
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
