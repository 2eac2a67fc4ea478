"""More photos than there are, for measuring what training costs as the data grows.

`make_photos(source, dest, n)` lays out `n` photos with the source's classes in the source's
proportions: the source photos themselves (linked, never copied) and, past them, re-crops of
them (a random 55-95% of the area, random aspect 3:4-4:3, mirrored half of the time, saved as
JPEG q90 no larger than the source). Re-crops are near duplicates, which is fine for cost
(the backbone does the same work per photo) and says nothing about accuracy. The same source,
`n` and seed give the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

from pizzactl.data.dataset import load_dataset
from pizzactl.files import atomic_dir

MARKER = ".pizzactl-photos.json"


def make_photos(source: Path | str, dest: Path | str, n: int, *, seed: int = 0) -> Path:
    """`dest` with `n` photos in class folders made from `source`; reused when already made."""
    import numpy as np
    from PIL import Image

    dataset = load_dataset(source)
    dest = Path(dest).expanduser()
    wanted = {"source": dataset.data_hash, "n": int(n), "seed": int(seed), "version": 1}
    try:
        if json.loads((dest / MARKER).read_text()) == wanted:
            return dest
    except (OSError, ValueError):
        pass
    rng = np.random.default_rng(seed)
    counts = dataset.counts()
    with atomic_dir(dest) as tmp:  # a reader sees the old set or the new one
        for class_name in dataset.classes:
            records = [r for r in dataset.records if r.class_name == class_name]
            target = round(n * counts[class_name] / len(dataset))
            folder = tmp / class_name
            folder.mkdir(parents=True)
            for i in range(target):
                record = records[i % len(records)]
                if i < len(records):
                    (folder / record.path.name).symlink_to(record.path.resolve())
                    continue
                with Image.open(record.path) as img:
                    crop = _random_crop(img.convert("RGB"), rng)
                    crop.save(folder / f"{record.path.stem}-recrop{i // len(records)}.jpg", quality=90)
        (tmp / MARKER).write_text(json.dumps(wanted) + "\n")
    return dest


def _random_crop(img, rng):
    """A random 55-95% of the photo's area, resized back to its size, mirrored half of the time."""
    import numpy as np
    from PIL import Image

    w, h = img.size
    area = rng.uniform(0.55, 0.95) * w * h
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    cw = int(min(w, round((area * aspect) ** 0.5)))
    ch = int(min(h, round((area / aspect) ** 0.5)))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    crop = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.BILINEAR)
    return crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop
