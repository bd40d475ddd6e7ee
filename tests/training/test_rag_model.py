"""RagEpisodeModel: the trainable retrieval path computes exactly what `ragsam segment` computes."""

from __future__ import annotations

import torch

from ragsam.models.sam2 import build_sam2
from ragsam.peft.config import Sam2PeftConfig
from ragsam.peft.sam2 import apply_sam2_peft
from ragsam.retrieval.sam2_memory import Sam2MemorySegmenter, merge_organ_logits
from ragsam.training.losses import DiceCELoss
from ragsam.training.rag_model import ABSENT_LOGIT, RagEpisodeModel, class_logits


def _episode(k: int = 2, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(1, 1 + k, size, size, generator=gen)
    labels = torch.zeros(1, 1 + k, size, size, dtype=torch.int64)
    labels[0, :, 4:14, 4:14] = 1
    labels[0, 1:, 18:28, 16:30] = 3  # organ 3 on the supports only
    labels[0, 0, 20:30, 2:10] = 2    # organ 2 on the query only: absent from every support
    images[labels > 0] += 0.3
    return images.clamp(0, 1), labels


def test_class_logits_argmax_is_the_segmenters_merged_label_map():
    organ = torch.tensor([[[1.0, -2.0], [0.5, -0.1]], [[2.0, -1.0], [0.2, -3.0]]])  # organs 1 and 3
    logits = class_logits(organ, [1, 3], num_classes=3)
    assert logits.shape == (4, 2, 2)
    assert torch.equal(logits[0], torch.zeros(2, 2)) and torch.equal(logits[2], torch.full((2, 2), ABSENT_LOGIT))
    assert torch.equal(logits.argmax(0), merge_organ_logits(organ, [1, 3]))
    assert logits.argmax(0).tolist() == [[3, 0], [1, 0]]


def test_lora_at_initialisation_equals_the_training_free_segmenter_exactly():
    images, labels = _episode()
    plain, _ = build_sam2("tiny")
    reference = Sam2MemorySegmenter(plain).segment_slice(images[0, 0], images[0, 1:], labels[0, 1:])
    sam2, _ = build_sam2("tiny")
    apply_sam2_peft(sam2, Sam2PeftConfig(rank=4, targets=["q", "k", "v", "proj"], decoder="lora"))
    model = RagEpisodeModel(sam2, num_classes=3)
    with torch.no_grad():
        pred = model.segmenter.segment_slice(images[0, 0], images[0, 1:], labels[0, 1:])
    assert pred.organ_ids == reference.organ_ids == [1, 3]
    assert torch.equal(pred.logits, reference.logits) and torch.equal(pred.labels, reference.labels)
    # the differentiable training forward (autograd on) gives the same numbers as inference
    out = model(images, labels)
    assert out.requires_grad
    assert torch.equal(out[0], class_logits(reference.logits, [1, 3], 3))
    assert torch.equal(out[0].argmax(0), reference.labels)


def test_gradients_reach_the_image_encoder_and_memory_attention_through_the_memory_path():
    images, labels = _episode()
    sam2, _ = build_sam2("tiny")
    apply_sam2_peft(sam2, Sam2PeftConfig(rank=2, decoder="frozen"))
    model = RagEpisodeModel(sam2, num_classes=3).train()
    assert not sam2.training  # SAM 2 keeps its inference behaviour
    DiceCELoss().parts(model(images, labels), labels[:, 0]).total.backward()
    grads = {n: p.grad for n, p in sam2.named_parameters() if p.requires_grad}
    for prefix in ("vision_encoder.backbone.blocks.0.attn.qkv.lora_b.q", "memory_attention.layers.0.self_attn",
                   "memory_attention.layers.1.cross_attn_image.v_proj.lora_b"):
        hit = [g for n, g in grads.items() if n.startswith(prefix) and ".lora_b." in n]
        assert hit and all(g is not None and g.abs().sum() > 0 for g in hit), prefix
    # the segmenter is back in inference mode afterwards
    assert model.segmenter.differentiable is False
