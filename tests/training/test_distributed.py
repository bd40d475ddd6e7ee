"""Two-process DDP (gloo, CPU) through torchrun, the way users launch multi-GPU training."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys

from safetensors.torch import load_file

from ragsam.training.sampler import epoch_order


def _hash(tensors: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().numpy().tobytes())
    return h.hexdigest()


def test_torchrun_two_processes(tmp_path):
    from ragsam.data.phantom import write_phantom_dataset
    from ragsam.data.prepare import PrepareOptions, prepare_dataset
    from ragsam.data.slices import SliceSettings

    write_phantom_dataset(tmp_path / "src", n_cases=2, shape=(5, 32, 32), seed=2)
    prepare_dataset(tmp_path / "src", tmp_path / "prep", PrepareOptions(settings=SliceSettings(size=32), split="none"))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ragsam.cli.main", "train", "--config", "tiny", "--prepared", str(tmp_path / "prep"),
           "--out", str(run), "model.image_size=32", "optim.max_iterations=4", "optim.batch_size=2",
           "checkpoint_every=2", "val.every=2", "log.every=1", "device=cpu", "log.rank_hashes=true",
           "log.tensorboard=false", "data.train=['0001']", "data.val=['0002']"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run finished") == 1  # only rank 0 reports
    ranks = [json.loads((run / "debug" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["iteration"] for r in ranks] == [4, 4]
    # both replicas hold identical weights, and they are exactly what rank 0 saved
    assert ranks[0]["sha256"] == ranks[1]["sha256"] == _hash(load_file(run / "last.safetensors"))
    with (run / "log.csv").open() as fh:
        assert [int(r["iteration"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4]  # rank 0 logs once
    val = json.loads((run / "val.json").read_text())
    assert [h["iteration"] for h in val["history"]] == [2, 4]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "debug", "last.safetensors",
                                                     "log.csv", "model.safetensors", "val.json"]


def test_ranks_see_disjoint_halves_of_each_epoch():
    r0 = {i for _, i in epoch_order(5, seed=1234, epoch=0, rank=0, world=2)}
    r1 = {i for _, i in epoch_order(5, seed=1234, epoch=0, rank=1, world=2)}
    assert r0 | r1 == set(range(5)) and len(r0) == len(r1) == 3 and len(r0 & r1) == 1  # one padded repeat
