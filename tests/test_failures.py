"""Bad input and bad days, as a user meets them: every case runs a real CLI on real files and must end in one
`error:` line (the file or option, the place where there is one, and a fix), exit code 2, no traceback, and
nothing half-written that looks complete. Read-only and full file systems are real tmpfs mounts (as root)."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import TINY_CLI, subset
from typer.testing import CliRunner

from ragprep.cli import app as prep_app
from ragtrain.cli import app as train_app
from ragtrain.fit import FitOptions, fit
from ragtrain.impute import impute
from ragtrain.retrieval import RetrievalSpec
from stores import UserError, open_store

pytestmark = pytest.mark.usefixtures("one_thread")

FIT = ["--device", "cpu", "--batch-size", "8", "--k", "2", "--retrieval-flank", "8", "--warmup", "1",
       "--max-steps", "2", "--eval-every", "2"]


# --- what the cases run on ------------------------------------------------------------------------------

@dataclass
class World:
    root: Path
    panel: Path
    store: str
    model: Path
    target: Path
    truth: Path
    imputed: Path
    readonly: Path | None  # a read-only tmpfs, None where this process cannot mount one
    full: Path | None  # a 64 KiB tmpfs

    def path(self, name: str) -> Path:
        return self.root / name


def mount_tmpfs(where: Path, options: str) -> Path | None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, check=False)
    return where if done.returncode == 0 else None


@pytest.fixture(scope="module")
def world(tmp_path_factory, panel_vcf, store_path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("failures")
    run = root / "run"
    fit(FitOptions(store=store_path, out=str(run), device="cpu", batch_size=8, max_steps=2, eval_every=2, warmup=1,
                   retrieval=RetrievalSpec(k=2, flank=8)))
    target = subset(panel_vcf, root / "target.vcf.gz", every=5)
    truth = subset(panel_vcf, root / "truth.vcf.gz")
    impute(str(target), store_path, str(run / "last.pt"), str(root / "imputed.vcf.gz"), device="cpu")
    readonly = mount_tmpfs(root / "readonly", "ro,size=1m")
    full = mount_tmpfs(root / "full", "size=64k")
    yield World(root, Path(panel_vcf), store_path, run / "last.pt", target, truth, root / "imputed.vcf.gz", readonly, full)
    for mount in (readonly, full):
        if mount is not None:
            subprocess.run(["umount", "-l", str(mount)], check=False)


# --- the cases ------------------------------------------------------------------------------------------

@dataclass
class Case:
    """`args(world)` runs `app`; the error line must hold every string of `says(world)`; `left(world)` checks
    what is on disk afterwards (True = fine)."""

    app: str  # "prep" or "train"
    args: Callable[[World], list]
    says: Callable[[World], list[str]]
    left: Callable[[World], bool] = lambda w: True
    needs: str | None = None  # "readonly" or "full": the mount the case writes to


def no_store(name: str) -> Callable[[World], bool]:
    """Nothing there that opens as a complete store."""
    def check(w: World) -> bool:
        target = w.path(name) if not name.startswith("/") else Path(name)
        try:
            open_store(str(target))
        except UserError:
            return True
        return False
    return check


def nothing_at(*names: str) -> Callable[[World], bool]:
    return lambda w: not any(w.path(n).exists() for n in names)


def no_temporaries(where: str) -> Callable[[World], bool]:
    return lambda w: not [p for p in Path(w.path(where)).rglob("*") if ".part-" in p.name]


def edit_record(index: int, column: int, value: str) -> Callable[[list[str]], list[str]]:
    """Set a column of the index-th record line."""
    def edit(lines: list[str]) -> list[str]:
        rows = [i for i, line in enumerate(lines) if not line.startswith("#")]
        fields = lines[rows[index]].split("\t")
        fields[column] = value
        lines[rows[index]] = "\t".join(fields)
        return lines
    return edit


def rename_sample(index: int, name: str) -> Callable[[list[str]], list[str]]:
    def edit(lines: list[str]) -> list[str]:
        at = next(i for i, line in enumerate(lines) if line.startswith("#CHROM"))
        fields = lines[at].split("\t")
        fields[9 + index] = name
        lines[at] = "\t".join(fields)
        return lines
    return edit


def made(name: str, **subset_args) -> Callable[[World], Path]:
    """A VCF derived from the panel, made on first use."""
    def build(w: World) -> Path:
        out = w.path(name)
        if not out.exists():
            subset(w.panel, out, **subset_args)
        return out
    return build


def text_file(name: str, content: bytes) -> Callable[[World], Path]:
    def build(w: World) -> Path:
        w.path(name).write_bytes(content)
        return w.path(name)
    return build


def truncated(source: str, name: str) -> Callable[[World], Path]:
    def build(w: World) -> Path:
        data = Path(getattr(w, source)).read_bytes()
        w.path(name).write_bytes(data[: len(data) // 2])
        return w.path(name)
    return build


def earlier_run(name: str) -> Callable[[World], Path]:
    def build(w: World) -> Path:
        run = w.path(name)
        if not run.exists():
            shutil.copytree(w.model.parent, run)
        return run
    return build


def model_of_another_store(w: World) -> Path:
    state = torch.load(w.model, weights_only=True)
    state["store_fingerprint"] = "0123456789abcdef"
    torch.save(state, w.path("foreign.pt"))
    return w.path("foreign.pt")


UNPHASED = made("unphased.vcf.gz", edit=edit_record(3, 10, "0/1"))
TRIPLOID = made("triploid.vcf.gz", edit=edit_record(3, 11, "1|0|1"))
MISSING_ALLELE = made("missing.vcf.gz", edit=edit_record(3, 9, ".|1"))
UNSORTED = made("unsorted.vcf.gz", edit=edit_record(3, 1, "5"), index=False)
DUPLICATE_SAMPLE = made("dupsample.vcf.gz", edit=rename_sample(2, "YRI_0"), index=False)
OTHER_CONTIG = made("chr9.vcf.gz", edit=lambda lines: [line.replace("chr22", "chr9") for line in lines])
SYMBOLIC = made("symbolic.vcf.gz", edit=edit_record(3, 4, "<DEL>"))
BROKEN_GT_NO_CONTIGS = text_file("brokengt.vcf", b"##fileformat=VCFv4.2\n"  # no ##contig: htslib adds it on the fly
                                 b'##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
                                 b"#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tA\tB\n"
                                 b"chr22\t5\t.\tA\tG\t.\t.\t.\tGT\t0|x\t0|0\nchr22\t9\t.\tC\tT\t.\t.\t.\tGT\t0|1\t1|1\n")
NO_INDEX = made("noindex.vcf.gz", every=5, index=False)
NO_DS = text_file("nods.vcf", b"##fileformat=VCFv4.2\n##contig=<ID=chr22>\n"
                  b'##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
                  b"#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tYRI_0\nchr22\t5\t.\tA\tG\t.\t.\t.\tGT\t0|1\n")


def P(w: World) -> str:  # the panel path as printed
    return str(w.panel)


CASES: dict[str, Case] = {
    # ragprep encode: input files
    "encode missing file": Case("prep", lambda w: ["encode", w.path("nope.vcf.gz"), "--out", w.path("s1.zarr")],
                                lambda w: [str(w.path("nope.vcf.gz")), "not a readable VCF"], no_store("s1.zarr")),
    "encode a folder": Case("prep", lambda w: ["encode", w.root, "--out", w.path("s2.zarr")],
                            lambda w: [str(w.root), "is a folder"], no_store("s2.zarr")),
    "encode not a VCF": Case("prep", lambda w: ["encode", text_file("junk.vcf", b"hello\n")(w), "--out", w.path("s3.zarr")],
                             lambda w: ["junk.vcf", "not a readable VCF"], no_store("s3.zarr")),
    "encode truncated bgzip": Case("prep", lambda w: ["encode", truncated("panel", "cut.vcf.gz")(w), "--out", w.path("s4.zarr")],
                                   lambda w: ["cut.vcf.gz", "the file breaks after record chr22:", "truncated"], no_store("s4.zarr")),
    "encode broken GT, contig not declared": Case(  # htslib crashed on this (a segfault), found by test_fuzz
        "prep", lambda w: ["encode", BROKEN_GT_NO_CONTIGS(w), "--out", w.path("s-gt.zarr")],
        lambda w: [str(w.path("brokengt.vcf")), "the record after the header cannot be read", "GT"],
        no_store("s-gt.zarr")),
    "encode unphased": Case("prep", lambda w: ["encode", UNPHASED(w), "--out", w.path("s5.zarr")],
                            lambda w: ["unphased.vcf.gz", "chr22:", "sample YRI_1 is unphased", "fix: phase"],
                            no_store("s5.zarr")),
    "encode triploid": Case("prep", lambda w: ["encode", TRIPLOID(w), "--out", w.path("s6.zarr")],
                            lambda w: ["triploid.vcf.gz", "sample YRI_2 has ploidy 3"], no_store("s6.zarr")),
    "encode missing allele": Case("prep", lambda w: ["encode", MISSING_ALLELE(w), "--out", w.path("s7.zarr")],
                                  lambda w: ["missing.vcf.gz", "sample YRI_0 has a missing allele"], no_store("s7.zarr")),
    "encode unsorted": Case("prep", lambda w: ["encode", UNSORTED(w), "--out", w.path("s8.zarr")],
                            lambda w: ["unsorted.vcf.gz", "not sorted", "bcftools sort"], no_store("s8.zarr")),
    "encode duplicate sample": Case("prep", lambda w: ["encode", DUPLICATE_SAMPLE(w), "--out", w.path("s9.zarr")],
                                    lambda w: ["dupsample.vcf.gz", "sample YRI_0 appears twice", "unique"],
                                    no_store("s9.zarr")),
    "encode bad region": Case("prep", lambda w: ["encode", w.panel, "--out", w.path("s10.zarr"), "--region", "chr22:x"],
                              lambda w: ["--region", "cannot parse"], no_store("s10.zarr")),
    # ragprep encode: options
    "encode stride 0": Case("prep", lambda w: ["encode", w.panel, "--out", w.path("s11.zarr"), *TINY_CLI, "--stride", "0"],
                            lambda w: ["--stride", "0 is outside 1..32"], no_store("s11.zarr")),
    "encode stride too long": Case("prep", lambda w: ["encode", w.panel, "--out", w.path("s12.zarr"), *TINY_CLI, "--stride", "40"],
                                   lambda w: ["--stride", "40 is outside 1..32"], no_store("s12.zarr")),
    "encode heads": Case("prep", lambda w: ["encode", w.panel, "--out", w.path("s13.zarr"), *TINY_CLI, "--heads", "3"],
                         lambda w: ["--heads", "not a multiple of 3 heads"], no_store("s13.zarr")),
    "encode d-memory": Case("prep", lambda w: ["encode", w.panel, "--out", w.path("s14.zarr"), *TINY_CLI, "--d-memory", "64"],
                            lambda w: ["--d-memory", "64 is outside 1..d_model (16)"], no_store("s14.zarr")),
    "encode shard": Case("prep", lambda w: ["encode", w.panel, "--out", w.path("s15.zarr"), "--shard", "3/2"],
                         lambda w: ["--shard", "'3/2' needs 0 <= i < n"], no_store("s15.zarr")),
    "encode truncated encoder": Case("prep", lambda w: ["encode", w.panel, "--out", w.path("s16.zarr"),
                                                        "--encoder", truncated("model", "cut.pt")(w)],
                                     lambda w: ["cut.pt", "cannot be read as a checkpoint", "--encoder"], no_store("s16.zarr")),
    "encode encoder not a checkpoint": Case("prep", lambda w: ["encode", w.panel, "--out", w.path("s17.zarr"),
                                                               "--encoder", w.panel],
                                            lambda w: [P(w), "cannot be read as a checkpoint"], no_store("s17.zarr")),
    "encode out is a file": Case("prep", lambda w: ["encode", w.panel, "--out", text_file("afile", b"x")(w), "--overwrite"],
                                 lambda w: ["afile", "not a Zarr store, so --overwrite leaves it"],
                                 lambda w: w.path("afile").read_bytes() == b"x"),
    "encode other settings": Case("prep", lambda w: ["encode", w.panel, "--out", w.store, *TINY_CLI, "--seed", "4"],
                                  lambda w: [w.store, "exists with other settings", "--overwrite"],
                                  lambda w: open_store(w.store).is_complete),
    "encode read-only out": Case("prep", lambda w: ["encode", w.panel, "--out", w.readonly / "s.zarr", *TINY_CLI],
                                 lambda w: [f"error: {w.readonly / 's.zarr'}: Read-only file system", "fix:"],
                                 lambda w: not any(w.readonly.iterdir()), needs="readonly"),
    "encode full disk": Case("prep", lambda w: ["encode", w.panel, "--out", w.full / "s.zarr", *TINY_CLI],
                             lambda w: [str(w.full), "No space left on device", "free space"],
                             no_store("full/s.zarr"), needs="full"),
    # ragtrain fit
    "fit missing store": Case("train", lambda w: ["fit", "--store", w.path("none.zarr"), "--out", w.path("r1"), *FIT],
                              lambda w: ["none.zarr", "no ragsnv store there", "ragprep encode"], nothing_at("r1")),
    "fit fusion layer that does not exist": Case("train", lambda w: ["fit", "--store", w.store, "--out", w.path("r2"),
                                                                     *FIT, "--fusion-layers", "7"],
                                                 lambda w: ["--fusion-layers", "layers [7] do not exist"], nothing_at("r2")),
    "fit fusion layers not numbers": Case("train", lambda w: ["fit", "--store", w.store, "--out", w.path("r3"),
                                                              *FIT, "--fusion-layers", "x"],
                                          lambda w: ["--fusion-layers", "cannot read 'x'"], nothing_at("r3")),
    "fit earlier run without resume": Case("train", lambda w: ["fit", "--store", w.store, "--out", earlier_run("r4")(w), *FIT],
                                           lambda w: ["r4", "holds an earlier run", "--resume", "--overwrite"],
                                           lambda w: w.path("r4/metrics.csv").read_text().count("\n") == 2),
    "fit negative lr": Case("train", lambda w: ["fit", "--store", w.store, "--out", w.path("r5"), *FIT, "--lr", "-1"],
                            lambda w: ["--lr", "-1.0 is not a positive number"], nothing_at("r5")),
    "fit bad mask": Case("train", lambda w: ["fit", "--store", w.store, "--out", w.path("r6"), *FIT, "--mask", "array"],
                         lambda w: ["--mask", "bad mask 'array'", "random:LO-HI"], nothing_at("r6")),
    "fit bad validation mask": Case("train", lambda w: ["fit", "--store", w.store, "--out", w.path("r7"), *FIT,
                                                        "--val-mask", "random:2"],
                                    lambda w: ["--val-mask", "0 <= LO <= HI <= 1"], nothing_at("r7")),
    "fit resume without checkpoint": Case("train", lambda w: ["fit", "--store", w.store, "--out", w.path("r8"), *FIT, "--resume"],
                                          lambda w: ["r8/last.pt", "no checkpoint to resume"]),
    "fit resume with another k": Case("train", lambda w: ["fit", "--store", w.store, "--out", earlier_run("r9")(w), *FIT,
                                                          "--resume", "--k", "3"],
                                      lambda w: ["last.pt", "other settings (k 2 vs 3"],
                                      lambda w: w.path("r9/metrics.csv").read_text().count("\n") == 2),
    "fit k larger than the panel": Case("train", lambda w: ["fit", "--store", w.store, "--out", w.path("r10"), *FIT,
                                                            "--k", "500"],
                                        lambda w: ["--k", "cannot retrieve k=500", "lower --k"]),
    "fit train VCF not a VCF": Case("train", lambda w: ["fit", "--store", w.store, "--out", w.path("r11"), *FIT,
                                                        "--train", text_file("junk2.vcf", b"x\n")(w)],
                                    lambda w: ["junk2.vcf", "not a readable VCF"], nothing_at("r11/last.pt")),
    "impute read-only out": Case("train", lambda w: ["impute", w.target, "--store", w.store, "--model", w.model,
                                                     "--out", w.readonly / "x.vcf.gz", "--device", "cpu"],
                                 lambda w: [f"error: {w.readonly / 'x.vcf.gz'}: cannot write its folder"],
                                 lambda w: not any(w.readonly.iterdir()), needs="readonly"),
    "fit read-only out": Case("train", lambda w: ["fit", "--store", w.store, "--out", w.readonly / "run", *FIT],
                              lambda w: [str(w.readonly), "Read-only file system"],
                              lambda w: not any(w.readonly.iterdir()), needs="readonly"),
    "fit full disk": Case("train", lambda w: ["fit", "--store", w.store, "--out", w.full / "run", *FIT],
                          lambda w: [str(w.full), "No space left on device", "free space"],
                          lambda w: not [p for p in w.full.rglob("*") if ".part-" in p.name], needs="full"),
    # ragtrain impute
    "impute truncated model": Case("train", lambda w: ["impute", w.target, "--store", w.store, "--model",
                                                       truncated("model", "cut2.pt")(w), "--out", w.path("i1.vcf.gz")],
                                   lambda w: ["cut2.pt", "cannot be read as a checkpoint", "--model"], nothing_at("i1.vcf.gz")),
    "impute model not a checkpoint": Case("train", lambda w: ["impute", w.target, "--store", w.store, "--model", w.target,
                                                              "--out", w.path("i2.vcf.gz")],
                                          lambda w: ["target.vcf.gz", "cannot be read as a checkpoint"], nothing_at("i2.vcf.gz")),
    "impute model of another store": Case("train", lambda w: ["impute", w.target, "--store", w.store, "--model",
                                                              model_of_another_store(w), "--out", w.path("i3.vcf.gz")],
                                          lambda w: ["foreign.pt", "trained on a store with encoder 0123456789abcdef"],
                                          nothing_at("i3.vcf.gz")),
    "impute target on another contig": Case("train", lambda w: ["impute", OTHER_CONTIG(w), "--store", w.store, "--model",
                                                                w.model, "--out", w.path("i5.vcf.gz")],
                                            lambda w: ["chr9.vcf.gz", "chr9 but the panel is on chr22"], nothing_at("i5.vcf.gz")),
    "impute duplicate target sample": Case("train", lambda w: ["impute", DUPLICATE_SAMPLE(w), "--store", w.store,
                                                               "--model", w.model, "--out", w.path("i6.vcf.gz")],
                                           lambda w: ["sample YRI_0 appears twice"], nothing_at("i6.vcf.gz")),
    "impute out not vcf.gz": Case("train", lambda w: ["impute", w.target, "--store", w.store, "--model", w.model,
                                                      "--out", w.path("i7.vcf")],
                                  lambda w: ["i7.vcf", "must be a bgzipped VCF"], nothing_at("i7.vcf")),
    "impute out is a folder": Case("train", lambda w: ["impute", w.target, "--store", w.store, "--model", w.model,
                                                       "--out", _folder(w, "i8.vcf.gz")],
                                   lambda w: ["i8.vcf.gz", "is a folder"], no_temporaries(".")),
    "impute unknown device": Case("train", lambda w: ["impute", w.target, "--store", w.store, "--model", w.model,
                                                      "--out", w.path("i9.vcf.gz"), "--device", "tpu"],
                                  lambda w: ["--device", "tpu"], nothing_at("i9.vcf.gz")),
    # ragtrain evaluate
    "evaluate out is a file": Case("train", lambda w: ["evaluate", w.imputed, "--truth", w.truth, "--out",
                                                       text_file("report.txt", b"keep")(w)],
                                   lambda w: ["report.txt", "is a file"], lambda w: w.path("report.txt").read_bytes() == b"keep"),
    "evaluate no DS": Case("train", lambda w: ["evaluate", NO_DS(w), "--truth", w.truth, "--out", w.path("e2")],
                           lambda w: ["nods.vcf", "no FORMAT/DS"], nothing_at("e2/report.md")),
    "evaluate truncated truth": Case("train", lambda w: ["evaluate", w.imputed, "--truth", truncated("truth", "cut.truth.vcf.gz")(w),
                                                         "--out", w.path("e3")],
                                     lambda w: ["cut.truth.vcf.gz"], nothing_at("e3/report.md")),
    "evaluate read-only out": Case("train", lambda w: ["evaluate", w.imputed, "--truth", w.truth, "--out", w.readonly / "rep"],
                                   lambda w: [str(w.readonly), "Read-only file system"], needs="readonly"),
}


def _folder(w: World, name: str) -> Path:
    w.path(name).mkdir(exist_ok=True)
    return w.path(name)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing_complete(world, name):
    case = CASES[name]
    if case.needs and getattr(world, case.needs) is None:
        pytest.skip(f"cannot mount a {case.needs} tmpfs here (needs root and mount rights; CI runs as root)")
    result = CliRunner().invoke(prep_app if case.app == "prep" else train_app, [str(a) for a in case.args(world)])
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith(("reading", "fit "))]
    error = next((line for line in lines if line.startswith("error: ")), None) or " ".join(lines)
    for part in case.says(world):
        assert part in error, (part, error)
    if error.startswith("error: "):
        assert "; fix: " in error and sum(line.startswith("error: ") for line in lines) == 1, lines
    else:  # click's own usage error for a choice: names the option and lists the choices
        assert "Invalid value" in error, error
    assert case.left(world), f"{name}: left something behind"


def test_symbolic_alleles_are_kept_and_counted(world, tmp_path):
    """Beagle imputes any biallelic marker; so does ragsnv, and the summary line says how many such records."""
    out = tmp_path / "sym.zarr"
    result = CliRunner().invoke(prep_app, ["encode", str(SYMBOLIC(world)), "--out", str(out), *TINY_CLI])
    assert result.exit_code == 0, result.output
    assert "kept 1 records with symbolic, '*' or non-ACGT alleles as biallelic markers (first: chr22:" in result.stderr
    assert "<DEL>" in open_store(str(out)).alleles_ref_alt[:, 1].tolist()


def test_target_without_an_index_is_read_without_an_htslib_error(world):
    result = CliRunner().invoke(train_app, ["impute", str(NO_INDEX(world)), "--store", world.store, "--model",
                                            str(world.model), "--out", str(world.path("ni.vcf.gz")), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "[E::" not in result.stderr and world.path("ni.vcf.gz.tbi").exists()


def test_impute_onto_a_full_disk_is_one_line_naming_the_out(world):
    """The tmpfs filled but for 8 KiB: the VCF's first blocks fit, the rest do not (pysam's BGZF then fails on
    close, without an errno)."""
    if world.full is None:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights; CI runs as root)")
    filler, out = world.full / "filler", world.full / "imputed.vcf.gz"
    free = os.statvfs(world.full).f_bavail * os.statvfs(world.full).f_frsize
    filler.write_bytes(b"\0" * max(free - 8192, 0))
    try:
        result = CliRunner().invoke(train_app, ["impute", str(world.target), "--store", world.store, "--model",
                                                str(world.model), "--out", str(out), "--device", "cpu"])
    finally:
        filler.unlink()
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {out}: ") and "free space" in errors[0], result.stderr
    assert not list(world.full.glob("imputed*"))  # no VCF, no index, no temporaries, no lock
    assert "[E::" not in result.stderr  # htslib's own complaints are not shown beside the one line


@pytest.mark.parametrize("where", ["readonly", "proc"])
def test_impute_into_an_unwritable_folder_fails_before_the_work_without_a_crash(world, where):
    """pysam's BGZFile crashes on such paths: the output is checked (with plain Python) before anything runs.
    A real process, so that a crash would show as a signal, not take pytest down."""
    if where == "readonly" and world.readonly is None:
        pytest.skip("cannot mount a read-only tmpfs here (needs root and mount rights; CI runs as root)")
    out = (world.readonly if where == "readonly" else Path("/proc/self")) / "imputed.vcf.gz"
    done = subprocess.run([sys.executable, "-m", "ragtrain.cli", "impute", str(world.target), "--store", world.store,
                           "--model", str(world.model), "--out", str(out), "--device", "cpu"],
                          capture_output=True, text=True, check=False, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: {out}: cannot write its folder") and "fix: " in done.stderr
    assert "Traceback" not in done.stderr


# --- damaged stores -------------------------------------------------------------------------------------

def flip_bytes(chunk: Path) -> None:
    """Two bytes in the middle of a stored chunk, as a failing disk or a bad copy leaves them."""
    data = bytearray(chunk.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0xFF
    data[middle + 1] ^= 0x5A
    chunk.write_bytes(bytes(data))


@pytest.mark.parametrize("compressor", ["zstd", "none"])
def test_a_damaged_window_is_named_by_fit_impute_and_verify_and_repaired_by_encode(world, tmp_path, compressor):
    """Every embedding chunk of one window damaged, in a zstd store and a raw (memory-mapped) one: impute and
    fit stop with one line naming the store and the window, `inspect --verify` finds it, `--repair` and the same
    `encode` again restore a store that verifies and imputes as before."""
    store, window = tmp_path / f"{compressor}.zarr", 3
    encode_args = ["encode", str(world.panel), "--out", str(store), *TINY_CLI, "--compressor", compressor]
    assert CliRunner().invoke(prep_app, encode_args).exit_code == 0
    intact = CliRunner().invoke(train_app, ["impute", str(world.target), "--store", str(store), "--model",
                                            str(world.model), "--out", str(tmp_path / "intact.vcf.gz"), "--device", "cpu"])
    assert intact.exit_code == 0, intact.output
    chunks = sorted((store / "embeddings" / "c" / str(window)).rglob("*"))
    for chunk in (c for c in chunks if c.is_file()):
        flip_bytes(chunk)

    def one_error_line(app, args: list[str]) -> str:
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (result.output, result.exception)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
        return errors[0]

    said = one_error_line(train_app, ["impute", world.target, "--store", store, "--model", world.model,
                                      "--out", tmp_path / "damaged.vcf.gz", "--device", "cpu"])
    assert said.startswith(f"error: {store}: window {window}: embeddings of window {window} fails its checksum")
    assert "--verify --repair" in said and not (tmp_path / "damaged.vcf.gz").exists()
    said = one_error_line(train_app, ["fit", "--store", store, "--out", tmp_path / "run", *FIT])
    assert said.startswith(f"error: {store}: window {window}: embeddings of window {window} fails its checksum")
    said = one_error_line(prep_app, ["inspect", store, "--verify"])
    assert said.startswith(f"error: {store}: windows {window} fail their checksums")
    said = one_error_line(prep_app, ["inspect", store, "--verify", "--repair"])
    assert f"windows {window} failed their checksums and are now marked unwritten" in said
    assert CliRunner().invoke(prep_app, encode_args).exit_code == 0  # resumes: re-encodes the window
    verified = CliRunner().invoke(prep_app, ["inspect", str(store), "--verify"])
    assert verified.exit_code == 0 and "all match" in verified.stdout, verified.output
    again = CliRunner().invoke(train_app, ["impute", str(world.target), "--store", str(store), "--model",
                                           str(world.model), "--out", str(tmp_path / "again.vcf.gz"), "--device", "cpu"])
    assert again.exit_code == 0
    with gzip.open(tmp_path / "again.vcf.gz") as again_vcf, gzip.open(tmp_path / "intact.vcf.gz") as intact_vcf:
        assert again_vcf.read() == intact_vcf.read()


def test_a_damaged_panel_array_is_named(world, tmp_path):
    store = tmp_path / "panel-damaged.zarr"
    shutil.copytree(world.store, store)
    for chunk in (store / "call_genotype" / "c").rglob("*"):
        if chunk.is_file():
            flip_bytes(chunk)
    result = CliRunner().invoke(train_app, ["impute", str(world.target), "--store", str(store), "--model",
                                            str(world.model), "--out", str(tmp_path / "x.vcf.gz"), "--device", "cpu"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors[0].startswith(f"error: {store}: call_genotype fails its checksum") and "--overwrite" in errors[0]
    info = CliRunner().invoke(prep_app, ["inspect", world.store])
    assert "crc32c on every chunk" in info.stdout


# --- one writer an output -------------------------------------------------------------------------------

HOLD = """
import sys, time
from stores.lock import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("command", ["encode", "fit", "impute"])
def test_a_second_writer_on_one_out_is_refused_and_a_killed_one_blocks_nothing(world, tmp_path, command):
    """A real process holds the output's lock as a running encode, fit or impute does; the command on the same
    --out stops at once with one line naming it and the holder. Killed with SIGKILL, the holder blocks
    nothing: the same command then runs."""
    out = tmp_path / {"encode": "store.zarr", "fit": "run", "impute": "imputed.vcf.gz"}[command]
    args = {"encode": ["-m", "ragprep.cli", "encode", world.panel, "--out", out, *TINY_CLI],
            "fit": ["-m", "ragtrain.cli", "fit", "--store", world.store, "--out", out, *FIT],
            "impute": ["-m", "ragtrain.cli", "impute", world.target, "--store", world.store, "--model", world.model,
                       "--out", out, "--device", "cpu"]}[command]
    env = {**os.environ, "COLUMNS": "250"}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env, check=False)
        assert second.returncode == 2, second.stderr
        error = next(line for line in second.stderr.splitlines() if line.startswith("error: "))
        assert error == (f"error: {out}: another ragsnv process (pid {holder.pid}) is writing it; fix: wait for it "
                         "to finish, or give another --out")
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    after = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env, check=False)
    assert after.returncode == 0, after.stderr
    assert out.exists() and not out.with_name(f"{out.name}.lock").exists()
