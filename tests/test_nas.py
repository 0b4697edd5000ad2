"""The NAS task: encodings round-trip, parameter counts are exact, training is real and deterministic,
and the committed table carries enough signal for a surrogate."""

from __future__ import annotations

import numpy as np
import pytest

from worldmodels.core.errors import WorldModelsError
from worldmodels.nas.space import (
    CHOICES,
    ENCODING_DIM,
    MAX_LAYERS,
    Architecture,
    build,
    decode,
    decode_slots,
    encode,
    num_params,
    sample,
    train,
)
from worldmodels.nas.surrogate import Surrogate, held_out_spearman
from worldmodels.nas.table import DEFAULT_TABLE, load_table

# Measured 0.89 on the committed table's seed-0 split (0.83-0.91 over five splits); a fixed split and a seeded forest
# make it deterministic, and a surrogate that ignored the architecture would score about 0.
SPEARMAN_FLOOR = 0.8


@pytest.fixture(scope="module")
def table():
    return load_table(DEFAULT_TABLE)


def test_encode_decode_round_trip():
    rng = np.random.default_rng(0)
    archs = [sample(rng) for _ in range(200)] + [Architecture(())]
    for arch in archs:
        encoding = encode(arch)
        assert encoding.shape == (ENCODING_DIM,) and encoding.dtype == np.float32
        assert encoding.sum() == MAX_LAYERS  # one choice per slot
        assert decode(encoding) == arch
        assert Architecture.parse(str(arch)) == arch


def test_str_and_parse():
    assert str(Architecture(())) == "linear"
    assert str(Architecture(((64, "relu"), (32, "tanh")))) == "64relu-32tanh"
    for bad in ["", "64", "relu", "64relu-", "63relu", "64swish", "8relu-8relu-8relu-8relu-8relu"]:
        with pytest.raises(ValueError, match="bad architecture"):
            Architecture.parse(bad)


def test_decode_compacts_empty_slots():
    a, b = CHOICES.index((64, "relu")), CHOICES.index((16, "tanh"))
    assert decode_slots([a, 0, 0, b]) == Architecture(((64, "relu"), (16, "tanh")))
    logits = np.zeros((MAX_LAYERS, len(CHOICES)), np.float32)
    logits[[0, 1, 2, 3], [0, a, 0, b]] = 1.0  # empty first and third slots
    assert decode(logits.reshape(-1)) == Architecture(((64, "relu"), (16, "tanh")))


@pytest.mark.parametrize("text", ["linear", "8sigmoid", "64relu-32tanh", "256elu-256elu-128tanh-8relu"])
def test_num_params_is_exact(text):
    arch = Architecture.parse(text)
    assert num_params(arch) == sum(p.numel() for p in build(arch).parameters())


def test_train_learns_and_is_deterministic():
    arch = Architecture.parse("32relu")
    first, second = train(arch, seed=3, epochs=8), train(arch, seed=3, epochs=8)
    assert first["val_acc"] > 0.8
    assert (first["val_acc"], first["test_acc"]) == (second["val_acc"], second["test_acc"])


def test_committed_table(table):
    assert len(table) >= 300
    assert len({r.arch for r in table}) == len(table)
    for row in table:
        assert 0.0 < row.val_acc <= 1.0 and 0.0 < row.test_acc <= 1.0
        assert row.params == num_params(row.arch)
    accs = np.array([r.val_acc for r in table])
    assert accs.max() - np.median(accs) > 0.01 and np.median(accs) - accs.min() > 0.1  # something to learn


def test_surrogate_ranks_held_out_architectures(table):
    assert held_out_spearman(table) > SPEARMAN_FLOOR


def test_surrogate_memoises_and_counts(table):
    surrogate = Surrogate().fit([r.arch for r in table], [r.val_acc for r in table])
    archs = [table[0].arch, table[1].arch, table[0].arch]
    predicted = surrogate.predict(archs)
    assert [surrogate(a) for a in archs] == pytest.approx(predicted.tolist())
    assert surrogate.queries == 3 and len(surrogate.memo) == 2


def test_load_table_missing_file(tmp_path):
    with pytest.raises(WorldModelsError, match="not found"):
        load_table(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    "text",
    [
        "\x00\x01garbage\n",
        "arch,depth,params,val_acc,val_acc_std,test_acc,seconds\n64swish,1,4810,0.9,0.0,0.9,0.3\n",
        "arch,depth,params,val_acc,val_acc_std,test_acc,seconds\n64relu,1,4810\n",
        "arch,depth,params,val_acc,val_acc_std,test_acc,seconds\n",
    ],
)
def test_load_table_corrupt_file(tmp_path, text):
    path = tmp_path / "table.csv"
    path.write_text(text)
    with pytest.raises(WorldModelsError, match="table.csv"):
        load_table(path)
