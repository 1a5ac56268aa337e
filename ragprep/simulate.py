"""`ragprep simulate`: a phased, bgzipped, indexed panel VCF from msprime via stdpopsim, offline and seeded."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import msprime
import numpy as np
import pysam
import stdpopsim
import tskit

from stores.errors import UserError


def simulate_tree_sequence(samples: int, length: float, seed: int, model: str = "OutOfAfrica_3G09") -> tskit.TreeSequence:
    """Diploid samples split evenly over the model's sampled populations (`constant`: one population, Ne 10,000)."""
    if model == "constant":
        ts = msprime.sim_ancestry(samples, population_size=10_000, sequence_length=length,
                                  recombination_rate=1.3e-8, random_seed=seed)
        return msprime.sim_mutations(ts, rate=1.3e-8, random_seed=seed)
    species = stdpopsim.get_species("HomSap")
    demography = species.get_demographic_model(model)
    contig = species.get_contig(length=length, mutation_rate=demography.mutation_rate)
    populations = [p.name for p in demography.populations if p.default_sampling_time is not None]
    counts = {name: samples // len(populations) + (i < samples % len(populations))
              for i, name in enumerate(populations)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return stdpopsim.get_engine("msprime").simulate(demography, contig, counts, seed=seed)


def individual_populations(ts: tskit.TreeSequence) -> list[str]:
    """Each individual's population name (YRI, CEU, ADMIX, ...; popN without a name)."""
    labels = []
    for ind in ts.individuals():
        population = ts.population(ts.node(ind.nodes[0]).population)
        label = (population.metadata or {}).get("name") if isinstance(population.metadata, dict) else None
        labels.append(label or f"pop{population.id}")
    return labels


def individual_names(ts: tskit.TreeSequence) -> list[str]:
    """Sample ids like YRI_0, CEU_1 (population name and individual index)."""
    return [f"{label}_{i}" for i, label in enumerate(individual_populations(ts))]


def write_vcf(ts: tskit.TreeSequence, out: str | Path, contig: str = "chr22",
              names: list[str] | None = None, keep: np.ndarray | None = None) -> Path:
    """Write a tree sequence as a bgzipped, tabix-indexed VCF (positions 1-based); `keep` selects individuals."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    individuals = np.arange(ts.num_individuals) if keep is None else np.asarray(keep)
    names = names or individual_names(ts)
    fd, plain = tempfile.mkstemp(suffix=".vcf", dir=out.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            ts.write_vcf(handle, contig_id=contig, individuals=individuals,
                         individual_names=[names[i] for i in individuals],
                         position_transform=lambda x: 1 + np.floor(np.asarray(x)).astype(int))
        pysam.tabix_compress(plain, str(out), force=True)
        pysam.tabix_index(str(out), preset="vcf", force=True)
    finally:
        os.unlink(plain)
    return out


def simulate_panel(out: str | Path, samples: int, length: float, seed: int, model: str = "OutOfAfrica_3G09",
                   contig: str = "chr22") -> tuple[Path, tskit.TreeSequence]:
    ts = simulate_tree_sequence(samples, length, seed, model)
    return write_vcf(ts, out, contig), ts


def array_sites(ts: tskit.TreeSequence, reference: np.ndarray, every: int, min_maf: float) -> np.ndarray:
    """Site ids of an array-like subset: every `every`-th biallelic site with MAF >= `min_maf` in the reference
    individuals (AF from the reference panel only, never from the held-out samples)."""
    nodes = np.concatenate([ts.individual(i).nodes for i in reference])
    eligible = []
    for variant in ts.variants(samples=nodes):
        if len(variant.alleles) - (variant.alleles[-1] is None) != 2:
            continue
        af = float(np.mean(variant.genotypes == 1))
        if min(af, 1 - af) >= min_maf:
            eligible.append(variant.site.id)
    return np.asarray(eligible[::every], dtype=np.int64)


def simulate_split(out: str | Path, samples: int, holdout: int, length: float, seed: int,
                   model: str = "OutOfAfrica_3G09", contig: str = "chr22", array_every: int = 10,
                   array_min_maf: float = 0.05, holdout_population: str | None = None) -> dict[str, Path]:
    """A reference panel plus `holdout` held-out samples (drawn from `holdout_population` alone when given,
    e.g. the admixed one): their full genotypes (truth) and an array-like target typed at every
    `array_every`-th common site. Files: OUT, OUT.truth.vcf.gz, OUT.target.vcf.gz."""
    ts = simulate_tree_sequence(samples + holdout, length, seed, model)
    candidates = np.arange(ts.num_individuals)
    if holdout_population is not None:
        populations = np.asarray(individual_populations(ts))
        candidates = np.flatnonzero(populations == holdout_population)
        if candidates.size <= holdout:
            known = ", ".join(sorted(set(populations.tolist())))
            raise UserError("--holdout-population", f"{model} gives {candidates.size} samples of "
                            f"{holdout_population!r} (populations: {known}), and {holdout} are to be held out",
                            "name one of its populations, or raise --samples")
    held = np.sort(np.random.default_rng([seed, 0x401D]).choice(candidates, holdout, replace=False))
    reference = np.setdiff1d(np.arange(ts.num_individuals), held)
    names = individual_names(ts)
    out = Path(out)
    stem = out.name.removesuffix(".gz").removesuffix(".vcf")
    paths = {"panel": write_vcf(ts, out, contig, names, reference),
             "truth": write_vcf(ts, out.with_name(f"{stem}.truth.vcf.gz"), contig, names, held)}
    typed = array_sites(ts, reference, array_every, array_min_maf)
    untyped = np.setdiff1d(np.arange(ts.num_sites), typed)
    paths["target"] = write_vcf(ts.delete_sites(untyped), out.with_name(f"{stem}.target.vcf.gz"), contig, names, held)
    return paths
