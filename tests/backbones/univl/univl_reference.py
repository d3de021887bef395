"""UniVL's forward computations written out from the release's module definitions (BERT post-norm
layers, additive -10000 masks, erf GELU, TF-style LayerNorm), reading the parameters from a
state dict by their official names. Independent of the package's modules."""

import math

import torch

EPS = 1e-12


def layer_norm(x, sd, prefix):
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    return sd[prefix + ".weight"] * (x - mean) / torch.sqrt(var + EPS) + sd[prefix + ".bias"]


def linear(x, sd, prefix):
    return x @ sd[prefix + ".weight"].T + sd[prefix + ".bias"]


def gelu(x):
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def attention(sd, prefix, queries, keys_values, additive, heads):
    def split(x):
        return x.view(x.shape[0], x.shape[1], heads, -1).permute(0, 2, 1, 3)

    q = split(linear(queries, sd, prefix + "query"))
    k = split(linear(keys_values, sd, prefix + "key"))
    v = split(linear(keys_values, sd, prefix + "value"))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + additive
    out = torch.softmax(scores, dim=-1) @ v
    return out.permute(0, 2, 1, 3).reshape(queries.shape)


def key_mask(mask, dtype):
    return (1.0 - mask[:, None, None, :].to(dtype)) * -10000.0


def feed_forward(sd, prefix, x):
    hidden = gelu(linear(x, sd, prefix + "intermediate.dense"))
    return layer_norm(
        x + linear(hidden, sd, prefix + "output.dense"), sd, prefix + "output.LayerNorm"
    )


def encoder(sd, prefix, x, mask, heads):
    additive = key_mask(mask, x.dtype)
    n = 0
    while f"{prefix}.encoder.layer.{n}.attention.self.query.weight" in sd:
        p = f"{prefix}.encoder.layer.{n}."
        a = attention(sd, p + "attention.self.", x, x, additive, heads)
        a = layer_norm(
            x + linear(a, sd, p + "attention.output.dense"), sd, p + "attention.output.LayerNorm"
        )
        x = feed_forward(sd, p, a)
        n += 1
    return x


def text(sd, ids, mask, heads):
    e = "bert.embeddings."
    x = sd[e + "word_embeddings.weight"][ids] + sd[e + "position_embeddings.weight"][: ids.shape[1]]
    x = layer_norm(x + sd[e + "token_type_embeddings.weight"][0], sd, e + "LayerNorm")
    return encoder(sd, "bert", x, mask, heads)


def normalize_video(sd, features):
    return layer_norm(features, sd, "normalize_video.visual_norm2d")


def video(sd, features, mask, heads):
    e = "visual.embeddings."
    x = linear(normalize_video(sd, features), sd, e + "word_embeddings")
    x = layer_norm(x + sd[e + "position_embeddings.weight"][: x.shape[1]], sd, e + "LayerNorm")
    return encoder(sd, "visual", x, mask, heads)


def cross(sd, text_hidden, text_mask, video_hidden, feature_mask, heads):
    """(cross_hidden, pooled)."""
    e = "cross.embeddings."
    x = torch.cat([text_hidden, video_hidden], 1)
    mask = torch.cat([text_mask, feature_mask], 1)
    types = torch.cat([torch.zeros_like(text_mask), torch.ones_like(feature_mask)], 1)
    x = (
        x
        + sd[e + "position_embeddings.weight"][: x.shape[1]]
        + sd[e + "token_type_embeddings.weight"][types]
    )
    hidden = encoder(sd, "cross", layer_norm(x, sd, e + "LayerNorm"), mask, heads)
    return hidden, torch.tanh(linear(hidden[:, 0], sd, "cross.pooler.dense"))


def token_head(sd, prefix, hidden):
    h = layer_norm(
        gelu(linear(hidden, sd, prefix + "transform.dense")), sd, prefix + "transform.LayerNorm"
    )
    return h @ sd[prefix + "decoder.weight"].T + sd[prefix + "bias"]


def frame_head(sd, hidden):
    p = "cls_visual.predictions."
    h = layer_norm(gelu(linear(hidden, sd, p + "transform.dense")), sd, p + "transform.LayerNorm")
    return h @ sd[p + "weight"] + sd[p + "bias"]


def decoder_logits(sd, cross_hidden, cross_mask, ids, decoder_mask, heads):
    e = "decoder.embeddings."
    length = ids.shape[1]
    x = sd[e + "word_embeddings.weight"][ids] + sd[e + "position_embeddings.weight"][:length]
    x = layer_norm(x, sd, e + "LayerNorm")
    causal = torch.triu(torch.ones(length, length, dtype=x.dtype), diagonal=1)
    blocked = ((1.0 - decoder_mask[:, None, None, :].to(x.dtype)) + causal) > 0
    self_additive = blocked.to(x.dtype) * -10000.0
    memory_additive = key_mask(cross_mask, x.dtype)
    n = 0
    while f"decoder.decoder.layer.{n}.slf_attn.att.query.weight" in sd:
        p = f"decoder.decoder.layer.{n}."
        a = attention(sd, p + "slf_attn.att.", x, x, self_additive, heads)
        a = layer_norm(
            x + linear(a, sd, p + "slf_attn.output.dense"), sd, p + "slf_attn.output.LayerNorm"
        )
        c = attention(sd, p + "enc_attn.att.", a, cross_hidden, memory_additive, heads)
        c = layer_norm(
            a + linear(c, sd, p + "enc_attn.output.dense"), sd, p + "enc_attn.output.LayerNorm"
        )
        x = feed_forward(sd, p, c)
        n += 1
    return token_head(sd, "decoder.classifier.cls.predictions.", x)
