_base_ = './_base_/mask-rcnn_asvit_fpn_ms-crop-3x_coco.py'

# neck in_channels: the channels of asvit_base's stages (tests/test_detection.py checks them against the registry).
model = dict(
    backbone=dict(arch='asvit_base', init_cfg=dict(checkpoint='asvit_base')),
    neck=dict(in_channels=[97, 194, 388, 776]))
