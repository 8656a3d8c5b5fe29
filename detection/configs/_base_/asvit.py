# What every As-ViT detector shares: the plugin import, the backbone and the optimizer (AdamW with
# timm's layer-wise lr decay over the backbone). Detector bases take them with {{_base_.asvit_*}};
# variant configs set arch, the Pretrained source and the neck's in_channels.
custom_imports = dict(imports=['asvit_zoo.detection'], allow_failed_imports=False)

asvit_backbone = dict(
    _delete_=True,
    type='AsViT',
    arch='asvit_large',
    out_indices=(0, 1, 2, 3),
    frozen_stages=-1,
    drop_path_rate=0.2,
    with_cp=False,
    norm_eval=False,
    init_cfg=dict(type='Pretrained', checkpoint='asvit_large'))

asvit_optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='TimmLayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(layer_decay_rate=0.9))
