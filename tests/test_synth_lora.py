"""Tiny base model, tokenizer, LoRA training (exact resume, weights verified), kohya export."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from celadon.checkpoint import load_checkpoint, save_checkpoint
from celadon.errors import CeladonError
from celadon.synth import tiny
from celadon.synth.base import colour_error
from celadon.synth.lora import LoraConfig, train_lora
from celadon.synth.pipeline import load_pipeline, resolve_profile


def test_trimmed_tokenizer_gives_clip_pieces_and_falls_back_to_characters(tmp_path):
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    corpus = ["Yuan dynasty, Jun kiln produced, Chinese porcelain, vase with moon white glaze"]
    tokenizer = CLIPTokenizer.from_pretrained(tiny.write_trimmed_tokenizer(corpus, tmp_path / "tok"))
    clip = SimpleTokenizer()
    text = corpus[0]
    ours = tokenizer.convert_ids_to_tokens(tokenizer(text).input_ids)[1:-1]
    assert ours == [clip.decoder[i] for i in clip.encode(text)]  # same pieces as CLIP's full vocabulary
    assert len(tokenizer) < 1000  # 512 byte-level symbols + the corpus' merges + 2 specials
    unseen = tokenizer("zebra").input_ids
    assert tokenizer.decode(unseen, skip_special_tokens=True).strip() == "zebra"
    assert len(unseen) == 2 + 5  # unknown word: one piece per character


def test_colour_error_measures_the_vessel_not_the_backdrop():
    image = -torch.ones(2, 3, 16, 16) * 0.8  # backdrop
    image[:, :, 4:12, 4:12] = 0.5  # vessel
    shifted = image.clone()
    shifted[:, 0, 4:12, 4:12] += 0.3  # red channel of the vessel, by 0.3 in -1..1 = 0.15 in 0..1
    assert colour_error(image, image) == 0
    assert colour_error(image, shifted) == pytest.approx(0.15 / 3, abs=1e-6)


def test_build_base_exports_a_loadable_pipeline(tiny_sd):
    assert resolve_profile(str(tiny_sd)).resolution == 64
    for name in ("vae_reconstructions.png", "samples.png", "run.yaml", "build.json"):
        assert (tiny_sd / "training" / name).exists()
    pipe = load_pipeline(str(tiny_sd))
    assert pipe.scheduler.config.use_karras_sigmas and pipe.scheduler.config.algorithm_type == "dpmsolver++"
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on its own latents
    image = pipe("a photo of a green ceramic vase", num_inference_steps=2, height=64, width=64).images[0]
    assert image.size == (64, 64)


def test_the_small_architecture_is_wider_than_tiny_and_fits_60_mb_in_fp16():
    def parameters(name: str) -> dict[str, int]:
        parts = tiny.new_components(1100, name=name)  # the trimmed tokenizer's size
        return {key: sum(p.numel() for p in parts[key].parameters()) for key in ("vae", "text_encoder", "unet")}

    small, shipped = parameters("small"), parameters("tiny")
    assert all(small[key] > 3 * shipped[key] for key in small)
    assert 2 * sum(small.values()) <= 60e6  # fp16 bytes
    with pytest.raises(CeladonError, match="unknown base architecture 'huge'; choose one of tiny, small"):
        tiny.new_components(1100, name="huge")


@pytest.mark.slow
def test_build_base_small_exports_a_small_pipeline_and_its_work_folder_resumes_only_as_small(tmp_path):
    from celadon.synth.base import BaseConfig, build_base

    toy = dict(work=str(tmp_path / "work"), images=96, vae_min_steps=1, vae_max_steps=1, decoder_steps=1,
               vae_batch=4, unet_steps=1, unet_batch=4, sample_every=1, threads=1)
    out = build_base(BaseConfig(out=str(tmp_path / "small"), architecture="small", **toy), progress=False)
    pipe = load_pipeline(str(out))
    assert tuple(pipe.unet.config.block_out_channels) == tiny.ARCHITECTURES["small"].unet
    assert pipe.text_encoder.config.hidden_size == 256
    assert json.loads((tmp_path / "work" / "architecture.json").read_text()) == {"architecture": "small"}
    image = pipe("a photo of a green ceramic vase", num_inference_steps=2, height=64, width=64).images[0]
    assert image.size == (64, 64)
    with pytest.raises(CeladonError, match="holds a 'small' build; resume it with --architecture small"):
        build_base(BaseConfig(out=str(tmp_path / "tiny"), architecture="tiny", **toy), progress=False)


def test_a_base_build_folder_resumes_only_the_architecture_it_holds(tmp_path):
    from celadon.synth.base import BaseConfig, build_base

    older = tmp_path / "older"  # a tiny build's folder from before the marker existed: checkpoints, no marker
    (older / "vae").mkdir(parents=True)
    with pytest.raises(CeladonError, match="older holds a 'tiny' build; resume it with --architecture tiny, or "
                                           "give another --work for a 'small' one"):
        build_base(BaseConfig(work=str(older), out=str(tmp_path / "out"), architecture="small", threads=1))
    assert json.loads((older / "architecture.json").read_text()) == {"architecture": "tiny"}
    with pytest.raises(CeladonError, match="unknown base architecture 'huge'"):
        build_base(BaseConfig(work=str(tmp_path / "new"), out=str(tmp_path / "out"), architecture="huge", threads=1))
    assert not (tmp_path / "new").exists()  # refused before any work
    with pytest.raises(CeladonError, match="device 'tpu': expected"):
        build_base(BaseConfig(work=str(tmp_path / "new"), out=str(tmp_path / "out"), device="tpu", threads=1))
    assert not (tmp_path / "new").exists()
    with pytest.raises(CeladonError, match="images: 64 is too few; the VAE's colour check holds out 64"):
        build_base(BaseConfig(work=str(tmp_path / "new"), out=str(tmp_path / "out"), images=64, threads=1))
    assert not (tmp_path / "new").exists()


def test_build_base_vae_from_reuses_a_models_vae_frozen_and_trains_only_the_rest(tiny_sd, tmp_path):
    from celadon.synth.base import BaseConfig, build_base

    toy = dict(work=str(tmp_path / "work"), images=96, unet_steps=2, unet_batch=4, sample_every=2, threads=1,
               vae_from=str(tiny_sd))
    out = build_base(BaseConfig(out=str(tmp_path / "model"), **toy), progress=False)
    source = load_file(tiny_sd / "vae" / "diffusion_pytorch_model.safetensors")
    built = load_file(out / "vae" / "diffusion_pytorch_model.safetensors")
    assert source.keys() == built.keys() and all(torch.equal(source[k], built[k]) for k in source)
    unet = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    shipped_unet = load_file(tiny_sd / "unet" / "diffusion_pytorch_model.safetensors")
    assert not all(torch.equal(unet[k], shipped_unet[k]) for k in unet)  # a UNet of its own, trained from scratch
    work = tmp_path / "work"
    assert not (work / "vae").exists() and not (work / "decoder").exists()  # no VAE step taken
    assert json.loads((work / "architecture.json").read_text()) == {"architecture": "tiny",
                                                                     "vae_from": str(tiny_sd.resolve())}
    assert json.loads((out / "training" / "build.json").read_text())["vae_from"] == str(tiny_sd)
    with pytest.raises(CeladonError, match="work holds a build with the VAE of .*; resume it with the same"):
        build_base(BaseConfig(out=str(tmp_path / "model"), **(toy | {"vae_from": ""})), progress=False)
    with pytest.raises(CeladonError, match="vae_from: .*nowhere has no vae/config.json; give 'tiny' or a diffusers"):
        build_base(BaseConfig(out=str(tmp_path / "x"), **(toy | {"vae_from": str(tmp_path / "nowhere")})))
    odd = tmp_path / "odd"
    (odd / "vae").mkdir(parents=True)
    (odd / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "latent_channels": 8,
                                                         "block_out_channels": [32, 64, 64, 64]}))
    with pytest.raises(CeladonError, match="odd's VAE has 8 latent channels and 8x downsampling; a base build "
                                           "needs 4 and 4x"):
        build_base(BaseConfig(out=str(tmp_path / "x"), **(toy | {"work": str(tmp_path / "w2"),
                                                                  "vae_from": str(odd)})))
    assert not (tmp_path / "w2").exists()  # refused before any work


def test_build_base_cli_refuses_to_write_a_small_model_over_the_shipped_one_or_a_missing_vae(capsys, tmp_path):
    from celadon.cli import main

    assert main(["synth", "build-base", "--architecture", "small", "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == ("error: give --out for a 'small' base model: the default is the "
                                                "shipped tiny model's folder, which it would replace")
    assert main(["synth", "build-base", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
                 "--vae-from", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: vae_from: {tmp_path / 'nowhere'} has no vae/config.json; "
                                                "give 'tiny' or a diffusers pipeline folder")
    assert not (tmp_path / "work").exists()


def test_decoder_refinement_keeps_the_latent_space(tiny_sd):
    # The decoder-only phase must leave the encoder as it was: cached latents and the UNet trained on them stay valid.
    work = tiny_sd.parent / "work"
    _, vae, _ = load_checkpoint(work / "vae")
    _, refined, _ = load_checkpoint(work / "decoder")
    encoder = [k for k in vae if k.startswith(("encoder.", "quant_conv."))]
    decoder = [k for k in vae if k.startswith(("decoder.", "post_quant_conv."))]
    assert encoder and decoder and len(encoder) + len(decoder) == len(vae)
    assert all(torch.equal(vae[k], refined[k]) for k in encoder)
    assert not all(torch.equal(vae[k], refined[k]) for k in decoder)
    assert json.loads((work / "decoder" / "done.json").read_text()) == {"step": 2}


def test_clip_skip_changes_the_text_features(tiny_sd):
    pipe = load_pipeline(str(tiny_sd))
    full, _ = pipe.encode_prompt("a photo of a green vase", "cpu", 1, False)
    skipped, _ = pipe.encode_prompt("a photo of a green vase", "cpu", 1, False, clip_skip=1)
    assert full.shape == skipped.shape and not torch.allclose(full, skipped)


def _config(tiny_sd, caption_folder, out, **overrides) -> LoraConfig:
    settings = dict(data=str(caption_folder), out=str(out), model=str(tiny_sd), steps=6, batch_size=2,
                    checkpoint_every=2, threads=1, rank=4, alpha=2.0, learning_rate=1e-3)
    return LoraConfig(**{**settings, **overrides})


@pytest.mark.slow
def test_lora_resume_continues_exactly_with_weights_intact(tiny_sd, caption_folder, tmp_path):
    reference = train_lora(_config(tiny_sd, caption_folder, tmp_path / "straight"), progress=False)
    interrupted = _config(tiny_sd, caption_folder, tmp_path / "killed")
    train_lora(interrupted, progress=False, stop_after=3)  # "killed" after step 3: last checkpoint is step 2
    step, weights, _ = load_checkpoint(tmp_path / "killed" / "ckpt")
    assert step == 2 and any("lora_A" in k for k in weights)
    assert not all(torch.all(v == 0) for k, v in weights.items() if "lora_B" in k)  # trained, not fresh
    resumed = train_lora(interrupted, progress=False)
    a = load_file(reference / "pytorch_lora_weights.safetensors")
    b = load_file(resumed / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(json.dumps(line)) for line in (tmp_path / "killed" / "train_log.csv").read_text().splitlines()]
    assert [row.split(",")[0] for row in log[1:]] == ["2", "4", "6"]  # step 2 logged once: nothing duplicated
    assert len(list((tmp_path / "killed" / "samples").glob("step_*.png"))) == 3


def test_resume_refuses_lora_weights_that_do_not_fit(tiny_sd, caption_folder, tmp_path):
    out = tmp_path / "run"
    train_lora(_config(tiny_sd, caption_folder, out, steps=2), progress=False, stop_after=2)
    step, weights, state = load_checkpoint(out / "ckpt")
    save_checkpoint(out / "ckpt", step, {k: v[:1] for k, v in weights.items()}, state, kind="step")  # wrong rank
    with pytest.raises(CeladonError, match="did not load"):
        train_lora(_config(tiny_sd, caption_folder, out, steps=4), progress=False)


def test_kohya_export_has_a1111_keys_and_the_trained_alpha(tiny_sd, caption_folder, tmp_path):
    folder = train_lora(_config(tiny_sd, caption_folder, tmp_path / "name", steps=2), progress=False)
    kohya = load_file(folder / "kohya" / "name.safetensors")
    downs = [k for k in kohya if k.endswith(".lora_down.weight")]
    assert downs and all(k.startswith("lora_unet_") and "." not in k.split(".")[0] for k in downs)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in kohya
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {2.0}
    assert len(downs) == len([k for k in kohya if k.endswith(".lora_up.weight")])

    # A1111-format weights load into diffusers and act exactly like the diffusers-format file.
    def image(lora_path: str) -> np.ndarray:
        pipe = load_pipeline(str(tiny_sd))
        pipe.load_lora_weights(lora_path)
        pipe.set_adapters([next(iter(pipe.get_active_adapters()))], [1.0])
        out = pipe("Song dynasty, vase", num_inference_steps=3, height=64, width=64, output_type="np",
                   generator=torch.Generator().manual_seed(0)).images
        return out[0]

    plain = load_pipeline(str(tiny_sd))("Song dynasty, vase", num_inference_steps=3, height=64, width=64,
                                        output_type="np", generator=torch.Generator().manual_seed(0)).images[0]
    diffusers_format = image(str(folder / "pytorch_lora_weights.safetensors"))
    kohya_format = image(str(folder / "kohya" / "name.safetensors"))
    assert np.abs(diffusers_format - kohya_format).max() < 1e-4
    assert np.abs(diffusers_format - plain).max() > 1e-3  # the LoRA does something


def test_missing_caption_folder_is_a_clear_error(tiny_sd, tmp_path):
    with pytest.raises(CeladonError, match="no metadata.jsonl"):
        train_lora(LoraConfig(data=str(tmp_path), out=str(tmp_path / "o"), model=str(tiny_sd)), progress=False)


def test_sd15_config_describes_stable_diffusion_15_offline(tmp_path):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from celadon.synth.sd15 import write_sd15_config

    folder = write_sd15_config(tmp_path / "sd15")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    millions = [round(sum(p.numel() for p in m.parameters()) / 1e6, 1) for m in (unet, vae, text)]
    assert millions == [859.5, 83.7, 123.1]  # SD 1.5's published parameter counts
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_ = "Yuan dynasty, Jun kiln produced, Chinese porcelain <lora:glazetype:0.4>"
    assert tokenizer(text_).input_ids == [49406, *SimpleTokenizer().encode(text_), 49407]
    assert len(tokenizer) == 49408


@pytest.mark.slow
def test_a_kill_between_checkpoint_log_and_samples_resumes_to_an_exact_log_and_every_grid(
        tiny_sd, caption_folder, tmp_path):
    config = _config(tiny_sd, caption_folder, tmp_path / "run")
    train_lora(config, progress=False, stop_after=2)  # checkpoint, log row and grid of step 2
    log = tmp_path / "run" / "train_log.csv"
    header, row = log.read_text().splitlines()
    # As a kill leaves them: the step-2 row missing (killed right after the checkpoint), a row of an
    # uncheckpointed step 3 from an older layout, and the step-2 sample grid never drawn.
    log.write_text(f"{header}\n{row.replace('2,', '3,', 1)}\n")
    (tmp_path / "run" / "samples" / "step_00002.png").unlink()
    train_lora(config, progress=False)
    steps = [line.split(",")[0] for line in log.read_text().splitlines()[1:]]
    assert steps == ["2", "4", "6"]
    assert sorted(p.name for p in (tmp_path / "run" / "samples").glob("step_*.png")) == [
        "step_00002.png", "step_00004.png", "step_00006.png"]
