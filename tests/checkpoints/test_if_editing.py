"""Editing with DeepFloyd IF checkpoints on our engine, against diffusers' four IF editing pipelines.

The tiny checkpoints are written by diffusers (tiny_if.py); diffusers' pipelines load the saved folders,
we load them with our loader, and both sides get the same tensors, prompt embeddings and seeds. Tensor
inputs are used as given by diffusers (no resize), so they are made at the stages' sizes (16 and 32).
Tolerances: see test_if_pipeline.py (ten guided steps amplify float32 rounding; lower guidance there).
"""
import pytest
import torch

from openimagen import editing
from openimagen.checkpoints.deepfloyd_if import load_if_cascade

diffusers = pytest.importorskip("diffusers")
from tiny_if import write_checkpoints  # noqa: E402

PROMPTS = ["A painting of a squirrel eating a burger", "an anime turtle on a red cube"]
TOL = 1e-3
STAGE_I = [(2, 7.0), (10, 4.0)]     # (steps, guidance)
STAGE_II = [(2, 4.0), (10, 2.0)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from diffusers import (IFImg2ImgPipeline, IFImg2ImgSuperResolutionPipeline, IFInpaintingPipeline,
                           IFInpaintingSuperResolutionPipeline)

    p1, _, d1, d2 = write_checkpoints(tmp_path_factory.mktemp("if"))
    none = dict(safety_checker=None, feature_extractor=None, watermarker=None)  # saved as absent
    sr = dict(none, tokenizer=None, text_encoder=None)                        # IF-II ships no T5
    pipes = dict(img2img=IFImg2ImgPipeline.from_pretrained(d1, **none),
                 inpaint=IFInpaintingPipeline.from_pretrained(d1, **none),
                 img2img_sr=IFImg2ImgSuperResolutionPipeline.from_pretrained(d2, **sr),
                 inpaint_sr=IFInpaintingSuperResolutionPipeline.from_pretrained(d2, **sr))
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    return dict(p1=p1, ours=load_if_cascade(str(d1), sr=str(d2)), **pipes)


def _gen(seed):
    return torch.Generator("cpu").manual_seed(seed)


def _embeds(p1, prompts):
    return p1.encode_prompt(prompts, do_classifier_free_guidance=True, device="cpu", clean_caption=False)


def _image(size, seed, B=1):
    return torch.rand(B, 3, size, size, generator=_gen(seed)) * 2 - 1


def _mask(size):
    m = torch.zeros(1, 1, size, size)
    m[..., size // 4: 3 * size // 4, size // 8: size // 2 + 1] = 1
    m[..., 0, :] = 0.6   # grey: thresholded to repaint on both sides
    return m


def _err(ours, ref, name):
    assert ours.shape == ref.shape
    err = (ours - ref.clamp(-1, 1)).abs().max().item()
    print(f"{name}: max abs error {err:.2e}")
    return err


# ----------------------------------------------------------------------------- the four pipelines


@pytest.mark.parametrize("steps,guidance", STAGE_I)
def test_img2img_matches_ifimg2imgpipeline(tiny, steps, guidance):
    image = _image(16, 0, B=2)
    pe, ne = _embeds(tiny["p1"], PROMPTS)
    ref = tiny["img2img"](image=image, prompt_embeds=pe, negative_prompt_embeds=ne, strength=0.7,
                          num_inference_steps=steps, guidance_scale=guidance, generator=_gen(0),
                          output_type="pt").images
    out = editing.img2img(tiny["ours"], image, PROMPTS, strength=0.7, steps=steps, guidance=guidance, seed=0,
                          stop_at=1, progress=False)
    assert _err(out.images[0], ref, f"img2img {steps} steps") < TOL


@pytest.mark.parametrize("steps,guidance", STAGE_I)
def test_inpaint_matches_ifinpaintingpipeline(tiny, steps, guidance):
    image, mask = _image(16, 1, B=2), _mask(16)
    pe, ne = _embeds(tiny["p1"], PROMPTS)
    ref = tiny["inpaint"](image=image, mask_image=mask, prompt_embeds=pe, negative_prompt_embeds=ne,
                          num_inference_steps=steps, guidance_scale=guidance, generator=_gen(2),
                          output_type="pt").images
    out = editing.inpaint(tiny["ours"], image, mask, PROMPTS, steps=steps, guidance=guidance, seed=2, stop_at=1,
                          progress=False)  # strength: IF's default 1.0
    assert _err(out.images[0], ref, f"inpaint {steps} steps") < TOL
    keep = mask < 0.5
    assert torch.equal(out.images[0][keep.expand_as(image)], image[keep.expand_as(image)])


@pytest.mark.parametrize("steps,guidance", STAGE_II)
def test_img2img_sr_matches_ifimg2imgsuperresolutionpipeline(tiny, steps, guidance):
    low, original = _image(16, 3, B=2), _image(32, 4, B=2)
    pe, ne = _embeds(tiny["p1"], PROMPTS)
    ref = tiny["img2img_sr"](image=low, original_image=original, prompt_embeds=pe, negative_prompt_embeds=ne,
                             num_inference_steps=steps, guidance_scale=guidance, generator=_gen(5),
                             output_type="pt").images  # strength 0.8, noise_level 250: the defaults
    out = editing.upscale(tiny["ours"], low, PROMPTS, original=original, steps=steps, guidance=guidance, seed=5,
                          progress=False)
    assert _err(out.images[0], ref, f"img2img-SR {steps} steps") < TOL


@pytest.mark.parametrize("steps,guidance", STAGE_II)
def test_inpaint_sr_matches_ifinpaintingsuperresolutionpipeline(tiny, steps, guidance):
    low, original, mask = _image(16, 6), _image(32, 7), _mask(32)
    pe, ne = _embeds(tiny["p1"], PROMPTS[:1])
    ref = tiny["inpaint_sr"](image=low, original_image=original, mask_image=mask, prompt_embeds=pe,
                             negative_prompt_embeds=ne, num_inference_steps=steps, guidance_scale=guidance,
                             generator=_gen(8), output_type="pt").images  # strength 0.8, noise_level 0
    out = editing.upscale(tiny["ours"], low, PROMPTS[:1], original=original, mask=mask, steps=steps,
                          guidance=guidance, seed=8, progress=False)
    assert _err(out.images[0], ref, f"inpaint-SR {steps} steps") < TOL


# ----------------------------------------------------------------------------- through the cascade


def test_inpaint_through_both_stages_matches_chained_pipelines(tiny):
    # One generator through IFInpainting then IFInpaintingSuperResolution (diffusers' IF docs chain them);
    # ours resizes the 32 px image and mask to stage I's 16 px and applies the mask at both stages.
    image, mask = _image(32, 9), _mask(32)
    small, small_mask = editing.resize_image(image, (16, 16)), editing.resize_mask(mask, (16, 16))
    pe, ne = _embeds(tiny["p1"], PROMPTS[:1])
    g = _gen(10)
    low = tiny["inpaint"](image=small, mask_image=small_mask, prompt_embeds=pe, negative_prompt_embeds=ne,
                          num_inference_steps=4, guidance_scale=4.0, generator=g, output_type="pt").images
    ref = tiny["inpaint_sr"](image=low, original_image=image, mask_image=mask, prompt_embeds=pe,
                             negative_prompt_embeds=ne, num_inference_steps=4, guidance_scale=2.0, generator=g,
                             output_type="pt").images
    out = editing.inpaint(tiny["ours"], image, mask, PROMPTS[:1], steps=4, guidance=[4.0, 2.0], seed=10,
                          progress=False)
    errs = [_err(o, r, f"chained inpaint, stage {i}") for i, (o, r) in enumerate(zip(out.images, (low, ref)))]
    assert max(errs) < TOL
    for x, known, m in ((out.images[0], small, small_mask), (out.images[1], image, mask >= 0.5)):
        keep = (m < 0.5).expand_as(x)
        assert torch.equal(x[keep], known[keep])  # the unmasked pixels are the original's at every stage


def test_if_defaults_are_the_pipelines(tiny):
    d = editing.edit_defaults(tiny["ours"], "img2img")
    assert d == dict(strength=[0.7, 0.8], steps=[80, 50], guidance=[10.0, 4.0], noise_level=[None, 250.0])
    d = editing.edit_defaults(tiny["ours"], "inpaint")
    assert d == dict(strength=[1.0, 0.8], steps=[50, 100], guidance=[7.0, 4.0], noise_level=[None, 0.0])
    d = editing.edit_defaults(tiny["ours"], "upscale", first_stage=1)
    assert d == dict(strength=[None, None], steps=[None, None], guidance=[None, None], noise_level=[None, None])


def test_if_resize_rule(tiny):
    s1, s2 = tiny["ours"].stages
    assert editing.stage_size(s1, 48, 64) == (16, 24)       # round(16 / 8 * 4/3) = 3 -> 24
    assert editing.stage_size(s1, 90, 160) == (16, 32)      # 16:9 -> round(3.56) = 4 -> 32
    assert editing.stage_size(s2, 64, 48) == (40, 32)       # portrait: the height is the long side
    assert editing.stage_size(s2, 32, 32) == (32, 32)
