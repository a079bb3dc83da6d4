import math

import pytest
import torch
import torch.nn.functional as F

from mmcl import losses


def test_distillation_matches_hand_computation():
    new = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.0, 1.0]])
    T = 2.0
    # softmax([0.5, 0]) and softmax([0, 0.5])
    p_new = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]
    p_old = [p_new[1], p_new[0]]
    kl = sum(po * math.log(po / pn) for po, pn in zip(p_old, p_new))
    assert losses.distillation(new, old, T).item() == pytest.approx(T * T * kl, rel=1e-5)


def test_distillation_zero_when_equal_and_gradient_only_to_new():
    old = torch.randn(5, 3)
    new = old.clone().requires_grad_(True)
    assert losses.distillation(new, old).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="restrict"):
        losses.distillation(torch.randn(5, 4), old)


def test_joint_infonce_hand_computation():
    # two samples, one modality; cos similarities are exact for these unit vectors
    z_k = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z_j = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    tau = 0.5
    c = 1 / math.sqrt(2)
    # row 0: sims (1, c) target 0; row 1: sims (0, c) target 1
    l0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(c / tau)))
    l1 = -math.log(math.exp(c / tau) / (math.exp(0) + math.exp(c / tau)))
    got = losses.alignment([z_k], z_j, kind="joint_infonce", tau=tau)
    assert got.item() == pytest.approx((l0 + l1) / 2, rel=1e-5)


def test_joint_cosine_and_limits():
    z = torch.randn(6, 8)
    assert losses.alignment([z, z], z, kind="joint_cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert losses.alignment([-z], z, kind="joint_cosine").item() == pytest.approx(2.0, abs=1e-5)


def test_alignment_variants_differ_as_specified():
    torch.manual_seed(0)
    za, zb = torch.randn(8, 16), torch.randn(8, 16)
    zj = torch.randn(8, 16, requires_grad=True)
    # pairwise ignores the joint entirely
    pw = losses.alignment([za, zb], zj, kind="pairwise_infonce")
    pw2 = losses.alignment([za, zb], torch.randn(8, 16), kind="pairwise_infonce")
    assert pw.item() == pytest.approx(pw2.item())
    # pairwise = symmetric InfoNCE between the two modalities
    expected = 0.5 * (F.cross_entropy(F.normalize(za, dim=1) @ F.normalize(zb, dim=1).t() / 0.1, torch.arange(8))
                      + F.cross_entropy(F.normalize(zb, dim=1) @ F.normalize(za, dim=1).t() / 0.1, torch.arange(8)))
    assert pw.item() == pytest.approx(expected.item(), rel=1e-5)
    # joint variants depend on the joint, and detach_joint stops its gradient
    ji = losses.alignment([za, zb], zj, kind="joint_infonce", detach_joint=True)
    assert not ji.requires_grad
    ji2 = losses.alignment([za, zb], zj, kind="joint_infonce", detach_joint=False)
    ji2.backward()
    assert zj.grad is not None and zj.grad.abs().sum() > 0
    assert ji.item() != pytest.approx(pw.item())
    with pytest.raises(ValueError, match="not one of"):
        losses.alignment([za], zj, kind="nope")


def test_preservation_zero_on_task_one_and_when_unchanged():
    z = torch.randn(10, 4)
    other = torch.randn(10, 4)
    assert losses.preservation(z, other, task=1).item() == 0.0
    assert losses.preservation(z, z.clone(), task=3).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.preservation(z, other, task=2).item() > 0


def test_preservation_hand_computation_and_sqrt_weight():
    z_old = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    z_new = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    tau = 1.0

    def dist(z):
        zn = F.normalize(z, dim=1)
        s = (zn @ zn.t()).tolist()
        rows = []
        for i in range(3):
            others = [j for j in range(3) if j != i]
            e = [math.exp(s[i][j] / tau) for j in others]
            rows.append([x / sum(e) for x in e])
        return rows

    po, pn = dist(z_old), dist(z_new)
    kl = sum(sum(a * math.log(a / b) for a, b in zip(ro, rn)) for ro, rn in zip(po, pn)) / 3
    for task in (2, 5):
        got = losses.preservation(z_old, z_new, task=task, tau=tau).item()
        assert got == pytest.approx(math.sqrt(task - 1) * kl, rel=1e-5)


def test_load_balance_zero_when_uniform():
    assert losses.load_balance(torch.ones(10), torch.ones(10)).item() == pytest.approx(0.0)
    skew = torch.tensor([10.0] + [0.0] * 9)
    assert losses.load_balance(skew, skew).item() > 1
