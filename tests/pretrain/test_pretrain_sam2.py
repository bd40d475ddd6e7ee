"""SAM 2 pre-training episodes: supports come from other cases, and the episode loss trains the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ragsam.pretrain.corpus_slices import CorpusSlices, load_corpus_slices, neighbour_quality
from ragsam.pretrain.sam2 import episode_loss, new_tiny_sam2, retrieve_supports


@pytest.fixture(scope="module")
def corpus_and_bank(tmp_path_factory: pytest.TempPathFactory) -> tuple[CorpusSlices, Path]:
    from ragsam.data.phantom_corpus import write_phantom_corpus
    from ragsam.data.prepare import PrepareOptions, prepare_dataset
    from ragsam.data.slices import SliceSettings
    from ragsam.retrieval.bank_build import BankOptions, build_bank

    root = tmp_path_factory.mktemp("episodes")
    write_phantom_corpus(root / "corpus", n_cases=3, seed=2)
    prepare_dataset(root / "corpus", root / "prepared", PrepareOptions(settings=SliceSettings(size=64), split="none"))
    build_bank(root / "prepared", root / "bank", BankOptions(embedder_weights="tiny", image_size=56, device="cpu"))
    return load_corpus_slices(root / "prepared"), root / "bank"


def test_supports_never_come_from_the_query_case(corpus_and_bank: tuple[CorpusSlices, Path]) -> None:
    corpus, bank = corpus_and_bank
    supports = retrieve_supports(bank, corpus, k=2, z_prior=0.5)
    assert supports.shape == (len(corpus.images), 2)
    assert (corpus.case_ids[supports] != corpus.case_ids[:, None]).all()
    # with the relative-z prior the supports sit near the query's height
    assert np.abs(corpus.rel_z[supports[:, 0]] - corpus.rel_z).mean() < 0.2


def test_neighbour_quality_by_hand() -> None:
    labels = np.zeros((4, 2, 2), np.uint8)
    areas = np.zeros((4, 13), np.float32)
    areas[0, 0] = areas[2, 0] = 0.5   # slices 0 and 2 show organ 1
    areas[1, 1] = areas[3, 2] = 0.25  # slice 1 organ 2, slice 3 organ 3
    corpus = CorpusSlices(np.zeros((4, 2, 2), np.float32), labels, np.array(["a", "a", "b", "b"]),
                          np.array([0, 1, 0, 1]), np.array([0.0, 1.0, 0.0, 1.0], np.float32), areas)
    vectors = np.eye(4, dtype=np.float32)
    vectors[2, 0] = vectors[3, 1] = 1.0  # 0 <-> 2 and 1 <-> 3 are nearest across cases
    assert neighbour_quality(vectors, corpus) == {"mean_abs_dz": 0.0, "organ_jaccard": 0.5}


def test_a_few_episodes_lower_the_episode_loss(corpus_and_bank: tuple[CorpusSlices, Path]) -> None:
    from ragsam.retrieval.sam2_memory import Sam2MemorySegmenter

    corpus, bank = corpus_and_bank
    supports = retrieve_supports(bank, corpus, k=1, z_prior=0.5)
    model = new_tiny_sam2(64, seed=0).eval()  # what pretrain_sam2 trains
    seg = Sam2MemorySegmenter(model)
    seg.differentiable = True
    torch.manual_seed(0)
    query = int(np.flatnonzero(corpus.presence.sum(1) >= 3)[0])
    optim = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(8):  # one episode, repeated: the loss falls only if gradients reach the weights
        # measured (1 thread, eval mode, memory-reading initialisation): 0.960 -> 0.799 after 8 steps
        loss = episode_loss(seg, corpus, query, supports[query])
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(float(loss))
    assert losses[-1] < 0.9 * losses[0]


def _two_organ_slice() -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.zeros(64, 64)
    labels = torch.zeros(64, 64, dtype=torch.int64)
    image[8:28, 8:28], labels[8:28, 8:28] = 0.8, 1      # organ 1, top left
    image[36:60, 30:58], labels[36:60, 30:58] = 0.5, 2  # organ 2, bottom right
    return image, labels


def organ_contrast(model: torch.nn.Module) -> float:
    """Mean |logits(organ 1) - logits(organ 2)| over their spread, the slice as its own support."""
    from ragsam.retrieval.sam2_memory import Sam2MemorySegmenter

    image, labels = _two_organ_slice()
    with torch.no_grad():
        logits = Sam2MemorySegmenter(model).segment_slice(image, image[None], labels[None]).logits
    return float((logits[0] - logits[1]).abs().mean() / logits.std())


def test_memory_reading_initialisation_makes_the_memory_matter(monkeypatch: pytest.MonkeyPatch) -> None:
    import ragsam.pretrain.sam2 as pretrain_sam2

    model = new_tiny_sam2(64, seed=0)
    for layer in model.memory_attention.layers:
        attn = layer.cross_attn_image
        assert torch.equal(attn.q_proj.bias, attn.k_proj.bias)
        assert float(attn.q_proj.bias.norm()) == pytest.approx(pretrain_sam2.POSITIONAL_QK_BIAS, rel=1e-5)
        assert float(attn.v_proj.weight.std()) == pytest.approx(pretrain_sam2.MEMORY_VALUE_STD, rel=0.1)
    # measured (1 thread): organ 1's and organ 2's masks differ by 32 % of the logits' spread
    # with the initialisation and by 0.28 % without it (the memory hardly reaches the decoder)
    assert organ_contrast(model.eval()) > 0.1
    monkeypatch.setattr(pretrain_sam2, "init_memory_reading", lambda model, seed: None)
    assert organ_contrast(new_tiny_sam2(64, seed=0).eval()) < 0.01
