"""`pizzactl data download|report|split`: the dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from pizzactl.cli.base import JsonOpt, data_app, option, settings
from pizzactl.console import err, out, print_json
from pizzactl.data.dataset import MIN_PER_CLASS, load_dataset
from pizzactl.data.download import download
from pizzactl.data.report import MAX_LISTED, report
from pizzactl.data.split import split
from pizzactl.train.label_check import label_check as check


@data_app.command("download")
def data_download(
    dataset: str | None = option("dataset"),
    dest: Path | None = typer.Option(None, "--dest", help="Where to put it (default: the cache)."),
    force: bool = typer.Option(False, "--force", help="Download again even if already verified."),
    json_out: bool = JsonOpt,
) -> None:
    """Download the dataset from Kaggle (credentials, else anonymous), verify and hash it."""
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
    s = settings(data_dir=data_dir)
    rep = report(s, threshold=near_bits)
    if label_check:  # a layer up from data/: it trains heads on the photos' features
        rep["label_check"] = check(s, load_dataset(rep["root"]))
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


# --- printers (rich, stdout) ---------------------------------------------------------


def print_report(rep: dict[str, Any], console=None) -> None:
    """Rich tables for people (the same content as --json)."""
    console = console or out
    w, h = rep["width"], rep["height"]
    summary = Table(title=f"Dataset {rep['root']}", show_header=False)
    summary.add_column(style="bold")
    summary.add_column(overflow="fold")
    summary.add_row("images", f"{rep['images']} usable of {rep['files']} files ({rep['bytes'] / 1e6:.1f} MB)")
    summary.add_row("width", f"min {w['min']}  median {w['median']:g}  max {w['max']}")
    summary.add_row("height", f"min {h['min']}  median {h['median']:g}  max {h['max']}")
    summary.add_row(
        "common sizes",
        ", ".join(f"{s['size']} ({s['count']})" for s in rep["sizes"]) + f"  [{rep['distinct_sizes']} distinct]",
    )
    summary.add_row("colour modes", ", ".join(f"{k} ({v})" for k, v in rep["modes"].items()))
    summary.add_row("formats", ", ".join(f"{k} ({v})" for k, v in rep["formats"].items()))
    summary.add_row("EXIF", f"{rep['exif']['with_exif']} with EXIF, {rep['exif']['with_gps']} with GPS location")
    ex, near = rep["exact_duplicates"], rep["near_duplicates"]
    summary.add_row(
        "exact duplicates",
        f"{ex['groups']} groups, {ex['redundant_files']} redundant files, {ex['cross_class_groups']} across classes",
    )
    summary.add_row(
        "near duplicates",
        f"{near['pairs']} pairs in {near['groups']} groups (dHash <= {near['threshold_bits']} bits), {near['cross_class_pairs']} pairs across classes",
    )
    summary.add_row("unreadable", str(len(rep["unreadable"])))
    summary.add_row("data hash", rep["data_hash"])
    summary.add_row("scan time", f"{rep.get('seconds', 0):.2f} s")
    console.print(summary)

    classes = Table("class", "images", "unreadable", title="Per class")
    for name, c in rep["classes"].items():
        classes.add_row(name, str(c["images"]), str(c["unreadable"]))
    console.print(classes)

    if rep.get("too_small_to_split"):
        console.print(
            f"[yellow]Too few usable images to split into training and validation (at least {MIN_PER_CLASS}):[/] "
            + ", ".join(rep["too_small_to_split"])
        )
    if rep["unreadable"]:
        bad = Table("file", "reason", title="Unreadable files (skipped by training)")
        for item in rep["unreadable"][:MAX_LISTED]:
            bad.add_row(item["path"], item["reason"])
        console.print(bad)
    if ex["listed"]:
        dup = Table("identical files", title="Exact duplicates (sha256)")
        for group in ex["listed"][:20]:
            dup.add_row(", ".join(group))
        console.print(dup)
    if near["listed"]:
        nd = Table("file", "file", "bits", title="Near duplicates (closest first)")
        for p in near["listed"][:20]:
            nd.add_row(p["a"], p["b"], str(p["distance"]))
        console.print(nd)
    if "label_check" in rep:
        check = rep["label_check"]
        console.print(
            f"Label check ({check['backbone']}, {check['repeats']} x {check['folds']}-fold): out-of-fold accuracy "
            f"{check['out_of_fold_accuracy']:.4f}; {len(check['suspects'])} photo(s) wrong every time, "
            f"{check['wrong_sometimes']} wrong only sometimes."
        )
        if check["suspects"]:
            sus = Table("file", "filed under", "P(that class)", title="Label suspects: always put in another class")
            for item in check["suspects"][:MAX_LISTED]:
                sus.add_row(item["path"], item["class"], f"{item['p_class']:.3f}")
            console.print(sus)
    if rep["exif"]["gps_files"]:
        console.print(
            f"[yellow]{rep['exif']['with_gps']} photo(s) carry a GPS location:[/] "
            + ", ".join(rep["exif"]["gps_files"][:10])
        )
