"""Hungarian matching: optimal, per image, permutation-equivariant, empty-safe."""
import itertools

import torch

from detr_nb_utils.models.matcher import HungarianMatcher


def random_outputs(b, q, k=92, seed=0):
    g = torch.Generator().manual_seed(seed)
    cxcy = torch.rand(b, q, 2, generator=g) * 0.6 + 0.2
    wh = torch.rand(b, q, 2, generator=g) * 0.3 + 0.05
    return {"pred_logits": torch.randn(b, q, k, generator=g), "pred_boxes": torch.cat([cxcy, wh], -1)}


def random_targets(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    cxcy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
    labels = torch.tensor([1, 3, 18, 44, 62, 90, 7])[torch.randint(0, 7, (n,), generator=g)]
    return {"labels": labels, "boxes": torch.cat([cxcy, wh], -1)}


def test_batched_equals_per_image_and_empty_targets():
    matcher = HungarianMatcher()
    outputs = random_outputs(3, 10)
    targets = [random_targets(4, 1), random_targets(0, 2), random_targets(6, 3)]
    batched = matcher(outputs, targets)
    for i, t in enumerate(targets):
        single = matcher({k: v[i : i + 1] for k, v in outputs.items()}, [t])[0]
        assert torch.equal(batched[i][0], single[0]) and torch.equal(batched[i][1], single[1])
    assert batched[1][0].numel() == 0 and batched[1][0].dtype == torch.int64
    for (src, tgt), t in zip(batched, targets):
        assert len(src) == len(t["labels"])  # Q >= n: every target matched once
        assert torch.equal(src, src.sort().values)
        assert sorted(tgt.tolist()) == list(range(len(t["labels"])))


def test_permuting_targets_permutes_assignment():
    matcher = HungarianMatcher()
    outputs = random_outputs(1, 12, seed=4)
    t = random_targets(5, seed=5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    src, tgt = matcher(outputs, [t])[0]
    src_p, tgt_p = matcher(outputs, [{"labels": t["labels"][perm], "boxes": t["boxes"][perm]}])[0]
    assert dict(zip(src.tolist(), tgt.tolist())) == dict(zip(src_p.tolist(), perm[tgt_p].tolist()))


def test_assignment_is_optimal_by_brute_force():
    matcher = HungarianMatcher()
    for seed in range(5):
        outputs = random_outputs(1, 5, seed=seed)
        t = random_targets(3, seed=seed + 10)
        cost = matcher.cost_matrices(outputs, [t])[0]
        src, tgt = matcher(outputs, [t])[0]
        found = cost[src, tgt].sum().item()
        best = min(sum(cost[q, j].item() for j, q in enumerate(rows)) for rows in itertools.permutations(range(5), 3))
        assert abs(found - best) < 1e-5


def test_cost_terms_and_weights():
    """A query on the exact box with the right class is matched; zero class cost ignores the logits."""
    outputs = random_outputs(1, 6, seed=7)
    t = random_targets(1, seed=8)
    outputs["pred_boxes"][0, 4] = t["boxes"][0]
    assert HungarianMatcher(cost_class=0, cost_bbox=5, cost_giou=2)(outputs, [t])[0][0].tolist() == [4]
    outputs["pred_logits"][0, 2, t["labels"][0]] = 50.0  # query 2 is sure of the class, far from the box
    assert HungarianMatcher(cost_class=1, cost_bbox=0, cost_giou=0)(outputs, [t])[0][0].tolist() == [2]
