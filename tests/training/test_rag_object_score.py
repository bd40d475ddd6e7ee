"""``train-rag`` trains SAM 2's object score: an organ gated off (score < 0, mask -1024) can come back."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from rag_fixtures import RUN_BASE, write_phantom_bank
from test_rag_model import _episode

from ragsam.models.sam2 import build_sam2
from ragsam.peft.apply import load_trainable
from ragsam.peft.sam2 import apply_sam2_peft
from ragsam.training.distributed import DistInfo
from ragsam.training.losses import DiceCELoss, object_score_loss
from ragsam.training.rag_config import Sam2PeftConfig, load_rag_config
from ragsam.training.rag_data import build_episodes
from ragsam.training.rag_model import RagEpisodeModel, build_rag_model
from ragsam.training.rag_run import episode_step, train_rag
from ragsam.training.sampler import Batch

SWITCH_OFF = -5.0  # added to the object-score head's output bias: the tiny SAM 2's scores span -0.2 .. 4.2


def test_object_score_loss_is_the_bce_of_the_offered_organs_against_presence():
    labels = torch.zeros(4, 4, dtype=torch.int64)
    labels[0, 0], labels[3, 3], labels[2, 2] = 1, 3, 9  # organs 1 and 3 on the slice (9 > K: ignored)
    scores = torch.tensor([2.0, -1.0, 0.5])
    loss = object_score_loss(scores, torch.tensor([True, True, False]), labels)
    # organ 1 present: log(1 + e^-2); organ 2 absent: log(1 + e^-1); organ 3 not offered
    assert math.isclose(float(loss), (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2, rel_tol=1e-6)
    assert float(object_score_loss(scores, torch.zeros(3, dtype=torch.bool), labels)) == 0.0


def _step_grads(weight: float) -> tuple[dict[str, torch.Tensor | None], float]:
    images, labels = _episode()
    sam2, _ = build_sam2("tiny")
    apply_sam2_peft(sam2, Sam2PeftConfig(rank=2, decoder="full"))
    model = RagEpisodeModel(sam2, num_classes=3).train()
    optim = SimpleNamespace(bf16=False, bf16_cpu=False, object_score_weight=weight)
    parts = episode_step(model, Batch(0, [0], images, labels), DistInfo(0, 1, 0, torch.device("cpu")),
                         DiceCELoss(), optim)
    parts.total.backward()
    head = {n: p.grad for n, p in sam2.named_parameters() if "pred_obj_score_head" in n}
    total, dice, ce = (float(t.detach()) for t in (parts.total, parts.dice, parts.ce))
    return head, total - 0.8 * dice - 0.2 * ce


def test_gradients_reach_the_object_score_head_only_through_the_object_score_loss():
    head, extra = _step_grads(1.0)
    assert len(head) == 6 and all(g is not None and float(g.abs().sum()) > 0 for g in head.values())
    # organs 1 and 3 offered; 1 on the query, 3 not: the extra loss is their mean BCE
    images, labels = _episode()
    sam2, _ = build_sam2("tiny")
    with torch.no_grad():
        out = RagEpisodeModel(sam2, num_classes=3)(images, labels, object_scores=True)
    assert out.offered[0].tolist() == [True, False, True]
    s1, s3 = (float(out.object_scores[0, i]) for i in (0, 2))
    expected = (math.log1p(math.exp(-s1)) + math.log1p(math.exp(s3))) / 2
    assert math.isclose(extra, expected, rel_tol=1e-5)
    # without the term SAM 2's hard gate passes no gradient to the head at all (the old train-rag)
    head0, extra0 = _step_grads(0.0)
    assert abs(extra0) < 1e-6 and all(g is None or float(g.abs().sum()) == 0 for g in head0.values())


def _probe(model, data) -> tuple[list[float], float]:
    """Object scores of the organs both offered and present on the training queries; max class logit of those."""
    scores, top = [], -math.inf
    with torch.no_grad():
        for i in data.train_indices:
            item = data.dataset[i]
            out = model(item["image"][None], item["label"][None], object_scores=True)
            present = torch.bincount(item["label"][0].flatten(), minlength=data.num_classes + 1)[1:] > 0
            shown = out.offered[0] & present
            scores += out.object_scores[0][shown].tolist()
            top = max(top, float(out.logits[0, 1:][shown].max()))
    return scores, top


def test_an_organ_switched_off_at_start_comes_back_after_train_rag(tmp_path):
    bank = write_phantom_bank(tmp_path)
    sam2, _ = build_sam2("tiny")
    with torch.no_grad():
        sam2.mask_decoder.pred_obj_score_head.proj_out.bias.add_(SWITCH_OFF)
    sam2.save_pretrained(str(tmp_path / "off"))
    runs = {}
    for weight in (1.0, 0.0):
        overrides = [f"data.bank={bank}", *RUN_BASE, "data.train=['0001','0002']", f"model.weights={tmp_path / 'off'}",
                     "optim.max_iterations=10", "optim.batch_size=2", "optim.lr=0.005", "checkpoint_every=10",
                     f"optim.object_score_weight={weight}"]
        cfg = load_rag_config("rag_tiny", overrides)
        data = build_episodes(cfg)
        model = build_rag_model(cfg)
        before, top_before = _probe(model, data)
        run = train_rag(load_rag_config("rag_tiny", overrides), tmp_path / f"run{weight}")
        load_trainable(model.sam2, run / "last.safetensors")
        runs[weight] = (before, top_before, *_probe(model, data))
    before, top_before, after, top_after = runs[1.0]
    # measured (any CPU, 1 or 2 threads): 40 organ-slices, scores -3.53 mean (max -2.79) -> +4.02 (min > 3.9)
    assert len(before) == 40 and max(before) < -2.0 and top_before == -1024.0  # every mask gated off
    assert min(after) > 2.0 and top_after > -100.0  # every one back on: real mask logits again
    _, _, after0, top_after0 = runs[0.0]
    assert max(after0) < -2.0 and top_after0 == -1024.0  # without the object-score loss they stay off
