"""The editing benchmark's success criteria (benchmarks/editing_cases.py) on edits whose answer is known:
a perfect edit passes, no edit or a touched kept pixel fails, and the image metrics match closed forms."""
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import editing_cases as ec  # noqa: E402

STEP = 1 / 127.5  # one 8-bit step in [-1, 1]


def _nudge(x, keep, steps):
    """x with one kept (background) pixel darkened by `steps` 8-bit steps."""
    y, x_ = keep.nonzero()[0].tolist()
    out = x.clone()
    out[:, y, x_] -= steps * STEP
    return out


def test_inpaint_criteria_pass_the_ideal_edit_only():
    cases = ec.inpaint_cases(4)
    assert [c["change"] for c in cases] == ["color", "shape", "color", "shape"]
    for case in cases:
        image, ideal = ec.as_tensor(case["scene"]), ec.inpaint_ideal(case)
        mask = ec.box_mask(case["box"], ec.RES, ec.RES)
        keep = mask[0, 0] < 0.5
        assert ec.kept_error(ideal, image, keep) == 0   # the renderer changes nothing outside the box
        assert ec.inpaint_verdict(ideal, image, mask, case)["success"], case["caption"]
        none = ec.inpaint_verdict(image, image, mask, case)  # nothing repainted: old there, new absent
        assert not none["new_ok"] and not none["old_gone"] and not none["success"]
        assert ec.inpaint_verdict(_nudge(ideal, keep, ec.UNCHANGED_TOL), image, mask, case)["success"]
        touched = ec.inpaint_verdict(_nudge(ideal, keep, ec.UNCHANGED_TOL + 1), image, mask, case)
        assert not touched["unchanged"] and not touched["success"]


def test_outpaint_criteria_pass_the_ideal_canvas_only():
    cases = ec.outpaint_cases(4)
    assert [c["side"] for c in cases] == ["right", "left", "bottom", "top"]
    for case in cases:
        image = ec.as_tensor(case["scene"])
        ideal = ec.outpaint_ideal(case, image)
        v = ec.outpaint_verdict(ideal, image, case)
        assert v["success"] and v["whole"], case["caption"]
        p = case["pads"]
        plain = torch.nn.functional.pad(image[None], (p["left"], p["right"], p["top"], p["bottom"]), mode="replicate")[0]
        assert not ec.outpaint_verdict(plain, image, case)["new_found"]  # the new area left empty
        shifted = ideal.clone()
        y, x = p["top"], p["left"]
        shifted[:, y:y + ec.RES, x:x + ec.RES] = _nudge(image, torch.ones(ec.RES, ec.RES, dtype=torch.bool), 3)
        assert not ec.outpaint_verdict(shifted, image, case)["unchanged"]


def test_image_metrics_closed_forms():
    a = ec.as_tensor(ec.upscale_cases(1)[0]["scene"])
    assert ec.ssim(a, a) == 1.0 and ec.psnr(a, a) == float("inf")
    assert math.isclose(ec.psnr(a * 0.5, a * 0.5 + 0.02), 40.0, abs_tol=1e-3)   # 0.01 on [0, 1] -> 40 dB
    p, q = 0.3, 0.7   # flat images: only SSIM's luminance term is left
    flat = lambda v: torch.full((3, 16, 16), 2 * v - 1)  # noqa: E731
    c1 = 0.01 ** 2
    assert math.isclose(ec.ssim(flat(p), flat(q)), (2 * p * q + c1) / (p * p + q * q + c1), rel_tol=1e-5)


def test_a_caption_scores_only_when_every_checked_attribute_is_right():
    assert ec.all_right({"color": True, "shape": True, "word": None})
    assert not ec.all_right({"color": True, "shape": False})
    assert not ec.all_right({"word": None})  # nothing was checked
