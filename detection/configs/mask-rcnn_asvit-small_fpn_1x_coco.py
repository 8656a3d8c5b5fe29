_base_ = './_base_/mask-rcnn_asvit_fpn_1x_coco.py'

# neck in_channels: the channels of asvit_small's stages (tests/test_detection.py checks them against the registry).
model = dict(
    backbone=dict(arch='asvit_small', init_cfg=dict(checkpoint='asvit_small')),
    neck=dict(in_channels=[80, 160, 320, 640]))
