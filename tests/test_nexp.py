"""NEXP: the closed form against the brute-force pairwise Hamming form, streaming, and hook hygiene."""

import pytest
import torch

import yolo_nexp
from yolo_nexp.arch.family import conv_blocks
from yolo_nexp.scoring.nexp import FiringCounter, nexp_from_counts, nexp_pairwise, position_share, recording

from .conftest import IMGSZ


@pytest.mark.parametrize("n,c,p", [(2, 3, 5), (5, 4, 17), (13, 6, 40)])
@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_closed_form_equals_pairwise_on_random_binary_maps(n, c, p, density):
    gen = torch.Generator().manual_seed(n * 100 + c)
    binary = (torch.rand(n, c, p, generator=gen) < density).float()
    counts = binary.sum(0).int()
    torch.testing.assert_close(nexp_from_counts(counts, n), nexp_pairwise(binary), rtol=0, atol=1e-6)


def test_closed_form_equals_pairwise_on_real_layer_activations(yolov8n):
    """Activations of a real yolov8n conv block, streamed in two batches, match the pairwise form on all of them."""
    det = yolov8n.model.eval()
    block = det.model[2].cv1  # a C2f's first conv
    seen = []
    handle = block.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    counter = FiringCounter()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(2):
            det(torch.rand(3, 3, IMGSZ, IMGSZ, generator=gen))
            counter.update(seen[-1])
    handle.remove()
    acts = torch.cat(seen)
    assert counter.n == 6
    expected = nexp_pairwise(acts)
    assert expected.max() > 0.05  # real activations do separate images, so the check is not trivially 0 == 0
    torch.testing.assert_close(counter.score(), expected, rtol=0, atol=1e-6)


def test_nexp_decomposes_into_firing_rate_and_position_share():
    """The stability benchmark explains NEXP as 2N/(N-1) * q(1-q) * (1 - position share); check it on maps where
    one channel is position-driven (fires on the left half in every image) and one is image-driven."""
    n, h, w = 8, 4, 6
    acts = torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(0))
    acts[:, 0] = torch.where(torch.arange(w) < w // 2, 1.0, -1.0)  # same map for every image
    acts[:, 1] = torch.where(torch.arange(n) < n // 2, 1.0, -1.0).view(n, 1, 1)  # all on or all off, by image
    counter = FiringCounter()
    counter.update(acts)
    q, share = position_share(counter)
    torch.testing.assert_close(share[:2], torch.tensor([1.0, 0.0], dtype=share.dtype))
    torch.testing.assert_close((2 * n / (n - 1) * q * (1 - q) * (1 - share)).float(), counter.score())
    assert counter.score()[0] == 0 and counter.score()[1] > 0.5  # both fire half the time; only one separates images


def test_dead_and_saturated_channels_score_zero():
    acts = torch.randn(6, 3, 4, 4)
    acts[:, 0] = -1.0  # never fires
    acts[:, 1] = 2.0  # always fires
    counter = FiringCounter()
    counter.update(acts)
    s = counter.score()
    assert s[0] == 0 and s[1] == 0 and s[2] > 0


def test_counter_memory_does_not_grow_with_images():
    counter = FiringCounter()
    counter.update(torch.randn(4, 8, 5, 5))
    state = counter.counts
    for _ in range(10):
        counter.update(torch.randn(4, 8, 5, 5))
    assert counter.counts.shape == (8, 5, 5) and counter.counts.dtype == torch.int32
    assert counter.counts.data_ptr() == state.data_ptr()  # updated in place, nothing accumulated
    assert counter.n == 44


def test_single_image_is_rejected():
    with pytest.raises(ValueError, match="at least 2"):
        nexp_from_counts(torch.zeros(3, 4, dtype=torch.int32), 1)


def test_score_covers_every_conv_block_and_removes_hooks(yolov8n):
    det = yolov8n.model
    scores = yolo_nexp.score(yolov8n, "noise", batches=2, imgsz=IMGSZ, batch=2, verbose=False)
    blocks = conv_blocks(det)
    assert set(scores) == set(blocks)
    for name, s in scores.items():
        assert s.shape == (blocks[name].conv.out_channels,)
        assert 0.0 <= s.min() and s.max() <= 4 / (2 * 3) + 1e-6  # upper bound N / (2 (N - 1)) for N = 4 images
    assert all(not m._forward_hooks for m in det.modules())
    assert det.training  # the mode the model was in is restored


def test_score_from_image_folder(yolov8n, tiny_data):
    images = tiny_data.parent / "images" / "train"
    from_folder = yolo_nexp.score(yolov8n, images, batches=2, imgsz=IMGSZ, batch=2, verbose=False)
    from_yaml = yolo_nexp.score(yolov8n, tiny_data, batches=2, imgsz=IMGSZ, batch=2, verbose=False)
    for name in from_folder:  # same seeded sample of the same train images
        torch.testing.assert_close(from_folder[name], from_yaml[name])


def test_hooks_removed_when_scoring_fails(yolov8n):
    def failing_loader():
        yield torch.rand(2, 3, IMGSZ, IMGSZ)
        raise RuntimeError("loader broke")

    with pytest.raises(RuntimeError, match="loader broke"):
        yolo_nexp.score(yolov8n, failing_loader(), batches=3, imgsz=IMGSZ, verbose=False)
    assert all(not m._forward_hooks for m in yolov8n.model.modules())


def test_recording_context_removes_hooks_on_error(yolov8n):
    blocks = conv_blocks(yolov8n.model)
    with pytest.raises(KeyError), recording(blocks):
        raise KeyError("boom")
    assert all(not b._forward_hooks for b in blocks.values())
