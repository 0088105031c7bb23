"""Transfer methods as composable transforms over parameter pytrees (issue #18 item 2).

A transform acts on one network's params (`base.Transform`): what it adds to them
(`init`), the params the network then sees (`apply`), what the network takes for a
condition (`condition`), which of them the optimizer trains (`trainable`,
`optimizer`), and what a finetune takes from its checkpoint (`transfer`).
`config.transfer` lists them ("freeze_d:4,adafm"; `registry`), after the family's
condition embeddings (`Gan.condition_sites`: DIP's G_emb and D_emb) and the ones a
family's own config fields ask for (`Gan.config_transforms`: FreezeD's `freeze_d`,
AdaFM's `adafm.*`). `builder.build_gan`
puts them behind one `Gan` (`wrapper.TransferGan`), so the train step, sampling and
evaluation apply them without knowing which they are.

Modules: `base` (the protocol and its composition), one module per transform
(`condition`, `freeze`, `modulation`, `fresh`), `registry` (names, the parser, the config's transforms) and `wrapper`.
This package file imports none of them: `models.gan` sits below it.
"""
