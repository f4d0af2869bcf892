import pytest
import torch

from compel import Compel

from facesynth.generation.families import family_of
from facesynth.generation.prompts import a1111_to_compel


@pytest.mark.parametrize("a1111,compel", [
    ("(masked:1.2), antigas mask", "(masked)1.2, antigas mask"),
    ("a (happy) face", "a (happy)1.1 face"),
    ("a [blurry] face", "a (blurry)0.9091 face"),
    ("(deformed iris, anime:1.4), text", "(deformed iris, anime)1.4, text"),
    ("((nested):1.3)", "((nested)1.1)1.3"),
    ("plain, pissed-off face, 1 y.o.", "plain, pissed-off face, 1 y.o."),
    (r"a \(literal\) paren", r"a \(literal\) paren"),
    ("unbalanced (paren", r"unbalanced \(paren"),
])
def test_a1111_to_compel(a1111, compel):
    assert a1111_to_compel(a1111) == compel


def test_weights_change_the_embedding(tiny_pipe):
    enc = family_of(tiny_pipe).encoder(tiny_pipe)
    plain = enc.encode("a masked face", "")
    weighted = enc.encode("a (masked:1.5) face", "")
    assert plain.embeds.shape == weighted.embeds.shape
    assert not torch.allclose(plain.embeds, weighted.embeds)


def test_long_prompts_are_chunked_not_truncated(tiny_pipe):
    enc = family_of(tiny_pipe).encoder(tiny_pipe)
    long = ", ".join(["detailed skin"] * 20)  # ~280 tokens with the character-level tiny tokenizer
    cond = enc.encode(long, "blurry")
    assert cond.length > 77 and cond.length % 77 == 0
    assert cond.negative.shape == cond.embeds.shape  # the negative is padded to the same length
    shorter = enc.encode(", ".join(["detailed skin"] * 19), "blurry")
    assert not torch.allclose(cond.embeds[:, 154:], shorter.embeds[:, 154:])  # the tail is encoded


def test_fast_parse_gives_compels_exact_embeddings(tiny_pipe):
    from compel import CompelForSD

    from facesynth.generation.prompts import parse_prompt
    from facesynth.plan import Plan
    from facesynth.recipe import load_recipe

    plain = "photo of an Afro-Caribbean man, smiling, 50mm"
    assert str(parse_prompt(plain)) == str(Compel.parse_prompt_string(plain))  # one fragment at weight 1
    ours, theirs = family_of(tiny_pipe).encoder(tiny_pipe), CompelForSD(tiny_pipe)
    for s in Plan(load_recipe("emotions"), 6).samples:
        a = ours.encode(s.prompt, s.negative_prompt)
        b = theirs([a1111_to_compel(s.prompt)], negative_prompt=[a1111_to_compel(s.negative_prompt)])
        assert torch.equal(a.embeds, b.embeds) and torch.equal(a.negative, b.negative_embeds)
