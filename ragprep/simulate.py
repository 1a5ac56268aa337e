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


def simulate_tree_sequence(samples: int, length: float, seed: int, model: str = "OutOfAfrica_3G09") -> tskit.TreeSequence:
    """Diploid samples split evenly over the model's populations (`constant`: one population, Ne 10,000)."""
    if model == "constant":
        ts = msprime.sim_ancestry(samples, population_size=10_000, sequence_length=length,
                                  recombination_rate=1.3e-8, random_seed=seed)
        return msprime.sim_mutations(ts, rate=1.3e-8, random_seed=seed)
    species = stdpopsim.get_species("HomSap")
    demography = species.get_demographic_model(model)
    contig = species.get_contig(length=length, mutation_rate=demography.mutation_rate)
    populations = [p.name for p in demography.populations if p.default_sampling_time is not None][:3]
    counts = {name: samples // len(populations) + (i < samples % len(populations))
              for i, name in enumerate(populations)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return stdpopsim.get_engine("msprime").simulate(demography, contig, counts, seed=seed)


def individual_names(ts: tskit.TreeSequence) -> list[str]:
    """Sample ids like YRI_0, CEU_1 (population name and individual index)."""
    names = []
    for ind in ts.individuals():
        population = ts.population(ts.node(ind.nodes[0]).population)
        label = (population.metadata or {}).get("name") if isinstance(population.metadata, dict) else None
        names.append(f"{label or 'pop' + str(population.id)}_{ind.id}")
    return names


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
