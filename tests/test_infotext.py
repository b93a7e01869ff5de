"""A1111's infotext (the `parameters` PNG text): what we write parses back, quoting included."""
from openimagen import infotext


def test_infotext_round_trips_with_quoted_values():
    req = {"prompt": ["a red circle"], "negative_prompt": "blurry, dark", "seed": 7, "steps": [4, "smart27"],
           "sampler": ["ddim", "ddpm"], "guidance": [3.0, 1.5], "model": "C:/models, mine", "mode": None}
    text = infotext.infotext(req, "a red circle\nsecond line", 1, (64, 32), "0.1.0")
    assert text.splitlines()[:3] == ["a red circle", "second line", "Negative prompt: blurry, dark"]
    got = infotext.parse(text)
    assert got["prompt"] == "a red circle\nsecond line" and got["negative_prompt"] == "blurry, dark"
    assert (got["Steps"], got["Sampler"], got["CFG scale"], got["Seed"], got["Size"], got["Stage"]) == \
        ("smart27", "ddpm", "1.5", "7", "64x32", "1")
    assert got["Model"] == "C:/models, mine" and "Mode" not in got  # None is left out, "," and ":" quoted


def test_an_a1111_infotext_parses():
    got = infotext.parse("a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 512x512")
    assert got["prompt"] == "a cat" and got["negative_prompt"] is None and got["Sampler"] == "Euler a"
