"""`pizzactl data download|report|split`: the dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from pizzactl.cli.base import JsonOpt, data_app, settings
from pizzactl.console import err, out, print_json


@data_app.command("download")
def data_download(
    dataset: str | None = typer.Option(None, "--dataset", help="Kaggle dataset slug."),
    dest: Path | None = typer.Option(None, "--dest", help="Where to put it (default: the cache)."),
    force: bool = typer.Option(False, "--force", help="Download again even if already verified."),
    json_out: bool = JsonOpt,
) -> None:
    """Download the dataset from Kaggle (credentials, else anonymous), verify and hash it."""
    from pizzactl.data.download import download

    result = download(settings(dataset=dataset), dest=dest, force=force)
    if json_out:
        print_json(result.as_dict())
    else:
        if not result.downloaded:
            err.print("Already downloaded and verified (content hash matches); use --force to download again.")
        out.print(f"{result.path}  ({result.n_images} images, sha256 {result.data_hash[:12]})", highlight=False)


@data_app.command("report")
def data_report(
    data_dir: Path | None = typer.Argument(None, help="Dataset folder (default: --data / the downloaded one)."),
    near_bits: int = typer.Option(
        4, "--near-bits", min=0, max=64, help="Near duplicate: dHashes at most this many bits apart (of 64)."
    ),
    label_check: bool = typer.Option(
        False,
        "--label-check",
        help="Also list photos cross-validated heads always put in another class (needs [train]).",
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Counts per class, sizes, colour modes, corrupt files, duplicates, EXIF/GPS (and label suspects)."""
    from pizzactl.data.report import print_report, report

    s = settings(data_dir=data_dir)
    rep = report(s, threshold=near_bits, label_check=label_check)
    if json_out:
        print_json(rep)
    else:
        print_report(rep)


@data_app.command("split")
def data_split(
    data_dir: Path = typer.Argument(..., help="Dataset folder (one sub-folder per class)."),
    dest: Path = typer.Option(..., "--dest", help="New folder: DEST/train and DEST/test."),
    test: float = typer.Option(0.15, "--test", min=0.01, max=0.9, help="Fraction of each class set aside."),
    seed: int = typer.Option(0, "--seed", help="Same seed and files, same split."),
    copy: bool = typer.Option(False, "--copy", help="Copy the files instead of symlinking them."),
    json_out: bool = JsonOpt,
) -> None:
    """Set a test set aside: train on DEST/train, `evaluate --data DEST/test`."""
    from pizzactl.data.split import split

    result = split(data_dir, dest, test_fraction=test, seed=seed, copy=copy)
    if json_out:
        print_json(result.as_dict())
    else:
        for part in ("train", "test"):
            counts = result.counts[part]
            out.print(
                f"{getattr(result, part + '_dir')}  {sum(counts.values())} images ({', '.join(f'{n} {c}' for c, n in counts.items())})",
                highlight=False,
            )
