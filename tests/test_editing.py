"""Editing on our own cascades (editing.py, canvas.py, diffusion/editing.py): the known pixels survive at
every stage, img2img's timestep cut with every sampler, outpainting's canvas, upscaling from stage k,
and a clear error for every bad value. IF parity is in tests/checkpoints/test_if_editing.py."""
import pytest
import torch

from openimagen import editing
from openimagen.cascade import Cascade
from openimagen.diffusion import SAMPLERS

DIM, L = 16, 4
P1 = ["a red circle"]


class WordsEncoder:
    """A dummy text encoder: deterministic embeddings per prompt, no weights to load."""
    dim, max_length = DIM, L

    def encode(self, prompts):
        rows = [torch.randn(L, DIM, generator=torch.Generator().manual_seed(sum(map(ord, p)))) for p in prompts]
        return torch.stack(rows), torch.ones(len(prompts), L, dtype=torch.bool)

    def spec(self):
        return {"kind": "words"}


@pytest.fixture(scope="module")
def cascade():
    c = Cascade.build(WordsEncoder(), [("tiny", 8), ("tiny", 16), ("tiny", 32)], steps=3, sampler="ddim")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero-initialised output layers would make every output trivially equal
        for p in c.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return c


def _image(h, w=None, seed=0, B=1):
    return torch.rand(B, 3, h, w or h, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _mask(h, w=None):
    m = torch.zeros(1, 1, h, w or h)
    m[..., h // 4: 3 * h // 4, : (w or h) // 2] = 0.8  # grey counts as white (>= 0.5)
    return m


def _kept(out, image, mask):
    """For every stage image: (known pixels equal the input resized there?, did the masked ones change?)."""
    res = []
    for x in out.images:
        size = tuple(x.shape[-2:])
        known, m = editing.resize_image(image, size), editing.resize_mask(mask, size).expand_as(x).bool()
        res.append((torch.equal(x[~m], known.expand_as(x)[~m]), not torch.equal(x[m], known.expand_as(x)[m])))
    return res


# ----------------------------------------------------------------------------- inpainting


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_keep_known_keeps_the_unmasked_pixels_at_every_stage(cascade, sampler):
    image, mask = _image(32), _mask(32)
    out = editing.inpaint(cascade, image, mask, P1, sampler=sampler, blend="keep_known", num_images=2, seed=3,
                          progress=False)
    assert [tuple(x.shape) for x in out.images] == [(2, 3, 8, 8), (2, 3, 16, 16), (2, 3, 32, 32)]
    assert _kept(out, image, mask) == [(True, True)] * 3


def test_non_square_images_follow_the_resize_rule_at_every_stage(cascade):
    image, mask = _image(24, 32, seed=1), _mask(24, 32)
    out = editing.inpaint(cascade, image, mask, P1, seed=0, progress=False)
    # short side = the stage's resolution; long side round(r / 2 * 4/3) * 2 (the tiny U-Net takes multiples of 2)
    assert [tuple(x.shape[-2:]) for x in out.images] == [(8, 10), (16, 22), (32, 42)]
    assert _kept(out, image, mask) == [(True, True)] * 3


def test_repaint_blend_keeps_the_known_pixels_and_resampling_redoes_steps(cascade):
    image, mask = _image(32, seed=2), _mask(32)
    calls = []
    hook = cascade.stages[0].unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        plain = editing.inpaint(cascade, image, mask, P1, blend="repaint", seed=1, progress=False)
        n_plain = len(calls)
        resampled = editing.inpaint(cascade, image, mask, P1, blend="repaint", resample=3, seed=1, progress=False)
    finally:
        hook.remove()
    assert n_plain == 3 and len(calls) - n_plain == 3 + 2 * 2  # 3 steps; the two non-final ones redone twice
    assert _kept(plain, image, mask) == _kept(resampled, image, mask) == [(True, True)] * 3
    keep = editing.inpaint(cascade, image, mask, P1, blend="keep_known", seed=1, progress=False)
    assert torch.equal(editing.inpaint(cascade, image, mask, P1, seed=1, progress=False).images[0], plain.images[0])
    assert not torch.equal(plain.images[0], keep.images[0]) and not torch.equal(plain.images[0], resampled.images[0])


def test_one_mask_per_prompt_and_seeded_determinism(cascade):
    image = _image(16, seed=4, B=2)
    mask = torch.cat([_mask(16), 1 - _mask(16)])
    kw = dict(seed=5, stop_at=2, progress=False)
    a = editing.inpaint(cascade, image, mask, ["a red circle", "a blue square"], **kw)
    b = editing.inpaint(cascade, image, mask, ["a red circle", "a blue square"], **kw)
    assert all(torch.equal(x, y) for x, y in zip(a.images, b.images))
    for row in range(2):
        sub = type(a)(images=[x[row: row + 1] for x in a.images], prompts=a.prompts[row: row + 1])
        assert _kept(sub, image[row: row + 1], mask[row: row + 1]) == [(True, True)] * 2


# ----------------------------------------------------------------------------- img2img


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_img2img_walks_the_last_int_n_times_strength_timesteps(cascade, sampler):
    walked = {0: [], 1: [], 2: []}
    out = editing.img2img(cascade, _image(32), P1, strength=[0.5, 0.7, 0.9], steps=5, sampler=sampler, seed=0,
                          progress=False, callback=lambda s: walked[s.stage].append(s.t.item()))
    for i, strength in enumerate([0.5, 0.7, 0.9]):
        ts = cascade.stages[i].schedule.timesteps(5)
        assert walked[i] == ts[5 - int(5 * strength):].tolist()  # 2, 3 and 4 steps
    assert all(torch.isfinite(x).all() for x in out.images)


def test_img2img_strength_one_number_is_the_first_stages(cascade):
    walked = []
    editing.img2img(cascade, _image(16), P1, strength=0.4, steps=5, stop_at=2, seed=0, progress=False,
                    callback=lambda s: walked.append(s.stage))
    assert walked == [0, 0] + [1] * 5  # stage 0: int(5 * 0.4) = 2 steps; stage 1: our default, strength 1


def test_our_defaults(cascade):
    d = editing.edit_defaults(cascade, "img2img")
    assert d["strength"] == [0.7, 1.0, 1.0] and d["steps"] == d["guidance"] == d["noise_level"] == [None] * 3
    assert editing.edit_defaults(cascade, "inpaint")["strength"] == [1.0] * 3


# ----------------------------------------------------------------------------- outpainting


def test_outpaint_pads_masks_the_new_area_and_keeps_the_image(cascade):
    image = _image(16, seed=6)
    out = editing.outpaint(cascade, image, P1, right=8, fill="edge", seed=0, progress=False)
    assert [tuple(x.shape[-2:]) for x in out.images] == [(8, 12), (16, 24), (32, 48)]
    mid = out.images[1]  # the canvas's own scale: no resize, so the image is there bit for bit
    assert torch.equal(mid[..., :16], image)
    edge = image[..., -1:].expand(1, 3, 16, 8)
    assert (mid[..., 16:] - edge).abs().max() > 0.1  # the fill was repainted


def test_outpaint_rounds_the_canvas_up_and_crops_it_back(cascade):
    image = _image(16, seed=7)
    assert not editing.valid_size(cascade, 16, 19) and editing.valid_size(cascade, 16, 20)
    assert editing.nearest_valid_sizes(cascade, 16, 19) == [(16, 16), (16, 20)]
    out = editing.outpaint(cascade, image, P1, right=3, seed=0, progress=False)  # 16x19 -> painted 16x20
    assert [tuple(x.shape[-2:]) for x in out.images] == [(8, 10), (16, 19), (32, 38)]  # 9.5 rounds to 10
    assert torch.equal(out.images[1][..., :16], image)
    with pytest.raises(ValueError, match=r"canvas 16x19 .* nearest valid canvas sizes: 16x16, 16x20"):
        editing.outpaint(cascade, image, P1, right=3, fit="refuse", progress=False)


def test_extend_to_a_size_or_an_aspect():
    assert editing.extend_to(16, 16, aspect=1.5) == dict(left=4, right=4, top=0, bottom=0)
    assert editing.extend_to(16, 16, height=21) == dict(left=0, right=0, top=2, bottom=3)
    with pytest.raises(ValueError, match="smaller than the image"):
        editing.extend_to(16, 16, width=8)


# ----------------------------------------------------------------------------- upscaling


def test_upscale_is_generate_started_at_stage_k(cascade):
    low, mid = _image(8, seed=8), _image(16, seed=9)
    a = editing.upscale(cascade, low, P1, seed=2, progress=False)
    b = cascade.generate(P1, image=low, seed=2, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.images, b.images)) and len(a.images) == 2
    c = editing.upscale(cascade, mid, P1, from_stage=2, seed=2, progress=False)
    d = cascade.generate(P1, image=mid, first_stage=2, seed=2, progress=False)
    assert len(c.images) == 1 and c.images[0].shape == (1, 3, 32, 32) and torch.equal(c.images[0], d.images[0])


def test_upscale_with_a_mask_keeps_the_originals_pixels(cascade):
    low, original, mask = _image(8, seed=10), _image(32, seed=11), _mask(32)
    out = editing.upscale(cascade, low, P1, original=original, mask=mask, seed=0, progress=False)
    assert _kept(out, original, mask) == [(True, True)] * 2
    walked = []
    editing.upscale(cascade, low, P1, strength=0.5, steps=4, stop_at=2, seed=0, progress=False,
                    callback=lambda s: walked.append(s.stage))
    assert walked == [1, 1]  # img2img-SR from the image itself, enlarged


def test_generate_first_stage_errors(cascade):
    with pytest.raises(ValueError, match="first_stage=2 starts from a given low-res image: pass image="):
        cascade.generate(P1, first_stage=2, progress=False)
    with pytest.raises(ValueError, match="first_stage=0 takes no image"):
        cascade.generate(P1, image=_image(8), first_stage=0, progress=False)
    with pytest.raises(ValueError, match=r"first_stage=3 is not a stage of this 3-stage cascade; give 0..2"):
        cascade.generate(P1, image=_image(8), first_stage=3, progress=False)


# ----------------------------------------------------------------------------- bad input

IMG, MASK = _image(16), _mask(16)
BAD = [
    (lambda c: editing.img2img(c, IMG, P1, strength=0), r"strength must be a number in \(0, 1\].*got 0"),
    (lambda c: editing.img2img(c, IMG, P1, strength=1.5), r"strength must be a number in \(0, 1\].*got 1.5"),
    (lambda c: editing.img2img(c, IMG, P1, strength=[0.5, 2.0, None]), r"got 2.0 for stage 1"),
    (lambda c: editing.img2img(c, IMG, P1, strength=0.1, steps=3), r"strength 0.1 with 3 steps runs no step"),
    (lambda c: editing.img2img(c, IMG[:, :1], P1), r"image must be a \(B, 3, H, W\) tensor"),
    (lambda c: editing.img2img(c, IMG * 3, P1), r"values must lie in \[-1, 1\].*x \* 2 - 1"),
    (lambda c: editing.img2img(c, IMG.expand(3, -1, -1, -1), ["a", "b"]), r"3 rows for 2 prompts"),
    (lambda c: editing.img2img(c, IMG, P1, height=32), r"height= is set by the edit itself"),
    (lambda c: editing.inpaint(c, IMG, _mask(8), P1), r"the mask is 8x8 but the image is 16x16; give a mask of "
                                                      r"the image's size"),
    (lambda c: editing.inpaint(c, IMG, torch.zeros(1, 1, 16, 16), P1),
     r"the mask is empty.*use img2img \(or generate\)"),
    (lambda c: editing.inpaint(c, IMG, torch.ones(1, 1, 16, 16), P1),
     r"all white.*text-to-image.*img2img at that strength"),
    (lambda c: editing.inpaint(c, IMG, MASK[:, 0], P1), r"mask must be a \(B or 1, 1, H, W\) tensor"),
    (lambda c: editing.inpaint(c, IMG, MASK * float("nan"), P1), r"mask has NaN"),
    (lambda c: editing.inpaint(c, IMG, MASK, P1, blend="poisson"), r"unknown blend 'poisson'; choose one of "
                                                                  r"\['keep_known', 'repaint'\]"),
    (lambda c: editing.inpaint(c, IMG, MASK, P1, blend="keep_known", resample=3),
     r"resample=3 needs blend='repaint'"),
    (lambda c: editing.inpaint(c, IMG, MASK, P1, blend="repaint", resample=0), r"resample must be a whole number"),
    (lambda c: editing.inpaint(c, _image(64), _dot(64), P1), r"the mask covers no pixel at stage 0's size 8x8"),
    (lambda c: editing.outpaint(c, IMG, P1), r"nothing to extend"),
    (lambda c: editing.outpaint(c, IMG, P1, left=-2), r"left must be a whole number of pixels >= 0, got -2"),
    (lambda c: editing.outpaint(c, IMG, P1, left=4, fill="noise"), r"unknown fill 'noise'"),
    (lambda c: editing.outpaint(c, IMG, P1, left=4, fit="stretch"), r"unknown fit 'stretch'"),
    (lambda c: editing.outpaint(c, IMG, P1, left=16, fill="reflect"), r"fill='reflect' needs each extension smaller"),
    (lambda c: editing.upscale(c, IMG, P1, from_stage=3), r"from_stage=3 is not a super-resolution stage of this "
                                                         r"3-stage cascade; give 1..2"),
    (lambda c: editing.upscale(c, IMG, P1, from_stage=0), r"from_stage=0 is not a super-resolution stage"),
    (lambda c: editing.upscale(Cascade(c.text_encoder, c.stages[:1]), IMG, P1), r"one stage and no super-resolution"),
    (lambda c: editing.upscale(c, IMG, P1, mask=_mask(32)), r"the mask is 32x32 but the image is 16x16"),
]


def _dot(size):
    m = torch.zeros(1, 1, size, size)
    m[..., 5, 5] = 1  # one pixel: gone at 8 px after resizing and thresholding
    return m


@pytest.mark.parametrize("call,message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_values_raise_valueerror_naming_the_fix(cascade, call, message):
    with pytest.raises(ValueError, match=message):
        call(cascade)
