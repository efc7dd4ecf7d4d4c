"""Fisher-guided, non-uniform pruning of BERT-style encoders (after Kwon et al., "A Fast
Post-Training Pruning Framework for Transformers", NeurIPS 2022).

Why not the same count in every layer: layers are not equally important. Measured on
all-MiniLM-L6-v2 at 60% of the encoder MACs, uniform FFN pruning keeps cosine 0.82 before
distillation, while this allocation, which lets layers and heads lose different amounts, keeps
more at the same cost (benchmarks/PRUNING.md). Every head and FFN neuron gets a multiplicative
mask; the diagonal Fisher information of the masks scores what removing each costs, and a global
search under the MAC budget picks how many heads to keep (the FFN neurons take the rest of the
budget), so heads and neurons compete for the same MACs.

The loss for an embedding model has no labels and is zero at the unpruned model, so its gradient
says nothing; the Fisher of a Gaussian model around the output does: with r ~ N(0, I), the
expected square of d(r . output)/d(mask) is the squared norm of the output's sensitivity to that
mask, which for unit-length embeddings is twice the cosine lost to first order. Classifiers use
the same estimate on their logits.
"""

from __future__ import annotations

from exporter.compress.hooks import forward_hooks


def fisher_scores(model, bert, batches: list[tuple], probes: int = 4, seed: int = 0) -> tuple[list, list]:
    """Per head and per FFN neuron of each layer: the mean squared gradient of a random projection of
    the model's output with respect to its mask (masks carry a batch axis, so every gradient is one
    sample's, as the Fisher needs)."""
    import torch

    layers = bert.encoder.layer
    head_sq = [torch.zeros(layer.attention.self.num_attention_heads, dtype=torch.float64) for layer in layers]
    ffn_sq = [torch.zeros(layer.intermediate.dense.out_features, dtype=torch.float64) for layer in layers]
    masks: dict = {}

    def on_context(i):
        def hook(_m, _inp, out):
            ctx = out[0] if isinstance(out, (tuple, list)) else out
            b, t, width = ctx.shape
            n = layers[i].attention.self.num_attention_heads
            masked = (ctx.reshape(b, t, n, width // n) * masks[("head", i)][:, None, :, None]).reshape(b, t, width)
            return (masked, *out[1:]) if isinstance(out, (tuple, list)) else masked

        return hook

    def on_ffn(i):
        def hook(_m, _inp, out):
            return out * masks[("ffn", i)][:, None, :]

        return hook

    hooks = []
    for i, layer in enumerate(layers):
        hooks += [(layer.attention.self, on_context(i)), (layer.intermediate, on_ffn(i))]
    gen = torch.Generator().manual_seed(seed)
    count = 0
    was_training = model.training
    model.eval()
    with forward_hooks(hooks), torch.enable_grad():
        for batch in batches:
            b = batch[0].shape[0]
            for i, layer in enumerate(layers):
                masks[("head", i)] = torch.ones(b, layer.attention.self.num_attention_heads, requires_grad=True)
                masks[("ffn", i)] = torch.ones(b, layer.intermediate.dense.out_features, requires_grad=True)
            out = model(*batch)
            out = out[0] if isinstance(out, (tuple, list)) else out
            leaves = [masks[("head", i)] for i in range(len(layers))] + [masks[("ffn", i)] for i in range(len(layers))]
            for p in range(probes):
                r = torch.randn(out.shape, generator=gen, dtype=out.dtype)
                grads = torch.autograd.grad((out * r).sum(), leaves, retain_graph=p < probes - 1)
                for i in range(len(layers)):
                    head_sq[i] += grads[i].double().pow(2).sum(0)
                    ffn_sq[i] += grads[len(layers) + i].double().pow(2).sum(0)
            count += b * probes
    model.train(was_training)
    return [(h / count).tolist() for h in head_sq], [(f / count).tolist() for f in ffn_sq]


def unit_costs(bert, seq: int) -> tuple[int, int]:
    """MACs per head and per FFN neuron at this sequence length, as encoder.costs_of counts them:
    a head owns d rows of Q, K, V and d columns of the output projection, plus its two attention
    products; a neuron owns one row of the FFN input and one column of its output."""
    c = bert.config
    d = c.hidden_size // c.num_attention_heads
    return seq * (4 * c.hidden_size * d + 2 * seq * d), seq * 2 * c.hidden_size


def global_plan(
    bert,
    scores: tuple[list, list],
    keep: float,
    align: int,
    seq: int,
    heads_too: bool = True,
    ffn_too: bool = True,
    table: dict | None = None,
) -> dict:
    """Heads and FFN neurons kept per layer so the encoder keeps at most `keep` of its MACs (with a
    latency `table`: of its predicted onnxruntime time) and the summed Fisher score of what is
    removed is smallest: for every total number of heads kept (the best ones), the neurons take what
    budget remains; each layer keeps at least one head and `align` neurons, and its neuron count is
    rounded to `align` by dropping the cheapest blocks."""
    from exporter.compress.encoder import costs_of

    head_scores, neuron_scores = scores
    if table is None:
        head_cost, neuron_cost = unit_costs(bert, seq)
        budget = keep * costs_of(bert, seq)[0]
    else:  # the fixed time (embeddings, LayerNorms, pooling) is spent whatever is kept
        from exporter.compress.latency_table import predict

        head_cost, neuron_cost = table["head_ms"], table["neuron_ms"]
        whole = predict(table, sum(map(len, head_scores)), sum(map(len, neuron_scores)))
        budget = keep * whole - table["fixed_ms"]
    n_layers = len(head_scores)
    # the floor every layer keeps (best head, best `align` neurons) is fixed; the rest competes
    floor_heads = {(i, max(range(len(s)), key=lambda h, s=s: (s[h], -h))) for i, s in enumerate(head_scores)}
    if not heads_too:  # every head stays; only the neurons compete
        floor_heads = {(i, h) for i, s in enumerate(head_scores) for h in range(len(s))}
    floor_neurons = {
        (i, j)
        for i, s in enumerate(neuron_scores)
        for j in sorted(range(len(s)), key=lambda j, s=s: (-s[j], j))[: len(s) if not ffn_too else min(align, len(s))]
    }
    heads = sorted(
        ((s, i, h) for i, row in enumerate(head_scores) for h, s in enumerate(row) if (i, h) not in floor_heads),
        key=lambda x: (-x[0], x[1], x[2]),
    )
    blocks = _neuron_blocks(neuron_scores, floor_neurons, align)
    spent = len(floor_heads) * head_cost + len(floor_neurons) * neuron_cost
    head_prefix = [0.0]
    for s, _i, _h in heads:
        head_prefix.append(head_prefix[-1] + s)
    block_prefix = [0.0]
    for s, _i, _k, _members in blocks:
        block_prefix.append(block_prefix[-1] + s)
    best = None
    for n_heads in range(len(heads) + 1):
        left = budget - spent - n_heads * head_cost
        if left < 0:
            break
        n_blocks = min(len(blocks), int(left // (align * neuron_cost)))
        value = head_prefix[n_heads] + block_prefix[n_blocks]
        if best is None or value > best[0]:
            best = (value, n_heads, n_blocks)
    if best is None:
        raise ValueError(
            f"the {'MAC' if table is None else 'latency'} goal is below what one head and one aligned block "
            "of neurons per layer cost"
        )
    _v, n_heads, n_blocks = best
    kept_heads = {i: set() for i in range(n_layers)}
    for i, h in floor_heads:
        kept_heads[i].add(h)
    for _s, i, h in heads[:n_heads]:
        kept_heads[i].add(h)
    kept_neurons = {i: set() for i in range(n_layers)}
    for i, j in floor_neurons:
        kept_neurons[i].add(j)
    for _s, i, _k, members in blocks[:n_blocks]:
        kept_neurons[i].update(members)
    return {
        "drop_layers": [],
        "prune_heads": {
            str(i): [h for h in range(len(head_scores[i])) if h not in kept_heads[i]]
            for i in range(n_layers)
            if len(kept_heads[i]) < len(head_scores[i])
        },
        "keep_ffn": {str(i): sorted(kept_neurons[i]) for i in range(n_layers)},
        "fraction": round(1 - keep, 6),
        "align": align,
        "allocation": "fisher-global",
    }


def _neuron_blocks(neuron_scores: list, floor: set, align: int) -> list:
    """Each layer's remaining neurons, best first, cut into blocks of `align` (so every layer's count
    stays a multiple of it); blocks of all layers ranked by their summed score. A layer's blocks are
    taken in order because its later blocks never outscore its earlier ones."""
    blocks = []
    for i, s in enumerate(neuron_scores):
        rest = [j for j in sorted(range(len(s)), key=lambda j, s=s: (-s[j], j)) if (i, j) not in floor]
        for k in range(0, len(rest) - len(rest) % align, align):
            members = rest[k : k + align]
            blocks.append((sum(s[j] for j in members), i, k, members))
    return sorted(blocks, key=lambda x: (-x[0], x[1], x[2]))
