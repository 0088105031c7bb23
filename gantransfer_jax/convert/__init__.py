"""Importers of checkpoints written by other implementations (torch-free).

  from gantransfer_jax.convert import stylegan2_ada
  config = stylegan2_ada.convert_file('network-snapshot-025000.pkl', 'workdirs/ffhq256',
                                      base_config)

The result is a workdir in this package's checkpoint layout (gantransfer_jax.checkpoints),
so finetuning (`--config.init_checkpoint=WORKDIR`), evaluation and selection read it
like any checkpoint of ours.
"""
