"""`python -m cream_stages.cleanup`: deletes a run's artifacts, and nothing wider."""

from cream_stages.cleanup import main


def test_deletes_everything_under_a_local_root(tmp_path, capsys):
    root = tmp_path / "runs" / "ml" / "tiny" / "uid"
    (root / "iter-1" / "sample").mkdir(parents=True)
    (root / "iter-1" / "sample" / "responses.jsonl").write_text("{}\n")
    (root / "models" / "M1").mkdir(parents=True)
    (root / "models" / "M1" / "manifest.json").write_text("{}")
    keep = tmp_path / "runs" / "ml" / "other"
    keep.mkdir()
    assert main([str(root)]) == 0
    assert not root.exists() and keep.exists()
    assert "deleted 2 object(s)" in capsys.readouterr().out


def test_refuses_a_bucket_or_a_shallow_prefix(capsys):
    assert main(["s3://bucket"]) == 2
    assert main(["s3://bucket/runs"]) == 2
    assert "not a run's artifact root" in capsys.readouterr().err
