"""A genome folder: one store a contig, made by `ragprep encode` from a multi-contig panel.

OUT/contigs.txt lists the contigs in the panel's order (and marks the folder as a genome); OUT/CONTIG.zarr is
each contig's store, an ordinary one. `fit` trains one model a contig (RUN/CONTIG/), `impute` writes one VCF
with every contig.
"""

from __future__ import annotations

from pathlib import Path

from stores.atomic import atomic_path
from stores.errors import UserError

MANIFEST = "contigs.txt"


def contig_stores(url: str | Path) -> dict[str, str]:
    """{contig: store path} of a genome folder, in the panel's contig order; {} for anything else (a store)."""
    folder = Path(str(url))
    manifest = folder / MANIFEST
    if "://" in str(url) or not manifest.is_file():
        return {}
    contigs = [line.strip() for line in manifest.read_text().splitlines() if line.strip()]
    return {contig: str(folder / f"{contig}.zarr") for contig in contigs}


def write_manifest(folder: str | Path, contigs: list[str]) -> None:
    """Mark `folder` as a genome of `contigs` (created if needed); a folder of other contigs is refused."""
    folder = Path(folder)
    found = contig_stores(folder)
    if found and list(found) != list(contigs):
        raise UserError(folder, f"is a genome folder of other contigs ({', '.join(found)})",
                        "give a new --out, or --overwrite each contig's store")
    if folder.exists() and not folder.is_dir():
        raise UserError(folder, "exists and is not a folder; a multi-contig panel is encoded into a folder",
                        "give --out a folder path (new or a genome folder), or one contig with --region")
    if (folder / "zarr.json").exists():
        raise UserError(folder, "is a store of one contig; a multi-contig panel is encoded into a folder of stores",
                        "give --out a new folder, or one contig with --region")
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / MANIFEST) as path:
        Path(path).write_text("".join(f"{contig}\n" for contig in contigs))
