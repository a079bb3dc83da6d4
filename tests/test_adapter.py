import torch
from torch import nn

from mmcl.model.adapter import CrossModalityAdapter, pool_tokens
from mmcl.model.mmencoder import GrowingClassifier

WIDTHS = {"image": 24, "text": 16, "speech": 12}


def make_inputs(B=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = {"image": torch.randn(B, 9, 24, generator=g), "text": torch.randn(B, 7, 16, generator=g),
              "speech": torch.randn(B, 40, 12, generator=g)}
    text_mask = torch.ones(B, 7, dtype=torch.bool)
    text_mask[0, 4:] = False
    speech_mask = torch.ones(B, 40, dtype=torch.bool)
    speech_mask[B - 1, 10:] = False
    return tokens, {"image": None, "text": text_mask, "speech": speech_mask}


def adapter(**kw):
    torch.manual_seed(0)
    a = CrossModalityAdapter(WIDTHS, num_experts=10, top_k=2, dim=8, context_tokens=5, **kw)
    return a


def perturb(a):
    """Give the zero-initialised parts non-zero values (as after training)."""
    with torch.no_grad():
        for m in a.modalities:
            a.up[m].weight.normal_()
            a.gate[m].weight.normal_()


def test_identity_at_initialisation():
    for kind in ("cross_attention", "channel_token_map"):
        a = adapter(expert=kind)
        tokens, masks = make_inputs()
        out, routing = a(tokens, masks)
        for m in WIDTHS:
            assert torch.equal(out[m], tokens[m])
        assert routing.routings == 6 * 3


def test_only_chosen_experts_run():
    a = adapter()
    perturb(a)
    a.eval()
    tokens, masks = make_inputs(B=1)  # 3 routings x 2 choices: some of the 10 experts stay unused
    _, routing = a(tokens, masks)
    used = set(torch.nonzero(routing.counts).flatten().tolist())
    unused = [e for e in range(10) if e not in used]
    assert unused, "the test needs an expert that no sample chose"
    assert routing.counts.sum() == 2 * 1 * 3  # two experts per routed (sample, modality)
    # NaN weights in an unchosen expert cannot reach the output when it is never computed...
    with torch.no_grad():
        for e in unused:
            a.experts[e].q.fill_(float("nan"))
    out, _ = a(tokens, masks)
    assert all(torch.isfinite(out[m]).all() for m in WIDTHS)
    # ...while NaN in a chosen expert does (so the check above can fail).
    with torch.no_grad():
        a.experts[min(used)].q.fill_(float("nan"))
    out, _ = a(tokens, masks)
    assert any(not torch.isfinite(out[m]).all() for m in WIDTHS)


def naive_experts(a, x, ctx, cmask, idx, w, xmask=None):
    """Reference: every (sample, slot) through its expert, one at a time."""
    import math
    out = torch.zeros_like(x)
    d = x.shape[-1]
    for i in range(x.shape[0]):
        for s in range(idx.shape[1]):
            ex = a.experts[int(idx[i, s])]
            if a.expert_kind == "cross_attention":
                att = (x[i] @ ex.q) @ (ctx[i] @ ex.k).t() / math.sqrt(d)
                if cmask is not None:
                    att = att.masked_fill(~cmask[i][None, :], float("-inf"))
                y = att.softmax(-1) @ (ctx[i] @ ex.v)
            else:
                valid = ctx[i] if cmask is None else ctx[i][cmask[i]]
                cp = valid.mean(0)
                xi = x[i] if xmask is None else x[i][xmask[i]]
                chan = torch.sigmoid(torch.cat([xi.mean(0), cp]) @ ex.c)
                tok = torch.sigmoid((x[i] @ ex.t) @ cp[:, None] / math.sqrt(d))
                y = chan[None, :] * tok * x[i]
            out[i] += w[i, s] * y
    return out


def test_grouped_dispatch_equals_running_each_sample_through_its_experts():
    g = torch.Generator().manual_seed(5)
    for kind, N, M in (("cross_attention", 6, 5), ("cross_attention", 3, 5), ("channel_token_map", 6, 5)):
        # cross attention orders its products by the smaller of N and M: both orders checked
        a = adapter(expert=kind)
        x, ctx = torch.randn(7, N, 8, generator=g), torch.randn(7, M, 8, generator=g)
        cmask = torch.ones(7, 5, dtype=torch.bool)
        cmask[2, 3:] = False
        idx = torch.tensor([[3, 1], [1, 3], [0, 9], [9, 9], [4, 2], [2, 4], [3, 0]])
        w = torch.rand(7, 2, generator=g)
        xmask = torch.ones(7, N, dtype=torch.bool)
        xmask[4, N // 2:] = False  # a padded query row
        got = a._run_experts(x, ctx, cmask, idx, w, x_mask=xmask)
        ref = naive_experts(a, x, ctx, cmask, idx, w, xmask)
        torch.testing.assert_close(got[xmask], ref[xmask], rtol=1e-5, atol=1e-5)


def test_dense_computes_every_expert():
    a = adapter(dense=True)
    perturb(a)
    a.eval()
    tokens, masks = make_inputs()
    with torch.no_grad():
        a.experts[3].q.fill_(float("nan"))
    out, _ = a(tokens, masks)
    assert not torch.isfinite(out["image"]).all()


def test_padding_does_not_change_valid_outputs():
    a = adapter()
    perturb(a)
    a.eval()
    tokens, masks = make_inputs()
    out1, _ = a(tokens, masks)
    tokens2 = {m: t.clone() for m, t in tokens.items()}
    tokens2["text"][~masks["text"]] = 1e3  # garbage in padded positions
    out2, _ = a(tokens2, masks)
    assert torch.allclose(out1["image"], out2["image"], atol=1e-5)
    assert torch.allclose(out1["speech"], out2["speech"], atol=1e-5)


def test_usage_counting_and_freezing_keep_parameters_bit_identical():
    a = adapter()
    perturb(a)
    a.train()
    tokens, masks = make_inputs(B=16)
    a(tokens, masks)
    share = a.usage_share()
    assert torch.isclose(share.sum(), torch.tensor(1.0))
    frozen = torch.nonzero(share > 0.10).flatten().tolist()
    assert frozen and len(frozen) < 10
    a.freeze_experts(frozen)
    before = {e: [p.detach().clone() for p in a.experts[e].parameters()] for e in range(10)}
    opt = torch.optim.AdamW([p for p in a.parameters() if p.requires_grad], lr=1e-2, weight_decay=1e-2)
    for step in range(5):
        out, routing = a(*make_inputs(B=16, seed=step + 1))
        loss = sum(o.pow(2).mean() for o in out.values()) + routing.balance
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = []
    for e in range(10):
        same = all(torch.equal(p0, p) for p0, p in zip(before[e], a.experts[e].parameters()))
        if e in frozen:
            assert same, f"frozen expert {e} changed"
        else:
            changed.append(not same)
    assert any(changed), "no unfrozen expert changed: the test cannot tell freezing from no training"


def test_pool_tokens_respects_masks():
    x = torch.arange(2 * 8 * 1, dtype=torch.float).view(2, 8, 1)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 4:] = False
    pooled, pmask = pool_tokens(x, mask, 2)
    # sample 0: mean(0..3)=1.5, mean(4..7)=5.5; sample 1 (valid 8..11): mean(8,9), mean(10,11)
    assert torch.allclose(pooled[:, :, 0], torch.tensor([[1.5, 5.5], [8.5, 10.5]]))
    assert pmask.all()
    same, m = pool_tokens(x, None, 16)
    assert same is x and m is None


def test_classifier_grows_and_keeps_old_rows():
    c = GrowingClassifier(8)
    c.grow(4)
    w_old = c.heads[0].weight.detach().clone()
    z = torch.randn(3, 8)
    logits_old = c(z)
    c.grow(4)
    assert c.num_classes == 8
    assert torch.equal(c.heads[0].weight, w_old)
    assert torch.equal(c(z)[:, :4], logits_old)
    assert isinstance(c.heads[1], nn.Linear)


def test_classifier_heads_follow_the_model_device():
    c = GrowingClassifier(8).to("meta")  # stands in for a GPU: any device but the CPU
    c.grow(3)
    c.grow(2)
    assert all(p.device.type == "meta" for p in c.parameters())


def test_pooled_last_block_equals_the_mean_of_its_tokens():
    """pool=True (the last block) computes mean(tokens) + up(mean(mixed)) without per-token
    outputs: the same values and gradients as averaging the full output."""
    from mmcl.encoders.base import masked_mean
    for kind in ("cross_attention", "channel_token_map"):
        a = adapter(expert=kind)
        perturb(a)
        with torch.no_grad():
            for m in a.modalities:
                a.up[m].bias.normal_()
        a.eval()
        tokens, masks = make_inputs(B=5)
        masks["text"][1] = False  # a sample without any valid token: its mean is 0 either way
        tokens = {m: t.requires_grad_(True) for m, t in tokens.items()}
        full, _ = a(tokens, masks)
        pooled, _ = a(tokens, masks, pool=True)
        for m in WIDTHS:
            assert pooled[m].shape == (5, WIDTHS[m])
            torch.testing.assert_close(pooled[m], masked_mean(full[m], masks[m]), rtol=1e-5, atol=1e-5)
        assert not pooled["text"][1].any()
        params = [p for p in a.parameters() if p.requires_grad]
        ref = sum(masked_mean(full[m], masks[m]).square().sum() for m in WIDTHS)
        new = sum(pooled[m].square().sum() for m in WIDTHS)
        g_ref = torch.autograd.grad(ref, params + list(tokens.values()), allow_unused=True)
        g_new = torch.autograd.grad(new, params + list(tokens.values()), allow_unused=True)
        for x, y in zip(g_ref, g_new):
            assert (x is None) == (y is None)
            if x is not None:
                torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5)


def test_expert_gate_scope_keeps_the_frozen_experts_gate_rows_bit_identical():
    """freeze.scope: 'expert' leaves the frozen experts' gate rows training (their routing may
    drift); 'expert_gate' keeps them bit-identical, and the other rows still train."""
    results = {}
    for scope in ("expert", "expert_gate"):
        a = adapter(freeze_scope=scope)
        perturb(a)
        with torch.no_grad():
            for m in a.modalities:
                a.gate_noise[m].weight.normal_()
        a.train()
        frozen = [1, 4, 7]
        a.freeze_experts(frozen)
        rows = torch.tensor(frozen)
        before = {m: (a.gate[m].weight.detach()[rows].clone(), a.gate_noise[m].weight.detach()[rows].clone(),
                      a.gate[m].weight.detach().clone()) for m in a.modalities}
        experts0 = [[p.detach().clone() for p in a.experts[e].parameters()] for e in frozen]
        opt = torch.optim.AdamW([p for p in a.parameters() if p.requires_grad], lr=1e-2, weight_decay=1e-2)
        for step in range(4):
            out, routing = a(*make_inputs(B=16, seed=step + 1))
            loss = sum(o.pow(2).mean() for o in out.values()) + routing.balance
            opt.zero_grad()
            loss.backward()
            opt.step()
            a.restore_frozen_gates()   # what Method.after_step does after every optimiser step
        kept = all(torch.equal(before[m][0], a.gate[m].weight[rows]) and torch.equal(before[m][1],
                   a.gate_noise[m].weight[rows]) for m in a.modalities)
        others_moved = any(not torch.equal(before[m][2], a.gate[m].weight) for m in a.modalities)
        assert others_moved
        assert all(torch.equal(p0, p) for ps, e in zip(experts0, frozen)
                   for p0, p in zip(ps, a.experts[e].parameters()))
        results[scope] = kept
    assert results == {"expert": False, "expert_gate": True}
