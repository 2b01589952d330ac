"""Device-side crop-flip: each output is a shifted (and maybe mirrored) copy of its own input."""
import pytest
import torch
import torch.nn.functional as F

from bench.augment import AUGMENTATIONS, CROP_PADDING, crop_flip

P = CROP_PADDING


def gen(seed):
    return torch.Generator().manual_seed(seed)


def find_transform(src: torch.Tensor, out: torch.Tensor):
    """All (dy, dx, flipped) such that ``out`` is that crop of the zero-padded ``src``."""
    h, w = src.shape[-2:]
    padded = F.pad(src, (P, P, P, P))
    hits = []
    for dy in range(2 * P + 1):
        for dx in range(2 * P + 1):
            crop = padded[:, dy:dy + h, dx:dx + w]
            for flipped in (False, True):
                if torch.equal(crop.flip(-1) if flipped else crop, out):
                    hits.append((dy, dx, flipped))
    return hits


@pytest.mark.parametrize("shape", [(64, 3, 32, 32), (16, 2, 8, 12)])
def test_outputs_are_crops_of_their_own_padded_input(shape):
    x = torch.randn(*shape)
    out = AUGMENTATIONS["crop-flip"](x, gen(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    seen = []
    for i in range(shape[0]):
        hits = find_transform(x[i], out[i])
        assert len(hits) == 1, f"sample {i}: {hits}"  # random pixels: exactly one explanation
        seen.append(hits[0])
    if shape[0] >= 64:  # the draws cover offsets and both flips
        assert len({dy for dy, _, _ in seen}) >= 7 and len({dx for _, dx, _ in seen}) >= 7
        assert 0.25 < sum(f for _, _, f in seen) / len(seen) < 0.75


def test_labels_stay_aligned_when_images_are_distinguishable():
    # sample i is a constant image of value i+1: a crop keeps that value (padding adds zeros)
    b = 32
    x = torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, 32, 32).contiguous()
    out = crop_flip(x, gen(3))
    assert torch.equal(out.amax(dim=(1, 2, 3)), torch.arange(1, b + 1, dtype=torch.float32))
    # a zero border appears exactly when the offset is not the centre one
    assert ((out == 0).any(dim=(1, 2, 3))).float().mean() > 0.5


def test_deterministic_under_seed_and_sensitive_to_it():
    x = torch.randn(128, 3, 32, 32)
    a, b, c = crop_flip(x, gen(7)), crop_flip(x, gen(7)), crop_flip(x, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    g = gen(7)
    first, second = crop_flip(x, g), crop_flip(x, g)  # the generator advances between batches
    assert torch.equal(first, a) and not torch.equal(first, second)


def test_keeps_low_precision_dtype_and_refuses_non_batches():
    x = torch.randn(4, 3, 32, 32).to(torch.bfloat16)
    out = crop_flip(x, gen(0))
    assert out.dtype == torch.bfloat16
    assert all(len(find_transform(x[i].float(), out[i].float())) >= 1 for i in range(4))
    with pytest.raises(ValueError, match="NCHW"):
        crop_flip(torch.randn(3, 32, 32), gen(0))
