"""IF's whole three-stage recipe through our CLI against diffusers' three pipelines chained as the IF docs
chain them: one generator through IF I, IF II and the x4 upscaler, noise_level=100 for stage III.

All three checkpoints are tiny folders written by diffusers' save_pretrained (tiny_if.py, tiny_x4.py).
The CLI writes 8-bit PNGs, so the float images are taken from the result it writes (a spy on write_pngs).
"""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from tiny_if import write_checkpoints  # noqa: E402
from tiny_x4 import write_x4  # noqa: E402

PROMPT = "a red cube above a blue sphere"
TOL = 1e-3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("if3")
    p1, p2, d1, d2 = write_checkpoints(root)
    p3, d3 = write_x4(root, num_class_embeds=1000)  # noise level 100 needs more than the test's 100 labels
    return dict(p1=p1, p2=p2, p3=p3, d1=d1, d2=d2, d3=d3)


@pytest.fixture
def spy(monkeypatch):
    import openimagen.api as api

    seen, real = [], api.write_pngs
    monkeypatch.setattr(api, "write_pngs", lambda result, out, **kw: seen.append(result) or real(result, out, **kw))
    return seen


def test_three_stage_cli_equals_chained_diffusers_pipelines(tiny, tmp_path, spy, capsys, monkeypatch):
    from openimagen.cli import main
    from openimagen.text import T5Encoder
    from openimagen.text_clip import CLIPEncoder

    calls = {}
    for cls in (T5Encoder, CLIPEncoder):
        real = cls.encode
        monkeypatch.setattr(cls, "encode", lambda self, p, real=real, n=cls.__name__: calls.update(
            {n: calls.get(n, 0) + 1}) or real(self, p))

    rc = main(["-q", "generate", "--model", str(tiny["d1"]), "--sr", str(tiny["d2"]), "--sr", str(tiny["d3"]),
               "--steps", "3", "--seed", "5", "--precision", "fp32", "--out", str(tmp_path), PROMPT])  # fp32 as diffusers
    assert rc == 0
    names = {p.name.rsplit("-", 2)[1:] == [f"stage{k}", f"{s}px.png"] for p in tmp_path.glob("*.png")
             for k, s in enumerate((16, 32, 128)) if f"stage{k}" in p.name}
    assert names == {True} and len(list(tmp_path.glob("*.png"))) == 3

    ours = spy[0].images
    assert [tuple(x.shape[-2:]) for x in ours] == [(16, 16), (32, 32), (128, 128)]
    # diffusers' chain, one generator through all three pipelines as ours, but each later pipeline gets OUR
    # earlier stage's image: then every stage is held to TOL on the same input. Fed its own earlier output
    # instead, stage I's rounding (7e-5 on an AVX512 CPU) grows through stage II's steps to ~1.2e-3.
    g = torch.Generator("cpu").manual_seed(5)
    pe, ne = tiny["p1"].encode_prompt(PROMPT, do_classifier_free_guidance=True, device="cpu", clean_caption=False)
    s1 = tiny["p1"](prompt_embeds=pe, negative_prompt_embeds=ne, num_inference_steps=3, generator=g,
                    output_type="pt").images
    s2 = tiny["p2"](image=ours[0], prompt_embeds=pe, negative_prompt_embeds=ne, num_inference_steps=3, generator=g,
                    output_type="pt").images
    s3 = tiny["p3"](prompt=PROMPT, image=ours[1], noise_level=100, num_inference_steps=3, generator=g,
                    output_type="pt").images                                          # [0, 1]
    errs = [(ours[0] - s1.clamp(-1, 1)).abs().max().item(), (ours[1] - s2.clamp(-1, 1)).abs().max().item(),
            ((ours[2] + 1) / 2 - s3).abs().max().item()]
    print("three stages, max abs errors:", ", ".join(f"{e:.2e}" for e in errs))
    assert max(errs) <= TOL
    assert calls == {"T5Encoder": 2, "CLIPEncoder": 2}  # prompt and "" once per encoder, not once per stage
    assert spy[0].request.noise_level == [None, 250.0, 100.0] and spy[0].request.sampler == ["ddpm", "ddpm", "ddim"]


def test_upscale_cli_with_the_x4_alone_equals_the_upscale_pipeline(tiny, tmp_path, spy):
    from PIL import Image

    from openimagen.cli import main
    from openimagen.images import load_image

    path = tmp_path / "small.png"
    pixels = torch.randint(0, 256, (18, 22, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(path)
    rc = main(["-q", "upscale", "--model", str(tiny["d3"]), "--steps", "2", "--seed", "3", "--precision", "fp32", "--out",
               str(tmp_path / "out"), str(path), PROMPT])
    assert rc == 0
    ref = tiny["p3"](prompt=PROMPT, image=load_image(path), noise_level=20, num_inference_steps=2,
                     generator=torch.Generator().manual_seed(3), output_type="pt").images
    out = spy[0].images[-1]
    assert out.shape == ref.shape == (1, 3, 64, 80)  # 18x22 rounds down to 16x20, then x4
    assert ((out + 1) / 2 - ref).abs().max().item() <= TOL
    assert len(list((tmp_path / "out").glob("*-stage0-80x64px.png"))) == 1


@pytest.mark.parametrize("args,message", [
    (lambda t: ["--sr", str(t["d2"]), "--sr", str(t["d1"])], "only the Stable Diffusion x4 upscaler"),
    (lambda t: ["--sr", str(t["d2"]), "--sr", str(t["d3"]), "--noise-level", "400"], "noise_level 400.0 is outside 0..350"),
    (lambda t: ["--sr", str(t["d3"]), "--height", "100"], "height=100 cannot be met"),
])
def test_cli_reports_bad_input_in_one_line(tiny, tmp_path, capsys, args, message):
    from openimagen.cli import main

    rc = main(["-q", "generate", "--model", str(tiny["d1"]), *args(tiny), "--steps", "1", "--out", str(tmp_path), "x"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


def test_a_folder_that_is_not_an_upscaler_is_named(tiny):
    from openimagen.checkpoints.sd_upscaler import load_upscaler_stage
    from openimagen.io.errors import CheckpointError

    with pytest.raises(CheckpointError, match="is a IFSuperResolutionPipeline, not a Stable Diffusion upscaler"):
        load_upscaler_stage(tiny["d2"])
