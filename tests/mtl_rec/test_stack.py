import pytest

from mtl_rec.stack import Stack, StackMismatchError, check_stack, installed_stack, stack_problems


def test_installed_stack_pairs():
    assert stack_problems(installed_stack()) == []


@pytest.mark.parametrize(
    ("stack", "fragment"),
    [
        (
            Stack("2.13.0+cpu", "1.8.0", {"fbgemm-gpu-cpu": "1.7.0"}),
            "needs fbgemm-gpu-cpu 1.8.x, found 1.7.0",
        ),
        (Stack("2.11.0", "1.8.0", {"fbgemm-gpu": "1.8.0"}), "needs torch 2.13.x, found torch 2.11.0"),
        (Stack("2.13.0", "1.8.0", {"fbgemm-gpu": "1.8.0", "fbgemm-gpu-cpu": "1.8.0"}), "both fbgemm-gpu and"),
        (Stack("2.13.0", None, {"fbgemm-gpu-cpu": "1.8.0"}), "torchrec is not installed"),
        (Stack("2.13.0", "1.8.0", {}), "neither fbgemm-gpu nor fbgemm-gpu-cpu"),
    ],
)
def test_mismatch_message_names_versions_rule_and_fix(stack, fragment, monkeypatch):
    monkeypatch.delenv("MTL_REC_SKIP_STACK_CHECK", raising=False)
    with pytest.raises(StackMismatchError) as info:
        check_stack(stack)
    message = str(info.value)
    assert fragment in message
    assert "found:" in message and "torchrec 1.X with fbgemm-gpu[-cpu] 1.X and torch 2.(X+5)" in message
    assert "make setup" in message


def test_gpu_pairing_for_older_torch_is_accepted():
    # torch 2.11 (a GPU image) pairs with torchrec 1.6 / fbgemm-gpu 1.6
    assert stack_problems(Stack("2.11.0+cu130", "1.6.0", {"fbgemm-gpu": "1.6.0"})) == []
