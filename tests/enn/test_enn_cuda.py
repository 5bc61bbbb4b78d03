"""The ENN contract on CUDA (skipped without a GPU; scripts/gpu_check.sh runs them on one): lossless
convert/merge of an open_clip CLIP, exact mode orthonormal to float32 precision under bf16 autocast, and
penalty gradients equal to the CPU's."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from enn_testing import assert_close_scaled, clip_inputs, make_clip
from torch import nn

import enn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(autouse=True)
def full_float32() -> Iterator[None]:
    """No TF32 in matmuls and convolutions: the lossless contract is stated for float32 arithmetic."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _encode(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    images, tokens = (t.cuda() for t in clip_inputs())
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


@pytest.mark.parametrize("ortho", ["penalty", "exact"])
def test_clip_convert_and_merge_are_lossless_on_cuda(clip_dir: Path, ortho: str) -> None:
    model = make_clip(clip_dir).cuda()
    keys = list(model.state_dict())
    ref = _encode(model)
    enn.convert(model, ortho=ortho)  # the SVDs run on the GPU
    assert next(w for _, w in enn.enn_weights(model)).lam.is_cuda
    for got, want in zip(_encode(model), ref, strict=True):
        assert_close_scaled(got, want)
    with torch.no_grad():
        for _, w in enn.enn_weights(model):
            w.lam.mul_(1.1)  # a "trained" model, so merging cannot just hand back the original weights
    trained = _encode(model)
    enn.merge(model)
    assert list(model.state_dict()) == keys
    for got, want in zip(_encode(model), trained, strict=True):
        assert_close_scaled(got, want)


def test_exact_bases_stay_float32_orthonormal_under_bf16_autocast_on_cuda() -> None:
    torch.manual_seed(0)
    model = enn.convert(nn.Sequential(nn.Linear(768, 768), nn.GELU(), nn.Linear(768, 3072)).cuda(), ortho="exact")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)  # large steps: the raw factors move far
    x = torch.randn(64, 768, device="cuda")
    for _ in range(5):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
            bases = [b for _, w in enn.enn_weights(model) for b in w.bases()]
        assert out.dtype == torch.bfloat16
        assert all(b.dtype == torch.float32 for b in bases)
        out.float().square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        assert enn.orthogonality_error(model) < 1e-5


def test_penalty_and_its_gradients_match_cpu() -> None:
    torch.manual_seed(0)
    cpu = enn.convert(nn.Sequential(nn.Linear(48, 96), nn.Conv2d(3, 8, 3, groups=1)), ortho="penalty")
    with torch.no_grad():
        for p in cpu.parameters():
            p.add_(0.02 * torch.randn_like(p))
    gpu = copy.deepcopy(cpu).cuda()
    losses = []
    for model in (cpu, gpu):
        with torch.autocast(model[0].bias.device.type, dtype=torch.bfloat16):  # the penalty ignores autocast
            loss = enn.orthogonality_loss(model)
        loss.backward()
        losses.append(loss)
    assert losses[1].dtype == torch.float32
    torch.testing.assert_close(losses[1].cpu(), losses[0], rtol=1e-5, atol=1e-7)
    for (name, p_cpu), p_gpu in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        if p_cpu.grad is not None:
            torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_exact_shortcut_sees_a_fused_cuda_adamw_step() -> None:
    # CUDA's fused AdamW leaves Tensor._version alone too: the factor's values decide what is clean.
    torch.manual_seed(0)
    layer = enn.convert(nn.Linear(40, 24), ortho="exact").cuda()
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.5, fused=True)
    enn.retract(layer)
    layer(torch.randn(8, 40, device="cuda")).square().sum().backward()
    optimizer.step()
    assert enn.orthogonality_error(layer) < 1e-5
