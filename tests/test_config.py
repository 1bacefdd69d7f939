"""PipelineConfig: flat fields for users, one option group per phase (issue #23)."""
import dataclasses

import pytest

from edgec.compiler.config import (ConfigError, Int8Options, KernelOptions, PipelineConfig,
                                   PruneOptions)


def test_each_group_carries_its_fields_as_given():
    c = PipelineConfig(prune=0.3, prune_criterion="l2", prune_multiple=8, int8=True,
                       calib_method="percentile", calib_samples=16, int8_keep_fp32=["conv1"],
                       int8_depthwise="plain", conv_layout="NCHW", winograd=False)
    assert c.prune_options == PruneOptions(0.3, "l2", None, 8) and c.prune_options.on
    i = c.int8_options
    assert (i.calib_method, i.calib_samples, i.keep_fp32, i.depthwise) == \
        ("percentile", 16, ("conv1",), "plain")
    assert c.kernels == KernelOptions("NCHW", False, True, False, True)
    assert not PipelineConfig().prune_options.on


def test_every_group_field_is_a_flat_field_of_the_config():
    """A group may rename (``scales`` for ``int8_scales``) but holds nothing the user
    cannot set on PipelineConfig, and the group's defaults are the config's."""
    flat = {f.name: f.default for f in dataclasses.fields(PipelineConfig)}
    c = PipelineConfig()
    for group, prefix in ((c.prune_options, "prune_"), (c.int8_options, "int8_"),
                          (c.kernels, "")):
        for f in dataclasses.fields(group):
            name = next(n for n in (f.name, prefix + f.name, "prune" if f.name == "ratio"
                                    else None) if n in flat)
            assert getattr(group, f.name) == flat[name], (type(group).__name__, f.name)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prune=1.0), r"prune must be a fraction in \[0, 1\)"),
    (dict(prune=0.2, prune_plan="p.json"), "not both"),
    (dict(prune_multiple=0), "prune_multiple must be a positive integer"),
    (dict(calib_method="kl"), "calib_method 'kl' is not valid; valid: minmax, percentile"),
    (dict(calib_samples=True), "calib_samples must be a positive integer"),
    (dict(int8_pad_out="yes"), "int8_pad_out must be true or false"),
    (dict(int8_keep_fp32=-1), "int8_keep_fp32 must be layer names or a count"),
    (dict(winograd=1), "winograd must be true or false"),
    (dict(conv_layout="NHWC"), "unknown conv_layout 'NHWC'; valid: NCHW, NCHWc"),
    (dict(int8="on"), "int8 must be true or false"),
    (dict(early_exit=1), "early_exit must be true or false"),
])
def test_a_bad_field_is_named_as_the_user_wrote_it(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PipelineConfig(**kwargs)


def test_a_group_validates_on_its_own():
    with pytest.raises(ConfigError, match="int8_depthwise 'x'"):
        Int8Options(depthwise="x")
    with pytest.raises(ConfigError, match="prepack_weights rewrites"):
        KernelOptions(prepack_weights=True)
