"""``ragsam segment`` (retrieval and hybrid) under two gloo ranks (torchrun) on CPU.

Three cropped 6-slice cases of the shared 3 mm CT, the tiny DINOv2 / SAM 2 / SAM: rank 0
takes cases a and c, rank 1 case b (``ragsam.utils.ranks.shard``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk
from bank_fixtures import write_prepared

from ragsam.cli.main import run_cli
from two_ranks import run_ranks

CROPS = {"a": (8, 14), "b": (12, 18), "c": (16, 22)}  # case -> z range of the 30-slice CT: distinct outputs


@pytest.fixture(scope="module")
def setup(ct3mm, tmp_path_factory):
    """Cases folder, support bank (32 px slices) and a "finished" tiny-SAM run for the hybrid mode."""
    from ragsam.config import dump_config
    from ragsam.data.slices import SliceSettings, volume_to_slices
    from ragsam.data.volume import read_image, read_labels
    from ragsam.models import build_model
    from ragsam.peft.apply import save_trainable
    from ragsam.retrieval.bank import BankOptions, build_bank
    from ragsam.training.config import TrainConfig
    from ragsam.utils.seeding import seed_everything

    root = tmp_path_factory.mktemp("segranks")
    image = read_image(ct3mm["image"])
    stack = volume_to_slices(image, read_labels(ct3mm["labels"], reference=image), SliceSettings(size=32))
    build_bank(write_prepared(root / "prepared", {"ct3mm": (stack.images, stack.labels)}), root / "bank", BankOptions(embedder_weights="tiny", image_size=28))
    (root / "cases").mkdir()
    ct = sitk.ReadImage(str(ct3mm["image"]))
    for case, (z0, z1) in CROPS.items():
        sitk.WriteImage(ct[:, :, z0:z1], str(root / "cases" / f"{case}.nii.gz"))
    cfg = TrainConfig()
    cfg.model.arch, cfg.model.weights, cfg.model.image_size, cfg.model.num_classes = "tiny", "random", 64, 13
    cfg.data.window, cfg.seed, cfg.device = [-125.0, 275.0], 3, "cpu"
    (root / "run").mkdir()
    (root / "run" / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    seed_everything(cfg.seed)
    save_trainable(build_model(cfg.model), root / "run" / "model.safetensors")
    return root


def _argv(root: Path, cases: Path, out: Path, hybrid: bool) -> list[str]:
    argv = ["segment", str(cases), "-o", str(out), "--index", str(root / "bank"), "--sam2", "tiny", "--k", "2",
            "--device", "cpu", "--json"]
    return argv + (["--run", str(root / "run"), "--hybrid-weight", "0.5"] if hybrid else [])


def _commands(argvs: list[list[list[str]]]) -> list[tuple[int, str, str, list[str]]]:
    """Rank target: run this rank's command lines (``argvs[rank]``) through ``run_cli``.

    Returns, per command: exit code, stdout, stderr, and the paths this rank wrote
    (every write is atomic: the destinations of ``os.replace``), sorted, without repeats.
    """
    real_replace, written = os.replace, set()

    def recording_replace(src, dst, *args, **kwargs):
        written.add(str(dst))
        return real_replace(src, dst, *args, **kwargs)

    os.replace = recording_replace
    outcomes = []
    for argv in argvs[int(os.environ["RANK"])]:
        written.clear()
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run_cli(argv)
        outcomes.append((code, out.getvalue(), err.getvalue(), sorted(written)))
    return outcomes


def _comparable(summary: dict) -> dict:
    """A case's summary without what depends on the process rather than the case: its wall
    time, and how its supports split between encoded and found in that process's cache
    (another rank has not seen the earlier cases); their sum is the case's slices x k."""
    summary = dict(summary)
    summary.pop("seconds")
    summary["supports"] = summary.pop("support_slices_encoded") + summary.pop("support_cache_hits")
    return summary


def _sidecar(path: Path) -> dict:
    side = json.loads(path.read_text(encoding="utf-8"))
    return {**side, "result": _comparable(side["result"])}


def test_two_gloo_ranks_segment_what_one_process_segments(setup, tmp_path, monkeypatch, capsys):
    out = {mode: tmp_path / "out" / mode for mode in ("rag", "hybrid")}
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    single = {}
    for mode, folder in out.items():  # one process, then moved aside: the two-rank run writes the same paths
        assert run_cli(_argv(setup, setup / "cases", folder, mode == "hybrid")) == 0
        single[mode] = capsys.readouterr().out
        shutil.move(str(folder), str(tmp_path / f"one-{mode}"))
    argvs = [_argv(setup, setup / "cases", out[mode], mode == "hybrid") for mode in out]
    results = run_ranks(_commands, [argvs, argvs])
    for i, mode in enumerate(out):
        (code0, out0, err0, wrote0), (code1, out1, err1, wrote1) = results[0][1][i], results[1][1][i]
        assert (code0, err0, code1, out1, err1) == (0, "", 0, "", ""), mode  # rank 0 prints the summary
        summaries = [_comparable(item) for item in json.loads(out0)]
        assert summaries == [_comparable(item) for item in json.loads(single[mode])], mode
        assert [item["supports"] for item in summaries] == [6 * 2] * 3, mode  # slices x k
        one = tmp_path / f"one-{mode}"
        names = sorted(p.name for p in one.iterdir())
        assert names == sorted(p.name for p in out[mode].iterdir()) and len(names) == 6, mode
        for name in names:
            if name.endswith(".ragsam.json"):  # the fingerprint records the case's summary too
                assert _sidecar(out[mode] / name) == _sidecar(one / name), (mode, name)
            else:
                assert (out[mode] / name).read_bytes() == (one / name).read_bytes(), (mode, name)
        own = {case: [str(out[mode] / f".{case}.nii.gz.ragsam.json"), str(out[mode] / f"{case}.nii.gz")]
               for case in CROPS}
        assert wrote0 == sorted(own["a"] + own["c"]) and wrote1 == own["b"], mode
    rag = sitk.GetArrayFromImage(sitk.ReadImage(str(out["rag"] / "a.nii.gz")))
    hybrid = sitk.GetArrayFromImage(sitk.ReadImage(str(out["hybrid"] / "a.nii.gz")))
    assert rag.shape == hybrid.shape == (6, 101, 122) and (rag != hybrid).any()  # the run's term took part


def test_a_rank_that_fails_on_its_input_fails_every_rank_at_once(setup, tmp_path):
    missing = tmp_path / "not-on-this-node"  # the failed rank's copy of the input folder is missing
    # command 1: rank 0 fails, before its first exchange and before the process group exists
    # (it hosts the rendezvous); command 2, in the same processes: rank 1 fails. Each time the
    # other rank loads the models and waits in a collective: it must learn of the failure
    # there, well within the process group's timeout (a rank still running at the deadline
    # fails the test), and the next command must still line up.
    argvs = [[_argv(setup, missing if rank == failed else setup / "cases", tmp_path / f"out{failed}", False)
              for failed in (0, 1)] for rank in (0, 1)]
    results = run_ranks(_commands, argvs, pg_timeout_s=60, deadline_s=50)
    own, peer = (2, "", f"ragsam: error: {missing}: does not exist\n", []), "ragsam: error: rank {}: {}: does not exist\n"
    assert results == {0: ("ok", [own, (2, "", peer.format(1, missing), [])]),
                       1: ("ok", [(2, "", peer.format(0, missing), []), own])}  # no case ran
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing written, half or whole
