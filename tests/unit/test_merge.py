import pytest
import torch

from mopd.algorithms.merge import linear_average, task_arithmetic


def sd(w, b, steps=0):
    return {"w": torch.tensor(w), "b": torch.tensor(b), "steps": torch.tensor(steps)}


def test_linear_average_uniform():
    out = linear_average([sd([[1.0, 2.0]], [0.0], 1), sd([[3.0, 6.0]], [4.0], 2)])
    torch.testing.assert_close(out["w"], torch.tensor([[2.0, 4.0]]))
    torch.testing.assert_close(out["b"], torch.tensor([2.0]))
    assert out["steps"].item() == 1 and out["steps"].dtype == torch.int64  # copied from the first


def test_linear_average_weights_are_normalised():
    out = linear_average([sd([1.0], [0.0]), sd([4.0], [8.0])], weights=[1.0, 3.0])
    torch.testing.assert_close(out["w"], torch.tensor([0.25 * 1 + 0.75 * 4]))
    torch.testing.assert_close(out["b"], torch.tensor([6.0]))


def test_linear_average_keeps_dtype():
    a = {"w": torch.tensor([1.0, 2.0], dtype=torch.bfloat16)}
    b = {"w": torch.tensor([3.0, 4.0], dtype=torch.bfloat16)}
    out = linear_average([a, b])
    assert out["w"].dtype == torch.bfloat16
    assert out["w"].tolist() == [2.0, 3.0]


def test_linear_average_does_not_alias_inputs():
    a = sd([1.0], [1.0], 5)
    out = linear_average([a])
    out["w"] += 1
    out["steps"] += 1
    assert a["w"].item() == 1.0 and a["steps"].item() == 5


def test_task_arithmetic():
    base = sd([1.0, 1.0], [0.0], 3)
    ft1 = sd([2.0, 1.0], [1.0], 7)
    ft2 = sd([1.0, 4.0], [-1.0], 9)
    out = task_arithmetic(base, [ft1, ft2], scale=0.5)
    # base + .5 * ((1,0) + (0,3)) = (1.5, 2.5); b: 0 + .5 * (1 - 1) = 0
    torch.testing.assert_close(out["w"], torch.tensor([1.5, 2.5]))
    torch.testing.assert_close(out["b"], torch.tensor([0.0]))
    assert out["steps"].item() == 3  # copied from base


def test_task_arithmetic_scale_one_single_model_is_that_model():
    base, ft = sd([1.0, 2.0], [3.0]), sd([5.0, -2.0], [0.5])
    out = task_arithmetic(base, [ft], scale=1.0)
    torch.testing.assert_close(out["w"], ft["w"])
    torch.testing.assert_close(out["b"], ft["b"])


def test_errors():
    a = sd([1.0, 2.0], [0.0])
    with pytest.raises(ValueError, match="keys differ.*'b'"):
        linear_average([a, {"w": torch.zeros(2), "steps": torch.tensor(0)}])
    with pytest.raises(ValueError, match="shape of 'w'"):
        linear_average([a, sd([1.0, 2.0, 3.0], [0.0])])
    with pytest.raises(ValueError, match="shape of 'w'"):
        task_arithmetic(a, [sd([1.0], [0.0])], scale=1.0)
    with pytest.raises(ValueError, match="2 weights for 1"):
        linear_average([a], weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="non-negative"):
        linear_average([a, a], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="no state dicts"):
        linear_average([])
    with pytest.raises(ValueError, match="no finetuned"):
        task_arithmetic(a, [], scale=1.0)
