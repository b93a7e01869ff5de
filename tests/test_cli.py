"""The `openimagen` command as a user meets it: one-line errors with exit code 2, and a whole
train -> generate -> evaluate round on a tiny cascade."""
import json
import subprocess
import sys

import pytest
from PIL import Image

from openimagen.cli import main


def run_cli(capsys, *argv) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse errors exit from inside parse_args
        code = e.code
    err = capsys.readouterr().err.strip()
    return code, err


def one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a one-line error, got:\n{err}"
    assert "error:" in lines[0]
    for n in needles:
        assert n in lines[0], f"{n!r} missing from {lines[0]!r}"


def test_missing_data_folder(capsys, tmp_path):
    code, err = run_cli(capsys, "train", "--preset", "shapes-tiny", "--data", str(tmp_path / "nowhere"),
                        "--out", str(tmp_path / "run"))
    one_line_error(code, err, "nowhere")


def test_empty_data_folder(capsys, tmp_path):
    (tmp_path / "data").mkdir()
    code, err = run_cli(capsys, "train", "--preset", "shapes-tiny", "--data", str(tmp_path / "data"),
                        "--out", str(tmp_path / "run"))
    one_line_error(code, err, "no images")


def test_folder_of_only_corrupt_images(capsys, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        (data / f"{i}.txt").write_text("a red circle")
    code, err = run_cli(capsys, "train", "--preset", "shapes-tiny", "--data", str(data), "--out", str(tmp_path / "run"))
    one_line_error(code, err, "corrupt")


def test_unknown_preset_names_the_valid_ones(capsys, tmp_path):
    code, err = run_cli(capsys, "train", "--preset", "shapes-huge", "--out", str(tmp_path / "run"))
    one_line_error(code, err, "shapes-huge", "shapes-tiny")


def test_unknown_config_key(capsys, tmp_path):
    code, err = run_cli(capsys, "train", "--preset", "shapes-tiny", "--set", "optim.lrr=1e-4", "--out", str(tmp_path / "r"))
    one_line_error(code, err, "lrr")


def test_zero_steps(capsys):
    code, err = run_cli(capsys, "generate", "--steps", "0", "a red circle")
    one_line_error(code, err, "--steps", "at least 1")


def test_empty_prompt(capsys):
    code, err = run_cli(capsys, "generate", "   ")
    one_line_error(code, err, "empty prompt")


def test_missing_model_folder(capsys, tmp_path):
    code, err = run_cli(capsys, "generate", "--model", str(tmp_path / "no-model"), "a red circle")
    one_line_error(code, err, "no-model")


def test_exit_code_from_a_real_process(tmp_path):
    out = subprocess.run([sys.executable, "-m", "openimagen.cli", "train", "--preset", "nope", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "unknown training preset" in out.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny cascade trained through the CLI (embeddings first, as the README shows)."""
    run = tmp_path_factory.mktemp("run")
    small = ["--set", "data.size=48"]
    assert main(["-q", "--threads", "1", "embed", "--preset", "shapes-tiny", *small, "--out", str(run)]) == 0
    assert (run / "embeddings" / "index.json").is_file()
    assert main(["-q", "train", "--preset", "shapes-tiny", *small, "--max-steps", "3", "--out", str(run)]) == 0
    return run


def test_train_then_generate_with_the_trained_model(trained, tmp_path, capsys):
    code = main(["-q", "generate", "--model", str(trained), "--steps", "2", "--num-images", "2", "--seed", "1",
                 "--out", str(tmp_path / "png"), "a red circle on a gray background"])
    assert code == 0
    written = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert len(written) == 4  # 2 images x 2 stages
    sizes = {Image.open(tmp_path / "png" / n).size for n in written}
    assert sizes == {(16, 16), (32, 32)}


def test_resume_of_a_finished_run_and_refusal_to_overwrite(trained, capsys):
    code, err = run_cli(capsys, "train", "--preset", "shapes-tiny", "--set", "data.size=48", "--max-steps", "3",
                        "--out", str(trained))
    one_line_error(code, err, "already holds a training run", "--resume")


def test_evaluate_writes_scores_per_prompt_and_attribute(trained, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle on the left\nthree green triangles\n")
    code = main(["-q", "evaluate", "--model", str(trained), "--prompts", str(prompts), "--steps", "2",
                 "--out", str(tmp_path / "eval")])
    assert code == 0
    table = capsys.readouterr().out
    assert "| color |" in table and "| count |" in table
    scores = json.loads((tmp_path / "eval" / "scores.json").read_text())
    assert [it["caption"] for it in scores["items"]] == prompts.read_text().splitlines()
    assert set(scores["accuracy"]) >= {"color", "shape", "position", "count"}
    assert len(list((tmp_path / "eval" / "images").glob("*.png"))) == 2


def test_evaluate_rejects_a_line_that_is_not_a_shapes_caption(trained, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na photo of a cat\n")
    code, err = run_cli(capsys, "evaluate", "--model", str(trained), "--prompts", str(prompts), "--out", str(tmp_path))
    one_line_error(code, err, "prompts.txt:2")


def test_cli_makes_openmp_threads_sleep_unless_the_user_chose():
    # cli.py sets OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP (docs/decisions.md#omp-passive); a user's
    # own value is kept
    import os
    import subprocess
    import sys

    code = "import openimagen.cli, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert got.stdout.strip() == "PASSIVE"
    got = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True)
    assert got.stdout.strip() == "ACTIVE"
