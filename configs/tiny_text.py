"""A seconds-long smoke config of text conditioning: configs/digits_text.py shrunk like tiny.py."""

from configs import digits_text, tiny


def get_config():
    """Returns the tiny text-conditioned digits config."""
    config = tiny.get_config()
    text = digits_text.get_config()
    config.data.text_length = text.data.text_length
    config.model.class_cond = False
    config.model.text_cond = True
    config.model.text.width = 32
    config.model.text.depth = 1
    config.model.text.num_heads = 2
    return config
