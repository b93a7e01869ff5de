"""torch.compile as an option: a clear error where the CPU has no C++ compiler, in-place compile keeps the weights."""
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


@pytest.mark.slow  # importing torch._dynamo alone takes ~40 s on the shared CPU
def test_compile_in_place_keeps_state_dict_keys(monkeypatch):
    monkeypatch.setattr(compiling, "check_can_compile", lambda device: None)
    from openimagen.nn.efficient_unet import PRESETS, EfficientUNet
    from openimagen.cascade import Cascade
    from openimagen.stage import Stage, StageConfig

    unet = EfficientUNet(PRESETS["tiny"](text_embed_dim=8))
    keys = list(unet.state_dict())
    cascade = Cascade(None, [Stage(StageConfig(resolution=16, unet=unet.cfg), unet)])
    compiling.compile_cascade(cascade)
    assert list(unet.state_dict()) == keys  # checkpoints and EMA copies see the same names
