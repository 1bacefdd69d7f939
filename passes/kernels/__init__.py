"""TIR kernels, their hand schedules and the attributes edgec marks them with."""
