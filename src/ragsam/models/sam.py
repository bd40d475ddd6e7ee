"""The prompt-free multi-organ SAM (SAMed): ViT encoder -> default prompt -> K+1 mask tokens.

The modules are the ``transformers`` SAM components (``vision_encoder``,
``prompt_encoder``, ``mask_decoder``, ``shared_image_embedding``) held under the
same attribute names as in ``transformers.SamModel``, so the state dict of a
:class:`MultiOrganSam` has exactly the keys of a Hugging Face SAM checkpoint.
The forward pass goes through the components itself: the official SAM forward
runs under ``torch.no_grad`` and keeps only 3 of the mask tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import SamConfig, SamModel

from ragsam.errors import InputError
from ragsam.models.config import NORMALIZATIONS
from ragsam.models.load_report import LoadReport
from ragsam.models.vit_attention import set_vit_attention

# SAM's pixel statistics on the 0-255 scale (segment_anything/modeling/sam.py).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class MultiOrganSam(nn.Module):
    """SAM predicting K organs + background from an image alone.

    Args:
        config: the ``transformers.SamConfig``; its mask decoder has
            ``num_multimask_outputs = K`` so that there are K + 1 mask tokens
            (token 0 = background, token k = organ k).
        arch: registry name (kept for reports and run folders).
        normalization: ``"sam"`` (SAM's pixel statistics) or ``"none"`` (the [0, 1]
            slice as it is, SAMed's pixel mean 0 / std 1); see :meth:`normalize`.

    Attributes:
        num_classes: K. image_size: S (px). grid: S / 16 (image-embedding side).
        load_report: filled by the weight loader (what was loaded, resized, new).
    """

    def __init__(self, config: SamConfig, arch: str = "custom", normalization: str = "sam") -> None:
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise InputError(None, f"model.normalize {normalization!r} is not one of {', '.join(NORMALIZATIONS)}")
        self.normalization = normalization
        sam = SamModel(config)
        self.sam_config = sam.config
        self.arch = arch
        # Same names as SamModel: the tied positional matrix stays shared.
        self.shared_image_embedding = sam.shared_image_embedding
        self.vision_encoder = sam.vision_encoder
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        set_vit_attention(self.vision_encoder, "fused")  # same function, faster (vit_attention.py)
        self.image_size = int(config.vision_config.image_size)
        self.grid = self.image_size // int(config.vision_config.patch_size)
        self.num_classes = int(config.mask_decoder_config.num_multimask_outputs)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        self.load_report: LoadReport | None = None

    # -- encoder ---------------------------------------------------------------
    def normalize(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) in [0, 1] -> the encoder's input.

        ``"sam"``: ``(x * 255 - mean) / std`` with SAM's ImageNet statistics;
        ``"none"``: ``x`` unchanged (SAMed's pixel mean 0 / std 1).
        """
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (self.image_size,) * 2:
            raise InputError(None, f"images must have shape (B, 3, {self.image_size}, {self.image_size}), "
                                   f"got {tuple(images.shape)}")
        if self.normalization == "none":
            return images
        return (images * 255.0 - self.pixel_mean) / self.pixel_std

    def encode(self, images: Tensor) -> Tensor:
        """Image embeddings (B, C_out, S/16, S/16) of images (B, 3, S, S) in [0, 1]."""
        return self.vision_encoder(pixel_values=self.normalize(images)).last_hidden_state

    def image_positional_embeddings(self) -> Tensor:
        """Dense positional encoding of the embedding grid, (1, C_out, g, g)."""
        g = self.grid
        weight = self.shared_image_embedding.positional_embedding
        ones = torch.ones((g, g), device=weight.device, dtype=weight.dtype)
        y = (ones.cumsum(0) - 0.5) / g
        x = (ones.cumsum(1) - 0.5) / g
        return self.shared_image_embedding(torch.stack([x, y], dim=-1)).permute(2, 0, 1).unsqueeze(0)

    # -- decoder ---------------------------------------------------------------
    def decode(self, embeddings: Tensor, point_coords: Tensor | None = None,
               point_labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Masks of all K + 1 tokens from image embeddings.

        Args:
            embeddings: (B, C_out, g, g) from :meth:`encode`.
            point_coords: optional (B, N, 2) point prompts, (x, y) in input pixels.
            point_labels: (B, N) with 1 = foreground, 0 = background, -1 = ignore.
        Returns:
            low-resolution logits (B, K + 1, 4g, 4g) and IoU predictions (B, K + 1).
        """
        dec = self.mask_decoder
        batch, channels, height, width = embeddings.shape
        if point_coords is not None:
            if point_labels is None:
                point_labels = torch.ones(point_coords.shape[:2], dtype=torch.int64, device=point_coords.device)
            sparse, dense = self.prompt_encoder(point_coords[:, None], point_labels[:, None], None, None)
        else:  # no prompt: no sparse tokens, the learned "no mask" dense embedding
            sparse, dense = self.prompt_encoder(None, None, None, None)
        tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = tokens.expand(batch, 1, -1, -1)
        if sparse is not None:
            tokens = torch.cat([tokens, sparse.to(tokens.dtype)], dim=2)
        image = embeddings + dense
        pos = self.image_positional_embeddings().expand(batch, -1, -1, -1)
        queries, keys = dec.transformer(point_embeddings=tokens, image_embeddings=image,
                                        image_positional_embeddings=pos, attention_similarity=None)
        iou_out = queries[:, 0, 0, :]
        mask_out = queries[:, 0, 1:1 + dec.num_mask_tokens, :]
        image = keys[:, 0].transpose(1, 2).reshape(batch, channels, height, width)
        up = dec.activation(dec.upscale_layer_norm(dec.upscale_conv1(image)))
        up = dec.activation(dec.upscale_conv2(up))
        hyper = torch.stack([mlp(mask_out[:, i]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1)
        b, c, h, w = up.shape
        masks = (hyper @ up.reshape(b, c, h * w)).reshape(b, -1, h, w)
        return masks, dec.iou_prediction_head(iou_out)

    def low_res_logits(self, images: Tensor, point_coords: Tensor | None = None,
                       point_labels: Tensor | None = None) -> Tensor:
        """Decoder logits (B, K + 1, S/4, S/4) for images (B, 3, S, S) in [0, 1]."""
        return self.decode(self.encode(images), point_coords, point_labels)[0]

    def upsample(self, low_res: Tensor) -> Tensor:
        """Bilinear (half-pixel) upsampling of logits (B, K + 1, S/4, S/4) to (B, K + 1, S, S)."""
        return F.interpolate(low_res, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)

    def forward(self, images: Tensor, point_coords: Tensor | None = None,
                point_labels: Tensor | None = None, *, upsample: bool = True) -> Tensor:
        """Logits (B, K + 1, S, S) for images (B, 3, S, S) in [0, 1]: :meth:`upsample` of :meth:`low_res_logits`.

        ``upsample=False`` returns the decoder's (B, K + 1, S/4, S/4) logits instead
        (SAMed's training loss is taken there); passing it through ``forward`` keeps a
        DistributedDataParallel wrapper's gradient hooks in the path.
        """
        low = self.low_res_logits(images, point_coords, point_labels)
        return self.upsample(low) if upsample else low

    @torch.no_grad()
    def predict_labels(self, images: Tensor) -> Tensor:
        """Label map (B, S, S) int64: the most probable of the K + 1 classes (0 = background).

        Softmax is monotonic, so the argmax of the softmax is the argmax of the
        logits; taking it on the logits avoids ties from rounding ``exp``.
        """
        return self(images).argmax(dim=1)

    def to_hf(self) -> SamModel:
        """A ``transformers.SamModel`` holding this model's (base) weights, for ``save_pretrained``."""
        sam = SamModel(self.sam_config)
        sam.load_state_dict(self.state_dict(), strict=True)
        return sam
