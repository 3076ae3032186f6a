"""Literal re-statements of the original TimeSformer and X-ViT forward passes (from the published
descriptions in ../shared/reference/model_facts.md A.2-A.3 and C.2), in the originals' own token layouts
and with explicit softmax attention. They run on our modules' weights, so a test can check that our grid
layout, block order and CLS handling compute the same function.
"""
import torch
import torch.nn.functional as F
from einops import rearrange


def explicit_attention(mod, x, kv_fn=None):
    b, n, c = x.shape
    h = mod.num_heads
    qkv = mod.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if kv_fn is not None:
        k, v = kv_fn(k), kv_fn(v)
    attn = ((q @ k.transpose(-2, -1)) * (c // h) ** -0.5).softmax(dim=-1)
    return mod.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


def plain_block(blk, x, kv_fn=None):
    x = x + explicit_attention(blk.attn, blk.norm1(x), kv_fn)
    return x + blk.mlp(blk.norm2(x))


@torch.no_grad()
def original_timesformer(model, video):
    b, _, t, _, _ = video.shape
    x = model.patch_embed.proj(rearrange(video, "b c t h w -> (b t) c h w"))
    w = x.size(-1)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([model.cls_token.expand(x.size(0), -1, -1), x], dim=1)
    pos = model.pos_embed
    if x.size(1) != pos.size(1):
        g = int((pos.size(1) - 1) ** 0.5)
        grid = pos[0, 1:].transpose(0, 1).reshape(1, -1, g, g)
        grid = F.interpolate(grid, size=((x.size(1) - 1) // w, w), mode="nearest")
        pos = torch.cat([pos[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
    x = x + pos
    cls = x[:b, 0].unsqueeze(1)
    x = x[:, 1:]
    if model.attention_type != "space_only":
        x = rearrange(x, "(b t) n m -> (b n) t m", b=b, t=t)
        time = model.time_embed
        if t != time.size(1):
            time = F.interpolate(time.transpose(1, 2), size=t, mode="nearest").transpose(1, 2)
        x = rearrange(x + time, "(b n) t m -> b (n t) m", b=b, t=t)
        x = torch.cat([cls, x], dim=1)
    else:
        x = torch.cat([cls.repeat_interleave(t, 0), x], dim=1)
    for blk in model.blocks:
        if model.attention_type == "divided_space_time":
            hgt = (x.size(1) - 1) // t // w
            xt = rearrange(x[:, 1:], "b (h w t) m -> (b h w) t m", h=hgt, w=w, t=t)
            rt = explicit_attention(blk.temporal_attn, blk.temporal_norm1(xt))
            rt = blk.temporal_fc(rearrange(rt, "(b h w) t m -> b (h w t) m", b=b, h=hgt, w=w, t=t))
            xt = x[:, 1:] + rt
            cls0 = x[:, :1]
            xs = rearrange(xt, "b (h w t) m -> (b t) (h w) m", h=hgt, w=w, t=t)
            xs = torch.cat([cls0.repeat(1, t, 1).reshape(b * t, 1, -1), xs], dim=1)
            rs = explicit_attention(blk.attn, blk.norm1(xs))
            cls_res = rearrange(rs[:, 0], "(b t) m -> b t m", b=b, t=t).mean(1, keepdim=True)
            rs = rearrange(rs[:, 1:], "(b t) (h w) m -> b (h w t) m", b=b, h=hgt, w=w, t=t)
            x = torch.cat([cls0, xt], 1) + torch.cat([cls_res, rs], 1)
            x = x + blk.mlp(blk.norm2(x))
        else:
            x = plain_block(blk, x)
    if model.attention_type == "space_only":
        x = rearrange(x, "(b t) n m -> b t n m", b=b, t=t).mean(1)
    return model.head(model.norm(x)[:, 0])


@torch.no_grad()
def original_xvit(model, video, segments=8):
    b, _, f, _, _ = video.shape
    x = model.patch_embed.proj(video.transpose(1, 2).reshape(b * f, 3, *video.shape[-2:]))
    gh, gw = x.shape[-2:]
    x = torch.cat([model.cls_token.expand(b * f, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    pos = model.pos_embed
    if gh * gw + 1 != pos.size(1):
        g = int((pos.size(1) - 1) ** 0.5)
        grid = pos[0, 1:].transpose(0, 1).reshape(1, -1, g, g)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
    x = x + pos
    n, d = x.shape[1:]
    x = (x.view(b * f // segments, segments, n, d) + model.temp_embed).view(b * f, n, d)
    fold = d // 8

    def shift(z):  # z: (B*F, heads, N, hd) -> channels per token = head * hd + j
        bf, h, n_, hd = z.shape
        z = z.permute(0, 1, 3, 2).reshape(bf // segments, segments, h * hd, n_)
        out = torch.zeros_like(z)
        out[:, :-1, :fold] = z[:, 1:, :fold]
        out[:, 1:, fold:2 * fold] = z[:, :-1, fold:2 * fold]
        out[:, :, 2 * fold:] = z[:, :, 2 * fold:]
        return out.reshape(bf, h, hd, n_).permute(0, 1, 3, 2)

    for blk in model.blocks:
        x = plain_block(blk, x, shift)
    feats = model.norm(x)[:, 0].reshape(b, f, d)
    head = model.temporal_head
    z = torch.cat([head.cls_token.expand(b, -1, -1), feats], dim=1)
    z = plain_block(head.encoder, z)
    return head.mlp(z[:, 0])
