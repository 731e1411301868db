"""`celadon synth train-lora`: LoRA fine-tuning of a Stable Diffusion pipeline on a captioned folder.

diffusers + peft + accelerate, like diffusers' `train_text_to_image_lora.py`, with three differences that
matter in practice: VAE latents (posterior mean, plus the mirrored image) and text embeddings are computed
once and cached; checkpoints are pickle-free and hold the LoRA weights themselves, and resuming verifies
they were loaded (the diffusers example can silently resume without them); the result is written both in
diffusers format (with rank/alpha metadata) and in kohya/A1111 key format, so `<lora:name:0.4>` works.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from celadon.checkpoint import load_checkpoint, save_checkpoint, save_tensors
from celadon.cpu import set_threads
from celadon.data.images import load_image
from celadon.device import resolve_device
from celadon.errors import CeladonError
from celadon.runinfo import append_csv_row, atomic_write_text, write_json, write_run_info
from celadon.synth.pipeline import (
    default_clip_skip,
    load_pipeline,
    min_snr_weight,
    resolve_profile,
    save_grid,
)

UNET_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass
class LoraConfig:
    data: str = ""  # a folder written by `celadon synth caption` (metadata.jsonl + images)
    out: str = ""  # where the LoRA, its checkpoints and sample grids go
    model: str = "tiny"  # tiny (shipped), or a local SD 1.5 folder / .safetensors file
    rank: int = 8  # LoRA rank of each adapted projection
    alpha: float = 8.0  # LoRA alpha; the LoRA's scale is alpha / rank
    learning_rate: float = 1e-4  # AdamW learning rate of the UNet's adapters
    steps: int = 500  # optimizer steps
    batch_size: int = 8  # images per step (per process under accelerate launch)
    resolution: int = 0  # 0: the profile's native resolution
    train_text_encoder: bool = False  # LoRA on the text encoder too
    text_encoder_lr: float = 5e-5  # with train_text_encoder
    lr_scheduler: str = "constant"  # any diffusers.optimization scheduler name
    warmup_steps: int = 0  # of the learning-rate schedule
    snr_gamma: float | None = 5.0  # min-SNR loss weighting; None: plain MSE as in the recipe
    clip_skip: int | None = None  # as at generation; None: the model's default (pipeline.default_clip_skip)
    checkpoint_every: int = 100  # steps between resumable checkpoints, each with a sample grid
    validation_prompts: tuple[str, ...] = ()  # default: four distinct captions of the data
    cache: bool = True  # False reproduces the recipe's per-step VAE + text encoder (for `bench lora`)
    mixed_precision: str = "no"  # no, fp16 or bf16 (on a GPU)
    gradient_checkpointing: bool = False  # less GPU memory, slower steps
    device: str = "auto"  # auto (the GPU when there is one), cpu, cuda, cuda:N
    seed: int = 0  # adapters' initialisation, batches, noise and timesteps
    threads: int = 0  # torch threads (0: every usable core, a count fixed by the machine; celadon.cpu)


def read_caption_folder(folder: str | Path) -> list[dict]:
    folder = Path(folder)
    metadata = folder / "metadata.jsonl"
    if not metadata.exists():
        raise CeladonError(f"{folder}: no metadata.jsonl; write the folder with `celadon synth caption`")
    records = []
    for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            path, text = folder / record["file_name"], str(record["text"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CeladonError(f"{metadata}, line {number}: not a {{file_name, text}} record ({exc})") from None
        if not path.exists():
            raise CeladonError(f"{metadata}, line {number}: image {path} is missing")
        records.append({**record, "path": path, "text": text})
    if not records:
        raise CeladonError(f"{metadata}: no images")
    return records


def _pixels(path: Path, resolution: int) -> torch.Tensor:
    """The recipe's transform: shorter side to `resolution`, centre crop, to -1..1."""
    img = load_image(path)
    scale = resolution / min(img.size)
    img = img.resize((max(resolution, round(img.width * scale)), max(resolution, round(img.height * scale))),
                     Image.BILINEAR)
    left, top = (img.width - resolution) // 2, (img.height - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    return torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1


def _encode_prompts(pipe, texts: list[str], clip_skip: int | None) -> torch.Tensor:
    embeds, _ = pipe.encode_prompt(texts, pipe.device, 1, False, clip_skip=clip_skip)
    return embeds


def encode_for_training(pipe, text_encoder, texts: list[str], clip_skip: int | None) -> torch.Tensor:
    """`pipe.encode_prompt`'s embeddings, computed through `text_encoder`: when it is trained on several
    processes that is accelerate's DistributedDataParallel wrapper, whose forward synchronises its gradients
    (calling the pipeline's own module would leave each process with its own text-encoder LoRA)."""
    ids = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(pipe.device)
    if not clip_skip:
        return text_encoder(ids)[0]
    hidden = text_encoder(ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)]
    return pipe.text_encoder.text_model.final_layer_norm(hidden)


class _Batches:
    """Training inputs: cached latents/embeddings, or the recipe's per-step decode + VAE + text encoder."""

    def __init__(self, pipe, records: list[dict], config: LoraConfig, resolution: int, progress: bool = True):
        self.pipe, self.records, self.config, self.resolution = pipe, records, config, resolution
        self.texts = [r["text"] for r in records]
        if config.cache:
            latents = []
            with torch.no_grad():
                for start in tqdm(range(0, len(records), 32), desc="caching latents", disable=not progress):
                    x = torch.stack([_pixels(r["path"], resolution) for r in records[start:start + 32]])
                    x = x.to(pipe.device, pipe.vae.dtype)
                    latents.append(torch.stack([pipe.vae.encode(x).latent_dist.mode(),
                                                pipe.vae.encode(x.flip(3)).latent_dist.mode()], 1))
                self.latents = torch.cat(latents) * pipe.vae.config.scaling_factor  # (N, 2 mirror, C, h, w)
                if not config.train_text_encoder:
                    self.embeds = torch.cat([_encode_prompts(pipe, self.texts[i:i + 64], config.clip_skip)
                                             for i in range(0, len(self.texts), 64)])

    def get(self, index: torch.Tensor, flip: torch.Tensor, generator: torch.Generator, text_encoder=None):
        pipe = self.pipe
        if self.config.cache:
            latents = self.latents[index, flip.long()]
        else:
            x = torch.stack([_pixels(self.records[i]["path"], self.resolution) for i in index.tolist()])
            x = torch.where(flip[:, None, None, None], x.flip(3), x).to(pipe.device, pipe.vae.dtype)
            with torch.no_grad():
                latents = pipe.vae.encode(x).latent_dist.sample(generator) * pipe.vae.config.scaling_factor
        texts = [self.texts[i] for i in index.tolist()]
        if self.config.train_text_encoder:
            encoder = pipe.text_encoder if text_encoder is None else text_encoder
            embeds = encode_for_training(pipe, encoder, texts, self.config.clip_skip)
        elif self.config.cache:
            embeds = self.embeds[index]
        else:
            with torch.no_grad():
                embeds = _encode_prompts(pipe, texts, self.config.clip_skip)
        return latents, embeds


def _lora_state(pipe, config: LoraConfig) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    state = {f"unet.{k}": v for k, v in get_peft_model_state_dict(pipe.unet).items()}
    if config.train_text_encoder:
        state.update({f"text_encoder.{k}": v for k, v in get_peft_model_state_dict(pipe.text_encoder).items()})
    return state


def _restore_lora(pipe, weights: dict[str, torch.Tensor], config: LoraConfig) -> None:
    """Load checkpointed LoRA weights and check that every one arrived (no silent fresh adapter)."""
    from peft.utils import set_peft_model_state_dict

    refusal = CeladonError("resuming LoRA training: the checkpoint's LoRA weights did not load into the model "
                           "(rank or targets changed?); use the same settings or a new --out")
    for name, module in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
        part = {k[len(name) + 1:]: v for k, v in weights.items() if k.startswith(name + ".")}
        if part:
            try:
                set_peft_model_state_dict(module, part)
            except RuntimeError:  # shape mismatch
                raise refusal from None
    loaded = _lora_state(pipe, config)
    if loaded.keys() != weights.keys() or any(not torch.equal(loaded[k].cpu(), weights[k]) for k in weights):
        raise refusal


def prepare_pipeline(config: LoraConfig, device: str | None = None):
    """The pipeline with fresh LoRA adapters on the UNet (and text encoder), everything else frozen."""
    from peft import LoraConfig as PeftLora

    pipe = load_pipeline(config.model, device or resolve_device(config.device))
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False)
    torch.manual_seed(config.seed)
    pipe.unet.add_adapter(PeftLora(r=config.rank, lora_alpha=config.alpha, init_lora_weights="gaussian",
                                   target_modules=list(UNET_TARGETS)))
    if config.train_text_encoder:
        pipe.text_encoder.add_adapter(PeftLora(r=config.rank, lora_alpha=config.alpha, init_lora_weights="gaussian",
                                               target_modules=list(TEXT_TARGETS)))
    if config.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    return pipe


def _cast_trainable_to_fp32(*modules) -> list[torch.nn.Parameter]:
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


GRID_PROMPTS, GRID_STEPS = 4, 20  # each checkpoint's sample grid: four prompts twice, 20 denoising steps


def _validation_prompts(records: list[dict], config: LoraConfig) -> list[str]:
    if config.validation_prompts:
        return list(config.validation_prompts)
    seen: list[str] = []
    for record in sorted(records, key=lambda r: (r.get("tier") is None, r.get("tier"), r["text"])):
        if record["text"] not in seen:
            seen.append(record["text"])
    step = max(1, len(seen) // GRID_PROMPTS)
    return seen[::step][:GRID_PROMPTS]


def _sample_grid(pipe, prompts: list[str], resolution: int, config: LoraConfig, path: Path) -> None:
    pipe.unet.eval()
    with torch.no_grad():
        images = pipe(prompts * 2, num_inference_steps=GRID_STEPS, guidance_scale=7.0, height=resolution,
                      width=resolution, clip_skip=config.clip_skip,
                      generator=torch.Generator().manual_seed(config.seed)).images
    pipe.unet.train()
    save_grid(images, path, columns=len(prompts))


def _repair_log(path: Path, step: int, row: dict | None) -> None:
    """Make the training log end exactly at the checkpoint being resumed: rows of later steps (written by a run
    killed before its next checkpoint) go, and the checkpoint's own row is there once."""
    import pandas as pd

    log = pd.read_csv(path) if path.exists() and path.stat().st_size else pd.DataFrame(columns=["step"])
    log = log[log["step"] < step].drop_duplicates("step", keep="last")
    if row is not None:
        log = pd.concat([log, pd.DataFrame([row])], ignore_index=True)
    atomic_write_text(path, log.to_csv(index=False))


def train_lora(config: LoraConfig, progress: bool = True, stop_after: int | None = None,
               step_times: list[float] | None = None) -> Path:
    """Train (or resume) to `config.steps`; returns the exported LoRA folder. `stop_after` ends the run early
    after that many steps of this invocation (as a kill would); `step_times` collects seconds per step.

    Under `accelerate launch` with N processes it trains data-parallel: `batch_size` is per process, every
    trained module (UNet, text encoder) is prepared by accelerate, and all processes draw the same global
    batch (images, flips, noise, timesteps from one seeded generator) and each takes its slice, so N
    processes train what one process would with N x batch_size."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    set_threads(config.threads)
    device = resolve_device(config.device)
    if config.clip_skip is None:
        config = replace(config, clip_skip=default_clip_skip(config.model) or None)
    # A clip skip leaves the text encoder's last layers out of the forward: DDP must not wait for their grads.
    unused = DistributedDataParallelKwargs(find_unused_parameters=bool(config.train_text_encoder and config.clip_skip))
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=device == "cpu", kwargs_handlers=[unused])
    if accelerator.num_processes > 1:
        device = str(accelerator.device)  # one GPU per process, as the launcher assigned them
    records = read_caption_folder(config.data)
    out = Path(config.out)
    if accelerator.is_main_process:
        write_run_info(out, "synth train-lora", asdict(config), config.seed, device)
    pipe = prepare_pipeline(config, device)
    resolution = config.resolution or resolve_profile(config.model).resolution
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    groups = [{"params": _cast_trainable_to_fp32(pipe.unet), "lr": config.learning_rate}]
    if config.train_text_encoder:
        groups.append({"params": _cast_trainable_to_fp32(pipe.text_encoder), "lr": config.text_encoder_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-2)
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.warmup_steps,
                                 num_training_steps=config.steps)
    if config.train_text_encoder:
        unet, text_encoder, optimizer, lr_scheduler = accelerator.prepare(pipe.unet, pipe.text_encoder, optimizer,
                                                                          lr_scheduler)
    else:
        unet, optimizer, lr_scheduler = accelerator.prepare(pipe.unet, optimizer, lr_scheduler)
        text_encoder = None
    generator = torch.Generator().manual_seed(config.seed)  # the same on every process: one global batch
    mine = slice(accelerator.process_index * config.batch_size, (accelerator.process_index + 1) * config.batch_size)
    global_batch = config.batch_size * accelerator.num_processes
    step, log_row = 0, None
    if (found := load_checkpoint(out / "ckpt")) is not None:
        step, weights, state = found
        _restore_lora(pipe, weights, config)
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        generator.set_state(state["generator"])
        log_row = state.get("log_row")
    show = progress and accelerator.is_main_process
    batches = _Batches(pipe, records, config, resolution, show) if step < config.steps else None  # done: export only
    prompts = _validation_prompts(records, config)
    if step and accelerator.is_main_process:
        _repair_log(out / "train_log.csv", step, log_row)
        grid = out / "samples" / f"step_{step:05d}.png"
        if not grid.exists():  # killed between the checkpoint and its sample grid
            _sample_grid(pipe, prompts, resolution, config, grid)
    alphas = noise_scheduler.alphas_cumprod
    started, first = time.monotonic(), step
    bar = tqdm(total=config.steps, initial=step, desc="LoRA", disable=not show)
    unet.train()
    while step < config.steps and (stop_after is None or step - first < stop_after):
        step_began = time.monotonic()
        index = torch.randint(0, len(records), (global_batch,), generator=generator)
        flip = torch.rand(global_batch, generator=generator) < 0.5
        latents, embeds = batches.get(index[mine], flip[mine], generator, text_encoder)
        noise = torch.randn((global_batch, *latents.shape[1:]), generator=generator)[mine].to(latents)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (global_batch,), generator=generator)[mine]
        with accelerator.autocast():
            prediction = unet(noise_scheduler.add_noise(latents, noise, t.to(latents.device)), t.to(latents.device),
                              embeds).sample
        loss = F.mse_loss(prediction.float(), noise.float(), reduction="none").mean((1, 2, 3))
        if config.snr_gamma:
            loss = loss * min_snr_weight(alphas, t, config.snr_gamma).to(loss)
        loss = loss.mean()
        accelerator.backward(loss)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step_times is not None:
            step_times.append(time.monotonic() - step_began)
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % config.checkpoint_every == 0 or step == config.steps:
            mean_loss = accelerator.reduce(loss.detach(), "mean").item()  # every process takes part
            if accelerator.is_main_process:
                row = {"step": step, "loss": round(mean_loss, 5), "lr": lr_scheduler.get_last_lr()[0],
                       "seconds": round(time.monotonic() - started, 1)}
                # The checkpoint first, holding its own log row: a kill at any point leaves a log that the next
                # run can make exact (no row twice, none missing) and a sample grid it can redraw.
                save_checkpoint(out / "ckpt", step, _lora_state(pipe, config),
                                {"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
                                 "generator": generator.get_state(), "log_row": row}, kind="step")
                append_csv_row(out / "train_log.csv", row)
                _sample_grid(pipe, prompts, resolution, config, out / "samples" / f"step_{step:05d}.png")
    bar.close()
    folder = out
    if step >= config.steps:
        folder = export_lora(pipe, config, out / "lora") if accelerator.is_main_process else out / "lora"
    if accelerator.num_processes > 1:
        # Every process returns once the LoRA is written, then takes its process group down itself: a gloo
        # group left to the interpreter's exit can abort the process ("terminate called without an active
        # exception", pytorch/pytorch#190489).
        accelerator.wait_for_everyone()
        accelerator.end_training()
    return folder


def export_lora(pipe, config: LoraConfig, folder: Path) -> Path:
    """diffusers format (`pytorch_lora_weights.safetensors`, with rank/alpha metadata) + kohya/A1111 keys."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict

    unet_state = get_peft_model_state_dict(pipe.unet)
    text_state = get_peft_model_state_dict(pipe.text_encoder) if config.train_text_encoder else None
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=convert_state_dict_to_diffusers(unet_state),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(text_state) if text_state else None,
        unet_lora_adapter_metadata=pipe.unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=(pipe.text_encoder.peft_config["default"].to_dict() if text_state
                                            else None),
        safe_serialization=True)
    peft_keys = {f"unet.{k}": v for k, v in unet_state.items()}
    peft_keys.update({f"text_encoder.{k}": v for k, v in (text_state or {}).items()})
    kohya = convert_state_dict_to_kohya(peft_keys)
    for key in kohya:  # diffusers writes alpha = rank; the trained adapter's alpha is what scales it
        if key.endswith(".alpha"):
            kohya[key] = torch.tensor(float(config.alpha))
    name = Path(config.out).name or "celadon"
    save_tensors(folder / "kohya" / f"{name}.safetensors", kohya,
                 metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(config.rank),
                           "ss_network_alpha": str(config.alpha), "ss_base_model_version": "sd_v1"})
    write_json(folder / "lora_config.json", {"rank": config.rank, "alpha": config.alpha, "model": config.model,
                                             "train_text_encoder": config.train_text_encoder,
                                             "clip_skip": config.clip_skip})
    return folder
