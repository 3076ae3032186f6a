"""A deliberately literal re-statement of the official ATS DeiT forward pass, kept as a yardstick.

Written from the algorithm's description, independently of `core.py`/`sampler.py`: dense (N x N)
attention with the official masked softmax in every block, the score sort, the padded-CDF argmin, the
de-duplication quirk, the re-ordering of tokens by ascending score and the compaction. The tests check
that our sampler keeps the same tokens; `tools/bench_ats.py` times it against ours. Batch 1 only (the
official code pads a batch to its largest sample, so a sample's result depends on its neighbours).
"""
import torch
import torch.nn.functional as F


def masked_softmax(logits, policy, eps=1e-6):
    b, h, n, _ = logits.shape
    keep = policy.reshape(b, 1, 1, n)
    eye = torch.eye(n).view(1, 1, n, n)
    keep = keep + (1.0 - keep) * eye
    e = (logits - logits.max(dim=-1, keepdim=True)[0]).float().exp() * keep.float()
    return (e + eps / n) / (e.sum(dim=-1, keepdim=True) + eps)


def _attention(blk, x, policy):
    b, n, c = x.shape
    heads = blk.attn.num_heads
    qkv = blk.attn.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    qkv = qkv * policy.unsqueeze(0).unsqueeze(2)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = masked_softmax((q @ k.transpose(-2, -1)) * blk.attn.scale, policy)
    return attn, v


def _plain_block(blk, x, policy):
    attn, v = _attention(blk, blk.norm1(x), policy)
    b, n, c = x.shape
    out = blk.attn.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
    x = (x + out) * policy
    return (x + blk.mlp(blk.norm2(x))) * policy


def _unique(indices, dummy):
    s = torch.sort(indices, dim=1)[0]
    nxt = F.pad(s[:, 1:], (0, 1), value=1.0)
    s = torch.where(nxt - s == 0, dummy * torch.ones_like(s), s)
    return torch.sort(s, dim=1)[0]


def _ats_block(blk, x, policy, n_ref, ids):
    b, n, c = x.shape
    attn, v = _attention(blk, blk.norm1(x), policy)
    heads = attn.shape[1]
    v_norm = torch.linalg.norm(v.transpose(1, 2).reshape(b, n, c), ord=2, dim=2)
    score = (attn[:, :, 0].sum(dim=1) * v_norm)[:, 1:]
    score = score / score.sum(dim=1, keepdim=True)
    sorted_scores, order = torch.sort(score, dim=1)
    cdf = torch.cumsum(sorted_scores, dim=1)
    ncdf = (cdf - cdf.min(dim=1)[0][:, None]) / (cdf.max(dim=1)[0] - cdf.min(dim=1)[0])[:, None]
    steps_n = n_ref - 1
    lin = torch.linspace(0, 1.0, steps_n).unsqueeze(0)
    start = torch.min(ncdf + (ncdf == 0).float() * 1e8, dim=1)[0][:, None]
    ramp = torch.arange(0, steps_n, dtype=torch.float32).unsqueeze(0)
    ys = start + ((lin * (steps_n - 1)) - start * ramp) / (steps_n - 1)
    pad = steps_n - (n - 1)
    dist = (ys[:, :, None] - F.pad(ncdf, (pad, 0))[:, None, :]).abs()
    pick = torch.min(dist, dim=2)[1] - pad
    pick = _unique(pick, n - 1)[:, : n - 1]
    rows = torch.gather(attn[:, :, 1:], 2, order[:, None, :, None].expand(b, heads, n - 1, n))
    rows = F.pad(rows, (0, 0, 0, 1))
    raw = F.pad(torch.gather(x[:, 1:], 1, order[:, :, None].expand(b, n - 1, c)), (0, 0, 0, 1))
    id_sorted = F.pad(torch.gather(ids[:, 1:], 1, order), (0, 1), value=-1)
    rows = torch.cat([attn[:, :, :1], torch.gather(rows, 2, pick[:, None, :, None].expand(b, heads, n - 1, n))], 2)
    raw = torch.cat([x[:, :1], torch.gather(raw, 1, pick[:, :, None].expand(b, n - 1, c))], 1)
    ids = torch.cat([ids[:, :1], torch.gather(id_sorted, 1, pick)], 1)
    policy = F.pad((pick != n - 1).float().unsqueeze(-1), (0, 0, 1, 0), value=1.0)
    out = (rows @ v).transpose(1, 2).reshape(b, n, c)
    kept = policy[0, :, 0].bool()  # compaction (batch 1: drop the dummies)
    out, raw, ids, policy = out[:, kept], raw[:, kept], ids[:, kept], policy[:, kept]
    out = blk.attn.proj(out) * policy
    x = (raw + out) * policy
    x = (x + blk.mlp(blk.norm2(x))) * policy
    return x, policy, ids


@torch.no_grad()
def official_ats_forward(model, image, blocks):
    """Returns (logits, {block: sorted list of kept patch indices}) for a timm ViT, batch 1."""
    x = model._pos_embed(model.patch_embed(image))
    b, n, _ = x.shape
    assert b == 1
    policy = torch.ones(b, n, 1)
    ids = torch.arange(n).unsqueeze(0)
    kept = {}
    for i, blk in enumerate(model.blocks):
        if i in blocks:
            x, policy, ids = _ats_block(blk, x, policy, n, ids)
            kept[i] = sorted((ids[0, 1:] - 1).tolist())
        else:
            x = _plain_block(blk, x, policy)
    return model.head(model.norm(x)[:, 0]), kept
