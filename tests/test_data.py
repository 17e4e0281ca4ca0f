from __future__ import annotations

import numpy as np
import pytest
import torch

from lradvisor.engine.data import gaussian_mixture, load_shared_dataset
from lradvisor.engine.models import initial_state
from lradvisor.errors import ConfigError

from conftest import make_config


def test_mixture_protocol_centres_balance_and_rng_order():
    torch.manual_seed(0)
    X, y = gaussian_mixture(200, 20, 5, 2.0)
    assert X.shape == (200, 20)
    assert torch.bincount(y).tolist() == [40] * 5
    means = torch.stack([X[y == k].mean(0) for k in range(5)])
    assert torch.allclose(means.norm(dim=1), torch.full((5,), 2.0 * 20**0.5), rtol=0.1)
    # Seeding, building the model, then drawing the data gives the same data every time,
    # and different data per seed.
    config = make_config()
    a = initial_state(config, 7, None, dtype=torch.float64)
    b = initial_state(config, 7, None, dtype=torch.float64)
    c = initial_state(config, 8, None, dtype=torch.float64)
    assert torch.equal(a.data.X, b.data.X) and torch.equal(a.weights[0], b.weights[0])
    assert not torch.equal(a.data.X, c.data.X)


def test_mixture_is_drawn_after_the_model():
    torch.manual_seed(3)
    torch.nn.Linear(8, 16, bias=False)
    torch.nn.Linear(16, 3, bias=False)
    X, _ = gaussian_mixture(60, 8, 3, 2.0)
    state = initial_state(make_config(), 3, None, dtype=torch.float32)
    assert torch.equal(state.data.X, X)


@pytest.mark.parametrize(
    ("name", "classes"), [("digits", 10), ("wine", 3), ("breast_cancer", 2), ("iris", 3)]
)
def test_sklearn_sets_are_standardised(name, classes):
    data = load_shared_dataset(make_config(data={"source": "sklearn", "name": name}))
    assert data.classes == classes
    assert abs(float(data.X.mean())) < 1e-6


def test_csv_and_npz_files(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = np.array(["a", "b"] * 20)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    data = load_shared_dataset(
        make_config(data={"source": "file", "path": str(tmp_path / "d.npz")})
    )
    assert data.classes == 2 and data.dim == 3
    np.savetxt(
        tmp_path / "d.csv",
        np.column_stack([X, np.arange(40) % 4]),
        delimiter=",",
        header="a,b,c,label",
    )
    data = load_shared_dataset(
        make_config(
            data={"source": "file", "path": str(tmp_path / "d.csv"), "validation_fraction": 0.25}
        )
    )
    assert data.classes == 4 and data.n == 30 and data.X_val.shape == (10, 3)


def test_npz_without_arrays_names_the_field(tmp_path):
    np.savez(tmp_path / "d.npz", features=np.zeros((3, 2)))
    config = make_config(data={"source": "file", "path": str(tmp_path / "d.npz")})
    with pytest.raises(ConfigError, match=r"data\.path.*'X' and 'y'"):
        load_shared_dataset(config)
