"""Hostile options for every command-line tool (issue 28, rules 1, 3, 4 and 8), by rule rather than case by case.

Every numeric option of every CLI is a typed converter (``src.options``); a corpus of malformed values is
generated here from what each option declares it accepts, plus a property-based sweep (hypothesis). Each call
is the entry point's ``main(argv)`` in-process and must end with exit status 2, one line naming the option
and no traceback, leave no output file or folder behind, and leave a file already there unchanged.
"""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import datamodules.shards as shards
import src.anomaly as anomaly
import src.consolidate as consolidate
import src.phema as phema
import src.reconstruct as reconstruct
import src.restore as restore
import src.sample as sample
from src.checkpoint import AtomicCheckpointIO, CheckpointError
from src.config_check import RANGES, WHOLE_OR_FRACTION, check_config
from src.errors import ConfigError
from src.options import EXIT_BAD_INPUT, EXIT_NONFINITE, SEED_MAX, Number, Whole, check_output_file
from src.report import cli as report_cli
from src.runtime.nonfinite import nonfinite_data

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def call(main, argv, capsys) -> tuple[int, str]:
    """``main(argv)`` in-process: its exit status (a ``SystemExit`` or a returned int) and what it printed."""
    try:
        code = main(argv)
        code = code if isinstance(code, int) else 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# ---- every CLI, with a valid rest of the command line and the output it would write ---------------------------
def cli_table(tmp: Path) -> dict:
    """name -> (main, build_parser, argv without the option under test, the outputs it names)."""
    out_file = tmp / "out" / "result.nii.gz"
    return {
        "src.reconstruct": (reconstruct.main, reconstruct.build_parser,
                            ["--checkpoint", str(tmp / "m.ckpt"), "--input", str(tmp / "scan.h5"),
                             "--output", str(out_file), "--quiet"], [out_file]),
        "src.restore": (restore.main, restore.build_parser,
                        ["--checkpoint", str(tmp / "m.ckpt"), "--task", "denoise", "--input", str(tmp / "a.png"),
                         "--output", str(tmp / "out" / "a.png"), "--quiet"], [tmp / "out" / "a.png"]),
        "src.anomaly": (anomaly.main, anomaly.build_parser,
                        ["--checkpoint", str(tmp / "m.ckpt"), "--input", str(tmp / "scan.nii.gz"),
                         "--output", str(tmp / "out" / "map.nii.gz")], [tmp / "out" / "map.nii.gz"]),
        "src.report": (report_cli.main, report_cli.build_parser,
                       [str(tmp / "run"), "--out", str(tmp / "out" / "r.html")], [tmp / "out" / "r.html"]),
        "src.phema": (phema.main, phema.build_parser,
                      [str(tmp / "run"), "--sigma-rel", "0.1", "--out", str(tmp / "out" / "ph")], [tmp / "out" / "ph"]),
        "src.consolidate": (consolidate.main, consolidate.build_parser,
                            [str(tmp / "sharded.ckpt"), str(tmp / "out" / "m.ckpt")], [tmp / "out" / "m.ckpt"]),
        "datamodules.shards": (shards.main, shards.build_parser,
                               ["--domain", "image", "--src", str(tmp / "pngs"), "--out", str(tmp / "out" / "sh")],
                               [tmp / "out" / "sh"]),
    }


def typed_options(build_parser) -> dict:
    """Every option of a parser that converts its value -> the declared kind (``Whole`` / ``Number``)."""
    out = {}
    for action in build_parser()._actions:
        if action.type is None or not action.option_strings:
            continue
        out[action.option_strings[0]] = action
    return out


def bad_values(kind) -> list[str]:
    """The malformed values of the corpus for one declared kind: outside each bound, non-finite, not a number,
    beyond 64 bits; a whole-number option also gets a fraction."""
    values = ["nan", "inf", "-inf", "abc", "", "1e400"]
    if kind.low is not None:
        values.append(str(kind.low - 1) if isinstance(kind, Whole) else repr(kind.low - 1.0))
        if isinstance(kind, Number) and kind.low_open:
            values.append(repr(float(kind.low)))
    if kind.high is not None:
        values.append(str(kind.high + 1) if isinstance(kind, Whole) else repr(kind.high + 1.0))
        if isinstance(kind, Number) and kind.high_open:
            values.append(repr(float(kind.high)))
    if isinstance(kind, Whole):
        values += ["1.5", str(2**64)]  # not whole; beyond 64 bits
    return values


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", list(cli_table(Path("/x"))))
def test_every_numeric_option_of_every_cli_is_typed(name):
    """The rule, checked on the parsers themselves: no option converts with a bare int() or float()."""
    _, build_parser, _, _ = cli_table(Path("/x"))[name]
    for flag, action in typed_options(build_parser).items():
        assert action.type not in (int, float), f"{name} {flag} is a bare {action.type.__name__}"
        assert hasattr(action.type, "kind"), f"{name} {flag} has an unchecked converter"


@pytest.mark.parametrize("name,option,message", [
    ("src.reconstruct", ["--batch-size", "-1"],
     "argument --batch-size: must be a whole number of at least 1, got '-1'"),
    ("src.reconstruct", ["--acceleration", "nan"], "argument --acceleration: must be a finite number at least 1"),
    ("src.reconstruct", ["--acceleration", "0"], "argument --acceleration: must be a finite number at least 1"),
    ("src.reconstruct", ["--acceleration=-4"], "argument --acceleration: must be a finite number at least 1"),
    ("datamodules.shards", ["--val-fraction", "nan"],
     "argument --val-fraction: must be a finite number at least 0 and less than 1, got 'nan'"),
    ("src.restore", ["--overlap", "1"], "argument --overlap: must be a finite number at least 0 and at most 0.9"),
    ("src.anomaly", ["--noise-level", "0"], "argument --noise-level: must be a finite number greater than 0"),
    ("src.report", ["--max-clips", "0"], "argument --max-clips: must be a whole number of at least 1, got '0'"),
    ("src.phema", ["--step", "-1"], "argument --step: must be a whole number of at least 0, got '-1'"),
])
def test_the_options_of_issue_28(name, option, message, tmp_path, capsys):
    """The probes of issue 28 by name: one line, exit 2, no output (an all-zero scan and exit 0 before)."""
    main, _, argv, outputs = cli_table(tmp_path)[name]
    code, text = call(main, [*argv, *option], capsys)
    assert code == EXIT_BAD_INPUT and message in text and "Traceback" not in text, text
    assert not any(o.exists() for o in outputs)


def test_the_python_apis_refuse_what_the_command_lines_refuse(tmp_path):
    """The tools' option dataclasses are checked against the same declarations as their flags."""
    from src.tools.anomaly.screen import ScreenOptions, screen_file
    from src.tools.reconstruction.workflow import ReconstructOptions, reconstruct_file
    from src.tools.restoration.workflow import RestoreOptions, restore_file
    common = {"input": tmp_path / "in", "output": tmp_path / "o" / "out.nii.gz", "checkpoint": tmp_path / "m.ckpt"}
    with pytest.raises(ConfigError, match="--batch-size must be a whole number of at least 1, got -1"):
        reconstruct_file(ReconstructOptions(**common, batch_size=-1))
    with pytest.raises(ConfigError, match="--acceleration must be a finite number at least 1, got nan"):
        reconstruct_file(ReconstructOptions(**common, acceleration=math.nan))
    with pytest.raises(ConfigError, match="--overlap must be a finite number at least 0 and at most 0.9"):
        restore_file(RestoreOptions(**common, task="denoise", overlap=1.0))
    with pytest.raises(ConfigError, match="--mask-boxes must be a whole number of at least 0, got -3"):
        restore_file(RestoreOptions(**common, task="inpaint", mask_boxes=[[0, 0, 4, 4], [-3, 0, 4, 4]]))
    with pytest.raises(ConfigError, match="--draws must be a whole number of at least 1, got 0"):
        screen_file(ScreenOptions(**common, draws=0))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", list(cli_table(Path("/x"))))
def test_malformed_numeric_options_get_one_line_exit_2_and_write_nothing(name, tmp_path, capsys):
    main, build_parser, argv, outputs = cli_table(tmp_path)[name]
    (tmp_path / "out").mkdir()
    keep = tmp_path / "out" / "kept.txt"
    keep.write_text("written before")  # something already there, which must stay as it is
    before = snapshot(tmp_path)
    for flag, action in typed_options(build_parser).items():
        nargs = action.nargs if isinstance(action.nargs, int) else 1
        for value in bad_values(action.type.kind):
            given_as = [f"{flag}={value}"] if nargs == 1 else [flag, *([value] * nargs)]
            code, text = call(main, [*argv, *given_as], capsys)
            assert code == EXIT_BAD_INPUT, (name, flag, value, text)
            expected = f"argument {flag}: must be {action.type.kind.describe()}"
            if nargs > 1 and re.fullmatch(r"-[a-z]+", value):  # "--resample-sigmas -inf -inf": read as options
                expected = f"argument {flag}: expected {nargs} arguments"
            assert expected in text, (name, flag, value, text)
            assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text
            assert not any(o.exists() for o in outputs)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["src.reconstruct", "src.anomaly", "src.restore"])
@SETTINGS
@given(value=st.one_of(st.integers(min_value=-(2**70), max_value=2**70),
                       st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6)))
def test_property_every_value_is_accepted_in_range_or_refused_naming_the_option(name, value, tmp_path_factory):
    """Any value of any numeric option: either inside the declared range, or refused by the parser with exit 2
    and the option's name (never a traceback, never a silent default)."""
    tmp = tmp_path_factory.getbasetemp() / "prop"
    _, build_parser, argv, _ = cli_table(tmp)[name]
    for flag, action in typed_options(build_parser).items():
        nargs = action.nargs if isinstance(action.nargs, int) else 1
        text = str(value)
        given_as = [f"{flag}={text}"] if nargs == 1 else [flag, *([text] * nargs)]
        try:
            args = build_parser().parse_args([*argv, *given_as])
        except SystemExit as e:
            assert e.code == EXIT_BAD_INPUT
            continue
        parsed = getattr(args, action.dest)
        while isinstance(parsed, list):  # nargs=2, or action="append" of nargs=4
            parsed = parsed[0]
        action.type.kind.check(parsed, flag)  # what got through is in range
        assert not (isinstance(parsed, float) and not math.isfinite(parsed))


# ---- src.sample: key=value options ------------------------------------------------------------------------------
@pytest.mark.parametrize("option,message", [
    ("num_samples=0", "num_samples must be a whole number of at least 1, got 0"),
    ("batch_size=-1", "batch_size must be a whole number of at least 1, got -1"),
    ("steps=-3", "steps must be a whole number of at least 1, got -3"),
    ("guidance=nan", "guidance must be a finite number at least 0"),
    ("guidance=-1", "guidance must be a finite number at least 0"),
    ("seed=-1", "seed must be a whole number between 0 and 4294967295, got -1"),
    (f"seed={2**64}", "seed must be a whole number between 0 and 4294967295"),
    ("num_samples", "arguments are key=value pairs"),
])
def test_sample_options_are_one_line_exit_2_and_no_folder(option, message, tmp_path, capsys):
    out = tmp_path / "samples"
    code, text = call(sample.main, [f"ckpt={tmp_path / 'm.ckpt'}", f"out={out}", option], capsys)
    assert code == EXIT_BAD_INPUT and message in text and "Traceback" not in text, text
    assert not out.exists()


# ---- outputs that cannot be written: refused before any work, in every CLI ------------------------------------
@pytest.mark.parametrize("name", list(cli_table(Path("/x"))))
def test_unwritable_output_is_refused_before_any_work(name, tmp_path, capsys):
    """The output's folder is under a file (root ignores permission bits, a file's child is unwritable for all):
    one line naming the output, exit 2, nothing created (the inputs do not even exist: no work was tried)."""
    blocker = tmp_path / "out"
    blocker.write_text("a file where a folder should be")
    main, _, argv, _ = cli_table(tmp_path)[name]
    before = snapshot(tmp_path)
    code, text = call(main, argv, capsys)
    assert code == EXIT_BAD_INPUT and "cannot be written" in text and "is a file, not a writable folder" in text, text
    assert "Traceback" not in text
    assert snapshot(tmp_path) == before


def test_sample_out_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    code, text = call(sample.main, [f"ckpt={tmp_path / 'm.ckpt'}", f"out={tmp_path / 'f' / 'samples'}"], capsys)
    assert code == EXIT_BAD_INPUT and "cannot be written" in text, text


def test_output_checks_create_nothing(tmp_path):
    target = tmp_path / "a" / "b" / "out.png"
    assert check_output_file(target, "--output") == target
    assert list(tmp_path.iterdir()) == []  # the probe file is gone and no folder was made
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ConfigError, match="is an existing folder; name a file"):
        check_output_file(tmp_path / "dir.png", "--output")


# ---- the training config: one declared table, checked before the run folder exists -------------------------------
def _bad_for(kind) -> list:
    if kind == WHOLE_OR_FRACTION:
        return [-1, 1.5, math.nan, "x"]
    bad = [math.nan, math.inf, "x"]
    if kind.low is not None:
        bad.append(kind.low - 1)
    if kind.high is not None:
        bad.append(kind.high + 1)
    if isinstance(kind, Whole):
        bad.append(0.5 + (kind.low or 0))
    return bad


def _set(plain: dict, key: str, value) -> dict:
    node = plain
    *parents, leaf = key.split(".")
    for part in parents:
        if node.get(part) is None:  # e.g. ema.phema: null
            node[part] = {}
        node = node[part]
    node[leaf] = value
    return plain


@pytest.fixture(scope="module")
def plain_config():
    from omegaconf import OmegaConf

    from tests.conftest import compose
    cfg = compose(["experiment=smoke", "logger=none"])
    return OmegaConf.to_container(cfg, resolve=True)


def test_every_key_of_the_table_refuses_its_bad_values(plain_config):
    import copy
    check_config(copy.deepcopy(plain_config))  # the shipped config passes
    for key, kind in RANGES.items():
        for value in _bad_for(kind):
            with pytest.raises(ConfigError, match=re.escape(key)):
                check_config(_set(copy.deepcopy(plain_config), key, value))


@SETTINGS
@given(key=st.sampled_from(sorted(RANGES)), value=st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True, allow_infinity=True)))
def test_property_config_values_are_in_range_or_named(plain_config, key, value):
    import copy
    kind = RANGES[key]
    cfg = _set(copy.deepcopy(plain_config), key, value)
    try:
        check_config(cfg)
    except ConfigError as e:
        assert key in str(e) or "must be" in str(e)
        return
    if kind != WHOLE_OR_FRACTION:
        kind.check(value, key)  # accepted only when the table accepts it
    assert not (isinstance(value, float) and not math.isfinite(value))


@pytest.mark.parametrize("override,message", [
    ("trainer.max_steps=-5", "trainer.max_steps must be a whole number of at least -1 (-1: no limit), got -5"),
    ("checkpoint.keep=-2", "checkpoint.keep must be a whole number of at least -1 (-1: keep all), got -2"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches must be a whole number of at least 1"),
    ("val_buckets=0", "val_buckets must be a whole number of at least 1, got 0"),
    ("optim.lr=nan", "optim.lr must be a finite number greater than 0, got nan"),
    (f"seed={2**63}", "seed must be a whole number between 0 and 4294967295"),
    ("optim.betas=[0.9,inf]", "optim.betas[1] must be a finite number"),
    ("+extra.knob=inf", "extra.knob must be a finite number, got inf"),
])
def test_train_refuses_config_values_before_the_run_folder(compose_cfg, tmp_path, override, message):
    from src.train import train
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(compose_cfg(["experiment=smoke", "logger=none", f"paths.output_dir={out}", override]))
    assert not out.exists()


@pytest.mark.slow  # two interpreters importing torch and Lightning
def test_train_cli_exits_2_with_no_run_folder(tmp_path):
    """Through Hydra: the callback checks the composed config before Hydra makes the run folder."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "src.train", "experiment=smoke", "logger=none", "threads=1",
                           f"paths.output_dir={out}", "trainer.max_steps=-5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr[-2000:]
    assert "trainer.max_steps must be a whole number of at least -1" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
    (tmp_path / "file").write_text("")
    proc = subprocess.run([sys.executable, "-m", "src.train", "experiment=smoke", "logger=none", "threads=1",
                           f"paths.output_dir={tmp_path / 'file' / 'run'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == EXIT_BAD_INPUT and "paths.output_dir=" in proc.stderr, proc.stderr[-2000:]
    assert "cannot be written" in proc.stderr and "Traceback" not in proc.stderr


def test_lightning_trainer_options_are_settable_as_typed(compose_cfg):
    cfg = compose_cfg(["trainer.max_time=00:00:10:00", "trainer.max_epochs=3", "trainer.limit_train_batches=0.5",
                       "trainer.accumulate_grad_batches=2"])
    assert cfg.trainer.max_time == "00:00:10:00" and cfg.trainer.max_epochs == 3
    assert cfg.trainer.limit_train_batches == 0.5 and cfg.trainer.accumulate_grad_batches == 2


# ---- a run that stops itself: non-finite values, a full disk ---------------------------------------------------
def test_nonfinite_stop_exits_3_and_says_why(compose_cfg, tmp_path):
    from src.train import nonfinite_message, train
    out = tmp_path / "run"
    result = train(compose_cfg(["experiment=smoke", "logger=none", f"paths.output_dir={out}", "optim.lr=1e30",
                                "trainer.max_steps=4", "sampling.num=0", "datamodule.builtin_size=32",
                                "datamodule.resolution=16", "trainer.accelerator=cpu"]))
    assert result["nonfinite"] is not None and result["nonfinite"]["data"] is None
    message = nonfinite_message(result)
    assert message.startswith("the run stopped itself at step") and "lower optim.lr" in message
    assert EXIT_NONFINITE == 3


def test_nonfinite_batch_names_its_files():
    x = torch.zeros(3, 1, 4, 4)
    x[1, 0, 0, 0] = math.nan
    named = nonfinite_data({"x": x, "path": ["a.wav", "b.wav", "c.wav"]})
    assert named == "the training data holds non-finite values: b.wav"
    assert nonfinite_data({"x": x}) == "the training batch holds non-finite values in 1 of its 3 items"
    assert nonfinite_data({"x": torch.zeros(2, 1, 4)}) is None


def test_full_disk_at_a_checkpoint_is_one_sentence_and_keeps_the_last(tmp_path, monkeypatch):
    import errno
    io = AtomicCheckpointIO()
    last = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 1}, last)
    before = last.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    message = f"No space left in {last.parent} to write last.ckpt at step 2"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}, "global_step": 2}, last)
    assert last.read_bytes() == before and [p.name for p in last.parent.iterdir()] == ["last.ckpt"]


# ---- weights that are not finite: refused by src.phema, src.sample and src.consolidate ---------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from src.train import train
    from tests.conftest import compose
    run = tmp_path_factory.mktemp("hostile") / "run"
    train(compose(["experiment=smoke", "logger=none", f"paths.output_dir={run}", "trainer.max_steps=4",
                   "trainer.val_check_interval=4", "sampling.every_n_steps=100", "checkpoint.every_n_steps=4",
                   "datamodule.num_workers=0", "datamodule.builtin_size=32", "datamodule.resolution=16",
                   "trainer.accelerator=cpu", "ema.phema={std:[0.05,0.10],snapshot_every:2}"]))
    return run


def test_phema_refuses_a_nan_snapshot_and_writes_nothing(tiny_run, tmp_path, capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    snap = run / "checkpoints" / "phema" / "phema-0000004.pt"
    data = torch.load(snap, weights_only=True)
    key = next(iter(data["state_dicts"][0]))
    data["state_dicts"][0][key] = torch.full_like(data["state_dicts"][0][key], math.nan)
    torch.save(data, snap)
    out = tmp_path / "phema"
    code, text = call(phema.main, [str(run), "--sigma-rel", "0.1", "--out", str(out)], capsys)
    assert code == EXIT_BAD_INPUT and f"Snapshot {snap} holds non-finite weights" in text, text
    assert not out.exists() or not list(out.iterdir())


def test_phema_refuses_a_snapshot_of_another_shape(tiny_run, tmp_path, capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    snap = run / "checkpoints" / "phema" / "phema-0000002.pt"
    data = torch.load(snap, weights_only=True)
    key = next(k for k, v in data["state_dicts"][0].items() if v.ndim >= 1 and v.is_floating_point())
    data["state_dicts"][0][key] = torch.zeros(3, 5, 7)
    torch.save(data, snap)
    out = tmp_path / "phema"
    code, text = call(phema.main, [str(run), "--sigma-rel", "0.1", "--out", str(out)], capsys)
    assert code == EXIT_BAD_INPUT and "of shape (3, 5, 7), but the model's is" in text, text
    assert not out.exists() or not list(out.iterdir())


def test_sample_refuses_nonfinite_weights(tiny_run, tmp_path, capsys):
    ckpt = torch.load(tiny_run / "checkpoints" / "last.ckpt", weights_only=False)
    key = next(k for k, v in ckpt["state_dict"].items() if k.startswith("ema.") and v.is_floating_point())
    ckpt["state_dict"][key] = torch.full_like(ckpt["state_dict"][key], math.inf)
    poisoned = tmp_path / "poisoned.ckpt"
    torch.save(ckpt, poisoned)
    out = tmp_path / "samples"
    code, text = call(sample.main, [f"ckpt={poisoned}", "num_samples=1", "steps=2", "device=cpu", f"out={out}"],
                      capsys)
    assert code == EXIT_BAD_INPUT and "holds non-finite weights" in text and "Traceback" not in text, text
    assert not out.exists()


def test_seed_range_is_lightnings():
    assert SEED_MAX == 2**32 - 1
