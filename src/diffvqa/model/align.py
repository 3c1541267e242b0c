"""Near-identity affine pre-alignment of the main (current) image onto the reference (prior) image.

Conventions (as torch's ``affine_grid``/``grid_sample``, documented here because everything downstream — the
shared mask, the registration score against the phantom's ground truth — depends on them):

* coordinates are normalised to [-1, 1] over the S x S frame, x to the right, y down; ``align_corners`` is
  passed explicitly everywhere and comes from the config (default False: -1/+1 are the outer pixel *edges*,
  pixel centre j sits at (2j + 1)/S - 1);
* Θ (B, 2, 3) *pulls*: the aligned image at output point u (reference frame) is the main image sampled at
  Θ @ [u, 1]. Identity Θ = [I | 0] leaves the image unchanged.

The aligner regresses δ in R^6 from the 2-channel pair and sets Θ = [I | 0] + δ. Its head is zero-initialised,
so Θ is exactly the identity at step 0, and δ = max_delta * tanh(.) keeps it in the near-identity range.

Why the trunk uses leaky ReLUs and centred inputs: with plain ReLUs on raw [0, 1] intensities the trunk died in
training (every unit exactly 0 for every pair from step ~280 of the demo on). The answer loss carries almost no
alignment signal, but L_reg pulls δ toward 0 through every path, the trunk's activations included, and Adam turns
even a 1e-4-weighted gradient into lr-sized steps: the trunk learnt to output nothing, Θ became the constant set by
the head's bias, and no later loss could revive it (a dead ReLU passes no gradient). A leaky ReLU always passes
some gradient, and centring the inputs keeps the first layer's pre-activations from being one-signed.

The optional similarity term (``model.align_similarity``, an extension: the paper trains the aligner through the
answer loss only) is 1 - NCC between the warped main image and the reference, computed at the aligner's input
resolution over the overlap of the two images' *content* (the letterbox padding of either would otherwise
dominate the correlation, and the aligner would register the frames instead of the anatomy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def identity_theta(batch: int, device=None, dtype=None) -> Tensor:
    """(B, 2, 3) identity transforms."""
    eye = torch.eye(2, 3, device=device, dtype=dtype)
    return eye.unsqueeze(0).expand(batch, 2, 3)


def warp(image: Tensor, theta: Tensor, align_corners: bool) -> Tensor:
    """Sample ``image`` (B, C, H, W) at Θ @ [u, 1] for every output point u (pull direction); zeros outside.

    Computed in float64: in float32 the round trip pixel centre -> normalised -> pixel is off by ~1e-6 pixel,
    enough to blur an identity warp of a noisy image by a few 1e-6; the warp is a negligible share of a step.
    """
    grid = F.affine_grid(theta.double(), list(image.shape), align_corners=align_corners)
    warped = F.grid_sample(image.double(), grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)
    return warped.to(image.dtype)


def corner_error(theta: Tensor, theta_true: Tensor, size: int, align_corners: bool) -> Tensor:
    """Mean distance in pixels, over the 4 frame corners, between where ``theta`` and ``theta_true`` map them.

    Args: theta, theta_true (B, 2, 3). Returns (B,).
    """
    c = 1.0 if align_corners else 1.0 - 1.0 / size  # the corner pixel centres in normalised coordinates
    corners = theta.new_tensor([[-c, -c, 1.0], [c, -c, 1.0], [-c, c, 1.0], [c, c, 1.0]])  # (4, 3)
    moved = torch.einsum("bij,kj->bki", theta - theta_true, corners)  # (B, 4, 2) normalised displacement
    pixels_per_unit = (size - 1) / 2 if align_corners else size / 2
    return (moved.norm(dim=-1) * pixels_per_unit).mean(dim=1)


def registration_loss(theta: Tensor, weights: tuple[float, float, float] | list[float]) -> Tensor:
    """L_reg = w0 * ||Θ - [I|0]||_F^2 + w1 * (det A - 1)^2 + w2 * ||t||^2, averaged over the batch.

    Args: theta (B, 2, 3). Returns a scalar. Default weights 1e-4 / 1e-5 / 1e-6 (``docs/design.md``, step 2).
    """
    w_frobenius, w_det, w_shift = weights
    eye = identity_theta(theta.shape[0], theta.device, theta.dtype)
    frobenius = (theta - eye).pow(2).sum(dim=(1, 2))
    det = torch.linalg.det(theta[:, :, :2])
    shift = theta[:, :, 2].pow(2).sum(dim=1)
    return (w_frobenius * frobenius + w_det * (det - 1).pow(2) + w_shift * shift).mean()


def masked_ncc(a: Tensor, b: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """Normalised cross-correlation of ``a`` and ``b`` (B, 1, H, W) over the pixels ``weight`` (B, 1, H, W) selects.

    Returns (B,) in [-1, 1]; 0 for a row whose selection is empty or flat.
    """
    n = weight.sum(dim=(1, 2, 3)).clamp(min=1.0)
    mean_a = (weight * a).sum(dim=(1, 2, 3)) / n
    mean_b = (weight * b).sum(dim=(1, 2, 3)) / n
    da = (a - mean_a.view(-1, 1, 1, 1)) * weight
    db = (b - mean_b.view(-1, 1, 1, 1)) * weight
    covariance = (da * db).sum(dim=(1, 2, 3))
    return covariance / torch.sqrt(da.pow(2).sum(dim=(1, 2, 3)) * db.pow(2).sum(dim=(1, 2, 3)) + eps)


@dataclass
class AlignOutput:
    aligned: Tensor  # (B, 1, S, S) main image warped into the reference frame
    theta: Tensor  # (B, 2, 3)
    reg_loss: Tensor  # scalar L_reg
    similarity_loss: Tensor  # scalar 1 - NCC on the content overlap (0 when the term is off)
    content: Tensor | None  # (B, 1, S, S) the warped main image's content mask (None: the whole frame)


class Aligner(nn.Module):
    """Shallow CNN on the downsampled [main, ref] stack -> bounded δ -> Θ -> warped main."""

    def __init__(
        self,
        input_size: int = 64,
        channels: int = 16,
        max_delta: float = 0.2,
        reg_weights: tuple[float, float, float] | list[float] = (1e-4, 1e-5, 1e-6),
        align_corners: bool = False,
        similarity_weight: float = 0.0,
    ):
        super().__init__()
        self.input_size = input_size
        self.max_delta = max_delta
        self.reg_weights = tuple(reg_weights)
        self.align_corners = align_corners
        self.similarity_weight = similarity_weight
        c = channels
        slope = 0.1  # leaky: a unit pushed below zero still passes gradient (see the module docstring)
        self.trunk = nn.Sequential(
            nn.Conv2d(2, c, 5, stride=2, padding=2),
            nn.LeakyReLU(slope, inplace=True),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
            nn.LeakyReLU(slope, inplace=True),
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1),
            nn.LeakyReLU(slope, inplace=True),
            nn.Conv2d(4 * c, 4 * c, 3, stride=2, padding=1),
            nn.LeakyReLU(slope, inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * c, 6)
        # Zero head: δ = 0, Θ = identity at step 0; gradients still reach the head (its input is nonzero).
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def _small(self, images: Tensor) -> Tensor:
        if images.shape[-1] == self.input_size:
            return images
        return F.interpolate(images, size=(self.input_size, self.input_size), mode="area")

    def predict_theta(self, main: Tensor, ref: Tensor) -> Tensor:
        """Θ (B, 2, 3) from main, ref (B, 1, S, S) in [0, 1]."""
        pair = self._small(torch.cat([main, ref], dim=1)) - 0.5  # centred (see the module docstring)
        delta = self.max_delta * torch.tanh(self.head(self.trunk(pair)))  # (B, 6)
        return identity_theta(main.shape[0], main.device, main.dtype) + delta.view(-1, 2, 3)

    def similarity_loss(
        self, main: Tensor, ref: Tensor, theta: Tensor, main_content: Tensor | None, ref_content: Tensor | None
    ) -> Tensor:
        """Mean 1 - NCC(warp(main), ref) over the content overlap, at the aligner's input resolution."""
        small_main, small_ref = self._small(main), self._small(ref)
        ones = torch.ones_like(small_main)
        main_in = ones if main_content is None else self._small(main_content)
        ref_in = ones if ref_content is None else self._small(ref_content)
        with torch.no_grad():  # the overlap selects pixels; it is not something to optimise
            overlap = ((warp(main_in, theta, self.align_corners) > 0.99) & (ref_in > 0.99)).to(main.dtype)
        ncc = masked_ncc(warp(small_main, theta, self.align_corners), small_ref, overlap)
        return (1.0 - ncc).mean()

    def forward(
        self, main: Tensor, ref: Tensor, main_content: Tensor | None = None, ref_content: Tensor | None = None
    ) -> AlignOutput:
        """Warp main (B, 1, S, S) onto ref; ``*_content`` (B, 1, S, S) masks of where each image has content."""
        theta = self.predict_theta(main, ref)
        aligned = warp(main, theta, self.align_corners)
        similarity = (
            self.similarity_loss(main, ref, theta, main_content, ref_content)
            if self.similarity_weight > 0
            else main.new_zeros(())
        )
        content = None if main_content is None else (warp(main_content, theta.detach(), self.align_corners) > 0.5)
        return AlignOutput(
            aligned=aligned,
            theta=theta,
            reg_loss=registration_loss(theta, self.reg_weights),
            similarity_loss=similarity,
            content=None if content is None else content.float(),
        )
