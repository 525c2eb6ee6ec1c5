"""`cream operator`'s tuning flags reach kopf's settings; bad values are refused by name."""

import kopf
import pytest

from cream_operator import handlers
from cream_operator.cli import build_parser
from cream_operator.config import WORKERS


def test_workers_flag_sets_kopfs_handler_threads():
    args = build_parser().parse_args(["operator", "--workers", "5"])
    settings = kopf.OperatorSettings()
    handlers.configure(settings=settings, memo=kopf.Memo(controller=None, workers=args.workers))
    assert settings.execution.max_workers == 5
    assert build_parser().parse_args(["operator"]).workers == WORKERS


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_workers_flag_refuses_what_cannot_run(value, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["operator", "--workers", value])
    assert "--workers" in capsys.readouterr().err
