"""The copies protocol, embeddings and re-ranking options: derived from the asset configs, in the run config
only when given."""

from __future__ import annotations

import pytest

from pipelines.cli.options import parser, run_config


def _config(argv):
    return run_config(parser().parse_args(argv))


def test_evaluate_and_encode_options_set_their_configs():
    assert _config(["evaluate"]) == {} and _config(["encode"]) == {}
    got = _config(
        ["evaluate", "--copy-protocol", "--copies", "50", "--copy-transforms", "hard", "--rerank", ""]
    )
    assert got == {
        "model_evaluation": {
            "config": {"copy_protocol": True, "copies": 50, "copy_transforms": "hard", "rerank": ""}
        }
    }
    assert _config(["encode", "--embeddings", "fp16"]) == {"packed_codes": {"config": {"embeddings": "fp16"}}}
    run = _config(["run", "--copy-protocol", "--oversample", "8", "--embeddings", "int8"])
    assert run["model_evaluation"] == {"config": {"copy_protocol": True, "oversample": 8}}
    assert run["packed_codes"] == {"config": {"embeddings": "int8"}}


def test_bad_choices_are_refused(capsys):
    for argv in (["encode", "--embeddings", "int4"], ["search", "1", "--rerank", "cosine"]):
        with pytest.raises(SystemExit):
            parser().parse_args(argv)
    assert "invalid choice" in capsys.readouterr().err
    args = parser().parse_args(["search", "3", "--rerank", "stored", "--oversample", "2"])
    assert (args.rerank, args.oversample) == ("stored", 2)
    args = parser().parse_args(["bench", "rerank", "--oversample", "1,4", "--copies", "10"])
    assert (args.oversample, args.copies, args.copy_transforms) == ("1,4", 10, "easy+hard")
