"""Prompt expansion: terse prompts rewritten as complete template captions, keeping what they say."""
import json
import random

import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from openimagen import api
from openimagen.cascade import Cascade, ModelFolderError
from openimagen.cli import main
from openimagen.data import shapes_captions as sc
from openimagen.data.shapes import sample_scene
from openimagen.data.shapes_phrasings import FAMILIES, NUMERAL_FORMS, leave_out, natural_caption
from openimagen.evaluate.run import read_prompts
from openimagen.prompt_expansion import expand, template_renderings


def _natural_prompts(n=600):
    """Captions of every kind, family and numeral form, attributes left out, as the training data draws them."""
    rng, out = random.Random(5), []
    for i in range(n):
        spec = sample_scene(rng, sc.KINDS[i % len(sc.KINDS)], random_words=0.5).spec()
        family = FAMILIES[(i // len(sc.KINDS)) % len(FAMILIES)]
        if family not in ("template", "background first"):
            spec = leave_out(spec, rng)
        out.append((spec, natural_caption(spec, rng, family, numeral=rng.choice(NUMERAL_FORMS))))
    return out + [(sc.parse_caption(p), p) for p in read_prompts("natural")]


def _agrees(said: sc.Spec, full: sc.Spec) -> bool:
    """`full` says everything `said` says (an "and" scene may become any relation)."""
    if said.kind == "and":
        return full.kind == "relation" and [(o.color, o.shape) for o in full.objects] == \
            [(o.color, o.shape) for o in said.objects]
    if full.kind != said.kind or full.count != said.count or full.word != said.word or full.relation != said.relation:
        return False
    if said.background is not None and full.background != said.background:
        return False
    for a, b in zip(said.objects, full.objects, strict=True):
        if (a.color, a.shape) != (b.color, b.shape):
            return False
        if (a.size is not None and a.size != b.size) or (a.position is not None and a.position != b.position):
            return False
    return True


def test_every_phrasing_expands_to_a_complete_template_caption_that_keeps_what_it_said():
    for seed, (spec, prompt) in enumerate(_natural_prompts()):
        out = expand("shapes", prompt, seed)
        full = sc.parse_caption(out)
        assert full.kind != "and" and full.background is not None, (prompt, out)
        if full.kind == "single":
            assert full.objects[0].size is not None and full.objects[0].position is not None, (prompt, out)
        assert _agrees(spec, full), (prompt, out)
        assert out in template_renderings(full), out  # written by the templates, as the model was trained


def test_template_captions_and_foreign_prompts_are_left_as_typed():
    rng = random.Random(0)
    for _ in range(200):
        cap = sc.caption(sample_scene(rng), rng)
        assert expand("shapes", cap, 0) == cap
    for prompt in ("a photo of a dog on a sofa", "a teal circle", "a sign", "purple"):
        assert expand("shapes", prompt, 3) == prompt


def test_expansion_is_seeded_and_draws_what_is_left_out_from_every_choice():
    outs = [expand("shapes", "a blue triangle", s) for s in range(300)]
    assert outs == [expand("shapes", "a blue triangle", s) for s in range(300)]
    specs = [sc.parse_caption(o).objects[0] for o in outs]
    assert {o.size for o in specs} == set(sc.SIZE_NAMES)
    assert {o.position for o in specs} == set(sc.POSITION_NAMES)
    assert {sc.parse_caption(o).background for o in outs} == set(sc.BACKGROUND_NAMES)
    rels = {sc.parse_caption(expand("shapes", "a red star and a green cross", s)).relation for s in range(100)}
    assert rels == set(sc.RELATION_NAMES)


def test_unknown_expansion_is_refused():
    with pytest.raises(ValueError, match="unknown prompt expansion 'fancy'.*shapes"):
        expand("fancy", "a red circle", 0)


@pytest.fixture(scope="module")
def cascade(minilm):
    c = Cascade.build(minilm, [("tiny", 8), ("tiny", 16)], steps=2, sampler="ddim")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero-initialised outputs would make every prompt draw the same image
        for p in c.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    c.prompt_expansion = "shapes"
    return c


def test_generate_reads_the_expanded_prompt_of_each_image(cascade):
    prompts = ["a blue triangle", "three green squares"]
    out = cascade.generate(prompts, num_images=2, seed=4, guidance=2.0, progress=False)
    assert out.prompts == [prompts[0]] * 2 + [prompts[1]] * 2
    assert out.expanded == [expand("shapes", p, 4 + j) for p in prompts for j in range(2)]
    assert len(set(out.expanded)) == 4  # each image its own draw of what the prompt leaves out
    plain = cascade.generate(prompts, num_images=2, seed=4, guidance=2.0, progress=False, expand=False)
    assert plain.expanded is None and not torch.equal(plain.images[-1], out.images[-1])
    # image j of one prompt is the expanded text j drawn alone with seed + j
    one = cascade.generate(prompts[:1], num_images=2, seed=4, guidance=2.0, progress=False)
    for j, text in enumerate(one.expanded):
        alone = cascade.generate([text], seed=4 + j, guidance=2.0, progress=False, expand=False)
        torch.testing.assert_close(one.images[-1][j], alone.images[-1][0], atol=1e-5, rtol=0)


def test_edits_and_given_embeddings_are_not_expanded_and_a_model_without_expansion_refuses(cascade, minilm):
    image = torch.zeros(1, 3, 8, 8)
    assert cascade.generate(["a blue triangle"], image=image, seed=0, progress=False).expanded is None
    emb = minilm.encode(["a blue triangle"])
    assert cascade.generate(["a blue triangle"], text_embeds=emb, seed=0, progress=False).expanded is None
    with pytest.raises(ValueError, match="cannot use given text_embeds"):
        cascade.generate(["a blue triangle"], text_embeds=emb, expand=True, progress=False)
    plain = Cascade(cascade.text_encoder, list(cascade.stages))
    assert plain.generate(["a blue triangle"], seed=0, progress=False).expanded is None
    with pytest.raises(ValueError, match="declares no prompt expansion"):
        plain.generate(["a blue triangle"], expand=True, progress=False)


def test_model_folder_keeps_the_expansion_and_refuses_an_unknown_one(cascade, minilm, tmp_path):
    cascade.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "cascade.json").read_text())["prompt_expansion"] == "shapes"
    assert Cascade.from_pretrained(tmp_path / "m", text_encoder=minilm).prompt_expansion == "shapes"
    Cascade(minilm, list(cascade.stages)).save_pretrained(tmp_path / "plain")
    assert "prompt_expansion" not in json.loads((tmp_path / "plain" / "cascade.json").read_text())
    index = json.loads((tmp_path / "m" / "cascade.json").read_text())
    (tmp_path / "m" / "cascade.json").write_text(json.dumps({**index, "prompt_expansion": "llm"}))
    with pytest.raises(ModelFolderError, match="unknown prompt expansion 'llm'"):
        Cascade.from_pretrained(tmp_path / "m", text_encoder=minilm)


def test_pngs_record_the_expansion_and_reproduce_it(tmp_path):
    req = api.GenerateRequest(prompt=["a blue triangle"], steps=2, seed=3, precision="fp32")
    result = api.run(req, progress=False)
    assert result.request.expand is True and result.expanded == [expand("shapes", "a blue triangle", 3)]
    paths = api.write_pngs(result, tmp_path / "out")
    with Image.open(paths[-1]) as im:
        stored = json.loads(im.text[api.PNG_KEY])
        assert stored["expanded_prompt"] == result.expanded[0]
        assert f"Expanded prompt: {result.expanded[0]}" in im.text["parameters"].replace('"', "")
    again = api.run(api.request_from_png(paths[-1]), progress=False)
    assert torch.equal(again.images[-1], result.images[-1])
    # a PNG written before expansion existed has no "expand": it was made from the prompt as typed
    old = json.loads(result.request.to_json())
    del old["expand"]
    info = PngInfo()
    info.add_text(api.PNG_KEY, json.dumps({"request": old, "stage": 1, "index": 0}))
    Image.new("RGB", (8, 8)).save(tmp_path / "old.png", pnginfo=info)
    assert api.request_from_png(tmp_path / "old.png").expand is False


def test_request_expand_must_be_a_bool_or_null():
    with pytest.raises(ValueError, match="expand='yes' must be true, false or null"):
        api.GenerateRequest(prompt=["a red circle"], expand="yes")


def test_cli_no_expand_reads_the_prompt_as_typed_and_refuses_it_with_from_png(tmp_path, capsys):
    assert main(["-q", "generate", "a blue triangle", "--steps", "2", "--precision", "fp32", "--no-expand",
                 "--out", str(tmp_path / "a")]) == 0
    png = sorted((tmp_path / "a").glob("*stage1*.png"))[0]
    with Image.open(png) as im:
        assert json.loads(im.text[api.PNG_KEY])["request"]["expand"] is False
        assert "expanded_prompt" not in json.loads(im.text[api.PNG_KEY])
    capsys.readouterr()
    assert main(["generate", "--from-png", str(png), "--no-expand", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--no-expand" in err and len(err.splitlines()) == 1 and not (tmp_path / "b").exists()
