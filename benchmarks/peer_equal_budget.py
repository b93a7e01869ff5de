"""The imagen-pytorch side of `bench_equal_budget.py`; runs in the peer's own venv (torch 2.14).

    .peers/imagen-pytorch/bin/python-offline benchmarks/peer_equal_budget.py SETUP.json

SETUP.json: {"data": tensors file, "out": tensors file to write, "result": JSON file to write, "budget_cpu_s", "threads", "batch",
"seed", "target_params", "attn_levels", "sample_timesteps" (null = imagen-pytorch's 1000), "cond_scale",
"state" (optional: a file the run saves itself to every 10 CPU-minutes and after each sampled batch, and
resumes from when started again; the budget is re-read from SETUP.json every 20 steps, so a driver can
change it while this trains), "sample_threads" (optional, default "threads": sampling is outside the budget)}.
The tensors file (torch.save of plain tensors, read with weights_only=True) holds the training set --
images uint8 (N, 3, R, R), embeds (N, L, D), mask (N, L) -- and the prompts to sample, eval_embeds and
eval_mask: exactly the embeddings our base trains on. Trains imagen-pytorch with its own defaults (the
Imagen and Adam settings of peer_imagen_pytorch.Peer, no EMA on either side) on random batches until
this process has used budget_cpu_s of CPU time, then samples one image per eval prompt and writes
{"images": uint8 (M, 3, R, R)} to "out" and what it did to "result" (a JSON file: importing
peer_imagen_pytorch points this process's stdout at stderr).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_imagen_pytorch import search  # noqa: E402


def main() -> None:
    from imagen_pytorch import Imagen, Unet

    setup = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(setup["threads"])
    data = torch.load(setup["data"], weights_only=True)
    images, embeds, mask = data["images"], data["embeds"].float(), data["mask"].bool()
    N, _, R, _ = images.shape
    shape = {"resolution": R, "text_dim": embeds.shape[-1], "text_len": embeds.shape[1],
             "target_params": setup["target_params"], "attn_levels": setup["attn_levels"]}
    torch.manual_seed(setup["seed"])
    kwargs, _ = search(shape)
    # Imagen's defaults (continuous cosine schedule, eps objective, min-SNR weighting, dynamic thresholding,
    # 1000 sampling steps), cond_drop_prob 0.1 as ImagenTrainer's README uses; only the size is ours.
    imagen = Imagen(unets=(Unet(**kwargs),), image_sizes=(R,), cond_drop_prob=0.1, text_embed_dim=shape["text_dim"])
    unet = imagen.unets[0]
    opt = torch.optim.Adam(unet.parameters(), lr=1e-4, eps=1e-8, betas=(0.9, 0.99))  # ImagenTrainer's defaults
    g = torch.Generator().manual_seed(setup["seed"])
    # Resumable: a killed run continues from its last save with the CPU time it had already used (the
    # budget counts the CPU time of training steps only, summed over the processes that ran them).
    state_path = Path(setup["state"]) if setup.get("state") else None
    used, steps, done_images = 0.0, 0, []
    if state_path is not None and state_path.is_file():
        saved = torch.load(state_path, weights_only=True)
        unet.load_state_dict(saved["unet"])
        opt.load_state_dict(saved["opt"])
        g.set_state(saved["generator"])
        used, steps, done_images = float(saved["used_cpu_s"]), int(saved["steps"]), list(saved["images"])
        print(f"resumed: {steps} steps, {used:.0f} of {setup['budget_cpu_s']:.0f} CPU-s used, "
              f"{sum(len(x) for x in done_images)} images sampled", file=sys.stderr)

    def save() -> None:
        if state_path is None:
            return
        tmp = state_path.with_name(state_path.name + ".tmp")
        torch.save({"unet": unet.state_dict(), "opt": opt.state_dict(), "generator": g.get_state(),
                    "used_cpu_s": used, "steps": steps, "images": done_images}, tmp)
        tmp.replace(state_path)

    imagen.train()
    last_save, budget = used, setup["budget_cpu_s"]
    while used < budget:
        t = time.process_time()
        idx = torch.randint(0, N, (setup["batch"],), generator=g)
        m = mask[idx]
        loss = imagen(images[idx].float() / 255, text_embeds=embeds[idx] * m[:, :, None], text_masks=m, unet_number=1)
        loss.backward()
        opt.step()
        opt.zero_grad()
        steps += 1
        used += time.process_time() - t
        if used - last_save > 600:
            save()
            last_save = used
        if steps % 20 == 0:  # the driver may set the budget to our side's measured CPU time while this runs
            now = json.loads(Path(sys.argv[1]).read_text())["budget_cpu_s"]
            if now != budget:
                print(f"budget {budget:.0f} -> {now:.0f} CPU-s at {used:.0f} used, step {steps}", file=sys.stderr)
                budget = now
    save()
    train_cpu_s = used

    timesteps = setup.get("sample_timesteps")
    if timesteps:  # the same weights in a shorter sampling loop (smoke runs only)
        short = Imagen(unets=(Unet(**kwargs),), image_sizes=(R,), cond_drop_prob=0.1,
                       text_embed_dim=shape["text_dim"], timesteps=timesteps)
        short.unets[0].load_state_dict(unet.state_dict())
        imagen = short
    imagen.eval()
    torch.set_num_threads(setup.get("sample_threads") or setup["threads"])
    out, t0 = done_images, time.process_time()
    ee, em = data["eval_embeds"].float(), data["eval_mask"].bool()
    with torch.no_grad():
        for k in range(10 * len(out), len(ee), 10):
            torch.manual_seed(setup["seed"] + k)  # each batch its own seed: a resumed run draws the same images
            m = em[k:k + 10]
            x = imagen.sample(text_embeds=ee[k:k + 10] * m[:, :, None], text_masks=m,
                              cond_scale=setup["cond_scale"], use_tqdm=False)   # (b, 3, R, R) in [0, 1]
            out.append((x.clamp(0, 1) * 255).round().to(torch.uint8))
            save()
    torch.save({"images": torch.cat(out)}, setup["out"])
    Path(setup["result"]).write_text(json.dumps({"steps": steps, "train_cpu_s": round(train_cpu_s, 1),
                      "sample_cpu_s": round(time.process_time() - t0, 1), "timesteps": timesteps or 1000,
                      "params": sum(p.numel() for p in unet.parameters()),
                      "unet_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}}) + "\n")


if __name__ == "__main__":
    main()
