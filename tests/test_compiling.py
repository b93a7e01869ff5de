"""torch.compile as an option: a clear error where the CPU has no C++ compiler."""
import pytest

from openimagen import compiling
from openimagen.cli import main


def test_no_compiler_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(compiling.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(compiling.CompilerUnavailable, match="needs a C\\+\\+ compiler.*apt install g\\+\\+"):
        compiling.check_can_compile("cpu")


def test_train_with_compile_and_no_compiler_fails_before_work(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(compiling.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    code = main(["-q", "train", "--preset", "shapes-tiny", "--max-steps", "1", "--set", "compile=true",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "needs a C++ compiler" in err and "Traceback" not in err
