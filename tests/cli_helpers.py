"""What every command-line test of bad input asserts: exit 2 and one line on stderr naming the problem."""

from __future__ import annotations


def usage_error(code: int, capsys, *needles) -> str:
    """The captured stderr: exit code 2, exactly one line ``privaudit: error: ...`` holding every needle."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("privaudit: error: "), err
    for n in needles:
        assert str(n) in err, err
    return err
