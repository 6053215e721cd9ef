#!/usr/bin/env python3
"""Generate the bundled sample corpus: WebDataset shards of small scenes (filled rectangles and ellipses of
distinct palette colours on grey) with captions and metadata.

The scenes use the palette the refiner's fixture models recognise, so the same corpus shows every stage. Output
is deterministic: rerunning the script rewrites identical files.

    python3 scripts/make_sample_corpus.py examples/corpus
"""
import io
import json
import random
import sys
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

PALETTE = {
    "red": (230, 25, 75),
    "green": (60, 180, 75),
    "blue": (0, 130, 200),
    "yellow": (255, 225, 25),
    "purple": (145, 30, 180),
}
GREY = (128, 128, 128)


def scene(rng):
    w, h = rng.choice([(160, 120), (120, 160), (128, 128), (200, 100)])
    img = Image.new("RGB", (w, h), GREY)
    draw = ImageDraw.Draw(img)
    colours = rng.sample(sorted(PALETTE), rng.randint(1, 3))
    parts = []
    for name in colours:
        x0, y0 = rng.randint(0, w // 2), rng.randint(0, h // 2)
        x1, y1 = rng.randint(x0 + 12, min(w, x0 + w // 2 + 12)), rng.randint(y0 + 12, min(h, y0 + h // 2 + 12))
        shape = rng.choice(["rectangle", "ellipse"])
        getattr(draw, shape)([x0, y0, x1 - 1, y1 - 1], fill=PALETTE[name])
        parts.append(f"a {name} {shape}")
    caption = " and ".join(parts) + " on a grey background"
    return img, caption, {"width": w, "height": h, "shapes": len(colours)}


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def main(out, shards=2, per_shard=8):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    n = 0
    for s in range(shards):
        with tarfile.open(out / f"shard-{s:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for _ in range(per_shard):
                key = f"{n:06d}"
                img, caption, meta = scene(rng)
                buf = io.BytesIO()
                if n % 4 == 3:
                    img.save(buf, "PNG")
                    ext = "png"
                else:
                    img.save(buf, "JPEG", quality=90)
                    ext = "jpg"
                add(tar, f"{key}.{ext}", buf.getvalue())
                add(tar, f"{key}.txt", caption.encode())
                add(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
                n += 1


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "examples/corpus")
