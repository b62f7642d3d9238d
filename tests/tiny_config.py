"""A tiny, fast run for tests: DenseNet-BC-tiny on the bundled 8x8 digits."""

from configs import default


def get_config(arg=None):
    c = default.get_config("densenet_bc_tiny")
    c.data.dataset = "digits"
    c.data.pad = 1
    c.data.flip = True
    c.batch_size = 16
    c.eval_batch_size = 64
    c.num_train_steps = 6
    c.eval_every_epochs = 1000.0
    c.checkpoint_every_epochs = 1000.0
    c.log_every_steps = 2
    c.progress_bar = False
    return c
