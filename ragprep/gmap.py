"""Genetic maps: the genetic position (cM) of every panel site, for the copying model's switch rate."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from stores.errors import UserError
from stores.schema import UNIFORM_CM_PER_BP


def read_genetic_map(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(bp positions, cM) of a map in SHAPEIT/Eagle form (`pos chr cM`, with a header) or PLINK form
    (`chr id cM pos`), plain or gzipped, sorted by position."""
    path = Path(path)
    try:
        with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as handle:
            rows = [line.split() for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise UserError(path, f"cannot read the genetic map ({err})", "give a plain or gzipped text map") from None
    if rows and not _is_number(rows[0][0]):
        rows = rows[1:]  # header
    if not rows:
        raise UserError(path, "the genetic map has no rows", "give a map with `pos chr cM` or `chr id cM pos` rows")
    try:
        if len(rows[0]) == 3:
            bp, cm = (np.array([float(r[i]) for r in rows]) for i in (0, 2))
        else:
            bp, cm = (np.array([float(r[i]) for r in rows]) for i in (3, 2))
    except (ValueError, IndexError):
        raise UserError(path, "rows are neither `pos chr cM` nor `chr id cM pos`",
                        "give a SHAPEIT/Eagle or PLINK genetic map") from None
    if np.any(np.diff(bp) < 0) or np.any(np.diff(cm) < 0):
        raise UserError(path, "positions or cM decrease", "sort the map by position (cM must not decrease)")
    return bp, cm


def genetic_positions(positions: np.ndarray, bp: np.ndarray, cm: np.ndarray) -> np.ndarray:
    """cM of each position: linear between map points, 1 cM/Mb beyond the map's ends."""
    positions = np.asarray(positions, dtype=np.float64)
    out = np.interp(positions, bp, cm)
    out = np.where(positions < bp[0], cm[0] - (bp[0] - positions) * UNIFORM_CM_PER_BP, out)
    return np.where(positions > bp[-1], cm[-1] + (positions - bp[-1]) * UNIFORM_CM_PER_BP, out)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
