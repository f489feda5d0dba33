"""Config keys: parsing of optimization_config.txt, limits and messages."""

import pytest

from peptide_opt.config import (
    JobConfig,
    build_config,
    parse_config_text,
    parse_file_name,
    safe_file_name,
)
from peptide_opt.errors import InputError

PLATFORM_CONFIG = """\
cores=12
cleanup=True
proteinmpnn_enabled=True
n_poses=10
num_seq_per_target=10
proteinmpnn_seed=37
n_iterations=1
n_rosetta_runs=1
peptide_sequence=GNGVPNLRGDLQVLGQRVGRT
receptor_pdb_filename=5ffg.pdb
storage_prefix=jobs/peptide_optimization/example-5ffg
receptor_storage_key=jobs/peptide_optimization/example-5ffg/input/5ffg.pdb
"""


def test_platform_config_accepted_with_ignored_keys():
    warnings: list[str] = []
    config = build_config(parse_config_text(PLATFORM_CONFIG), warnings)
    assert config.n_poses == 10
    assert config.proteinmpnn_seed == 37
    assert config.receptor_pdb_filename == "5ffg.pdb"
    assert config.cleanup is True
    assert warnings == [
        "cores is ignored: the worker sets its own core count",
        "n_rosetta_runs is ignored: this pipeline runs no Rosetta step",
    ]


def test_defaults_match_documented_values():
    config = build_config({})
    assert config == JobConfig()
    assert (config.n_poses, config.num_seq_per_target, config.proteinmpnn_seed) == (10, 10, 37)
    assert (config.site_margin, config.ph, config.sampling_temperature) == (8.0, 7.4, 0.1)


def test_comments_blank_lines_and_unknown_keys():
    warnings: list[str] = []
    values = parse_config_text("# a comment\n\nn_poses = 3  # three\nflavour=mint\n")
    config = build_config(values, warnings)
    assert config.n_poses == 3
    assert warnings == ["unknown config key 'flavour' ignored"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("n_poses", "0", "n_poses must be between 1 and 50, got 0"),
        ("n_poses", "51", "n_poses must be between 1 and 50, got 51"),
        ("n_poses", "ten", "n_poses must be a whole number, got 'ten'"),
        ("num_seq_per_target", "101", "num_seq_per_target must be between 1 and 100, got 101"),
        ("n_iterations", "11", "n_iterations must be between 1 and 10, got 11"),
        ("ph", "15", "ph must be between 0 and 14, got 15"),
        ("ph", "nan", "ph must be between 0 and 14, got nan"),
        ("site_margin", "25", "site_margin must be between 0 and 20, got 25"),
        ("sampling_temperature", "2", "sampling_temperature must be between 0.01 and 1, got 2"),
        ("site_size", "4,20,20", "site_size must be between 5 and 40, got 4"),
        ("site_size", "20,20", "site_size must be three numbers x,y,z in Å"),
        ("cleanup", "maybe", "cleanup must be True or False, got 'maybe'"),
        ("receptor_pdb_filename", "../etc/passwd", "must be a plain file name"),
        ("receptor_pdb_filename", "dir/5ffg.pdb", "must be a plain file name"),
        ("receptor_pdb_filename", "a\\b.pdb", "must be a plain file name"),
        ("site_chain", "A;rm", "site_chain must be a chain ID of 1 to 4 letters or digits"),
        ("omit_amino_acids", "ACDEFGHIKLMNPQRSTVWY", "excludes all 20 amino acids"),
        ("omit_amino_acids", "CX", "'X' at position 2 is not one of the 20"),
        ("aa_bias", "W1.5", "aa_bias must be pairs such as 'W:1.5,P:-1'"),
        ("fixed_positions", "3-1", "range '3-1' must satisfy 1 <= start <= end"),
        ("selection", "best", "selection must be 'rescore' or 'mpnn', got 'best'"),
    ],
)
def test_invalid_value_names_key_limit_value(key, value, message):
    with pytest.raises(InputError) as caught:
        build_config({key: value})
    assert message in str(caught.value)


def test_site_center_needs_site_size():
    with pytest.raises(InputError, match="site_center and site_size must be given together"):
        build_config({"site_center": "1,2,3"})


def test_site_chain_cannot_be_receptor_chain():
    with pytest.raises(InputError, match="site_chain 'B' is also listed in receptor_chains"):
        build_config({"site_chain": "B", "receptor_chains": "A,B"})


def test_typed_values_from_json_accepted():
    config = build_config({"n_poses": 4, "cleanup": False, "site_center": [1, 2, 3], "site_size": [20, 20, 20]})
    assert config.n_poses == 4
    assert config.cleanup is False
    assert config.site_center == (1.0, 2.0, 3.0)


def test_malformed_line_rejected():
    with pytest.raises(InputError, match="line 2: expected key=value, got 'n_poses 3'"):
        parse_config_text("cleanup=True\nn_poses 3\n")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("1czy_complex.pdb", "1czy_complex.pdb"),
        ("my receptor.pdb", "my_receptor.pdb"),
        ("$(touch x);a.pdb", "f__touch_x__a.pdb"),
        ("..pdb", "f_.pdb"),
        ("récepteur.cif", "r_cepteur.cif"),
    ],
)
def test_safe_file_name_accepted(name, expected):
    # The client sends this name; the server's own check must accept it.
    assert safe_file_name(name) == expected
    assert parse_file_name("receptor", expected) == expected
