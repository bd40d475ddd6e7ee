"""Smoke runs of every benchmark's ``--quick`` mode (in this process), checking the JSON they emit.

Timings are never asserted (CONTRIBUTING: timings live in bench/); what is checked
is that each script measures both modes, writes the JSON it prints, and that the
optimised path computes the same thing as the reference mode.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
QUICK = ["--quick", "--threads", "1", "--device", "cpu"]


def _script(name: str):
    """Import ``bench/<name>.py`` as a module (the scripts are not a package)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"ragsam_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPTS = ("gpu_check", "train_step", "throughput", "volume_inference", "embed", "retrieval_index", "rag_segment",
           "rag_train_step")


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, Path]]:
    """Every script's ``--quick`` result and the JSON file it wrote (run once per module)."""
    folder = tmp_path_factory.mktemp("bench")
    results = {}
    old_threads = torch.get_num_threads()
    try:
        for name in SCRIPTS:
            torch.manual_seed(0)
            out = folder / f"{name}.json"
            results[name] = (_script(name).main([*QUICK, "--json", str(out)]), out)
    finally:
        torch.set_num_threads(old_threads)
    return results


def _result(quick: dict[str, tuple[dict, Path]], name: str) -> dict:
    result, out = quick[name]
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))  # the file is what was printed
    assert result["benchmark"] == name and result["quick"] is True
    assert {"date", "cpu_cores", "torch", "commit"} <= set(result["machine"])
    return result


def test_gpu_check_quick(quick: dict) -> None:
    result = _result(quick, "gpu_check")
    checks = result["checks"]
    assert result["ok"] is True and set(checks) == {"fused_vs_eager", "bf16", "fused_kernels"}  # no CUDA here
    assert checks["fused_vs_eager"]["output"] < 1e-5 and checks["fused_vs_eager"]["lora_grad"] < 1e-5
    assert 0 < checks["bf16"]["output"] < 3e-2  # bf16 really ran (not exactly fp32) and stayed close


def test_train_step_quick(quick: dict) -> None:
    result = _result(quick, "train_step")
    (row,) = result["results"]
    ref, opt = row["reference"], row["optimised"]
    assert (ref["attention"], opt["attention"]) == ("eager", "fused")
    assert ref["bf16"] is False and opt["bf16"] is False  # CPU without --cpu-bf16
    for mode in (ref, opt):
        assert {"images_per_s", "step_s_median", "peak_memory_mb", "load_average"} <= set(mode)
        assert mode["images_per_s"] == pytest.approx(row["batch"] / mode["step_s_median"], rel=1e-2)
    # same seed, data and steps: eager and fused attention train to the same losses
    assert opt["loss_sum"] == pytest.approx(ref["loss_sum"], abs=2e-4)  # JSON keeps 4 decimals
    assert row["speedup"] == pytest.approx(opt["images_per_s"] / ref["images_per_s"], abs=0.01)


def test_volume_inference_quick(quick: dict) -> None:
    result = _result(quick, "volume_inference")
    assert result["volume_zyx"] == [4, 64, 64]
    for mode in ("reference", "optimised"):
        assert result[mode]["slices"] == 4
        # seconds is rounded to the millisecond in the JSON: compare the implied time to within that rounding.
        assert abs(4 / result[mode]["slices_per_s"] - result[mode]["seconds"]) <= 1e-3
    assert result["reference"]["batch"] == 1
    # batched, merged, fused-attention inference writes the same labels as SAMed's loop
    assert result["agreement"] == {"optimised": 1.0}


def test_throughput_quick(quick: dict) -> None:
    result = _result(quick, "throughput")
    ref, opt = result["reference"], result["optimised"]
    assert (ref["batch"], ref["attention"], ref["lora"]) == (1, "eager", "unmerged")
    assert (opt["batch"], opt["attention"], opt["lora"]) == (2, "fused", "merged")
    assert ref["bf16"] is False and opt["bf16"] is False  # CPU without --cpu-bf16
    assert result["agreement"] == 1.0  # merged LoRA + fused attention label every pixel as the reference
    assert result["speedup"] == pytest.approx(opt["slices_per_s"] / ref["slices_per_s"], abs=0.01)


def test_embed_quick(quick: dict) -> None:
    result = _result(quick, "embed")
    assert result["dim"] == 32 and result["slices"] == 4
    assert result["reference"]["batch"] == 1 and result["optimised"]["batch"] == 4
    assert result["max_abs_difference"] < 1e-5  # batching and SDPA do not change the embeddings
    assert result["cached"]["exact"] is True


def test_retrieval_index_quick(quick: dict) -> None:
    result = _result(quick, "retrieval_index")
    (row,) = result["results"]
    assert (row["n"], row["dim"], row["queries"]) == (2000, 32, 20)
    assert row["flat"]["recall_at_10"] == 1.0  # exact search finds the exact neighbours
    assert row["ivf"]["settings"]["nlist"] == 51  # min(4 sqrt(2000), 2000 // 39)
    for kind in ("flat", "ivf", "hnsw"):
        assert 0.0 <= row[kind]["recall_at_10"] <= 1.0 and row[kind]["build_s"] >= 0
    # IVF-PQ re-ranked exactly from the memory-mapped vectors (measured 0.96) beats PQ alone (0.34)
    assert row["ivfpq_refine"]["settings"]["refine"] == 10 and row["ivfpq"]["settings"]["refine"] is None
    assert row["ivfpq_refine"]["recall_at_10"] >= 0.9 > row["ivfpq"]["recall_at_10"]
    assert row["ivfpq_refine"]["embeddings_bytes"] == 4 * 2000 * 32


def test_rag_segment_quick(quick: dict) -> None:
    result = _result(quick, "rag_segment")
    assert [r["k"] for r in result["results"]] == [1, 2]
    for row in result["results"]:
        assert row["agreement"] == 1.0  # precomputed memories give the labels of recomputed ones
        assert row["organs_on_supports"] >= 1
        assert row["optimised"]["precompute_s"] > 0


def test_rag_train_step_quick(quick: dict) -> None:
    result = _result(quick, "rag_train_step")
    assert [r["k"] for r in result["results"]] == [1, 2] and result["peft"] == "lora"
    assert 0 < result["trainable_parameters"] < result["sam2"]["parameters"]
    for row in result["results"]:
        assert row["train_iteration_s"] > 0 and row["reference_forward_s"] > 0


def test_report_renders_every_result(quick: dict) -> None:
    text = _script("report").main([str(out) for _, out in quick.values()])
    for name in SCRIPTS:
        assert f"<!-- {name}.json -->" in text
    volume = quick["volume_inference"][0]
    assert f"| reference | 1 | {volume['reference']['seconds']:.2f} |" in text
    assert "| 2e+03 | 32 | flat | " in text and "1.000 |" in text


def test_recall_and_exact_search_by_hand() -> None:
    mod = _script("retrieval_index")
    assert mod.recall_at_k(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[1, 2, 7], [6, 5, 4]])) == pytest.approx(
        (2 / 3 + 1) / 2)
    vectors = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]] * np.array([[1], [1], [1], [1], [0.5]], np.float32)
    query = np.array([0.9, 0.1, 0.3, 0.0], dtype=np.float32)
    assert mod.exact_numpy(vectors, query, 3).tolist() == [0, 4, 2]  # 0.9, 0.45, 0.3


def test_set_attention_switches_and_keeps_outputs() -> None:
    from transformers.models.sam import modeling_sam

    from ragsam.models import ModelConfig, build_model

    modes = _script("modes")
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="tiny", num_classes=2, image_size=64)).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        sdpa = model(x)
        assert modes.set_attention(model, "eager") > 0
        assert type(model.vision_encoder.layers[0].attn) is modeling_sam.SamVisionAttention
        assert model.mask_decoder.config._attn_implementation == "eager"
        eager = model(x)
        modes.set_attention(model, "sdpa")
        assert type(model.vision_encoder.layers[0].attn) is modeling_sam.SamVisionSdpaAttention
    torch.testing.assert_close(eager, sdpa, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="flash"):
        modes.set_attention(model, "flash")
    assert modes.speedup(2.0, 5.0) == 2.5 and modes.speedup(0.0, 1.0) is None


def test_dicom_seg_quick(tmp_path) -> None:
    """The SEG benchmark writes every mode and reads the SEG back equal to the labels."""
    out = tmp_path / "dicom_seg.json"
    result = _script("dicom_seg").main(["--quick", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["benchmark"] == "dicom_seg" and result["agreement"] == 1.0
    assert set(result["seconds"]) == {"nifti", "dicom-seg", "both", "read"}
    assert result["bytes"]["both"] == result["bytes"]["nifti"] + result["bytes"]["dicom-seg"]
    assert result["series"] == {"slices": 20, "rows": 512, "columns": 512, "organs": [1, 6, 7, 8, 9, 10, 11, 12]}
