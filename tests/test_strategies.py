"""Training strategies (recipe/strategies): each does what its option says.

Unit tests drive the strategies with a small torch model and Adam, as PET's loop
does; the last tests run them through ``mtt train``. Accuracy is measured in
``bench/`` (bench/campaigns/accuracy.yaml), not here.
"""

import pytest
import torch

from conftest import run_mtt, transfer_options, write_yaml
from metatrain_pet_transfer.recipe.strategies import StopTraining
from metatrain_pet_transfer.recipe.strategies.averaging import WeightAveraging
from metatrain_pet_transfer.recipe.strategies.early_stopping import EarlyStopping
from metatrain_pet_transfer.recipe.strategies.parameter_steps import (
    ParameterSteps,
    factor_of,
)


class TinyPET(torch.nn.Module):
    """PET's module names, a few weights each."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.gnn_layers = torch.nn.ModuleList([torch.nn.Linear(3, 3)])
        self.node_heads = torch.nn.ModuleDict({"energy": torch.nn.Linear(3, 1)})

    def forward(self, x):
        return self.node_heads["energy"](torch.tanh(self.gnn_layers[0](x))).sum()


def train(model, strategies, steps=5, epochs=1, lr=1e-2, optimizer=None):
    """PET's loop in miniature: events in PET's order."""
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)

    def before(optimizer, args, kwargs):
        for strategy in strategies:
            strategy.before_step(optimizer)

    def after(optimizer, args, kwargs):
        for strategy in strategies:
            strategy.after_step(optimizer)

    pre = optimizer.register_step_pre_hook(before)
    post = optimizer.register_step_post_hook(after)
    for strategy in strategies:
        strategy.starts(optimizer, 0)
    x = torch.linspace(-1, 1, 12).reshape(4, 3)
    for epoch in range(epochs):
        for strategy in strategies:
            strategy.training_epoch_starts(epoch)
        for _ in range(steps):
            optimizer.zero_grad()
            model(x).backward()
            optimizer.step()
        for strategy in strategies:
            strategy.validation_starts(epoch)
    pre.remove()
    post.remove()
    return optimizer


def weights(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_factors_match_by_whole_module_names():
    factors = {"gnn_layers": 0.5, "gnn_layers.0": 2.0, "heads": 3.0}
    assert factor_of("backend.gnn_layers.0.attention.weight", factors) == 2.0
    assert factor_of("backend.gnn_layers.1.weight", factors) == 0.5
    assert factor_of("backend.gnn_layers.01.weight", factors) == 0.5
    # `heads` is not a whole component of `node_heads`
    assert factor_of("backend.node_heads.energy.0.weight", factors) == 1.0


def test_learning_rate_factors_are_per_module_learning_rates():
    # Adam with the backbone's own parameter group at a tenth of the rate ...
    reference = TinyPET()
    optimizer = torch.optim.Adam(
        [
            {"params": reference.gnn_layers.parameters(), "lr": 1e-3},
            {"params": reference.node_heads.parameters(), "lr": 1e-2},
        ]
    )
    train(reference, [], optimizer=optimizer)
    # ... is PET's single optimizer with the factor
    model = TinyPET()
    train(model, [ParameterSteps(model, factors={"gnn_layers": 0.1})], lr=1e-2)
    for name, value in weights(model).items():
        torch.testing.assert_close(value, weights(reference)[name])
    moved = weights(model)["gnn_layers.0.weight"]
    assert not torch.equal(moved, weights(TinyPET())["gnn_layers.0.weight"])


def test_unknown_module_name_stops_with_the_model_names():
    message = "training.learning_rate_factors.*'heads'.*gnn_layers.0"
    with pytest.raises(ValueError, match=message):
        ParameterSteps(TinyPET(), factors={"heads": 10.0})


def test_staged_unfreezing_keeps_the_backbone_bit_identical_then_warms_it_up():
    model = TinyPET()
    start = weights(model)
    steps = ParameterSteps(model, freeze_backbone_epochs=2, unfreeze_warmup_epochs=1)
    train(model, [steps], epochs=2)
    after = weights(model)
    assert torch.equal(after["gnn_layers.0.weight"], start["gnn_layers.0.weight"])
    assert torch.equal(after["gnn_layers.0.bias"], start["gnn_layers.0.bias"])
    head = "node_heads.energy.weight"
    assert not torch.equal(after[head], start[head])
    # epoch 2: the backbone joins at half its rate (1 warm-up epoch), then fully
    steps.training_epoch_starts(2)
    assert steps.factor("gnn_layers.0.weight") == 0.5
    assert steps.factor("node_heads.energy.weight") == 1.0
    steps.training_epoch_starts(3)
    assert steps.factor("gnn_layers.0.weight") == 1.0


def test_l2sp_with_a_huge_weight_keeps_the_start_weights():
    model = TinyPET()
    start = weights(model)
    train(model, [ParameterSteps(model, l2sp_weight=1e9)], epochs=2)
    for name, value in weights(model).items():
        assert torch.equal(value, start[name]), name


def test_l2sp_pulls_toward_the_start_weights():
    free, pulled = TinyPET(), TinyPET()
    start = weights(free)
    train(free, [], steps=20)
    train(pulled, [ParameterSteps(pulled, l2sp_weight=20.0)], steps=20)

    def distance(model):
        return sum(
            (value - start[name]).norm() ** 2 for name, value in weights(model).items()
        )

    assert 0 < distance(pulled) < 0.9 * distance(free)


def test_weight_averaging_validates_the_average_and_trains_the_raw_weights():
    model = TinyPET()
    start = weights(model)
    averaging = WeightAveraging(model, decay=0.9)
    train(model, [averaging], steps=30)
    # validation started: the model holds the average, the raw weights are kept
    raw = averaging.trained
    for name, value in weights(model).items():
        torch.testing.assert_close(value, averaging.average[name])
        assert not torch.equal(value, raw[name])
        assert not torch.equal(value, start[name])
    # the next epoch trains from the raw weights again
    averaging.training_epoch_starts(1)
    for name, value in weights(model).items():
        assert torch.equal(value, raw[name])


def test_weight_averaging_is_the_exponential_moving_average():
    model = TinyPET()
    averaging = WeightAveraging(model, decay=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    averaging.starts(optimizer, 0)
    expected = weights(model)
    x = torch.ones(2, 3)
    for step in range(5):
        optimizer.zero_grad()
        model(x).backward()
        optimizer.step()
        averaging.after_step(optimizer)
        decay = min(0.5, (1 + step) / (10 + step))
        for name, value in weights(model).items():
            expected[name] = decay * expected[name] + (1 - decay) * value
    for name, value in expected.items():
        torch.testing.assert_close(averaging.average[name], value)


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    stopping = EarlyStopping(patience=2, metric_name="mae_prod")
    for epoch, metric in enumerate([3.0, 2.0, 2.5, 2.0]):
        stopping.training_epoch_starts(epoch)  # no stop yet
        stopping.validation_metric(epoch, metric)
    # epoch 1 was the best (2.0 again at epoch 3 is not better): stop before epoch 4
    with pytest.raises(StopTraining, match="not improved for 2 epochs") as stop:
        stopping.training_epoch_starts(4)
    assert stop.value.last_epoch == 3
    assert "model of epoch 1" in stop.value.reason


# ------------------------------------------------------------------ through mtt train


def load(path):
    import metatomic.torch  # noqa: F401

    return torch.load(path, weights_only=False, map_location="cpu")


def backbone(state):
    heads = ("node_heads", "edge_heads", "node_last_layers", "edge_last_layers")
    return {
        k: v
        for k, v in state.items()
        if k.startswith("backend.") and not any(f".{h}." in k for h in heads)
    }


def test_strategies_through_mtt_train(workdir):
    """One real run: num_epochs left out, the backbone in its frozen stage for the
    whole run and the new heads' rate factor at 0. Nothing can move, so the
    validation error never improves after epoch 0 and patience 2 ends the run after
    epoch 2; the exported model is the aligned start, bit for bit."""
    options = transfer_options()
    training = options["architecture"]["training"]
    del training["num_epochs"]
    heads = ["node_heads", "edge_heads", "node_last_layers", "edge_last_layers"]
    training.update(
        {
            "early_stopping_patience": 2,
            "freeze_backbone_epochs": 100,
            "learning_rate_factors": {name: 0.0 for name in heads},
            "ema_decay": 0.9,
        }
    )
    write_yaml(workdir / "options.yaml", options)
    result = run_mtt(["train", "options.yaml", "-o", "model.pt"], cwd=workdir)
    log = result.stdout + result.stderr
    assert "Staged unfreezing: only heads and last layers train" in log
    assert "Weight averaging: validation, best-model selection and export" in log
    assert "Early stopping: the validation mae_prod has not improved for 2" in log
    assert "the model of epoch 0 is the one exported" in log
    checkpoint = load(workdir / "model.ckpt")
    assert (checkpoint["epoch"], checkpoint["best_epoch"]) == (2, 0)
    pretrained = load(workdir / "pretrained.ckpt")["best_model_state_dict"]
    for state in ("model_state_dict", "best_model_state_dict"):
        trained = checkpoint[state]
        # the backbone: the frozen stage
        for key, value in backbone(pretrained).items():
            assert torch.equal(trained[key], value), (state, key)
        # the new heads: factor 0 keeps their aligned start, the pretrained head
        new = [k for k in trained if "mtt::energy_pbe0" in k and "heads" in k]
        new += [k for k in trained if "mtt::energy_pbe0" in k and "last_layers" in k]
        assert new
        for key in new:
            old = key.replace("mtt::energy_pbe0", "energy")
            assert torch.equal(trained[key], pretrained[old]), (state, key)
    assert (workdir / "model.pt").exists()
