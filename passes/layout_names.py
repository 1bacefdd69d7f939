"""The conv layouts a build can ask for (``--conv-layout``), apart from the pass so the
config can validate them without loading TVM.

- ``NCHW``: the convs as imported (TVM's own schedules);
- ``NCHWc``: blocked NCHW[b]c, b the target's FP32 vector lanes (``conv_layout``).
"""
CONV_LAYOUTS = ("NCHW", "NCHWc")
