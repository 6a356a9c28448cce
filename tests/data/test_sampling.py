"""Epoch planning, distributed sharding, resume position and the centroid cache."""

import os
import time

import numpy as np
import pytest

from attnseg.data.sampling import (
    CentroidTable,
    DistributedPlanSampler,
    EpochPlanner,
    PlannedDataset,
    SampleSpec,
    cached_centroids,
    class_uniform_counts,
    compute_centroids,
    dataset_fingerprint,
    label_centroids,
    tile_origins,
    wrapped_draw,
)


def _labels(num=6, size=16):
    labels = []
    for i in range(num):
        label = np.full((size, size), 255, np.uint8)
        label[: size // 2] = i % 3  # classes 0..2 everywhere
        if i == 4:
            label[-2:, -2:] = 5  # rare class in one image only
        labels.append(label)
    return labels


def test_tile_origins_cover_partial_tiles():
    assert tile_origins(1024, 2048, 1024) == [(0, 0), (0, 1024)]
    assert tile_origins(10, 10, 16) == [(0, 0)]
    assert tile_origins(20, 10, 16) == [(0, 0), (16, 0)]


def test_label_centroids_center_of_mass_per_tile():
    label = np.full((8, 8), 255, np.uint8)
    label[0:2, 0:4] = 3  # centre (0.5, 1.5) -> (0, 1)
    label[6, 6] = 4
    assert sorted(label_centroids(label, 19, 8)) == [(3, 0, 1), (4, 6, 6)]
    # two tiles: a class spanning both gets one centroid in each
    label = np.zeros((4, 8), np.uint8)
    assert sorted(label_centroids(label, 19, 4)) == [(0, 1, 1), (0, 1, 5)]


def test_class_uniform_counts_limits():
    assert class_uniform_counts(100, 0.0, 19) == (0, 100)
    assert class_uniform_counts(2975, 0.5, 19) == (78, 2975 - 78 * 19)
    assert class_uniform_counts(19, 1.0, 19) == (1, 0)


def test_wrapped_draw_wraps_around():
    draw = wrapped_draw(3, 7, np.random.default_rng(0))
    assert sorted(draw[:3]) == [0, 1, 2] and list(draw[3:6]) == list(draw[:3])


def _table(labels):
    return compute_centroids(lambda i: labels[i], len(labels), num_classes=19, tile=8, progress=False)


def test_planner_deterministic_by_seed_and_epoch():
    table = _table(_labels())
    planner = EpochPlanner(num_fine=6, class_uniform_fraction=0.5, num_classes=19, fine_centroids=table, seed=3)
    assert planner.plan(2) == planner.plan(2)
    assert planner.plan(2) != planner.plan(3)
    other = EpochPlanner(num_fine=6, class_uniform_fraction=0.5, num_classes=19, fine_centroids=table, seed=4)
    assert other.plan(2) != planner.plan(2)


def test_class_uniform_plan_centres_on_each_present_class():
    labels = _labels(num=40)
    table = _table(labels)
    planner = EpochPlanner(num_fine=40, class_uniform_fraction=0.95, num_classes=19, fine_centroids=table)
    plan = planner.plan(0)
    per_class, num_random = class_uniform_counts(40, 0.95, 19)  # 2 per class, 2 random
    centred = [s for s in plan if s.centroid_y >= 0]
    present = {0, 1, 2, 5}
    assert len(centred) == per_class * len(present)  # absent classes shorten the epoch
    assert len(plan) == num_random + per_class * len(present)
    hits_class5 = [s for s in centred if labels[s.index][s.centroid_y, s.centroid_x] == 5]
    assert len(hits_class5) == per_class and all(s.index == 4 for s in hits_class5)


def test_equal_coarse_mix_draws_fresh_coarse_each_epoch():
    planner = EpochPlanner(num_fine=10, num_coarse=100, coarse_mix="equal", seed=0)
    plans = [planner.plan(e) for e in range(3)]
    for plan in plans:
        indices = [s.index for s in plan]
        assert sorted(i for i in indices if i < 10) == list(range(10))
        coarse = [i for i in indices if i >= 10]
        assert len(coarse) == 10 and len(set(coarse)) == 10
    assert {s.index for s in plans[0]} != {s.index for s in plans[1]}


def test_boost_mode_coarse_only_via_boosted_classes_and_until_max_epoch():
    fine = _labels(num=40)
    coarse = [np.full((16, 16), 7, np.uint8) for _ in range(5)]
    for c in coarse[:2]:
        c[:4] = 1
    planner = EpochPlanner(num_fine=40, num_coarse=5, coarse_mix="boost", class_uniform_fraction=0.9,
                           num_classes=19, fine_centroids=_table(fine), coarse_centroids=_table(coarse),
                           boost_classes=[7], coarse_max_epoch=2)
    plan = planner.plan(0)
    coarse_specs = [s for s in plan if s.index >= 40]
    assert coarse_specs and all(s.centroid_y >= 0 for s in coarse_specs)
    assert all(coarse[s.index - 40][s.centroid_y, s.centroid_x] == 7 for s in coarse_specs)
    assert all(s.index < 40 for s in planner.plan(2))
    with pytest.raises(ValueError):
        EpochPlanner(num_fine=10, num_coarse=5, coarse_mix="boost")


def test_distributed_shards_union_equals_single_process_batches():
    planner = EpochPlanner(num_fine=23, seed=1)
    single = DistributedPlanSampler(planner, batch_size=4)
    single.set_epoch(1)
    single_batches = [list(single)[i:i + 4] for i in range(0, len(single), 4)]
    shards = []
    for rank in range(2):
        sampler = DistributedPlanSampler(planner, batch_size=2, rank=rank, world_size=2)
        sampler.set_epoch(1)
        shards.append(list(sampler))
    assert len(shards[0]) == len(shards[1]) == 10  # 23 // 4 = 5 global batches
    for k, batch in enumerate(single_batches):
        assert sorted(batch) == sorted(shards[0][2 * k:2 * k + 2] + shards[1][2 * k:2 * k + 2])
    assert not set(shards[0]) & set(shards[1])


def test_sampler_resumes_mid_epoch():
    planner = EpochPlanner(num_fine=20, seed=2)
    sampler = DistributedPlanSampler(planner, batch_size=3)
    sampler.set_epoch(4)
    full = list(sampler)
    sampler.set_epoch(4, start_batch=2)
    assert list(sampler) == full[6:]
    assert len(sampler) == len(full) - 6


def test_planned_dataset_applies_seeded_transform_and_centroid():
    parts = [[{"image": np.zeros((4, 4, 3), np.uint8), "label": np.zeros((4, 4), np.uint8)}] * 2,
             [{"image": np.ones((4, 4, 3), np.uint8), "label": np.ones((4, 4), np.uint8)}]]
    seen = []

    def transform(sample, rng):
        seen.append(sample.get("centroid"))
        return {"image": sample["image"] + rng.integers(0, 100), "label": sample["label"]}

    dataset = PlannedDataset(parts, transform)
    assert len(dataset) == 3
    a = dataset[SampleSpec(2, seed=9, centroid_y=1, centroid_x=2)]
    b = dataset[SampleSpec(2, seed=9)]
    assert a["label"][0, 0] == 1 and np.array_equal(a["image"], b["image"]) and a["index"] == 2
    assert seen == [(1, 2), None]


class _CountingPart:
    """A raw dataset that counts its reads."""

    def __init__(self, count: int):
        self.reads = 0
        self.count = count

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        self.reads += 1
        return {"image": np.full((4, 4, 3), index, np.uint8), "label": np.full((4, 4), index, np.uint8)}


def test_planned_dataset_decodes_each_sample_once_when_caching():
    def transform(sample, rng):
        return {"image": sample["image"] + rng.integers(0, 3), "label": sample["label"]}

    part = _CountingPart(3)
    cached = PlannedDataset([part], transform, cache_decoded=True)
    first = [cached[SampleSpec(i, seed=i)] for i in (0, 1, 2, 1, 0)]
    again = [cached[SampleSpec(i, seed=i)] for i in (0, 1, 2, 1, 0)]
    assert part.reads == 3
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(first, again))
    assert [int(item["label"][0, 0]) for item in again] == [0, 1, 2, 1, 0]

    uncached_part = _CountingPart(3)
    uncached = PlannedDataset([uncached_part], transform)
    assert all(np.array_equal(uncached[SampleSpec(i, seed=i)]["image"], a["image"]) for i, a in zip((0, 1, 2), first))
    assert uncached_part.reads == 3
    uncached[SampleSpec(0, seed=0)]
    assert uncached_part.reads == 4


def test_cached_samples_cannot_be_changed_by_a_transform():
    def in_place(sample, rng):
        sample["image"] += 1
        return sample

    dataset = PlannedDataset([_CountingPart(1)], in_place, cache_decoded=True)
    with pytest.raises(ValueError, match="read-only"):
        dataset[SampleSpec(0, seed=0)]


def test_centroid_cache_keyed_by_content(tmp_path):
    files = []
    for i in range(3):
        path = tmp_path / f"l{i}.png"
        path.write_bytes(b"x" * (i + 1))
        files.append(path)
    key = dataset_fingerprint(files, 19, 8)
    calls = []

    def compute():
        calls.append(1)
        return CentroidTable.from_rows([(0, 1, 2, 3)])

    cache = tmp_path / "cache"
    table = cached_centroids(cache, key, compute)
    again = cached_centroids(cache, key, compute)
    assert len(calls) == 1 and np.array_equal(table.items, again.items)
    assert dataset_fingerprint(files, 19, 16) != key  # tile size is part of the key
    time.sleep(0.01)
    files[1].write_bytes(b"yy")  # same size, new mtime
    os.utime(files[1], ns=(time.time_ns(), time.time_ns() + 10**9))
    assert dataset_fingerprint(files, 19, 8) != key
    assert dataset_fingerprint(files[:2], 19, 8) != key


def test_parallel_centroids_equal_serial():
    labels = _labels(num=8)
    serial = _table(labels)
    parallel = compute_centroids(lambda i: labels[i], 8, num_classes=19, tile=8, workers=2, progress=False)
    order_s = np.lexsort((serial.xs, serial.ys, serial.class_ids, serial.items))
    order_p = np.lexsort((parallel.xs, parallel.ys, parallel.class_ids, parallel.items))
    for name in ("items", "class_ids", "ys", "xs"):
        np.testing.assert_array_equal(getattr(serial, name)[order_s], getattr(parallel, name)[order_p])


def test_centroid_cache_every_rank_reaches_the_barrier_even_when_the_file_appears_early(tmp_path):
    """The race behind a torchrun hang under load: the other rank looked at the cache after rank 0 had written it,
    skipped the barrier rank 0 was waiting at, and the two deadlocked at their next collective operations."""
    import threading

    barrier = threading.Barrier(2, timeout=10)
    saved = threading.Event()
    results, errors = {}, []

    def writer_barrier():  # rank 0 reaches its barrier with the file saved
        saved.set()
        barrier.wait()

    def rank(is_writer):
        try:
            if not is_writer:
                saved.wait(10)  # a late rank: the file is already there when it looks
            table = cached_centroids(tmp_path, "key", lambda: CentroidTable.from_rows([(0, 1, 2, 3)]),
                                     is_writer=is_writer, barrier=writer_barrier if is_writer else barrier.wait)
            results[is_writer] = table.items
        except threading.BrokenBarrierError as error:
            errors.append(error)

    threads = [threading.Thread(target=rank, args=(flag,)) for flag in (True, False)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors and np.array_equal(results[True], results[False])
