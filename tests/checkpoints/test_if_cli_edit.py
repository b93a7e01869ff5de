"""`openimagen edit` / `upscale` on saved tiny IF folders against diffusers' four IF editing pipelines.

The inputs are PNG files (what a user has); diffusers gets the same pixels as tensors, so neither side
resizes (the tiny stages are 16 and 32 px). Our output is a PNG, so the bound is the 1e-3 parity tolerance
plus half an 8-bit level. The parity runs give every option explicitly; the last test checks that the
defaults `run_edit` resolves (and writes into the PNG) are those of diffusers' IF pipelines.
"""
import numpy as np
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")
from tiny_if import write_checkpoints  # noqa: E402

from openimagen.cli import main  # noqa: E402

PROMPT = "A painting of a squirrel eating a burger"
TOL = 1e-3 + 0.5 / 127.5  # parity plus the PNG's rounding
STEPS = [(2, 7.0), (10, 4.0)]
SR_STEPS = [(2, 4.0), (10, 2.0)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("if")
    p1, p2, d1, d2 = write_checkpoints(root)
    return dict(p1=p1, p2=p2, d1=str(d1), d2=str(d2), root=root)


def _png(path, size, seed, mask=False):
    """A random picture (or a mask: white top-left block) saved as PNG; -> the tensor diffusers gets."""
    rng = np.random.default_rng(seed)
    if mask:
        a = np.zeros((size, size), np.uint8)
        a[: size // 2, : size * 3 // 4] = 255
        Image.fromarray(a).save(path)
        return torch.from_numpy(a).float()[None, None] / 255  # (1, 1, H, W)
    a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(a).save(path)
    return torch.from_numpy(a).permute(2, 0, 1).float()[None] / 127.5 - 1  # (1, 3, H, W)


def _ours(capsys, out, *argv):
    # fp32: the diffusers pipelines they are compared with run in fp32 (auto would pick bf16 on a bf16 CPU)
    assert main(["-q", "--threads", "1", *argv, "--precision", "fp32", "--seed", "0", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    last = sorted(out.glob("*.png"))[-1]
    return torch.from_numpy(np.array(Image.open(last).convert("RGB"))).permute(2, 0, 1).float()[None] / 127.5 - 1


def _check(ours, ref, what):
    err = (ours - ref.clamp(-1, 1)).abs().max().item()
    print(f"{what}: max abs error {err:.2e} (PNG)")
    assert ours.shape == ref.shape and err <= TOL


def _embeds(tiny):
    return tiny["p1"].encode_prompt([PROMPT], do_classifier_free_guidance=True, device="cpu", clean_caption=False)


def _gen():
    return torch.Generator("cpu").manual_seed(0)


@pytest.mark.parametrize("steps,guidance", STEPS)
def test_cli_img2img_matches_ifimg2imgpipeline(tiny, tmp_path, capsys, steps, guidance):
    image = _png(tmp_path / "in.png", 16, seed=1)
    pipe = diffusers.IFImg2ImgPipeline(**tiny["p1"].components)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPT, image=image, strength=0.7, num_inference_steps=steps, guidance_scale=guidance,
               generator=_gen(), output_type="pt", clean_caption=False).images
    ours = _ours(capsys, tmp_path / "out", "edit", str(tmp_path / "in.png"), PROMPT, "--model", tiny["d1"],
                 "--strength", "0.7", "--steps", str(steps), "--guidance", str(guidance))
    _check(ours, ref, f"img2img {steps} steps")


@pytest.mark.parametrize("steps,guidance", STEPS)
def test_cli_inpaint_matches_ifinpaintingpipeline(tiny, tmp_path, capsys, steps, guidance):
    image = _png(tmp_path / "in.png", 16, seed=2)
    mask = _png(tmp_path / "mask.png", 16, seed=0, mask=True)
    pipe = diffusers.IFInpaintingPipeline(**tiny["p1"].components)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPT, image=image, mask_image=mask, strength=1.0, num_inference_steps=steps,
               guidance_scale=guidance, generator=_gen(), output_type="pt", clean_caption=False).images
    ours = _ours(capsys, tmp_path / "out", "edit", str(tmp_path / "in.png"), PROMPT, "--mask", str(tmp_path / "mask.png"),
                 "--model", tiny["d1"], "--strength", "1.0", "--steps", str(steps), "--guidance", str(guidance))
    _check(ours, ref, f"inpaint {steps} steps")
    keep = mask < 0.5
    assert ((ours - image).abs() * keep).max() <= 0.5 / 127.5 + 1e-6  # IF keeps the unmasked input exactly


@pytest.mark.parametrize("steps,guidance", SR_STEPS)
def test_cli_upscale_matches_ifsuperresolutionpipeline(tiny, tmp_path, capsys, steps, guidance):
    low = _png(tmp_path / "low.png", 16, seed=3)
    pe, ne = _embeds(tiny)
    ref = tiny["p2"](image=low, prompt_embeds=pe, negative_prompt_embeds=ne, num_inference_steps=steps,
                     guidance_scale=guidance, noise_level=250, generator=_gen(), output_type="pt").images
    ours = _ours(capsys, tmp_path / "out", "upscale", str(tmp_path / "low.png"), PROMPT, "--model", tiny["d1"],
                 "--sr", tiny["d2"], "--steps", str(steps), "--guidance", str(guidance), "--noise-level", "250")
    _check(ours, ref, f"upscale {steps} steps")


@pytest.mark.parametrize("steps,guidance", SR_STEPS)
def test_cli_img2img_upscale_matches_ifimg2imgsuperresolutionpipeline(tiny, tmp_path, capsys, steps, guidance):
    low = _png(tmp_path / "low.png", 16, seed=4)
    original = _png(tmp_path / "orig.png", 32, seed=5)
    pipe = diffusers.IFImg2ImgSuperResolutionPipeline(**tiny["p2"].components)
    pipe.set_progress_bar_config(disable=True)
    pe, ne = _embeds(tiny)
    ref = pipe(image=low, original_image=original, prompt_embeds=pe, negative_prompt_embeds=ne, strength=0.8,
               num_inference_steps=steps, guidance_scale=guidance, noise_level=250, generator=_gen(),
               output_type="pt").images
    ours = _ours(capsys, tmp_path / "out", "upscale", str(tmp_path / "low.png"), PROMPT, "--original",
                 str(tmp_path / "orig.png"), "--strength", "0.8", "--model", tiny["d1"], "--sr", tiny["d2"],
                 "--steps", str(steps), "--guidance", str(guidance), "--noise-level", "250")
    _check(ours, ref, f"img2img-SR {steps} steps")


@pytest.mark.parametrize("steps,guidance", SR_STEPS)
def test_cli_inpaint_upscale_matches_ifinpaintingsuperresolutionpipeline(tiny, tmp_path, capsys, steps, guidance):
    low = _png(tmp_path / "low.png", 16, seed=6)
    original = _png(tmp_path / "orig.png", 32, seed=7)
    mask = _png(tmp_path / "mask.png", 32, seed=0, mask=True)
    pipe = diffusers.IFInpaintingSuperResolutionPipeline(**tiny["p2"].components)
    pipe.set_progress_bar_config(disable=True)
    pe, ne = _embeds(tiny)
    ref = pipe(image=low, original_image=original, mask_image=mask, prompt_embeds=pe, negative_prompt_embeds=ne,
               strength=0.8, num_inference_steps=steps, guidance_scale=guidance, noise_level=0, generator=_gen(),
               output_type="pt").images
    ours = _ours(capsys, tmp_path / "out", "upscale", str(tmp_path / "low.png"), PROMPT, "--original",
                 str(tmp_path / "orig.png"), "--mask", str(tmp_path / "mask.png"), "--strength", "0.8",
                 "--model", tiny["d1"], "--sr", tiny["d2"], "--steps", str(steps), "--guidance", str(guidance),
                 "--noise-level", "0")
    _check(ours, ref, f"inpainting-SR {steps} steps")


@pytest.fixture(scope="module")
def ours(tiny):
    from openimagen.checkpoints.deepfloyd_if import load_if_cascade

    return load_if_cascade(tiny["d1"], sr=tiny["d2"])


@pytest.mark.parametrize("mode,defaults", [
    # diffusers' defaults: IFImg2ImgPipeline then IFImg2ImgSuperResolutionPipeline
    ("img2img", dict(strength=[0.7, 0.8], steps=[80, 50], guidance=[10.0, 4.0], noise_level=[None, 250.0])),
    # IFInpaintingPipeline then IFInpaintingSuperResolutionPipeline
    ("inpaint", dict(strength=[1.0, 0.8], steps=[50, 100], guidance=[7.0, 4.0], noise_level=[None, 0.0])),
    # IFInpaintingSuperResolutionPipeline on a user's image
    ("upscale", dict(strength=[None, 0.8], steps=[None, 100], guidance=[None, 4.0], noise_level=[None, 0.0])),
])
def test_resolved_edit_defaults_are_ifs(ours, tmp_path, mode, defaults):
    from openimagen import api, editing, images

    x = _png(tmp_path / "in.png", 32, seed=8)
    m = _png(tmp_path / "mask.png", 32, seed=0, mask=True)
    low = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", antialias=True)
    fields = dict(mode=mode, image=str(tmp_path / "in.png"), prompt=[PROMPT], mask=str(tmp_path / "mask.png"))
    if mode == "upscale":
        Image.fromarray(((low[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()).save(tmp_path / "low.png")
        fields.update(image=str(tmp_path / "low.png"), original=str(tmp_path / "in.png"))
        low = images.load_image(tmp_path / "low.png")
    if mode == "img2img":
        del fields["mask"]
    result = api.run_edit(api.EditRequest(**fields), cascade=ours, progress=False)
    got = {k: getattr(result.request, k) for k in defaults}
    assert got == defaults and result.request.sampler[-1] == "ddpm"
    if mode == "upscale":  # the mode with the most rules (tests/test_cli_edit.py compares every mode on ours)
        direct = editing.upscale(ours, low, [PROMPT], original=x, mask=m, progress=False)
        assert all(torch.equal(a, b) for a, b in zip(result.images, direct.images))
