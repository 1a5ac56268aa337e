"""Fuzzing the VCF readers, run by tests/test_fuzz.py in its own process (so that a crash in htslib shows as a
failed test, not a dead pytest): seeded mutations of a valid VCF, each read by the panel, target and truth
readers; every read must return or raise UserError (what the CLIs print as one line and exit 2).

usage: python tests/fuzz_readers.py VALID.vcf.gz STORE CASES SEED WORKDIR
"""

from __future__ import annotations

import gzip
import random
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pysam

from ragprep.vcf import read_panel
from ragtrain.evaluate import read_truth
from ragtrain.targets import load_targets
from stores import UserError, open_store


def mutate(lines: list[str], rng: random.Random) -> list[str]:
    """One or two changes a corrupt file, a bad export or a hand edit makes."""
    lines = list(lines)
    for _ in range(rng.randint(1, 2)):
        header = [i for i, line in enumerate(lines) if line.startswith("#")]
        records = [i for i, line in enumerate(lines) if not line.startswith("#")]
        kind = rng.randrange(12)
        i = rng.choice(records) if records else 0
        fields = lines[i].split("\t") if records else []
        if kind == 0 and records:  # a field's text replaced by junk
            j = rng.randrange(len(fields))
            fields[j] = rng.choice(["", ".", "-1", "99999999999999999999", "A,,C", "<DEL>", "0|", "|", "./.", "1/2/3",
                                   "x" * rng.randint(1, 300), "\x00", "NaN", "*", "0|1:5", "2|3"])
            lines[i] = "\t".join(fields)
        elif kind == 1 and records:  # two columns swapped
            a, b = rng.randrange(len(fields)), rng.randrange(len(fields))
            fields[a], fields[b] = fields[b], fields[a]
            lines[i] = "\t".join(fields)
        elif kind == 2 and records:  # a column too many or too few
            lines[i] = "\t".join(fields[:-1] if rng.random() < 0.5 else [*fields, rng.choice(fields)])
        elif kind == 3:  # the text cut anywhere
            text = "\n".join(lines)
            lines = text[:rng.randrange(len(text) + 1)].split("\n")
        elif kind == 4:  # a header line dropped (##fileformat, a ##contig, #CHROM ...)
            if header:
                del lines[rng.choice(header)]
        elif kind == 5:  # an odd header line
            lines.insert(rng.choice(header) if header else 0, rng.choice([
                "##contig=<ID=chr22,length=-5>", "##FORMAT=<ID=GT,Number=2,Type=Float,Description=\"x\">",
                "##INFO=<ID=AF,Number=A,Type=Integer>", "#CHROM\tPOS", "##fileformat=VCFv9.9", "garbage", ""]))
        elif kind == 6 and records:  # records out of order, or one repeated
            j = rng.choice(records)
            lines[i], lines[j] = lines[j], lines[i]
            if rng.random() < 0.5:
                lines.insert(i, lines[i])
        elif kind == 7 and records:  # bytes flipped in a record
            data = bytearray(lines[i].encode())
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            lines[i] = data.decode("utf-8", errors="replace")
        elif kind == 8 and records:  # ploidy, phase or allele indices changed in one sample
            j = rng.randrange(9, len(fields)) if len(fields) > 9 else len(fields) - 1
            fields[j] = rng.choice(["0", "1", "0/1", "1|0|1", "3|0", "0|-1", ".|.", "0|1|", "1 |0"])
            lines[i] = "\t".join(fields)
        elif kind == 9:  # a sample column name repeated or emptied
            chrom = next((k for k, line in enumerate(lines) if line.startswith("#CHROM")), None)
            if chrom is not None:
                names = lines[chrom].split("\t")
                if len(names) > 10:
                    names[-1] = rng.choice([names[-2], ""])
                lines[chrom] = "\t".join(names)
        elif kind == 10:  # windows line ends, or none at the end
            lines = [line + "\r" for line in lines] if rng.random() < 0.5 else lines
        elif kind == 11:  # every record removed
            lines = [line for line in lines if line.startswith("#")]
    return lines


def write(lines: list[str], path: Path, rng: random.Random) -> Path:
    """Plain text, bgzipped, or bgzipped and then damaged in its compressed bytes."""
    text = ("\n".join(lines) + ("\n" if rng.random() < 0.8 else "")).encode("utf-8", errors="replace")
    style = rng.randrange(3)
    if style == 0:
        path = path.with_suffix(".vcf")
        path.write_bytes(text)
        return path
    plain = path.with_suffix(".txt")
    plain.write_bytes(text)
    pysam.tabix_compress(str(plain), str(path), force=True)
    plain.unlink()
    if style == 2:
        data = bytearray(path.read_bytes())
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
    return path


def main() -> int:
    valid, store_url, cases, seed, workdir = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
    with gzip.open(valid, "rt") as handle:
        lines = handle.read().splitlines()
    store = open_store(store_url)
    readers: dict[str, Callable[[str], object]] = {
        "panel": read_panel, "target": lambda p: load_targets(p, store), "truth": read_truth}
    pysam.set_verbosity(0)  # htslib's own warnings on stderr are not what is tested
    failures = 0
    for name, reader in readers.items():
        rng = random.Random(f"{seed}-{name}")
        for case in range(cases):
            path = write(mutate(lines, rng), workdir / f"{name}-{case}.vcf.gz", rng)
            try:
                reader(str(path))
            except UserError:
                pass
            except Exception:  # noqa: BLE001 - anything else is what this hunts
                failures += 1
                print(f"FAIL {name} case {case} ({path}):\n{traceback.format_exc()}", flush=True)
            path.unlink()
    print(f"{3 * cases} cases, {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
