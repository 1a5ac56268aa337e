"""Window-major batches of query haplotypes with their retrieved neighbours, prefetched in a thread or in worker processes.

One batch = one window and a block of query haplotypes. The query's mask (from seed, epoch, sample, window)
hides sites from the model AND from its retrieval key: both are built from the same masked alleles. The
neighbours' stored embeddings are read from the store for that window only; a background thread builds the
next batches (numpy, FAISS, store reads, and the copying model on the training device) while the device trains
on the current one. Worker processes never touch CUDA: their copying model runs on the CPU.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

import numpy as np
import torch

from ragprep.model import PAD
from ragprep.progress import StageClock
from ragprep.windows import pad_window
from ragtrain.hmm import WEIGHT_BUCKETS, CopyingPass, copying, weight_buckets
from ragtrain.masking import MaskSpec, apply_mask, mask_for
from ragtrain.retrieval import RetrievalSpec, WindowIndex, local_nearest, match_buckets, own_haplotypes
from stores import EmbeddingStore
from stores.errors import UserError
from stores.plan import WindowPlan

IGNORE = -100  # label of sites that are not scored


@dataclass
class QuerySet:
    """Query haplotypes in the panel's site order, with the panel haplotypes each must never retrieve."""

    alleles: np.ndarray  # int8 [Q, V]: 0/1, -1 where unknown (not scored, not observed)
    sample_key: np.ndarray  # int64 [Q]: the sample's mask key (both haplotypes of a sample share a mask)
    exclude: np.ndarray  # int64 [Q, m]: panel haplotype ids to exclude from retrieval (self-sample)

    def __len__(self) -> int:
        return int(self.alleles.shape[0])

    def take(self, rows: np.ndarray) -> QuerySet:
        return QuerySet(self.alleles[rows], self.sample_key[rows], self.exclude[rows])


def panel_queries(panel_alleles: np.ndarray, samples: np.ndarray) -> QuerySet:
    """Both haplotypes of the given panel samples as queries, each excluding its own sample's haplotypes."""
    own = own_haplotypes(np.repeat(samples, 2))
    return QuerySet(panel_alleles[own[0::2].reshape(-1)], np.repeat(samples, 2), own)


def external_queries(alleles: np.ndarray, sample_ids: np.ndarray, panel_ids: np.ndarray, key_offset: int = 0) -> QuerySet:
    """Haplotypes of samples from another VCF (alleles int8 [V, 2N], panel site order) as queries; a sample
    that is also in the panel (same id) never retrieves its own panel haplotypes. Mask keys start at
    `key_offset`, so they can be kept apart from the panel's."""
    panel_index = {sid: i for i, sid in enumerate(panel_ids)}
    owner = np.repeat(np.array([panel_index.get(sid, -1) for sid in sample_ids], dtype=np.int64), 2)
    exclude = np.where(owner[:, None] >= 0, own_haplotypes(owner), -1)
    keys = np.repeat(np.arange(len(sample_ids), dtype=np.int64), 2) + key_offset
    return QuerySet(np.ascontiguousarray(alleles.T), keys, exclude)


def split_samples(n_samples: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) sample indices, split by sample (never by haplotype), seeded, each sorted."""
    order = np.random.default_rng([seed, 0x5B17]).permutation(n_samples)
    n_val = round(val_fraction * n_samples) if val_fraction > 0 else 0
    n_val = min(max(n_val, 1 if val_fraction > 0 else 0), n_samples - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@dataclass
class Batch:
    window: int
    query_ids: np.ndarray  # int64 [B] rows of the QuerySet
    tokens: torch.Tensor  # int64 [B, L]
    af: torch.Tensor  # float32 [B, L]
    valid: torch.Tensor  # bool [B, L]
    labels: torch.Tensor  # int64 [B, L], IGNORE where not scored
    neighbour_ids: np.ndarray | None = None  # int64 [B, k] panel haplotypes retrieved
    neighbour_tokens: torch.Tensor | None = None  # int64 [B, k, L]
    memory: torch.Tensor | None = None  # float16 or int8 [B, k, L, d_mem]
    memory_scales: torch.Tensor | None = None  # float16 [B, k, L] for int8 memory
    neighbour_match: torch.Tensor | None = None  # int64 [B, k, L] match-length buckets (retrieval.match_buckets)
    copy_prob: torch.Tensor | None = None  # float32 [B, L]: the copying model's P(ALT) (0.5 at padding)
    neighbour_weight: torch.Tensor | None = None  # int64 [B, k, L] copying-probability buckets (hmm.weight_buckets)

    def to(self, device: torch.device) -> Batch:
        """Move tensors to `device` (int8 memory stays int8: 4x less host-to-device traffic; the model
        dequantises what it reads)."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device, non_blocking=True)
        return Batch(**moved)

    def split(self, rows: int) -> list[Batch]:
        """The batch in parts of at most `rows` queries, in order (every tensor and id array sliced)."""
        size = len(self.query_ids)
        if rows >= size:
            return [self]
        parts = []
        for start in range(0, size, rows):
            part = slice(start, start + rows)
            parts.append(Batch(**{f.name: value if f.name == "window" or value is None else value[part]
                                  for f in fields(self) for value in (getattr(self, f.name),)}))
        return parts

    def pin_memory(self) -> Batch:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                setattr(self, f.name, value.pin_memory())
        return self


class PanelAlleles:
    """The panel's alleles int8 [H, sites], whole (an array in memory) or read from the store one span at a time
    (`call_genotype` is chunked by variants): then memory grows with the span, not with the panel."""

    def __init__(self, store: EmbeddingStore, alleles: np.ndarray | None = None) -> None:
        self.store, self.whole = store, alleles
        self.n_haplotypes = store.n_haplotypes
        self._span, self._alleles = slice(0, 0), np.zeros((self.n_haplotypes, 0), dtype=np.int8)

    def span(self, sites: slice) -> np.ndarray:
        """int8 [H, n] at `sites`: a view of the last span read when it holds them (a window of its segment)."""
        if self.whole is not None:
            return self.whole[:, sites]
        if not self._span.start <= sites.start <= sites.stop <= self._span.stop:
            self._span, self._alleles = sites, self.store.alleles(sites)
        return self._alleles[:, sites.start - self._span.start:sites.stop - self._span.start]


class BatchBuilder:
    """Builds batches for one store and query set.

    mask: training masks drawn per (seed, epoch, sample, window) over the key span; typed: bool [sites], the
    sites a target file types (`ragtrain fit --targets`): every other site is hidden, as impute will see it
    (wins over `mask`); neither at inference, where the queries' untyped sites are already -1. panel_alleles:
    the whole panel in memory, or None to read one key span at a time from the store. device: where the
    copying model runs. `clock` sums the seconds of each stage (batches in all; within them state selection,
    copying model, store reads).

    The copying model runs once per segment and block of queries: consecutive batches of the same queries in
    the windows of one segment, observing the same sites (impute, validation, `--targets`), read one pass.
    """

    def __init__(self, store: EmbeddingStore, panel_alleles: np.ndarray | None, queries: QuerySet, *,
                 retrieval: RetrievalSpec, rag_mode: str, mask: MaskSpec | None = None, seed: int = 0,
                 typed: np.ndarray | None = None, clock: StageClock | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.store, self.panel, self.queries = store, PanelAlleles(store, panel_alleles), queries
        self.retrieval, self.rag_mode, self.mask, self.seed, self.typed = retrieval, rag_mode, mask, seed, typed
        self.clock = clock or StageClock()
        self.device = torch.device(device)
        self._index: WindowIndex | None = None  # the last span's Hamming index, and what it was built from
        self._index_key: tuple | None = None
        self._pass: CopyingPass | None = None  # the last copying pass, and what it was run on
        self._pass_key: tuple | None = None
        self._key: tuple | None = None  # without masks drawn per window: the last key span's alleles, and whose
        most = store.n_haplotypes - queries.exclude.shape[1]
        if retrieval.k > most:
            raise UserError("--k", f"cannot retrieve k={retrieval.k} neighbours from {store.n_haplotypes} reference "
                            f"haplotypes when {queries.exclude.shape[1]} are excluded per query",
                            f"lower --k to at most {most}")
        self.plan = store.plan
        self.cm = store.genetic_positions()

    def key_span(self, window: int) -> slice:
        """The window's segment plus the flank each side: the sites masks are drawn over, whose observed alleles
        make the retrieval key, and that the copying model runs over."""
        return self.plan.key_span(window, self.retrieval.flank, self.retrieval.segment)

    def masks(self, epoch: int, window: int, query_ids: np.ndarray) -> np.ndarray:
        """bool [B, key span]: True where the query's site is hidden (scored inside the window); none hidden
        without a MaskSpec."""
        span = self.key_span(window)
        if self.typed is not None:
            return np.repeat(~self.typed[None, span], len(query_ids), axis=0)
        if self.mask is None:
            return np.zeros((len(query_ids), span.stop - span.start), dtype=bool)
        af = self.store.af[span]
        by_sample: dict[int, np.ndarray] = {}
        rows = []
        for q in query_ids:
            key = int(self.queries.sample_key[q])
            if key not in by_sample:
                by_sample[key] = mask_for(self.mask, self.seed, epoch, key, window, af)
            rows.append(by_sample[key])
        return np.stack(rows)

    def build(self, epoch: int, window: int, query_ids: np.ndarray, scored: bool = True) -> Batch:
        """One window's batch; `scored` False leaves every label IGNORE (a rank's stand-in share, see fit)."""
        with self.clock.stage("batches"):
            return self._build(epoch, window, query_ids, scored)

    def key_alleles(self, epoch: int, window: int, query_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(truth, hidden, observed) [B, key span] of the queries: read once for every window of a segment when
        no mask is drawn per window (impute, validation, `--targets`)."""
        key_span = self.key_span(window)
        key = (key_span.start, key_span.stop, np.asarray(query_ids).tobytes())
        if self.mask is None and self._key is not None and self._key[0] == key:
            return self._key[1]
        truth, hidden = self.queries.alleles[query_ids, key_span], self.masks(epoch, window, query_ids)
        alleles = (truth, hidden, apply_mask(truth, hidden))
        self._key = (key, alleles)
        return alleles

    def _build(self, epoch: int, window: int, query_ids: np.ndarray, scored: bool) -> Batch:
        span, key_span = self.plan.sites(window), self.key_span(window)
        key_truth, key_hidden, key_observed = self.key_alleles(epoch, window, query_ids)
        inside = slice(span.start - key_span.start, span.stop - key_span.start)
        truth, hidden, observed = key_truth[:, inside], key_hidden[:, inside], key_observed[:, inside]
        tokens, af, valid = pad_window(observed, self.store.af[span], self.plan.length)
        labels = np.full(tokens.shape, IGNORE, dtype=np.int64)
        n = truth.shape[1]
        labels[:, :n] = np.where(hidden & (truth >= 0) & scored, truth, IGNORE)
        b, k = len(query_ids), self.retrieval.k
        batch = Batch(window, np.asarray(query_ids), torch.from_numpy(tokens),
                      torch.from_numpy(af).expand(b, -1).contiguous(),
                      torch.from_numpy(valid).expand(b, -1).contiguous(), torch.from_numpy(labels))
        ids = None
        if self.retrieval.selection == "copying":
            ids = self.copy(batch, window, inside, key_observed, query_ids)
        if self.rag_mode == "none":
            return batch
        if ids is None:
            ids = self.retrieve(window, key_observed, query_ids)
        batch.neighbour_ids = ids
        neighbours = np.full((b, k, self.plan.length), PAD, dtype=np.int64)
        neighbours[:, :, :n] = self.panel.span(span)[ids]
        batch.neighbour_tokens = torch.from_numpy(neighbours)
        if self.retrieval.match_features:
            match = np.zeros((b, k, self.plan.length), dtype=np.int64)
            match[:, :, :n] = match_buckets(key_observed, self.panel.span(key_span)[ids], within=inside)
            batch.neighbour_match = torch.from_numpy(match)
        if self.rag_mode == "precomputed":
            with self.clock.stage("store reads"):
                block = self.store.read_neighbours(window, ids.reshape(-1))
            batch.memory = torch.from_numpy(block.values.reshape(b, k, self.plan.length, -1))
            if block.scales is not None:
                batch.memory_scales = torch.from_numpy(block.scales.reshape(b, k, self.plan.length))
        return batch

    def copying_pass(self, window: int, key_observed: np.ndarray, query_ids: np.ndarray) -> CopyingPass:
        """The copying model of these queries over the window's key span: run once, and read again by every
        later window of the same segment that the same queries observe alike."""
        key_span = self.key_span(window)
        key = (key_span.start, key_span.stop, np.asarray(query_ids).tobytes())
        if self._pass_key is not None and self._pass_key[0] == key and (
                self._pass_key[1] is key_observed or np.array_equal(self._pass_key[1], key_observed)):
            return self._pass
        panel = self.panel.span(key_span)
        exclude = self.queries.exclude[query_ids]
        n_hap, b = panel.shape[0], len(query_ids)
        if 0 < self.retrieval.states < n_hap - exclude.shape[1]:
            with self.clock.stage("state selection"):
                states, allowed = self.select_states(window, key_observed, query_ids)
            states, allowed = torch.from_numpy(states), torch.from_numpy(allowed).to(self.device)
        else:  # every haplotype a state, less the query's own sample
            states = torch.arange(n_hap).expand(b, -1)
            allowed = torch.ones((b, n_hap + 1), dtype=torch.bool)
            allowed[torch.arange(b)[:, None], torch.from_numpy(np.where(exclude >= 0, exclude, n_hap))] = False
            allowed = allowed[:, :n_hap].to(self.device)
        with self.clock.stage("copying model"):
            self._pass = copying(torch.from_numpy(panel).to(self.device), torch.from_numpy(key_observed).to(self.device),
                                 torch.from_numpy(self.cm[key_span]).to(self.device), states.to(self.device), allowed,
                                 ne=self.retrieval.ne, mismatch=self.retrieval.mismatch)
        self._pass_key = (key, key_observed)  # never written to: the batch copies what it takes
        return self._pass

    def select_states(self, window: int, observed: np.ndarray, query_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each query's states over the window's key span: its `states` nearest haplotypes by Hamming distance over
        all its observed sites there, and, for every window-length block of the span, its `local_states` nearest
        over the block and `local_flank` observed sites each side (haplotypes that match it well somewhere, as
        IMPUTE5's and Beagle's local matches do), own sample excluded; at most 2 x `states` of them (the nearest
        over the span first). Distinct ids in ascending order, padded with disallowed states to that one width
        for every query, so that no query's sums depend on the others': int64 [B, N] states, bool [B, N] allowed."""
        spec, exclude = self.retrieval, self.queries.exclude[query_ids]
        picks = [self.nearest(window, observed, query_ids, spec.states)]
        count = min(spec.local_states, self.store.n_haplotypes - exclude.shape[1])
        if count > 0:
            picks.append(local_nearest(self.panel.span(self.key_span(window)), observed, count, self.plan.length,
                                       spec.local_flank, exclude))
        picked = np.concatenate(picks, axis=1)  # nearest over the span first, then each block's
        width = min(2 * spec.states, self.store.n_haplotypes)  # the same for every query: sums round alike
        states = np.zeros((len(query_ids), width), dtype=np.int64)
        allowed = np.zeros((len(query_ids), width), dtype=bool)
        for row, ids in enumerate(picked):
            _, first = np.unique(ids, return_index=True)
            mine = np.sort(ids[np.sort(first)[:width]])  # the first `width` distinct, in id order
            states[row, :mine.size], allowed[row, :mine.size] = mine, True
            states[row, mine.size:] = mine[0]
        return states, allowed

    def copy(self, batch: Batch, window: int, inside: slice, key_observed: np.ndarray,
             query_ids: np.ndarray) -> np.ndarray | None:
        """Read the window from its segment's copying pass: set batch.copy_prob and batch.neighbour_weight, and
        return the k haplotypes [B, k] each query copies most inside the window (ties: the nearer state by
        Hamming); without retrieval (rag_mode none) only copy_prob."""
        result = self.copying_pass(window, key_observed, query_ids)
        b, n, length, k = len(query_ids), inside.stop - inside.start, self.plan.length, self.retrieval.k
        with self.clock.stage("copying model"):
            window_alleles = torch.from_numpy(self.panel.span(self.plan.sites(window))).to(self.device)
            at = result.at(inside)
            prob = torch.full((b, length), 0.5, dtype=torch.float32)
            prob[:, :n] = at.alt_probability(window_alleles, None if result.every_haplotype else result.states).cpu()
            batch.copy_prob = prob
            if self.rag_mode == "none":  # no neighbours to choose or describe
                return None
            chosen = at.most_copied(k)  # [B, k]
            weight = torch.full((b, k, length), WEIGHT_BUCKETS - 1, dtype=torch.int64)
            weight[:, :, :n] = weight_buckets(at.weights(chosen)).cpu()
            ids = result.states.gather(1, chosen).cpu().numpy()
        batch.neighbour_weight = weight
        return ids.astype(np.int64)

    def retrieve(self, window: int, observed: np.ndarray, query_ids: np.ndarray) -> np.ndarray:
        """int64 [B, k] panel haplotype ids nearest each masked query over its observed key-span sites."""
        return self.nearest(window, observed, query_ids, self.retrieval.k)

    def nearest(self, window: int, observed: np.ndarray, query_ids: np.ndarray, count: int) -> np.ndarray:
        """int64 [B, count] panel haplotypes nearest each query by Hamming distance over its observed key-span
        sites, its own sample excluded (exact; ties by lower id)."""
        columns = np.flatnonzero((observed >= 0).any(axis=0))  # hidden sites score 0 for every haplotype
        span = self.key_span(window)
        key = (span.start, span.stop, columns.tobytes())
        if self._index_key != key:  # a segment's batches mostly observe the same sites: one index for them
            self._index = WindowIndex(self.panel.span(span)[:, columns], backend=self.retrieval.backend)
            self._index_key = key
        ids, _ = self._index.search(observed[:, columns], count, exclude=self.queries.exclude[query_ids])
        return ids


WINDOWS_A_PASS = 8
"""Training batches of one block of queries in a row (windows of one segment): they share one copying pass."""


def epoch_plan(plan: WindowPlan, segment: int, n_queries: int, batch_size: int, seed: int,
               epoch: int, flank: int = 0) -> list[tuple[int, np.ndarray]]:
    """(window, query ids) for every batch of an epoch, each (window, query) once: the windows in shuffled groups
    of WINDOWS_A_PASS from one segment; within a group, the queries shuffled into blocks, each block's batches
    over the group's windows in a row (so one copying pass serves them when the queries observe alike)."""
    rng = np.random.default_rng([seed, epoch, 0xE90C])
    groups, window = [], 0
    while window < plan.n_windows:
        windows = plan.segment_windows(window, segment, flank)
        shuffled = rng.permutation(np.asarray(windows))
        groups += [shuffled[i:i + WINDOWS_A_PASS] for i in range(0, len(shuffled), WINDOWS_A_PASS)]
        window = windows.stop
    items = []
    for g in rng.permutation(len(groups)):
        order = rng.permutation(n_queries)
        for i in range(0, n_queries, batch_size):
            items.extend((int(w), order[i:i + batch_size]) for w in groups[g])
    return items


def inference_plan(plan: WindowPlan, segment: int, n_queries: int, batch_size: int,
                   flank: int = 0) -> list[tuple[int, np.ndarray]]:
    """Every window for every query (impute and validation): segment by segment, a block of queries at a time,
    its windows in order, so the copying model runs once per segment and block."""
    order, items, window = np.arange(n_queries), [], 0
    while window < plan.n_windows:
        windows = plan.segment_windows(window, segment, flank)
        for i in range(0, n_queries, batch_size):
            items.extend((w, order[i:i + batch_size]) for w in windows)
        window = windows.stop
    return items


@contextmanager
def cores_shared(device: torch.device) -> Iterator[None]:
    """Fit on the CPU: the training step's torch ops take half of torch's threads, the batch builder beside it
    (a thread, whose ops take the same half, or worker processes) the rest, so that the two run side by side
    instead of over-subscribing one pool (torch's pool is one a process). The same count either way, so the same
    sums and the same output with or without workers. Impute on the CPU builds each batch in the network's own
    thread instead (`Prefetcher` background False): each has every core in turn."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // 2))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Prefetcher:
    """Builds batches ahead of the consumer, in order, and records how long the consumer waited.

    background False: none ahead, each built in the consumer's thread when it asks (impute on the CPU: the
    builder and the network then take every core in turn, where side by side on 2 cores they slowed each other
    down, `make compare-real`'s batches and network 11.9 -> 8.4 s, the same output). workers 0: one background
    thread, `depth` batches ahead. workers N: N processes of a torch DataLoader (forked, so they share the panel),
    worker w building items w, w + N, ...; the loader takes them round-robin, so the batches arrive in the same
    order, and are the same batches, as from the thread. The stage seconds each batch took are added to the
    builder's clock here.
    """

    def __init__(self, builder: BatchBuilder, items: Iterable[tuple], depth: int = 4,
                 pin: bool = False, workers: int = 0, background: bool = True) -> None:
        self.builder, self.items, self.pin, self.workers = builder, iter(items), pin, workers
        self.wait_seconds = 0.0
        self._loader: Iterator | None = None
        self.background = background or workers > 0
        if not self.background:
            return
        if workers:
            loader = torch.utils.data.DataLoader(_BatchStream(builder, items), batch_size=None, num_workers=workers,
                                                 pin_memory=pin, prefetch_factor=depth, worker_init_fn=_one_thread)
            self._loader = iter(loader)
            return
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def _work(self) -> None:
        try:
            for item in self.items:
                if self._stop.is_set():
                    return
                batch = self.builder.build(*item)
                self.queue.put(batch.pin_memory() if self.pin else batch)
        except BaseException as err:  # noqa: BLE001 - surface worker errors in the consumer
            self.queue.put(err)
            return
        self.queue.put(None)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            t0 = time.perf_counter()
            item = self._next()
            if self.background:  # else the consumer built it: no wait
                self.wait_seconds += time.perf_counter() - t0
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _next(self) -> Batch | BaseException | None:
        if not self.background:
            item = next(self.items, None)
            return None if item is None else self.builder.build(*item)
        if not self.workers:
            return self.queue.get()
        if self._loader is None:  # closed
            return None
        try:
            batch, seconds = next(self._loader)
        except StopIteration:
            return None
        for name, value in seconds.items():
            self.builder.clock.add(name, value)
        return batch

    def close(self) -> None:
        if not self.background:
            return
        if self.workers:
            self._loader = None  # the DataLoader iterator shuts its workers down when dropped
            return
        self._stop.set()
        while self.thread.is_alive():
            try:
                self.queue.get_nowait()
            except queue.Empty:
                self.thread.join(timeout=0.05)


class _BatchStream(torch.utils.data.IterableDataset):
    """A DataLoader worker's share of the items: (batch, seconds of each stage it took to build)."""

    def __init__(self, builder: BatchBuilder, items: Iterable[tuple]) -> None:
        self.builder, self.items = builder, items

    def __iter__(self) -> Iterator[tuple[Batch, dict[str, float]]]:
        worker = torch.utils.data.get_worker_info()
        clock = self.builder.clock
        for item in itertools.islice(self.items, worker.id, None, worker.num_workers):
            before = dict(clock.seconds)
            batch = self.builder.build(*item)
            yield batch, {name: value - before.get(name, 0.0) for name, value in clock.seconds.items()}


def _one_thread(_: int) -> None:
    """In a worker: one OpenMP thread for FAISS too (the DataLoader sets torch's), many workers side by side."""
    try:
        import faiss
    except ImportError:
        return
    faiss.omp_set_num_threads(1)
