import torch

from facesynth import tiny


def test_tokenizer_is_local_and_round_trips():
    tok = tiny.build_tokenizer()
    ids = tok("a smiling face, 8k").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == "asmilingface,8k"


def test_tiny_pipeline_generates_an_image_offline_and_deterministically(tiny_pipe):
    def run(seed):
        g = torch.Generator("cpu").manual_seed(seed)
        return tiny_pipe("a photo of a smiling face", num_inference_steps=2, width=64, height=64,
                         generator=g, output_type="np").images
    a, b, c = run(0), run(0), run(1)
    assert a.shape == (1, 64, 64, 3)
    assert (a == b).all()
    assert not (a == c).all()


def test_tiny_models_are_identical_across_builds():
    p1, p2 = tiny.build_pipeline(), tiny.build_pipeline()
    for (n1, t1), (n2, t2) in zip(p1.unet.state_dict().items(), p2.unet.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2)
