"""The ``tiny`` model preset: random-weight models built in memory, offline, in seconds.

Built the way diffusers' fast pipeline tests build their dummy components: small
UNet, VAE and CLIP text encoder configs with ``torch.manual_seed(0)`` before each,
plus a byte-level CLIP tokenizer made here from a local vocabulary (no download).
The images are noise-like, but deterministic for a seed, so the whole pipeline
(prompts, batching, reranking, shards, loading) runs and can be tested on a CPU.
"""

from __future__ import annotations

from functools import lru_cache

import torch

TINY_SIZE = 64  # pixels; the tiny VAE downsamples by 2, the tiny UNet works on 32x32 latents
TINY_SETTINGS = {"width": TINY_SIZE, "height": TINY_SIZE, "steps": 4}
TEXT_DIM = 32


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable-unicode table (as in the OpenAI CLIP tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@lru_cache(maxsize=1)
def _vocab() -> dict[str, int]:
    chars = list(_bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    return {tok: i for i, tok in enumerate(tokens)}


def build_tokenizer():
    """A character-level CLIP tokenizer with a local vocabulary (514 tokens, no merges)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=dict(_vocab()), merges=[], model_max_length=77)


def _text_config(vocab_size: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=TEXT_DIM, intermediate_size=37,
        layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=vocab_size,
        projection_dim=TEXT_DIM, max_position_embeddings=77,
    )


def build_pipeline():
    """A random-weight StableDiffusionPipeline (UNet, VAE, CLIP text encoder, tokenizer, DDIM)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=TINY_SIZE // 2, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=TEXT_DIM, norm_num_groups=8,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1,
        set_alpha_to_one=False,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4, norm_num_groups=8,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_text_config(len(tokenizer)))
    return StableDiffusionPipeline(
        unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, image_encoder=None,
        requires_safety_checker=False,
    )


def build_clip():
    """A random-weight CLIPModel and its tokenizer, plus the image preprocessing it expects."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

    tokenizer = build_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=TEXT_DIM, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        image_size=32, patch_size=4, projection_dim=TEXT_DIM,
    )
    config = CLIPConfig(
        text_config=_text_config(len(tokenizer)).to_dict(), vision_config=vision.to_dict(), projection_dim=TEXT_DIM
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    preprocess = {"size": 32, "crop": 32, "mean": [0.48145466, 0.4578275, 0.40821073],
                  "std": [0.26862954, 0.26130258, 0.27577711]}
    return model, tokenizer, preprocess


def build_t5_tokenizer():
    """A character-level T5 tokenizer (a Unigram model built here with the ``tokenizers`` library, no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(chr(c), -3.0) for c in range(33, 127)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0,
                           model_max_length=512)


def _t5(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)).eval()


def _shifted_vae(latent_channels: int):
    """A VAE whose latents are scaled and shifted, as SD 3's and FLUX's are."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=latent_channels, norm_num_groups=8,
        shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False,
    ).eval()


def build_sd3_pipeline():
    """A random-weight StableDiffusion3Pipeline: an SD3 transformer, two CLIP text encoders with projections,
    a T5 encoder, their tokenizers, a flow-matching scheduler and a VAE with a latent shift (as SD 3.x has)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    clip_tokenizer, t5_tokenizer = build_tokenizer(), build_t5_tokenizer()
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=TINY_SIZE // 2, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=2 * TEXT_DIM,
        out_channels=4,
    )
    encoders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        encoders.append(CLIPTextModelWithProjection(_text_config(len(clip_tokenizer))).eval())
    t5, vae = _t5(len(t5_tokenizer)), _shifted_vae(4)
    return StableDiffusion3Pipeline(
        transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
        text_encoder=encoders[0], tokenizer=clip_tokenizer, text_encoder_2=encoders[1], tokenizer_2=clip_tokenizer,
        text_encoder_3=t5, tokenizer_3=t5_tokenizer,
    )


def build_flux_pipeline():
    """A random-weight FluxPipeline (as FLUX.1 [schnell]: no guidance embedding): a FLUX transformer over packed
    latent patches, a CLIP text encoder for the pooled embedding, a T5 encoder, a one-channel VAE with a shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    clip_tokenizer, t5_tokenizer = build_tokenizer(), build_t5_tokenizer()
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM, axes_dims_rope=[4, 4, 8], guidance_embeds=False,
    )
    torch.manual_seed(0)
    clip = CLIPTextModel(_text_config(len(clip_tokenizer)))
    t5, vae = _t5(len(t5_tokenizer)), _shifted_vae(1)
    return FluxPipeline(transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae.eval(),
                        text_encoder=clip.eval(), tokenizer=clip_tokenizer, text_encoder_2=t5.eval(),
                        tokenizer_2=t5_tokenizer)


# The tiny presets by --model name: the SD architecture, and SD 3 and FLUX (flow matching, T5) for their code.
TINY_MODELS = {"tiny": build_pipeline, "tiny-sd3": build_sd3_pipeline, "tiny-flux": build_flux_pipeline}
TINY_ARCHITECTURES = {"tiny": "sd", "tiny-sd3": "sd3", "tiny-flux": "flux"}  # known without building them


def is_tiny(model: str | None) -> bool:
    return model in TINY_MODELS
