import torch

from mmcl.memory import RehearsalMemory, herding, quotas


def test_herding_picks_mean_approximating_samples():
    # the first chosen sample is the one closest to the class mean
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.1]])
    order = herding(f, 4)
    assert order[0] == 2
    assert sorted(order) == [0, 1, 2, 3]
    assert herding(f, 0) == []


def test_quotas_balanced():
    q = quotas([(c,) for c in range(16)], 200)
    assert sum(q.values()) == 200 and max(q.values()) - min(q.values()) <= 1


def _fill(mem, classes, per_class=60, offset=0, domain=None):
    groups, feats = {}, {}
    for c in classes:
        key = (c,) if domain is None else (domain, c)
        groups[key] = torch.arange(per_class) + offset + 1000 * c
        feats[key] = torch.randn(per_class, 8)
    mem.update(groups, feats)


def test_memory_stays_within_size_and_class_balanced():
    torch.manual_seed(0)
    mem = RehearsalMemory(200, "herding")
    for t in range(4):
        _fill(mem, range(4 * t, 4 * t + 4))
        assert len(mem) <= 200
        counts = [len(v) for v in mem.groups.values()]
        assert max(counts) - min(counts) <= 1
        assert len(mem.groups) == 4 * (t + 1)
    assert len(mem) == 200  # 16 classes x 12.5 -> 8 classes of 13 and 8 of 12
    idx = mem.indices()
    assert len(set(idx.tolist())) == len(idx)


def test_shrinking_keeps_the_first_selected():
    mem = RehearsalMemory(8, "herding")
    _fill(mem, [0, 1])
    first = list(mem.groups[(0,)])
    _fill(mem, [2, 3])
    assert mem.groups[(0,)] == first[:2]


def test_domain_class_balance_and_random_selection():
    mem = RehearsalMemory(30, "random")
    g = torch.Generator().manual_seed(0)
    for d in range(3):
        groups = {(d, c): torch.arange(20) + 100 * (10 * d + c) for c in range(4)}
        mem.update(groups, None, g)
    counts = [len(v) for v in mem.groups.values()]
    assert len(mem) == 30 and max(counts) - min(counts) <= 1 and len(mem.groups) == 12


def test_sample_and_state_roundtrip():
    mem = RehearsalMemory(10, "herding")
    _fill(mem, [0, 1])
    mem.set_outputs(torch.randn(10, 2), torch.randn(10, 4))
    idx, pos = mem.sample(4, torch.Generator().manual_seed(1))
    assert torch.equal(mem.indices()[pos], idx) and len(set(idx.tolist())) == 4
    meta, tensors = mem.state()
    other = RehearsalMemory()
    other.load(meta, tensors)
    assert torch.equal(other.indices(), mem.indices()) and torch.equal(other.old_z, mem.old_z)


def test_small_groups_leave_their_slots_to_others():
    q = quotas(["a", "b", "c"], 12, {"a": 1, "b": 100, "c": 100})
    assert q == {"a": 1, "b": 6, "c": 5} or q == {"a": 1, "b": 5, "c": 6}
    assert sum(quotas(list("abcd"), 14, {k: 100 for k in "abcd"}).values()) == 14
    q = quotas(list("abc"), 10, {"a": 4, "b": 100, "c": 100})  # 3/3/4 would waste nothing either
    assert sum(q.values()) == 10 and max(q["b"], q["c"]) - min(q["b"], q["c"]) <= 1
    mem = RehearsalMemory(20, "random")
    mem.update({(0,): torch.arange(2), (1,): torch.arange(10, 40)}, None, torch.Generator().manual_seed(0))
    assert len(mem) == 20 and len(mem.groups[(0,)]) == 2
