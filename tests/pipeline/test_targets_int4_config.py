"""The targets stage's 4-bit and mixed-precision options: config file keys, CLI flags, one-line errors."""

from __future__ import annotations

import pytest

from embslim.pipeline.cli import _bytes, main
from embslim.pipeline.run import config_from_dict
from embslim.pipeline.targets import TargetsConfig, TargetsError


def test_toml_keys_map_to_typed_fields():
    cfg = config_from_dict({"data": {"dataset": "synthetic-sentiment"}, "targets": {"int4": True, "int4_algorithm": "hqq", "int4_symmetric": False,
                                        "int4_block_size": 128, "int4_accuracy_level": 4, "max_bytes": 8_000_000,
                                        "int4_table_block_size": 16}})
    t = cfg.targets
    assert t.int4_settings == {"algorithm": "hqq", "block_size": 128, "symmetric": False, "accuracy_level": 4,
                               "table_block_size": 16, "kernel": "matmulnbits"}
    assert t.mixed is True and t.max_bytes == 8_000_000     # a byte budget implies the mixed file


@pytest.mark.parametrize("kwargs, message", [
    ({"int4_algorithm": "hqq"}, r"^int4_algorithm 'hqq' always writes zero points .* set symmetric=False"),
    ({"int4_algorithm": "awq"}, r"^int4_algorithm must be one of rtn, hqq, gptq, got 'awq'"),
    ({"int4_block_size": 48}, r"^int4_block_size must be a power of two >= 16 .* got 48"),
    ({"int4_accuracy_level": 5}, r"^int4_accuracy_level must be 0, 1, 2, 3 or 4, got 5"),
    ({"int4_table_block_size": 8}, r"^int4_table_block_size must be a power of two >= 16 .* got 8"),
    ({"int4_kernel": "int4"}, r"^int4_kernel must be one of"),
    ({"int4_kernel": "int8", "int4_symmetric": False}, r"^int4_kernel 'int8' .* symmetric weights per output column"),
    ({"int4_kernel": "int8", "int4_accuracy_level": 4}, r"^int4_accuracy_level 4 sets MatMulNBits' compute"),
    ({"int4_kernel": "int8", "int4": True, "targets": ("avx2", "arm64")}, r"^int4_kernel 'int8' .* target avx2's int8 weights are u8; .*first in --targets"),
    ({"max_bytes": 0}, r"^max_bytes is the mixed file's size in bytes \(> 0\), got 0"),
    ({"calibration_texts": 0}, r"^calibration_texts must be >= 1, got 0"),
    ({"mixed": True, "targets": ()}, r"^mixed and max_bytes need at least one target"),
])
def test_bad_values_are_one_line(kwargs, message):
    with pytest.raises(TargetsError, match=message) as info:
        TargetsConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_int4_kernel_from_a_config_file_and_the_command_line(tmp_path):
    cfg = config_from_dict({"data": {"dataset": "synthetic-sentiment"},
                            "targets": {"int4": True, "int4_kernel": "int8", "int4_algorithm": "gptq"}})
    assert cfg.targets.int4_settings["kernel"] == "int8" and cfg.targets.int4_settings["algorithm"] == "gptq"
    from embslim.pipeline.cli import _section, build_parser

    args = build_parser().parse_args(["quantize", str(tmp_path), "--int4-kernel", "int8"])
    assert _section(args, "targets")["int4_kernel"] == "int8"


def test_int4_settings_without_a_4_bit_file_are_named():
    from embslim.pipeline.targets import unused_int4_settings

    assert unused_int4_settings(TargetsConfig(int4_kernel="int8", int4_table_block_size=16)) == [
        "int4_table_block_size", "int4_kernel"]
    assert unused_int4_settings(TargetsConfig(int4=True, int4_kernel="int8")) == []
    assert unused_int4_settings(TargetsConfig(max_bytes=8_000_000, int4_block_size=64)) == []   # mixed
    assert unused_int4_settings(TargetsConfig()) == []


def test_a_rebuild_that_drops_the_last_builds_settings_is_named():
    """The settings a rebuild changes from the bundle's last build are named (`embslim quantize` logs them)."""
    from dataclasses import asdict

    from embslim.pipeline.targets import rebuild_differences

    last = asdict(TargetsConfig(targets=("arm64",), smooth_quant=True, max_bytes=8_100_000, int4_kernel="int8",
                                int4_algorithm="gptq"))
    assert rebuild_differences(last, TargetsConfig(**{k: v for k, v in last.items()})) == []
    assert rebuild_differences(last, TargetsConfig(targets=("arm64",))) == ["smooth_quant true -> false"]   # int8 only
    assert rebuild_differences(last, TargetsConfig(targets=("arm64",), smooth_quant=True, max_bytes=8_100_000)) == [
        'int4_algorithm "gptq" -> "rtn"', 'int4_kernel "int8" -> "matmulnbits"']
    assert rebuild_differences(None, TargetsConfig()) == []
    assert rebuild_differences({"targets": ["arm64"]}, TargetsConfig(smooth_quant=True)) == ["smooth_quant false -> true"]


def test_quantize_keeps_how_the_last_build_made_its_files_unless_a_flag_says_otherwise():
    """A new-user trial (issue #16): `embslim quantize --max-bytes 7MB` on a bundle built with int4_kernel "int8"
    fell back to MatMulNBits, and leaving out --smooth-quant replaced a smoothed int8 file with a plain one."""
    from dataclasses import asdict

    from embslim.pipeline.targets import inherited_settings

    last = asdict(TargetsConfig(targets=("arm64", "avx512-vnni"), smooth_quant=True, smooth_alpha=0.75, max_bytes=8_100_000,
                                int4_kernel="int8", int4_algorithm="gptq", static_int8=True))
    kept = inherited_settings(last, {"max_bytes": 7_000_000, "targets": ("arm64",)})
    assert kept["int4_kernel"] == "int8" and kept["int4_algorithm"] == "gptq" and kept["smooth_alpha"] == 0.75
    assert not {"targets", "max_bytes", "mixed", "static_int8", "int4", "mobile"} & set(kept)   # which files: the flags'
    cfg = TargetsConfig(**kept | {"max_bytes": 7_000_000, "targets": ("arm64",)})
    assert (cfg.int4_kernel, cfg.smooth_quant, cfg.static_int8) == ("int8", True, False)
    assert inherited_settings(last, {"int4_kernel": "matmulnbits"})["int4_algorithm"] == "gptq"   # a flag wins
    assert "int4_kernel" not in inherited_settings(last, {"int4_kernel": "matmulnbits"})
    plain = inherited_settings(last, {"smooth_quant": False})   # the pair comes from the flags
    assert "smooth_alpha" not in plain and "smooth_quant" not in plain
    TargetsConfig(**plain | {"smooth_quant": False})   # no "smooth_alpha turns smooth_quant on" conflict
    assert inherited_settings(None, {}) == {}


def test_max_bytes_sizes():
    assert _bytes("8MB") == 8_000_000 and _bytes("7.5MiB") == 7_864_320 and _bytes("900000") == 900_000
    assert _bytes("900 kb") == 900_000
    # a config file takes the same sizes as --max-bytes (a new-user trial: "8.1MB" was refused there)
    cfg = config_from_dict({"model": "m", "data": {"dataset": "synthetic-sentiment"},
                            "targets": {"targets": ["arm64"], "max_bytes": "8.1MB"}})
    assert cfg.targets.max_bytes == 8_100_000 and cfg.targets.mixed
    with pytest.raises(ValueError, match=r"max_bytes: '8.1XB' is not a size; give bytes or a number with a unit"):
        config_from_dict({"model": "m", "data": {"dataset": "synthetic-sentiment"},
                          "targets": {"targets": ["arm64"], "max_bytes": "8.1XB"}})


def test_cli_flags_reach_the_config_and_bad_size_exits_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["quantize", str(tmp_path), "--max-bytes", "8XB"])
    assert info.value.code == 2
    assert "'8XB' is not a size; give bytes or a number with a unit: 8MB" in capsys.readouterr().err
    # a wrong combination is one line and exit 2, before anything is read
    code = main(["quantize", str(tmp_path), "--int4-algorithm", "hqq"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1


@pytest.mark.parametrize("flags, message", [
    (["--smooth-alpha", "0.6", "--no-smooth-quant"], "--smooth-alpha (smooth_alpha) turns smooth_quant on, and it is turned off"),
    (["--max-bytes", "8MB", "--no-mixed"], "--max-bytes (max_bytes) turns mixed on, and it is turned off"),
])
def test_a_value_with_its_switch_turned_off_is_one_line(flags, message, capsys, tmp_path):
    """TargetsConfig alone would take smooth_alpha / max_bytes as turning the option on again."""
    code = main(["run", "--dataset", "synthetic-sentiment", "--out", str(tmp_path / "b"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "b").exists()


def test_smooth_alpha_implies_smooth_quant_from_a_config_file():
    cfg = config_from_dict({"data": {"dataset": "synthetic-sentiment"}, "targets": {"smooth_alpha": 0.7}})
    assert cfg.targets.smooth_quant is True and cfg.targets.smooth_alpha == 0.7
