"""Attacks: triggers are stamped where specified, poisoning touches only what it should, the
threat model picks exact attackers, model replacement scales the update."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clients.attacks import build_attack, malicious_partitions
from clients.attacks.base import attackers_per_round, sample_with_attackers
from clients.attacks.client import attack_step
from clients.attacks.poisoning import scale_update
from clients.attacks.triggers import stamp, trigger_mask, trigger_part
from clients.learners import ClientData
from fedsim.config import compose
from fedsim.errors import ConfigError


def test_square_trigger_is_stamped_exactly_at_rows_and_cols_23_to_27() -> None:
    x = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    out = stamp(x, trigger_mask("square", 5, [23, 23], 28), 255)
    assert out[:, :, 23:28, 23:28].eq(255).all()
    assert int(out.gt(0).sum()) == 3 * 25  # nothing else changed
    assert x.eq(0).all()  # the input is not modified


def test_plus_and_its_dba_parts() -> None:
    mask = trigger_mask("plus", 5, [23, 23], 28)
    rows, cols = np.nonzero(mask)
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == {
        *((r, 25) for r in range(23, 28)),
        *((25, c) for c in range(23, 28)),
    }
    vertical = trigger_part(mask, "plus", 5, [23, 23], 2, 0)
    horizontal = trigger_part(mask, "plus", 5, [23, 23], 2, 3)  # odd attacker
    assert np.array_equal(np.nonzero(vertical)[1], [25] * 5)
    assert np.array_equal(np.nonzero(horizontal)[0], [25] * 5)
    assert np.array_equal(vertical | horizontal, mask)
    bands = [
        trigger_part(trigger_mask("square", 4, [0, 0], 8), "square", 4, [0, 0], 4, i)
        for i in range(4)
    ]
    assert all(b.sum() == 4 and np.nonzero(b)[0].tolist() == [i] * 4 for i, b in enumerate(bands))


def test_rgb_trigger_sets_every_channel() -> None:
    x = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    out = stamp(x, trigger_mask("square", 4, [26, 26], 32), 200)
    assert out[0, :, 26:30, 26:30].eq(200).all() and int(out.gt(0).sum()) == 3 * 16


def test_trigger_that_does_not_fit_is_one_line() -> None:
    with pytest.raises(ConfigError, match="does not fit 28x28"):
        trigger_mask("square", 5, [25, 25], 28)


def _client(n_per_class: int = 10) -> ClientData:
    y = torch.arange(10).repeat_interleave(n_per_class)
    return ClientData(
        x=torch.zeros(len(y), 1, 28, 28, dtype=torch.uint8),
        y=y,
        mean=[0.1],
        std=[0.3],
        num_classes=10,
    )


def test_cba_poisons_half_of_source_samples_only() -> None:
    attack = build_attack("cba", {"source": [0], "target": 5, "poison_frac": 0.5})
    data = _client()
    out = attack.poison(data, seed=0, partition_id=3, attacker_index=0)
    changed = (out.y != data.y).nonzero().flatten()
    assert len(changed) == 5 and data.y[changed].eq(0).all() and out.y[changed].eq(5).all()
    stamped = out.x.flatten(1).gt(0).any(1).nonzero().flatten()
    assert torch.equal(stamped, changed)  # exactly the relabelled images carry the trigger
    again = attack.poison(data, seed=0, partition_id=3, attacker_index=0)
    assert torch.equal(again.y, out.y)  # fixed per (seed, client)


def test_all_to_one_and_label_flip() -> None:
    data = _client()
    a2o = build_attack("cba", {"source": None, "target": 5, "poison_frac": 1.0})
    out = a2o.poison(data, seed=0, partition_id=0, attacker_index=0)
    assert out.y.eq(5).all() and int(out.x.flatten(1).gt(0).any(1).sum()) == 90
    flip = build_attack("label_flip", {"source": [3], "target": 7, "poison_frac": 1.0})
    out = flip.poison(data, seed=0, partition_id=0, attacker_index=0)
    assert out.y[data.y == 3].eq(7).all() and out.x.eq(0).all()
    assert not flip.uses_trigger


def test_dba_attackers_stamp_their_part() -> None:
    dba = build_attack("dba", {"poison_frac": 1.0})
    data = _client(2)
    even = dba.poison(data, seed=0, partition_id=0, attacker_index=0)
    odd = dba.poison(data, seed=0, partition_id=1, attacker_index=1)
    i = int((data.y == 0).nonzero()[0])
    assert even.x[i, 0, 23:28, 25].eq(255).all() and int(even.x[i].gt(0).sum()) == 5
    assert odd.x[i, 0, 25, 23:28].eq(255).all() and int(odd.x[i].gt(0).sum()) == 5
    full = dba.test_inputs(data.x[:1])
    assert int(full.gt(0).sum()) == 9


def test_malicious_ids_and_exact_attackers_per_round() -> None:
    assert malicious_partitions(50, 0.2, 0) == list(range(10))
    seeded = malicious_partitions(50, 0.3, 7, "seeded")
    assert len(seeded) == 15 and seeded == malicious_partitions(50, 0.3, 7, "seeded")
    assert attackers_per_round(50, 10, 25) == 5  # FLAIN: floor(50 * 0.2 * 0.5)
    assert attackers_per_round(50, 15, 25) == 7
    for rnd in range(1, 6):
        s = sample_with_attackers(0, rnd, 50, 25, list(range(10)), 5)
        assert len(s) == 25 == len(set(s)) and sum(p < 10 for p in s) == 5


def test_schedule_and_client_hook() -> None:
    attack = build_attack("cba", {"start_round": 3, "end_round": 9, "every": 3})
    assert [r for r in range(1, 12) if attack.attacks_in(r)] == [3, 6, 9]
    cfg = compose(["attack=cba", "num_clients=10", "clients_per_round=10", "attack.mcr=0.2"])
    assert attack_step(cfg, 1, 1) is not None and attack_step(cfg, 1, 1).attacker_index == 1
    assert attack_step(cfg, 2, 1) is None  # benign id
    assert attack_step(compose(), 0, 1) is None  # no attack


def test_model_replacement_scales_the_update() -> None:
    model = torch.nn.Linear(2, 1)
    glob = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(-0.5)
    scale_update(model, glob, 10.0)
    assert model.weight.eq(10.0).all() and model.bias.eq(-5.0).all()
    mr = build_attack("model_replacement", {"scale": None})
    mr.after_train(model, glob, 25)  # scale None -> clients per round
    assert model.weight.eq(250.0).all()


@pytest.mark.parametrize(
    ("params", "pattern"),
    [
        ({"mcr": 1.0}, r"invalid attack.mcr=1.0"),
        ({"poison_frac": 2}, r"invalid attack.poison_frac=2"),
        ({"per_round": "all"}, r"invalid attack.per_round='all'"),
        ({"trigger": "star"}, r"invalid attack.trigger='star'"),
        ({"source": [5], "target": 5}, r"invalid attack.source=\[5\]"),
        ({"blend": 1}, r"invalid attack parameter 'blend' for attack 'cba'"),
    ],
)
def test_bad_attack_values_are_one_line(params: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as info:
        build_attack("cba", params)
    assert "\n" not in str(info.value)
