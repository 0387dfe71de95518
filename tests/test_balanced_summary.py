"""The balanced summary loss (issue 30, item 4): summary terms as angles in units of each teacher's own spread,
logged per teacher so the balance shows in MLflow."""

import math

import pytest
import torch
import torch.nn.functional as F

from pipelines.config import ConfigError, load_config
from pipelines.synthetic import make_synthetic_cache
from radio.losses import LossConfig, distill_loss, summary_angle, summary_terms

TEACHERS = {"syn-wide": (8, 6, (4, 4)), "syn-narrow": (12, 5, (4, 4))}


def test_summary_angle_is_exact_and_has_a_gradient_at_zero():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 2.0]])
    b = torch.tensor([[0.0, 3.0], [-1.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(summary_angle(a, b), torch.tensor([math.pi / 2, math.pi, 0.0]))
    x = torch.randn(4, 16, requires_grad=True)
    summary_angle(x, x.detach() * 3).sum().backward()
    assert torch.isfinite(x.grad).all()
    # a small angle is measured to its last digits (acos of a cosine gives ~3e-4 rad of noise in float32 here)
    eps = 1e-5
    torch.testing.assert_close(
        summary_angle(torch.tensor([[1.0, 0.0]]), torch.tensor([[math.cos(eps), math.sin(eps)]])),
        torch.tensor([eps]),
        rtol=1e-3,
        atol=0,
    )


def _cone(n: int, dim: int, width: float, seed: int) -> torch.Tensor:
    """n unit summaries around one axis, at angle ~width from it."""
    g = torch.Generator().manual_seed(seed)
    axis = F.normalize(torch.randn(dim, generator=g), dim=0)
    noise = F.normalize(torch.randn(n, dim, generator=g), dim=-1)
    noise = F.normalize(noise - (noise @ axis)[:, None] * axis, dim=-1)
    return math.cos(width) * axis + math.sin(width) * noise


def _rotate_towards(x: torch.Tensor, angle: torch.Tensor, seed: int) -> torch.Tensor:
    """Each row turned by ``angle`` (radians) in a random direction orthogonal to it."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(x.shape, generator=g)
    d = F.normalize(d - (d * x).sum(-1, keepdim=True) * x, dim=-1)
    return torch.cos(angle)[:, None] * x + torch.sin(angle)[:, None] * d


def test_balanced_terms_weigh_each_teacher_in_units_of_its_own_spread():
    """Two teachers, one spreading its summaries wide, one in a narrow cone; the student misses each by the same
    share (a quarter) of that teacher's spread. 1 - cos lets the wide teacher dominate (~30x here); the balanced
    terms are equal within the batch estimate's noise."""
    wide, narrow = _cone(64, 32, 1.2, 0), _cone(64, 32, 0.08, 1)
    terms = {}
    for name, t in (("wide", wide), ("narrow", narrow)):
        spread = summary_terms(t, t, "balanced")["spread"]  # degrees: mean angle between two of its summaries
        miss = torch.full((t.shape[0],), math.radians(float(spread)) / 4)
        pred = _rotate_towards(t, miss, 2)
        terms[name] = {k: summary_terms(pred, t, k)["loss"].item() for k in ("cosine", "balanced")}
    assert terms["wide"]["cosine"] / terms["narrow"]["cosine"] > 20
    assert terms["wide"]["balanced"] == pytest.approx(0.25, rel=0.02)
    assert terms["narrow"]["balanced"] == pytest.approx(0.25, rel=0.02)
    one = summary_terms(wide[:1], wide[:1], "balanced")  # a batch of one: pi/2, the spread of random directions
    assert one["spread"].item() == pytest.approx(90.0) and one["loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_distill_loss_logs_angles_and_spreads():
    g = torch.Generator().manual_seed(0)
    targets = {
        t: {"summary": torch.randn(6, d, generator=g), "features": torch.randn(6, 2, 2, 4)}
        for t, d in (("a", 8), ("b", 5))
    }
    preds = {
        t: {"summary": torch.randn_like(v["summary"]), "features": torch.randn(6, 2, 2, 4)} for t, v in targets.items()
    }
    plain = distill_loss(preds, targets, LossConfig())
    bal = distill_loss(preds, targets, LossConfig(summary_loss="balanced"))
    for t in ("a", "b"):
        assert f"angle/{t}/summary" in plain and f"spread/{t}/summary" not in plain
        assert 0 < bal[f"spread/{t}/summary"].item() < 180
        torch.testing.assert_close(bal[f"angle/{t}/summary"], plain[f"angle/{t}/summary"])
        assert bal[f"loss/{t}/summary"].item() == pytest.approx(
            bal[f"angle/{t}/summary"].item() / bal[f"spread/{t}/summary"].item(), rel=1e-5
        )
    torch.testing.assert_close(plain["loss/a/features"], bal["loss/a/features"])


def test_setting_is_checked():
    from pipelines.train import TrainJobConfig, validate

    with pytest.raises(ConfigError) as e:
        load_config(TrainJobConfig, None, ["loss.summary_loss=angles"], validate=validate)
    assert "loss.summary_loss" in str(e.value) and "balanced" in str(e.value)


def test_radio_train_logs_each_teachers_balance_to_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    from pipelines.cli import main

    cache = tmp_path / "c"
    make_synthetic_cache(cache, limit=12, views=2, per_shard=6, teachers=TEACHERS)
    args = [
        "train",
        f"cache={cache}",
        f"output={tmp_path}/run",
        "teachers=[syn-wide,syn-narrow]",
        "student.patch_size=8",
        "student.depth=2",
        "loader.batch_size=6",
        "loader.num_workers=0",
        "epochs=2",
        "log_every=2",
        "loss.summary_loss=balanced",
        "mlflow.experiment=test-balanced-summary",
    ]
    assert main(args) == 0
    client = MlflowClient()
    exp = client.get_experiment_by_name("test-balanced-summary")
    [run] = client.search_runs([exp.experiment_id], max_results=1, order_by=["attributes.start_time DESC"])
    m = run.data.metrics
    assert run.data.params["loss.summary_loss"] == "balanced"
    for t in TEACHERS:
        assert 0 < m[f"train/balance/{t}/summary_spread_deg"] < 180
        assert 0 <= m[f"train/fidelity/{t}/summary_angle_deg"] <= 180
        assert math.isfinite(m[f"train/loss/{t}/summary"])
        assert len(client.get_metric_history(run.info.run_id, f"train/balance/{t}/summary_spread_deg")) >= 2
