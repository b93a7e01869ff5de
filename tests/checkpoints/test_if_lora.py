"""Fine-tuning DeepFloyd IF: LoRA adapters interoperate with diffusers' IF LoRAs both ways, and a fine-tuned
IF stage II sees in training exactly the U-Net inputs it gets when sampling.

The oracle is diffusers itself on the tiny IF folders it wrote (tiny_if.py): its `load_lora_weights` reads
our adapter file, and its PEFT integration (`unet.add_adapter` + `save_lora_weights`) writes one we read.
Tolerance as test_if_pipeline.py: 2 guided steps, where float32 noise stays ~1e-5.
"""
import pytest
import torch

from openimagen.load import load_model
from openimagen.lora import LoraConfig, adapter_state, add_lora, save_adapter

diffusers = pytest.importorskip("diffusers")
from tiny_if import stage_i_pipeline, write_checkpoints  # noqa: E402

PROMPTS = ["A painting of a squirrel eating a burger", "an anime turtle on a red cube"]
TOL = 1e-3
IF_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("if")
    p1, p2, d1, d2 = write_checkpoints(root)
    return dict(p1=p1, d1=d1, d2=d2, root=root)


def _theirs(pipe):
    return pipe(PROMPTS, num_inference_steps=2, guidance_scale=7.0, generator=torch.Generator().manual_seed(0),
                output_type="pt", clean_caption=False).images.clamp(-1, 1)


def _ours(cascade):
    return cascade.generate(PROMPTS, steps=2, guidance=7.0, seed=0, stop_at=1, progress=False).images[0]


def test_our_if_adapter_loads_into_diffusers_load_lora_weights_and_gives_our_image(tiny, tmp_path):
    cascade = load_model(str(tiny["d1"]))
    stage = cascade.stages[0]
    lc = LoraConfig(rank=4, alpha=8.0)
    torch.manual_seed(0)
    paths = add_lora(stage.unet, "if", lc)
    with torch.no_grad():  # a trained adapter's B is not zero: give it weights that move the image
        for n, p in stage.unet.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.05)
    save_adapter(tmp_path / "ours", adapter_state(stage.unet), lc, paths, stage=0, stage_config=stage.config,
                 base_model=str(tiny["d1"]))
    ours = _ours(load_model(str(tiny["d1"]), lora=[str(tmp_path / "ours")]))

    pipe = stage_i_pipeline()
    pipe.set_progress_bar_config(disable=True)
    base = _theirs(pipe)
    pipe.load_lora_weights(str(tmp_path / "ours"), weight_name="adapter_model.safetensors")
    theirs = _theirs(pipe)
    moved, err = (theirs - base).abs().max().item(), (ours - theirs).abs().max().item()
    print(f"ours -> diffusers: the adapter moves the image by {moved:.3f}; ours vs diffusers {err:.2e}")
    assert moved > 0.05 and err < TOL


def test_a_lora_saved_by_diffusers_peft_integration_loads_into_ours_and_gives_its_image(tiny, tmp_path):
    from diffusers import IFPipeline
    from peft import LoraConfig as PeftLoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = stage_i_pipeline()
    pipe.set_progress_bar_config(disable=True)
    base = _theirs(pipe)
    torch.manual_seed(1)
    # init_lora_weights=False: B is random too (a trained adapter); alpha != rank checks the scale is read
    cfg = PeftLoraConfig(r=4, lora_alpha=2, target_modules=IF_TARGETS, init_lora_weights=False)
    pipe.unet.add_adapter(cfg)
    with torch.no_grad():
        for n, p in pipe.unet.named_parameters():
            if ".lora_B." in n:
                p.mul_(0.2)
    theirs = _theirs(pipe)
    IFPipeline.save_lora_weights(tmp_path / "theirs", unet_lora_layers=get_peft_model_state_dict(pipe.unet),
                                 unet_lora_adapter_metadata=cfg.to_dict())
    ours = _ours(load_model(str(tiny["d1"]), lora=[str(tmp_path / "theirs")]))
    moved, err = (theirs - base).abs().max().item(), (ours - theirs).abs().max().item()
    print(f"diffusers -> ours: the adapter moves the image by {moved:.3f}; ours vs diffusers {err:.2e}")
    assert moved > 0.05 and err < TOL


# ----------------------------------------------------------------------------------------------
# fine-tuning an IF stage II: training inputs are sampling inputs


class _Capture(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet, self.calls = unet, []

    def forward(self, x, time, text_embeds, text_mask, lowres=None, noise_level=None):
        self.calls.append(dict(x=x, time=time, text_embeds=text_embeds, lowres=lowres, noise_level=noise_level))
        return self.unet(x, time, text_embeds, text_mask, lowres=lowres, noise_level=noise_level)


def test_a_fine_tuned_if_stage_ii_trains_on_its_sampling_inputs(tiny, monkeypatch):
    import openimagen.stage as stage_module
    from openimagen.sampling import sample_stage
    from openimagen.train.config import InitConfig
    from openimagen.train.finetune import build_stages, finetune_config
    from openimagen.train.loop import stage_loss

    init = InitConfig(str(tiny["d1"]), sr=str(tiny["d2"]), train=(1,), lora=LoraConfig(rank=2))
    cfg = finetune_config(init, overrides=["caption_dropout=0.0", "stages.1.noise_level_max=250"])
    sc = cfg.stages[1].stage  # the model's own: eps + learned-range variance, IF's resize and noising schedule
    assert sc.parameterization.learned_variance and sc.schedule.kind == "ddpm_cosine" and sc.lowres_align_corners
    assert cfg.text_encoder.kind == "t5" and cfg.text_encoder.if_style
    stage = build_stages(cfg, "cpu")[1]
    g = torch.Generator().manual_seed(4)
    x0, low = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1, torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    text = {"text_embeds": torch.randn(1, 77, 32, generator=g), "text_mask": torch.ones(1, 77, dtype=torch.bool)}
    monkeypatch.setattr(stage, "unet", _Capture(stage.unet))
    with torch.no_grad():
        stage_loss(cfg, 1, stage.unet, stage, {32: x0, 16: low}, ["a caption"],
                   lambda caps: (text["text_embeds"], text["text_mask"]), torch.Generator().manual_seed(9))
    trained = stage.unet.calls[-1]
    g = torch.Generator().manual_seed(9)  # replay the step's draws: t, eps, caption dropout, level, noise
    t = stage.schedule.sample_t(1, generator=g)
    torch.randn(x0.shape, generator=g)
    torch.rand((1,), generator=g)
    level = stage.lowres_cond.training_levels(1, g, 250, "cpu")
    noise = torch.randn((1, 3, 32, 32), generator=g)
    monkeypatch.setattr(stage_module, "randn", lambda *a: noise)
    given = lambda shape, ts, stage, generator, device: (trained["x"].float(), t)
    n = len(stage.unet.calls)
    sample_stage(stage, text, text, (1, 3, 32, 32), t, generator=torch.Generator(), guidance=1.0, lowres=low,
                 noise_level=float(level), start=given, sampler="ddim")
    sampled = stage.unet.calls[n]
    assert trained["lowres"].shape == (1, 3, 32, 32)
    for k in trained:
        assert torch.equal(trained[k], sampled[k]), f"{k} differs between training and sampling"


def test_a_lora_fine_tune_of_tiny_if_trains_and_loads_back(tiny, tmp_path):
    from openimagen.train import train
    from openimagen.train.config import InitConfig
    from openimagen.train.finetune import finetune_config

    init = InitConfig(str(tiny["d1"]), train=(0,), lora=LoraConfig(rank=2))
    cfg = finetune_config(init, overrides=["data.size=8", "stages.0.steps=2", "stages.0.batch_size=2",
                                           'sample_prompts=["a red cube"]', "sample_steps=2"])
    out = train(cfg, tmp_path / "run", progress=False)
    assert (out / "stage_0" / "adapter_model.safetensors").is_file()
    tuned = load_model(str(tmp_path / "run"))  # the IF folder + the run's adapters
    assert any(".lora_A." in n for n, _ in tuned.stages[0].unet.named_parameters())
