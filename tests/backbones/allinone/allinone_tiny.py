"""The tiny All-in-one configuration used by the tests in this folder."""

TINY = dict(
    vocab_size=50,
    max_text_len=8,
    num_frames=3,
    image_size=32,
    patch_size=8,
    width=32,
    depth=2,
    heads=4,
    proj_dim=16,
)
