_base_ = './_base_/mask-rcnn_asvit_fpn_ms-crop-3x_coco.py'

# neck in_channels: the channels of asvit_large's stages (tests/test_detection.py checks them against the registry).
model = dict(
    backbone=dict(arch='asvit_large', init_cfg=dict(checkpoint='asvit_large')),
    neck=dict(in_channels=[126, 252, 504, 1008]))
