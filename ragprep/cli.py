"""`ragprep`: simulate a panel, encode it into a Zarr embedding store, inspect a store."""

from __future__ import annotations

import json
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ragprep.cli_support import Device, clean_errors, parse_shard
from ragprep.distributed import finish, is_main_process
from ragprep.model import PRESETS
from ragprep.progress import console
from stores.errors import UserError
from stores.schema import HAP_BLOCK

app = typer.Typer(
    help="Prepare a reference panel for ragsnv: simulate, encode into an embedding store, inspect.\n\n"
    "Example: ragprep simulate --out panel.vcf.gz && ragprep encode panel.vcf.gz --out store.zarr",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)


class Preset(str, Enum):
    demo = "demo"
    research = "research"


class MemoryDtype(str, Enum):
    float16 = "float16"
    int8 = "int8"


class Compressor(str, Enum):
    zstd = "zstd"
    none = "none"


class Multiallelic(str, Enum):
    split = "split"
    skip = "skip"
    error = "error"


@app.command(epilog="Example: ragprep simulate --out panel.vcf.gz --samples 500 --length 1e6 --seed 1")
def simulate(
    out: Annotated[Path, typer.Option(help="Output VCF (.vcf.gz: bgzipped, with a .tbi index).")],
    samples: Annotated[int, typer.Option(min=1, help="Diploid samples, split over the model's populations.")] = 500,
    length: Annotated[float, typer.Option(help="Sequence length in bp.")] = 1e6,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same file).")] = 1,
    model: Annotated[str, typer.Option(help="stdpopsim HomSap demographic model, or 'constant'.")] = "OutOfAfrica_3G09",
    contig: Annotated[str, typer.Option(help="Contig name written to the VCF.")] = "chr22",
    holdout: Annotated[int, typer.Option(min=0, help="Also simulate N held-out samples: OUT.truth.vcf.gz (all sites) "
                                         "and OUT.target.vcf.gz (array-like subset).")] = 0,
    array_every: Annotated[int, typer.Option(min=1, help="Target typed at every Nth site with MAF >= --array-min-maf.")] = 10,
    array_min_maf: Annotated[float, typer.Option(help="Minimum panel MAF of target (array) sites.")] = 0.05,
    holdout_population: Annotated[str | None, typer.Option(help="Hold out samples of this population only (e.g. "
                                                           "ADMIX of AmericanAdmixture_4B18).")] = None,
) -> None:
    """Simulate a phased panel with msprime (offline) and write it as a bgzipped VCF."""
    from ragprep.simulate import simulate_panel, simulate_split

    with clean_errors():
        if holdout:
            paths = simulate_split(out, samples, holdout, length, seed, model, contig, array_every, array_min_maf,
                                   holdout_population)
            console.print("wrote " + ", ".join(f"{kind} {path}" for kind, path in paths.items()))
            return
        path, ts = simulate_panel(out, samples, length, seed, model, contig)
    console.print(f"wrote {path}: {ts.num_individuals} samples, {ts.num_sites} sites ({model}, seed {seed})")


@app.command(epilog="Example: ragprep encode panel.vcf.gz --out store.zarr --dtype int8 --shard 0/2\n\n"
             "ragprep encode genome.vcf.gz --out genome/    # several contigs: genome/chr1.zarr, genome/chr2.zarr, ...")
def encode(
    vcf: Annotated[Path, typer.Argument(help="Phased reference panel VCF/BCF: one contig, several (one store each in the --out folder), or --region.")],
    out: Annotated[str, typer.Option(help="Store path or fsspec URL (a Zarr v3 group); a folder for a multi-contig panel.")],
    preset: Annotated[Preset, typer.Option(help="Model size: demo (64/2/4, FFN 2x, L 256) or research (192/10/6, FFN 4x, L 1030).")] = Preset.demo,
    window: Annotated[int | None, typer.Option(help="Sites a window (L); overrides the preset.")] = None,
    stride: Annotated[int | None, typer.Option(help="Sites between window starts (default L - L/8).")] = None,
    d_model: Annotated[int | None, typer.Option(help="Model dim; overrides the preset.")] = None,
    layers: Annotated[int | None, typer.Option(help="Transformer layers; overrides the preset.")] = None,
    heads: Annotated[int | None, typer.Option(help="Attention heads; overrides the preset.")] = None,
    d_memory: Annotated[int | None, typer.Option(help="Stored memory dim (<= model dim).")] = None,
    ffn_mult: Annotated[int | None, typer.Option(min=1, help="Feed-forward width over the model dim; overrides the preset.")] = None,
    dtype: Annotated[MemoryDtype, typer.Option(help="Stored dtype: int8 with per-vector scales (default: as accurate, 4.7x smaller), or float16.")] = MemoryDtype.int8,
    encoder: Annotated[Path | None, typer.Option(help="Trained checkpoint to encode with (refresh); default: weights from --seed.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the default encoder weights.")] = 1,
    device: Annotated[Device, typer.Option(help="auto: CUDA if present, else CPU.")] = Device.auto,
    batch_size: Annotated[int, typer.Option(min=1, help="Haplotypes a forward pass.")] = 256,
    shard: Annotated[str, typer.Option(help="Encode windows w with w % n == i only: i/n.")] = "0/1",
    overwrite: Annotated[bool, typer.Option(help="Delete an existing store and start over.")] = False,
    compressor: Annotated[Compressor, typer.Option(help="Embedding chunks: zstd, or none (memory-mapped reads).")] = Compressor.zstd,
    hap_block: Annotated[int, typer.Option(min=1, help="Stored rows (distinct haplotypes) a chunk.")] = HAP_BLOCK,
    sharded: Annotated[bool, typer.Option(help="Zarr v3 sharding: one shard a window (fewer files).")] = False,
    region: Annotated[str | None, typer.Option(help="CONTIG or CONTIG:START-END.")] = None,
    multiallelic: Annotated[Multiallelic, typer.Option(help="split (one biallelic site an ALT allele, as `bcftools norm -m -`), skip (counted) or error.")] = Multiallelic.split,
    genetic_map: Annotated[Path | None, typer.Option(help="Genetic map (SHAPEIT `pos chr cM` or PLINK `chr id cM pos`, may be gzipped) for the copying model's switch rate; default 1 cM/Mb.")] = None,
) -> None:
    """Run every reference haplotype window once through a frozen encoder; write a chunked Zarr store.

    Resumable: re-running the same command skips windows already written. Under `torchrun --nproc-per-node N`
    process r encodes shard r/N (GPU LOCAL_RANK where CUDA is); rank 0 creates the store. A panel with records
    of several contigs (and no --region) is encoded contig by contig into the --out folder: OUT/CONTIG.zarr each,
    OUT/contigs.txt their order (`fit` and `impute` take the folder).
    """
    from ragprep.encode import EncodeOptions
    from ragprep.encode import encode as run_encode
    from ragprep.vcf import record_contigs
    from stores import open_store
    from stores.genome import write_manifest

    with clean_errors():
        given = {"window": window, "d_model": d_model, "n_layers": layers, "n_heads": heads, "d_memory": d_memory,
                 "ffn_mult": ffn_mult}
        overrides = {k: v for k, v in given.items() if v is not None}
        config = PRESETS[preset.value]
        if "d_model" in overrides and "d_memory" not in overrides:
            overrides["d_memory"] = min(config.d_memory, overrides["d_model"])
        options = EncodeOptions(
            config=replace(config, **overrides), stride=stride, seed=seed, encoder=str(encoder) if encoder else None,
            memory_dtype=dtype.value, device=device.value, batch_size=batch_size, shard=parse_shard(shard),
            overwrite=overwrite, compressor=compressor.value, hap_block=hap_block, sharded=sharded, region=region,
            multiallelic=multiallelic.value, genetic_map=str(genetic_map) if genetic_map else None,
        )
        contigs = list(record_contigs(str(vcf))) if region is None else []
        jobs = [(None, out)]
        if len(contigs) > 1:
            if "://" in out:
                raise UserError(out, f"a panel of {len(contigs)} contigs is encoded into a local folder, a store each",
                                "give a local --out folder, or one contig with --region")
            write_manifest(out, contigs)
            jobs = [(contig, f"{out}/{contig}.zarr") for contig in contigs]
        try:
            for number, (contig, path) in enumerate(jobs, start=1):
                if contig is not None:
                    console.print(f"[bold]contig {contig}[/bold] ({number} of {len(jobs)}) -> {path}")
                report = run_encode(str(vcf), path, options if contig is None else replace(options, region=contig))
                if is_main_process():
                    _encoded(report, open_store(path, require_complete=False))
        finally:
            finish()


def _encoded(report, store) -> None:
    state = "complete" if report.windows_done == report.windows_total else "incomplete"
    console.print(
        f"encoded {report.windows_encoded} windows on {report.device} in {report.seconds:.1f} s "
        f"({report.haplotype_sites_per_s:,.0f} haplotype-sites/s; encoder {report.encoder_seconds:.1f} s, "
        f"writes {report.write_seconds:.1f} s); store {state}: {report.windows_done}/{report.windows_total} windows, "
        f"{store.bytes_per_haplotype_site():.3g} bytes per haplotype-site", soft_wrap=True,
    )


@app.command(epilog="Example: ragprep inspect store.zarr --json\n\n"
             "ragprep inspect store.zarr --verify    # read every chunk, check every checksum")
def inspect(
    store_url: Annotated[str, typer.Argument(metavar="STORE", help="Store path or fsspec URL.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    verify: Annotated[bool, typer.Option(help="Read every chunk and check its checksum (exit 2 if any fails).")] = False,
    repair: Annotated[bool, typer.Option(help="With --verify: mark damaged windows unwritten, so that re-running "
                                         "the same `ragprep encode` re-encodes them.")] = False,
) -> None:
    """Report a store: format, panel, windows done, encoder fingerprint, dims, dtype, bytes on disk, checksums."""
    from ragprep.progress import progress_bar
    from stores import StoreWriter, open_store
    from stores.genome import contig_stores

    with clean_errors():
        if repair and not verify:
            raise UserError("--repair", "repairs what --verify finds", "give --verify too")
        genome = contig_stores(store_url)
        if genome:
            first = next(iter(genome.values()))
            raise UserError(store_url, f"is a genome folder: one store a contig ({', '.join(genome)})",
                            f"inspect a contig's store, e.g. `ragprep inspect {first}`")
        store = open_store(store_url, require_complete=False)
        info = store.summary()
        if verify:
            damaged_panel = store.verify_panel()
            written = [int(w) for w in np.flatnonzero(store.windows_done())]
            with progress_bar() as bar:
                damaged = [w for w in bar.track(written, description="verify") if not store.verify_window(w)]
            info["verified"] = "no checksums to verify (format 1)" if not store.checksummed else (
                f"{len(written)} windows and the panel arrays: "
                + ("all match" if not damaged and not damaged_panel else "damaged"))
        if as_json:
            print(json.dumps(info))
        else:
            width = max(map(len, info))
            for key, value in info.items():  # the report goes to stdout, like --json; progress and errors to stderr
                print(f"{key:<{width}}  {value}")
        if verify and damaged_panel:
            raise store.damaged(", ".join(damaged_panel), None)
        if verify and damaged:
            shown = ", ".join(map(str, damaged[:10])) + (f" and {len(damaged) - 10} more" if len(damaged) > 10 else "")
            if repair:
                StoreWriter(store_url, store.meta).reset_windows(damaged)
                raise UserError(store_url, f"windows {shown} failed their checksums and are now marked unwritten",
                                "re-run the `ragprep encode` that made this store (same options): it re-encodes them")
            raise UserError(store_url, f"windows {shown} fail their checksums (the bytes on disk changed after they "
                            "were written)", f"run `ragprep inspect {store_url} --verify --repair`, then the same "
                            "`ragprep encode` again: it re-encodes them")


@app.command(epilog="Example: ragprep split reference.vcf.gz unphased.vcf.gz --out split/panel.vcf.gz "
             "--holdout 50 --sites scaffold.vcf.gz --seed 1")
def split(
    vcfs: Annotated[list[Path], typer.Argument(metavar="VCF...", help="Phased VCFs/BCFs of the same region; "
                                               "their samples are merged on the biallelic sites all share.")],
    out: Annotated[Path, typer.Option(help="Panel VCF (.vcf.gz); also writes OUT.truth.vcf.gz and OUT.target.vcf.gz.")],
    sites: Annotated[Path, typer.Option(help="VCF of the target's (array) sites, matched by contig, position, REF, ALT.")],
    holdout: Annotated[int, typer.Option(min=1, help="Samples held out of the panel: truth (all sites) and target.")] = 50,
    seed: Annotated[int, typer.Option(help="Random seed of the held-out samples (same seed, same files).")] = 1,
) -> None:
    """Split real phased VCFs like `simulate --holdout`: a panel, and held-out samples' truth and array target.

    Drops (and counts) samples with unphased heterozygous, missing or non-diploid calls, and positions with more than one shared record (ragsnv needs one record a position).
    """
    from ragprep.split import split_panel

    with clean_errors():
        report = split_panel([str(v) for v in vcfs], out, holdout, sites, seed)
    console.print(report.summary(), soft_wrap=True)
    console.print("wrote " + ", ".join(f"{kind} {path}" for kind, path in report.paths.items()), soft_wrap=True)


@app.command(epilog="Example: ragprep unphase split/panel.target.vcf.gz --out split/target.unphased.vcf.gz")
def unphase(
    vcf: Annotated[Path, typer.Argument(help="A phased VCF/BCF (e.g. the target of `split` or `simulate`).")],
    out: Annotated[Path, typer.Option(help="Output VCF (.vcf.gz, bgzipped, with a .tbi index).")],
    seed: Annotated[int, typer.Option(help="Random seed of the heterozygotes' allele order (same seed, same file).")] = 1,
) -> None:
    """Remove the phase of every genotype, each heterozygote's alleles in random order: the unphased array
    genotypes a lab hands over, to test `ragtrain impute`'s phasing against the truth."""
    from ragprep.split import unphase_vcf

    with clean_errors():
        records, hets = unphase_vcf(vcf, out, seed)
    console.print(f"wrote {out}: {records} records, {hets} heterozygous calls unphased")


if __name__ == "__main__":  # `python -m ragprep.cli ...` runs the CLI too
    app()
