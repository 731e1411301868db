"""docs/tiny-on-real-photos.png: what the shipped tiny model does to real photographs.

Two real photos (scikit-learn's sample images: no download) at the tiny model's 64 px, through its VAE alone
(encode, decode) and through img2img at the demo's settings (strength 0.5, CFG 3, 20 steps) with a porcelain
prompt. Run from the clone: `.venv/bin/python scripts/tiny_on_real_photos.py`.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw
from sklearn.datasets import load_sample_image

from celadon.synth.controls import vae_round_trip
from celadon.synth.generate import _img2img_pipeline
from celadon.synth.pipeline import load_pipeline

PROMPT = "Song dynasty, Longquan kiln produced, Chinese porcelain, vase, with celadon glaze"


def square(name: str, size: int = 64) -> Image.Image:
    pixels = load_sample_image(name)
    h, w = pixels.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return Image.fromarray(pixels[top:top + s, left:left + s]).resize((size, size), Image.BICUBIC)


def main() -> None:
    torch.set_num_threads(2)
    pipe = load_pipeline("tiny")
    img2img = _img2img_pipeline(pipe)
    rows = []
    for name in ("china.jpg", "flower.jpg"):
        photo = square(name)
        redrawn = img2img(prompt=PROMPT, image=photo, strength=0.5, guidance_scale=3.0, num_inference_steps=20,
                          generator=torch.Generator().manual_seed(0)).images[0]
        rows.append([photo, vae_round_trip(pipe, [photo])[0], redrawn])
    cell, pad, top = 192, 8, 26
    sheet = Image.new("RGB", (3 * cell + 4 * pad, top + 2 * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for j, title in enumerate(["real photo (64 px)", "tiny VAE round trip", "img2img, strength 0.5"]):
        draw.text((pad + j * (cell + pad), 8), title, fill="black")
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            sheet.paste(image.resize((cell, cell), Image.NEAREST), (pad + j * (cell + pad), top + i * (cell + pad)))
    sheet.save("docs/tiny-on-real-photos.png")
    print("docs/tiny-on-real-photos.png")


if __name__ == "__main__":
    main()
