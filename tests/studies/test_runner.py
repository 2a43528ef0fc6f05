"""The benchmark runner turns a run's settings into `remi train` flags."""

from studies.runner import _flags


def test_true_and_false_strings_from_a_command_line_become_switches() -> None:
    assert _flags({"remove_accidental_hits": "true", "ihn_detach": "False"}) == [
        "--remove-accidental-hits",
        "--no-ihn-detach",
    ]


def test_other_values_pass_as_flag_and_value() -> None:
    assert _flags({"negatives": "4096", "lr": 0.001, "split_file": None}) == ["--negatives", "4096", "--lr", "0.001"]
